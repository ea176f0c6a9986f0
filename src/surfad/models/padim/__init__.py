"""padim: PaDiM on frozen ImageNet features (model.py: the torch module and its fit)."""

from surfad.config import ScoreConfig
from surfad.models.padim.model import PaDiM, PaDiMConfig
from surfad.models.registry import ModelSpec, register

SPEC = register(ModelSpec(
    name="padim",
    module=PaDiM,
    config=PaDiMConfig,
    summary="PaDiM on ImageNet EfficientNet-Lite features, fitted in one pass; map = Mahalanobis distance to a "
            "Gaussian per position",
    default_score=ScoreConfig(smoothing_sigma=4.0, reduce="max"),
    presets={"tiny": {"layers": ["stage2", "stage3"], "feature_dim": 16}},
    pretrained=True,
    image_size=224,  # magnetic-tile validation: 224 as good as 256 and 320 at less cost (benchmarks/RESULTS.md)
))

__all__ = ["SPEC", "PaDiM", "PaDiMConfig"]
