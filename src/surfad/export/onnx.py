"""Export a run's inference graph to ONNX and score images with onnxruntime on CPU.

    surfad export runs/wood --format onnx        # writes runs/wood/model.onnx and runs/wood/export.json
    surfad export runs/wood --quantize int8      # and model.int8.onnx, checked against model.onnx
    Detector.load("runs/wood", runtime="onnx")   # scores with onnxruntime, same results as torch

What the ONNX file computes (RUN/model.onnx):

- input ``image``: float32 (B, C, S, S), values in [0, 1], B dynamic; C and S are the run's
  ``data.channels`` and ``data.image_size`` (config.yaml, also in export.json).
- outputs ``anomaly_map`` (B, 1, S, S), higher = more anomalous, and ``score`` (B,): the model and
  its scoring head (smoothing, pooling, reduction) are both inside the graph. Models whose
  descriptors are their features (padim, patchcore: AnomalyModel.descriptors_from_features) also
  output ``descriptors`` (B, d, h, w), which the nearest good example of a region is looked up with
  (surfad.detector.examples), so an inspection that explains its regions needs no second pass.

Preprocessing is NOT in the graph; it is `surfad.data.transforms.preprocess`, the same function
training used: decode to uint8 RGB (or grayscale), convert to C channels (RGB -> gray with OpenCV's
RGB2GRAY weights; gray -> RGB by repeating), resize to S x S (cv2 INTER_AREA when S is smaller
than both sides, else INTER_LINEAR; aspect ratio not kept), divide by 255, channel-first. Any
normalisation (e.g. ImageNet mean/std) is inside the model. The decision rule (surfad.verdict: NG
iff score > threshold, or an OK / REVIEW / NG band) and the thresholds are read from
RUN/calibration.json, so re-calibrating needs no re-export. A region of interest is applied around
the graph, the same way for every runtime: the image is filled outside it before preprocessing
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
specialises the batch dimension through ``torch.cat``/``chunk`` on dim 0), so it is not used. The
exporter writes a Pad's optional fill value as an empty input, which keeps onnxruntime from folding
the backbone's "SAME" pads into its convolutions; it is dropped (the fill stays 0), which makes the
pretrained models' float inference about 1.4x faster.

Every export is checked before it replaces RUN/model.onnx: torch and onnxruntime must agree to
parity_bound (PARITY_TOLERANCE times the output scale when it exceeds 1) on random inputs and on
the run's validation images, at batch sizes other than the traced one. The figures go to
RUN/export.json together with the versions and the SHA-256 of the weights exported and of
model.onnx itself: loading refuses a model.onnx without export.json, one whose hash is not the
recorded one (copied from another run), and one exported from other weights than calibration.json
was calibrated with (surfad.export.runtime, surfad.detector). A re-export first removes the
temporary files an interrupted export left, and a model.int8.onnx of an earlier export.

INT8 (``--quantize int8``, models on a pretrained backbone): surfad.export.int8 quantises the
backbone's convolutions with onnxruntime's static quantisation, calibrated on the run's good
training images, keeps the distance part and the scoring head in float, and keeps
model.int8.onnx only when it changes at most INT8_MAX_VERDICT_CHANGES of the validation images'
verdicts at the calibrated thresholds; its agreement with model.onnx goes to export.json under "int8".
"""

from __future__ import annotations

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
from surfad.export.runtime import DESCRIPTORS_NAME, INPUT_NAME, INT8, OUTPUT_NAMES, onnx_score_fn, onnx_score_fns
from surfad.scoring import DescribedFn, DescribedGraph, InferenceGraph, ScoreFn, torch_described_fn, torch_score_fn
from surfad.utils import atomic_write, atomic_write_json, remove_stale_temp_files, sha256_file

__all__ = ["EXPORT_JSON", "QUANTIZE", "check_parity", "export_onnx", "onnx_score_fn", "parity_bound"]

EXPORT_JSON = bundle.EXPORT
QUANTIZE = ("int8",)  # what --quantize accepts
PARITY_TOLERANCE = 1e-4  # max difference allowed between torch and onnxruntime, maps and scores, relative to
# max(1, the largest output magnitude): absolute for maps in [0, 1], relative for distances (patchcore, padim)

