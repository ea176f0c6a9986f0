"""recondiff's memory: the multi-scale, position-enhanced dynamic prototype units (mul-lcDPU).

Memory (one DPU per scale): the encoder output X (C x F x F) is max-pooled to s x s, a learned
position embedding is added (Z = X + P), per-image prototypes are soft-assigned from Z, every
position reads out the prototypes it addresses, and the unit-norm readout is added to Z (skip).
The scale outputs are upsampled back to F x F and concatenated. Each unit also gives its own
training terms, compactness and separateness (dpu_losses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from surfad.errors import SurfadError


def dpu_losses(z: torch.Tensor, prototypes: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(compactness, separateness) of one DPU.

    z (B, N, C) queries, prototypes (B, M, C) unit-norm, weights (B, N, M) addressing.
    compactness = mean over B*N*C of (z_n - p_k(n))^2 with k(n) = argmax_m weights[n, m];
    separateness = mean over images and pairs i < j of max(0, 1 - ||p_i - p_j||^2).
    """
    nearest = torch.gather(prototypes, 1, weights.argmax(dim=-1, keepdim=True).expand(-1, -1, z.shape[-1]))
    compact = (z - nearest).pow(2).mean()
    sq = prototypes.pow(2).sum(-1)
    dist2 = (sq[:, :, None] + sq[:, None, :] - 2 * prototypes @ prototypes.transpose(1, 2)).clamp_min(0)
    i, j = torch.triu_indices(prototypes.shape[1], prototypes.shape[1], offset=1, device=z.device)
    separate = F.relu(1.0 - dist2[:, i, j]).mean()
    return compact, separate


class DPU(nn.Module):
    """Dynamic prototype unit with a learned position embedding (the paper's lcDPU).

    Prototypes are computed per image from its own features: no persistent memory bank.
    """

    def __init__(self, channels: int, size: int, n_prototypes: int, skip: bool, position: bool = True) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, channels, size, size)) if position else None
        self.assign = nn.Linear(channels, n_prototypes, bias=False)
        bound = 1.0 / math.sqrt(n_prototypes)
        nn.init.uniform_(self.assign.weight, -bound, bound)
        self.skip = skip

    def forward(self, x: torch.Tensor, losses: list | None = None) -> torch.Tensor:
        """x (B, C, s, s) -> (B, C, s, s); appends (compactness, separateness) to `losses` if given."""
        z = (x if self.pos is None else x + self.pos).flatten(2).transpose(1, 2)  # (B, N, C); key = query = z
        assignment = torch.softmax(self.assign(z), dim=1)  # over the N positions
        prototypes = F.normalize(assignment.transpose(1, 2) @ z, dim=-1)  # (B, M, C)
        weights = torch.softmax(z @ prototypes.transpose(1, 2), dim=-1)  # (B, N, M), over prototypes
        out = F.normalize(weights @ prototypes, dim=-1)
        if self.skip:
            out = out + z
        if losses is not None:
            losses.append(dpu_losses(z, prototypes, weights))
        return out.transpose(1, 2).reshape(x.shape)


def map_block_sizes(sizes: Sequence[int], feat_size: int) -> list[int]:
    """Memory scales for an encoder output of feat_size (rule in the module doc); SurfadError if unusable."""
    if not sizes or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise SurfadError(f"model_params.mblock_sizes={list(sizes)}: expected a non-empty list of positive integers")
    if len(set(sizes)) != len(sizes):
        raise SurfadError(f"model_params.mblock_sizes={list(sizes)}: sizes must be distinct")
    largest = max(sizes)
    if largest <= feat_size:
        mapped = list(sizes)
    elif any(s * feat_size % largest for s in sizes):
        raise SurfadError(
            f"model_params.mblock_sizes={list(sizes)}: scaled to the encoder output size {feat_size} they are "
            f"not whole numbers; use sizes whose ratios to {largest} divide {feat_size}, or a larger image_size"
        )
    else:
        mapped = [s * feat_size // largest for s in sizes]
    bad = [s for s in mapped if feat_size % s]
    if bad:
        raise SurfadError(
            f"model_params.mblock_sizes={list(sizes)}: memory sizes {bad} do not divide the encoder output "
            f"size {feat_size} (image_size / 2^(rec_depth - 1))"
        )
    return mapped


class MultiScaleMemory(nn.Module):
    """mul-lcDPU: per scale, max-pool to s x s, DPU, bilinear back to F x F; concat on channels."""

    def __init__(self, channels: int, feat_size: int, sizes: Sequence[int], n_prototypes: int, skip: bool,
                 position: bool = True) -> None:
        super().__init__()
        self.feat_size = feat_size
        self.kernels = [feat_size // s for s in sizes]
        self.units = nn.ModuleList(DPU(channels, s, n_prototypes, skip, position) for s in sizes)

    def forward(self, x: torch.Tensor, losses: list | None = None) -> torch.Tensor:
        outs = []
        for kernel, unit in zip(self.kernels, self.units):
            out = unit(F.max_pool2d(x, kernel) if kernel > 1 else x, losses)
            if kernel > 1:
                out = F.interpolate(out, size=(self.feat_size, self.feat_size), mode="bilinear", align_corners=False)
            outs.append(out)
        return torch.cat(outs, dim=1)
