"""Training a fitted model: one pass over the good training images, then validation and shipping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from surfad import bundle
from surfad.config import RunConfig
from surfad.models import IMAGE_LAYOUT, FittedModel
from surfad.models.base import extract_all
from surfad.scoring import ScoredSet
from surfad.training.distributed import gather_in_order, shard
from surfad.training.run_folder import write_history
from surfad.training.setup import Training
from surfad.training.validation import validate
from surfad.utils import atomic_write_json


def image_batches(images: Dataset, batch_size: int) -> Iterator[torch.Tensor]:
    """The dataset's images, in order, as (B, C, S, S) batches."""
    for start in range(0, len(images), batch_size):
        batch = torch.stack([images[i]["image"] for i in range(start, min(start + batch_size, len(images)))])
        yield batch.contiguous(memory_format=IMAGE_LAYOUT)


def fit_and_validate(config: RunConfig, t: Training, out: Path, continuing: bool, progress: bool) -> ScoredSet | None:
    """Fit (unless `continuing` a run whose fit finished before an interruption), ship, validate once
    and record it as the run's only history row; returns the validation scores for calibration. With
    several processes each extracts its share of the images and process 0 fits on all of them (the
    others return None)."""
    model, world = t.model, t.world
    assert isinstance(model, FittedModel)
    if continuing:  # prepare() found the fitted weights
        if not world.main:
            return None
        bundle.load_weights(model, out / bundle.WEIGHTS)
        fit: dict[str, Any] = bundle.read_meta(out).get("fit", {})
        print(f"{out}: already fitted; validating and calibrating")
    else:
        started = time.monotonic()
        n = len(t.train_images)
        model.plan(n)  # a fit that cannot work is refused before any image is read
        mine = shard(torch.arange(n), world).tolist()
        part = extract_all(model, image_batches(Subset(t.train_images, mine), t.batch_size), len(mine),
                           progress and world.main)
        features = gather_in_order(part, world, n)
        if not world.main:
            return None
        extracted = time.monotonic()
        fit = {**model.fit_features(features, progress), "feature_seconds": round(extracted - started, 2),
               "fit_seconds": round(time.monotonic() - started, 2), "processes": world.size}
        bundle.save_weights(model, out / bundle.WEIGHTS)
        atomic_write_json(out / bundle.META, {**bundle.read_meta(out), "fit": fit})
    started = time.monotonic()
    figures, scored = validate(t.graph, config, t.val_set, t.device, t.batch_size, progress, t.roi)
    row = {"epoch": 1, **{k: v for k, v in fit.items() if isinstance(v, (int, float))}, **figures, "best": 1,
           "validation_seconds": round(time.monotonic() - started, 2)}
    write_history(out, [row])
    print(f"fitted: {', '.join(f'{k} {v}' for k, v in fit.items())}; "
          f"validation {', '.join(f'{k} {v:.4f}' for k, v in figures.items())}")
    return scored
