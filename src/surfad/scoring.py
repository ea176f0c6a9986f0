"""Maps -> scores: the scoring head exported with every model, and scoring of image batches and sets.

ImageScorer turns a model's anomaly map into (smoothed map, image score); InferenceGraph is model +
scorer, the graph that is validated, calibrated and exported. A ScoreFn takes a float32 batch
(B, C, H, W) and returns (maps (B, H, W), scores (B,)). The graph's own ScoreFn (torch or ONNX)
takes model-sized inputs (H = W = image_size); `image_score_fn` wraps it for tiling (whole images
of any size, surfad.data.tiles) and for a region of interest (roi_score_fn). A DescribedFn also
returns the model's descriptors from the same pass (InferenceGraph.described), which an inspection
that explains its regions reuses (surfad.detector.examples).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from surfad.config import RunConfig, ScoreConfig
from surfad.data.dataset import ImageDataset
from surfad.data.roi import resize_roi
from surfad.data.samples import Sample
from surfad.data.tiles import cut_tiles, default_stride, stitch
from surfad.data.transforms import resize_map
from surfad.errors import SurfadError
from surfad.models.base import IMAGE_LAYOUT


class ImageScorer(nn.Module):
    """Anomaly map (and the model's own score, if any) -> (smoothed map, image score); in torch so
    it is exported with the model. reduce "model" takes the model's own score (ModelSpec.own_score)."""

    def __init__(self, config: ScoreConfig) -> None:
        super().__init__()
        self.config = config
        sigma = config.smoothing_sigma
        if sigma > 0:
            radius = max(1, int(math.ceil(3 * sigma)))
            xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
            kernel = torch.exp(-(xs**2) / (2 * sigma**2))
            self.register_buffer("kernel", (kernel / kernel.sum()).view(1, 1, 1, -1), persistent=False)
            self.radius = radius
        else:
            self.kernel = None
            self.radius = 0

    def smooth(self, amap: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return amap
        r = self.radius
        out = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="replicate"), self.kernel)
        return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), self.kernel.transpose(2, 3))

    def forward(self, amap: torch.Tensor, own: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.smooth(amap)
        if self.config.reduce == "model":
            if own is None:
                raise ValueError("score.reduce=model needs a model that scores images itself")
            return amap, own
        return amap, pool_and_reduce(amap, self.config)


def pool_and_reduce(amap: torch.Tensor, score: ScoreConfig, inside: torch.Tensor | None = None) -> torch.Tensor:
    """The score rule on maps (B, 1, H, W): average pooling over pool x pool windows (stride 1), then
    the mean, the maximum or the mean of the top k values, over the pixels `inside` (bool (H, W))
    only when given. reduce "model" (a model's own score, not available here) takes the unpooled
    maximum. Exported as part of the graph, so plain tensor operations only."""
    k = score.pool
    if k > 1 and score.reduce != "model":
        amap = F.avg_pool2d(amap, k, stride=1, padding=k // 2, count_include_pad=False)
    values = amap.flatten(1) if inside is None else amap[:, 0][:, inside]
    if score.reduce == "mean":
        return values.mean(dim=1)
    if score.reduce == "topk":
        return values.topk(min(score.topk, values.shape[1]), dim=1).values.mean(dim=1)
    return values.amax(dim=1)


class InferenceGraph(nn.Module):
    """Model + scorer: preprocessed images -> (anomaly map (B, 1, S, S), score (B,)). Exported as is."""

    def __init__(self, model: nn.Module, scorer: ImageScorer) -> None:
        super().__init__()
        self.model = model
        self.scorer = scorer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scored(self.model(x))

    def scored(self, out: Any) -> tuple[torch.Tensor, torch.Tensor]:
        amap, own = out if isinstance(out, tuple) else (out, None)
        return self.scorer(amap, own)

    def described(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(anomaly map, score, the model's descriptors (B, d, h, w)) from one pass (see
        AnomalyModel.forward_and_descriptors): what an inspection that explains its regions needs."""
        out, descriptors = self.model.forward_and_descriptors(x)
        return (*self.scored(out), descriptors)


class DescribedGraph(InferenceGraph):
    """The same model and scorer with `described` as forward: the graph exported for models whose
    descriptors are their features, so explaining a region costs no second pass."""

    def __init__(self, graph: InferenceGraph) -> None:
        super().__init__(graph.model, graph.scorer)
        self.train(graph.training)  # a new module trains; the exporter restores this mode on the shared modules

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.described(x)


ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
DescribedFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]  # ScoreFn + descriptors (B, d, h, w)
MAX_TILES = 64  # tiles per forward pass when tiling
ROI_SHAPES_KEPT = 8  # map shapes whose resized region of interest roi_score_fn keeps


@dataclass
class ScoredSet:
    """Model outputs on a labelled set, at model resolution: maps (N, S, S), masks bool (N, S, S);
    valid (S, S): the pixels that count (a region of interest), None for all."""

    scores: np.ndarray
    maps: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    valid: np.ndarray | None = None


def torch_score_fn(graph: torch.nn.Module, device: torch.device) -> ScoreFn:
    """A ScoreFn that runs an InferenceGraph with torch (no gradients)."""

    def score(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            amap, scores = graph(torch.from_numpy(batch).to(device, memory_format=IMAGE_LAYOUT))
        return amap[:, 0].float().cpu().numpy(), scores.float().cpu().numpy()

    return score


def torch_described_fn(graph: InferenceGraph, device: torch.device) -> DescribedFn:
    """A DescribedFn that runs an InferenceGraph's `described` with torch (no gradients)."""

    def describe(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.inference_mode():
            amap, scores, descriptors = graph.described(torch.from_numpy(batch).to(device, memory_format=IMAGE_LAYOUT))
        return amap[:, 0].float().cpu().numpy(), scores.float().cpu().numpy(), descriptors.float().cpu().numpy()

    return describe


def tiled_score_fn(tile_score: ScoreFn, score: ScoreConfig, tile: int, stride: int) -> ScoreFn:
    """A ScoreFn for images of any size from one for tile x tile inputs.

    Each image is cut into tiles (surfad.data.tiles), `tile_score` maps them (its scoring head
    smooths each tile map), the tile maps are averaged where they overlap and cropped to the image,
    and the score rule's pooling and reduction (no second smoothing) give the image score; with
    reduce "model" (the model scores tiles itself, e.g. its largest patch distance) the image score
    is the largest tile score. Maps come back at the input's resolution.
    """
    stride = default_stride(tile, stride)

    def score_images(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = batch.shape[2:]
        cuts = [cut_tiles(image, tile, stride) for image in batch]
        tiles = np.concatenate([c[0] for c in cuts])
        outputs = [tile_score(tiles[i : i + MAX_TILES]) for i in range(0, len(tiles), MAX_TILES)]
        maps = np.concatenate([m for m, _ in outputs])
        tile_scores = np.concatenate([s for _, s in outputs])
        stitched, own, offset = [], [], 0
        for _, starts, padded in cuts:
            stitched.append(stitch(maps[offset : offset + len(starts)], starts, padded, (height, width)))
            own.append(tile_scores[offset : offset + len(starts)].max())
            offset += len(starts)
        amaps = np.stack(stitched)
        if score.reduce == "model":
            return amaps, np.array(own, dtype=np.float32)
        with torch.inference_mode():
            return amaps, pool_and_reduce(torch.from_numpy(amaps)[:, None], score).numpy()

    return score_images


def masked_scores(maps: np.ndarray, inside: np.ndarray, score: ScoreConfig) -> np.ndarray:
    """The score rule's pooling and reduction (no smoothing) on maps (B, H, W), over the pixels `inside`
    (H, W) only; a model's own score (reduce "model") becomes the largest map value inside."""
    with torch.inference_mode():
        maps_t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
        return pool_and_reduce(maps_t, score, torch.from_numpy(inside)).numpy()


def roi_score_fn(inner: ScoreFn, score: ScoreConfig, roi: np.ndarray) -> ScoreFn:
    """A ScoreFn that ignores everything outside a region of interest (bool, any size with the images'
    aspect ratio), applied around the graph the same way for every runtime: maps are set to zero
    outside the ROI (resized to the maps, nearest neighbour) and the image score is masked_scores of
    what is inside. The graph's own smoothing runs before the mask, so a value just outside can reach
    at most 3 sigma pixels in. What lies outside the ROI in the image never gets this far: the image
    is filled outside it before preprocessing (surfad.data.roi.InputFill, data.roi_fill)."""
    mask = roi_mask(score, roi)
    return lambda batch: mask(inner(batch)[0])


def roi_mask(score: ScoreConfig, roi: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """maps (B, H, W) -> (maps set to zero outside the region of interest, masked_scores inside): the
    rule roi_score_fn applies, keeping the ROI resized to the last few map shapes."""
    resized: dict[tuple[int, int], np.ndarray] = {}

    def mask(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = maps.shape[1:]
        inside = resized.get(shape)
        if inside is None:  # read once: another thread may clear the cache meanwhile
            if len(resized) >= ROI_SHAPES_KEPT:  # tiled inputs of ever new sizes must not grow it
                resized.clear()
            inside = resized[shape] = resize_roi(roi, *shape)
        maps = maps * inside
        return maps, masked_scores(maps, inside, score)

    return mask


def image_described_fn(graph_described: DescribedFn, config: RunConfig,
                       roi: np.ndarray | None = None) -> DescribedFn | None:
    """image_score_fn's counterpart that keeps the graph's descriptors: for squashed runs (None when
    tiling, where each region is described on a tile of its own), within a region of interest when given."""
    assert config.score is not None, "config must be resolved"
    if config.data.tile_scale > 0:
        return None
    if roi is None:
        return graph_described
    mask = roi_mask(config.score, roi)

    def describe(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        maps, _, descriptors = graph_described(batch)
        return (*mask(maps), descriptors)

    return describe


def image_score_fn(graph_score: ScoreFn, config: RunConfig, roi: np.ndarray | None = None) -> ScoreFn:
    """The ScoreFn for preprocessed images of a run: the graph's own, its tiled wrapper when tiling,
    and either within a region of interest when one is given."""
    data = config.data
    assert config.score is not None, "config must be resolved"
    score = graph_score
    if data.tile_scale > 0:
        score = tiled_score_fn(score, config.score, data.image_size, data.tile_stride)
    return score if roi is None else roi_score_fn(score, config.score, roi)


def score_images(score: ScoreFn, images: Sequence[np.ndarray], batch_size: int = 16) -> tuple[list[np.ndarray], np.ndarray]:
    """Score preprocessed (C, H, W) images, batching consecutive ones of equal shape; maps at input resolution."""
    maps: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    start = 0
    while start < len(images):
        end = start + 1
        while end < len(images) and end - start < batch_size and images[end].shape == images[start].shape:
            end += 1
        amap, s = score(np.stack(images[start:end]).astype(np.float32, copy=False))
        maps += list(amap)
        scores.append(s)
        start = end
    return maps, np.concatenate(scores) if scores else np.zeros(0, np.float32)


def score_dataset(score: ScoreFn, dataset: Dataset, batch_size: int = 16, progress: str | None = None,
                  roi: np.ndarray | None = None) -> ScoredSet:
    """Score every item of a dataset yielding {"image", "mask", "label"} dicts; maps are resized to the
    masks' resolution (model resolution) when the inputs are larger (tiling). progress: the label of
    a progress bar (images, rate, ETA), or None for none. roi: the region of interest `score` applies,
    kept (at the masks' resolution) as the set's valid pixels."""
    scores, maps, labels, masks = [], [], [], []
    bar = tqdm(total=len(dataset), desc=progress, disable=progress is None, unit="img", leave=False, dynamic_ncols=True)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        amaps, s = score_images(score, [item["image"].numpy() for item in items], batch_size)
        for item, amap in zip(items, amaps):
            mask = item["mask"][0].numpy() > 0.5
            maps.append(amap if amap.shape == mask.shape else resize_map(amap, *mask.shape))
            masks.append(mask)
            labels.append(int(item["label"]))
        scores.append(s)
        bar.update(len(items))
    bar.close()
    valid = None if roi is None else resize_roi(roi, *masks[0].shape)
    return ScoredSet(np.concatenate(scores), np.stack(maps), np.array(labels), np.stack(masks), valid)


def run_bar(run: Path, progress: bool) -> str | None:
    """The progress-bar label for scoring with a run (None: no bar)."""
    return f"score {run.name}" if progress else None


def score_samples(score: ScoreFn, config: RunConfig, samples: list[Sample], batch_size: int = 16,
                  progress: str | None = None, roi: np.ndarray | None = None) -> tuple[ScoredSet, float]:
    """Scores/maps of dataset samples at model resolution, and the model's rate in images/s (time spent
    in `score` alone, not decoding); `score` takes the run's preprocessed images (whole scaled images
    when tiling: see image_score_fn). progress, roi: as for score_dataset."""
    if not samples:
        raise SurfadError("no images to score in the chosen split")
    dataset = ImageDataset.for_run(samples, config.data, roi)
    seconds = 0.0

    def timed(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal seconds
        start = time.perf_counter()
        result = score(batch)
        seconds += time.perf_counter() - start
        return result

    scored = score_dataset(timed, dataset, batch_size, progress, roi)
    return scored, len(samples) / max(seconds, 1e-9)
