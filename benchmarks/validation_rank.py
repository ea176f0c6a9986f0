"""Does validation rank settings as the test set does? Spearman rank correlation between validation
and test image AUROC over many settings of the fitted models, for the old validation (one `self`
defect per held-out good image) and the graded one (train.val_defect_source graded).

    python benchmarks/validation_rank.py --dataset mt|wood --work /tmp/vr [--only NAME ...]

Each setting is fitted once into --work/<dataset>_<name> (fitted models: validation does not change
the model, so every validation can be scored on the same fit); then each validation is built as
training builds it (the same held-out images and seed) and scored, and test is evaluated (threshold
free, and recall at the run's automatic threshold, fpr:0.01 on the good validation images). Records
go to benchmarks/results/validation_rank/<dataset>_<name>.json; `--summary` prints the table and
the correlations, across all settings and within each model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

from surfad import bundle
from surfad.config import DataConfig, RunConfig, TrainConfig
from surfad.data.dataset import ImageDataset
from surfad.data.splits import Splits
from surfad.evaluate import evaluate_run
from surfad.training import train
from surfad.training.validation import validate, validation_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import DATASETS, RESULTS, provenance  # noqa: E402

OUT = RESULTS / "validation_rank"
VALIDATIONS = {"old (self x1)": ("self", 1), "graded x2": ("graded", 2), "graded x8": ("graded", 8)}
SCORED = {"mt": ("old (self x1)", "graded x2"), "wood": tuple(VALIDATIONS)}  # x8 where validation is small

P = {"coreset": "projected"}  # patchcore's coreset before "exact" became its default
SETTINGS = {  # name -> (model, model_params, image_size)
    "mt": {
        "pd_224": ("padim", {}, 224), "pd_160": ("padim", {}, 160), "pd_256": ("padim", {}, 256),
        "pd_320": ("padim", {}, 320), "pd_l23": ("padim", {"layers": ["stage2", "stage3"], "feature_dim": 0}, 224),
        "pd_l34": ("padim", {"layers": ["stage3", "stage4"]}, 224), "pd_fd50": ("padim", {"feature_dim": 50}, 224),
        "pd_lite1": ("padim", {"backbone": "efficientnet_lite1"}, 224),
        "pc_224": ("patchcore", P, 224), "pc_c0.1": ("patchcore", {**P, "coreset_ratio": 0.001}, 224),
        "pc_c0.1_full": ("patchcore", {"coreset_ratio": 0.001, "projection_dim": 0}, 224),
        "pc_c0.1_exact": ("patchcore", {"coreset_ratio": 0.001}, 224),
        "pc_c0.1_256": ("patchcore", {"coreset_ratio": 0.001}, 256),
        "pc_p128": ("patchcore", {**P, "projection_dim": 128}, 224), "pc_full": ("patchcore", {"projection_dim": 0}, 224),
        "pc_exact": ("patchcore", {}, 224),
        "pc_nb1": ("patchcore", {**P, "neighbourhood": 1}, 224), "pc_nostd": ("patchcore", {**P, "standardise": False}, 224),
    },
    "wood": {
        "pd_224": ("padim", {}, 224), "pd_160": ("padim", {}, 160), "pd_256": ("padim", {}, 256),
        "pd_320": ("padim", {}, 320), "pd_384": ("padim", {}, 384), "pd_l23": ("padim", {"layers": ["stage2", "stage3"], "feature_dim": 0}, 320),
        "pd_l34": ("padim", {"layers": ["stage3", "stage4"]}, 320), "pd_fd50": ("padim", {"feature_dim": 50}, 320),
        "pc_224": ("patchcore", {**P, "coreset_ratio": 0.1}, 224), "pc_320": ("patchcore", {**P, "coreset_ratio": 0.1}, 320),
        "pc_c1": ("patchcore", P, 320), "pc_c1_exact": ("patchcore", {}, 320),
        "pc_320_exact": ("patchcore", {"coreset_ratio": 0.1}, 320),
        "pc_c25": ("patchcore", {**P, "coreset_ratio": 0.25}, 320),
        "pc_nb1": ("patchcore", {**P, "coreset_ratio": 0.1, "neighbourhood": 1}, 320),
        "pc_nostd": ("patchcore", {**P, "coreset_ratio": 0.1, "standardise": False}, 320),
    },
}


def validation_figures(run: Path, names: tuple[str, ...]) -> dict[str, float]:
    """Validation image AUROC of the run for each named validation of VALIDATIONS."""
    config, graph = bundle.load_graph(run)
    splits = Splits.load(run / bundle.SPLITS)
    images = ImageDataset.for_run(splits.val, config.data)
    figures = {}
    for name in names:
        source, per_image = VALIDATIONS[name]
        dataset = validation_dataset(images, True, source, config.train.seed + 1, per_image)
        values, _ = validate(graph, config, dataset, torch.device("cpu"), 16)
        figures[name] = values["val_auroc"]
    return figures


def run_setting(dataset: str, name: str, work: Path) -> dict:
    model, params, size = SETTINGS[dataset][name]
    spec = DATASETS[dataset]
    run = work / f"{dataset}_{name}"
    if not (run / bundle.CALIBRATION).is_file():
        shutil.rmtree(run, ignore_errors=True)  # what an interrupted fit left
        config = RunConfig(model=model, model_params=params,
                           data=DataConfig(path=str(spec["path"]), layout=spec["layout"], image_size=size,
                                           train_list=str(spec["train_list"]) if spec["train_list"] else None),
                           train=TrainConfig(threads=0))
        train(config, run, progress=False)
    metrics = evaluate_run(run, split="test", out=run / "eval_test")
    return {"name": name, "model": model, "params": params, "image_size": size,
            "validation": validation_figures(run, SCORED[dataset]),
            "test": {k: metrics[k] for k in ("image_auroc", "image_ap", "pixel_auroc", "aupro", "recall", "fpr")},
            "per_type_image_auroc": metrics["per_type_image_auroc"]}


def summary(dataset: str) -> str:
    records = [json.loads(p.read_text()) for p in sorted(OUT.glob(f"{dataset}_*.json"))]
    names = SCORED[dataset]
    lines = [f"{dataset}: {len(records)} settings", "| setting | " + " | ".join(names) + " | test |",
             "|---|" + "---|" * (len(names) + 1)]
    for r in records:
        lines.append(f"| {r['name']} | " + " | ".join(f"{100 * r['validation'][v]:.1f}" for v in names)
                     + f" | {100 * r['test']['image_auroc']:.1f} |")
    groups = {"all": records, **{m: [r for r in records if r["model"] == m] for m in sorted({r["model"] for r in records})}}
    for group, members in groups.items():
        if len(members) < 3:
            continue
        test = [r["test"]["image_auroc"] for r in members]
        rhos = [spearmanr([r["validation"][v] for r in members], test).statistic for v in names]
        lines.append(f"Spearman {group} ({len(members)}): " + ", ".join(f"{v} {rho:.2f}" for v, rho in zip(names, rhos)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=list(SETTINGS), required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vr"))
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--summary", action="store_true", help="print the table and correlations of the records")
    parser.add_argument("--rescore", action="store_true", help="score the validations again on existing fits")
    args = parser.parse_args()
    if args.summary:
        print(summary(args.dataset))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.only or SETTINGS[args.dataset]:
        out = OUT / f"{args.dataset}_{name}.json"
        if out.is_file() and not args.rescore:
            continue
        record = {**provenance(), **run_setting(args.dataset, name, args.work)}
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(name, json.dumps({"validation": record["validation"], "test": record["test"]["image_auroc"]}), flush=True)
    print(summary(args.dataset))


if __name__ == "__main__":
    main()
