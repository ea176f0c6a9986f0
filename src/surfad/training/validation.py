"""Validation during training and the choice of what to ship: never the test set.

Validation scores the val split (held-out training good images, plus the layout's validation
images); when it has no real defects, synthetic defects pasted on the held-out good images stand
in. The best epoch by validation AUROC (or, without defects, by the lowest mean good score) is
shipped as model.safetensors ("best_detect"; the first `select_after` epochs are not eligible); the
best by validation AUPRO is kept as checkpoints/best_seg.safetensors when validation has masks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from surfad import bundle
from surfad.config import RunConfig
from surfad.data.dataset import ImageDataset
from surfad.data.defects import DefectSynthesizer, synthetic_defect
from surfad.data.graded_defects import GRADED, graded_defect, graded_plan
from surfad.data.roi import resize_roi
from surfad.data.transforms import resize_mask
from surfad.metrics import image_metrics, pixel_metrics
from surfad.scoring import ScoredSet, image_score_fn, score_dataset, torch_score_fn
from surfad.training.checkpoint import TrainState


class ArrayDataset(Dataset):
    """In-memory items in ImageDataset's format (used for synthetic validation defects)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], labels: np.ndarray) -> None:
        self.images, self.masks, self.labels = images, masks, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": torch.from_numpy(self.images[i]),
            "mask": torch.from_numpy(self.masks[i][None].astype(np.float32)),
            "label": torch.tensor(int(self.labels[i])),
            "index": torch.tensor(i),
        }


def validation_dataset(val: ImageDataset, synthetic: bool, source: str, seed: int, per_image: int = 1) -> Dataset:
    """The val split, plus `per_image` synthetic-defect copies of each good image when it has no real
    defects: graded ones (source "graded", surfad.data.graded_defects: cracks, stains, pits and
    patches of the surface at three levels of difficulty, placed anywhere in the region of interest),
    or those of a DefectSynthesizer source.

    When tiling, the defects are drawn on the whole scaled image (graded) or on a random tile-sized
    window of it (the other sources); masks are kept at model resolution, like real ones.
    """
    has_defects = any(s.label == 1 for s in val.samples)
    if has_defects or not synthetic:
        return val
    good = [i for i, sample in enumerate(val.samples) if sample.label == 0]
    rng = np.random.default_rng(seed)
    images, masks = [], []
    if source == GRADED:
        for i, kind, level in graded_plan(len(good), per_image):
            image = val[good[i]]["image"].numpy()
            inside = None if val.roi is None else resize_roi(val.roi, *image.shape[1:])
            defected, mask = graded_defect(image, kind, level, rng, inside)
            images.append(defected)
            masks.append(resize_mask(mask, val.image_size))
    else:
        synthesizer = DefectSynthesizer(source, image_size=val.image_size, seed=seed)
        for i in good:
            for _ in range(per_image):
                image, mask = defect_inside(val[i]["image"].numpy(), synthesizer, rng, val.roi)
                images.append(image)
                masks.append(resize_mask(mask, val.image_size))
    fake = ArrayDataset(images, masks, np.ones(len(images), dtype=np.int64))
    return ConcatDataset([val, fake])


def defect_inside(image: np.ndarray, synthesizer: DefectSynthesizer, rng: np.random.Generator,
                  roi: np.ndarray | None, attempts: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """synthetic_defect on a (C, H, W) image, kept inside the region of interest (when there is one):
    a defect outside it could never be seen, so validation would count it as a miss."""
    if roi is None:
        return synthetic_defect(image, synthesizer, rng)
    inside = resize_roi(roi, *image.shape[1:])
    for _ in range(attempts):
        defected, mask = synthetic_defect(image, synthesizer, rng)
        if (mask & inside).any():
            break
    return np.where(inside, defected, image).astype(np.float32), mask & inside


def validate(graph: torch.nn.Module, config: RunConfig, dataset: Dataset, device: torch.device,
             batch_size: int, progress: bool = False, roi: np.ndarray | None = None) -> tuple[dict[str, float], ScoredSet]:
    """Validation figures: image AUROC/AP when defects exist, pixel AUROC/AUPRO when masks
    exist (inside the region of interest, if any), and the mean score of good images. progress: a
    bar while scoring."""
    graph.eval()
    scored = score_dataset(image_score_fn(torch_score_fn(graph, device), config, roi), dataset, batch_size,
                           progress="validate" if progress else None, roi=roi)
    figures = {"val_good_score": float(scored.scores[scored.labels == 0].mean())}
    if (scored.labels == 1).any() and (scored.labels == 0).any():
        m = image_metrics(scored.scores, scored.labels, threshold=float(np.median(scored.scores)))
        figures.update(val_auroc=m["image_auroc"], val_ap=m["image_ap"])
    if scored.masks.any():
        m = pixel_metrics(scored.maps, scored.masks, max_pixels=500_000, valid=scored.valid)
        figures.update(val_pixel_auroc=m["pixel_auroc"], val_aupro=m["aupro"])
    return figures, scored


def detection_value(figures: dict[str, float]) -> float:
    """Higher is better: validation AUROC when available, else minus the mean good score."""
    return figures["val_auroc"] if "val_auroc" in figures else -figures["val_good_score"]


def stalled(history: list[dict[str, Any]], patience: int) -> bool:
    """Whether the last `patience` validations (> 0) all came after the last new best (never before
    a first best: epochs up to select_after are not eligible)."""
    validated = [row for row in history if "val_good_score" in row]
    best_rows = [i for i, row in enumerate(validated) if row.get("best")]
    return patience > 0 and bool(best_rows) and len(validated) - 1 - best_rows[-1] >= patience


def select(state: TrainState, row: dict[str, Any], figures: dict[str, float], shipped: torch.nn.Module,
           out: Path) -> None:
    """Keep the shipped weights as best_detect and/or best_seg when this validation is the best so far
    (ties go to the later, longer-trained epoch), and mark the history row."""
    if detection_value(figures) >= state.best:
        state.best = detection_value(figures)
        bundle.save_weights(shipped, out / bundle.WEIGHTS)
        row["best"] = 1
    if figures.get("val_aupro", -math.inf) >= state.best_seg:
        state.best_seg = figures["val_aupro"]
        bundle.save_weights(shipped, out / bundle.CHECKPOINTS["best_seg"])
        row["best_seg"] = 1
