"""Load a bundle and inspect images: score, verdict, anomaly map, defect mask and regions.

    from surfad import Detector
    detector = Detector.load("runs/wood")            # or runtime="onnx" after `surfad export`
    result = detector.predict("board.png")           # a path or a uint8 HxW(xC) array
    result.verdict, result.score, result.regions

The verdict is NG iff score > threshold. The defect mask is the anomaly map (resized to the
original image) above the calibrated pixel threshold; regions are its connected components of at
least `min_area` pixels. Localisation is reported for NG images only: an OK image has an empty mask
and no regions, so an inspector never sees boxes on a part that passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from surfad import bundle
from surfad.calibrate import Calibration
from surfad.config import RunConfig
from surfad.data.io import read_image
from surfad.data.samples import Sample
from surfad.data.transforms import preprocess, resize_map
from surfad.errors import SurfadError
from surfad.scoring import (
    ScoredSet,
    ScoreFn,
    image_score_fn,
    run_bar,
    score_images,
    score_samples,
    torch_score_fn,
)

RUNTIMES = ("torch", "onnx")


@dataclass
class Region:
    """A connected defect region; bbox = [x0, y0, x1, y1], inclusive, in original-image pixels."""

    bbox: list[int]
    area: int
    max_score: float
    mean_score: float

    def to_dict(self) -> dict[str, Any]:
        return {"bbox": self.bbox, "area": self.area, "max_score": self.max_score, "mean_score": self.mean_score}


@dataclass
class Prediction:
    """The inspection result for one image; maps and masks are at the original image size."""

    score: float
    threshold: float
    verdict: str
    anomaly_map: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    regions: list[Region]

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "verdict": self.verdict,
            "regions": [r.to_dict() for r in self.regions],
        }


def find_regions(anomaly_map: np.ndarray, pixel_threshold: float, min_area: int) -> tuple[np.ndarray, list[Region]]:
    """Mask (map > pixel_threshold, small components removed) and its 8-connected regions, largest first."""
    above = (anomaly_map > pixel_threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    mask = np.zeros(anomaly_map.shape, dtype=bool)
    regions = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area:
            continue
        inside = labels == k
        mask |= inside
        values = anomaly_map[inside]
        regions.append(Region([x, y, x + w - 1, y + h - 1], area, float(values.max()), float(values.mean())))
    regions.sort(key=lambda r: r.area, reverse=True)
    return mask, regions


def inspect(image: np.ndarray, model_map: np.ndarray, score: float, threshold: float, calibration: Calibration,
            min_area: int) -> Prediction:
    """The Prediction for one image from its anomaly map (resized to the image) and score."""
    h, w = image.shape[:2]
    amap = resize_map(model_map, h, w)
    verdict = "NG" if score > threshold else "OK"
    if verdict == "NG":
        mask, regions = find_regions(amap, calibration.pixel_threshold, min_area)
    else:
        mask, regions = np.zeros((h, w), dtype=bool), []
    return Prediction(score, threshold, verdict, amap, mask, regions)


class BaseDetector:
    """What every detector shares: its folder, data settings, calibration and the verdict rule.
    Subclasses implement predict_batch, score_samples and info."""

    def __init__(self, run: Path, config: RunConfig, calibration: Calibration, runtime: str, min_area: int = 16) -> None:
        self.run = run
        self.config = config
        self.calibration = calibration
        self.runtime = runtime
        self.min_area = min_area

    @staticmethod
    def read_calibration(run: Path) -> Calibration:
        """The folder's calibration.json, or a clear error saying how to make one."""
        if not (run / bundle.CALIBRATION).is_file():
            raise SurfadError(f"{run}: no {bundle.CALIBRATION}; run `surfad calibrate {run} --data PATH`")
        return Calibration.load(run / bundle.CALIBRATION)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    @property
    def name(self) -> str:
        """The model's name, as metrics and reports show it."""
        return self.config.model

    def predict(self, image: np.ndarray | str | Path, threshold: float | None = None) -> Prediction:
        """Inspect one image (a path or a uint8 array HxW, HxWx1 or HxWx3 RGB)."""
        return self.predict_batch([image], threshold)[0]

    def predict_batch(self, images: Sequence[np.ndarray | str | Path], threshold: float | None = None) -> list[Prediction]:
        raise NotImplementedError  # pragma: no cover - abstract


