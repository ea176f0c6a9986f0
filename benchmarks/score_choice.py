"""Which image score rule works best for a trained run? Chosen on validation, test shown beside.

The anomaly maps are computed once; each rule (smoothing sigma x reduction) is then applied to
them. The rule with the best validation AUROC (real defects in validation when the dataset has
them, else the same synthetic defects training validated on) is the one to use; test AUROC is
printed for information, never used to choose.

    python benchmarks/score_choice.py benchmarks/runs/vae_wood_skips_3
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from surfad import bundle
from surfad.config import ScoreConfig
from surfad.data.dataset import ImageDataset
from surfad.data.splits import Splits
from surfad.scoring import ImageScorer
from surfad.scoring import score_dataset
from surfad.training.validation import validation_dataset

RULES = [ScoreConfig(smoothing_sigma=s, pool=p, reduce=r, topk=k) for s, p, (r, k) in itertools.product(
    (0.0, 2.0, 4.0), (1, 5, 11), (("mean", 0), ("max", 0), ("topk", 5), ("topk", 10), ("topk", 100), ("topk", 1000)))
    if not (p > 1 and r == "mean")]  # pooling does not change the mean


def raw_maps(run: Path, split: str) -> tuple[torch.Tensor, np.ndarray]:
    config, graph = bundle.load_graph(run)
    splits = Splits.load(run / bundle.SPLITS)
    images = ImageDataset(splits.get(split), config.data.image_size, config.data.channels)
    dataset = images if split == "test" else validation_dataset(
        images, config.train.val_synthetic, config.train.val_defect_source, config.train.seed + 1)
    model = graph.model

    def score(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            amap = model(torch.from_numpy(batch))
        return amap[:, 0].numpy(), np.zeros(len(batch))

    scored = score_dataset(score, dataset)
    return torch.from_numpy(scored.maps[:, None]), scored.labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    val_maps, val_labels = raw_maps(args.run, "val")
    test_maps, test_labels = raw_maps(args.run, "test")
    rows = []
    for rule in RULES:
        scorer = ImageScorer(rule)
        with torch.inference_mode():
            val = roc_auc_score(val_labels, scorer(val_maps)[1].numpy())
            test = roc_auc_score(test_labels, scorer(test_maps)[1].numpy())
        rows.append((val, test, rule))
    print(f"{'sigma':>5} {'pool':>4} {'reduce':>6} {'k':>5}  val AUROC  test AUROC")
    for val, test, rule in sorted(rows, key=lambda r: -r[0]):
        k = rule.topk if rule.reduce == "topk" else ""
        print(f"{rule.smoothing_sigma:5.1f} {rule.pool:>4} {rule.reduce:>6} {k:>5}  {val:9.4f}  {test:10.4f}")


if __name__ == "__main__":
    main()
