"""The epoch loop of gradient-trained models: one pass over the samples, and the weight average."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from surfad.config import TrainConfig
from surfad.errors import SurfadError
from surfad.models import IMAGE_LAYOUT
from surfad.models.base import Loss
from surfad.training.distributed import ALONE, World, exchange, shard


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


class LossModule(nn.Module):
    """A model's loss as a module's forward, so DistributedDataParallel can wrap it (DDP averages the
    gradients of what its forward computed)."""

    def __init__(self, model: nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
        return self.loss(self.model, batch, progress)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of the n training samples for an epoch (every process computes the same)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))


def steps_per_epoch(n: int, batch_size: int, world: World) -> int:
    """Optimiser steps of an epoch: the same on every process (full batches of the share of each)."""
    return n // (batch_size * world.size)


def train_epoch(model: nn.Module, step_loss: nn.Module, train_set: Dataset, optimizer: torch.optim.Optimizer,
                epoch: int, tc: TrainConfig, batch_size: int, device: torch.device, bar: tqdm,
                average: AveragedModel | None = None, max_steps: int | None = None,
                world: World = ALONE) -> dict[str, float]:
    """One pass over this process's share of the training samples (epoch_order), or its first
    `max_steps` steps; the mean loss terms, averaged over the processes. step_loss(batch, progress):
    the model's loss (a LossModule, or DDP around one). `average`, if given, is updated after every
    optimiser step."""
    model.train()
    order = shard(epoch_order(len(train_set), tc.seed, epoch), world)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=order.tolist(), drop_last=True)
    total = steps_per_epoch(len(train_set), batch_size, world)
    steps = total if max_steps is None else min(max_steps, total)
    sums: dict[str, float] = {}
    for step, batch in zip(range(steps), loader):
        batch = {k: v.to(device, memory_format=IMAGE_LAYOUT) if v.dim() == 4 else v.to(device)
                 for k, v in batch.items()}
        losses = step_loss(batch, (epoch + step / total) / tc.epochs)
        if not torch.isfinite(losses["loss"]):
            raise SurfadError(f"training diverged at epoch {epoch + 1}, step {step + 1}: the loss is "
                              f"{float(losses['loss'])}; lower train.lr (--lr) or check the images")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(model)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.set_postfix({k: f"{v / (step + 1):.4f}" for k, v in sums.items()}, refresh=False)
        bar.update()
    return mean_over_processes({k: v / steps for k, v in sums.items()}, world)


def mean_over_processes(terms: dict[str, float], world: World) -> dict[str, float]:
    """Each loss term averaged over the training processes (their batches are the same size)."""
    if not world.distributed or not terms:
        return terms
    values = torch.tensor(list(terms.values()), dtype=torch.float64)
    exchange(lambda: dist.all_reduce(values))
    return dict(zip(terms, (values / world.size).tolist()))
