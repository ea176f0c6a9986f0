"""Reconstruction + memory + semantic-difference segmentation (seed 002, Wang and Jin 2023).

A reconstruction net (encoder -> multi-scale "mul-lcDPU" memory -> 1x1 fusion -> decoder) is
trained to turn an image with a synthetic defect back into the clean image; a segmentation net
sees (reconstruction, input) and predicts the defect mask (2-class logits). The anomaly map is the
defect probability (softmax channel 1). See docs/method-seed002-recon-memory-segnet.md.

The memory is in memory.py. `mblock_sizes` are given at the paper's scale (F = 16 for 256 px
input and rec_depth 5): when the largest size exceeds F, all sizes are multiplied by
F / max(sizes) (ratios kept), so (8, 16) becomes (4, 8) at 128 px and (2, 4) at 64 px. Sizes up
to F are used as given. Every mapped size must be a whole number dividing F, so the pooling is a
plain max_pool2d with an integer kernel (ONNX-friendly); otherwise the model refuses to build.

Inputs are [0, 1] images; the model normalises them with the ImageNet mean/std (RGB order, as
surfad reads images; the authors' BGR-reordered statistics are the same numbers for BGR input;
grayscale uses the channel averages). Reconstructions and the MSE live in that normalised space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from surfad.config import Checked, setting
from surfad.errors import SurfadError
from surfad.models.base import AnomalyModel
from surfad.models.layers import conv_block
from surfad.models.recondiff.memory import MultiScaleMemory, map_block_sizes

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB; grayscale uses the channel average
IMAGENET_STD = (0.229, 0.224, 0.225)
SEG_WIDTH_CAP = 8  # segmentation widths: base * 2^i, at most base * 8 (DRAEM's discriminative net)


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """One conv (bias, same size) + BatchNorm + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling with align_corners=True (as the authors' decoders)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


@dataclass
class RecondiffConfig(Checked):
    """recondiff's model_params; the defaults are the "cpu" preset. defect_source is only checked
    when the training samples are built, so a trained model loads where the texture folder is absent."""

    section: ClassVar[str] = "model_params"
    # reconstruction net
    base_width: int = setting(16, "encoder widths base * (1, 2, 4, 8, 8) for rec_depth 5 (paper: 128)", low=2)
    rec_depth: int = setting(5, "encoder blocks (rec_depth - 1 halvings); the decoder has rec_depth - 1 up-stages",
                             low=2)
    mblock_sizes: list[int] = setting([8, 16], "memory scales, at the paper's scale (see the module doc)")
    n_prototypes: int = setting(50, "prototypes per DPU (M)", low=2)
    memory_skip: bool = setting(True, "DPU output = readout + Z (the paper's final model) instead of readout only")
    memory: bool = setting(True, "False: no memory at all, the decoder takes the encoder output (ablation)")
    position_embedding: bool = setting(True, "False: DPUs without the learned position embedding (ablation)")
    # segmentation net
    segnet: str = setting("unet", "unet: one U-Net on concat(reconstruction, input); siamese: a shared encoder "
                                  "and per-scale fusion", choices=("unet", "siamese"))
    seg_base_width: int = setting(16, "segmentation net width (paper: 64)", low=1)
    seg_depth: int = setting(6, "encoder blocks of the segmentation net", low=2)
    seg_input: str = setting("anomalous", "what the segmentation net sees in training: the defect input (paper) "
                                          "or the clean image (authors' code)", choices=("anomalous", "clean"))
    detach_recon: bool = setting(False, "stop the focal loss's gradient into the reconstruction net")
    # loss weights
    recon_weight: float = setting(1.0, "MSE(reconstruction, clean), in normalised-image space", low=0)
    ssim_weight: float = setting(0.0, "1 - SSIM(reconstruction, clean), in [0, 1] image space", low=0)
    compact_weight: float = setting(1.0, "memory compactness loss weight", low=0)
    separate_weight: float = setting(1e-4, "memory separateness loss weight", low=0)
    focal_weight: float = setting(1.0, "focal segmentation loss weight", low=0)
    focal_gamma: float = setting(2.0, "focal loss gamma", low=0)
    # schedule (per epoch): linear warm-up from lr_floor * lr, then cosine decay to lr_floor * lr
    warmup_fraction: float = setting(0.2, "share of the epochs spent warming up (paper: 20 epochs, of ~100)",
                                     low=0, high=0.999)
    lr_floor: float = setting(0.1, "the schedule's lowest learning rate, as a share of train.lr", low=1e-9, high=1)
    # training samples
    negative_aug_ratio: int = setting(1, "augmented normal samples per training image and epoch", low=0)
    positive_aug_ratio: int = setting(1, "synthetic-defect samples per training image and epoch", low=0)
    defect_source: str = setting("procedural", "procedural | self | surface | a folder of texture images (e.g. DTD)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.negative_aug_ratio + self.positive_aug_ratio < 1:
            raise SurfadError("model_params.negative_aug_ratio + positive_aug_ratio must be at least 1")


class Encoder(nn.Module):
    """conv_blocks separated by 2x2 max pools; returns every block's output (full resolution first)."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        cins = [in_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(conv_block(cin, cout, bias=True) for cin, cout in zip(cins, widths))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(F.max_pool2d(x, 2) if i else x)
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """1x1 fusion of the memory scales, then up-stages [x2, conv_block] and a 1x1 output conv (no activation)."""

    def __init__(self, enc_widths: Sequence[int], n_scales: int, out_channels: int) -> None:
        super().__init__()
        top = enc_widths[-1]
        self.fuse = nn.Sequential(conv_bn_relu(n_scales * top, top, 1), conv_bn_relu(top, top, 1))
        outs = [w // 2 for w in reversed(enc_widths[:-1])]
        self.stages = nn.ModuleList(conv_block(cin, cout, bias=True) for cin, cout in zip([top, *outs[:-1]], outs))
        self.out = nn.Conv2d(outs[-1], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fuse(x)
        for stage in self.stages:
            x = stage(up2(x))
        return self.out(x)


class ReconstructionNet(nn.Module):
    """Encoder -> multi-scale memory -> decoder, in normalised-image space (no skips encoder -> decoder)."""

    def __init__(self, in_channels: int, image_size: int, c: RecondiffConfig) -> None:
        super().__init__()
        widths = [c.base_width * 2 ** min(i, c.rec_depth - 2) for i in range(c.rec_depth)]
        feat_size = image_size // 2 ** (c.rec_depth - 1)
        self.block_sizes = map_block_sizes(c.mblock_sizes, feat_size)
        self.encoder = Encoder(in_channels, widths)
        self.memory = (
            MultiScaleMemory(widths[-1], feat_size, self.block_sizes, c.n_prototypes, c.memory_skip, c.position_embedding)
            if c.memory else None
        )
        self.decoder = Decoder(widths, len(self.block_sizes) if c.memory else 1, in_channels)

    def forward(self, x: torch.Tensor, losses: list | None = None) -> torch.Tensor:
        features = self.encoder(x)[-1]
        return self.decoder(features if self.memory is None else self.memory(features, losses))


# --- segmentation ---------------------------------------------------------------------------------


def seg_widths(base: int, depth: int) -> list[int]:
    return [base * min(2**i, SEG_WIDTH_CAP) for i in range(depth)]


class SegDecoder(nn.Module):
    """U-Net decoder: per level [x2, conv3x3, concat skip, conv_block], then 1x1 -> 2 logits.

    skip_factor = 2 when each skip is the concat of two encoder branches (Siamese net).
    """

    def __init__(self, widths: Sequence[int], skip_factor: int) -> None:
        super().__init__()
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        cin = skip_factor * widths[-1]
        for level in range(len(widths) - 2, -1, -1):
            cout = widths[max(level - 1, 0)]
            self.ups.append(conv_bn_relu(cin, cout, 3))
            self.blocks.append(conv_block(cout + skip_factor * widths[level], cout, bias=True))
            cin = cout
        self.out = nn.Conv2d(cin, 2, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(feats[:-1])):
            x = block(torch.cat([up(up2(x)), skip], dim=1))
        return self.out(x)


class SegUNet(nn.Module):
    """The authors' segmentation net (DRAEM's discriminative U-Net) on concat(reconstruction, image)."""

    def __init__(self, in_channels: int, base: int, depth: int) -> None:
        super().__init__()
        widths = seg_widths(base, depth)
        self.encoder = Encoder(2 * in_channels, widths)
        self.decoder = SegDecoder(widths, skip_factor=1)

    def forward(self, recon: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(torch.cat([recon, image], dim=1)))


class SiameseSegNet(nn.Module):
    """The paper figure's net: one encoder applied to both inputs, features concatenated per scale."""

    def __init__(self, in_channels: int, base: int, depth: int) -> None:
        super().__init__()
        widths = seg_widths(base, depth)
        self.encoder = Encoder(in_channels, widths)
        self.decoder = SegDecoder(widths, skip_factor=2)

    def forward(self, recon: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(torch.cat([recon, image], dim=0))  # both branches in one pass
        return self.decoder([torch.cat(f.chunk(2, dim=0), dim=1) for f in feats])


# --- the model ------------------------------------------------------------------------------------


class RecondiffModel(AnomalyModel):
    """Reconstruction + memory + segmentation; forward(x) -> defect probability (B, 1, S, S)."""

    def __init__(self, config: RecondiffConfig, in_channels: int, image_size: int) -> None:
        super().__init__(config, in_channels, image_size)
        c = config
        check_geometry(c, in_channels, image_size)
        mean = torch.tensor(IMAGENET_MEAN if in_channels == 3 else (sum(IMAGENET_MEAN) / 3,))
        std = torch.tensor(IMAGENET_STD if in_channels == 3 else (sum(IMAGENET_STD) / 3,))
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        self.recon = ReconstructionNet(in_channels, image_size, c)
        seg_cls = SegUNet if c.segnet == "unet" else SiameseSegNet
        self.seg = seg_cls(in_channels, c.seg_base_width, c.seg_depth)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, xn: torch.Tensor) -> torch.Tensor:
        return xn * self.std + self.mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.normalize(x)
        logits = self.seg(self.recon(xn), xn)
        return torch.softmax(logits, dim=1)[:, 1:2]

    def visuals(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction": self.denormalize(self.recon(self.normalize(x))).clamp(0, 1)}


def check_geometry(c: RecondiffConfig, in_channels: int, image_size: int) -> None:
    """SurfadError naming the field when the input cannot go through the nets (mblock_sizes: in
    map_block_sizes)."""
    if in_channels not in (1, 3):
        raise SurfadError(f"recondiff: in_channels must be 1 or 3, got {in_channels}")
    for name, depth in (("rec_depth", c.rec_depth), ("seg_depth", c.seg_depth)):
        if image_size % 2 ** (depth - 1):
            raise SurfadError(
                f"model_params.{name}={depth}: image_size {image_size} must be divisible by 2^{depth - 1} = {2 ** (depth - 1)}"
            )
