"""Diagnostic: does averaging the anomaly maps of several runs beat each run alone?

Each run's own score rule is applied to its maps and to the mean of all runs' maps (the rule of the
first run), on the test split. It answers whether runs differ by noise (averaging helps) or share
their errors (it does not); the ensemble costs the sum of the runs' training time, so it is not a
candidate within a training budget.

    python benchmarks/ensemble.py benchmarks/runs/rd_mt_surface_e12 benchmarks/runs/rd_mt_surface_e12_seed1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from surfad import bundle
from surfad.data.dataset import ImageDataset
from surfad.data.splits import Splits
from surfad.models import ImageScorer
from surfad.scoring import score_dataset, torch_score_fn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    maps, labels, rules = [], None, []
    for run in args.runs:
        config, graph = bundle.load_graph(run)
        samples = Splits.load(run / bundle.SPLITS).get(args.split)
        images = ImageDataset(samples, config.data.image_size, config.data.channels)
        scored = score_dataset(torch_score_fn(graph, torch.device("cpu")), images)
        if labels is not None and not np.array_equal(labels, scored.labels):
            raise SystemExit(f"{run}: its {args.split} split differs from {args.runs[0]}'s")
        maps.append(scored.maps)
        labels, rules = scored.labels, [*rules, ImageScorer(config.score)]
        print(f"{run.name}: image AUROC {100 * roc_auc_score(labels, scored.scores):.1f}", flush=True)
    _, scores = rules[0](torch.from_numpy(np.mean(maps, axis=0)[:, None]))
    print(f"mean of {len(maps)} maps: image AUROC {100 * roc_auc_score(labels, scores.numpy().ravel()):.1f}")


if __name__ == "__main__":
    main()
