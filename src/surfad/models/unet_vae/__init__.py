"""unet_vae: the U-Net VAE of seed 000 (model.py: the torch module; loss.py: its training loss)."""

from surfad.config import ScoreConfig
from surfad.models.base import GradientRecipe
from surfad.models.registry import ModelSpec, register
from surfad.models.unet_vae.loss import unet_vae_loss
from surfad.models.unet_vae.model import UNetVAE, UNetVAEConfig

SPEC = register(ModelSpec(
    name="unet_vae",
    module=UNetVAE,
    config=UNetVAEConfig,
    summary="U-Net VAE (seed 000), trained from scratch; map = per-pixel reconstruction error",
    default_score=ScoreConfig(smoothing_sigma=2.0, reduce="topk", pool=1, topk=100),
    # tiny: no skips; at depth 2 the one skip there is (level 1) copies small defects through
    presets={"tiny": {"base_width": 4, "depth": 2, "latent_channels": 4, "skip_levels": []}},
    recipe=GradientRecipe(loss=unet_vae_loss),
))

__all__ = ["SPEC", "UNetVAE", "UNetVAEConfig"]
