"""Batch prediction to files: heatmap, overlay and mask PNGs, predictions.jsonl/.csv and index.html
(the REVIEW, NG and OK images as overlay thumbnails, see surfad.report.write_gallery). For a run
that keeps training examples, each region of an NG or REVIEW image also gets a crop of itself and
one of its nearest good example, side by side in index.html (crops/).

Inputs are files, folders (searched recursively for images, hidden files and folders left out) or
glob patterns. Re-running into the same output folder skips images already in predictions.jsonl, so
an interrupted batch resumes. Unreadable files (a broken symbolic link among them) are reported in
errors.jsonl and skipped; the batch goes on, and they are tried again on the next run. errors.jsonl
lists each image whose last attempt failed, once, with that attempt's error: one that later
succeeds leaves it. A batch where no image at all could be read is an error.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from surfad.data.io import read_image
from surfad.data.layouts import expand_inputs
from surfad.detector import Detector
from surfad.errors import BadInputError, SurfadError
from surfad.report import write_gallery
from surfad.utils import (
    atomic_write_csv,
    atomic_write_text,
    exclusive,
    naming,
    remove_stale_temp_files,
    to_json,
)
from surfad.verdict import NG, REVIEW, VERDICTS, Prediction, Region
from surfad.visualize import render, write_png

JSONL = "predictions.jsonl"
CSV = "predictions.csv"
ERRORS = "errors.jsonl"
LOCK = ".predict.lock"  # held while a predict writes into the folder
CROPS = "crops"  # each explained region's crop and its nearest good example's


def output_stem(path: Path) -> str:
    """A file stem unique per input path (images of the same name in different folders do not clash)."""
    return f"{path.stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def predict_files(detector: Detector, inputs: Iterable[str], out: str | Path, threshold: float | None = None,
                  batch_size: int = 8, progress: bool = True, sort_into: str | Path | None = None) -> dict[str, int]:
    """Inspect every input image, writing results under `out`; with `sort_into`, also copy each image
    (unchanged, named as its outputs) into sort_into/OK, /REVIEW or /NG by its verdict, ready for a
    person to correct and for `surfad calibrate --good .../OK --defect .../NG`.

    Returns counts: images (found), already_done (skipped on resume), done, failed (unreadable or
    unsuited to the region of interest, listed in errors.jsonl and retried on the next run), ng and
    review (of those done now). SurfadError when every image found failed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out / LOCK, f"{out}: another `surfad predict` is writing into it"):
        remove_stale_temp_files(out)
        return _predict_into(detector, inputs, out, threshold, batch_size, progress, sort_into)


