"""PatchCore (Roth et al., CVPR 2022) on a frozen EfficientNet-Lite: a memory bank of normal patches.

Fitting is one pass over the good training images: every image gives a grid of locally aware
patch features (surfad.models.backbones.PatchFeatures); a greedy k-centre coreset of all of them,
chosen in the full features (coreset "exact", with principal-component bounds that skip most of
the work) or in a random projection ("projected"), is kept as the memory bank. A test patch's
anomaly is its distance to the nearest bank patch (the mean over the `neighbours` nearest); the anomaly map is the grid of
those distances, upsampled to the input; the image score is the largest patch distance, optionally
re-weighted as in the paper (eq. 7: lowered when the nearest bank patch sits in a dense part of the
bank, kept when it is isolated). The bank and the search are buffers and plain tensor operations,
so they are inside the exported graph.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from surfad.config import setting
from surfad.errors import SurfadError
from surfad.models.backbones import FeatureSettings, PatchFeatures
from surfad.models.base import FitPlan, FittedModel, memory_limit, seconds_per_image
from surfad.models.patchcore.coreset import (
    AXES_CHUNK,
    coreset_seconds,
    greedy_coreset,
    nearest,
    nearest_neighbours,
    random_projection,
)

CORESETS = ("exact", "projected")
BOUNDED_COST = 2.5  # an exact coreset bounded in k dims takes 2 to 4 times the greedy coreset of k dims (measured on
# magnetic tile: 34 s against 15 s at 1%, 5.7 s against 1.6 s at 0.1%; benchmarks/RESULTS.md "Coreset quality")
EAGER_CHUNK = 8192  # query patches per distance matrix outside export (bounds memory at 8192 x bank)


@dataclass
class PatchCoreConfig(FeatureSettings):
    neighbourhood: int = setting(3, "local averaging window of each feature map (the paper's patch size)", low=1)
    coreset_ratio: float = setting(0.01, "share of the training patches kept in the memory bank", low=1e-6, high=1)
    max_bank_size: int = setting(20000, "at most this many bank patches (inference time grows with the bank); "
                                        "0 = no cap", low=0)
    # exact and standardise chosen on validation (benchmarks/RESULTS.md, "Coreset quality", "Pretrained features")
    coreset: str = setting("exact", "exact: the greedy coreset of the full features, sped up by bounds in "
                                    "projection_dim principal components (the same bank as without them, up to float "
                                    "rounding at ties); projected: "
                                    "the greedy coreset of a random projection to projection_dim dims (about 2x "
                                    "faster, a looser bank)", choices=CORESETS)
    projection_dim: int = setting(32, "dims of the coreset's bounds (exact) or projection (projected); 0 = none, "
                                      "the full features throughout", low=0)
    neighbours: int = setting(1, "a patch's distance: the mean over its k nearest bank patches", low=1)
    reweight: bool = setting(False, "the paper's re-weighting of the image score (eq. 7)")
    reweight_neighbours: int = setting(9, "its b: the bank neighbourhood of the nearest bank patch", low=2)
    standardise: bool = setting(True, "divide each feature by its standard deviation over the training patches "
                                       "(after removing its mean), so no channel dominates the distances")
    position_weight: float = setting(0.0, "> 0: each patch also carries its (row, column) in [0, 1] times this, so it is "
                                          "compared with normal patches from about the same place (aligned parts)",
                                     low=0)
    seed: int = setting(0, "seed of the random projection (coreset projected)")


class PatchCore(FittedModel):
    """forward(x (B, C, S, S)) -> (anomaly map (B, 1, S, S), image score (B,))."""

    descriptors_from_features = True

    def __init__(self, config: PatchCoreConfig, in_channels: int, image_size: int, pretrained: bool = True) -> None:
        super().__init__(config, in_channels, image_size)
        self.features = PatchFeatures(config.backbone, config.layers, config.neighbourhood, in_channels, pretrained)
        self.grid = self.features.grid(image_size)
        self.dim = self.features.dim + (2 if config.position_weight > 0 else 0)
        axis = torch.linspace(0.0, 1.0, self.grid)
        where = torch.stack(torch.meshgrid(axis, axis, indexing="ij"))[None] * config.position_weight  # (1, 2, h, w)
        self.register_buffer("position", where, persistent=False)
        self.register_buffer("centre", torch.zeros(1, self.features.dim, 1, 1))  # standardise: feature means
        self.register_buffer("spread", torch.ones(1, self.features.dim, 1, 1))  # and standard deviations
        self.register_buffer("bank", torch.zeros(0, self.dim))
        self.register_buffer("bank_neighbours", torch.zeros(0, config.reweight_neighbours, dtype=torch.long))
        # where each bank patch comes from: (fit input, position in its grid, row-major); -1 when unknown
        self.register_buffer("bank_origin", torch.zeros(0, 2, dtype=torch.long))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], *args: Any) -> None:
        # The bank's size is chosen when fitting: take the stored size before loading into it.
        for name in ("bank", "bank_neighbours", "bank_origin"):
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)
        if prefix + "bank_origin" not in state_dict and prefix + "bank" in state_dict:
            # weights fitted before origins were recorded: the model works, its bank explains nothing
            if prefix + "bank_origin" in missing_keys:
                missing_keys.remove(prefix + "bank_origin")
            self.bank_origin = torch.full((self.bank.shape[0], 2), -1, dtype=torch.long, device=self.bank.device)

    def patch_distances(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, D) patch features -> (distance to the bank (M,), index of the nearest bank patch (M,))."""
        k = self.config.neighbours
        if torch.jit.is_tracing():  # the exported graph: one search over the whole batch
            dist, idx = nearest(feats, self.bank, k)
        else:
            dist, idx = nearest_neighbours(feats, self.bank, k, EAGER_CHUNK)
        return dist.mean(1), idx[:, 0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_and_descriptors(x)[0]

    def forward_and_descriptors(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.bank.shape[0] == 0:
            raise RuntimeError("PatchCore has no memory bank: fit it first")
        feats = self.patch_features(x)  # (B, D, h, w)
        b, d, h, w = feats.shape
        flat = feats.permute(0, 2, 3, 1).reshape(b * h * w, d)
        distances, nearest_bank = self.patch_distances(flat)
        patch_map = distances.view(b, h * w)
        score, where = patch_map.max(dim=1)
        if self.config.reweight:
            score = score * self.reweight(flat.view(b, h * w, d), nearest_bank.view(b, h * w), where)
        amap = F.interpolate(patch_map.view(b, 1, h, w), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (amap, score), feats

    def reweight(self, feats: torch.Tensor, nearest_bank: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """The paper's weight of each image's most anomalous patch q: with m* its nearest bank patch and
        N_b(m*) the b bank patches nearest m* (m* first), 1 - exp(|q - m*|) / sum over N_b(m*) of exp(|q - m|)."""
        b, _, d = feats.shape
        query = torch.gather(feats, 1, where.view(b, 1, 1).expand(b, 1, d))  # (B, 1, D)
        star = torch.gather(nearest_bank, 1, where.view(b, 1))[:, 0]  # (B,)
        members = self.bank[self.bank_neighbours[star]]  # (B, b, D)
        distances = (members - query).pow(2).sum(-1).clamp_min(0.0).sqrt()  # (B, b)
        return 1.0 - torch.softmax(distances, dim=1)[:, 0]

    # --- fitting ------------------------------------------------------------------------------------

    def bank_size(self, patches: int) -> int:
        """The bank size for this many training patches: coreset_ratio of them, at most max_bank_size."""
        c = self.config
        bank = max(c.neighbours, math.ceil(c.coreset_ratio * patches))
        return min(patches, bank, c.max_bank_size or bank)

    def selection(self) -> tuple[str, int]:
        """How the coreset is chosen, and in how many dims: ("exact", bounds in k), ("projected", k) or
        ("full", 0) when projection_dim is 0 or not below the features' dimension."""
        c = self.config
        k = c.projection_dim if 0 < c.projection_dim < self.dim else 0
        return (c.coreset, k) if k else ("full", 0)

    def plan(self, n_images: int) -> FitPlan:
        """Bank size and peak memory of fitting on n_images (nothing is computed); refuses a fit over
        the memory limit (model_params.memory_limit_gb, default 80% of the RAM available)."""
        c = self.config
        patches = n_images * self.grid * self.grid
        bank, dim = self.bank_size(patches), self.dim
        if bank < c.neighbours:
            raise SurfadError(f"patchcore: {patches} training patches are fewer than model_params.neighbours="
                              f"{c.neighbours}")
        kind, k = self.selection()
        # the features, then a dimension-major copy of what the greedy passes read and a few vectors over the patches
        # (exact: with the compared points' indices, and the float64 chunks its principal axes are summed from)
        per_patch = dim + (2 * k + 2 if kind == "projected" else dim + 2 * k + 7)
        axes = 3 * AXES_CHUNK * dim if kind == "exact" else 0
        memory = 4 * (patches * per_patch + bank * dim + min(EAGER_CHUNK, bank) * bank + axes)
        limit = memory_limit(c.memory_limit_gb)
        if memory > limit:
            raise SurfadError(
                f"patchcore: fitting {patches} patches x {dim} features needs about {memory / 2**30:.1f} GiB, over "
                f"the limit of {limit / 2**30:.1f} GiB; use fewer or smaller images (data.image_size), layers with "
                "fewer channels, or raise model_params.memory_limit_gb")
        return FitPlan(memory, (f"memory bank: {bank} of {patches} training patches ({patches // max(n_images, 1)} "
                                f"per image) x {dim} features = {bank * dim * 4 / 2**20:.1f} MiB; fitting needs about "
                                f"{memory / 2**30:.2f} GiB",))

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, D, h, w): the patch features the bank holds."""
        return self.patch_features(x)

    def example_bank(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The bank and where each of its patches comes from (None for weights fitted before that was recorded)."""
        if self.bank_origin.shape[0] != self.bank.shape[0] or bool((self.bank_origin < 0).any()):
            return None
        return self.bank, self.bank_origin

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, D, h, w): the backbone's patch features, and their place when position_weight > 0."""
        f = self.features(x)
        if self.config.standardise:
            f = (f - self.centre) / self.spread
        if self.config.position_weight > 0:
            f = torch.cat([f, self.position.expand(f.shape[0], -1, -1, -1)], dim=1)
        return f

    def extract(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> every patch feature of each image, (B, h * w, D)."""
        f = self.patch_features(batch)
        return f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1])

    def fit_features(self, features: torch.Tensor, progress: bool = True) -> dict[str, Any]:
        """The bank: a greedy coreset (a bar in bank patches) of every training patch, (N, h * w, D)."""
        c = self.config
        started = time.perf_counter()
        feats = features.reshape(-1, features.shape[-1])
        if c.standardise:  # the extract of an unfitted model: raw features, whose statistics are taken here
            raw = feats[:, : self.features.dim]
            mean, std = raw.mean(0), raw.std(0).clamp_min(1e-6)
            raw.sub_(mean).div_(std)
            self.centre, self.spread = mean.view(1, -1, 1, 1).to(self.bank.device), std.view(1, -1, 1, 1).to(self.bank.device)
        patches, dim = feats.shape
        bank_size = self.bank_size(patches)
        device = self.bank.device
        bar = tqdm(total=bank_size, desc="coreset", unit="patch", disable=not progress, dynamic_ncols=True)
        kind, k = self.selection()
        if kind == "projected":  # computed dimension-major, as greedy_coreset reads it
            projected = (random_projection(dim, k, c.seed).T @ feats.T).T
            chosen, radius = greedy_coreset(projected.to(device), bank_size, bar.update)
            del projected
        else:  # exact: bounded in k dims; full: k = 0
            chosen, radius = greedy_coreset(feats.to(device), bank_size, bar.update, bound_dim=k)
        bar.close()
        self.bank = feats[chosen].to(device)
        per_input = features.shape[1]
        self.bank_origin = torch.stack([chosen // per_input, chosen % per_input], dim=1).to(device)
        self.bank_neighbours = self.bank_neighbourhoods()
        return {"patches": patches, "bank": bank_size, "dim": dim, "coreset_radius": round(radius, 6),
                "coreset_seconds": round(time.perf_counter() - started, 2)}

    def estimate_seconds(self, batch: torch.Tensor, n_images: int) -> float:
        """Feature extraction timed on `batch`, plus the coreset timed on random points of the fit's size."""
        patches = n_images * self.grid * self.grid
        kind, k = self.selection()
        coreset = coreset_seconds(patches, k or self.dim, self.bank_size(patches))
        return seconds_per_image(self.features, batch) * n_images + coreset * (BOUNDED_COST if kind == "exact" else 1)

    def fill_placeholder(self, n_images: int) -> None:
        """A bank of random features of the size a fit on n_images would keep."""
        size = self.bank_size(n_images * self.grid * self.grid)
        self.bank = torch.randn(size, self.dim, device=self.bank.device)
        self.bank_neighbours = torch.zeros(size, self.config.reweight_neighbours, dtype=torch.long,
                                           device=self.bank.device)
        self.bank_origin = torch.zeros(size, 2, dtype=torch.long, device=self.bank.device)

    def bank_neighbourhoods(self) -> torch.Tensor:
        """For each bank patch, the indices of its reweight_neighbours nearest bank patches, itself first
        (a bank smaller than that repeats its farthest); zeros when re-weighting is off."""
        b = self.config.reweight_neighbours
        if not self.config.reweight:
            return torch.zeros(self.bank.shape[0], b, dtype=torch.long, device=self.bank.device)
        k = min(b, self.bank.shape[0])
        _, idx = nearest_neighbours(self.bank, self.bank, k)
        return torch.cat([idx, idx[:, -1:].expand(-1, b - k)], dim=1) if k < b else idx
