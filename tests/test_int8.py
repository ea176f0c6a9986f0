"""INT8 export: the quantised model is kept only when it judges like the float one, and is bound to
its run like model.onnx."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from surfad import bundle
from surfad.cli import main
from surfad.data.splits import Splits
from surfad.detector import Detector
from surfad.errors import SurfadError
from surfad.export import int8
from surfad.export.int8 import INT8_MAX_VERDICT_CHANGES
from surfad.export.onnx import EXPORT_JSON, export_onnx
from surfad.utils import sha256_file

FITTED = ["padim", "patchcore"]


@pytest.fixture(scope="module", params=FITTED)
def quantized(request: pytest.FixtureRequest, tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run exported with --quantize int8. Shared: copy it before changing anything."""
    run = Path(shutil.copytree(tiny_run(request.param), tmp_path_factory.mktemp("int8") / request.param))
    export_onnx(run, quantize="int8")
    return run


@pytest.fixture
def run(quantized: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(quantized, tmp_path / quantized.name))


def val_images(run: Path) -> list[Path]:
    return [s.path for s in Splits.load(run / bundle.SPLITS).val]


def test_export_json_records_the_int8_model_and_its_agreement(quantized: Path) -> None:
    entry = json.loads((quantized / EXPORT_JSON).read_text())["int8"]
    assert entry["file"] == bundle.ONNX_INT8 and entry["sha256"] == sha256_file(quantized / bundle.ONNX_INT8)
    assert entry["quantization"]["tool"] == "onnxruntime.quantization.quantize_static"
    agreement = entry["agreement"]
    assert agreement["val_images"] == len(val_images(quantized)) > 0
    assert agreement["verdicts_changed"] <= agreement["verdict_changes_allowed"] == int(
        INT8_MAX_VERDICT_CHANGES * agreement["val_images"])
    assert agreement["verdict_agreement"] == 1 - agreement["verdicts_changed"] / agreement["val_images"]
    assert -1 <= agreement["score_spearman"] <= 1 and agreement["max_abs_diff_map"] >= 0
    assert agreement["threshold"] == json.loads((quantized / bundle.CALIBRATION).read_text())["threshold"]


def test_the_backbone_is_quantised_and_the_distance_stays_float(quantized: Path) -> None:
    graph = onnx.load(str(quantized / bundle.ONNX_INT8)).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name.startswith(int8.BACKBONE_NODES)]
    assert convs and all(made_by.get(n.input[0]) == "DequantizeLinear" for n in convs)
    distances = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]  # padim's Mahalanobis, patchcore's search
    assert distances and not any(made_by.get(i) == "DequantizeLinear" for n in distances for i in n.input)


def test_every_runtime_gives_the_same_verdicts(quantized: Path, tiny_mvtec: Path) -> None:
    """On the validation images (what the bound is stated on), through the detector as deployed:
    torch and onnx agree exactly (parity), onnx-int8 within the bound export.json states."""
    agreement = json.loads((quantized / EXPORT_JSON).read_text())["int8"]["agreement"]
    images = val_images(quantized)
    verdicts = {runtime: [p.verdict for p in Detector.load(quantized, runtime=runtime).predict_batch(images)]
                for runtime in ("torch", "onnx", "onnx-int8")}
    assert verdicts["torch"] == verdicts["onnx"]
    assert sum(a != b for a, b in zip(verdicts["onnx"], verdicts["onnx-int8"])) <= agreement["verdict_changes_allowed"]
    assert len(set(verdicts["onnx"])) == 2  # both verdicts occur, so agreeing is not trivial


def test_an_int8_model_that_changes_verdicts_is_refused(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrated on black images, the activation ranges are wrong and verdicts change: no model.int8.onnx,
    the figures in the message, and the float model still usable."""
    real = int8.graph_inputs
    monkeypatch.setattr(int8, "graph_inputs",
                        lambda samples, config, fill=None: [np.zeros_like(x) for x in real(samples, config, fill)])
    with pytest.raises(SurfadError, match=r"the INT8 model changes [1-9]\d* of \d+ validation verdicts \(at most 0 "
                                          r"allowed.*score rank correlation .*largest map difference .*not written"):
        export_onnx(run, quantize="int8")
    assert not (run / bundle.ONNX_INT8).exists() and not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert "int8" not in json.loads((run / EXPORT_JSON).read_text())
    assert Detector.load(run, runtime="onnx").predict(val_images(run)[0]).verdict
    with pytest.raises(SurfadError, match=r"model\.int8\.onnx: not found.*--quantize int8"):
        Detector.load(run, runtime="onnx-int8")


def test_a_replaced_int8_model_is_refused(run: Path) -> None:
    shutil.copyfile(run / bundle.ONNX, run / bundle.ONNX_INT8)  # a loadable model, but not the one checked
    with pytest.raises(SurfadError, match=rf"{run / bundle.ONNX_INT8}: not the file {run / EXPORT_JSON} describes"):
        Detector.load(run, runtime="onnx-int8")


def test_a_float_reexport_drops_the_int8_model(run: Path) -> None:
    export_onnx(run)
    assert not (run / bundle.ONNX_INT8).exists()
    with pytest.raises(SurfadError, match=r"model\.int8\.onnx: not found.*--quantize int8"):
        Detector.load(run, runtime="onnx-int8")


def test_only_a_pretrained_backbone_is_quantised(tiny_run, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run("unet_vae"), tmp_path / "vae"))
    before = (run / bundle.ONNX).read_bytes()
    with pytest.raises(SurfadError, match="quantises the pretrained backbone of padim and patchcore"):
        export_onnx(run, quantize="int8")
    assert (run / bundle.ONNX).read_bytes() == before and not (run / bundle.ONNX_INT8).exists()


def test_cli_exports_and_uses_the_int8_model(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(run), "--quantize", "int8"]) == 0
    assert "validation verdicts changed" in capsys.readouterr().out
    images = [str(p) for p in val_images(run)]
    assert main(["predict", str(run), *images, "--runtime", "onnx-int8", "--out", str(tmp_path / "p"), "--quiet"]) == 0
    lines = (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(images)
    assert main(["evaluate", str(run), "--runtime", "onnx-int8", "--split", "val", "--out", str(tmp_path / "e"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["runtime"] == "onnx-int8"
    assert main(["export", str(run), "--quantize", "int4"]) == 2  # argparse refuses it
