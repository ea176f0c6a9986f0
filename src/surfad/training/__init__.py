"""Training: splits -> datasets -> a trained (or fitted), validated, calibrated run folder.

setup.py: the resolved config and what is built from it; loop.py: one epoch and the weight
average; gradient.py: epochs, selection and resume; fitting.py: one-pass fitting; validation.py:
validation and what to ship; checkpoint.py: the atomic `last` checkpoint; run_folder.py: the
folder's files; examples.py: the training images kept to explain verdicts (RUN/examples).

Model-independent: a model's registry entry says how it learns (surfad.models.base). Validation
never looks at the test set. With `ema_decay` > 0 a moving average of the weights is what gets
validated, selected and shipped (best_detect, best_seg); `last` keeps the raw training weights.
With `data.tile_scale` > 0 gradient training sees random tiles (data.dataset.TileDataset), fitting
sees every tile (GridTileDataset), and validation scores whole images from their tiles.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from surfad import bundle
from surfad.config import RunConfig
from surfad.data.roi import load_roi, optional_roi
from surfad.data.splits import Splits, make_splits
from surfad.data.tiles import default_stride
from surfad.errors import SurfadError
from surfad.models import model_spec
from surfad.scoring import ScoredSet
from surfad.training.checkpoint import TrainState
from surfad.training.distributed import World, from_main, join, leave
from surfad.training.examples import keep_examples
from surfad.training.fitting import fit_and_validate
from surfad.training.gradient import resume_state, run_epochs
from surfad.training.run_folder import (
    calibrate_shipped,
    clear_untrained,
    has_trained,
    start_run_folder,
)
from surfad.training.setup import (
    Training,
    build_training,
    check_settings,
    resolve_config,
    resolve_geometry,
)
from surfad.training.validation import validate
from surfad.utils import remove_stale_temp_files, resolve_device

__all__ = ["Training", "build_training", "check_settings", "place_train_defects", "resolve_config", "resolve_geometry",
           "train"]


def prepare(config: RunConfig, out: Path, resume: bool, splits: Splits | None = None) -> tuple[RunConfig, Splits, bool]:
    """(resolved config, splits, whether to continue a checkpoint) for a run into `out`.

    --resume continues a run's checkpoint; a run that never trained (stopped before its first
    checkpoint) is started again from its saved config and splits. A fresh start refuses a folder
    holding a run that trained, and replaces one that never did. A fresh start makes the splits from
    config.data, or takes `splits` as given (e.g. a subset of the training images with the validation
    and test of the whole set, as `surfad curve` does).
    """
    saved = (out / bundle.CONFIG).is_file()
    if resume:
        if not saved:
            raise SurfadError(f"{out}: nothing to resume (no {bundle.CONFIG}); drop --resume to start a new run")
        # load_config: a config.yaml edited since the run started (model, scoring, tiling) is refused
        config, splits = bundle.load_config(out), Splits.load(out / bundle.SPLITS)
        if not has_trained(out):
            print(f"{out} stopped before its first checkpoint: training it from the start with its saved config and splits")
            for name in (bundle.WEIGHTS, bundle.CALIBRATION):
                (out / name).unlink(missing_ok=True)
            return config, splits, False
        return config, splits, True
    if saved and has_trained(out):
        raise SurfadError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
    if saved:
        print(f"{out} holds a run that never trained (no checkpoint): replacing it")
        clear_untrained(out)
    if splits is None:
        splits = make_splits(config.data, check_test=False)  # training never opens a test image
    elif not splits.train:
        raise SurfadError(f"{out}: the given splits have no training images")
    return resolve_config(config, splits), place_train_defects(splits, config.model), False


def place_train_defects(splits: Splits, model: str) -> Splits:
    """The splits a model trains with: the listed training defects stay apart for a model that learns
    from them; any other model takes them into validation, where real defects choose the threshold
    (and the epoch), since it cannot learn from them."""
    if not splits.train_defects:
        return splits
    if model_spec(model).learns_from_defects:
        unmasked = [str(s.path) for s in splits.train_defects if s.mask_path is None]
        if unmasked:  # an empty mask would teach the model that the defect is good
            raise SurfadError(f"data.train_defects: model {model} learns where a defect is from its mask, and "
                              f"{len(unmasked)} listed image(s) have none: {', '.join(unmasked[:3])}; give their masks "
                              "(e.g. --mask-dir for the folder layout) or list only images that have one")
        return splits
    print(f"model {model} does not learn from defects: the {len(splits.train_defects)} images of data.train_defects "
          "join validation, where they choose the threshold" + ("" if model_spec(model).fitted else " and the epoch"))
    return replace(splits, val=splits.val + splits.train_defects, train_defects=[])


def training_roi(out: Path, config: RunConfig) -> np.ndarray | None:
    """The region of interest of a run: its saved roi.png when it has one (resuming), else data.roi's."""
    if (out / bundle.ROI).is_file():
        return load_roi(out / bundle.ROI)
    return optional_roi(config.data.roi)


