"""Run configuration as dataclasses; the resolved config is saved with every run as config.yaml.

Each setting is declared once, with `setting(...)`: its default, its help text (which `surfad train
--help` shows: the train flags are generated from these fields), its flag name when it differs from
the field's, and the values it accepts. Every config is checked when it is built, from the command
line, a YAML file or Python, with an error that names the field (`train.batch_size=0: must be >= 1`);
floats must be finite everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from surfad.errors import SurfadError

LAYOUTS = ("mvtec", "mt", "folder", "dagm", "ksdd2")  # dataset layouts surfad.data.layouts reads
REDUCTIONS = ("mean", "max", "topk", "model")  # ScoreConfig.reduce
ROI_FILLS = ("nearest", "mean", "off")  # DataConfig.roi_fill
GEOMETRIES = ("auto", "squash", "tile")  # DataConfig.geometry (surfad.data.geometry)


def setting(default: Any, help: str, *, flag: str | None = None, aliases: tuple[str, ...] = (),
            low: float | None = None, high: float | None = None, choices: tuple[Any, ...] | None = None,
            cli: bool = True) -> Any:
    """A config field: default, help text, flag (default: the field name with dashes), and the values
    it accepts (low <= value <= high, or one of choices; None always passes where the type allows it)."""
    meta = {"help": help, "flag": flag, "aliases": aliases, "low": low, "high": high, "choices": choices, "cli": cli}
    if isinstance(default, (list, dict)):  # a fresh copy for every instance
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def check_fields(obj: Any, where: str) -> None:
    """SurfadError naming the first field of dataclass `obj` outside what its setting accepts;
    non-finite floats are refused in every field, lists included."""
    for f in dataclasses.fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        name = f"{where}.{f.name}"
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise SurfadError(f"{name}={value}: must be a finite number")
        if value is None or isinstance(value, (bool, list, dict)):
            continue
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise SurfadError(f"{name}={value!r}: choose one of {', '.join(map(str, meta['choices']))}")
        if meta.get("low") is not None and value < meta["low"]:
            raise SurfadError(f"{name}={value}: must be >= {meta['low']:g}")
        if meta.get("high") is not None and value > meta["high"]:
            raise SurfadError(f"{name}={value}: must be <= {meta['high']:g}")


class Checked:
    """Mixin: a dataclass that checks its fields (check_fields) whenever it is built."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        check_fields(self, self.section)


@dataclass
class DataConfig(Checked):
    """Where the images are and how they become model inputs."""

    section: ClassVar[str] = "data"
    path: str = setting("", "dataset folder", flag="data")
    layout: str = setting("auto", "dataset layout (auto detects mvtec, mt, dagm and ksdd2)", choices=("auto", *LAYOUTS))
    image_size: int | None = setting(None, "the model's input side in pixels, the tile side when tiling (default: "
                                           "the model's own, 224 for the models on ImageNet features, 128 for the others)", low=8)
    geometry: str = setting("auto", "how images become model inputs: squash (to image-size squares), tile (scaled by "
                                    "one factor, shape kept, cut into image-size tiles), or auto (tile when the "
                                    "training images are far from square: surfad.data.geometry)",
                            choices=GEOMETRIES)
    tile_scale: float = setting(0.0, "> 0: scale every image by this factor (keeping its aspect ratio and texture "
                                     "scale) and work on image-size tiles of it, instead of squashing (0 = as "
                                     "data.geometry decides)", low=0)
    tile_stride: int = setting(0, "tiling: step between inference tiles in pixels (0 = 3/4 of a tile)", low=0)
    tiles_per_image: int = setting(1, "tiling: random tiles drawn from each training image per epoch", low=1)
    channels: int | None = setting(None, "1 or 3 (default: 1 if every training image is grayscale, else 3)",
                                   choices=(1, 3))
    val_ratio: float = setting(0.15, "share of the training good images held out for validation", low=0, high=0.95)
    test_ratio: float = setting(0.2, "share of good images put in test when the layout has no test split",
                                low=0, high=0.95)
    split_seed: int = setting(0, "seed of the validation (and test) hold-out")
    train_list: str | None = setting(None, "file listing the training good images (e.g. magnetic-tile's)")
    train_defects: str | None = setting(None, "file listing defective images (paths relative to --data, one per "
                                              "line) to train on: positives for the models that learn from "
                                              "defects (simplenet, recondiff); the others take them into "
                                              "validation, where they choose the threshold. Never tested on.")
    good_dir: str = setting("good", "folder layout: the good images, relative to --data")
    defect_dir: str = setting("defect", "folder layout: defective images for test (used if present)")
    mask_dir: str | None = setting(None, "folder layout: their masks, named by data.mask_name")
    mask_name: str = setting("{stem}_mask.png", "folder layout: mask file name of image <stem>.<ext>")
    val_good_dir: str | None = setting(None, "folder layout: good validation images, never trained on")
    val_defect_dir: str | None = setting(None, "folder layout: defective validation images, which then choose "
                                               "the shipped epoch and the threshold")
    skip_bad: bool = setting(False, "skip unreadable images (and count them) instead of stopping")
    roi: str | None = setting(None, "a region-of-interest mask (nonzero = inspected; the images' aspect ratio): the "
                                    "map outside it is ignored; saved in the run as roi.png")
    roi_fill: str = setting("nearest", "with a region of interest, what the model sees outside it (in training and "
                                       "at inference): nearest = the nearest pixel inside, mean = the mean colour "
                                       "inside (either way nothing outside can change a score); off = the image as "
                                       "it is, only the map is masked (the model's receptive field then crosses the "
                                       "ROI's edge)", choices=ROI_FILLS)

    @property
    def input_channels(self) -> int:
        """The model's input channels. Training resolves `channels`, so every run's config.yaml has it."""
        if self.channels is None:
            raise SurfadError("data.channels is not set: it is resolved from the training images when training starts")
        return self.channels

    @property
    def input_size(self) -> int:
        """The model's input side. Training resolves `image_size`, so every run's config.yaml has it."""
        if self.image_size is None:
            raise SurfadError("data.image_size is not set: it is resolved from the model when training starts")
        return self.image_size

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size is not None and self.tile_stride > self.image_size:
            raise SurfadError(f"data.tile_stride={self.tile_stride}: must be at most data.image_size={self.image_size}")