def _predict_into(detector: Detector, inputs: Iterable[str], out: Path, threshold: float | None, batch_size: int,
                  progress: bool, sort_into: str | Path | None) -> dict[str, int]:
    paths = expand_inputs(inputs, exclude=out)
    if sort_into is not None:
        paths = [p for p in paths if not p.is_relative_to(Path(sort_into).resolve())]  # not its own copies
        for verdict in VERDICTS:
            (Path(sort_into) / verdict).mkdir(parents=True, exist_ok=True)
    done = _done_paths(out / JSONL)
    todo = [p for p in paths if str(p) not in done]
    for sub in ("heatmaps", "overlays", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts = {"images": len(paths), "already_done": len(paths) - len(todo), "done": 0, "failed": 0, "ng": 0, "review": 0}
    failures = _failures(out / ERRORS, done)  # the failures of earlier runs, to be tried again
    bar = tqdm(total=len(todo), disable=not progress, unit="img", desc="predict", dynamic_ncols=True)
    try:
        with (out / JSONL).open("a") as results:
            for start in range(0, len(todo), batch_size):
                chunk, images = [], []
                for path in todo[start:start + batch_size]:
                    try:
                        image = read_image(path)
                        detector.check_image(image, str(path))  # e.g. another camera's shape than the ROI's
                        images.append(image)
                        chunk.append(path)
                    except BadInputError as err:
                        counts["failed"] += 1
                        failures[str(path)] = {"path": str(path), "error": str(err)}
                        bar.write(f"skipped: {err}", file=sys.stderr)
                        bar.update()
                if not chunk:
                    continue
                for path, image, pred in zip(chunk, images, detector.predict_batch(images, threshold)):
                    record = _write_outputs(detector, out, path, image, pred, sort_into)
                    with naming(out / JSONL):
                        results.write(to_json(record) + "\n")
                        results.flush()
                    failures.pop(str(path), None)
                    counts["done"] += 1
                    counts["ng"] += pred.verdict == NG
                    counts["review"] += pred.verdict == REVIEW
                    bar.update()
    finally:  # also when interrupted: what failed so far is listed
        bar.close()
        atomic_write_text(out / ERRORS, "".join(to_json(e) + "\n" for e in failures.values()))
    _write_summaries(out)
    if counts["failed"] and counts["failed"] == counts["images"]:
        raise SurfadError(f"none of the {counts['images']} input image(s) could be read; see {out / ERRORS}")
    return counts


def _write_outputs(detector: Detector, out: Path, path: Path, image: np.ndarray, pred: Prediction,
                   sort_into: str | Path | None) -> dict[str, Any]:
    """Write one image's heatmap, overlay and mask (and its sorted copy); its predictions.jsonl record."""
    stem = output_stem(path)
    files = {k: str(out / k / f"{stem}.png") for k in ("heatmaps", "overlays", "masks")}
    heat, picture = render(image, pred.anomaly_map, detector.calibration.pixel_threshold, pred.regions,
                           detector.roi_at(*image.shape[:2]))
    write_png(files["heatmaps"], heat)
    write_png(files["overlays"], picture)
    write_png(files["masks"], (pred.mask * 255).astype(np.uint8))
    if sort_into is not None:
        copy = Path(sort_into) / pred.verdict / f"{stem}{path.suffix}"
        with naming(copy):
            shutil.copy2(path, copy)
    record = {"path": str(path), **pred.to_dict(), "heatmap": files["heatmaps"], "overlay": files["overlays"],
              "mask": files["masks"]}
    crops = write_crops(detector, image, pred.regions, out / CROPS / stem)
    if crops:
        record["crops"] = crops
    return record


def _failures(errors: Path, done: set[str]) -> dict[str, dict[str, Any]]:
    """errors.jsonl of earlier runs by path, the last record of each, without the images done since (and
    without lines an interruption cut off)."""
    failures: dict[str, dict[str, Any]] = {}
    for line in errors.read_text().splitlines() if errors.is_file() else []:
        try:
            record = json.loads(line)
            failures[record["path"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return {path: record for path, record in failures.items() if path not in done}


def write_crops(detector: Detector, image: np.ndarray, regions: list[Region], stem: Path) -> list[dict[str, str] | None]:
    """For each region, PNG crops of it and of its nearest good example (STEM-rN.png, STEM-rN-good.png):
    their paths, or None for a region without a nearest good example; [] when no region has one."""
    crops: list[dict[str, str] | None] = []
    for n, region in enumerate(regions, 1):
        pair = detector.crops(image, region)
        if pair is None:
            crops.append(None)
            continue
        paths = {"region": f"{stem}-r{n}.png", "nearest_good": f"{stem}-r{n}-good.png"}
        write_png(paths["region"], pair[0])
        write_png(paths["nearest_good"], pair[1])
        crops.append(paths)
    return crops if any(crops) else []


def _done_paths(jsonl: Path) -> set[str]:
    """Paths already predicted. Lines that are not complete records (a last line cut off by an
    interruption) are dropped from the file, so those images are redone and appending stays valid."""
    if not jsonl.is_file():
        return set()
    text = jsonl.read_text()
    done = set()
    good_lines = []
    for line in text.splitlines():
        try:
            done.add(json.loads(line)["path"])
            good_lines.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    kept = "".join(line + "\n" for line in good_lines)
    if kept != text:
        atomic_write_text(jsonl, kept)
    return done


def _write_summaries(out: Path) -> None:
    """predictions.csv (one row per image; regions as a count and JSON, and their nearest good examples'
    image names) and the index.html page, from predictions.jsonl, so both cover every run of a resumed
    batch."""
    records = [json.loads(line) for line in (out / JSONL).read_text().splitlines() if line.strip()]
    write_gallery(out, records)
    rows = [{**{k: v for k, v in r.items() if k != "crops"}, "n_regions": len(r["regions"]),
             "regions": json.dumps(r["regions"]),
             "review": json.dumps(r["review"]) if r.get("review") else "",
             "nearest_good": "; ".join(g["nearest_good"]["image"] for g in r["regions"] if "nearest_good" in g)}
            for r in records]
    atomic_write_csv(out / CSV, rows, ["path", "score", "threshold", "review", "verdict", "n_regions", "regions",
                                       "nearest_good", "heatmap", "overlay", "mask"])