def train(config: RunConfig, out: str | Path, resume: bool = False, progress: bool = True,
          splits: Splits | None = None) -> Path:
    """Train (or fit) a model as `config` says into the run folder `out`; returns the run folder.
    splits: train, validate and test on these instead of the splits config.data makes (a fresh start
    only; resuming takes the run's own). Under torchrun (WORLD_SIZE > 1) every process calls it: see
    surfad.training.distributed."""
    out = Path(out)
    if resume and splits is not None:
        raise SurfadError(f"{out}: a resumed run keeps its own splits; give splits to a fresh start only")
    world = join(resolve_device(config.train.device))
    try:
        return train_in(world, config, out, resume, progress, splits)
    finally:
        leave(world)


def train_in(world: World, config: RunConfig, out: Path, resume: bool, progress: bool,
             splits: Splits | None = None) -> Path:
    """train() as one of the world's processes (process 0 alone writes and reports)."""
    config, splits, continuing = from_main(world, lambda: prepare(config, out, resume, splits))
    check_settings(config, splits)
    dc = config.data
    roi = training_roi(out, config)
    t = build_training(config, splits, roi, world)
    n_params = sum(p.numel() for p in t.model.parameters())
    if world.main:
        remove_stale_temp_files(out)
        print(splits.summary())
        if not (out / bundle.META).is_file():
            start_run_folder(out, config, splits, n_params, roi)
        processes = f", {world.size} processes" if world.distributed else ""
        print(f"model {config.model}: {n_params / 1e6:.2f} M parameters, {dc.image_size}x{dc.image_size}x"
              f"{dc.input_channels}, device {t.device}{processes}")
        if dc.tile_scale > 0:
            print(f"tiling: images scaled by {dc.tile_scale}, inference tiles "
                  f"{default_stride(dc.image_size, dc.tile_stride)} px apart")
    if model_spec(config.model).fitted:
        scored = fit_and_validate(config, t, out, continuing, progress)
    else:
        from_main(world, lambda: None)  # the run folder exists before any process trains
        state = resume_state(out, t, config) if continuing else TrainState()
        run_epochs(config, t, out, state, progress)
        scored = from_main(world, lambda: shipped_scores(config, t, out, progress))
    if world.main:
        calibration = calibrate_shipped(scored, splits, out, roi)
        print(f"trained {out}: shipped and calibrated on val ({calibration.strategy}): threshold "
              f"{calibration.threshold:.5g}")
        keep_examples(out, config, splits, t)
    return out


def shipped_scores(config: RunConfig, t: Training, out: Path, progress: bool) -> ScoredSet:
    """The validation scores of the shipped weights (loaded into the model), to calibrate them."""
    bundle.load_weights(t.model, out / bundle.WEIGHTS)
    _, scored = validate(t.graph, config, t.val_set, t.device, t.batch_size, progress, t.roi)
    return scored
