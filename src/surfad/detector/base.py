"""What every detector shares: its folder, data settings, calibration and verdicts, and the one
place that decides which kind of detector a folder holds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from surfad import bundle
from surfad.calibrate import Calibration
from surfad.config import RunConfig
from surfad.data.roi import check_aspect, resize_roi, roi_fingerprint
from surfad.data.samples import Sample
from surfad.detector.examples import Explainer, region_crop
from surfad.errors import SurfadError
from surfad.scoring import ScoredSet
from surfad.utils import Stopwatch
from surfad.verdict import OK, Prediction, Region

RUNTIMES = ("torch", "onnx", "onnx-int8")  # onnx-int8: model.int8.onnx (surfad export --quantize int8)


ROI_SIZES_KEPT = 8  # image sizes whose resized region of interest a detector keeps


class Detector:
    """A calibrated detector ready to inspect images.

        detector = Detector.load("runs/wood")        # a trained run, or a folder written by `surfad fuse`
        detector.predict("board.png").verdict

    Subclasses say which folders they hold (`marker`, a file only such folders have) and implement
    open, predict_batch, score_samples, info, describe_folder, weights_sha256 and check_weights (which
    weights they hold, and the check that the calibration was made with them), and explain when they
    keep training examples (`explainer`); a subclass that sets `marker` registers itself as a kind.
    """

    marker: ClassVar[str]
    kinds: ClassVar[list[type[Detector]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "marker" in cls.__dict__:  # a kind of folder; subclasses of a kind (e.g. test doubles) are not
            Detector.kinds.append(cls)

    def __init__(self, run: Path, config: RunConfig, calibration: Calibration | None, runtime: str,
                 min_area: int = 16, roi: np.ndarray | None = None) -> None:
        self.run = run
        self.config = config
        self.calibration = calibration
        self.runtime = runtime
        self.min_area = min_area
        self.roi = roi  # the region of interest inspected (bool, any size with the images' aspect), None: all
        self._roi_sizes: dict[tuple[int, int], np.ndarray] = {}
        self.explainer: Explainer | None = None  # finds nearest good examples (runs that keep training examples)

    @staticmethod
    def kind_of(folder: str | Path) -> type[Detector]:
        """The detector class of a folder, or a clear error when it holds no detector."""
        for kind in Detector.kinds:
            if (Path(folder) / kind.marker).is_file():
                return kind
        raise SurfadError(f"{folder}: not a run folder (no {bundle.CONFIG}) nor a fused detector (no "
                          f"{bundle.ENSEMBLE}); train one with `surfad train`")

    @staticmethod
    def load(folder: str | Path, runtime: str = "torch", device: str = "cpu", min_area: int = 16,
             checkpoint: str = "best_detect", calibrated: bool = True, roi: str | Path | None = None,
             threads: int = 0, busy_wait: bool = True) -> Detector:
        """Load a run or a fused folder as the right detector; checkpoint (torch runtime, runs only):
        best_detect (shipped), best_seg, last or a .safetensors path. calibrated=False also loads a
        folder without calibration.json (to calibrate it), or one calibrated in another region of
        interest (to judge with thresholds given per call). Without a calibration it can score
        images but not judge them.
        roi: a region-of-interest mask file to inspect within instead of the run's own (roi.png, if
        it was trained with one), or "none" for the whole image. threads: CPU threads for inference
        (0: the runtime's default, every core); torch's setting is process-wide. busy_wait=False:
        onnxruntime's threads sleep between operators instead of spinning (see onnx_score_fn)."""
        if runtime not in RUNTIMES:
            raise SurfadError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if threads < 0:
            raise SurfadError(f"threads must be 0 (every core) or more, got {threads}")
        detector = Detector.kind_of(folder).open(Path(folder), runtime, device, min_area, checkpoint, roi, threads,
                                                  busy_wait)
        if calibrated and detector.calibration is None:
            raise SurfadError(f"{folder}: no {bundle.CALIBRATION}; run `surfad calibrate {folder}`")
        if calibrated:
            detector.check_weights()
        if calibrated and detector.calibration.roi not in (None, detector.roi_key):
            raise SurfadError(
                f"{folder}: its thresholds were calibrated on scores in another region of interest "
                f"({detector.calibration.roi}) than the one asked for now ({detector.roi_key}): scores in a "
                f"smaller region are lower, so verdicts would be wrong. Calibrate with this region first "
                f"(surfad calibrate {folder} --roi ...), or inspect with the region it was calibrated with")
        return detector

    @staticmethod
    def describe(folder: str | Path) -> dict[str, Any]:
        """What `surfad info` prints about a folder (a run is read as it is, without loading weights)."""
        return Detector.kind_of(folder).describe_folder(Path(folder))

    @classmethod
    def open(cls, folder: Path, runtime: str, device: str, min_area: int, checkpoint: str,
             roi: str | Path | None, threads: int, busy_wait: bool = True) -> Detector:
        raise NotImplementedError  # pragma: no cover - abstract

    @classmethod
    def describe_folder(cls, folder: Path) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - abstract

    @property
    def weights_sha256(self) -> list[str]:
        """SHA-256 of the weights this detector scores with (one per run), as calibration.json records them."""
        raise NotImplementedError  # pragma: no cover - abstract

    def check_weights(self) -> None:
        """SurfadError naming the foreign file when calibration.json was calibrated with other weights
        than those loaded; a calibration that recorded none (written before they were) is trusted."""
        raise NotImplementedError  # pragma: no cover - abstract

    @staticmethod
    def read_calibration(folder: Path) -> Calibration | None:
        """The folder's calibration.json, or None when it has none yet; a corrupt one is an error that
        says how to replace it."""
        path = folder / bundle.CALIBRATION
        if not path.is_file():
            return None
        try:
            return Calibration.load(path)
        except SurfadError as err:
            raise SurfadError(f"{err}; run `surfad calibrate {folder}` to calibrate again (the corrupt file is then "
                              f"moved into {bundle.CALIBRATION_HISTORY}/)") from None

    @property
    def roi_key(self) -> str:
        """The fingerprint of the region of interest inspected (data.roi.roi_fingerprint)."""
        return roi_fingerprint(self.roi)

    @property
    def threshold(self) -> float:
        if self.calibration is None:
            raise SurfadError(f"{self.run}: not calibrated (no {bundle.CALIBRATION}); run `surfad calibrate {self.run}`")
        return self.calibration.threshold

    def decision(self, threshold: float | None) -> tuple[float, list[float] | None]:
        """(threshold, review band) to judge with: the calibration's, or `threshold` alone when given
        (an override replaces the band too)."""
        if threshold is not None:
            return threshold, None
        return self.threshold, self.calibration.review

    @property
    def name(self) -> str:
        """The model's name, as metrics and reports show it."""
        return self.config.model

    @property
    def channels(self) -> int:
        return self.config.data.input_channels

    def roi_at(self, height: int, width: int) -> np.ndarray | None:
        """The region of interest at height x width (None: the whole image), resized once per size:
        a line's camera gives one size, so every image after the first reuses it."""
        if self.roi is None:
            return None
        if (height, width) not in self._roi_sizes:
            if len(self._roi_sizes) >= ROI_SIZES_KEPT:  # uploads of ever new sizes must not grow it
                self._roi_sizes.clear()
            self._roi_sizes[height, width] = resize_roi(self.roi, height, width)
        return self._roi_sizes[height, width]

    def check_image(self, image: np.ndarray, name: str) -> None:
        """BadInputError naming `name` when the image cannot be inspected within the region of
        interest (it has another aspect ratio than the ROI)."""
        if self.roi is not None:
            check_aspect(self.roi, *image.shape[:2], name)

    def predict(self, image: np.ndarray | str | Path, threshold: float | None = None,
                stopwatch: Stopwatch | None = None) -> Prediction:
        """Inspect one image (a path or a uint8 array HxW, HxWx1 or HxWx3 RGB); stopwatch: see predict_batch."""
        return self.predict_batch([image], threshold, stopwatch)[0]

    def predict_batch(self, images: Sequence[np.ndarray | str | Path], threshold: float | None = None,
                      stopwatch: Stopwatch | None = None) -> list[Prediction]:
        """Inspect images in one forward pass; stopwatch: laps "preprocess", "model", "maps" (to the
        images' size), "regions" (verdicts, masks and regions) and "explain" (the nearest good examples of
        NG and REVIEW regions) are charged to it."""
        raise NotImplementedError  # pragma: no cover - abstract

    def explain(self, images: Sequence[np.ndarray], regions: Sequence[Sequence[Region]],
                descriptors: np.ndarray | None = None) -> None:
        """Set each region's nearest_good (regions[i] of uint8 image i), when the detector keeps training
        examples; nothing otherwise. descriptors: the model's of these images (B, d, h, w), when the
        inspection's pass gave them, so none is computed again."""

    def explain_judged(self, images: Sequence[np.ndarray], predictions: Sequence[Prediction],
                       stopwatch: Stopwatch | None = None, descriptors: np.ndarray | None = None) -> None:
        """explain the regions of the NG and REVIEW predictions (OK ones have none, and cost nothing),
        with their rows of `descriptors` when given; the time goes to the stopwatch's "explain" lap."""
        flagged = [i for i, p in enumerate(predictions) if p.verdict != OK and p.regions]
        if flagged:
            self.explain([images[i] for i in flagged], [predictions[i].regions for i in flagged],
                         None if descriptors is None else descriptors[flagged])
        if stopwatch is not None:
            stopwatch.lap("explain")

    def crops(self, image: np.ndarray, region: Region) -> tuple[np.ndarray, np.ndarray] | None:
        """(the region's crop of the uint8 image, its nearest good example's crop from the kept copy), with
        the same context around both; None when the region has no nearest good example."""
        if region.nearest_good is None or self.explainer is None:
            return None
        return region_crop(image, region), self.explainer.examples.good_crop(region.nearest_good)

    def score_samples(self, samples: list[Sample], batch_size: int = 16, progress: bool = False) -> tuple[ScoredSet, float]:
        """Scores and maps of dataset samples at model resolution, and the rate in images/s."""
        raise NotImplementedError  # pragma: no cover - abstract

    def info(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - abstract
