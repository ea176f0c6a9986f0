"""Calibrate and evaluate a trained run on a split of a dataset.

Splits are taken from the run's own splits.json when the data path is the one it was trained on
(so the test set is exactly the one held out), or rebuilt with the run's data settings for another
dataset. Split names: train, val, test, all (every image of the dataset), and for small datasets
test_a / test_b: two seeded, label-stratified halves of test (calibrate on one, report on the other).
Instead of a split, both take any labelled samples, such as surfad.data.layouts.folder_samples: a folder of good images
and one of defective ones outside any dataset layout (for instance inspections reviewed by people).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from surfad import bundle
from surfad.calibrate import Calibration, calibrate, trade_offs
from surfad.config import RunConfig
from surfad.data.io import read_image
from surfad.data.samples import Sample
from surfad.data.splits import Splits, make_splits
from surfad.detector import Detector
from surfad.errors import SurfadError
from surfad.metrics import band_rates, image_metrics, per_type_auroc, pixel_metrics
from surfad.report import worst_cases, write_report
from surfad.utils import atomic_write_bytes, atomic_write_csv, atomic_write_json
from surfad.verdict import peak_region, verdict
from surfad.visualize import encode_png, render

HALVES = {"test_a": 0, "test_b": 1}


def run_splits(config: RunConfig, run: Path, data: str | None, layout: str | None = None) -> Splits:
    """The run's saved splits, or splits of another dataset built with the run's data settings
    (its layout unless `layout` is given; no train list, which names the training dataset's files)."""
    saved = Splits.load(run / bundle.SPLITS)
    if data is None or Path(data).resolve() == Path(saved.root).resolve():
        return saved
    return make_splits(replace(config.data, path=str(data), train_list=None, layout=layout or config.data.layout))


def select_split(splits: Splits, name: str, seed: int = 0) -> list[Sample]:
    """Samples of split `name` (see the module docstring for the names)."""
    if name == "all":
        return splits.train + splits.val + splits.test
    if name in HALVES:
        test = splits.get("test")
        rng = np.random.default_rng(seed)
        half: list[Sample] = []
        for label in (0, 1):
            members = [s for s in test if s.label == label]
            order = rng.permutation(len(members))
            half += [members[j] for position, j in enumerate(order) if position % 2 == HALVES[name]]
        return sorted(half, key=lambda s: str(s.path))
    return splits.get(name)


def images_to_score(config: RunConfig, run: Path, data: str | None, layout: str | None, split: str,
                    samples: list[Sample] | None) -> tuple[list[Sample], int]:
    """The split's samples, or the given ones, and how many of the run's training defects were left out
    of them (data.train_defects: trained on, so never scored; said on stderr). A warning on stderr
    when given samples include the run's good training images (their scores are lower than those of
    new images)."""
    saved = Splits.load(run / bundle.SPLITS)
    trained_defects = {s.path.resolve() for s in saved.train_defects}
    if samples is None:
        samples = select_split(run_splits(config, run, data, layout), split, config.data.split_seed)
    else:
        trained = {s.path.resolve() for s in saved.train}
        seen = sum(s.path.resolve() in trained for s in samples)
        if seen:
            print(f"warning: {seen} of these {len(samples)} images were trained on; their scores are lower than "
                  "those of new images", file=sys.stderr)
    kept = [s for s in samples if s.path.resolve() not in trained_defects]
    if trained_defects:
        print(f"left out the {len(trained_defects)} defective images the run was trained on (data.train_defects): "
              f"{len(samples) - len(kept)} of them were in these images", file=sys.stderr)
    return kept, len(trained_defects)


def calibrate_run(run: str | Path, data: str | None = None, split: str = "val", strategy: str = "f1",
                  layout: str | None = None, checkpoint: str = "best_detect", progress: bool = False,
                  samples: list[Sample] | None = None, roi: str | Path | None = None,
                  review: str | None = None) -> Calibration:
    """Choose thresholds on a split (or on `samples`, which `split` then names) and store them in the
    run's calibration.json (the one it replaces goes to calibrations/); progress: show a bar while
    scoring; review: "LOW,HIGH" rules of an OK / REVIEW / NG band (calibrate.review_band)."""
    run = Path(run)
    previous = run / bundle.CALIBRATION
    set_aside_if_corrupt(previous)
    detector = Detector.load(run, checkpoint=checkpoint, calibrated=False, roi=roi)  # it may not be calibrated yet
    samples, _ = images_to_score(detector.config, run, data, layout, split, samples)
    scored, _ = detector.score_samples(samples, progress=progress)
    calibration = calibrate(scored.scores, scored.labels, scored.maps, scored.masks, strategy, split=split,
                            valid=scored.valid, review=review, roi_key=detector.roi_key,
                            weights_sha256=detector.weights_sha256)
    if previous.is_file():  # kept, so a threshold replaced by mistake can be put back
        atomic_write_bytes(kept_calibration_path(run), previous.read_bytes())
    calibration.save(previous)
    return calibration


def kept_calibration_path(run: Path, note: str = "") -> Path:
    """Where a replaced calibration.json is kept: calibrations/calibration_<UTC time><note>.json."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return run / bundle.CALIBRATION_HISTORY / f"calibration_{stamp}{note}.json"


def set_aside_if_corrupt(path: Path) -> None:
    """Move a calibration.json that cannot be used (unreadable, a missing field, a non-finite threshold)
    into calibrations/, saying so on stderr, so that calibrating replaces it instead of refusing it."""
    if not path.is_file():
        return
    try:
        Calibration.load(path)
    except SurfadError as err:
        kept = kept_calibration_path(path.parent, "_corrupt")
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, kept)
        print(f"warning: {err}; moved it to {kept} and calibrating anew", file=sys.stderr)


def evaluate_run(run: str | Path, data: str | None = None, split: str = "test", out: str | Path | None = None,
                 runtime: str = "torch", threshold: float | None = None, layout: str | None = None,
                 checkpoint: str = "best_detect", progress: bool = False,
                 samples: list[Sample] | None = None, roi: str | Path | None = None) -> dict[str, Any]:
    """Metrics, per-image scores and an HTML report for a split (or for `samples`, which `split` then
    names); returns the metrics. progress: show a bar while scoring. roi: see Detector.load (pixel
    metrics count only its pixels)."""
    detector = Detector.load(run, runtime=runtime, checkpoint=checkpoint, roi=roi)
    out = Path(out) if out is not None else Path(run) / f"eval_{split}"
    samples, left_out = images_to_score(detector.config, detector.run, data, layout, split, samples)
    scored, rate = detector.score_samples(samples, progress=progress)
    t, review = detector.decision(threshold)
    metrics: dict[str, Any] = image_metrics(scored.scores, scored.labels, t)
    if scored.masks.any():
        metrics.update(pixel_metrics(scored.maps, scored.masks, valid=scored.valid))
    metrics["trade_offs"] = trade_offs(scored.scores, scored.labels)
    if review is not None:
        metrics["review_band"] = band_rates(scored.scores, scored.labels, *review)
    metrics["per_type_image_auroc"] = per_type_auroc(scored.scores, scored.labels, [s.defect_type for s in samples])
    metrics.update(split=split, n_images=len(samples), images_per_s=rate, runtime=runtime, model=detector.name,
                   checkpoint=checkpoint, left_out_train_defects=left_out,
                   threshold_strategy="given" if threshold is not None else detector.calibration.strategy)
    records = [
        {"path": str(s.path), "label": int(s.label), "defect_type": s.defect_type, "score": float(score),
         "verdict": verdict(float(score), t, review)}
        for s, score in zip(samples, scored.scores)
    ]
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_csv(out / "per_image.csv", records, ["path", "label", "defect_type", "score", "verdict"])
    overlays, explained = _worst_cases_shown(detector, records, samples, threshold)
    write_report(out, records, metrics, title=f"{detector.name} on {split} ({len(samples)} images)",
                 overlays=overlays, history=bundle.read_history(detector.run), explained=explained)
    return metrics


def summary_line(metrics: dict[str, Any]) -> str:
    """One line with the headline metrics, for terminals and logs."""
    keys = ("image_auroc", "image_ap", "pixel_auroc", "aupro", "accuracy", "recall", "fpr")
    shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
    per_type = metrics.get("per_type_image_auroc") or {}
    if len(per_type) > 1:  # with one type it repeats image_auroc
        shown += "; image AUROC by type: " + ", ".join(f"{t} {v:.3f}" for t, v in per_type.items())
    return f"{metrics.get('split', '')}: {metrics.get('n_images', '?')} images: {shown}"


def _worst_cases_shown(detector: Detector, records: list[dict], samples: list[Sample], threshold: float | None,
                       ) -> tuple[dict[str, bytes], dict[str, list[tuple[dict, bytes, bytes]]]]:
    """For exactly the records the report shows as worst cases: the overlay with the regions of the
    image's inspection, and each region's crop beside its nearest good example's (a run that keeps
    training examples). An image inspected as OK has no region; its map's peak is explained instead,
    since a missed defect is what the report is read for."""
    good, defect = worst_cases(records)
    index = {r["path"]: i for i, r in enumerate(records)}
    overlays, explained = {}, {}
    for record in good + defect:
        image = read_image(samples[index[record["path"]]].path, detector.channels)
        pred = detector.predict_batch([image], threshold)[0]
        inside = detector.roi_at(*image.shape[:2])
        if not pred.regions:
            pred.regions = [peak_region(pred.anomaly_map, inside)]
            detector.explain([image], [pred.regions])
        overlays[record["path"]] = encode_png(render(image, pred.anomaly_map, detector.calibration.pixel_threshold,
                                                     pred.regions, inside)[1])
        pairs = [(region.to_dict(), crops) for region in pred.regions if (crops := detector.crops(image, region))]
        explained[record["path"]] = [(region, encode_png(a), encode_png(b)) for region, (a, b) in pairs]
    return overlays, explained