class Detector(BaseDetector):
    """A trained, calibrated model ready to inspect images."""

    def __init__(self, run: Path, config: RunConfig, score_fn: ScoreFn, calibration: Calibration, runtime: str, min_area: int = 16) -> None:
        """score_fn takes the run's preprocessed images (see scoring.image_score_fn); `load` builds it."""
        super().__init__(run, config, calibration, runtime, min_area)
        self.score_fn = score_fn

    @classmethod
    def load(cls, run: str | Path, runtime: str = "torch", device: str = "cpu", min_area: int = 16,
             checkpoint: str = "best_detect") -> BaseDetector:
        """Load a run folder; checkpoint (torch runtime): best_detect (shipped), best_seg, last or a path.
        A folder written by `surfad fuse` loads as a FusedDetector (surfad.ensemble)."""
        if bundle.is_fused(run):
            from surfad.ensemble import FusedDetector

            return FusedDetector.load(run, runtime=runtime, device=device, min_area=min_area, checkpoint=checkpoint)
        run = bundle.require_run(run)
        if runtime not in RUNTIMES:
            raise SurfadError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        calibration = cls.read_calibration(run)
        if runtime == "torch":
            import torch

            config, graph = bundle.load_graph(run, checkpoint)
            graph.to(device)
            score_fn = torch_score_fn(graph, torch.device(device))
        else:
            from surfad.export.onnx import onnx_score_fn

            if checkpoint != "best_detect":
                raise SurfadError(f"checkpoint {checkpoint!r}: model.onnx holds the shipped weights (best_detect) only; "
                                  "use the torch runtime for other checkpoints")
            config = RunConfig.load(run / bundle.CONFIG)
            if not (run / bundle.ONNX).is_file():
                raise SurfadError(f"{run}: no {bundle.ONNX}; run `surfad export {run} --format onnx` first")
            score_fn = onnx_score_fn(run / bundle.ONNX)
        return cls(run, config, image_score_fn(score_fn, config), calibration, runtime, min_area)

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    @property
    def channels(self) -> int:
        return self.config.data.input_channels

    def info(self) -> dict[str, Any]:
        """What the model is: name, input, threshold, training data summary, versions."""
        return {**run_info(self.run, self.config, self.calibration), "runtime": self.runtime}

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 HxWxC -> the model's float32 input: (C, S, S), or the whole scaled image when tiling."""
        return preprocess(image, self.image_size, self.channels, self.config.data.tile_scale)

    def score_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed float32 images (B, C, H, W) of one shape -> (maps (B, H, W), scores (B,))."""
        return self.score_fn(np.ascontiguousarray(batch, dtype=np.float32))

    def score_samples(self, samples: list[Sample], batch_size: int = 16, progress: bool = False) -> tuple[ScoredSet, float]:
        """Scores and maps of dataset samples at model resolution, and the rate in images/s;
        progress: show a bar named after the run."""
        return score_samples(self.score_batch, self.config, samples, batch_size,
                             progress=run_bar(self.run, progress))

    def predict_batch(self, images: Sequence[np.ndarray | str | Path], threshold: float | None = None) -> list[Prediction]:
        """Inspect several images in one forward pass."""
        arrays = [as_image(im) for im in images]
        maps, scores = score_images(self.score_batch, [self.preprocess(a) for a in arrays], batch_size=len(arrays))
        t = self.threshold if threshold is None else float(threshold)
        return [inspect(a, m, float(s), t, self.calibration, self.min_area) for a, m, s in zip(arrays, maps, scores)]


def run_info(run: Path, config: RunConfig, calibration: Calibration | None) -> dict[str, Any]:
    """A run folder's model, input, thresholds (None before calibration), training data, progress
    and versions."""
    meta = bundle.read_meta(run)
    return {
        "model": config.model,
        "parameters": meta.get("parameters"),
        "image_size": config.data.image_size,
        "tile_scale": config.data.tile_scale,
        "channels": config.data.input_channels,
        "threshold": None if calibration is None else calibration.threshold,
        "pixel_threshold": None if calibration is None else calibration.pixel_threshold,
        "calibration_strategy": None if calibration is None else calibration.strategy,
        "training_data": meta.get("data", {}),
        "training": bundle.training_summary(run),
        "surfad_version": meta.get("surfad_version"),
    }


def describe(folder: str | Path) -> dict[str, Any]:
    """What `surfad info` prints: a run's folder read as it is (no weights loaded; thresholds None
    while it is still training), or a fused detector's info()."""
    run = Path(folder)
    if bundle.is_fused(run):
        return Detector.load(run).info()
    if not (run / bundle.CONFIG).is_file():
        raise SurfadError(f"{run}: not a run folder (no {bundle.CONFIG}); train one with `surfad train`")
    calibration = Calibration.load(run / bundle.CALIBRATION) if (run / bundle.CALIBRATION).is_file() else None
    return run_info(run, RunConfig.load(run / bundle.CONFIG), calibration)


def as_image(image: np.ndarray | str | Path) -> np.ndarray:
    """A path or array -> uint8 HxWxC."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise SurfadError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise SurfadError(f"image array must be HxW, HxWx1 or HxWx3, got shape {array.shape}")
    return array
