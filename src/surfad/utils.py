"""Small helpers used across the package: atomic writes, JSON reads, seeding, threads, devices."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from surfad.errors import SurfadError


def second_run_seconds(work: Callable[[], object]) -> float:
    """Run `work` twice; the seconds the second run took (the first allocates and warms caches)."""
    work()
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (hex)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Stopwatch:
    """Seconds spent in named stages, lap by lap: lap(stage) charges the time since the last lap (or
    the start) to `stage`. Where a request's time goes (the service's per-stage metrics)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def charge(self, seconds: dict[str, float]) -> None:
        """Add stages timed elsewhere (another Stopwatch's), which end now."""
        for stage, spent in seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + spent
        self._last = time.perf_counter()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file: written files respect the umask
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"  # atomic writes go through hidden .NAME.XXXX.tmp siblings


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """An OSError in the block that names no file (a full disk's ENOSPC, raised by a write, names none), or
    names a temporary sibling of `path` (atomic_write's), names `path` instead: the file the user knows."""
    try:
        yield
    except OSError as err:
        if err.filename is not None and not Path(err.filename).name.startswith(f"{TEMP_PREFIX}{Path(path).name}."):
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write a file via a temporary sibling and rename, so a crash never leaves a half file (and a full
    disk leaves the previous version whole); the file gets the mode a plain open() would (the umask
    applies). An OSError names `path` (see naming)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        try:
            write(Path(tmp))
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def remove_stale_temp_files(folder: str | Path, names: Iterable[str] | None = None) -> int:
    """Delete the temporary files that interrupted atomic writes left in `folder` and below (call it
    only where no other writer is at work), or only those of the files `names` in `folder` itself
    (what one writer writes there); returns how many."""
    folder = Path(folder)
    if names is None:
        stale = folder.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}")
    else:
        stale = (tmp for name in names for tmp in folder.glob(f"{TEMP_PREFIX}{name}.*{TEMP_SUFFIX}"))
    removed = 0
    for tmp in stale if folder.is_dir() else []:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def exclusive(lock_file: str | Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if needed) for the block, or SurfadError(busy)
    at once when another process holds it. The lock goes with the process, even when it is killed."""
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SurfadError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def json_safe(obj: Any) -> Any:
    """obj with every non-finite float (an undefined metric) as None, so the JSON written is valid."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Valid JSON (non-finite floats as null; see json_safe)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def read_json(path: str | Path, what: str, parse: Callable[[Any], Any] | None = None) -> Any:
    """Parse a JSON file, then `parse` it (e.g. a from_dict) if given. A missing or unreadable
    file, or a SurfadError from `parse`, becomes a SurfadError that names the file."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SurfadError(f"{path}: {what} file not found") from None
    except (OSError, ValueError) as err:
        raise SurfadError(f"{path}: not a readable {what} file ({err})") from None
    if parse is None:
        return raw
    try:
        return parse(raw)
    except SurfadError as err:
        raise SurfadError(f"{path}: {err}") from None


def atomic_write_csv(path: str | Path, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> None:
    """Write dict rows as CSV, atomically; columns default to every key, in order of first appearance."""
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """Use `threads` CPU threads for torch (0 = one per available core)."""
    import torch

    torch.set_num_threads(threads if threads > 0 else max(1, len(os.sched_getaffinity(0))))


def resolve_device(name: str) -> torch.device:  # noqa: F821
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
