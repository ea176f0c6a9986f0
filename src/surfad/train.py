"""Training glue: splits -> datasets -> optimisation loop -> validated, calibrated bundle.

Model-independent: a model supplies its loss (`training_loss`) and, if needed, its own training
samples (`make_train_dataset`). Validation every `val_every` epochs scores the val split; when it
has no real defects, synthetic defects pasted on the held-out good images stand in (never the test
set). The best epoch by validation AUROC (or, without defects, by the lowest mean good score) is
shipped as model.safetensors (the "best_detect" checkpoint; the first `select_after` epochs are
not eligible); the best by validation AUPRO is kept
as checkpoints/best_seg.safetensors when validation has masks; `last` allows exact resumption.
With `ema_decay` > 0 a moving average of the weights is what gets validated, selected and shipped
(best_detect, best_seg); `last` keeps the raw training weights, and the average goes in its state.
With `data.tile_scale` > 0 training sees random tiles (data.dataset.TileDataset) and validation
scores whole images from their tiles (scoring.tiled_score_fn).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from surfad import __version__, bundle
from surfad.calibrate import Calibration, calibrate, default_strategy
from surfad.config import RunConfig, TrainConfig
from surfad.data.dataset import ImageDataset, TileDataset
from surfad.data.defects import DefectSynthesizer, synthetic_defect
from surfad.data.io import read_image
from surfad.data.samples import Sample
from surfad.data.splits import Splits, make_splits
from surfad.data.tiles import default_stride
from surfad.data.transforms import resize_mask
from surfad.errors import SurfadError
from surfad.metrics import image_metrics, pixel_metrics
from surfad.models import (
    IMAGE_LAYOUT,
    AnomalyModel,
    InferenceGraph,
    default_score,
    resolve_params,
)
from surfad.report import history_plot
from surfad.scoring import ScoredSet, image_score_fn, score_dataset, torch_score_fn
from surfad.utils import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    resolve_device,
    seed_everything,
    set_threads,
)
from surfad.visualize import training_grid

LAST_WEIGHTS = bundle.CHECKPOINTS["last"]
BEST_SEG_WEIGHTS = bundle.CHECKPOINTS["best_seg"]
LAST_STATE = bundle.LAST_STATE


def infer_channels(samples: list[Sample]) -> int:
    """1 when every image is grayscale (or colour with equal channels), else 3."""
    for sample in samples:
        image = read_image(sample.path)
        if image.shape[2] == 3 and not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])):
            return 3
    return 1


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of the weights and buffers (BatchNorm statistics included).

    The effective decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so the average
    is not dominated by the random initial weights in short runs.
    """

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        step = 1.0 - min(decay, (1.0 + float(n)) / (10.0 + float(n)))  # one host read per update, not per tensor
        for avg, cur in zip(averaged, current):
            if avg.is_floating_point():
                avg.lerp_(cur, step)
            else:  # counters such as BatchNorm's num_batches_tracked are not averaged
                avg.copy_(cur)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)


def resolve_config(config: RunConfig, splits: Splits) -> RunConfig:
    """Fill in what the user left to defaults: channels, score, full model parameters."""
    data = config.data
    if data.channels is None:
        data = replace(data, channels=infer_channels(splits.train))
    elif data.channels not in (1, 3):
        raise SurfadError(f"data.channels must be 1 or 3, got {data.channels}")
    return replace(
        config,
        data=data,
        model_params=resolve_params(config.model, config.model_params),
        score=config.score or default_score(config.model),
    )


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


def validation_dataset(val: ImageDataset, synthetic: bool, source: str, seed: int) -> Dataset:
    """The val split, plus one synthetic-defect copy of each good image when it has no real defects.

    When tiling, the defect is drawn on one random tile-sized window of the scaled image, inside
    the image wherever it is larger than a tile; masks are kept at model resolution, like real ones.
    """
    has_defects = any(s.label == 1 for s in val.samples)
    if has_defects or not synthetic:
        return val
    synthesizer = DefectSynthesizer(source, image_size=val.image_size, seed=seed)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i, sample in enumerate(val.samples):
        if sample.label == 0:
            image, mask = synthetic_defect(val[i]["image"].numpy(), synthesizer, rng)
            images.append(image)
            masks.append(resize_mask(mask, val.image_size))
    fake = ArrayDataset(images, masks, np.ones(len(images), dtype=np.int64))
    return torch.utils.data.ConcatDataset([val, fake])


