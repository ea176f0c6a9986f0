"""Benchmark a fused detector (`surfad fuse`) of trained runs on their test split.

    python benchmarks/fuse.py benchmarks/runs/SQUASHED benchmarks/runs/TILED

Fuses the runs into benchmarks/runs/fused_<run>+<run> (standardised and calibrated on their shared
validation split), evaluates it on the test split with `surfad evaluate` and writes
benchmarks/results/fused/<run>+<run>.json: the fused figures beside each member's own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from run import provenance

from surfad.detector import fuse_runs
from surfad.evaluate import evaluate_run

OUT = Path(os.environ.get("SURFAD_BENCH_OUT", Path(__file__).resolve().parent))
KEYS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro", "per_type_image_auroc")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    name = "+".join(r.name for r in args.runs)
    fused = OUT / "runs" / f"fused_{name}"
    shutil.rmtree(fused, ignore_errors=True)  # a benchmark re-run replaces its own earlier fused folder
    fuse_runs(args.runs, fused)
    metrics = {"fused": evaluate_run(fused, split="test", out=fused / "eval_test")}
    with tempfile.TemporaryDirectory() as scratch:  # the members' own figures, without touching their folders
        for run in args.runs:
            metrics[run.name] = evaluate_run(run, split="test", out=Path(scratch) / run.name)
    result = {"runs": [str(r) for r in args.runs], **provenance(),
              **{label: {k: m[k] for k in KEYS} for label, m in metrics.items()}}
    out = OUT / "results" / "fused" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({label: round(m["image_auroc"], 4) for label, m in metrics.items()}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
