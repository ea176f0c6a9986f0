"""Training a fitted model: one pass over the good training images, then validation and shipping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from surfad import bundle
from surfad.config import RunConfig
from surfad.models import IMAGE_LAYOUT, FittedModel
from surfad.scoring import ScoredSet
from surfad.training.run_folder import write_history
from surfad.training.setup import Training
from surfad.training.validation import validate
from surfad.utils import atomic_write_json


def image_batches(images: Dataset, batch_size: int) -> Iterator[torch.Tensor]:
    """The dataset's images, in order, as (B, C, S, S) batches."""
    for start in range(0, len(images), batch_size):
        batch = torch.stack([images[i]["image"] for i in range(start, min(start + batch_size, len(images)))])
        yield batch.contiguous(memory_format=IMAGE_LAYOUT)


def fit_and_validate(config: RunConfig, t: Training, out: Path, progress: bool) -> ScoredSet:
    """Fit (unless the folder already holds the fitted weights), ship, validate once and record it as
    the run's only history row; returns the validation scores for calibration."""
    model = t.model
    assert isinstance(model, FittedModel)
    if (out / bundle.WEIGHTS).is_file():  # a fit that finished before an interruption
        bundle.load_weights(model, out / bundle.WEIGHTS)
        fit: dict[str, Any] = bundle.read_meta(out).get("fit", {})
        print(f"{out}: already fitted; validating and calibrating")
    else:
        started = time.monotonic()
        fit = model.fit(image_batches(t.train_images, t.batch_size), len(t.train_images), progress)
        fit["fit_seconds"] = round(time.monotonic() - started, 2)
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
