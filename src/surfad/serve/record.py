"""What the service has inspected: a log for traceability, and live figures to notice drift.

InspectionLog appends one JSON line per inspection to ``<folder>/inspections.jsonl`` (time, file
name, SHA-256 of the upload, size, verdict, score, threshold, regions) and keeps the uploaded
bytes, unchanged, under ``<folder>/images/<date>/`` for NG and REVIEW images (or all, or none). The kept
images are what a quality engineer reviews and labels; labelled defects can then go to a
validation folder, where they choose the shipped epoch and the threshold of the next model.

LiveStats counts verdicts since the service started and keeps the last scores, so ``GET /stats``
can set them beside the good validation images' score statistics: when most recent scores sit
above the validation p95, the line or the camera has changed, not only the parts. It also keeps
where the requests' time went, stage by stage (STAGES), as histograms. ``GET /metrics`` gives the
same in the Prometheus text format, for monitoring systems.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import sqlite3
import threading
import uuid
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from surfad.data.io import IMAGE_SUFFIXES
from surfad.utils import FILE_MODE, atomic_write_bytes, to_json
from surfad.verdict import OK, VERDICTS

LOG = "inspections.jsonl"
IMAGES = "images"
KEEP_IMAGES = ("ng", "all", "none")  # which uploads InspectionLog keeps
RECENT = 1000  # scores LiveStats keeps for its quantiles
# Where a /predict request's time goes, in order (surfad.serve.app): reading the multipart upload, waiting for
# an inference slot, decoding, the detector's own stages (surfad.detector: preprocess, model, maps, regions, explain),
# the heatmap and overlay PNGs (only when asked), the inspection log (only with --record), the JSON answer.
STAGES = ("upload", "queue", "decode", "preprocess", "model", "maps", "regions", "explain", "images", "record",
          "respond")
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # seconds (le), then +Inf


def bucket_of(seconds: float) -> int:
    """The index of the first histogram bucket that holds `seconds` (len(BUCKETS) for +Inf)."""
    return next((i for i, le in enumerate(BUCKETS) if seconds <= le), len(BUCKETS))


def safe_name(name: str) -> str:
    """A file name reduced to letters, digits, '.', '-' and '_' (at most 80 characters), keeping an
    image suffix; an upload's name never chooses where a file is written."""
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80] or "upload"
    return stem + (suffix if suffix in IMAGE_SUFFIXES else ".img")


def append_line(path: Path, line: str, lock: threading.Lock) -> None:
    """Append one line to `path` as a single write under an exclusive file lock, so lines from several
    threads or worker processes never interleave; a crash loses at most the line being written."""
    data = (line + "\n").encode("utf-8")
    with lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            written = os.write(fd, data)
            if written != len(data):  # a full disk: say so rather than leave half a line unnoticed
                raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes of the log line were written")
        finally:
            os.close(fd)  # closing releases the lock


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
        append_line(self.folder / LOG, to_json(line), self._lock)
        return inspection_id


class LiveStats:
    """Verdict counts since the service started and the last RECENT scores, in this process (thread-safe)."""

    def __init__(self, threshold: float, validation_good: dict[str, float]) -> None:
        self.threshold = threshold
        self.validation_good = validation_good
        self.started = datetime.now(timezone.utc)
        self.counts = {verdict: 0 for verdict in VERDICTS}
        self.scores: deque[float] = deque(maxlen=RECENT)
        self.seconds = 0.0  # total time spent answering /predict
        self.stages: dict[str, list[float]] = {}  # stage -> [count per bucket..., sum of seconds]
        self._lock = threading.Lock()

    def add(self, verdict: str, score: float, seconds: float, stages: dict[str, float] | None = None) -> None:
        """One answered inspection: its verdict, score, answer time and the seconds of each of its stages."""
        with self._lock:
            self.counts[verdict] += 1
            self.scores.append(score)
            self.seconds += seconds
            for stage, spent in (stages or {}).items():
                counts = self.stages.setdefault(stage, [0.0] * (len(BUCKETS) + 2))
                counts[bucket_of(spent)] += 1
                counts[-1] += spent

    def summary(self) -> dict[str, Any]:
        with self._lock:
            counts, scores, seconds = dict(self.counts), list(self.scores), self.seconds
            stages = {stage: list(values) for stage, values in self.stages.items()}
        return summarise(counts, scores, seconds, self.threshold, self.validation_good, self.started, stages)


