"""Reconstruction + memory + semantic-difference segmentation (seed 002, Wang and Jin 2023).

A reconstruction net (encoder -> multi-scale "mul-lcDPU" memory -> 1x1 fusion -> decoder) is
trained to turn an image with a synthetic defect back into the clean image; a segmentation net
sees (reconstruction, input) and predicts the defect mask (2-class logits). The anomaly map is the
defect probability (softmax channel 1). See docs/method-seed002-recon-memory-segnet.md.

Memory (one DPU per scale): the encoder output X (C x F x F) is max-pooled to s x s, a learned
position embedding is added (Z = X + P), per-image prototypes are soft-assigned from Z, every
position reads out the prototypes it addresses, and the unit-norm readout is added to Z (skip).
The scale outputs are upsampled back to F x F and concatenated.

`mblock_sizes` are given at the paper's scale (F = 16 for 256 px input and rec_depth 5): when the
largest size exceeds F, all sizes are multiplied by F / max(sizes) (ratios kept), so (8, 16)
becomes (4, 8) at 128 px and (2, 4) at 64 px. Sizes up to F are used as given. Every mapped size
must be a whole number dividing F, so the pooling is a plain max_pool2d with an integer kernel
(ONNX-friendly); otherwise the model refuses to build.

Inputs are [0, 1] images; the model normalises them with the ImageNet mean/std (RGB order, as
surfad reads images; the authors' BGR-reordered statistics are the same numbers for BGR input;
grayscale uses the channel averages). Reconstructions and the MSE live in that normalised space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from surfad.config import ScoreConfig, TrainConfig
from surfad.data.defects import DefectSynthesizer
from surfad.errors import SurfadError
from surfad.models import register
from surfad.models.base import AnomalyModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB; grayscale uses the channel average
IMAGENET_STD = (0.229, 0.224, 0.225)
SEG_WIDTH_CAP = 8  # segmentation widths: base * 2^i, at most base * 8 (DRAEM's discriminative net)


@dataclass
class RecondiffConfig:
    """recondiff's model_params; the defaults are the "cpu" preset. defect_source is only checked
    when the training dataset is built, so a trained model loads where the texture folder is absent."""

    # reconstruction net
    base_width: int = 16  # encoder widths base * (1, 2, 4, 8, 8) for rec_depth 5 (paper: 128)
    rec_depth: int = 5  # encoder blocks (rec_depth - 1 halvings); the decoder has rec_depth - 1 up-stages
    mblock_sizes: list[int] = field(default_factory=lambda: [8, 16])  # memory scales (see module doc)
    n_prototypes: int = 50  # prototypes per DPU (M)
    memory_skip: bool = True  # DPU output = readout + Z (the paper's final model) instead of readout only
    memory: bool = True  # False: no memory at all, the decoder takes the encoder output (ablation)
    position_embedding: bool = True  # False: DPUs without the learned position embedding (plain DPU, ablation)
    # segmentation net
    segnet: str = "unet"  # unet: one U-Net on concat(rec, input) | siamese: shared encoder, per-scale fusion
    seg_base_width: int = 16  # paper: 64
    seg_depth: int = 6  # encoder blocks of the segmentation net
    seg_input: str = "anomalous"  # what the seg net sees in training: the defect input (paper) or "clean" (authors' code)
    detach_recon: bool = False  # stop the focal loss's gradient into the reconstruction net
    # loss weights
    recon_weight: float = 1.0  # MSE(reconstruction, clean), in normalised-image space
    ssim_weight: float = 0.0  # 1 - SSIM(reconstruction, clean), in [0, 1] image space
    compact_weight: float = 1.0
    separate_weight: float = 1e-4
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    # schedule (per epoch): linear warm-up from lr_floor * lr, then cosine decay to lr_floor * lr
    warmup_fraction: float = 0.2  # share of the epochs spent warming up (paper: 20 epochs, of ~100)
    lr_floor: float = 0.1
    # training samples (make_train_dataset)
    negative_aug_ratio: int = 1  # augmented normal samples per training image and epoch
    positive_aug_ratio: int = 1  # synthetic-defect samples per training image and epoch
    defect_source: str = "procedural"  # procedural | self | surface | path to a texture folder (e.g. DTD)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two [conv3x3 (bias) + BatchNorm + ReLU]: the block of every encoder and decoder here."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling with align_corners=True (as the authors' decoders)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class Encoder(nn.Module):
    """conv_blocks separated by 2x2 max pools; returns every block's output (full resolution first)."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        cins = [in_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(conv_block(cin, cout) for cin, cout in zip(cins, widths))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(F.max_pool2d(x, 2) if i else x)
            feats.append(x)
        return feats


