"""The contract every model follows, and the scoring head shared by all of them.

A model is a pure torch module: `forward(x)` maps a batch of preprocessed images (B, C, S, S in
[0, 1]) to an anomaly map (B, 1, S, S), higher = more anomalous. That forward pass is exactly what
is exported. Training glue lives in `surfad.train`; a model only says how to compute its loss
(`training_loss`) and, if it needs special samples (synthetic defects), how to build its training
dataset (`make_train_dataset`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from surfad.config import ScoreConfig, TrainConfig

# Memory layout of model weights and of the image batches fed to them. Channels-last lets oneDNN's
# convolutions run about 1.4x faster in training and 1.5x in inference on this CPU, with the same
# results (benchmarks/RESULTS.md, "Memory layout").
IMAGE_LAYOUT = torch.channels_last


class AnomalyModel(nn.Module):
    """Base class: subclasses set `name`, `Config` (a dataclass), `default_score`, `presets`."""

    name: ClassVar[str]
    Config: ClassVar[type]
    default_score: ClassVar[ScoreConfig] = ScoreConfig()
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    cli_flags: ClassVar[dict[str, str]] = {}  # extra `surfad train --flag` -> Config field (seed-style names)

    def __init__(self, config: Any, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Anomaly map (B, 1, S, S) for preprocessed images x (B, C, S, S)."""
        raise NotImplementedError

    def training_loss(self, batch: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
        """Loss terms for one batch; key "loss" is the total to minimise.

        `batch["image"]` is always present; `progress` in [0, 1] is the share of training done
        (for warm-ups and schedules that depend on it).
        """
        raise NotImplementedError  # pragma: no cover - abstract

    def make_train_dataset(self, images: Dataset, seed: int) -> Dataset:
        """Training samples built from the good training images; default: the images themselves."""
        return images

    def visuals(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images shown in the training grid besides the input and the map (e.g. the reconstruction)."""
        return {}

    def configure_optimizer(
        self, train: TrainConfig, steps_per_epoch: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Adam with the run's learning rate and weight decay, no schedule; models may override."""
        optimizer = torch.optim.Adam(self.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        return optimizer, None


class ImageScorer(nn.Module):
    """Anomaly map -> (smoothed map, image score), in torch so it is exported with the model."""

    def __init__(self, config: ScoreConfig) -> None:
        super().__init__()
        if config.reduce not in ("mean", "max", "topk"):
            raise ValueError(f"score.reduce must be mean, max or topk, got {config.reduce!r}")
        self.config = config
        sigma = config.smoothing_sigma
        if sigma > 0:
            radius = max(1, int(math.ceil(3 * sigma)))
            xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
            kernel = torch.exp(-(xs**2) / (2 * sigma**2))
            self.register_buffer("kernel", (kernel / kernel.sum()).view(1, 1, 1, -1), persistent=False)
            self.radius = radius
        else:
            self.kernel = None
            self.radius = 0

    def smooth(self, amap: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return amap
        r = self.radius
        out = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="replicate"), self.kernel)
        return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), self.kernel.transpose(2, 3))

    def forward(self, amap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.smooth(amap)
        pooled = amap
        k = self.config.pool
        if k > 1:
            pooled = F.avg_pool2d(amap, k, stride=1, padding=k // 2, count_include_pad=False)
        flat = pooled.flatten(1)
        if self.config.reduce == "mean":
            score = flat.mean(dim=1)
        elif self.config.reduce == "max":
            score = flat.amax(dim=1)
        else:
            score = flat.topk(min(self.config.topk, flat.shape[1]), dim=1).values.mean(dim=1)
        return amap, score


class InferenceGraph(nn.Module):
    """Model + scorer: preprocessed images -> (anomaly map (B, 1, S, S), score (B,)). Exported as is."""

    def __init__(self, model: AnomalyModel, scorer: ImageScorer) -> None:
        super().__init__()
        self.model = model
        self.scorer = scorer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer(self.model(x))
