"""The run folder as training sees it: start one, tell whether one ever trained, record an epoch,
and calibrate what was shipped (see surfad.bundle for the files)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from surfad import __version__, bundle
from surfad.calibrate import Calibration, calibrate, default_strategy
from surfad.config import RunConfig
from surfad.data.roi import roi_fingerprint, save_roi
from surfad.data.splits import Splits
from surfad.detector.examples import FOLDER as EXAMPLES
from surfad.errors import SurfadError
from surfad.models import model_spec
from surfad.report import history_plot
from surfad.scoring import ScoredSet
from surfad.utils import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    sha256_file,
)

# What a run that never finished a first epoch (or a fit) can hold; a fresh start replaces these.
UNTRAINED_FILES = (bundle.CONFIG, bundle.META, bundle.SPLITS, bundle.HISTORY, bundle.HISTORY_PLOT, bundle.ROI)


def has_trained(out: Path) -> bool:
    """Whether the folder holds what resuming continues from: the `last` checkpoint of a gradient-
    trained run (shipped weights alone can be there when it stopped before its first checkpoint),
    the fitted weights of a fitted one."""
    try:
        fitted = model_spec(RunConfig.load(out / bundle.CONFIG).model).fitted
    except SurfadError:  # an unreadable config: any trained file counts
        return (out / bundle.LAST_STATE).is_file() or (out / bundle.WEIGHTS).is_file()
    return (out / (bundle.WEIGHTS if fitted else bundle.LAST_STATE)).is_file()


def clear_untrained(out: Path) -> None:
    """Remove what a run that never reached its first checkpoint wrote, so it can start again."""
    for name in (*UNTRAINED_FILES, bundle.WEIGHTS):
        (out / name).unlink(missing_ok=True)
    for folder in ("grids", "checkpoints", EXAMPLES):
        shutil.rmtree(out / folder, ignore_errors=True)  # train_in then removes stale temporary files


def start_run_folder(out: Path, config: RunConfig, splits: Splits, n_params: int, roi: np.ndarray | None) -> None:
    """A new run folder with its config, splits, meta.json and region of interest (roi.png)."""
    dc = config.data
    out.mkdir(parents=True, exist_ok=True)
    if roi is not None:
        save_roi(roi, out / bundle.ROI)
    config.save(out / bundle.CONFIG)
    splits.save(out / bundle.SPLITS)
    atomic_write_json(out / bundle.META, {
        "surfad_version": __version__,
        "model": config.model,
        "image_size": dc.image_size,
        "channels": dc.channels,
        "parameters": n_params,
        "data": {"path": dc.path, "layout": splits.layout, "train": len(splits.train), "val": len(splits.val)},
        "inference": bundle.inference_settings(config),
    })


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    """history.csv and its curves, history.png."""
    atomic_write_csv(out / bundle.HISTORY, history)
    atomic_write_bytes(out / bundle.HISTORY_PLOT, history_plot(history))


def calibrate_shipped(scored: ScoredSet, splits: Splits, out: Path, roi: np.ndarray | None) -> Calibration:
    """Calibrate the shipped weights' validation scores on the real validation images only (the
    synthetic defects, which come after them, choose epochs but never thresholds): f1 with real
    defects, else fpr:0.01 on the good images. Saved as calibration.json, with the hash of the
    shipped weights (model.safetensors) that made the scores."""
    real = np.arange(len(scored.labels)) < len(splits.val)
    strategy = default_strategy(any(s.label == 1 for s in splits.val))
    calibration = calibrate(scored.scores[real], scored.labels[real], scored.maps[real], scored.masks[real], strategy,
                            split="val", valid=scored.valid, roi_key=roi_fingerprint(roi),
                            weights_sha256=[sha256_file(out / bundle.WEIGHTS)])
    calibration.save(out / bundle.CALIBRATION)
    return calibration
