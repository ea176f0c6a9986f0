"""U-Net VAE (seed 000): the U-Net down path encodes to a Gaussian latent, the up path decodes.

The bottleneck predicts mu and log sigma^2 per latent cell (a spatial latent); training samples
z = mu + sigma * eps, inference decodes mu. Skip connections from the chosen encoder levels are
concatenated in the decoder: they sharpen reconstructions but can also copy a defect straight
through, so which levels are used is configurable (`skip_levels`, level 0 = full resolution).
The anomaly map is the per-pixel reconstruction error averaged over channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from surfad.config import Checked, setting
from surfad.errors import SurfadError
from surfad.models.base import AnomalyModel
from surfad.models.layers import conv_block


@dataclass
class UNetVAEConfig(Checked):
    section: ClassVar[str] = "model_params"
    base_width: int = setting(16, "channels at full resolution; doubled at each level", low=1)
    depth: int = setting(4, "number of 2x downsamplings", low=1)
    latent_channels: int = setting(16, "channels of the spatial latent (S / 2**depth per side)", low=1)
    # Encoder levels feeding the decoder, chosen on validation image AUROC (benchmarks/RESULTS.md):
    # shallow skips copy defects through (level 0: wood image AUROC 80.8; level 1 lost on the
    # synthetic data's validation, 0.77 vs 0.97), no skips gives blurry maps.
    skip_levels: list[int] = setting([2, 3], "encoder levels whose features skip to the decoder")
    recon_loss: str = setting("l1", "reconstruction loss", choices=("l1", "mse", "bce"))
    beta: float = setting(0.01, "KL weight (the seed's KLD_WEIGHT), on per-element means", low=0)
    kl_warmup: float = setting(0.2, "share of training over which beta ramps up from 0 (0 = off)", low=0, high=1)
    map_error: str = setting("l1", "per-pixel error of the anomaly map", choices=("l1", "l2"))
    sample_at_inference: bool = setting(False, "decode a sample z instead of mu at inference")


class UNetVAE(AnomalyModel):
    """U-Net VAE; forward(x) -> per-pixel reconstruction error (B, 1, S, S)."""

    def __init__(self, config: UNetVAEConfig, in_channels: int, image_size: int) -> None:
        super().__init__(config, in_channels, image_size)
        c = config
        if image_size % (2**c.depth):
            raise SurfadError(f"model_params.depth={c.depth}: image_size {image_size} must be divisible by {2**c.depth}")
        bad = [lvl for lvl in c.skip_levels if not 0 <= lvl < c.depth]
        if bad:
            raise SurfadError(f"model_params.skip_levels: levels {bad} outside 0..{c.depth - 1}")
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

    def visuals(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, _, _ = self.reconstruct(x, sample=False)
        return {"reconstruction": recon}
