"""U-Net VAE (seed 000): the U-Net down path encodes to a Gaussian latent, the up path decodes.

The bottleneck predicts mu and log sigma^2 per latent cell (a spatial latent); training samples
z = mu + sigma * eps, inference decodes mu. Skip connections from the chosen encoder levels are
concatenated in the decoder: they sharpen reconstructions but can also copy a defect straight
through, so which levels are used is configurable (`skip_levels`, level 0 = full resolution).
The anomaly map is the per-pixel reconstruction error averaged over channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from surfad.config import ScoreConfig
from surfad.errors import SurfadError
from surfad.models import register
from surfad.models.base import AnomalyModel


@dataclass
class UNetVAEConfig:
    base_width: int = 16  # channels at full resolution; doubled at each level
    depth: int = 4  # number of 2x downsamplings
    latent_channels: int = 16  # channels of the spatial latent (S / 2**depth per side)
    # Encoder levels feeding the decoder, chosen on validation image AUROC (benchmarks/RESULTS.md):
    # shallow skips copy defects through (level 0: wood image AUROC 80.8; level 1 lost on the
    # synthetic data's validation, 0.77 vs 0.97), no skips gives blurry maps.
    skip_levels: list[int] = field(default_factory=lambda: [2, 3])
    recon_loss: str = "l1"  # l1 | mse | bce
    beta: float = 0.01  # KL weight (the seed's KLD_WEIGHT), on per-element means
    kl_warmup: float = 0.2  # share of training over which beta ramps up linearly from 0 (0 = off)
    map_error: str = "l1"  # per-pixel error of the anomaly map: l1 | l2
    sample_at_inference: bool = False  # decode a sample z instead of mu at inference


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU: the unit of both paths."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) averaged over every latent element (batch included)."""
    return 0.5 * torch.mean(mu.pow(2) + logvar.exp() - 1.0 - logvar)


@register
class UNetVAE(AnomalyModel):
    """U-Net VAE; forward(x) -> per-pixel reconstruction error (B, 1, S, S)."""

    name = "unet_vae"
    Config = UNetVAEConfig
    default_score = ScoreConfig(smoothing_sigma=2.0, reduce="topk", pool=1, topk=100)

    def __init__(self, config: UNetVAEConfig, in_channels: int, image_size: int) -> None:
        super().__init__(config, in_channels, image_size)
        c = config
        if c.depth < 1 or image_size % (2**c.depth):
            raise SurfadError(f"model_params.depth={c.depth}: image_size {image_size} must be divisible by {2**c.depth}")
        bad = [lvl for lvl in c.skip_levels if not 0 <= lvl < c.depth]
        if bad:
            raise SurfadError(f"model_params.skip_levels: levels {bad} outside 0..{c.depth - 1}")
        for field_name, value, options in (
            ("recon_loss", c.recon_loss, ("l1", "mse", "bce")),
            ("map_error", c.map_error, ("l1", "l2")),
        ):
            if value not in options:
                raise SurfadError(f"model_params.{field_name}={value!r}: choose one of {', '.join(options)}")
        widths = [c.base_width * 2**i for i in range(c.depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(conv_block(cin, w))
            cin = w
        self.bottleneck = conv_block(widths[-2], widths[-1])
        self.to_latent = nn.Conv2d(widths[-1], 2 * c.latent_channels, 1)
        self.from_latent = nn.Sequential(nn.Conv2d(c.latent_channels, widths[-1], 1), nn.ReLU(inplace=True))
        self.skip_levels = sorted(set(c.skip_levels))
        self.up_convs = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(c.depth)):
            self.up_convs.append(nn.Conv2d(widths[level + 1], widths[level], 3, padding=1))
            skip = widths[level] if level in self.skip_levels else 0
            self.up_blocks.append(conv_block(widths[level] + skip, widths[level]))
        self.head = nn.Conv2d(widths[0], in_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Images -> (mu, logvar, skip features per level)."""
        skips = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        mu, logvar = self.to_latent(self.bottleneck(h)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0), skips

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Latent + skip features -> reconstruction in [0, 1]."""
        h = self.from_latent(z)
        for level, up_conv, block in zip(reversed(range(self.config.depth)), self.up_convs, self.up_blocks):
            h = up_conv(F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False))
            if level in self.skip_levels:
                h = torch.cat([h, skips[level]], dim=1)
            h = block(h)
        return torch.sigmoid(self.head(h))

    def reconstruct(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar); z is sampled when `sample`, else z = mu."""
        mu, logvar, skips = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode(z, skips), mu, logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recon, _, _ = self.reconstruct(x, sample=self.config.sample_at_inference)
        diff = x - recon
        error = diff.abs() if self.config.map_error == "l1" else diff.pow(2)
        return error.mean(dim=1, keepdim=True)

    def training_loss(self, batch: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
        x = batch["image"]
        recon, mu, logvar = self.reconstruct(x, sample=True)
        if self.config.recon_loss == "l1":
            rec = F.l1_loss(recon, x)
        elif self.config.recon_loss == "mse":
            rec = F.mse_loss(recon, x)
        else:
            rec = F.binary_cross_entropy(recon, x)
        kl = kl_divergence(mu, logvar)
        warm = self.config.kl_warmup
        beta = self.config.beta * (min(1.0, progress / warm) if warm > 0 else 1.0)
        return {"loss": rec + beta * kl, "recon": rec, "kl": kl}

    def visuals(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, _, _ = self.reconstruct(x, sample=False)
        return {"reconstruction": recon}
