"""Diagnostic: does averaging the anomaly maps of several runs beat each run alone?

Each run's own score rule is applied to its raw maps, and the first run's rule to the mean of all
runs' maps, on the test split. It answers whether runs differ by noise (averaging helps) or share
their errors (it does not); the ensemble costs the sum of the runs' training time, so it is not a
candidate within a training budget.

    python benchmarks/ensemble.py benchmarks/runs/rd_mt_surface_e12 benchmarks/runs/rd_mt_surface_e12_seed1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from score_choice import raw_maps  # maps before the score rule
from sklearn.metrics import roc_auc_score

from surfad import bundle
from surfad.config import RunConfig
from surfad.scoring import ImageScorer


def image_auroc(run: Path, maps: torch.Tensor, labels: np.ndarray) -> float:
    """Image AUROC of maps (N, 1, S, S) scored by the run's own score rule, in %."""
    _, scores = ImageScorer(RunConfig.load(run / bundle.CONFIG).score)(maps)
    return 100 * roc_auc_score(labels, scores.numpy().ravel())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    maps, labels = [], None
    for run in args.runs:
        run_maps, run_labels = raw_maps(run, args.split)
        if labels is not None and not np.array_equal(labels, run_labels):
            raise SystemExit(f"{run}: its {args.split} split differs from {args.runs[0]}'s")
        maps, labels = [*maps, run_maps], run_labels
        print(f"{run.name}: image AUROC {image_auroc(run, run_maps, labels):.1f}", flush=True)
    mean = torch.stack(maps).mean(dim=0)
    print(f"mean of {len(maps)} maps: image AUROC {image_auroc(args.runs[0], mean, labels):.1f}")


if __name__ == "__main__":
    main()
