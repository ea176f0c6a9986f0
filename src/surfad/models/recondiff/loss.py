"""recondiff's training loss: reconstruction MSE (+ optional SSIM), the memory's compactness and
separateness, and the segmentation net's focal loss on the synthetic-defect mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from surfad.models.recondiff.model import RecondiffModel


def focal_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """DRAEM's focal loss on 2-class softmax: mean of -(1 - p_t)^gamma log p_t, smoothed targets."""
    probs = torch.softmax(logits, dim=1)
    target = torch.cat([1.0 - mask, mask], dim=1).clamp(1e-5, 1.0 - 1e-5)
    pt = (target * probs).sum(dim=1) + 1e-5
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of images in [0, 1], Gaussian window, per channel."""
    xs = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-(xs**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(a.shape[1], 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=window // 2, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean()


def recondiff_loss(model: RecondiffModel, batch: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
    """Batch: "image" (input, maybe with a synthetic defect), "target" (clean; default: the
    image), "mask" (B, 1, S, S; default: zeros), "recon_weight" (B, 1, S, S; default: ones) where
    the reconstruction is trained. Reconstruction from the input, targets clean."""
    c = model.config
    image = batch["image"]
    target = batch.get("target", image)
    mask = batch.get("mask", torch.zeros_like(image[:, :1]))
    weight = batch.get("recon_weight")  # 0 where a real defect hides the clean surface
    xn, tn = model.normalize(image), model.normalize(target)
    mem_losses: list[tuple[torch.Tensor, torch.Tensor]] = []
    recon = model.recon(xn, mem_losses)
    seg_recon = recon.detach() if c.detach_recon else recon
    logits = model.seg(seg_recon, xn if c.seg_input == "anomalous" else tn)
    zero = recon.new_zeros(())  # memory losses without a memory (ablation)
    terms = {
        "mse": F.mse_loss(recon, tn) if weight is None else (weight * (recon - tn) ** 2).mean(),
        "compact": sum((lc for lc, _ in mem_losses), zero),
        "separate": sum((ld for _, ld in mem_losses), zero),
        "focal": focal_loss(logits, mask, c.focal_gamma),
    }
    loss = (
        c.recon_weight * terms["mse"]
        + c.compact_weight * terms["compact"]
        + c.separate_weight * terms["separate"]
        + c.focal_weight * terms["focal"]
    )
    if c.ssim_weight > 0:
        terms["ssim"] = 1.0 - ssim(model.denormalize(recon).clamp(0, 1), target)
        loss = loss + c.ssim_weight * terms["ssim"]
    return {"loss": loss, **terms}
