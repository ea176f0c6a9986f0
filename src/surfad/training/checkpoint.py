"""The `last` checkpoint: one atomic file with everything --resume needs.

checkpoints/last_state.pt holds the training weights, the optimiser, scheduler, RNG states, the
weight average and the TrainState, written atomically as one file, so a crash leaves either the
previous epoch's checkpoint or this one, never a mix. checkpoints/last.safetensors (the same
weights) is written after it, for `--checkpoint last`; resuming never reads it. The file is read
with torch.load(weights_only=True): tensors and plain containers only, no code is ever run.
"""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from surfad import bundle
from surfad.errors import SurfadError
from surfad.utils import atomic_write


@dataclass
class TrainState:
    """Where a run stands after an epoch: what --resume restores besides the weights, optimiser,
    scheduler, RNG and weight average."""

    epoch: int = 0  # epochs done
    best: float = -math.inf  # the best detection_value so far (model.safetensors)
    best_seg: float = -math.inf  # the best validation AUPRO so far (best_seg checkpoint)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (history.csv)
    elapsed: float = 0.0  # training seconds so far, over every session


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain tuples, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def save_last(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler | None, average: AveragedModel | None,
              state: TrainState) -> None:
    """Write the `last` checkpoint (see the module doc)."""
    full = {**asdict(state), "rng": rng_state(), "optimizer": optimizer.state_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "scheduler": scheduler.state_dict() if scheduler else None,
            **({} if average is None else {"average": average.state_dict()})}
    atomic_write(out / bundle.LAST_STATE, lambda tmp: save_state(full, tmp))
    bundle.save_weights(model, out / bundle.CHECKPOINTS["last"])


def save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save through a Python file, so a failed write (a full disk) is the file's OSError: torch's
    writer reports it as its own RuntimeError ("unexpected pos"), with the OSError as its context."""
    with path.open("wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


def read_last(out: Path) -> dict[str, Any]:
    """The checkpoint's contents, or an error naming the file when it cannot be used."""
    path = out / bundle.LAST_STATE
    try:
        full = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SurfadError(f"{path}: no checkpoint to resume from") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SurfadError(f"{path}: not a usable surfad checkpoint (corrupt, truncated or not written by surfad: "
                          f"{first[:200]}); it is never unpickled with code. Start a new run, or restore the file") from None
    keys = {"optimizer", "rng", *(f.name for f in fields(TrainState))}
    if not isinstance(full, dict) or not keys <= set(full):
        raise SurfadError(f"{path}: not a surfad checkpoint (missing {sorted(keys - set(full or {}))[:3]})")
    return full


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_state(full: dict[str, Any], path: Path, epochs: int) -> TrainState:
    """The TrainState of a checkpoint's contents, every field checked (a hand-edited or foreign file
    must not train from a negative epoch, or stop in a traceback): epoch a whole number from 0 to
    `epochs` (train.epochs); history a list of one dict per epoch done, numbered 1 to epoch, with
    numbers for values; best and best_seg numbers, finite or -inf (none yet); elapsed a finite number
    of seconds >= 0. SurfadError naming the file and the field otherwise."""
    def bad(name: str, expected: str) -> SurfadError:
        return SurfadError(f"{path}: field {name}={full[name]!r:.80}: {expected}; restore the file or start a new run")

    epoch, history = full["epoch"], full["history"]
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= epochs):
        raise bad("epoch", f"must be a whole number of epochs done, from 0 to train.epochs ({epochs})")
    if not isinstance(history, list) or len(history) != epoch:
        raise bad("history", f"must be a list of one row per epoch done ({epoch})")
    for number, row in enumerate(history, start=1):
        if not (isinstance(row, dict) and row.get("epoch") == number
                and all(isinstance(k, str) and is_number(v) for k, v in row.items())):
            raise SurfadError(f"{path}: field history, row {number}: must map names to numbers, with epoch {number} "
                              f"(got {row!r:.80}); restore the file or start a new run")
    for name in ("best", "best_seg"):
        value = full[name]
        if not (is_number(value) and (math.isfinite(value) or value == -math.inf)):
            raise bad(name, "must be a finite number, or -inf before any epoch was selected")
    if not (is_number(full["elapsed"]) and math.isfinite(full["elapsed"]) and full["elapsed"] >= 0):
        raise bad("elapsed", "must be a finite number of seconds >= 0")
    return TrainState(**{f.name: full[f.name] for f in fields(TrainState)})


def load_last(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler | None, average: AveragedModel | None,
              epochs: int) -> TrainState:
    """Restore what save_last wrote into the given objects; returns the run's TrainState (checked:
    check_state, with `epochs` the run's train.epochs)."""
    full = read_last(out)
    path = out / bundle.LAST_STATE
    state = check_state(full, path, epochs)
    try:
        if "model" in full:
            model.load_state_dict(full["model"])
        else:  # written before the weights moved into the state file
            bundle.load_weights(model, out / bundle.CHECKPOINTS["last"])
        optimizer.load_state_dict(full["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(full["scheduler"])
        if average is not None:
            average.load_state_dict(full["average"])
        set_rng_state(full["rng"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise SurfadError(f"{path}: does not match this run's model or settings ({str(err).splitlines()[0][:200]})") from None
    return state
