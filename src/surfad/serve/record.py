"""What the service has inspected: a log for traceability, and live figures to notice drift.

InspectionLog appends one JSON line per inspection to ``<folder>/inspections.jsonl`` (time, file
name, SHA-256 of the upload, size, verdict, score, threshold, regions) and keeps the uploaded
bytes, unchanged, under ``<folder>/images/<date>/`` for NG images (or all, or none). The kept
images are what a quality engineer reviews and labels; labelled defects can then go to a
validation folder, where they choose the shipped epoch and the threshold of the next model.

LiveStats counts verdicts since the service started and keeps the last scores, so ``GET /stats``
can set them beside the good validation images' score statistics: when most recent scores sit
above the validation p95, the line or the camera has changed, not only the parts. ``GET /metrics``
gives the same in the Prometheus text format, for monitoring systems.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from surfad.data.io import IMAGE_SUFFIXES
from surfad.utils import atomic_write_bytes
from surfad.verdict import OK, VERDICTS

LOG = "inspections.jsonl"
IMAGES = "images"
KEEP_IMAGES = ("ng", "all", "none")  # which uploads InspectionLog keeps
RECENT = 1000  # scores LiveStats keeps for its quantiles


def safe_name(name: str) -> str:
    """A file name reduced to letters, digits, '.', '-' and '_' (at most 80 characters), keeping an
    image suffix; an upload's name never chooses where a file is written."""
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80] or "upload"
    return stem + (suffix if suffix in IMAGE_SUFFIXES else ".img")


class InspectionLog:
    """Appends inspections to `folder`/inspections.jsonl and keeps the chosen uploads (thread-safe)."""

    def __init__(self, folder: str | Path, keep_images: str = "ng") -> None:
        if keep_images not in KEEP_IMAGES:
            raise ValueError(f"keep_images must be one of {', '.join(KEEP_IMAGES)}, got {keep_images!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep_images = keep_images
        self._lock = threading.Lock()

    def record(self, data: bytes, result: dict[str, Any], model: str) -> str:
        """Log one inspection (result: the /predict answer) and keep its image if chosen; returns its id."""
        now = datetime.now(timezone.utc)
        inspection_id = uuid.uuid4().hex
        image = None
        if self.keep_images == "all" or (self.keep_images == "ng" and result["verdict"] != OK):
            relative = Path(IMAGES) / now.strftime("%Y-%m-%d") / f"{now:%H%M%S}_{inspection_id[:8]}_{safe_name(result['filename'])}"
            (self.folder / relative).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.folder / relative, data)
            image = relative.as_posix()
        line = {
            "id": inspection_id,
            "time": now.isoformat(timespec="milliseconds"),
            "filename": result["filename"],
            "sha256": hashlib.sha256(data).hexdigest(),
            "width": result["width"],
            "height": result["height"],
            "verdict": result["verdict"],
            "score": result["score"],
            "threshold": result["threshold"],
            "regions": result["regions"],
            "model": model,
            "image": image,
        }
        with self._lock, (self.folder / LOG).open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")  # one write per line: a crash loses at most the line being written
        return inspection_id


class LiveStats:
    """Verdict counts since the service started and the last RECENT scores (thread-safe)."""

    def __init__(self, threshold: float, validation_good: dict[str, float]) -> None:
        self.threshold = threshold
        self.validation_good = validation_good
        self.started = datetime.now(timezone.utc)
        self.counts = {verdict: 0 for verdict in VERDICTS}
        self.scores: deque[float] = deque(maxlen=RECENT)
        self.seconds = 0.0  # total time spent answering /predict
        self._lock = threading.Lock()

    def add(self, verdict: str, score: float, seconds: float) -> None:
        with self._lock:
            self.counts[verdict] += 1
            self.scores.append(score)
            self.seconds += seconds

    def summary(self) -> dict[str, Any]:
        """Counts, NG rate, quantiles of the recent scores and, for comparison, of the good validation images."""
        with self._lock:
            counts, scores, seconds = dict(self.counts), np.array(self.scores, dtype=np.float64), self.seconds
        total = sum(counts.values())
        recent: dict[str, Any] = {"n": int(scores.size)}
        if scores.size:
            p50, p95, p99 = np.percentile(scores, [50, 95, 99])
            recent.update(p50=float(p50), p95=float(p95), p99=float(p99),
                          above_validation_p95=float(np.mean(scores > self.validation_good["p95"]))
                          if "p95" in self.validation_good else None)
        return {
            "since": self.started.isoformat(timespec="seconds"),
            "inspected": total,
            "ng": counts["NG"],
            "ng_rate": counts["NG"] / total if total else None,
            "review": counts["REVIEW"],
            "review_rate": counts["REVIEW"] / total if total else None,
            "counts": counts,
            "mean_ms": 1000 * seconds / total if total else None,
            "seconds": seconds,
            "threshold": self.threshold,
            "recent_scores": recent,
            "validation_good_scores": self.validation_good,
        }


def prometheus_text(summary: dict[str, Any]) -> str:
    """LiveStats.summary() in the Prometheus text exposition format (for GET /metrics)."""
    recent = summary["recent_scores"]
    lines = [
        "# HELP surfad_inspections_total Images inspected since the service started, by verdict.",
        "# TYPE surfad_inspections_total counter",
        *(f'surfad_inspections_total{{verdict="{v}"}} {n}' for v, n in summary["counts"].items()),
        "# HELP surfad_inspection_seconds_total Time spent answering /predict.",
        "# TYPE surfad_inspection_seconds_total counter",
        f"surfad_inspection_seconds_total {summary['seconds']:.6f}",
        "# HELP surfad_threshold The image score threshold: NG iff score > threshold.",
        "# TYPE surfad_threshold gauge",
        f"surfad_threshold {summary['threshold']}",
    ]
    if recent["n"]:
        lines += ["# HELP surfad_recent_score Quantiles of the last scores (up to 1000).",
                  "# TYPE surfad_recent_score gauge"]
        lines += [f'surfad_recent_score{{quantile="{q}"}} {recent[key]}' for q, key in
                  (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))]
        if recent.get("above_validation_p95") is not None:
            lines += [("# HELP surfad_recent_above_validation_p95 Share of the last scores above the good validation "
                       "images' 95th percentile (about 0.05 plus the defect rate while nothing has changed)."),
                      "# TYPE surfad_recent_above_validation_p95 gauge",
                      f"surfad_recent_above_validation_p95 {recent['above_validation_p95']}"]
    return "\n".join(lines) + "\n"
