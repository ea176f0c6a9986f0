"""Model registry: models register by name and are built from a name and a parameter dict."""

from __future__ import annotations

import dataclasses
from typing import Any

from surfad.config import ScoreConfig, from_dict
from surfad.errors import SurfadError
from surfad.models.base import IMAGE_LAYOUT, AnomalyModel, ImageScorer, InferenceGraph

_REGISTRY: dict[str, type[AnomalyModel]] = {}


def register(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: make a model available by its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str) -> type[AnomalyModel]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SurfadError(f"unknown model {name!r}; available: {', '.join(available_models())}") from None


def resolve_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Full, explicit parameters: the model's defaults, then the named preset, then `params`."""
    cls = model_class(name)
    params = dict(params)
    preset = params.pop("preset", None)
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in cls.presets:
            known = ", ".join(cls.presets) or "none"
            raise SurfadError(f"model {name!r} has no preset {preset!r}; presets: {known}")
        merged.update(cls.presets[preset])
    merged.update(params)
    config = from_dict(cls.Config, merged, f"model_params ({name})")
    return dataclasses.asdict(config)


def build_model(name: str, params: dict[str, Any], in_channels: int, image_size: int) -> AnomalyModel:
    """Model `name` with its weights in IMAGE_LAYOUT."""
    cls = model_class(name)
    config = from_dict(cls.Config, resolve_params(name, params), f"model_params ({name})")
    return cls(config, in_channels=in_channels, image_size=image_size).to(memory_format=IMAGE_LAYOUT)


def default_score(name: str) -> ScoreConfig:
    return dataclasses.replace(model_class(name).default_score)


# Importing the model modules registers them.
from surfad.models import recondiff, unet_vae  # noqa: F401

__all__ = [
    "IMAGE_LAYOUT",
    "AnomalyModel",
    "ImageScorer",
    "InferenceGraph",
    "available_models",
    "build_model",
    "default_score",
    "model_class",
    "register",
    "resolve_params",
]
