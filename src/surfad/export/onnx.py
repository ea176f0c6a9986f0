"""Export a run's inference graph to ONNX and score images with onnxruntime on CPU.

    surfad export runs/wood --format onnx        # writes runs/wood/model.onnx and runs/wood/export.json
    Detector.load("runs/wood", runtime="onnx")   # scores with onnxruntime, same results as torch

What the ONNX file computes (RUN/model.onnx):

- input ``image``: float32 (B, C, S, S), values in [0, 1], B dynamic; C and S are the run's
  ``data.channels`` and ``data.image_size`` (config.yaml, also in export.json).
- outputs ``anomaly_map`` (B, 1, S, S), higher = more anomalous, and ``score`` (B,): the model and
  its scoring head (smoothing, pooling, reduction) are both inside the graph.

Preprocessing is NOT in the graph; it is `surfad.data.transforms.preprocess`, the same function
training used: decode to uint8 RGB (or grayscale), convert to C channels (RGB -> gray with OpenCV's
RGB2GRAY weights; gray -> RGB by repeating), resize to S x S (cv2 INTER_AREA when S is smaller
than both sides, else INTER_LINEAR; aspect ratio not kept), divide by 255, channel-first. Any
normalisation (e.g. ImageNet mean/std) is inside the model. The decision rule (surfad.verdict: NG
iff score > threshold, or an OK / REVIEW / NG band) and the thresholds are read from
RUN/calibration.json, so re-calibrating needs no re-export. A region of interest is applied around
the graph, the same way for both runtimes: the image is filled outside it before preprocessing
(surfad.data.roi.InputFill) and the map and score are taken inside it (surfad.scoring.roi_score_fn).

Tiled runs (``data.tile_scale`` > 0): the graph is the same, for one S x S tile. The image is
scaled by tile_scale instead of squashed, cut into S x S tiles ``data.tile_stride`` apart
(surfad.data.tiles), and the tile maps are averaged where tiles overlap; the image score is the
scoring head's pooling and reduction on that whole map, or the largest tile score when the model
scores images itself (reduce "model"); `surfad.scoring.tiled_score_fn`, which `Detector` runs
around either runtime. export.json describes it under "tiling".

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` at opset 17. The
torch.export-based exporter (dynamo=True, opset >= 18) also converts unet_vae and recondiff, but is
about 8x slower to export and fixed the batch size of recondiff's Siamese segmentation net (it
specialises the batch dimension through ``torch.cat``/``chunk`` on dim 0), so it is not used.

Every export is checked before it replaces RUN/model.onnx: torch and onnxruntime must agree to
parity_bound (PARITY_TOLERANCE times the output scale when it exceeds 1) on random inputs and on
the run's validation images, at batch sizes other than the traced one. The figures go to RUN/export.json together with the versions and the SHA-256 of the
weights, which `onnx_score_fn` uses to refuse a model.onnx older than the run's weights.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surfad import __version__, bundle
from surfad.config import RunConfig
from surfad.data.io import read_image
from surfad.data.splits import Splits
from surfad.data.tiles import default_stride, pad_to_tile
from surfad.data.transforms import preprocess
from surfad.errors import BadInputError, SurfadError
from surfad.scoring import ScoreFn, torch_score_fn
from surfad.utils import atomic_write, atomic_write_json

EXPORT_JSON = "export.json"
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
PARITY_TOLERANCE = 1e-4  # max difference allowed between torch and onnxruntime, maps and scores, relative to
# max(1, the largest output magnitude): absolute for maps in [0, 1], relative for distances (patchcore, padim)

N_RANDOM = 3  # random inputs in the parity check (batch size differs from the traced batch of 2)
N_VAL = 8  # at most this many validation images in the parity check


def parity_bound(scale: float) -> float:
    """The largest torch/onnxruntime difference allowed for outputs whose magnitude reaches `scale`."""
    return PARITY_TOLERANCE * max(1.0, scale)


def export_onnx(run: str | Path, opset: int = 17) -> Path:
    """Export RUN's InferenceGraph to RUN/model.onnx (atomically) after a torch/onnxruntime parity check."""
    import onnx

    run = bundle.require_run(run)
    config, graph = bundle.load_graph(run)
    graph.to("cpu")
    channels, size = config.data.input_channels, config.data.image_size
    random_batch = np.random.default_rng(0).random((N_RANDOM, channels, size, size), dtype=np.float32)
    val_batches = _val_batches(run, channels, size, config.data.tile_scale)
    example = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    dims = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    parity: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # The legacy exporter warns that it is deprecated and that shapes become constants;
            # only the batch dimension may vary and the parity check below runs other batch sizes.
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    graph, (example,), str(tmp), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                    dynamic_axes=dims, opset_version=opset, do_constant_folding=True, dynamo=False,
                )
            except Exception as err:  # the exporter raises many types for unsupported operators
                raise SurfadError(f"{run}: ONNX export of model {config.model!r} at opset {opset} failed: {err}") from err
        onnx.checker.check_model(str(tmp))
        parity.update(check_parity(graph, onnx_score_fn(tmp, check_record=False), [random_batch, *val_batches]))
        allowed = parity_bound(parity["output_scale"])
        if not max(parity["max_abs_diff_map"], parity["max_abs_diff_score"]) <= allowed:  # NaN fails too
            raise SurfadError(
                f"{run}: exported model disagrees with torch (max abs diff map {parity['max_abs_diff_map']:.3g}, "
                f"score {parity['max_abs_diff_score']:.3g} > {allowed:.3g}, i.e. {PARITY_TOLERANCE} x max(1, output "
                f"scale {parity['output_scale']:.3g})); {bundle.ONNX} not written"
            )

    atomic_write(run / bundle.ONNX, write)
    atomic_write_json(run / EXPORT_JSON, export_record(run, config, opset, {
        "random_inputs": N_RANDOM, "val_images": len(val_batches), **parity, "tolerance": PARITY_TOLERANCE}))
    return run / bundle.ONNX


