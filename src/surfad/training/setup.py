"""What a run needs before it trains: its resolved config, checked settings, and the model, datasets
and optimiser built from them (shared with the dry run, which builds the same and times it)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Dataset

from surfad import bundle
from surfad.config import RunConfig
from surfad.data.dataset import GridTileDataset, ImageDataset, TileDataset, defect_dataset
from surfad.data.io import infer_channels
from surfad.data.splits import Splits
from surfad.errors import SurfadError
from surfad.models import AnomalyModel, default_score, model_spec, resolve_params
from surfad.scoring import InferenceGraph
from surfad.training.distributed import ALONE, World
from surfad.training.loop import LossModule, steps_per_epoch, weight_average
from surfad.training.validation import validation_dataset
from surfad.utils import resolve_device, seed_everything, set_threads


def resolve_config(config: RunConfig, splits: Splits) -> RunConfig:
    """Fill in what the user left to defaults: input size, channels, score, full model parameters."""
    data = config.data
    if data.image_size is None:
        data = replace(data, image_size=model_spec(config.model).image_size)
    if data.channels is None:
        data = replace(data, channels=infer_channels(s.path for s in splits.train))
    score = config.score or default_score(config.model)
    if score.reduce == "model" and not model_spec(config.model).own_score:
        raise SurfadError(f"score.reduce=model: model {config.model} does not score images itself; "
                          "use mean, max or topk")
    return replace(config, data=data, model_params=resolve_params(config.model, config.model_params), score=score)


def check_settings(config: RunConfig, splits: Splits) -> None:
    """Clear errors for training settings that cannot work together, before anything is built."""
    if not splits.val:
        raise SurfadError(f"{config.data.path}: the validation split is empty; set data.val_ratio > 0 or add a "
                          "validation/ folder")


@dataclass
class Training:
    """What a run trains and validates: built from a resolved config and its splits by build_training."""

    model: AnomalyModel
    graph: InferenceGraph  # model + scorer: calibration scores with it
    shipped_graph: InferenceGraph  # what is validated, selected and shipped: the graph, or its weight average's
    val_set: Dataset  # the val split, plus synthetic defects when it has no real ones
    batch_size: int
    device: torch.device
    train_images: Dataset  # the good training images (random tiles of them for gradient training, every tile for fitting)
    roi: np.ndarray | None  # the region of interest (data.roi), applied to validation
    world: World  # this process among the training processes
    # gradient-trained models only:
    step_loss: nn.Module | None = None  # (batch, progress) -> loss terms: a LossModule, DDP-wrapped when distributed
    average: AveragedModel | None = None  # the weight average (ema_decay > 0)
    train_set: Dataset | None = None  # the model's training samples built on train_images
    steps_per_epoch: int = 0
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    @property
    def shipped(self) -> torch.nn.Module:
        return self.shipped_graph.model


def build_training(config: RunConfig, splits: Splits, roi: np.ndarray | None = None,
                   world: World = ALONE) -> Training:
    """Seed, set threads, and build the model, its datasets and (gradient training) its optimiser;
    nothing is written. roi: the region of interest (validation scores and checks within it);
    world: the training processes (gradient training wraps the loss in DDP when there are several)."""
    tc, dc = config.train, config.data
    spec = model_spec(config.model)
    set_threads(tc.threads)
    seed_everything(tc.seed)
    device = resolve_device(tc.device)
    model, graph = bundle.build_from_config(config)
    if tc.sync_bn:
        if device.type != "cuda":
            raise SurfadError("train.sync_bn: synchronised batch norm needs CUDA devices (torch's SyncBatchNorm)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        graph.model = model
    model.to(device)
    graph.to(device)
    images = ImageDataset.for_run(splits.train, dc, roi)
    val_images = ImageDataset.for_run(splits.val, dc, roi)
    val_set = validation_dataset(val_images, tc.val_synthetic, tc.val_defect_source, tc.seed + 1, tc.val_defects_per_image)
    if spec.fitted:
        fit_images = GridTileDataset(images, dc.tile_stride) if dc.tile_scale > 0 else images
        return Training(model, graph, graph, val_set, tc.batch_size, device, fit_images, roi, world)
    train_images: Dataset = TileDataset(images, dc.tiles_per_image, tc.seed) if dc.tile_scale > 0 else images
    recipe = spec.recipe
    defects = defect_dataset(splits.train_defects, dc, roi) if splits.train_defects else None
    train_set = recipe.samples(model, train_images, tc.seed, defects)
    average = weight_average(model, tc.ema_decay) if tc.ema_decay > 0 else None
    shipped_graph = graph if average is None else InferenceGraph(average.module, graph.scorer)
    batch_size = min(tc.batch_size, len(train_set) // world.size)
    if batch_size < 1:
        raise SurfadError(f"{len(train_set)} training samples cannot be shared by {world.size} processes")
    optimizer, scheduler = recipe.optimizer(model, tc)
    step_loss: nn.Module = LossModule(model, recipe.loss)
    if world.distributed:
        step_loss = DistributedDataParallel(step_loss, device_ids=[device.index] if device.type == "cuda" else None)
    return Training(model, graph, shipped_graph, val_set, batch_size, device, train_images, roi, world, step_loss,
                    average, train_set, steps_per_epoch(len(train_set), batch_size, world), optimizer, scheduler)
