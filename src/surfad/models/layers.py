"""Layers shared by the models trained from scratch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """One conv (bias, same size) + BatchNorm + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling with align_corners=True (as recondiff's authors' decoders)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
