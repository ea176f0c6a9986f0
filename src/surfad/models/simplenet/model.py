"""SimpleNet (Liu et al., CVPR 2023) on a frozen EfficientNet-Lite: a learned head on patch features.

The frozen backbone gives locally aware patch features (surfad.models.backbones.PatchFeatures),
standardised per channel; a feature adaptor (a 1x1 convolution, started at the identity) moves
them to where normal and anomalous patches separate best, and a discriminator (two 1x1
convolutions) gives each patch an anomaly logit, higher = more anomalous. The anomaly map is that
grid of logits, upsampled to the input. Training (loss.py, samples.py) teaches the discriminator
normal patches against three kinds of anomalous ones: the adapted normal features plus Gaussian
noise (SimpleNet's feature-space anomalies), the patches under synthetic image defects, and the
patches under real defects when the run is given some (`surfad train --train-defects`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from surfad.config import setting
from surfad.models.backbones import FeatureSettings, PatchFeatures
from surfad.models.base import AnomalyModel


@dataclass
class SimpleNetConfig(FeatureSettings):
    neighbourhood: int = setting(3, "local averaging window of each feature map", low=1)
    hidden: int = setting(256, "width of the discriminator's hidden layer", low=1)
    noise_std: float = setting(0.5, "feature-space anomalies: Gaussian noise added to the adapted normal features, "
                                    "in units of the standardised features", low=0)
    margin: float = setting(0.5, "the truncated L1 loss's margin: normal logits are pushed below -margin, "
                                 "anomalous ones above +margin", low=0)
    defect_source: str = setting("surface", "synthetic image defects trained on as anomalous patches: procedural | "
                                            "self | surface | a texture folder")
    positive_ratio: int = setting(1, "synthetic-defect copies of each good image per epoch (0 = feature noise only)",
                                  low=0)
    real_repeat: int = setting(8, "times each real training defect (--train-defects) is shown per epoch", low=1)
    statistics_images: int = setting(64, "good images whose features standardise the features", low=1)
    seed: int = setting(0, "seed of the synthetic defects")


class SimpleNet(AnomalyModel):
    """forward(x (B, C, S, S)) -> anomaly logit map (B, 1, S, S)."""

    def __init__(self, config: SimpleNetConfig, in_channels: int, image_size: int, pretrained: bool = True) -> None:
        super().__init__(config, in_channels, image_size)
        self.features = PatchFeatures(config.backbone, config.layers, config.neighbourhood, in_channels, pretrained)
        dim = self.features.dim
        self.register_buffer("centre", torch.zeros(1, dim, 1, 1))  # standardising: feature means
        self.register_buffer("spread", torch.ones(1, dim, 1, 1))  # and standard deviations
        self.adaptor = nn.Conv2d(dim, dim, 1)
        with torch.no_grad():
            self.adaptor.weight.copy_(torch.eye(dim)[:, :, None, None])
            self.adaptor.bias.zero_()
        self.discriminator = nn.Sequential(
            nn.Conv2d(dim, config.hidden, 1), nn.BatchNorm2d(config.hidden), nn.LeakyReLU(0.2),
            nn.Conv2d(config.hidden, 1, 1),
        )

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> the frozen, standardised patch features (B, D, h, w)."""
        return (self.features(x) - self.centre) / self.spread

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        return self.adaptor(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.discriminator(self.adapt(self.patch_features(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def set_statistics(self, features: torch.Tensor) -> None:
        """Standardise with the per-channel mean and spread of raw patch features (N, D, h, w)."""
        self.centre = features.mean(dim=(0, 2, 3), keepdim=True).to(self.centre)
        self.spread = features.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6).to(self.spread)
