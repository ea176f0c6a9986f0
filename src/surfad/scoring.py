"""Run a scoring function over a dataset and collect scores, maps, labels and masks in arrays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class ScoredSet:
    """Model outputs on a labelled set, at model resolution: maps (N, S, S), masks bool (N, S, S)."""

    scores: np.ndarray
    maps: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def torch_score_fn(graph: torch.nn.Module, device: torch.device) -> ScoreFn:
    """A ScoreFn that runs an InferenceGraph with torch (no gradients)."""

    def score(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            amap, scores = graph(torch.from_numpy(batch).to(device))
        return amap[:, 0].float().cpu().numpy(), scores.float().cpu().numpy()

    return score


def score_dataset(score: ScoreFn, dataset: Dataset, batch_size: int = 16) -> ScoredSet:
    """Score every item of a dataset yielding {"image", "mask", "label"} dicts."""
    scores, maps, labels, masks = [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        amap, s = score(batch["image"].numpy())
        scores.append(s)
        maps.append(amap)
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
    return ScoredSet(np.concatenate(scores), np.concatenate(maps), np.concatenate(labels), np.concatenate(masks))
