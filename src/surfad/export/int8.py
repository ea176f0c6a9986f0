"""INT8 quantisation of an exported model (``surfad export RUN --quantize int8``), kept only if it
judges like the float model.

What is quantised: onnxruntime's static quantisation (``quantize_static``, QDQ format, uint8
activations, int8 weights per output channel, MinMax ranges) of the Conv, Add and Clip nodes of the
pretrained backbone (padim, patchcore): the convolutions, their residual sums and ReLU6. The ranges
come from INT8_CALIBRATION_IMAGES of the run's good training images. Everything after the backbone
stays in float: the feature selection and pooling, padim's Mahalanobis distance, patchcore's
nearest-neighbour search and the scoring head. Quantising those was measured to cost more than it
saves on this CPU (benchmarks/RESULTS.md, "INT8").

The check (on the run's validation images, none of which calibrated the ranges): both models score
them as a detector does (tiling and the run's region of interest included); the figures are the
Spearman rank correlation of the image scores, the share of verdicts that agree at calibration.json's
thresholds (or review band), and the largest score and map differences. When more than
INT8_MAX_VERDICT_CHANGES of the verdicts (a share, rounded down) change, model.int8.onnx is not
written and the export says so with the figures.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from surfad import bundle
from surfad.calibrate import Calibration
from surfad.config import RunConfig
from surfad.data.io import read_image
from surfad.data.roi import InputFill, choose_roi, input_fill
from surfad.data.samples import Sample
from surfad.data.splits import Splits
from surfad.data.tiles import pad_to_tile
from surfad.data.transforms import preprocess
from surfad.errors import BadInputError, SurfadError
from surfad.export.runtime import INPUT_NAME, onnx_score_fn
from surfad.models import model_spec
from surfad.scoring import ScoreFn, image_score_fn, score_samples
from surfad.utils import atomic_write, sha256_file
from surfad.verdict import verdict

INT8_CALIBRATION_IMAGES = 64  # good training images (a seeded sample) that set the activation ranges
INT8_MAX_VERDICT_CHANGES = 0.01  # share of the validation images whose verdict may change (rounded down)
QUANTISED_OPS = ("Conv", "Add", "Clip")
# the exporter names nodes after the module calls they are in: /model/... inside the model's forward, and
# /features/... in a graph with descriptors (its model is run through forward_and_descriptors, not called)
BACKBONE_NODES = ("/model/features/backbone/", "/features/backbone/")
CALIBRATION_BATCH = 8


def check_quantizable(run: Path, config: RunConfig) -> None:
    """SurfadError, before any work, when the run cannot get an INT8 model: no pretrained backbone,
    no calibration (the check compares verdicts), or no training or validation images listed."""
    if not model_spec(config.model).pretrained:
        raise SurfadError(f"--quantize int8: quantises the pretrained backbone of padim and patchcore; model "
                          f"{config.model!r} has none (export it in float)")
    if not (run / bundle.CALIBRATION).is_file():
        raise SurfadError(f"{run}: no {bundle.CALIBRATION}; the INT8 check compares verdicts at the calibrated "
                          f"thresholds, so run `surfad calibrate {run}` first")
    splits = Splits.load(run / bundle.SPLITS)
    if not splits.train or not splits.val:
        raise SurfadError(f"{run / bundle.SPLITS}: the INT8 model is calibrated on training images and checked on "
                          "validation images; this run lists none of one of them")


def quantize_int8(run: Path, config: RunConfig) -> dict[str, Any]:
    """Write RUN/model.int8.onnx from RUN/model.onnx (atomically) when it passes the check; returns
    export.json's "int8" entry (file, hash, how it was quantised, its agreement with model.onnx);
    SurfadError with the figures when it fails."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_quantizable(run, config)
    splits = Splits.load(run / bundle.SPLITS)
    fill = input_fill(choose_roi(run / bundle.ROI, None), config.data.roi_fill)  # the inputs the model will see
    calibration_images = graph_inputs(_sample(splits.train, INT8_CALIBRATION_IMAGES), config, fill)
    if not calibration_images:
        raise SurfadError(f"{run}: none of the training images could be read to calibrate the INT8 model")
    entry: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="surfad-int8-") as work:
            prepared = Path(work) / "prepared.onnx"
            quant_pre_process(str(run / bundle.ONNX), str(prepared), skip_symbolic_shape=True)
            nodes = backbone_nodes(prepared)
            quantize_static(
                str(prepared), str(tmp), ImageReader(calibration_images), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTISED_OPS), nodes_to_quantize=nodes, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            )
        agreement = compare(run, config, splits.val, onnx_score_fn(run / bundle.ONNX), onnx_score_fn(tmp))
        entry.update(quantization={
            "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "activations": "uint8",
            "weights": "int8, per output channel", "ranges": f"MinMax on {len(calibration_images)} good training images",
            "quantised": f"{len(nodes)} {'/'.join(QUANTISED_OPS)} nodes of the pretrained backbone",
            "float": "feature selection and pooling, the distance to the normal features, the scoring head"},
            agreement=agreement)
        if agreement["verdicts_changed"] > agreement["verdict_changes_allowed"]:
            raise SurfadError(
                f"{run}: the INT8 model changes {agreement['verdicts_changed']} of {agreement['val_images']} validation "
                f"verdicts (at most {agreement['verdict_changes_allowed']} allowed, {INT8_MAX_VERDICT_CHANGES:.0%}): "
                f"verdict agreement {agreement['verdict_agreement']:.3f}, score rank correlation "
                f"{agreement['score_spearman']:.3f}, largest score difference {agreement['max_abs_diff_score']:.3g} "
                f"(scores up to {agreement['score_scale']:.3g}), largest map difference "
                f"{agreement['max_abs_diff_map']:.3g}; {bundle.ONNX_INT8} not written (use the float model)")
        entry["sha256"] = sha256_file(tmp)

    atomic_write(run / bundle.ONNX_INT8, write)
    return {"file": bundle.ONNX_INT8, **entry}


