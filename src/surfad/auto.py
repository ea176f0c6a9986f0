"""`surfad train --model auto`: the best detector for the data, chosen on validation within a time budget.

    surfad train --data D --model auto --out RUN [--time-budget MIN] [--dry-run]

It trains candidate detectors one after another into RUN/candidates/<name>/, each an ordinary run
with the same data and split settings (so the same validation and test images): the fitted models
on ImageNet features at a few input sizes and geometries, then, while the budget allows, the
gradient-trained ones (simplenet on the same features, the from-scratch unet_vae). A candidate is
started only when its estimated duration fits in what is left of the budget; a gradient-trained
one gets the rest of the budget as its own time budget. Then the pairs of the best three are
fused. Every candidate and pair is scored on the same validation (the held-out good images with
the graded synthetic defects, or the real validation defects where the dataset has them), never on
test, and the best is shipped as RUN itself: a copy of the best run, or a fused detector of the best
pair whose members stay in RUN/candidates. RUN/leaderboard.csv lists every candidate (settings,
validation AUROC / AP / AUPRO, seconds, inference ms per image) and RUN/report.html shows it as a
table and a plot. `--resume` skips the candidates already finished.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surfad import bundle
from surfad.config import RunConfig
from surfad.data.dataset import ImageDataset
from surfad.data.geometry import training_sizes
from surfad.data.roi import optional_roi
from surfad.data.splits import Splits, make_splits
from surfad.detector import RunDetector
from surfad.detector.fused import MemberStats, fuse_runs, fuse_scored
from surfad.errors import SurfadError
from surfad.metrics import image_metrics, pixel_metrics
from surfad.models import model_spec
from surfad.models.base import seconds_per_image
from surfad.report import leaderboard_page
from surfad.scoring import ScoredSet
from surfad.training import build_training, resolve_config, resolve_geometry, train
from surfad.training.fitting import image_batches
from surfad.training.validation import validate, validation_dataset
from surfad.utils import atomic_write_csv, atomic_write_json, atomic_write_text

CANDIDATES = "candidates"
LEADERBOARD = "leaderboard.csv"
REPORT = "report.html"
AUTO_RECORD = "auto.json"
DEFAULT_BUDGET_MIN = 10.0
FUSED_FROM = 3  # the best this many single candidates are fused in pairs
GRADIENT_MIN_SECONDS = 90.0  # a gradient-trained candidate is started only with at least this much budget left
RESERVE_SECONDS = 20.0  # kept back for fusing and shipping


@dataclass(frozen=True)
class Candidate:
    """One detector to try: a model with its settings (data and train overrides on the user's config)."""

    name: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def config(self, base: RunConfig) -> RunConfig:
        return replace(base, model=self.model, model_params=dict(self.params), score=None,
                       data=replace(base.data, **self.data), train=replace(base.train, **self.train))

    @property
    def settings(self) -> str:
        parts = [f"{k}={v}" for k, v in {**self.params, **self.data, **self.train}.items()
                 if not (k == "tile_scale" and v == 0.0 and self.data.get("geometry") == "tile")]  # chosen in training
        return " ".join(parts) or "defaults"

    def trained_settings(self, run: Path) -> str:
        """settings, with the tile scale that training chose for a tiled candidate."""
        if self.data.get("geometry") != "tile":
            return self.settings
        return f"{self.settings} tile_scale={bundle.load_config(run).data.tile_scale:g}"


def one_square_size(splits: Splits) -> bool:
    """Whether the training images (as far as their headers' sample tells) are all one square size: then
    tiling at the scale that fits them to the input gives one tile per image, the squashed image."""
    sizes = set(training_sizes(splits.train))
    return len(sizes) == 1 and len({*next(iter(sizes))}) == 1


def candidates(base: RunConfig, splits: Splits, models: list[str] | None = None) -> list[Candidate]:
    """The candidates for this data, in the order they are tried (the most promising per second first).

    Sizes are relative to the input size the user gave (default: each model's own): the fitted models
    at it and at 10/7 of it (224 and 320 px), and at the other geometry than the one the training
    images' shapes suggest (surfad.data.geometry) when their shapes vary; a small training set keeps
    a larger share of patchcore's patches (wood's validation chose 10% for 70 images)."""
    size = base.data.image_size
    pretrained_size = size or model_spec("padim").image_size
    geometry = resolve_geometry(replace(base, model="padim", data=replace(base.data, image_size=pretrained_size)), splits)
    few = len(splits.train) < 200
    out = [
        Candidate(f"padim-{pretrained_size}", "padim", data={"image_size": pretrained_size}),
        Candidate(f"patchcore-{pretrained_size}", "patchcore", {"coreset_ratio": 0.1} if few else {},
                  data={"image_size": pretrained_size}),
        Candidate(f"padim-{round(pretrained_size * 10 / 7)}", "padim", data={"image_size": round(pretrained_size * 10 / 7)}),
    ]
    if geometry.mode == "tile":
        out.append(Candidate(f"padim-{pretrained_size}-squash", "padim",
                             data={"image_size": pretrained_size, "geometry": "squash", "tile_scale": 0.0}))
    elif base.data.geometry == "auto" and not one_square_size(splits):  # else a tile is the squashed image
        out.append(Candidate(f"padim-{pretrained_size}-tile", "padim",
                             data={"image_size": pretrained_size, "geometry": "tile", "tile_scale": 0.0}))
    out.append(Candidate(f"simplenet-{pretrained_size}", "simplenet", data={"image_size": pretrained_size},
                         train={"epochs": 8, "select_after": 0}))
    vae_size = size or model_spec("unet_vae").image_size
    out.append(Candidate(f"unet_vae-{vae_size}", "unet_vae", {"base_width": 16, "skip_levels": [2, 3]},
                         data={"image_size": vae_size}, train={"epochs": 30, "batch_size": 8}))
    if models:
        unknown = sorted(set(models) - {c.model for c in out})
        if unknown:
            raise SurfadError(f"--candidates: {', '.join(unknown)} are not among the candidate models "
                              f"({', '.join(sorted({c.model for c in out}))})")
        out = [c for c in out if c.model in models]
    return out


@dataclass
class Entry:
    """A candidate's place on the leaderboard."""

    name: str
    model: str
    settings: str
    val_auroc: float
    val_ap: float
    val_aupro: float
    seconds: float
    inference_ms: float
    members: list[str] = field(default_factory=list)  # a fused pair: its candidates
    shipped: bool = False

    @property
    def key(self) -> tuple[float, float, float]:
        """Best first: validation AUROC, then AP, then the cheaper."""
        return (-_finite(self.val_auroc), -_finite(self.val_ap), self.inference_ms)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def validation_scores(run: Path) -> ScoredSet:
    """The run's validation as training built it (the same images and synthetic defects), scored by its
    shipped weights."""
    config, graph = bundle.load_graph(run)
    splits = Splits.load(run / bundle.SPLITS)
    roi = optional_roi(run / bundle.ROI if (run / bundle.ROI).is_file() else None)
    tc = config.train
    images = ImageDataset.for_run(splits.val, config.data, roi)
    dataset = validation_dataset(images, tc.val_synthetic, tc.val_defect_source, tc.seed + 1, tc.val_defects_per_image)
    _, scored = validate(graph, config, dataset, torch.device("cpu"), config.train.batch_size, roi=roi)
    return scored


def figures(scored: ScoredSet) -> dict[str, float]:
    """Validation AUROC, AP and AUPRO (nan where the set cannot give one)."""
    out = {"val_auroc": math.nan, "val_ap": math.nan, "val_aupro": math.nan}
    if (scored.labels == 1).any() and (scored.labels == 0).any():
        m = image_metrics(scored.scores, scored.labels, threshold=float(np.median(scored.scores)))
        out.update(val_auroc=m["image_auroc"], val_ap=m["image_ap"])
    if scored.masks.any():
        out["val_aupro"] = pixel_metrics(scored.maps, scored.masks, max_pixels=500_000, valid=scored.valid)["aupro"]
    return out


def member_stats(name: str, scored: ScoredSet) -> MemberStats:
    """A run's standardisation from its good validation images (as `surfad fuse` computes it)."""
    good = scored.labels == 0
    values = scored.maps[good]
    return MemberStats(name, float(scored.scores[good].mean()), float(scored.scores[good].std()) or 1.0,
                       float(values.mean()), float(values.std()) or 1.0)


def inference_ms(run: Path, images: int = 8) -> float:
    """Milliseconds per image of the run's torch graph on validation images, one at a time (timed on a
    second pass: the first allocates)."""
    detector = RunDetector.open(run)
    samples = Splits.load(run / bundle.SPLITS).val[:images]
    detector.score_samples(samples[:1], batch_size=1)
    _, rate = detector.score_samples(samples, batch_size=1)
    return 1000.0 / rate


def estimated_seconds(config: RunConfig, splits: Splits) -> float:
    """How long training this candidate would take here: a fitted model's fit, timed on one batch as
    the dry run does (surfad.models.base.FittedModel.estimate_seconds), and its validation and
    scoring passes; a gradient-trained one's whole run from the dry run's timed steps."""
    if not model_spec(config.model).fitted:
        from surfad.plan import plan_training

        return plan_training(config, progress=False).minutes * 60
    config = resolve_config(config, splits)
    t = build_training(config, splits)
    batch = next(image_batches(t.train_images, t.batch_size)).to(t.device)
    fit = t.model.estimate_seconds(batch, len(t.train_images))
    t.model.fill_placeholder(len(t.train_images))
    scoring = seconds_per_image(t.graph, batch[:4]) * len(t.val_set) * 2  # training's validation, and auto's
    return fit + scoring


def train_auto(base: RunConfig, out: str | Path, budget_min: float = DEFAULT_BUDGET_MIN, resume: bool = False,
               progress: bool = True, models: list[str] | None = None,
               estimate: Callable[[RunConfig, Splits], float] = estimated_seconds) -> Path:
    """Train the candidates within `budget_min` minutes, fuse the best, ship the best by validation
    into `out`; returns `out`. models: only the candidates of these models. estimate(config, splits) ->
    seconds a fitted candidate will take, for the budget."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise SurfadError(f"{out}: exists and is not empty; use --resume to continue an auto run or choose another --out")
    if budget_min <= 0:
        raise SurfadError(f"--time-budget {budget_min}: give the minutes auto may spend, e.g. 10")
    started = time.monotonic()
    splits = make_splits(base.data, check_test=False)
    plan = candidates(base, splits, models)
    print(f"auto: {len(plan)} candidates, {budget_min:g} min budget: " + ", ".join(c.name for c in plan))
    entries: list[Entry] = []
    scored: dict[str, ScoredSet] = {}
    for k, candidate in enumerate(plan, 1):
        run = out / CANDIDATES / candidate.name
        left = budget_min * 60 - (time.monotonic() - started) - RESERVE_SECONDS
        config = candidate.config(base)
        finished = (run / bundle.CALIBRATION).is_file()
        if not finished:
            gradient = not model_spec(candidate.model).fitted
            need = GRADIENT_MIN_SECONDS if gradient else estimate(config, splits)
            if need > left:
                print(f"[{k}/{len(plan)}] {candidate.name}: skipped (needs about {need:.0f} s, {max(left, 0):.0f} s of "
                      "the budget left)")
                continue
            if gradient:
                config = replace(config, train=replace(config.train, time_budget_min=left / 60))
            print(f"[{k}/{len(plan)}] {candidate.name} ({candidate.settings}): about {need:.0f} s; {left / 60:.1f} min of "
                  "the budget left", flush=True)
            t0 = time.monotonic()
            train(config, run, resume=(run / bundle.CONFIG).is_file(), progress=progress)
            seconds = time.monotonic() - t0
        else:
            seconds = float(bundle.read_meta(run).get("auto_seconds", math.nan))
            print(f"[{k}/{len(plan)}] {candidate.name}: already trained")
        atomic_write_json(run / bundle.META, {**bundle.read_meta(run), "auto_seconds": round(seconds, 1)})
        scored[candidate.name] = validation_scores(run)
        entries.append(Entry(candidate.name, candidate.model, candidate.trained_settings(run),
                             **figures(scored[candidate.name]),
                             seconds=round(seconds, 1), inference_ms=round(inference_ms(run), 2)))
        print(f"    validation AUROC {entries[-1].val_auroc:.4f}, AP {entries[-1].val_ap:.4f}", flush=True)
    if not entries:
        raise SurfadError(f"auto: no candidate fits in a {budget_min:g} min budget; give a larger --time-budget")
    entries += fused_entries(entries, scored)
    best = min(entries, key=lambda e: e.key)
    best.shipped = True
    ship(best, out)
    write_leaderboard(out, entries, budget_min, time.monotonic() - started)
    print(f"auto: shipped {best.name} (validation AUROC {best.val_auroc:.4f}); leaderboard in {out / LEADERBOARD}")
    return out


def fused_entries(singles: list[Entry], scored: dict[str, ScoredSet]) -> list[Entry]:
    """The pairs of the best FUSED_FROM single candidates, scored on the same validation."""
    ranked = sorted(singles, key=lambda e: e.key)[:FUSED_FROM]
    out = []
    for a, b in combinations(ranked, 2):
        sets = [scored[a.name], scored[b.name]]
        if not np.array_equal(sets[0].labels, sets[1].labels):
            continue  # validations of different images cannot be fused (not the case for graded or real defects)
        stats = [member_stats(a.name, sets[0]), member_stats(b.name, sets[1])]
        fused = fuse_scored(sets, stats)
        out.append(Entry(f"fused({a.name}+{b.name})", "fused", "mean of the standardised scores and maps",
                         **figures(fused), seconds=0.0, inference_ms=round(a.inference_ms + b.inference_ms, 2),
                         members=[a.name, b.name]))
    return out


def ship(best: Entry, out: Path) -> None:
    """Make `out` the chosen detector: the best run's files copied in, or a fused detector of the pair.
    Whatever an earlier ship left (a resumed auto run may choose another) goes first, the file that marks
    the folder's kind first of all, so an interrupted ship leaves no half detector that loads."""
    for name in (bundle.CONFIG, bundle.ENSEMBLE):
        (out / name).unlink(missing_ok=True)
    for path in out.iterdir():
        if path.name not in (CANDIDATES, LEADERBOARD, REPORT, AUTO_RECORD):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if best.members:
        fuse_runs([out / CANDIDATES / m for m in best.members], out, into_existing=True)
        return
    source = out / CANDIDATES / best.name
    for path in source.iterdir():
        target = out / path.name
        if path.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(path, target)
        elif path.name != bundle.CONFIG:
            shutil.copy2(path, target)
    shutil.copy2(source / bundle.CONFIG, out / bundle.CONFIG)  # last: it marks out as a run


LEADERBOARD_FIELDS = [f.name for f in dataclasses.fields(Entry)]


def write_leaderboard(out: Path, entries: list[Entry], budget_min: float, seconds: float) -> None:
    """leaderboard.csv, auto.json and report.html (the table and a plot of validation AUROC against cost)."""
    rows = [{**dataclasses.asdict(e), "members": "+".join(e.members)} for e in sorted(entries, key=lambda e: e.key)]
    atomic_write_csv(out / LEADERBOARD, rows, LEADERBOARD_FIELDS)
    atomic_write_json(out / AUTO_RECORD, {"budget_min": budget_min, "seconds": round(seconds, 1),
                                          "shipped": next(e.name for e in entries if e.shipped), "leaderboard": rows})
    atomic_write_text(out / REPORT, leaderboard_page(rows, budget_min, seconds))


def read_leaderboard(out: Path) -> list[dict[str, str]]:
    with (out / LEADERBOARD).open(newline="") as f:
        return list(csv.DictReader(f))


def plan_auto(base: RunConfig, budget_min: float = DEFAULT_BUDGET_MIN, models: list[str] | None = None,
              estimate: Callable[[RunConfig, Splits], float] = estimated_seconds) -> str:
    """What `train --model auto` would do: every candidate, its estimated time here, and which fit in the budget."""
    splits = make_splits(base.data, check_test=False)
    lines = [f"auto: candidates for a {budget_min:g} min budget (estimated on this machine):"]
    left = budget_min * 60 - RESERVE_SECONDS
    for candidate in candidates(base, splits, models):
        config = candidate.config(base)
        gradient = not model_spec(candidate.model).fitted
        seconds = estimate(config, splits)
        runs = (GRADIENT_MIN_SECONDS if gradient else seconds) <= left
        note = ("trains for the rest of the budget" if gradient else "fits") if runs else "skipped: over the budget"
        lines.append(f"  {candidate.name:<24} {candidate.settings:<50} about {seconds:6.0f} s  ({note})")
        if runs:
            left -= min(seconds, left) if gradient else seconds
    lines.append(f"then the pairs of the best {FUSED_FROM} are fused and the best on validation is shipped")
    return "\n".join(lines)
