"""The contract every model follows.

A model is a pure torch module built as ``Module(config, in_channels, image_size)``. Its
``forward(x)`` maps preprocessed images (B, C, S, S) in [0, 1] to an anomaly map (B, 1, S, S),
higher = more anomalous, or to (map, image score (B,)) when the model scores images itself
(``ModelSpec.own_score``). That forward pass, with the scoring head of surfad.scoring, is exactly
what is exported. A model learns in one of two ways, which its registry entry says:

- gradient-trained (unet_vae, recondiff): the entry's GradientRecipe gives the loss of a batch,
  optionally the model's own training samples (e.g. synthetic defects) and its optimiser;
  surfad.training runs the epochs, validation, selection and checkpoints.
- fitted in one pass (patchcore, padim): a FittedModel; ``plan(n_images)`` says what fitting will
  take before any work, ``fit(batches, n_images, progress)`` fills its buffers from the good
  training images. No epochs, no optimiser.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from surfad.config import TrainConfig

# Memory layout of model weights and of the image batches fed to them. Channels-last lets oneDNN's
# convolutions run about 1.4x faster in training and 1.5x in inference on this CPU, with the same
# results (benchmarks/RESULTS.md, "Memory layout").
IMAGE_LAYOUT = torch.channels_last


PIXEL_CELL = 8  # the default descriptors: one per 8 x 8 pixel cell of the input,
PIXEL_DETAIL = 4  # its pixels averaged down to 4 x 4 values per channel


class AnomalyModel(nn.Module):
    """Base of every model: keeps its config and input geometry."""

    descriptors_from_features = False  # True where descriptors() costs a pass over the model's features

    def __init__(self, config: Any, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        self.image_size = image_size

    def visuals(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images shown in the training grid besides the input and the map (e.g. the reconstruction)."""
        return {}

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) inputs -> (B, d, h, w): what each cell of a grid over the input looks like, compared
        to find a region's nearest good example (surfad.detector.examples). By default the input's own
        pixels: each PIXEL_CELL-pixel cell averaged down to PIXEL_DETAIL x PIXEL_DETAIL values per channel;
        models with features of their own describe cells by those."""
        side = max(1, -(-x.shape[-1] // PIXEL_CELL))
        pooled = F.adaptive_avg_pool2d(x, side * PIXEL_DETAIL)
        b, c = pooled.shape[:2]
        cells = pooled.reshape(b, c, side, PIXEL_DETAIL, side, PIXEL_DETAIL).permute(0, 1, 3, 5, 2, 4)
        return cells.reshape(b, c * PIXEL_DETAIL**2, side, side)

    def forward_and_descriptors(self, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """(forward(x), descriptors(x)); models whose descriptors are their features (descriptors_from_features)
        compute both from one pass over them, which lets inspection explain a region without a second pass."""
        return self(x), self.descriptors(x)

    def example_bank(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Training patches the model keeps anyway, as (descriptors (K, d), origin (K, 2): the fit input each
        came from and its position in that input's descriptor grid, row-major), searched instead of an
        index of descriptors when explaining; None (the default) for models that keep none."""
        return None


