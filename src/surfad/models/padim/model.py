"""PaDiM (Defard et al., ICPR 2021) on a frozen EfficientNet-Lite: a Gaussian per feature-map position.

Fitting is one pass over the good training images: at every position of the feature grid the mean
and covariance of the (randomly sub-selected) pretrained features are accumulated, and the
covariance, regularised by `regularisation` x I, is inverted. A test patch's anomaly is its
Mahalanobis distance to its position's Gaussian; the map is that grid upsampled to the input.

With few training images a position's sample covariance is a poor estimate (its rank is at most the
number of images, far below the feature count), so it can be shrunk towards a scaled identity by
the amount Ledoit and Wolf's estimate finds best for each position (`covariance`; by default when
fitted on fewer than LEDOIT_WOLF_BELOW images).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from surfad.config import setting
from surfad.errors import SurfadError
from surfad.models.backbones import FeatureSettings, PatchFeatures
from surfad.models.base import FitPlan, FittedModel, memory_limit, seconds_per_image

POSITION_CHUNK = 64  # positions whose covariances are computed at once (bounds the float64 copies)
COVARIANCES = ("auto", "sample", "ledoit_wolf")  # PaDiMConfig.covariance
# covariance "auto": Ledoit-Wolf below this many fit inputs (images, or tiles when tiling). On magnetic
# tile's validation it won from 10 to 100 images (97.0 against 89.1 AUROC with 10) and tied from 200
# on (benchmarks/RESULTS.md, "How many good images").
LEDOIT_WOLF_BELOW = 200


@dataclass
class PaDiMConfig(FeatureSettings):
    feature_dim: int = setting(100, "features kept, a seeded random subset of the taps' channels (0 = all)", low=0)
    regularisation: float = setting(0.01, "added to the covariance's diagonal before inverting", low=1e-9)
    seed: int = setting(0, "seed of the feature subset")
    covariance: str = setting("auto", "each position's covariance: sample; ledoit_wolf (shrunk towards a scaled "
                                      "identity by the Ledoit-Wolf estimate of the best amount, for few images); "
                                      f"auto: ledoit_wolf when fitted on fewer than {LEDOIT_WOLF_BELOW} images (or "
                                      "tiles), else sample", choices=COVARIANCES)


class PaDiM(FittedModel):
    """forward(x (B, C, S, S)) -> Mahalanobis anomaly map (B, 1, S, S)."""

    descriptors_from_features = True

    def __init__(self, config: PaDiMConfig, in_channels: int, image_size: int, pretrained: bool = True) -> None:
        super().__init__(config, in_channels, image_size)
        self.features = PatchFeatures(config.backbone, config.layers, 1, in_channels, pretrained)
        total = self.features.dim
        if config.feature_dim > total:
            raise SurfadError(f"model_params.feature_dim={config.feature_dim}: the layers have only {total} channels")
        dim = config.feature_dim or total
        keep = torch.randperm(total, generator=torch.Generator().manual_seed(config.seed))[:dim].sort().values
        self.register_buffer("keep", keep, persistent=False)
        positions = self.features.grid(image_size) ** 2
        self.register_buffer("mean", torch.zeros(positions, dim))
        self.register_buffer("precision", torch.zeros(positions, dim, dim))  # inverse covariances

    def selected(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (positions, B, dim) features."""
        return self.descriptors(x).flatten(2).permute(2, 0, 1)

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> the kept features at every position of the grid, (B, dim, side, side)."""
        return self.features(x)[:, self.keep]

    def grid_distances(self, descriptors: torch.Tensor) -> torch.Tensor:
        """descriptors (B, dim, side, side) -> Mahalanobis distance of each position's features (B, 1, side, side)."""
        diff = descriptors.flatten(2).permute(2, 0, 1) - self.mean[:, None]  # (P, B, D)
        squared = (torch.bmm(diff, self.precision) * diff).sum(-1).clamp_min(0.0)  # (P, B)
        side = self.features.grid(self.image_size)
        return squared.sqrt().T.reshape(descriptors.shape[0], 1, side, side)

    def forward_and_descriptors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        described = self.descriptors(x)
        amap = F.interpolate(self.grid_distances(described), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return amap, described

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_descriptors(x)[0]

    def plan(self, n_images: int) -> FitPlan:
        """Peak memory of the fit: every image's features, then the float64 covariances and the inverses."""
        positions, dim = self.mean.shape
        memory = 4 * n_images * positions * dim + (8 * 3 + 4) * positions * dim * dim
        limit = memory_limit(self.config.memory_limit_gb)
        if memory > limit:
            raise SurfadError(f"padim: {positions} positions x {dim}^2 covariances need about {memory / 2**30:.1f} GiB, "
                              f"over the limit of {limit / 2**30:.1f} GiB; lower model_params.feature_dim or "
                              "data.image_size")
        if n_images < 2:
            raise SurfadError(f"padim: needs at least 2 training images to estimate covariances, got {n_images}")
        return FitPlan(memory, (f"{positions} Gaussians of {dim} features ({positions * dim * dim * 4 / 2**20:.1f} MiB "
                                f"of inverse covariances); fitting needs about {memory / 2**30:.2f} GiB",))

    def estimate_seconds(self, batch: torch.Tensor, n_images: int) -> float:
        """Feature extraction and accumulation timed on `batch` (the inversion is not counted: under a second
        for the default sizes)."""
        return seconds_per_image(self.selected, batch) * n_images

    def extract(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> the kept features at every position, (B, P, D)."""
        return self.selected(batch).transpose(0, 1)

    def fit_features(self, features: torch.Tensor, progress: bool = True) -> dict[str, Any]:
        """Mean and regularised inverse covariance per position from every training image's features
        (N, P, D), in float64, POSITION_CHUNK positions at a time."""
        started = time.perf_counter()
        n, positions, dim = features.shape
        device = self.mean.device
        mean = features.double().mean(0)
        precision = torch.empty(positions, dim, dim)
        eye = self.config.regularisation * torch.eye(dim, dtype=torch.float64)
        shrinkage = []
        shrunk = self.config.covariance == "ledoit_wolf" or (self.config.covariance == "auto" and n < LEDOIT_WOLF_BELOW)
        for start in range(0, positions, POSITION_CHUNK):
            centred = features[:, start : start + POSITION_CHUNK].double() - mean[start : start + POSITION_CHUNK]
            if shrunk:
                covariance, amount = ledoit_wolf(centred)
                shrinkage.append(amount)
            else:
                covariance = torch.einsum("npd,npe->pde", centred, centred) / (n - 1)
            factor, info = torch.linalg.cholesky_ex(covariance + eye)  # positive definite: regularised
            if info.any():
                raise SurfadError("padim: a covariance is not positive definite; raise model_params.regularisation")
            precision[start : start + POSITION_CHUNK] = torch.cholesky_inverse(factor).float()
        self.mean = mean.float().to(device)
        self.precision = precision.contiguous().to(device)
        figures = {"positions": positions, "dim": dim, "images": n, "covariance": "ledoit_wolf" if shrunk else "sample",
                   "seconds": round(time.perf_counter() - started, 2)}
        if shrunk:
            figures["mean_shrinkage"] = round(float(torch.cat(shrinkage).mean()), 4)
        return figures


def ledoit_wolf(centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position, the covariance of centred samples (n, P, d) shrunk towards mu I (mu: the mean
    variance) by Ledoit and Wolf's estimate of the amount that minimises the expected squared error
    (J. Multivariate Analysis 88, 2004; the estimate sklearn.covariance.ledoit_wolf computes):
    ((1 - a) S + a mu I (P, d, d), a (P,)), with S the sample covariance divided by n."""
    n, _, dim = centred.shape
    sample = torch.einsum("npd,npe->pde", centred, centred) / n
    mu = sample.diagonal(dim1=1, dim2=2).sum(-1) / dim
    eye = torch.eye(dim, dtype=sample.dtype, device=sample.device)
    squared = centred * centred
    spread = (torch.einsum("npd,npe->p", squared, squared) / n - sample.pow(2).sum((1, 2))) / (dim * n)
    distance = (sample - mu[:, None, None] * eye).pow(2).sum((1, 2)) / dim  # from the target, per dim
    amount = torch.where(distance > 0, torch.minimum(spread, distance) / distance.clamp_min(1e-300),
                         torch.zeros_like(distance))
    return (1 - amount)[:, None, None] * sample + (amount * mu)[:, None, None] * eye, amount
