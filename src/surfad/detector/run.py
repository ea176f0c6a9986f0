"""A trained run as a detector: score images with its graph (torch or ONNX) and judge them.

    from surfad import Detector
    detector = Detector.load("runs/wood")            # or runtime="onnx" after `surfad export`
    result = detector.predict("board.png")           # a path or a uint8 HxW(xC) array
    result.verdict, result.score, result.regions

Loading hashes the files the runtime reads (the torch weights; model.onnx against export.json, and
the torch weights too when the run keeps training examples, whose lookup runs in torch: with the
descriptors of the inspection's own pass where the runtime gives them, see explain) and refuses
weights that calibration.json was not calibrated with, or that the ONNX model was not exported from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    DescribedFn,
    ScoredSet,
    ScoreFn,
    image_described_fn,
    image_score_fn,
    run_bar,
    score_images,
    score_samples,
    torch_described_fn,
    torch_score_fn,
)
from surfad.utils import Stopwatch, sha256_file
from surfad.verdict import Prediction, Region, judge


@dataclass(frozen=True)
class Weights:
    """What a run detector scores with: the file it read (a safetensors file, or an ONNX model) and the
    SHA-256 of the weights (an ONNX model's: of the safetensors it was exported from, per export.json)."""

    path: Path
    sha256: str
    checkpoint: str = "best_detect"  # the torch runtime's --checkpoint that named the file


class RunDetector(Detector):
    """A trained, calibrated run ready to inspect images."""

    marker = bundle.CONFIG

    def __init__(self, run: Path, config: RunConfig, score_fn: ScoreFn, calibration: Calibration | None,
                 runtime: str, min_area: int = 16, roi: np.ndarray | None = None, weights: Weights | None = None,
                 explainer: Explainer | None = None, describe_fn: DescribedFn | None = None) -> None:
        """score_fn takes the run's preprocessed images and applies `roi` (see scoring.image_score_fn);
        `open` builds it, says which weights it holds (None: unknown, nothing to check), and gives the
        explainer when the run keeps training examples, with describe_fn (scoring.image_described_fn)
        when the runtime's pass also gives the descriptors the explainer searches with."""
        super().__init__(run, config, calibration, runtime, min_area, roi)
        self.score_fn = score_fn
        self.describe_fn = describe_fn
        self.fill = input_fill(roi, config.data.roi_fill)
        self.weights = weights
        self.explainer = explainer

    @classmethod
    def open(cls, folder: Path, runtime: str = "torch", device: str = "cpu", min_area: int = 16,
             checkpoint: str = "best_detect", roi: str | Path | None = None, threads: int = 0,
             busy_wait: bool = True) -> RunDetector:
        import torch

        run = bundle.require_run(folder)
        calibration = cls.read_calibration(run)
        inside = choose_roi(run / bundle.ROI, roi)
        examples = KeptExamples.load(run)
        graph = None
        if threads > 0 and (runtime == "torch" or examples is not None):
            torch.set_num_threads(threads)
        graph_described: DescribedFn | None = None  # the runtime's pass with the descriptors, where it has one
        if runtime == "torch":
            config, graph, digest = bundle.load_hashed_graph(run, checkpoint)
            graph.to(device)
            score_fn = torch_score_fn(graph, torch.device(device))
            if graph.model.descriptors_from_features:
                graph_described = torch_described_fn(graph, torch.device(device))
            weights = Weights(bundle.checkpoint_path(run, checkpoint), digest, checkpoint)
        else:
            from surfad.export.runtime import RUNTIME_FILES, exported_weights, onnx_score_fns

            if checkpoint != "best_detect":
                raise SurfadError(f"checkpoint {checkpoint!r}: model.onnx holds the shipped weights (best_detect) only; "
                                  "use the torch runtime for other checkpoints")
            config = bundle.load_config(run)
            path = run / RUNTIME_FILES[runtime]
            weights = Weights(path, exported_weights(path))
            if examples is not None:  # the lookup runs in torch: with the weights the model was exported from
                _, graph, digest = bundle.load_hashed_graph(run)
                graph.to(device)
                check_export_is_current(run, weights, digest)
            elif calibration is None or calibration.weights_sha256 is None:
                check_export_is_current(run, weights)  # nothing binds it to the thresholds: to the run's weights
            score_fn, onnx_described = onnx_score_fns(path, threads=threads, busy_wait=busy_wait)
            if runtime == "onnx":  # INT8 descriptors are not the float ones the examples were indexed with
                graph_described = onnx_described
        explainer = describe_fn = None
        if examples is not None:
            explainer = Explainer(graph.model, examples, config.data.tile_scale)
            if graph_described is not None:
                describe_fn = image_described_fn(graph_described, config, inside)
        return cls(run, config, image_score_fn(score_fn, config, inside), calibration, runtime, min_area, inside,
                   weights, explainer, describe_fn)

    @classmethod
    def describe_folder(cls, folder: Path) -> dict[str, Any]:
        """The run's folder read as it is: no weights loaded, thresholds None while it is still training."""
        return run_info(folder, RunConfig.load(folder / bundle.CONFIG), cls.read_calibration(folder))

    @property
    def weights_sha256(self) -> list[str]:
        return [] if self.weights is None else [self.weights.sha256]

    def check_weights(self) -> None:
        recorded = self.calibration.weights_sha256
        if recorded is None or self.weights is None or recorded == self.weights_sha256:
            return
        calibration = self.run / bundle.CALIBRATION
        if self.runtime == "torch":
            flag = "" if self.weights.checkpoint == "best_detect" else f" --checkpoint {self.weights.checkpoint}"
            raise SurfadError(
                f"{self.weights.path}: not the weights {calibration} was calibrated with (copied from another run, "
                f"changed since, or another checkpoint), so its thresholds do not fit these scores; put the weights "
                f"calibrated back, or calibrate these with `surfad calibrate {self.run}{flag}`")
        raise SurfadError(
            f"{self.weights.path}: exported from other weights than {calibration} was calibrated with (it and "
            f"{bundle.EXPORT} come from another run, or the run was retrained or recalibrated since); re-export "
            f"with `surfad export {self.run} --format onnx`, or calibrate with `surfad calibrate {self.run}`")

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

    def outputs(self, images: Sequence[np.ndarray], stopwatch: Stopwatch | None = None
                ) -> tuple[list[np.ndarray], list[float], np.ndarray | None]:
        """(anomaly maps at the images' size, zero outside the region of interest; image scores) of uint8
        HxWxC images, in one forward pass, and the model's descriptors of each image (B, d, h, w) from
        that pass when the run explains its regions and the runtime gives them (describe_fn), else None;
        stopwatch: laps preprocess, model, maps."""
        watch = stopwatch or Stopwatch()
        for i, a in enumerate(images):
            self.check_image(a, f"image {i}")
        inputs = [self.preprocess(a) for a in images]
        watch.lap("preprocess")
        descriptors = None
        if self.describe_fn is not None and images:  # squashed: every input has the model's size
            maps, scores, descriptors = self.describe_fn(np.stack(inputs).astype(np.float32, copy=False))
        else:
            maps, scores = score_images(self.score_batch, inputs, batch_size=len(images))
        watch.lap("model")
        full = [resize_map(m, *a.shape[:2]) for a, m in zip(images, maps)]
        if self.roi is not None:
            full = [m * self.roi_at(*m.shape) for m in full]
        watch.lap("maps")
        return full, [float(s) for s in scores], descriptors

    def predict_batch(self, images: Sequence[np.ndarray | str | Path], threshold: float | None = None,
                      stopwatch: Stopwatch | None = None) -> list[Prediction]:
        """Inspect several images in one forward pass (stopwatch: see Detector.predict_batch)."""
        arrays = [as_image(im) for im in images]
        t, review = self.decision(threshold)
        pixel = self.calibration.pixel_threshold
        maps, scores, descriptors = self.outputs(arrays, stopwatch)
        judged = [judge(a, m, s, t, pixel, self.min_area, self.roi_at(*a.shape[:2]), review)
                  for a, m, s in zip(arrays, maps, scores)]
        if stopwatch is not None:
            stopwatch.lap("regions")
        self.explain_judged(arrays, judged, stopwatch, descriptors)
        return judged

    def explain(self, images: Sequence[np.ndarray], regions: Sequence[Sequence[Region]],
                descriptors: np.ndarray | None = None) -> None:
        """Set each region's nearest good example (see surfad.detector.examples), from the images as the
        model sees them; descriptors: the model's of these images from the inspection's own pass, which
        spares the explainer its own."""
        if self.explainer is None:
            return
        sizes = [a.shape[:2] for a in images]
        if descriptors is not None:
            self.explainer.explain_described(descriptors, sizes, regions)
        else:
            self.explainer.explain([self.preprocess(a) for a in images], sizes, regions)


def check_export_is_current(run: Path, weights: Weights, shipped_sha256: str | None = None) -> None:
    """SurfadError when an ONNX model was exported from other weights than the run's model.safetensors
    (the run was retrained after the export, or the file replaced); shipped_sha256: that file's hash,
    when it was already read (else it is hashed here)."""
    shipped = run / bundle.WEIGHTS
    if shipped_sha256 is None and shipped.is_file():
        shipped_sha256 = sha256_file(shipped)
    if shipped_sha256 is not None and weights.sha256 != shipped_sha256:
        raise SurfadError(f"{weights.path}: exported from other weights than {shipped} (the run changed after "
                          f"export); re-export with `surfad export {run} --format onnx`")


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
