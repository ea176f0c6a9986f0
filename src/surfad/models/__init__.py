"""Models: the contract (base), the registry, shared layers and backbones, one package per model.

Importing this package registers every model.
"""

from surfad.models import padim, patchcore, recondiff, simplenet, unet_vae  # noqa: F401  (registration)
from surfad.models.base import (
    IMAGE_LAYOUT,
    AnomalyModel,
    FitPlan,
    FittedModel,
    GradientRecipe,
)
from surfad.models.registry import (
    ModelSpec,
    available_models,
    build_model,
    default_score,
    model_spec,
    register,
    resolve_params,
)

__all__ = [
    "IMAGE_LAYOUT",
    "AnomalyModel",
    "FitPlan",
    "FittedModel",
    "GradientRecipe",
    "ModelSpec",
    "available_models",
    "build_model",
    "default_score",
    "model_spec",
    "register",
    "resolve_params",
]
