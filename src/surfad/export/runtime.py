"""Scoring with an exported model: the onnxruntime session, and the check that an exported file is
the one its run's export.json describes (see surfad.export.onnx for what the files compute).

Each ONNX runtime reads one file: ``onnx`` RUN/model.onnx, ``onnx-int8`` RUN/model.int8.onnx.
export.json records the SHA-256 of each file and of the model.safetensors they were exported
from; a file without that record, or whose hash differs from it, is refused at load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from surfad import bundle
from surfad.config import RunConfig
from surfad.errors import SurfadError
from surfad.scoring import DescribedFn, ScoreFn
from surfad.utils import sha256_file

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
DESCRIPTORS_NAME = "descriptors"  # the third output of graphs exported with the model's descriptors
RUNTIME_FILES = {"onnx": bundle.ONNX, "onnx-int8": bundle.ONNX_INT8}  # the file each ONNX runtime reads
INT8 = "int8"  # export.json's entry for model.int8.onnx


def onnx_score_fn(path: str | Path, threads: int = 0, busy_wait: bool = True) -> ScoreFn:
    """A ScoreFn running an ONNX model with onnxruntime on CPU (threads 0 = onnxruntime's default).
    busy_wait=False: the inference threads sleep between operators instead of spinning, which leaves
    the cores to the other work of a process that does more than inference (the service).

    The session is shared; onnxruntime allows concurrent `run` calls on it. Nothing is checked
    against the run here: loading a run does that first (exported_weights).
    """
    return onnx_score_fns(path, threads, busy_wait)[0]


def onnx_score_fns(path: str | Path, threads: int = 0,
                   busy_wait: bool = True) -> tuple[ScoreFn, DescribedFn | None]:
    """onnx_score_fn, and a DescribedFn on the same session when the graph also outputs the model's
    descriptors (DESCRIPTORS_NAME: exported for models whose descriptors are their features), else None."""
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise SurfadError(f"{path}: ONNX model not found; create it with `surfad export RUN --format onnx`")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(0, int(threads))
    options.log_severity_level = 3
    if not busy_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for invalid files
        raise SurfadError(f"{path}: not a loadable ONNX model ({err})") from None
    names = [i.name for i in session.get_inputs()]
    if names != [INPUT_NAME]:
        raise SurfadError(f"{path}: expected one input named {INPUT_NAME!r}, found {names}")

    def score(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return amap[:, 0], scores

    def describe(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        amap, scores, descriptors = session.run([*OUTPUT_NAMES, DESCRIPTORS_NAME],
                                                {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return amap[:, 0], scores, descriptors

    described = DESCRIPTORS_NAME in {o.name for o in session.get_outputs()}
    return score, describe if described else None


def exported_weights(path: Path) -> str:
    """The SHA-256 of the weights the exported model `path` (model.onnx or model.int8.onnx) was made
    from, after checking that export.json beside it describes this very file (its hash) and the
    settings config.yaml still gives; SurfadError naming the file otherwise. Hashes `path` once."""
    run = path.parent
    record_path = run / bundle.EXPORT
    reexport = f"re-export with `surfad export {run} --format onnx`"
    if not path.is_file():
        hint = " --quantize int8" if path.name == bundle.ONNX_INT8 else ""
        raise SurfadError(f"{path}: not found; create it with `surfad export {run} --format onnx{hint}`")
    if not record_path.is_file():
        raise SurfadError(f"{path}: no {bundle.EXPORT} beside it, so nothing says which weights it holds; {reexport}")
    try:
        record = json.loads(record_path.read_text())
        weights, settings = record.get("weights_sha256"), record.get("inference")
        int8 = path.name == bundle.ONNX_INT8
        expected = (record.get(INT8) or {}).get("sha256") if int8 else record.get("onnx_sha256")
    except (OSError, ValueError, AttributeError):
        raise SurfadError(f"{record_path}: not a readable export record; {reexport}") from None
    if not expected or not weights:
        what = "an INT8 model (it was not made or not kept)" if int8 else f"{path.name} (an older surfad wrote it)"
        raise SurfadError(f"{record_path}: records no hash of {what}; {reexport}" + (" --quantize int8" if int8 else ""))
    if sha256_file(path) != expected:
        raise SurfadError(f"{path}: not the file {record_path} describes (copied from another run, or changed after "
                          f"export); {reexport}")
    if (run / bundle.CONFIG).is_file():
        bundle.check_settings_match(settings, RunConfig.load(run / bundle.CONFIG), record_path)
    return weights