N_RANDOM = 3  # random inputs in the parity check (batch size differs from the traced batch of 2)
N_VAL = 8  # at most this many validation images in the parity check
WRITTEN = (bundle.ONNX, bundle.ONNX_INT8, EXPORT_JSON)  # the files an export writes (atomically)


def parity_bound(scale: float) -> float:
    """The largest torch/onnxruntime difference allowed for outputs whose magnitude reaches `scale`."""
    return PARITY_TOLERANCE * max(1.0, scale)


def export_onnx(run: str | Path, opset: int = 17, quantize: str | None = None) -> Path:
    """Export RUN's InferenceGraph to RUN/model.onnx (atomically) after a torch/onnxruntime parity check;
    quantize "int8": also RUN/model.int8.onnx, kept only when its verdicts agree (surfad.export.int8)."""
    import onnx

    if quantize is not None and quantize not in QUANTIZE:
        raise SurfadError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZE)}")
    run = bundle.require_run(run)
    remove_stale_temp_files(run, WRITTEN)  # what an export killed mid-write left
    config, graph, weights_sha256 = bundle.load_hashed_graph(run)
    graph.to("cpu")
    if quantize is not None:
        from surfad.export.int8 import check_quantizable

        check_quantizable(run, config)  # before the float export, so a refusal costs nothing
    channels, size = config.data.input_channels, config.data.image_size
    random_batch = np.random.default_rng(0).random((N_RANDOM, channels, size, size), dtype=np.float32)
    val_batches = _val_batches(run, channels, size, config.data.tile_scale)
    example = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    described = graph.model.descriptors_from_features  # then the graph also outputs them: see the module docstring
    outputs = [*OUTPUT_NAMES, DESCRIPTORS_NAME] if described else list(OUTPUT_NAMES)
    dims = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    parity: dict[str, Any] = {}
    hashes: dict[str, str] = {}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # The legacy exporter warns that it is deprecated and that shapes become constants;
            # only the batch dimension may vary and the parity check below runs other batch sizes.
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    DescribedGraph(graph) if described else graph, (example,), str(tmp), input_names=[INPUT_NAME],
                    output_names=outputs,
                    dynamic_axes=dims, opset_version=opset, do_constant_folding=True, dynamo=False,
                )
            except OSError:  # e.g. a full disk: atomic_write names the file
                raise
            except Exception as err:  # the exporter raises many types for unsupported operators
                raise SurfadError(f"{run}: ONNX export of model {config.model!r} at opset {opset} failed: {err}") from err
        drop_empty_pad_values(tmp)
        onnx.checker.check_model(str(tmp))
        parity.update(check_parity(graph, *onnx_score_fns(tmp), [random_batch, *val_batches]))
        allowed = parity_bound(parity["output_scale"])
        if not max(parity["max_abs_diff_map"], parity["max_abs_diff_score"]) <= allowed:  # NaN fails too
            raise SurfadError(
                f"{run}: exported model disagrees with torch (max abs diff map {parity['max_abs_diff_map']:.3g}, "
                f"score {parity['max_abs_diff_score']:.3g} > {allowed:.3g}, i.e. {PARITY_TOLERANCE} x max(1, output "
                f"scale {parity['output_scale']:.3g})); {bundle.ONNX} not written"
            )
        if described and not parity["max_abs_diff_descriptors"] <= parity_bound(parity["descriptor_scale"]):
            raise SurfadError(
                f"{run}: exported model's descriptors disagree with torch (max abs diff "
                f"{parity['max_abs_diff_descriptors']:.3g} > {parity_bound(parity['descriptor_scale']):.3g}, i.e. "
                f"{PARITY_TOLERANCE} x max(1, their scale {parity['descriptor_scale']:.3g})); {bundle.ONNX} not written"
            )
        hashes["onnx"] = sha256_file(tmp)

    atomic_write(run / bundle.ONNX, write)
    (run / bundle.ONNX_INT8).unlink(missing_ok=True)  # made from an earlier model.onnx
    record = export_record(config, opset, {
        "random_inputs": N_RANDOM, "val_images": len(val_batches), **parity, "tolerance": PARITY_TOLERANCE},
        weights_sha256, hashes["onnx"], descriptors=described)
    if quantize is None:
        atomic_write_json(run / EXPORT_JSON, record)
        return run / bundle.ONNX
    from surfad.export.int8 import quantize_int8

    try:
        record[INT8] = quantize_int8(run, config)
    finally:  # the float model is usable whether or not the INT8 one is kept
        atomic_write_json(run / EXPORT_JSON, record)
    return run / bundle.ONNX