def validate(graph: torch.nn.Module, config: RunConfig, dataset: Dataset, device: torch.device,
             batch_size: int, progress: bool = False) -> tuple[dict[str, float], ScoredSet]:
    """Validation figures: image AUROC/AP when defects exist, pixel AUROC/AUPRO when masks
    exist, and the mean score of good images. progress: a bar while scoring."""
    graph.eval()
    scored = score_dataset(image_score_fn(torch_score_fn(graph, device), config), dataset, batch_size,
                           progress="validate" if progress else None)
    figures = {"val_good_score": float(scored.scores[scored.labels == 0].mean())}
    if (scored.labels == 1).any() and (scored.labels == 0).any():
        m = image_metrics(scored.scores, scored.labels, threshold=float(np.median(scored.scores)))
        figures.update(val_auroc=m["image_auroc"], val_ap=m["image_ap"])
    if scored.masks.any():
        m = pixel_metrics(scored.maps, scored.masks, max_pixels=500_000)
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


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain tuples, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def train_epoch(model: torch.nn.Module, train_set: Dataset, optimizer: torch.optim.Optimizer, epoch: int,
                tc: TrainConfig, batch_size: int, device: torch.device, bar: tqdm,
                average: AveragedModel | None = None, max_steps: int | None = None) -> dict[str, float]:
    """One pass over the training samples (order seeded by seed and epoch), or its first `max_steps`
    steps; mean loss terms. `average`, if given, is updated after every optimiser step."""
    model.train()
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(tc.seed * 1000 + epoch))
    sums: dict[str, float] = {}
    steps = len(loader) if max_steps is None else min(max_steps, len(loader))
    for step, batch in zip(range(steps), loader):
        batch = {k: v.to(device, memory_format=IMAGE_LAYOUT) if v.dim() == 4 else v.to(device)
                 for k, v in batch.items()}
        losses = model.training_loss(batch, (epoch + step / len(loader)) / tc.epochs)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(model)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.set_postfix({k: f"{v / (step + 1):.4f}" for k, v in sums.items()}, refresh=False)
        bar.update()
    return {k: v / steps for k, v in sums.items()}


@dataclass
class TrainState:
    """Where a run stands after an epoch: what --resume restores besides the weights, optimiser,
    scheduler, RNG and weight average."""

    epoch: int = 0  # epochs done
    best: float = -math.inf  # the best detection_value so far (model.safetensors)
    best_seg: float = -math.inf  # the best validation AUPRO so far (best_seg checkpoint)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (history.csv)
    elapsed: float = 0.0  # training seconds so far, over every session


