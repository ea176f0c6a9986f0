"""Print markdown tables of benchmark records (the rows of RESULTS.md).

    python benchmarks/summarize.py [--dir screening] [NAME_PREFIX ...]

The first table has the test figures of each run; the second puts the validation figures (which
chose the defaults) beside test, with the fit time of fitted models and the settings that differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def row(r: dict) -> str:
    free, th = r["threshold_free"], r["thresholded"]
    return (
        f"| {r['name']} | {r['model']} | {pct(free.get('image_auroc'))} | {pct(free.get('image_ap'))} | "
        f"{pct(free.get('pixel_auroc'))} | {pct(free.get('pixel_ap'))} | {pct(free.get('aupro'))} | "
        f"{pct(th['accuracy'])} / {pct(th['precision'])} / {pct(th['recall'])} / {pct(th['fpr'])} | "
        f"{r['parameters'] / 1e6:.2f} | {r['gflops_per_image']:.2f} | {r['epochs']} | {r['train_minutes']:.1f} | "
        f"{r['train_images_per_s']:.1f} | {r['inference_images_per_s']:.1f} | {r['ms_per_image']:.1f} |"
    )


def settings(r: dict) -> str:
    """The command's options after the dataset and model: what this run changed."""
    words = r["command"].split()
    kept, skip = [], False
    for word in words[3:]:
        if skip:
            skip = False
        elif word in ("--dataset", "--model", "--threads", "--batch-size"):
            skip = True
        else:
            kept.append(word)
    return " ".join(kept)


def selection_row(r: dict) -> str:
    val, free = r.get("validation_at_shipped_epoch") or {}, r["threshold_free"]
    fit = (r.get("fit") or {}).get("fit_seconds")  # gradient-trained runs have no fit
    return (f"| {r['name']} | {r['model']} | {pct(val.get('val_auroc'))} | {pct(val.get('val_aupro'))} | "
            f"{pct(free.get('image_auroc'))} | {pct(free.get('aupro'))} | {'-' if fit is None else f'{fit:.0f}'} | "
            f"{r['ms_per_image']:.1f} | {r.get('commit', '?')} | `{settings(r)}` |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prefixes", nargs="*", default=[""])
    parser.add_argument("--dir", default="", help="a folder under results/ (e.g. screening)")
    args = parser.parse_args()
    records = [json.loads(p.read_text()) for p in sorted((RESULTS / args.dir).glob("*.json"))]
    # Latency and load-test records live beside the runs; only run records have threshold-free figures.
    results = [r for r in records if "threshold_free" in r and any(r["name"].startswith(p) for p in args.prefixes)]
    print("| run | model | img AUROC | img AP | px AUROC | px AP | AUPRO | acc / prec / rec / FPR | M params | "
          "GFLOPs | epochs | train min | train img/s | infer img/s | ms/img |")
    print("|---" * 16 + "|")
    for r in results:
        print(row(r))
    print()
    print("| run | model | val AUROC | val AUPRO | test img AUROC | test AUPRO | fit s | ms/img | commit | settings |")
    print("|---" * 10 + "|")
    for r in results:
        print(selection_row(r))
    print()
    typed = [r for r in results if r.get("per_type_image_auroc")]
    if typed:
        types = sorted({t for r in typed for t in r["per_type_image_auroc"]})
        print("| run | " + " | ".join(types) + " |")
        print("|---" * (len(types) + 1) + "|")
        for r in typed:
            print(f"| {r['name']} | " + " | ".join(pct(r["per_type_image_auroc"].get(t)) for t in types) + " |")
        print()
    for r in results:
        print(f"- `{r['name']}` ({r['date']}, commit {r.get('commit', '?')}, {r['machine']}, {r['threads']} threads): "
              f"`{r['command']}`; threshold: {r['calibration']}")


if __name__ == "__main__":
    main()
