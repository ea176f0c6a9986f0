"""simplenet: SimpleNet on frozen ImageNet features (model.py: the torch module; loss.py: its loss and
optimiser; samples.py: the cached training features of good, synthetic and real defective images)."""

from surfad.config import ScoreConfig
from surfad.models.base import GradientRecipe
from surfad.models.registry import ModelSpec, register
from surfad.models.simplenet.loss import simplenet_loss, simplenet_optimizer
from surfad.models.simplenet.model import SimpleNet, SimpleNetConfig
from surfad.models.simplenet.samples import simplenet_samples

SPEC = register(ModelSpec(
    name="simplenet",
    module=SimpleNet,
    config=SimpleNetConfig,
    summary="SimpleNet on ImageNet EfficientNet-Lite features: a feature adaptor and a patch discriminator trained "
            "against feature-space noise, synthetic and (given) real defects; map = the anomaly logit",
    default_score=ScoreConfig(smoothing_sigma=4.0, reduce="max"),
    presets={"tiny": {"layers": ["stage2", "stage3"], "hidden": 16, "statistics_images": 4}},
    recipe=GradientRecipe(loss=simplenet_loss, samples=simplenet_samples, optimizer=simplenet_optimizer),
    flags={"defect-source": "defect_source"},
    pretrained=True,
    image_size=224,
    learns_from_defects=True,
))

__all__ = ["SPEC", "SimpleNet", "SimpleNetConfig"]
