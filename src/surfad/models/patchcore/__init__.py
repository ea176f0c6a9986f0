"""patchcore: PatchCore on frozen ImageNet features (model.py: the torch module and its fit;
coreset.py: greedy k-centre selection and nearest-neighbour search)."""

from surfad.config import ScoreConfig
from surfad.models.patchcore.model import PatchCore, PatchCoreConfig
from surfad.models.registry import ModelSpec, register

SPEC = register(ModelSpec(
    name="patchcore",
    module=PatchCore,
    config=PatchCoreConfig,
    summary="PatchCore on ImageNet EfficientNet-Lite features, fitted in one pass; map = distance of each "
            "patch to a coreset memory bank of normal patches",
    # The image score is the model's (the largest patch distance); the map is smoothed for localisation
    # as in the paper (sigma 4 at full resolution).
    default_score=ScoreConfig(smoothing_sigma=4.0, reduce="model"),
    presets={"tiny": {"layers": ["stage2", "stage3"], "coreset_ratio": 0.1, "projection_dim": 16}},
    own_score=True,
    pretrained=True,
    image_size=224,  # magnetic-tile validation: 224 as good as 256 and 320 at less cost (benchmarks/RESULTS.md)
))

__all__ = ["SPEC", "PatchCore", "PatchCoreConfig"]