def drop_empty_pad_values(path: Path) -> None:
    """Remove the empty optional fill-value input the exporter gives Pad nodes (the fill stays 0), so
    onnxruntime folds constant pads into the convolution after them (see the module docstring)."""
    import onnx

    model = onnx.load(str(path))
    changed = False
    for node in model.graph.node:
        if node.op_type == "Pad" and len(node.input) == 3 and node.input[2] == "":
            del node.input[2]
            changed = True
    if changed:
        onnx.save(model, str(path))


def export_record(config: RunConfig, opset: int, parity: dict[str, Any], weights_sha256: str,
                  onnx_sha256: str, descriptors: bool = False) -> dict[str, Any]:
    """export.json: what model.onnx computes, how images become its input, what it was made for
    (checked at load), the hashes that bind it to its weights, its parity with torch and the versions
    that made it."""
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
        "outputs": {"anomaly_map": ["batch", 1, size, size], "score": ["batch"],
                    **({DESCRIPTORS_NAME: ["batch", "d", "h", "w"]} if descriptors else {})},
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
        "weights_sha256": weights_sha256,
        "onnx_sha256": onnx_sha256,
        "surfad_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def check_parity(graph: InferenceGraph, score: ScoreFn, describe: DescribedFn | None,
                 batches: list[np.ndarray]) -> dict[str, Any]:
    """Max abs differences of maps and scores between the torch graph and `score` over `batches`, and
    the largest magnitude of the torch outputs (which the tolerance is relative to); with `describe`
    (the same ONNX session's pass that also gives the descriptors), one pass of each side gives all
    three, and the descriptors' differences too (max_abs_diff_descriptors, descriptor_scale)."""
    cpu = torch.device("cpu")
    reference = torch_score_fn(graph, cpu) if describe is None else torch_described_fn(graph, cpu)
    exported = score if describe is None else describe
    diff_map = diff_score = scale = diff_described = described_scale = 0.0
    for batch in batches:
        (ref_map, ref_score, *ref_described), (got_map, got_score, *got_described) = reference(batch), exported(batch)
        scale = max(scale, float(np.abs(ref_map).max()), float(np.abs(ref_score).max()))
        if got_map.shape != ref_map.shape or got_score.shape != ref_score.shape:
            raise SurfadError(f"ONNX output shapes {got_map.shape}, {got_score.shape} differ from torch's "
                              f"{ref_map.shape}, {ref_score.shape} for a batch of {len(batch)}")
        diff_map = worst(diff_map, np.abs(got_map - ref_map).max())
        diff_score = worst(diff_score, np.abs(got_score - ref_score).max())
        for ref, got in zip(ref_described, got_described):
            if got.shape != ref.shape:
                raise SurfadError(f"ONNX descriptors' shape {got.shape} differs from torch's {ref.shape}")
            diff_described = worst(diff_described, np.abs(got - ref).max())
            described_scale = max(described_scale, float(np.abs(ref).max()))
    described = {} if describe is None else {"max_abs_diff_descriptors": diff_described,
                                              "descriptor_scale": described_scale}
    return {"max_abs_diff_map": diff_map, "max_abs_diff_score": diff_score, "output_scale": scale, **described}


def worst(so_far: float, difference: float) -> float:
    """The larger of two differences, NaN if either is (Python's max would drop a NaN second argument,
    and a NaN output must fail the parity check)."""
    return float(np.maximum(so_far, difference))


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