# --- memory ---------------------------------------------------------------------------------------


def dpu_losses(z: torch.Tensor, prototypes: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(compactness, separateness) of one DPU.

    z (B, N, C) queries, prototypes (B, M, C) unit-norm, weights (B, N, M) addressing.
    compactness = mean over B*N*C of (z_n - p_k(n))^2 with k(n) = argmax_m weights[n, m];
    separateness = mean over images and pairs i < j of max(0, 1 - ||p_i - p_j||^2).
    """
    nearest = torch.gather(prototypes, 1, weights.argmax(dim=-1, keepdim=True).expand(-1, -1, z.shape[-1]))
    compact = (z - nearest).pow(2).mean()
    sq = prototypes.pow(2).sum(-1)
    dist2 = (sq[:, :, None] + sq[:, None, :] - 2 * prototypes @ prototypes.transpose(1, 2)).clamp_min(0)
    i, j = torch.triu_indices(prototypes.shape[1], prototypes.shape[1], offset=1, device=z.device)
    separate = F.relu(1.0 - dist2[:, i, j]).mean()
    return compact, separate


class DPU(nn.Module):
    """Dynamic prototype unit with a learned position embedding (the paper's lcDPU).

    Prototypes are computed per image from its own features: no persistent memory bank.
    """

    def __init__(self, channels: int, size: int, n_prototypes: int, skip: bool, position: bool = True) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, channels, size, size)) if position else None
        self.assign = nn.Linear(channels, n_prototypes, bias=False)
        bound = 1.0 / math.sqrt(n_prototypes)
        nn.init.uniform_(self.assign.weight, -bound, bound)
        self.skip = skip

    def forward(self, x: torch.Tensor, losses: list | None = None) -> torch.Tensor:
        """x (B, C, s, s) -> (B, C, s, s); appends (compactness, separateness) to `losses` if given."""
        z = (x if self.pos is None else x + self.pos).flatten(2).transpose(1, 2)  # (B, N, C); key = query = z
        assignment = torch.softmax(self.assign(z), dim=1)  # over the N positions
        prototypes = F.normalize(assignment.transpose(1, 2) @ z, dim=-1)  # (B, M, C)
        weights = torch.softmax(z @ prototypes.transpose(1, 2), dim=-1)  # (B, N, M), over prototypes
        out = F.normalize(weights @ prototypes, dim=-1)
        if self.skip:
            out = out + z
        if losses is not None:
            losses.append(dpu_losses(z, prototypes, weights))
        return out.transpose(1, 2).reshape(x.shape)


def map_block_sizes(sizes: Sequence[int], feat_size: int) -> list[int]:
    """Memory scales for an encoder output of feat_size (rule in the module doc); SurfadError if unusable."""
    if not sizes or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise SurfadError(f"model_params.mblock_sizes={list(sizes)}: expected a non-empty list of positive integers")
    if len(set(sizes)) != len(sizes):
        raise SurfadError(f"model_params.mblock_sizes={list(sizes)}: sizes must be distinct")
    largest = max(sizes)
    if largest <= feat_size:
        mapped = list(sizes)
    elif any(s * feat_size % largest for s in sizes):
        raise SurfadError(
            f"model_params.mblock_sizes={list(sizes)}: scaled to the encoder output size {feat_size} they are "
            f"not whole numbers; use sizes whose ratios to {largest} divide {feat_size}, or a larger image_size"
        )
    else:
        mapped = [s * feat_size // largest for s in sizes]
    bad = [s for s in mapped if feat_size % s]
    if bad:
        raise SurfadError(
            f"model_params.mblock_sizes={list(sizes)}: memory sizes {bad} do not divide the encoder output "
            f"size {feat_size} (image_size / 2^(rec_depth - 1))"
        )
    return mapped


class MultiScaleMemory(nn.Module):
    """mul-lcDPU: per scale, max-pool to s x s, DPU, bilinear back to F x F; concat on channels."""

    def __init__(self, channels: int, feat_size: int, sizes: Sequence[int], n_prototypes: int, skip: bool,
                 position: bool = True) -> None:
        super().__init__()
        self.feat_size = feat_size
        self.kernels = [feat_size // s for s in sizes]
        self.units = nn.ModuleList(DPU(channels, s, n_prototypes, skip, position) for s in sizes)

    def forward(self, x: torch.Tensor, losses: list | None = None) -> torch.Tensor:
        outs = []
        for kernel, unit in zip(self.kernels, self.units):
            out = unit(F.max_pool2d(x, kernel) if kernel > 1 else x, losses)
            if kernel > 1:
                out = F.interpolate(out, size=(self.feat_size, self.feat_size), mode="bilinear", align_corners=False)
            outs.append(out)
        return torch.cat(outs, dim=1)


class Decoder(nn.Module):
    """1x1 fusion of the memory scales, then up-stages [x2, conv_block] and a 1x1 output conv (no activation)."""

    def __init__(self, enc_widths: Sequence[int], n_scales: int, out_channels: int) -> None:
        super().__init__()
        top = enc_widths[-1]
        self.fuse = nn.Sequential(conv_bn_relu(n_scales * top, top, 1), conv_bn_relu(top, top, 1))
        outs = [w // 2 for w in reversed(enc_widths[:-1])]
        self.stages = nn.ModuleList(conv_block(cin, cout) for cin, cout in zip([top, *outs[:-1]], outs))
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
            self.blocks.append(conv_block(cout + skip_factor * widths[level], cout))
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


# --- losses ---------------------------------------------------------------------------------------


def focal_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """DRAEM's focal loss on 2-class softmax: mean of -(1 - p_t)^gamma log p_t, smoothed targets."""
    probs = torch.softmax(logits, dim=1)
    target = torch.cat([1.0 - mask, mask], dim=1).clamp(1e-5, 1.0 - 1e-5)
    pt = (target * probs).sum(dim=1) + 1e-5
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of images in [0, 1], Gaussian window, per channel."""
    xs = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-(xs**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(a.shape[1], 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=window // 2, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean()


def lr_factor(epoch: int, epochs: int, warmup_fraction: float, floor: float) -> float:
    """LR multiplier for epoch `epoch` (0-based) of `epochs`.

    Linear from floor to 1 over the first round(warmup_fraction * epochs) epochs, then
    max(floor, cosine from 1 towards 0 over the remaining epochs).
    """
    warmup = round(warmup_fraction * epochs)
    if epoch < warmup:
        return floor + (1.0 - floor) * epoch / warmup
    progress = min(1.0, (epoch - warmup) / max(1, epochs - warmup))
    return max(floor, 0.5 * (1.0 + math.cos(math.pi * progress)))


# --- the model ------------------------------------------------------------------------------------


@register
class RecondiffModel(AnomalyModel):
    """Reconstruction + memory + segmentation; forward(x) -> defect probability (B, 1, S, S)."""

    name = "recondiff"
    Config = RecondiffConfig
    # The paper pools 21 x 21 at 256 px and averages the top 5; 11 x 11 is that window at the default 128 px.
    default_score = ScoreConfig(reduce="topk", pool=11, topk=5)
    cli_flags = {  # the seed's command-line names
        "mblock-size": "mblock_sizes",
        "positive-aug-ratio": "positive_aug_ratio",
        "negative-aug-ratio": "negative_aug_ratio",
        "detach-recon": "detach_recon",
        "segnet": "segnet",
        "seg-input": "seg_input",
        "defect-source": "defect_source",
    }
    presets: dict[str, dict[str, Any]] = {
        "paper": {  # the authors' configuration, for 256 x 256 input (about 79 M parameters, 252 GFLOPs)
            "base_width": 128,
            "rec_depth": 5,
            "mblock_sizes": [8, 16],
            "n_prototypes": 50,
            "seg_base_width": 64,
            "seg_depth": 6,
            "negative_aug_ratio": 2,
            "positive_aug_ratio": 2,
        },
        "cpu": {},  # the Config defaults
    }

    def __init__(self, config: RecondiffConfig, in_channels: int, image_size: int) -> None:
        super().__init__(config, in_channels, image_size)
        c = config
        _check_config(c, in_channels, image_size)
        mean = torch.tensor(IMAGENET_MEAN if in_channels == 3 else (sum(IMAGENET_MEAN) / 3,))
        std = torch.tensor(IMAGENET_STD if in_channels == 3 else (sum(IMAGENET_STD) / 3,))
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        self.recon = ReconstructionNet(in_channels, image_size, c)
        seg_cls = SegUNet if c.segnet == "unet" else SiameseSegNet
        self.seg = seg_cls(in_channels, c.seg_base_width, c.seg_depth)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.normalize(x)
        logits = self.seg(self.recon(xn), xn)
        return torch.softmax(logits, dim=1)[:, 1:2]

    def training_loss(self, batch: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
        """Batch: "image" (input, maybe with a synthetic defect), "target" (clean; default: the
        image), "mask" (B, 1, S, S; default: zeros). Reconstruction from the input, targets clean."""
        c = self.config
        image = batch["image"]
        target = batch.get("target", image)
        mask = batch.get("mask", torch.zeros_like(image[:, :1]))
        xn, tn = self.normalize(image), self.normalize(target)
        mem_losses: list[tuple[torch.Tensor, torch.Tensor]] = []
        recon = self.recon(xn, mem_losses)
        seg_recon = recon.detach() if c.detach_recon else recon
        logits = self.seg(seg_recon, xn if c.seg_input == "anomalous" else tn)
        zero = recon.new_zeros(())  # memory losses without a memory (ablation)
        terms = {
            "mse": F.mse_loss(recon, tn),
            "compact": sum((lc for lc, _ in mem_losses), zero),
            "separate": sum((ld for _, ld in mem_losses), zero),
            "focal": focal_loss(logits, mask, c.focal_gamma),
        }
        loss = (
            c.recon_weight * terms["mse"]
            + c.compact_weight * terms["compact"]
            + c.separate_weight * terms["separate"]
            + c.focal_weight * terms["focal"]
        )
        if c.ssim_weight > 0:
            terms["ssim"] = 1.0 - ssim(self.denormalize(recon).clamp(0, 1), target)
            loss = loss + c.ssim_weight * terms["ssim"]
        return {"loss": loss, **terms}

    def denormalize(self, xn: torch.Tensor) -> torch.Tensor:
        return xn * self.std + self.mean

    def visuals(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction": self.denormalize(self.recon(self.normalize(x))).clamp(0, 1)}

    def configure_optimizer(
        self, train: TrainConfig, steps_per_epoch: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """Adam (train.lr, train.weight_decay; the paper: 1e-3, 1e-5) with a per-epoch LambdaLR.

        Stepped once per epoch (as surfad.train does): warm-up over warmup_fraction of
        train.epochs from lr_floor * lr to lr, then cosine decay to lr_floor * lr (lr_factor).
        The paper warms up for a fixed 20 epochs; a fraction keeps the same shape for short CPU
        runs (0.2 = the paper's 20 of its README's 100 epochs).
        """
        optimizer = torch.optim.Adam(self.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        c, epochs = self.config, max(1, train.epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: lr_factor(epoch, epochs, c.warmup_fraction, c.lr_floor)
        )
        return optimizer, scheduler

    def make_train_dataset(self, images: Dataset, seed: int) -> Dataset:
        synthesizer = DefectSynthesizer(self.config.defect_source, self.image_size, seed)
        return RecondiffTrainDataset(
            images, synthesizer, self.config.negative_aug_ratio, self.config.positive_aug_ratio, seed
        )


def _check_config(c: RecondiffConfig, in_channels: int, image_size: int) -> None:
    """SurfadError naming the field for values the model cannot use (mblock_sizes: in map_block_sizes)."""
    if in_channels not in (1, 3):
        raise SurfadError(f"recondiff: in_channels must be 1 or 3, got {in_channels}")
    for name, options in (("segnet", ("unet", "siamese")), ("seg_input", ("anomalous", "clean"))):
        if getattr(c, name) not in options:
            raise SurfadError(f"model_params.{name}={getattr(c, name)!r}: choose one of {', '.join(options)}")
    minimums = {"base_width": 2, "seg_base_width": 1, "rec_depth": 2, "seg_depth": 2, "n_prototypes": 2,
                "negative_aug_ratio": 0, "positive_aug_ratio": 0}
    for name, low in minimums.items():
        if getattr(c, name) < low:
            raise SurfadError(f"model_params.{name}={getattr(c, name)}: must be at least {low}")
    if c.negative_aug_ratio + c.positive_aug_ratio < 1:
        raise SurfadError("model_params.negative_aug_ratio + positive_aug_ratio must be at least 1")
    for name in ("recon_weight", "ssim_weight", "compact_weight", "separate_weight", "focal_weight", "focal_gamma"):
        if getattr(c, name) < 0:
            raise SurfadError(f"model_params.{name}={getattr(c, name)}: must be >= 0")
    if not 0 <= c.warmup_fraction < 1:
        raise SurfadError(f"model_params.warmup_fraction={c.warmup_fraction}: must be in [0, 1)")
    if not 0 < c.lr_floor <= 1:
        raise SurfadError(f"model_params.lr_floor={c.lr_floor}: must be in (0, 1]")
    for name, depth in (("rec_depth", c.rec_depth), ("seg_depth", c.seg_depth)):
        if image_size % 2 ** (depth - 1):
            raise SurfadError(
                f"model_params.{name}={depth}: image_size {image_size} must be divisible by 2^{depth - 1} = {2 ** (depth - 1)}"
            )


# --- training samples -----------------------------------------------------------------------------


def augment_normal(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random subset (0 to 3, random) of: rotate +-4 deg, scale 0.98-1.02, translate +-2%; edges replicated.

    image float32 (C, S, S); returns a new array of the same shape.
    """
    channels, size = image.shape[0], image.shape[1]
    ops = rng.choice(3, size=int(rng.integers(0, 4)), replace=False)
    if len(ops) == 0:
        return image.copy()
    angle = rng.uniform(-4.0, 4.0) if 0 in ops else 0.0
    scale = rng.uniform(0.98, 1.02) if 1 in ops else 1.0
    shift = rng.uniform(-0.02, 0.02, size=2) * size if 2 in ops else np.zeros(2)
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), angle, scale)
    matrix[:, 2] += shift
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    warped = cv2.warpAffine(hwc, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(warped.reshape(size, size, channels).transpose(2, 0, 1), dtype=np.float32)


class RecondiffTrainDataset(Dataset):
    """Training samples of recondiff: augmented normal images, then synthetic defects.

    With N good images the epoch has N * (neg + pos) items: indices [0, N * neg) are augmented
    normal images (input = target, empty mask, label 0), the rest synthetic defects on an augmented
    image (input = defect image, target = the clean augmented image, label 1); image = index mod N.
    Items: "image" (C, S, S), "target" (C, S, S), "mask" (1, S, S), "label" int64.

    Randomness: item `index` uses np.random.default_rng([seed, epoch, index]). `epoch` is the value
    given to set_epoch() when the training loop calls it (needed for reproducibility with DataLoader
    workers, whose dataset copies are rebuilt every epoch); otherwise it is the number of times this
    index has been drawn before, which equals the epoch when every index is drawn once per epoch in
    the main process. Either way samples differ across epochs and repeat for the same (seed, epoch).
    """

    def __init__(
        self, images: Dataset, synthesizer: DefectSynthesizer, negative_ratio: int, positive_ratio: int, seed: int
    ) -> None:
        if len(images) == 0:
            raise SurfadError("recondiff: no training images")
        self.images = images
        self.synthesizer = synthesizer
        self.n_normal = len(images) * negative_ratio
        self.length = len(images) * (negative_ratio + positive_ratio)
        self.seed = abs(seed)
        self.epoch: int | None = None
        self.draws = np.zeros(self.length, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not 0 <= index < self.length:
            raise IndexError(index)
        epoch = self.epoch if self.epoch is not None else int(self.draws[index])
        self.draws[index] += 1
        rng = np.random.default_rng([self.seed, epoch, index])
        base = np.asarray(self.images[index % len(self.images)]["image"], dtype=np.float32)
        clean = augment_normal(base, rng)
        if index < self.n_normal:
            image, mask, label = clean, np.zeros(clean.shape[1:], dtype=np.float32), 0
        else:
            (image, mask), label = self.synthesizer(clean, rng), 1
        return {
            "image": torch.from_numpy(image),
            "target": torch.from_numpy(clean),
            "mask": torch.from_numpy(mask[None].copy()),
            "label": torch.tensor(label, dtype=torch.int64),
        }