def available_memory() -> int:
    """Bytes of RAM available now (MemAvailable), or the physical total where /proc is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit(gigabytes: float) -> float:
    """Bytes a fit may use: `gigabytes` when > 0, else 80% of the RAM available now."""
    return gigabytes * 2**30 if gigabytes > 0 else 0.8 * available_memory()


@dataclass(frozen=True)
class FitPlan:
    """What fitting will take, known before it starts: peak memory, and lines for people."""

    memory_bytes: int
    lines: tuple[str, ...]


class FittedModel(AnomalyModel):
    """A model fitted in one pass over the good training images: what it keeps of each image
    (extract), then what it makes of them all (fit_features). The split lets several training
    processes extract their share of the images and one fit on the gathered features."""

    def plan(self, n_images: int) -> FitPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def extract(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """(B, C, S, S) good images -> what fitting needs of each, (B, ...)."""
        raise NotImplementedError

    def fit_features(self, features: torch.Tensor, progress: bool = True) -> dict[str, Any]:  # pragma: no cover
        """Fill the model's buffers from every training image's extract (N, ...); returns figures
        about the fit (sizes, seconds) for the run's records."""
        raise NotImplementedError

    def fit(self, batches: Iterable[torch.Tensor], n_images: int, progress: bool = True) -> dict[str, Any]:
        """plan (which refuses a fit that would not fit in memory), extract every batch, fit_features."""
        self.plan(n_images)
        started = time.perf_counter()
        features = extract_all(self, batches, n_images, progress)
        extracted = time.perf_counter()
        return {**self.fit_features(features, progress), "feature_seconds": round(extracted - started, 2)}

    def estimate_seconds(self, batch: torch.Tensor, n_images: int) -> float:  # pragma: no cover - abstract
        """Seconds fitting on n_images would take here, from timing parts of the work on `batch`."""
        raise NotImplementedError

    def fill_placeholder(self, n_images: int) -> None:
        """Give the fitted buffers the shapes a fit on n_images would, with placeholder values, so the
        dry run can time inference without fitting (default: the buffers' shapes do not depend on it)."""


def extract_all(model: FittedModel, batches: Iterable[torch.Tensor], n_images: int, progress: bool) -> torch.Tensor:
    """model.extract of every batch, stacked on the CPU as (n_images, ...); a bar in images."""
    out: torch.Tensor | None = None
    filled = 0
    device = next(model.buffers()).device
    bar = tqdm(total=n_images, desc="features", unit="img", disable=not progress, dynamic_ncols=True)
    with torch.no_grad():  # not inference_mode: the features stay ordinary tensors that fitting may change
        for batch in batches:
            part = model.extract(batch.to(device)).float().cpu()
            if out is None:
                out = torch.empty((n_images, *part.shape[1:]))
            if filled + len(part) > n_images:
                raise ValueError(f"fit: got more than the {n_images} images announced")
            out[filled : filled + len(part)] = part
            filled += len(part)
            bar.update(len(part))
    bar.close()
    if out is None or filled != n_images:
        raise ValueError(f"fit: expected {n_images} images, got {filled}")
    return out


def seconds_per_image(work: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> float:
    """Seconds `work` takes per image of `batch`, timed on its second run (the first allocates)."""
    # Not utils.second_run_seconds: model packages import only torch, config, errors and data.
    with torch.inference_mode():
        work(batch)
        started = time.perf_counter()
        work(batch)
    return (time.perf_counter() - started) / len(batch)


Loss = Callable[[Any, dict[str, torch.Tensor], float], dict[str, torch.Tensor]]
Optimiser = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]


def adam(model: nn.Module, train: TrainConfig) -> Optimiser:
    """Adam with the run's learning rate and weight decay, no schedule: the default optimiser."""
    return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay), None


def own_images(model: nn.Module, images: Dataset, seed: int, defects: Dataset | None = None) -> Dataset:
    """The default training samples: the good training images themselves (a model using them does
    not learn from defects: ModelSpec.learns_from_defects is False)."""
    return images


@dataclass(frozen=True)
class GradientRecipe:
    """How a gradient-trained model learns.

    loss(model, batch, progress) -> loss terms, key "loss" the total to minimise; the batch holds what
    the samples' items hold, progress in [0, 1] is the share of training done (for warm-ups).
    samples(model, images, seed, defects) -> the training Dataset built on the good images' Dataset
    (items "image", "mask", "label", "index") and, for a model that learns from defects, the real
    training defects' Dataset (the same items, with their masks; None without any).
    optimizer(model, train config) -> (optimiser, per-epoch scheduler or None).
    """

    loss: Loss
    samples: Callable[[Any, Dataset, int, Dataset | None], Dataset] = own_images
    optimizer: Callable[[Any, TrainConfig], Optimiser] = adam
