"""The layer both models trained from scratch (unet_vae, recondiff) build their U-Net paths from."""

from __future__ import annotations

from torch import nn


def conv_block(cin: int, cout: int, bias: bool = False) -> nn.Sequential:
    """Two [3x3 conv + BatchNorm + ReLU]: the unit of the U-Net paths (unet_vae without conv bias,
    recondiff with, as its authors)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )

