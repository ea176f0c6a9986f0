"""Learning curves of padim and patchcore on magnetic tile and wood, one after another (`surfad curve`).

    python benchmarks/curves.py [--only mt_padim,wood_patchcore] [--threads 2]

Each curve fits on 5, 10, 20 and 50 good images (3 seeds each) and on all of them, with the settings
of the headline rows of benchmarks/RESULTS.md ("Pretrained features"): magnetic tile with the
standard training list at 224 px; wood at 320 px (patchcore with a 10% coreset). Points go to
benchmarks/runs/curves/<name>/ (resumable); curve.csv and curve.png are copied to
benchmarks/results/curves/<name>.csv|png with a JSON record of the command, config and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil

import torch

from run import DATASETS, RESULTS, provenance  # benchmarks/run.py

from surfad.config import DataConfig, RunConfig, TrainConfig
from surfad.curve import run_curve

SIZES = "5,10,20,50,all"
SEEDS = 3
CURVES = {
    "mt_padim": ("mt", "padim", 224, {}),
    "mt_patchcore": ("mt", "patchcore", 224, {}),
    "wood_padim": ("wood", "padim", 320, {}),
    "wood_patchcore": ("wood", "patchcore", 320, {"coreset_ratio": 0.1}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(CURVES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for name in args.only.split(","):
        dataset, model, size, params = CURVES[name]
        spec = DATASETS[dataset]
        config = RunConfig(model=model, model_params=params,
                           data=DataConfig(path=str(spec["path"]), layout=spec["layout"], image_size=size,
                                           train_list=str(spec["train_list"]) if spec["train_list"] else None),
                           train=TrainConfig(threads=args.threads, batch_size=16))
        out = RESULTS.parent / "runs" / "curves" / name
        run_curve(config, SIZES, SEEDS, out, progress=False)
        target = RESULTS / "curves"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "curve.csv", target / f"{name}.csv")
        shutil.copyfile(out / "curve.png", target / f"{name}.png")
        record = {"name": name, **provenance(), "sizes": SIZES, "seeds": SEEDS, "config": config.to_dict(),
                  "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, torch {torch.__version__}"}
        (target / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
