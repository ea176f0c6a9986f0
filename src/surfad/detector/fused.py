"""Fuse trained runs into one detector: the mean of their standardised scores and maps.

    surfad fuse runs/squashed runs/tiled --out runs/fused   # then calibrate/evaluate/predict/export/serve it

Runs that look at images differently (e.g. squashed whole images and constant-scale tiles) miss
different defects, so their mean can beat each of them. Each member scores an image with its own
preprocessing; its score and its map (at the image's size) are standardised by the mean and
standard deviation of its scores, and of its map values, on the validation good images; the fused
score and map are the means over members. The members must share their validation and test
splits, so none was trained on the images that standardise it. The fused folder holds
ensemble.json (members, relative to the folder, and their statistics), a copy of the splits and its
own calibration.json; the members stay where they are and are loaded from there.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surfad import bundle
from surfad.calibrate import Calibration, calibrate, default_strategy
from surfad.data.io import as_image
from surfad.data.samples import Sample
from surfad.data.splits import Splits
from surfad.data.transforms import resize_map
from surfad.detector.base import Detector
from surfad.detector.run import RunDetector
from surfad.errors import SurfadError
from surfad.scoring import ScoredSet
from surfad.utils import Stopwatch, atomic_write_json, read_json
from surfad.verdict import Prediction, Region, judge


@dataclass
class MemberStats:
    """One member run and the statistics that standardise its outputs."""

    run: str  # path relative to the fused folder
    score_mean: float
    score_std: float
    map_mean: float
    map_std: float

    def __post_init__(self) -> None:
        """Non-finite statistics, or a spread that is not positive, would make every fused score NaN
        or infinite: refused when the record is read, not at the first image."""
        for name in ("score_mean", "score_std", "map_mean", "map_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise SurfadError(f"member {self.run}: {name}={value} must be a finite number")
        for name in ("score_std", "map_std"):
            if getattr(self, name) <= 0:
                raise SurfadError(f"member {self.run}: {name}={getattr(self, name)} must be positive")

    def scores(self, scores: np.ndarray) -> np.ndarray:
        return (scores - self.score_mean) / self.score_std

    def maps(self, maps: np.ndarray) -> np.ndarray:
        return (maps - self.map_mean) / self.map_std


def fuse_scored(sets: Sequence[ScoredSet], stats: Sequence[MemberStats]) -> ScoredSet:
    """Members' outputs on the same samples -> the fused ones (maps at the first member's resolution)."""
    size = sets[0].maps.shape[1:]
    scores = np.mean([s.scores(scored.scores) for s, scored in zip(stats, sets)], axis=0)
    maps = np.mean([s.maps(_resized(scored.maps, size)) for s, scored in zip(stats, sets)], axis=0)
    return ScoredSet(scores, maps.astype(np.float32), sets[0].labels, sets[0].masks, sets[0].valid)


def _resized(maps: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    return maps if maps.shape[1:] == size else np.stack([resize_map(m, *size) for m in maps])


class FusedDetector(Detector):
    """Several runs inspecting as one; `config` is the first member's (the data settings and splits
    they share)."""

    marker = bundle.ENSEMBLE

    def __init__(self, run: Path, members: list[RunDetector], stats: list[MemberStats],
                 calibration: Calibration | None, runtime: str, min_area: int = 16) -> None:
        check_one_region(members)
        super().__init__(run, members[0].config, calibration, runtime, min_area, members[0].roi)
        self.members = members
        self.stats = stats
        # nearest good examples come from the first member that keeps training examples
        self.explaining = next((m for m in members if m.explainer is not None), None)
        self.explainer = None if self.explaining is None else self.explaining.explainer

    @classmethod
    def open(cls, folder: Path, runtime: str = "torch", device: str = "cpu", min_area: int = 16,
             checkpoint: str = "best_detect", roi: str | Path | None = None, threads: int = 0,
             busy_wait: bool = True) -> FusedDetector:
        """Each member inspects within its own region of interest, or within `roi` for all of them."""
        if checkpoint != "best_detect":
            raise SurfadError(f"{folder}: a fused detector uses its members' shipped weights (best_detect) only")
        calibration = cls.read_calibration(folder)
        members = [RunDetector.open(member, runtime, device, min_area, roi=roi, threads=threads,
                                    busy_wait=busy_wait) for member in model_runs(folder)]
        return cls(folder, members, read_stats(folder), calibration, runtime, min_area)

    @classmethod
    def describe_folder(cls, folder: Path) -> dict[str, Any]:
        return cls.open(folder).info()

    @property
    def weights_sha256(self) -> list[str]:
        return [h for m in self.members for h in m.weights_sha256]

    def check_weights(self) -> None:
        recorded = self.calibration.weights_sha256
        if recorded is None or recorded == self.weights_sha256:
            return
        calibration = self.run / bundle.CALIBRATION
        if len(recorded) != len(self.members):
            raise SurfadError(f"{calibration}: calibrated with {len(recorded)} members' weights, but {self.run} fuses "
                              f"{len(self.members)}; calibrate it again with `surfad calibrate {self.run}`")
        foreign = [str(m.weights.path) for m, h in zip(self.members, recorded) if m.weights_sha256 != [h]]
        raise SurfadError(f"{', '.join(foreign)}: not the weights {calibration} was calibrated with (a member was "
                          f"retrained, re-exported from other weights, or replaced since); fuse the members again "
                          f"with `surfad fuse`, or calibrate with `surfad calibrate {self.run}`")

    @property
    def channels(self) -> int:
        return max(m.channels for m in self.members)  # report overlays in colour if any member sees colour

    @property
    def name(self) -> str:
        return "fused(" + ", ".join(m.name for m in self.members) + ")"

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "image_size": self.members[0].image_size,
            "threshold": self.threshold,
            "pixel_threshold": self.calibration.pixel_threshold,
            "calibration_strategy": self.calibration.strategy,
            "runtime": self.runtime,
            "members": [{"run": s.run, **m.info()} for s, m in zip(self.stats, self.members)],
        }

    def score_samples(self, samples: list[Sample], batch_size: int = 16, progress: bool = False) -> tuple[ScoredSet, float]:
        """Fused scores and maps of dataset samples (at the first member's resolution), and the rate in images/s;
        progress: one bar per member."""
        outputs = [m.score_samples(samples, batch_size, progress) for m in self.members]
        rate = 1.0 / sum(1.0 / r for _, r in outputs)  # the members run one after another
        return fuse_scored([scored for scored, _ in outputs], self.stats), rate

    def predict_batch(self, images: Sequence[np.ndarray | str | Path], threshold: float | None = None,
                      stopwatch: Stopwatch | None = None) -> list[Prediction]:
        """Inspect images: each member's map and score at the image's size, standardised and averaged
        (stopwatch: the members' laps added up, then regions)."""
        arrays = [as_image(im) for im in images]
        per_member = [m.outputs(arrays, stopwatch) for m in self.members]
        t, review = self.decision(threshold)
        results = []
        for i, image in enumerate(arrays):
            score = float(np.mean([s.scores(np.float64(scores[i])) for s, (_, scores, _) in zip(self.stats, per_member)]))
            amap = np.mean([s.maps(maps[i]) for s, (maps, _, _) in zip(self.stats, per_member)], axis=0)
            results.append(judge(image, amap.astype(np.float32), score, t, self.calibration.pixel_threshold,
                                 self.min_area, self.roi_at(*image.shape[:2]), review))
        if stopwatch is not None:
            stopwatch.lap("regions")
        descriptors = None if self.explaining is None else per_member[self.members.index(self.explaining)][2]
        self.explain_judged(arrays, results, stopwatch, descriptors)
        return results

    def explain(self, images: Sequence[np.ndarray], regions: Sequence[Sequence[Region]],
                descriptors: np.ndarray | None = None) -> None:
        if self.explaining is not None:
            self.explaining.explain(images, regions, descriptors)


def check_one_region(members: Sequence[Detector]) -> None:
    """SurfadError unless every member inspects the same region of interest: the fused map, its
    regions and thresholds are those of one region."""
    keys = [m.roi_key for m in members]
    if len(set(keys)) > 1:
        raise SurfadError(f"fused members inspect different regions of interest ({', '.join(keys)}); give them one "
                          "with --roi, or fuse runs trained with the same ROI")


def read_stats(run: Path) -> list[MemberStats]:
    """The members and statistics in a fused folder's ensemble.json."""
    def parse(raw: dict) -> list[MemberStats]:
        try:
            return [MemberStats(**member) for member in raw["members"]]
        except (KeyError, TypeError) as err:
            raise SurfadError(f"not a valid fused-detector record ({err})") from None

    return read_json(run / bundle.ENSEMBLE, "fused detector", parse)


def model_runs(folder: str | Path) -> list[Path]:
    """The trained run folders a detector folder uses: a fused detector's members, or the run itself."""
    if Detector.kind_of(folder) is not FusedDetector:
        return [Path(folder)]
    return [Path(os.path.normpath(Path(folder) / s.run)) for s in read_stats(Path(folder))]


def fuse_runs(runs: Sequence[str | Path], out: str | Path, strategy: str | None = None, progress: bool = False,
              into_existing: bool = False) -> Path:
    """Write a fused detector of `runs` into `out`, standardised and calibrated on their validation split.

    strategy: the calibration strategy (default: f1 when validation has real defects, else fpr:0.01,
    as training does). progress: a bar while each member scores the validation split. into_existing:
    `out` may hold other files (surfad.auto ships a fused pair into the folder holding its members).
    """
    out = Path(out)
    if len(runs) < 2:
        raise SurfadError("fuse: give at least two runs")
    if out.exists() and any(out.iterdir()) and not into_existing:
        raise SurfadError(f"{out}: exists and is not empty; choose another --out")
    members = [RunDetector.open(bundle.require_run(r)) for r in runs]
    check_one_region(members)
    splits = [Splits.load(Path(r) / bundle.SPLITS) for r in runs]
    for run, s in zip(runs[1:], splits[1:]):
        for name in ("val", "test"):
            if [x.path for x in s.get(name)] != [x.path for x in splits[0].get(name)]:
                raise SurfadError(f"fuse: {run} has another {name} split than {runs[0]}; fuse runs trained on the same "
                                  "data with the same split settings")
    val = splits[0].get("val")
    outputs = [m.score_samples(val, progress=progress)[0] for m in members]
    good = outputs[0].labels == 0
    if not good.any():
        raise SurfadError(f"fuse: {runs[0]} has no good validation images to standardise with")
    stats = []
    for run, scored in zip(runs, outputs):
        values = scored.maps[good]
        stats.append(MemberStats(os.path.relpath(Path(run).resolve(), out.resolve()),
                                 float(scored.scores[good].mean()), float(scored.scores[good].std()) or 1.0,
                                 float(values.mean()), float(values.std()) or 1.0))
    fused = fuse_scored(outputs, stats)
    strategy = strategy or default_strategy(bool((fused.labels == 1).any()))
    calibration = calibrate(fused.scores, fused.labels, fused.maps, fused.masks, strategy, split="val",
                            valid=fused.valid, roi_key=members[0].roi_key,
                            weights_sha256=[h for m in members for h in m.weights_sha256])
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(runs[0]) / bundle.SPLITS, out / bundle.SPLITS)
    atomic_write_json(out / bundle.ENSEMBLE, {"members": [asdict(s) for s in stats]})
    calibration.save(out / bundle.CALIBRATION)
    return out
