"""A few real defects as training signal: the few-shot protocol of ../shared/data.

    python benchmarks/fewshot_defects.py --dataset mt|wood [--shots 0,1,2,5] [--models simplenet,padim,patchcore]

The defects listed in the dataset's splits/fewshot_defects_5.txt (5 per type on magnetic tile, 5 on
wood) may be trained on; the first k of each type give the k-shot list. Every run, whatever its k, is
evaluated on the same reduced test set: the test split without any of the listed defects (magnetic
tile: 191 good + 367 defective). k = 0 is the unsupervised model; a model that cannot learn from
defects (padim, patchcore) is measured at k = 0 and at the largest k, where the listed defects join
its validation and choose its threshold. Thresholds as training sets them
(fpr:0.01 on the good validation images when validation has no real defects); recall at that
threshold is reported beside AUROC. Records: benchmarks/results/fewshot_defects/<dataset>_<model>_k<k>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from surfad import bundle
from surfad.config import DataConfig, RunConfig, TrainConfig
from surfad.data.splits import Splits
from surfad.evaluate import evaluate_run
from surfad.models import model_spec
from surfad.training import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import DATASETS, RESULTS, provenance  # noqa: E402

LISTS = {"mt": "splits/fewshot_defects_5.txt", "wood": "splits/fewshot_defects_5.txt"}
EPOCHS = {"simplenet": 8}


def type_of(line: str, dataset: str) -> str:
    return line.split("/")[0] if dataset == "mt" else line.split("/")[1]


def k_shot_list(root: Path, dataset: str, k: int, out: Path) -> Path:
    """The first k listed defects of each type, written to `out`."""
    lines = [line.strip() for line in (root / LISTS[dataset]).read_text().splitlines() if line.strip()]
    by_type: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        by_type[type_of(line, dataset)].append(line)
    out.write_text("".join(f"{line}\n" for kind in sorted(by_type) for line in by_type[kind][:k]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=list(LISTS), required=True)
    parser.add_argument("--shots", default="0,1,2,5")
    parser.add_argument("--models", default="simplenet,padim,patchcore")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fewshot_defects"))
    args = parser.parse_args()
    spec = DATASETS[args.dataset]
    root = spec["path"]
    listed = {(root / line.strip()).resolve() for line in (root / LISTS[args.dataset]).read_text().splitlines()
              if line.strip()}
    out_dir = RESULTS / "fewshot_defects"
    out_dir.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    shots = [int(s) for s in args.shots.split(",")]
    for model in args.models.split(","):
        for k in shots:
            if 0 < k < max(shots) and not model_spec(model).learns_from_defects:
                continue  # a fitted model takes listed defects into validation (its threshold): k = 0 and the most
            name = f"{args.dataset}_{model}_k{k}"
            record_path = out_dir / f"{name}.json"
            if record_path.is_file():
                continue
            run = args.work / name
            data = DataConfig(path=str(root), layout=spec["layout"],
                              train_list=str(spec["train_list"]) if spec["train_list"] else None,
                              train_defects=str(k_shot_list(root, args.dataset, k, args.work / f"{name}.txt")) if k else None)
            config = RunConfig(model=model, data=data,
                               train=TrainConfig(threads=0, epochs=EPOCHS.get(model, 30), select_after=0))
            started = time.monotonic()
            if not (run / bundle.CALIBRATION).is_file():
                train(config, run, progress=False)
            seconds = time.monotonic() - started
            test = [s for s in Splits.load(run / bundle.SPLITS).test if s.path.resolve() not in listed]
            metrics = evaluate_run(run, split="test_without_listed_defects", out=run / "eval_reduced", samples=test)
            record = {**provenance(), "name": name, "model": model, "shots_per_type": k,
                      "train_defects": len(Splits.load(run / bundle.SPLITS).train_defects),
                      "train_seconds": round(seconds, 1), "test_images": len(test),
                      **{key: metrics[key] for key in ("image_auroc", "image_ap", "pixel_auroc", "aupro", "recall",
                                                       "fpr", "threshold_strategy") if key in metrics},
                      "per_type_image_auroc": metrics["per_type_image_auroc"]}
            record_path.write_text(json.dumps(record, indent=1) + "\n")
            print(name, json.dumps({k: record[k] for k in ("image_auroc", "recall", "train_seconds")}), flush=True)


if __name__ == "__main__":
    main()