def save_last(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler | None, average: AveragedModel | None,
              state: TrainState) -> None:
    """The `last` checkpoint: weights plus what --resume needs (optimiser, scheduler, RNG, progress)."""
    bundle.save_weights(model, out / LAST_WEIGHTS)
    full = {**asdict(state), "rng": _rng_state(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler else None,
            **({} if average is None else {"average": average.state_dict()})}
    atomic_write(out / LAST_STATE, lambda tmp: torch.save(full, tmp))


def load_last(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler | None, average: AveragedModel | None) -> TrainState:
    """Restore what save_last wrote into the given objects; returns the run's TrainState."""
    bundle.load_weights(model, out / LAST_WEIGHTS)
    full = torch.load(out / LAST_STATE, weights_only=True)
    optimizer.load_state_dict(full["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(full["scheduler"])
    _set_rng_state(full["rng"])
    if average is not None:
        average.load_state_dict(full["average"])
    return TrainState(**{f.name: full[f.name] for f in fields(TrainState)})


def check_settings(config: RunConfig, splits: Splits) -> None:
    """Clear errors for training settings that cannot work, before anything is built."""
    tc, dc = config.train, config.data
    if not splits.val:
        raise SurfadError(f"{dc.path}: the validation split is empty; set data.val_ratio > 0 or add a validation/ folder")
    if not 0.0 <= tc.ema_decay < 1.0:
        raise SurfadError(f"train.ema_decay must be in [0, 1) (0 = off), got {tc.ema_decay}")
    if tc.patience < 0:
        raise SurfadError(f"train.patience must be >= 0 (0 = off), got {tc.patience}")
    if dc.tile_scale < 0 or not 0 <= dc.tile_stride <= dc.image_size or dc.tiles_per_image < 1:
        raise SurfadError(f"data: tile_scale must be >= 0 (0 = off), tile_stride in [0, image_size={dc.image_size}] "
                          f"and tiles_per_image >= 1; got {dc.tile_scale}, {dc.tile_stride}, {dc.tiles_per_image}")


def start_run_folder(out: Path, config: RunConfig, splits: Splits, n_params: int) -> None:
    """A new run folder with its config, splits and meta.json."""
    dc = config.data
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / bundle.CONFIG)
    splits.save(out / bundle.SPLITS)
    atomic_write_json(out / bundle.META, {
        "surfad_version": __version__,
        "model": config.model,
        "image_size": dc.image_size,
        "channels": dc.channels,
        "parameters": n_params,
        "data": {"path": dc.path, "layout": splits.layout, "train": len(splits.train), "val": len(splits.val)},
    })


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
        bundle.save_weights(shipped, out / BEST_SEG_WEIGHTS)
        row["best_seg"] = 1


def calibrate_shipped(model: torch.nn.Module, graph: torch.nn.Module, config: RunConfig, splits: Splits,
                      val_set: Dataset, device: torch.device, batch_size: int, out: Path, progress: bool) -> Calibration:
    """Load the shipped weights and calibrate them on the real validation images, so the bundle is
    usable at once. Synthetic defects choose epochs but not thresholds: without real defects, fpr:0.01."""
    bundle.load_weights(model, out / bundle.WEIGHTS)
    _, scored = validate(graph, config, val_set, device, batch_size, progress)
    real = np.arange(len(scored.labels)) < len(splits.val)
    strategy = default_strategy(any(s.label == 1 for s in splits.val))
    calibration = calibrate(
        scored.scores[real], scored.labels[real], scored.maps[real], scored.masks[real], strategy, split="val"
    )
    calibration.save(out / bundle.CALIBRATION)
    return calibration


@dataclass
class Training:
    """What a run trains and validates: built from a resolved config and its splits by build_training."""

    model: AnomalyModel
    graph: InferenceGraph  # model + scorer: calibration scores with it
    average: AveragedModel | None  # the weight average (ema_decay > 0)
    shipped_graph: InferenceGraph  # what is validated, selected and shipped (the average's when there is one)
    train_images: Dataset  # the good training images (or random tiles of them)
    train_set: Dataset  # the model's training samples built on them
    val_set: Dataset  # the val split, plus synthetic defects when it has no real ones
    batch_size: int
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device

    @property
    def shipped(self) -> torch.nn.Module:
        return self.shipped_graph.model


def build_training(config: RunConfig, splits: Splits) -> Training:
    """Seed, set threads, and build the model, its datasets and its optimiser (nothing is written)."""
    tc, dc = config.train, config.data
    set_threads(tc.threads)
    seed_everything(tc.seed)
    device = resolve_device(tc.device)
    model, graph = bundle.build_from_config(config)
    model.to(device)
    graph.to(device)
    average = weight_average(model, tc.ema_decay) if tc.ema_decay > 0 else None
    shipped_graph = graph if average is None else InferenceGraph(average.module, graph.scorer)
    train_images: Dataset = ImageDataset(splits.train, dc.image_size, dc.input_channels, tile_scale=dc.tile_scale)
    if dc.tile_scale > 0:
        train_images = TileDataset(train_images, dc.tiles_per_image, tc.seed)
    train_set = model.make_train_dataset(train_images, tc.seed)
    val_set = validation_dataset(ImageDataset(splits.val, dc.image_size, dc.input_channels, tile_scale=dc.tile_scale),
                                 tc.val_synthetic, tc.val_defect_source, tc.seed + 1)
    batch_size = min(tc.batch_size, len(train_set))
    steps_per_epoch = len(train_set) // batch_size
    optimizer, scheduler = model.configure_optimizer(tc, steps_per_epoch)
    return Training(model, graph, average, shipped_graph, train_images, train_set, val_set, batch_size,
                    steps_per_epoch, optimizer, scheduler, device)


def train(config: RunConfig, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train a model as `config` says into the run folder `out`; returns the run folder."""
    out = Path(out)
    if resume:
        if not (out / LAST_STATE).is_file():
            raise SurfadError(f"{out}: nothing to resume (no {LAST_STATE}); drop --resume to start a new run")
        config = RunConfig.load(out / bundle.CONFIG)
        splits = Splits.load(out / bundle.SPLITS)
    else:
        if (out / bundle.CONFIG).exists():
            raise SurfadError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
        splits = make_splits(config.data)
        config = resolve_config(config, splits)
    check_settings(config, splits)
    tc, dc = config.train, config.data
    print(splits.summary())
    t = build_training(config, splits)
    n_params = sum(p.numel() for p in t.model.parameters())
    state = TrainState()
    if resume:
        state = load_last(out, t.model, t.optimizer, t.scheduler, t.average)
        if stalled(state.history, tc.patience):
            state.epoch = tc.epochs  # it had stopped early: resuming finishes it without training
            print(f"{out} had stopped early (no better validation for {tc.patience} validations)")
        else:
            print(f"resuming {out} at epoch {state.epoch + 1}/{tc.epochs}")
    else:
        start_run_folder(out, config, splits, n_params)
    print(f"model {config.model}: {n_params / 1e6:.2f} M parameters, {dc.image_size}x{dc.image_size}x{dc.input_channels}, device {t.device}")
    if dc.tile_scale > 0:
        print(f"tiling: images scaled by {dc.tile_scale}, {dc.tiles_per_image} random tile(s) per training image per epoch, "
              f"inference tiles {default_stride(dc.image_size, dc.tile_stride)} px apart")

    started, elapsed_before = time.monotonic(), state.elapsed
    bar = tqdm(total=tc.epochs * t.steps_per_epoch, initial=state.epoch * t.steps_per_epoch, disable=not progress,
               unit="step", dynamic_ncols=True)
    for epoch in range(state.epoch, tc.epochs):
        bar.set_description(f"epoch {epoch + 1}/{tc.epochs}")
        for dataset in (t.train_images, t.train_set):  # datasets that draw new tiles or synthetic samples each epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
        sums = train_epoch(t.model, t.train_set, t.optimizer, epoch, tc, t.batch_size, t.device, bar, t.average)
        if t.scheduler is not None:
            t.scheduler.step()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": t.optimizer.param_groups[0]["lr"], **sums}
        is_last = epoch + 1 == tc.epochs
        state.epoch, state.elapsed = epoch + 1, elapsed_before + time.monotonic() - started
        over_budget = tc.time_budget_min > 0 and state.elapsed > tc.time_budget_min * 60
        if (epoch + 1) % tc.val_every == 0 or is_last or over_budget:
            figures, _ = validate(t.shipped_graph, config, t.val_set, t.device, t.batch_size, progress)
            row.update(figures)
            if epoch + 1 > tc.select_after or is_last or over_budget:  # see TrainConfig.select_after
                select(state, row, figures, t.shipped, out)
            if tc.grid_every and ((epoch + 1) % tc.grid_every == 0 or is_last):
                training_grid(t.shipped, t.shipped_graph, t.val_set, t.device, out / "grids" / f"epoch_{epoch + 1:04d}.png")
        row["seconds"] = round(state.elapsed, 1)
        state.history.append(row)
        atomic_write_csv(out / bundle.HISTORY, state.history)
        atomic_write_bytes(out / bundle.HISTORY_PLOT, history_plot(state.history))
        save_last(out, t.model, t.optimizer, t.scheduler, t.average, state)
        shown = {k: round(v, 4) for k, v in row.items() if k.startswith("val_")}
        bar.write(f"epoch {epoch + 1}: loss {row.get('loss', float('nan')):.4f} {shown}{' *best' if row.get('best') else ''}")
        if over_budget and not is_last:
            bar.write(f"time budget of {tc.time_budget_min} min reached after epoch {epoch + 1}")
            break
        if stalled(state.history, tc.patience) and not is_last:
            bar.write(f"stopping early: no better validation for {tc.patience} validations (best: epoch "
                      f"{bundle.shipped_row(state.history)['epoch']})")
            break
    bar.close()

    calibration = calibrate_shipped(t.model, t.graph, config, splits, t.val_set, t.device, t.batch_size, out, progress)
    print(f"trained {out}: best epoch shipped, calibrated on val ({calibration.strategy}): "
          f"threshold {calibration.threshold:.5g}")
    return out
