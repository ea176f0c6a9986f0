"""Run configuration as dataclasses; the resolved config is saved with every run as config.yaml."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from surfad.errors import SurfadError

LAYOUTS = ("mvtec", "mt", "folder", "dagm", "ksdd2")  # dataset layouts surfad.data.layouts reads


@dataclass
class DataConfig:
    """Where the images are and how they become model inputs."""

    path: str = ""
    layout: str = "auto"  # "auto" (detects mvtec, mt, dagm or ksdd2) or one of LAYOUTS
    image_size: int = 128  # the model's input side, in pixels (the tile side when tile_scale > 0)
    tile_scale: float = 0.0  # 0: squash each whole image to image_size x image_size. > 0: rescale every
    # image by this one factor (keeping aspect ratio and texture scale) and work on image_size tiles of it
    tile_stride: int = 0  # tiling: step between tiles at inference, in pixels (0 = 3/4 of image_size)
    tiles_per_image: int = 1  # tiling: random tiles drawn from each training image per epoch
    channels: int | None = None  # None: 1 if every training image is grayscale, else 3
    val_ratio: float = 0.15  # share of the training good images held out for validation
    test_ratio: float = 0.2  # share of good images put in test when the layout has no test split
    split_seed: int = 0
    train_list: str | None = None  # file listing the training good images (e.g. magnetic-tile)
    good_dir: str = "good"  # folder layout: folder of good images
    defect_dir: str = "defect"  # folder layout: folder of defective images (optional)
    mask_dir: str | None = None  # folder layout: folder of masks (optional)
    mask_name: str = "{stem}_mask.png"  # folder layout: mask file name for image <stem>.<ext>
    val_good_dir: str | None = None  # folder layout: good validation images (optional; never trained on)
    val_defect_dir: str | None = None  # folder layout: defective validation images (optional): real defects
    # then choose the shipped epoch and the threshold
    skip_bad: bool = False  # skip unreadable files (and count them) instead of stopping

    @property
    def input_channels(self) -> int:
        """The model's input channels. Training resolves `channels`, so every run's config.yaml has it."""
        if self.channels is None:
            raise SurfadError("data.channels is not set: it is resolved from the training images when training starts")
        return self.channels


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = all cores
    device: str = "auto"  # auto | cpu | cuda
    val_every: int = 1  # validate every N epochs
    select_after: int = 5  # epochs 1..N are validated but never shipped (unless training ends there): an
    # untrained net's error maps can rank salient defects well by chance on a small validation set
    grid_every: int = 5  # write an input/reconstruction/map grid every N epochs (0 = never)
    time_budget_min: float = 0.0  # stop after the epoch that passes this many minutes (0 = off)
    patience: int = 0  # stop once this many validations in a row bring no new best (0 = off)
    val_synthetic: bool = True  # add synthetic defects to validation when it has no real ones
    val_defect_source: str = "self"  # their texture source: procedural | self | surface | a folder (differs from
    # recondiff's default training source, so validation does not reward fitting one defect style)
    ema_decay: float = 0.0  # > 0 (e.g. 0.998): validate, select and ship an exponential moving average of the
    # weights and BatchNorm statistics instead of the raw weights, evening out step-to-step noise (0 = off)


@dataclass
class ScoreConfig:
    """How an anomaly map becomes the image score (part of the exported graph)."""

    smoothing_sigma: float = 0.0  # Gaussian smoothing of the map, in pixels (0 = off)
    reduce: str = "mean"  # mean | max | topk
    pool: int = 1  # local average pooling kernel before reducing (1 = off)
    topk: int = 10  # with reduce=topk: the mean of the k largest pooled values


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    model: str = "unet_vae"
    model_params: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig | None = None  # None: the model's own default

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from surfad.utils import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        return from_dict(cls, raw, "config")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(load_yaml(path))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SurfadError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise SurfadError(f"{path}: not valid YAML ({err})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SurfadError(f"{path}: expected a mapping of settings at the top level")
    return raw


def from_dict(cls: type, raw: dict[str, Any], where: str) -> Any:
    """Build dataclass cls from a dict, checking names and types; errors name the field."""
    if not isinstance(raw, dict):
        raise SurfadError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SurfadError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check/convert one value against its type hint (ints for floats, nested dataclasses)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(inner[0], value, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SurfadError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise SurfadError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint in (int, float, str):
        raise SurfadError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
