"""Training runs checked before they start (`surfad train --dry-run`); nothing is written.

It does what training does first (index the data, decode and check every file, hold out the
validation split, resolve the config, build the model and its datasets), then surveys the data
(image sizes, defect widths at the model's input), times a few training steps and a validation
pass on this machine to estimate the run's duration, and gives advice drawn from the measurements
in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
from safetensors.torch import save as save_weights
from torch.utils.data import Subset
from tqdm import tqdm

from surfad.calibrate import GOOD_ONLY_STRATEGY, parse_strategy
from surfad.categories import category_config
from surfad.config import RunConfig
from surfad.data.roi import optional_roi
from surfad.data.splits import Splits, make_splits
from surfad.data.survey import THIN_DEFECT_PX, DataSurvey, survey_data
from surfad.models import FitPlan, FittedModel, model_spec
from surfad.report import history_plot
from surfad.training import (
    Training,
    build_training,
    check_settings,
    place_train_defects,
    resolve_config,
    resolve_geometry,
)
from surfad.training.fitting import image_batches
from surfad.training.loop import train_epoch
from surfad.training.validation import validate
from surfad.utils import second_run_seconds

TIMED_STEPS = 2  # training steps timed (after the same steps run once untimed)
FEW_GOOD_IMAGES = 100  # with fewer good training images, the advice points to `surfad curve`


@dataclass
class TrainingPlan:
    """What `train` would do with a config, and what it would cost here."""

    config: RunConfig  # resolved, as the run would save it
    splits: Splits
    survey: DataSurvey
    parameters: int
    steps_per_epoch: int
    batch_size: int
    step_seconds: float  # one optimiser step, measured
    validation_seconds: float  # one validation pass (the calibration at the end is one more), measured
    writing_seconds: float  # what every epoch writes (history plot, checkpoints), measured in memory
    fit: FitPlan | None = None  # fitted models: what fitting takes (and then no steps)
    fit_seconds: float = 0.0  # fitted models: the fit's duration, estimated from timed parts
    geometry: str = ""  # how images become model inputs, and why (surfad.data.geometry)

    @property
    def validations(self) -> int:
        """Validation passes in a full run, the final calibration included."""
        if self.fit is not None:
            return 1
        return math.ceil(self.config.train.epochs / self.config.train.val_every) + 1

    @property
    def training_seconds(self) -> float:
        """An epoch without its validation: the steps and the writing."""
        return self.steps_per_epoch * self.step_seconds + self.writing_seconds

    @property
    def minutes(self) -> float:
        """Estimated duration of the whole run."""
        if self.fit is not None:
            return (self.fit_seconds + self.validation_seconds) / 60
        return (self.config.train.epochs * self.training_seconds + self.validations * self.validation_seconds) / 60

    @property
    def epochs_in_budget(self) -> int | None:
        """Epochs the time budget lets the run finish (it stops at the first epoch end past it); None without one."""
        budget = self.config.train.time_budget_min
        if budget <= 0 or self.fit is not None:
            return None
        epoch_seconds = self.training_seconds + self.validation_seconds / self.config.train.val_every
        return min(self.config.train.epochs, math.ceil(budget * 60 / epoch_seconds))

    def advice(self) -> list[str]:
        """What to change or know before training, each line tied to what surfad measured or does."""
        tc, dc = self.config.train, self.config.data
        real_defects = any(s.label == 1 for s in self.splits.val)
        good_val = sum(s.label == 0 for s in self.splits.val)
        out: list[str] = []
        if not real_defects:
            # A fitted model has no epochs: its validation figures only describe the one fit.
            role = "will measure the fitted model" if self.fit is not None else "will choose the shipped epoch"
            out.append(f"validation has no real defects: synthetic ones ({tc.val_defect_source}) {role}, "
                       f"and the threshold will be set on the {good_val} good validation images "
                       f"({GOOD_ONLY_STRATEGY}). Even a handful of real defects in a validation folder would "
                       "choose both.")
            _, rate = parse_strategy(GOOD_ONLY_STRATEGY)
            if good_val * (rate or 0.0) < 1:
                out.append(f"with {good_val} good validation images, {GOOD_ONLY_STRATEGY} allows none of them "
                           "to be NG: the threshold will sit at their highest score. More good images (or a larger "
                           "--val-ratio) make it less dependent on one image.")
        if self.survey.cross_split_copies:
            out.append(f"{len(self.survey.cross_split_copies)} files are byte-identical copies of files in another "
                       "split (listed by the survey line above): a test image that was trained on scores like a good "
                       "one, so metrics on it are optimistic. Remove one of each pair.")
        if not any(s.label == 1 for s in self.splits.test):
            out.append("the test split has no defective images: evaluation can report false alarms but no AUROC, "
                       "AP or recall.")
        low, high = self.survey.aspect_range
        if dc.tile_scale == 0 and (len(self.survey.sizes) > 1 and high / low > 1.1):
            out.append(f"image shapes vary (width/height {low:.2f} to {high:.2f}): squashing each to "
                       f"{dc.image_size}x{dc.image_size} stretches them differently; --tile-scale keeps one scale "
                       "(on magnetic tile it localised recondiff better: AUPRO 63.3 against 57.8).")
        spec = model_spec(self.config.model)
        chosen = spec.image_size  # validated for the pretrained models; a cost choice for the others
        if spec.pretrained and dc.tile_scale == 0 and dc.image_size < chosen:
            out.append(f"{self.config.model} at {dc.image_size} px: on real data its validation chose {chosen} px "
                       f"or more (benchmarks/RESULTS.md), its default; --image-size {chosen} costs about "
                       f"{(chosen / dc.image_size) ** 2:.1f}x as much.")
        if self.survey.thin_share >= 0.25:
            scale = "--tile-scale" if dc.tile_scale > 0 else "--image-size"
            out.append(f"{self.survey.thin_share:.0%} of defect regions are under {THIN_DEFECT_PX:g} px wide at the "
                       f"model's input. A larger {scale} makes them wider at a higher cost; whether that pays "
                       "depends on the data (on magnetic tile neither a larger size nor scale did: see "
                       "benchmarks/RESULTS.md).")
        n_train = len(self.splits.train)
        if n_train < FEW_GOOD_IMAGES:
            out.append(f"with {n_train} good training images, see `surfad curve` (the same data and model flags, "
                       "--sizes 5,10,20,all): it fits on subsets of them and shows how accuracy grows with their "
                       "number on your data, so you know whether more good images would pay (benchmarks/RESULTS.md, "
                       "\"How many good images\").")
        if tc.time_budget_min <= 0 and self.minutes > 60:
            out.append(f"the run would take about {self.minutes:.0f} min: --time-budget MIN, --patience N or fewer "
                       "--epochs bound it.")
        return out

    def report(self) -> str:
        """The plan as text for people."""
        tc, dc = self.config.train, self.config.data
        tiling = f", tiles of the images scaled by {dc.tile_scale:g}" if dc.tile_scale > 0 else ""
        model = (f"model {self.config.model}: {self.parameters / 1e6:.2f} M parameters, input "
                 f"{dc.image_size}x{dc.image_size}x{dc.input_channels}{tiling}")
        duration = f"{self.minutes * 60:.0f} s" if self.minutes < 2 else f"{self.minutes:.1f} min"
        if self.fit is not None:
            cost = [*self.fit.lines, f"cost here: fitting about {self.fit_seconds:.0f} s, "
                                     f"{self.validation_seconds:.1f} s for the validation"]
            estimate = f"estimated run: about {duration} (one fit, one validation, then calibration)"
        else:
            cost = [f"cost here: {self.step_seconds:.2f} s per step of {self.batch_size} "
                    f"({self.batch_size / self.step_seconds:.1f} images/s), {self.steps_per_epoch} steps per epoch, "
                    f"{self.validation_seconds:.1f} s per validation, {self.writing_seconds:.1f} s of writing per epoch"]
            estimate = (f"estimated run: about {duration} for {tc.epochs} epochs "
                        f"({self.validations} validations, calibration included)")
        lines = [self.splits.summary(), *self.survey.lines(), model, f"input: {self.geometry}", *cost, estimate]
        if self.epochs_in_budget is not None and self.epochs_in_budget < tc.epochs:
            lines.append(f"the time budget of {tc.time_budget_min:g} min stops it after about "
                         f"{self.epochs_in_budget} of {tc.epochs} epochs")
        advice = self.advice()
        lines += ["advice:" if advice else "advice: none", *(f"- {line}" for line in advice)]
        return "\n".join(lines)


def time_validation(t: Training, config: RunConfig) -> float:
    """Seconds of one validation pass, scaled up from one timed batch (its second run)."""
    part = Subset(t.val_set, range(min(len(t.val_set), t.batch_size)))
    graph = t.shipped_graph
    return second_run_seconds(lambda: validate(graph, config, part, t.device, t.batch_size, roi=t.roi)) \
        * len(t.val_set) / len(part)


def time_training(t: Training, config: RunConfig) -> tuple[float, float, float]:
    """Seconds per optimiser step, per validation pass and of an epoch's writing, measured on the
    run's own data and model. The writing (history plot, checkpoints) is done in memory.

    Each is run twice and the second run is timed: the first decodes the images and makes the first
    allocations, which an epoch after the first does not repeat (the same seeded batches come
    back). The validation time is scaled up from one batch.
    """
    steps = min(TIMED_STEPS, t.steps_per_epoch)

    def train_steps() -> None:
        train_epoch(t.model, t.step_loss, t.train_set, t.optimizer, 0, config.train, t.batch_size, t.device,
                    tqdm(disable=True), t.average, max_steps=steps)

    def write_epoch() -> None:  # as train() does after each epoch: history.png, the last and the best checkpoints
        history_plot([{"epoch": e, "loss": 1.0 / e, "val_auroc": 0.5, "best": 1} for e in (1, 2)])
        torch.save({"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict()}, io.BytesIO())
        save_weights({k: v.contiguous() for k, v in t.shipped.state_dict().items()})

    return second_run_seconds(train_steps) / steps, time_validation(t, config), second_run_seconds(write_epoch)


def plan_training(config: RunConfig, progress: bool = True) -> TrainingPlan:
    """Check a run's data and settings, survey the data and time the run here, writing nothing."""
    splits = place_train_defects(make_splits(config.data), config.model)
    geometry = resolve_geometry(config, splits).why
    config = resolve_config(config, splits)
    check_settings(config, splits)
    survey = survey_data(splits, config.data, progress)
    t = build_training(config, splits, optional_roi(config.data.roi))
    parameters = sum(p.numel() for p in t.model.parameters())
    if isinstance(t.model, FittedModel):
        fit = t.model.plan(len(t.train_images))
        batch = next(image_batches(t.train_images, t.batch_size))
        t.model.fill_placeholder(len(t.train_images))
        return TrainingPlan(config, splits, survey, parameters, 0, t.batch_size, 0.0, time_validation(t, config), 0.0,
                            fit=fit, fit_seconds=t.model.estimate_seconds(batch.to(t.device), len(t.train_images)),
                            geometry=geometry)
    step_seconds, validation_seconds, writing_seconds = time_training(t, config)
    return TrainingPlan(config, splits, survey, parameters, t.steps_per_epoch, t.batch_size, step_seconds,
                        validation_seconds, writing_seconds, geometry=geometry)


def plan_runs(config: RunConfig, categories: list[str], progress: bool = True) -> dict[str, TrainingPlan]:
    """plan_training for each category folder of the data path (as `train --category` trains them),
    or for the data path itself when `categories` is empty (key "")."""
    if not categories:
        return {"": plan_training(config, progress)}
    return {category: plan_training(category_config(config, category), progress) for category in categories}


def plans_report(plans: dict[str, TrainingPlan]) -> str:
    """The reports of plan_runs, with a heading per category and the total duration of several."""
    if list(plans) == [""]:
        return plans[""].report()
    parts = [f"=== {category} ===\n{plan.report()}" for category, plan in plans.items()]
    if len(plans) > 1:
        parts.append(f"all {len(plans)} categories: about {sum(p.minutes for p in plans.values()):.1f} min of training")
    return "\n".join(parts)