@dataclass
class TrainConfig(Checked):
    """Optimisation and bookkeeping (fitted models use seed, threads, device and the validation settings)."""

    section: ClassVar[str] = "train"
    epochs: int = setting(30, "training epochs", low=1)
    batch_size: int = setting(16, "images per optimiser step in each process (under torchrun the global batch is "
                                  "this x processes), and per scoring batch", low=1)
    lr: float = setting(1e-3, "learning rate", low=0)
    weight_decay: float = setting(1e-5, "Adam weight decay", low=0)
    seed: int = setting(0, "seed of the weights, the sample order and the synthetic defects")
    threads: int = setting(0, "torch CPU threads (0 = one per core)", low=0)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    val_every: int = setting(1, "validate every N epochs", aliases=("validation-period",), low=1)
    select_after: int = setting(5, "epochs 1..N are validated but never shipped (unless training ends there): "
                                   "an untrained net's maps can rank salient defects well by chance", low=0)
    grid_every: int = setting(5, "write an input/reconstruction/map grid every N epochs (0 = never)", low=0)
    time_budget_min: float = setting(0.0, "stop after the epoch that passes this many minutes (0 = off)",
                                     flag="time-budget", low=0)
    patience: int = setting(0, "stop once this many validations in a row bring no new best (0 = off)", low=0)
    val_synthetic: bool = setting(True, "paste synthetic defects on validation images when it has no real ones",
                                  cli=False)
    val_defect_source: str = setting("graded", "synthetic validation defects: graded (cracks, stains, pits and surface "
                                               "patches at three levels of difficulty, so validation ranks settings "
                                               "as real defects do) | procedural | self | surface | a texture folder")
    val_defects_per_image: int = setting(2, "synthetic validation defects drawn on each good validation image", low=1)
    ema_decay: float = setting(0.0, "> 0 (e.g. 0.998): validate, select and ship a moving average of the weights "
                                    "and BatchNorm statistics (0 = off)", low=0, high=0.999999)
    sync_bn: bool = setting(False, "with several training processes on CUDA: synchronised batch norm (statistics of "
                                   "the global batch instead of each process's)")
    keep_train_examples: int = setting(100, "keep copies of this many training images (as the model saw them) in "
                                            "the run, so every region of an NG or REVIEW image gets its nearest good "
                                            "example, shown even when the originals have moved (0 = off)", low=0)


@dataclass
class ScoreConfig(Checked):
    """How an anomaly map becomes the image score (part of the exported graph)."""

    section: ClassVar[str] = "score"
    smoothing_sigma: float = setting(0.0, "Gaussian smoothing of the map, in pixels (0 = off)", low=0)
    reduce: str = setting("mean", "mean | max | topk of the map, or the model's own image score (model)",
                          choices=REDUCTIONS)
    pool: int = setting(1, "local average pooling kernel before reducing (1 = off)", low=1)
    topk: int = setting(10, "with reduce=topk: the mean of the k largest pooled values", low=1)


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    model: str = "padim"  # the recommended model (benchmarks/RESULTS.md, "Pretrained features")
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
        """Read a config.yaml; errors name the file once (load_yaml's already do)."""
        raw = load_yaml(path)
        try:
            return cls.from_dict(raw)
        except SurfadError as err:
            raise SurfadError(f"{path}: {err}") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: 'line 3, column 8: expected ',' or ']'' (its own text spans several)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return problem if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SurfadError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SurfadError(f"{path}: cannot read ({err})") from None
    except yaml.YAMLError as err:
        raise SurfadError(f"{path}: not valid YAML ({yaml_problem(err)})") from None
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
        raise SurfadError(f"{where}: unknown setting(s) {', '.join(map(str, unknown))}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: coerce(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    return cls(**values)


def coerce(hint: Any, value: Any, where: str) -> Any:
    """Check/convert one value against its type hint (ints for floats, nested dataclasses, lists)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return coerce(inner[0], value, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SurfadError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise SurfadError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
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
