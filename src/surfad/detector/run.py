"""A trained run as a detector: score images with its graph (torch or ONNX) and judge them.

    from surfad import Detector
    detector = Detector.load("runs/wood")            # or runtime="onnx" after `surfad export`
    result = detector.predict("board.png")           # a path or a uint8 HxW(xC) array
    result.verdict, result.score, result.regions
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from surfad import bundle
from surfad.calibrate import Calibration
from surfad.config import RunConfig
from surfad.data.io import as_image
from surfad.data.roi import choose_roi, input_fill
from surfad.data.samples import Sample
from surfad.data.transforms import preprocess, resize_map
from surfad.detector.base import Detector
from surfad.detector.examples import Explainer, KeptExamples
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
from surfad.verdict import Prediction, Region, judge


class RunDetector(Detector):
    """A trained, calibrated run ready to inspect images."""

    marker = bundle.CONFIG

    def __init__(self, run: Path, config: RunConfig, score_fn: ScoreFn, calibration: Calibration | None,
                 runtime: str, min_area: int = 16, roi: np.ndarray | None = None,
                 explainer: Explainer | None = None) -> None:
        """score_fn takes the run's preprocessed images and applies `roi` (see scoring.image_score_fn);
        `open` builds it, and the explainer when the run keeps training examples."""
        super().__init__(run, config, calibration, runtime, min_area, roi)
        self.score_fn = score_fn
        self.fill = input_fill(roi, config.data.roi_fill)
        self.explainer = explainer

    @classmethod
    def open(cls, folder: Path, runtime: str = "torch", device: str = "cpu", min_area: int = 16,
             checkpoint: str = "best_detect", roi: str | Path | None = None, threads: int = 0) -> RunDetector:
        import torch

        run = bundle.require_run(folder)
        calibration = cls.read_calibration(run)
        inside = choose_roi(run / bundle.ROI, roi)
        examples = KeptExamples.load(run)
        graph = None
        if threads > 0 and (runtime == "torch" or examples is not None):
            torch.set_num_threads(threads)
        if runtime == "torch":
            config, graph = bundle.load_graph(run, checkpoint)
            graph.to(device)
            score_fn = torch_score_fn(graph, torch.device(device))
        else:
            from surfad.export.onnx import onnx_score_fn

            if checkpoint != "best_detect":
                raise SurfadError(f"checkpoint {checkpoint!r}: model.onnx holds the shipped weights (best_detect) only; "
                                  "use the torch runtime for other checkpoints")
            config = bundle.load_config(run)
            score_fn = onnx_score_fn(run / bundle.ONNX, threads=threads)
        explainer = None
        if examples is not None:  # the lookup runs in torch for both runtimes
            graph = graph or bundle.load_graph(run)[1].to(device)
            explainer = Explainer(graph.model, examples, config.data.tile_scale)
        return cls(run, config, image_score_fn(score_fn, config, inside), calibration, runtime, min_area, inside,
                   explainer)

    @classmethod
    def describe_folder(cls, folder: Path) -> dict[str, Any]:
        """The run's folder read as it is: no weights loaded, thresholds None while it is still training."""
        return run_info(folder, RunConfig.load(folder / bundle.CONFIG), cls.read_calibration(folder))

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    def info(self) -> dict[str, Any]:
        """What the model is: name, input, threshold, training data summary, versions."""
        return {**run_info(self.run, self.config, self.calibration), "runtime": self.runtime}

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 HxWxC -> the model's float32 input: (C, S, S), or the whole scaled image when tiling;
        filled outside the region of interest first (data.roi_fill), as in training."""
        return preprocess(self.fill(image) if self.fill else image, self.image_size, self.channels,
                          self.config.data.tile_scale)

    def score_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed float32 images (B, C, H, W) of one shape -> (maps (B, H, W), scores (B,))."""
        return self.score_fn(np.ascontiguousarray(batch, dtype=np.float32))

    def score_samples(self, samples: list[Sample], batch_size: int = 16, progress: bool = False) -> tuple[ScoredSet, float]:
        """Scores and maps of dataset samples at model resolution, and the rate in images/s;
        progress: show a bar named after the run."""
        return score_samples(self.score_batch, self.config, samples, batch_size, progress=run_bar(self.run, progress),
                             roi=self.roi)

    def outputs(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """(anomaly map at the image's size, zero outside the region of interest; image score) of uint8
        HxWxC images, in one forward pass."""
        for i, a in enumerate(images):
            self.check_image(a, f"image {i}")
        maps, scores = score_images(self.score_batch, [self.preprocess(a) for a in images], batch_size=len(images))
        full = [resize_map(m, *a.shape[:2]) for a, m in zip(images, maps)]
        if self.roi is not None:
            full = [m * self.roi_at(*m.shape) for m in full]
        return [(m, float(s)) for m, s in zip(full, scores)]

    def predict_batch(self, images: Sequence[np.ndarray | str | Path], threshold: float | None = None) -> list[Prediction]:
        """Inspect several images in one forward pass."""
        arrays = [as_image(im) for im in images]
        t, review = self.decision(threshold)
        pixel = self.calibration.pixel_threshold
        predictions = [judge(a, m, s, t, pixel, self.min_area, self.roi_at(*a.shape[:2]), review)
                       for a, (m, s) in zip(arrays, self.outputs(arrays))]
        self.explain_judged(arrays, predictions)
        return predictions

    def explain(self, images: Sequence[np.ndarray], regions: Sequence[Sequence[Region]]) -> None:
        """Set each region's nearest good example (see surfad.detector.examples), from the images as the
        model sees them."""
        if self.explainer is not None:
            self.explainer.explain([self.preprocess(a) for a in images], [a.shape[:2] for a in images], regions)


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
