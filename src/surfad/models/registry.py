"""Models by name: each model package registers a ModelSpec, and runs are built from a name.

The spec holds what the pure torch module should not: its parameters' dataclass, presets (every
model has "tiny", the smallest that works, which the contract tests train), command-line flags,
its default scoring rule, and how it learns (a GradientRecipe, or fitted in one pass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from surfad.config import ScoreConfig, from_dict
from surfad.errors import SurfadError
from surfad.models.base import IMAGE_LAYOUT, AnomalyModel, FittedModel, GradientRecipe


@dataclass(frozen=True)
class ModelSpec:
    """A registered model."""

    name: str
    module: type[AnomalyModel]  # built as module(config, in_channels, image_size), plus pretrained= if pretrained
    config: type  # its parameters (model_params), a dataclass
    summary: str  # one line: what it is
    default_score: ScoreConfig
    presets: Mapping[str, Mapping[str, Any]]  # "tiny" required
    recipe: GradientRecipe | None = None  # None: the module is a FittedModel
    flags: Mapping[str, str] = field(default_factory=dict)  # extra `surfad train --flag` -> config field
    own_score: bool = False  # forward returns (map, score)
    pretrained: bool = False  # stands on ImageNet features (benchmark rows must say so); its module then takes
    # pretrained: bool, and with False builds the same network without reading those weights
    image_size: int = 128  # the input side when data.image_size is not set (the pretrained models': 224, chosen on validation)
    learns_from_defects: bool = False  # its recipe trains on real defects (data.train_defects); else they join validation

    def __post_init__(self) -> None:
        if "tiny" not in self.presets:
            raise ValueError(f"model {self.name}: every model needs a 'tiny' preset (the contract tests train it)")
        if (self.recipe is None) != issubclass(self.module, FittedModel):
            raise ValueError(f"model {self.name}: give a GradientRecipe, or a FittedModel module, not both or neither")
        if self.learns_from_defects and self.recipe is None:
            raise ValueError(f"model {self.name}: only a gradient-trained model can learn from defects")

    @property
    def fitted(self) -> bool:
        return self.recipe is None

    def params(self, raw: Mapping[str, Any]) -> Any:
        """The typed parameters: the config's defaults, then the named preset (key "preset"), then `raw`."""
        raw = dict(raw)
        preset = raw.pop("preset", None)
        merged: dict[str, Any] = {}
        if preset is not None:
            if preset not in self.presets:
                raise SurfadError(f"model {self.name!r} has no preset {preset!r}; presets: {', '.join(self.presets)}")
            merged.update(self.presets[preset])
        merged.update(raw)
        return from_dict(self.config, merged, f"model_params ({self.name})")


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Make a model available by its name."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SurfadError(f"unknown model {name!r}; available: {', '.join(available_models())}") from None


def resolve_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Full, explicit parameters (as saved in config.yaml): defaults, preset, then `params`."""
    return dataclasses.asdict(model_spec(name).params(params))


def build_model(name: str, params: Mapping[str, Any], in_channels: int, image_size: int,
                pretrained: bool = True) -> AnomalyModel:
    """Model `name` with its weights in IMAGE_LAYOUT. pretrained=False: a model standing on ImageNet
    features is built without reading them (to load a run's weights, which hold them all)."""
    spec = model_spec(name)
    extra = {"pretrained": pretrained} if spec.pretrained else {}
    return spec.module(spec.params(params), in_channels, image_size, **extra).to(memory_format=IMAGE_LAYOUT)


def default_score(name: str) -> ScoreConfig:
    return dataclasses.replace(model_spec(name).default_score)
