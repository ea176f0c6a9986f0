"""The U-Net VAE's training loss: reconstruction + beta * KL, with a linear KL warm-up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from surfad.models.unet_vae.model import UNetVAE


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) averaged over every latent element (batch included)."""
    return 0.5 * torch.mean(mu.pow(2) + logvar.exp() - 1.0 - logvar)


def unet_vae_loss(model: UNetVAE, batch: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
    """Terms "loss" (total), "recon" and "kl" for a batch of good images (batch["image"])."""
    c = model.config
    x = batch["image"]
    recon, mu, logvar = model.reconstruct(x, sample=True)
    if c.recon_loss == "l1":
        rec = F.l1_loss(recon, x)
    elif c.recon_loss == "mse":
        rec = F.mse_loss(recon, x)
    else:
        rec = F.binary_cross_entropy(recon, x)
    kl = kl_divergence(mu, logvar)
    beta = c.beta * (min(1.0, progress / c.kl_warmup) if c.kl_warmup > 0 else 1.0)
    return {"loss": rec + beta * kl, "recon": rec, "kl": kl}