class SharedStats:
    """The same figures for a service of several worker processes: kept in one SQLite file that every
    worker adds to (one short transaction per inspection), so /stats and /metrics report the whole
    service whichever worker answers."""

    def __init__(self, path: str | Path, threshold: float, validation_good: dict[str, float],
                 started: datetime | None = None) -> None:
        self.threshold = threshold
        self.validation_good = validation_good
        self.started = started or datetime.now(timezone.utc)
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # Live figures of a running service, rebuilt at every start: a crash may lose the last ones, so
            # commits need not wait for the disk (each would cost an fsync per inspection).
            self._db.execute("PRAGMA synchronous = OFF")
            self._db.executescript("""
                CREATE TABLE IF NOT EXISTS counts (verdict TEXT PRIMARY KEY, n INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS recent (id INTEGER PRIMARY KEY AUTOINCREMENT, score REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS stages (stage TEXT NOT NULL, bucket INTEGER NOT NULL, n REAL NOT NULL,
                                                   PRIMARY KEY (stage, bucket));
            """)

    def add(self, verdict: str, score: float, seconds: float, stages: dict[str, float] | None = None) -> None:
        """As LiveStats.add, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO counts VALUES (?, 1) ON CONFLICT(verdict) DO UPDATE SET n = n + 1",
                                 (verdict,))
                last = self._db.execute("INSERT INTO recent (score) VALUES (?)", (score,)).lastrowid
                self._db.execute("DELETE FROM recent WHERE id <= ?", (last - RECENT,))
                self._db.execute("INSERT INTO totals VALUES ('seconds', ?) "
                                 "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (seconds,))
                rows = [(stage, bucket, 1.0) for stage, spent in (stages or {}).items() for bucket in [bucket_of(spent)]]
                rows += [(stage, -1, spent) for stage, spent in (stages or {}).items()]  # bucket -1: the sum
                self._db.executemany("INSERT INTO stages VALUES (?, ?, ?) "
                                     "ON CONFLICT(stage, bucket) DO UPDATE SET n = n + excluded.n", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def summary(self) -> dict[str, Any]:
        with self._lock:
            counts = {verdict: 0 for verdict in VERDICTS}
            counts.update(dict(self._db.execute("SELECT verdict, n FROM counts")))
            scores = [row[0] for row in self._db.execute("SELECT score FROM recent ORDER BY id")]
            seconds = (self._db.execute("SELECT value FROM totals WHERE name = 'seconds'").fetchone() or (0.0,))[0]
            stages: dict[str, list[float]] = {}
            for stage, bucket, n in self._db.execute("SELECT stage, bucket, n FROM stages"):
                stages.setdefault(stage, [0.0] * (len(BUCKETS) + 2))[bucket] = n  # -1: the sum, last
        return summarise(counts, scores, seconds, self.threshold, self.validation_good, self.started, stages)


def summarise(counts: dict[str, int], scores: list[float], seconds: float, threshold: float,
              validation_good: dict[str, float], started: datetime,
              stages: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Counts, NG and REVIEW rates, quantiles of the recent scores and, for comparison, of the good
    validation images, and the mean milliseconds of each stage: what GET /stats answers; with
    "stage_histograms" (stage -> count per bucket of BUCKETS and +Inf, then the sum of seconds) for
    GET /metrics."""
    stages = {stage: stages[stage] for stage in STAGES if stage in (stages or {})}
    recent_scores = np.array(scores, dtype=np.float64)
    total = sum(counts.values())
    recent: dict[str, Any] = {"n": int(recent_scores.size)}
    if recent_scores.size:
        p50, p95, p99 = np.percentile(recent_scores, [50, 95, 99])
        recent.update(p50=float(p50), p95=float(p95), p99=float(p99),
                      above_validation_p95=float(np.mean(recent_scores > validation_good["p95"]))
                      if "p95" in validation_good else None)
    return {
        "since": started.isoformat(timespec="seconds"),
        "inspected": total,
        "ng": counts["NG"],
        "ng_rate": counts["NG"] / total if total else None,
        "review": counts["REVIEW"],
        "review_rate": counts["REVIEW"] / total if total else None,
        "counts": counts,
        "mean_ms": 1000 * seconds / total if total else None,
        "seconds": seconds,
        "threshold": threshold,
        "recent_scores": recent,
        "validation_good_scores": validation_good,
        "stage_ms": {stage: 1000 * values[-1] / max(1, sum(values[:-1])) for stage, values in stages.items()},
        "stage_histograms": stages,
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
    if summary["stage_histograms"]:
        lines += ["# HELP surfad_stage_seconds Time of each stage of a /predict request (upload, queue, decode, "
                  "preprocess, model, maps, regions, explain, images, record, respond).",
                  "# TYPE surfad_stage_seconds histogram"]
        for stage, values in summary["stage_histograms"].items():
            cumulative = np.cumsum(values[:-1])
            lines += [f'surfad_stage_seconds_bucket{{stage="{stage}",le="{le}"}} {int(n)}'
                      for le, n in zip([*map(str, BUCKETS), "+Inf"], cumulative)]
            lines += [f'surfad_stage_seconds_sum{{stage="{stage}"}} {values[-1]:.6f}',
                      f'surfad_stage_seconds_count{{stage="{stage}"}} {int(cumulative[-1])}']
    return "\n".join(lines) + "\n"