def backbone_nodes(path: Path) -> list[str]:
    """The names of the nodes quantised: QUANTISED_OPS inside the pretrained backbone."""
    import onnx

    nodes = [n.name for n in onnx.load(str(path)).graph.node
             if n.op_type in QUANTISED_OPS and n.name.startswith(BACKBONE_NODES)]
    if not nodes:
        raise SurfadError(f"{path}: no backbone convolutions found to quantise (nodes named "
                          f"{' or '.join(BACKBONE_NODES)}...)")
    return nodes


def compare(run: Path, config: RunConfig, samples: list[Sample], reference: ScoreFn, candidate: ScoreFn) -> dict[str, Any]:
    """How `candidate` (a graph ScoreFn) judges the validation samples compared with `reference`: see
    the module docstring."""
    roi = choose_roi(run / bundle.ROI, None)
    calibration = Calibration.load(run / bundle.CALIBRATION)
    ref, _ = score_samples(image_score_fn(reference, config, roi), config, samples, roi=roi)
    got, _ = score_samples(image_score_fn(candidate, config, roi), config, samples, roi=roi)
    judge = [verdict(float(s), calibration.threshold, calibration.review) for s in ref.scores]
    judged = [verdict(float(s), calibration.threshold, calibration.review) for s in got.scores]
    changed = sum(a != b for a, b in zip(judge, judged))
    return {
        "val_images": len(samples),
        "score_spearman": spearman(ref.scores, got.scores),
        "verdict_agreement": 1 - changed / len(samples),
        "verdicts_changed": changed,
        "verdict_changes_allowed": math.floor(INT8_MAX_VERDICT_CHANGES * len(samples) + 1e-9),
        "max_abs_diff_score": float(np.abs(ref.scores - got.scores).max()),
        "max_abs_diff_map": float(np.abs(ref.maps - got.maps).max()),
        "score_scale": float(np.abs(ref.scores).max()),
        "threshold": calibration.threshold,
        "review": calibration.review,
    }


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties; 1.0 when either is constant and they are equal)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(spearmanr(a, b).statistic)


def graph_inputs(samples: list[Sample], config: RunConfig, fill: InputFill | None = None) -> list[np.ndarray]:
    """The readable samples as graph inputs (C, S, S): filled outside the region of interest as the
    detector fills them (fill), preprocessed, the first tile when tiling."""
    data, inputs = config.data, []
    size = data.image_size
    for sample in samples:
        try:
            image = read_image(sample.path)
            image = preprocess(fill(image) if fill else image, size, data.input_channels, data.tile_scale)
        except BadInputError:
            continue  # the dataset moved or changed since training
        inputs.append(pad_to_tile(image, size)[:, :size, :size] if data.tile_scale > 0 else image)
    return inputs


def _sample(samples: list[Sample], n: int) -> list[Sample]:
    """A seeded sample of at most n of `samples`, in their order."""
    if len(samples) <= n:
        return samples
    keep = np.sort(np.random.default_rng(0).choice(len(samples), n, replace=False))
    return [samples[i] for i in keep]


class ImageReader(CalibrationDataReader):
    """Graph inputs for onnxruntime's calibration, CALIBRATION_BATCH at a time."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.batches = iter([np.stack(images[i : i + CALIBRATION_BATCH]).astype(np.float32)
                             for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}
