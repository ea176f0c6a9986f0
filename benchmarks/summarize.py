"""Print markdown tables of benchmarks/results/*.json (the rows of RESULTS.md).

    python benchmarks/summarize.py [NAME_PREFIX ...]
"""

from __future__ import annotations

import json
import sys
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


def main() -> None:
    prefixes = sys.argv[1:] or [""]
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    results = [r for r in results if any(r["name"].startswith(p) for p in prefixes)]
    print("| run | model | img AUROC | img AP | px AUROC | px AP | AUPRO | acc / prec / rec / FPR | M params | "
          "GFLOPs | epochs | train min | train img/s | infer img/s | ms/img |")
    print("|---" * 16 + "|")
    for r in results:
        print(row(r))
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