def export_record(run: Path, config: RunConfig, opset: int, parity: dict[str, Any]) -> dict[str, Any]:
    """export.json: what model.onnx computes, how images become its input, what it was made for
    (checked at load), its parity with torch and the versions that made it."""
    import onnx
    import onnxruntime

    channels, size = config.data.input_channels, config.data.image_size
    return {
        "format": "onnx",
        "file": bundle.ONNX,
        "opset": opset,
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
        "model": config.model,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", channels, size, size], "range": [0.0, 1.0]},
        "outputs": {"anomaly_map": ["batch", 1, size, size], "score": ["batch"]},
        "preprocessing": "surfad.data.transforms.preprocess: convert to channels, " + (
            "then see tiling" if config.data.tile_scale > 0 else
            "resize to image_size (INTER_AREA when smaller than both sides, else INTER_LINEAR), /255, CHW float32"),
        "decision": "NG iff score > threshold, or the review band [low, high] (calibration.json)",
        "tiling": _tiling(config),
        "region_of_interest": "applied around the graph when the run has one: before preprocessing, pixels outside "
                              "it take the value of the nearest pixel inside (data.roi_fill nearest, "
                              "surfad.data.roi.InputFill); the map is zero outside it and the score is taken inside "
                              "(surfad.scoring.roi_score_fn)",
        "inference": bundle.inference_settings(config),
        "parity": parity,
        "weights_sha256": _sha256(run / bundle.WEIGHTS),
        "surfad_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def onnx_score_fn(path: str | Path, threads: int = 0, check_record: bool = True) -> ScoreFn:
    """A ScoreFn running model.onnx with onnxruntime on CPU (threads 0 = onnxruntime's default).

    The session is shared; onnxruntime allows concurrent `run` calls on it. With check_record, a
    model.onnx whose export.json no longer fits the run is refused (see _check_record).
    """
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise SurfadError(f"{path}: ONNX model not found; create it with `surfad export RUN --format onnx`")
    if check_record:
        _check_record(path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(0, int(threads))
    options.log_severity_level = 3
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

    return score


def check_parity(graph: torch.nn.Module, score: ScoreFn, batches: list[np.ndarray]) -> dict[str, Any]:
    """Max abs differences of maps and scores between the torch graph and `score` over `batches`, and
    the largest magnitude of the torch outputs (which the tolerance is relative to)."""
    reference = torch_score_fn(graph, torch.device("cpu"))
    diff_map = diff_score = scale = 0.0
    for batch in batches:
        ref_map, ref_score = reference(batch)
        scale = max(scale, float(np.abs(ref_map).max()), float(np.abs(ref_score).max()))
        got_map, got_score = score(batch)
        if got_map.shape != ref_map.shape or got_score.shape != ref_score.shape:
            raise SurfadError(f"ONNX output shapes {got_map.shape}, {got_score.shape} differ from torch's "
                              f"{ref_map.shape}, {ref_score.shape} for a batch of {len(batch)}")
        diff_map = max(diff_map, float(np.abs(got_map - ref_map).max()))
        diff_score = max(diff_score, float(np.abs(got_score - ref_score).max()))
    return {"max_abs_diff_map": diff_map, "max_abs_diff_score": diff_score, "output_scale": scale}


def _tiling(config: RunConfig) -> dict[str, Any] | None:
    """How a tiled run turns whole images into graph inputs and back (None when not tiling)."""
    data = config.data
    if data.tile_scale <= 0:
        return None
    return {
        "scale": data.tile_scale,
        "tile": data.image_size,
        "stride": default_stride(data.image_size, data.tile_stride),
        "preprocessing": "scale the image by `scale` (INTER_AREA when < 1, else INTER_LINEAR), /255, CHW float32; "
                         "reflect-pad bottom/right to at least one tile; tiles `stride` apart, the last flush with "
                         "the edge (surfad.data.tiles)",
        "map": "mean of the graph's anomaly_map over overlapping tiles, cropped to the scaled image",
        "score": ("the largest tile score" if config.score is not None and config.score.reduce == "model" else
                  "the graph's pooling and reduction applied to that map") + " (surfad.scoring.tiled_score_fn)",
    }


def _val_batches(run: Path, channels: int, size: int, tile_scale: float = 0.0) -> list[np.ndarray]:
    """Up to N_VAL of the run's readable val images, preprocessed, one per batch (batch size 1); when
    tiling, the first tile of each."""
    try:
        samples = Splits.load(run / bundle.SPLITS).val[:N_VAL]
    except SurfadError:
        return []  # no readable splits.json (e.g. a bundle copied without it): random inputs only
    batches = []
    for sample in samples:
        try:
            image = preprocess(read_image(sample.path), size, channels, tile_scale)
            batches.append(pad_to_tile(image, size)[None, :, :size, :size] if tile_scale > 0 else image[None])
        except BadInputError:
            continue  # the dataset moved or changed since training
    return batches


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_record(path: Path) -> None:
    """SurfadError when export.json beside `path` records other weights than the run's
    model.safetensors (the run changed after export), or settings that config.yaml no longer
    describes (an edited image_size or model would crash onnxruntime, or score at the wrong size)."""
    run = path.parent
    record = run / EXPORT_JSON
    if not record.is_file():
        return
    try:
        recorded = json.loads(record.read_text())
        recorded_weights, recorded_settings = recorded.get("weights_sha256"), recorded.get("inference")
    except (OSError, ValueError, AttributeError):
        raise SurfadError(f"{record}: not a readable export record; re-run `surfad export {run}`") from None
    weights = run / bundle.WEIGHTS
    if recorded_weights and weights.is_file() and recorded_weights != _sha256(weights):
        raise SurfadError(f"{path}: exported from other weights than {weights} (the run changed after export); "
                          f"re-run `surfad export {run} --format onnx`")
    if (run / bundle.CONFIG).is_file():
        bundle.check_settings_match(recorded_settings, RunConfig.load(run / bundle.CONFIG), record)
