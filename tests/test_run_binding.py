"""A run's parts are bound together: thresholds are never used with another run's weights.

calibration.json records the SHA-256 of the weights it was calibrated with, export.json that of the
weights exported and of model.onnx itself; every load checks the file its runtime reads. Each case
of a file copied from another run is refused with a message naming that file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from surfad import bundle
from surfad.calibrate import Calibration
from surfad.cli import main
from surfad.detector import Detector, fuse_runs
from surfad.errors import SurfadError
from surfad.evaluate import calibrate_run
from surfad.export.onnx import EXPORT_JSON, export_onnx
from surfad.utils import sha256_file

IMAGE = np.full((40, 40, 3), 90, np.uint8)


def copy_run(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest))


@pytest.fixture(scope="module")
def two_runs(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two runs of one model and data with other weights (as two trainings give), each calibrated and
    exported. Shared: copy them before changing anything."""
    root = tmp_path_factory.mktemp("binding")
    first = copy_run(tiny_run(), root / "first")
    second = copy_run(first, root / "second")
    _, graph = bundle.load_graph(second)
    with torch.no_grad():
        for p in graph.parameters():
            p.mul_(1.5)
    bundle.save_weights(graph.model, second / bundle.WEIGHTS)
    calibrate_run(second, strategy="f1")
    export_onnx(second)
    return first, second


@pytest.fixture
def run(two_runs: tuple[Path, Path], tmp_path: Path) -> Path:
    return copy_run(two_runs[0], tmp_path / "run")


@pytest.fixture
def other(two_runs: tuple[Path, Path]) -> Path:
    return two_runs[1]


def test_calibration_and_export_record_the_hashes(run: Path, tmp_path: Path) -> None:
    weights = sha256_file(run / bundle.WEIGHTS)
    assert Calibration.load(run / bundle.CALIBRATION).weights_sha256 == [weights]  # written by training
    record = json.loads((run / EXPORT_JSON).read_text())
    assert record["weights_sha256"] == weights and record["onnx_sha256"] == sha256_file(run / bundle.ONNX)
    calibrate_run(run, strategy="f1", checkpoint="last")
    assert Calibration.load(run / bundle.CALIBRATION).weights_sha256 == [sha256_file(run / bundle.CHECKPOINTS["last"])]


def test_weights_from_another_run_are_refused_by_the_torch_runtime(run: Path, other: Path, capsys) -> None:
    shutil.copyfile(other / bundle.WEIGHTS, run / bundle.WEIGHTS)
    with pytest.raises(SurfadError, match=rf"{run / bundle.WEIGHTS}: not the weights {run / bundle.CALIBRATION} was "
                                          rf"calibrated with.*surfad calibrate"):
        Detector.load(run)
    assert main(["predict", str(run), str(run / "history.png"), "--out", str(run / "p"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors: not the weights" in err


def test_another_checkpoint_needs_its_own_calibration(run: Path, other: Path) -> None:
    checkpoint = str(shutil.copyfile(other / bundle.WEIGHTS, run / "other.safetensors"))
    with pytest.raises(SurfadError, match=rf"other\.safetensors: not the weights .*--checkpoint {checkpoint}"):
        Detector.load(run, checkpoint=checkpoint)
    calibrate_run(run, strategy="f1", checkpoint=checkpoint)
    assert Detector.load(run, checkpoint=checkpoint).predict(IMAGE).verdict
    with pytest.raises(SurfadError, match=r"model\.safetensors: not the weights"):
        Detector.load(run)  # the shipped weights are not those calibrated now


def test_an_onnx_model_from_another_run_is_refused(run: Path, other: Path) -> None:
    shutil.copyfile(other / bundle.ONNX, run / bundle.ONNX)  # this run's export.json kept
    with pytest.raises(SurfadError, match=rf"{run / bundle.ONNX}: not the file {run / EXPORT_JSON} describes.*"
                                          r"re-export"):
        Detector.load(run, runtime="onnx")
    assert Detector.load(run).predict(IMAGE).verdict  # the torch runtime reads model.safetensors, still its own


def test_weights_from_another_run_are_refused_by_the_onnx_runtime_when_it_explains(run: Path, other: Path) -> None:
    """The nearest-good lookup runs in torch beside model.onnx: it must use the weights that were exported."""
    assert (run / "examples").is_dir()  # the run keeps training examples (the default)
    shutil.copyfile(other / bundle.WEIGHTS, run / bundle.WEIGHTS)
    with pytest.raises(SurfadError, match=rf"{run / bundle.ONNX}: exported from other weights than "
                                          rf"{run / bundle.WEIGHTS}"):
        Detector.load(run, runtime="onnx")
    shutil.rmtree(run / "examples")  # without the lookup, ONNX reads model.onnx alone, which is still its own
    assert Detector.load(run, runtime="onnx").predict(IMAGE).verdict


def test_all_three_files_from_another_run_are_refused(run: Path, other: Path) -> None:
    for name in (bundle.WEIGHTS, bundle.ONNX, EXPORT_JSON):
        shutil.copyfile(other / name, run / name)
    with pytest.raises(SurfadError, match=rf"{run / bundle.WEIGHTS}: not the weights"):
        Detector.load(run)
    with pytest.raises(SurfadError, match=rf"{run / bundle.ONNX}: exported from other weights than "
                                          rf"{run / bundle.CALIBRATION} .*re-export"):
        Detector.load(run, runtime="onnx")
    calibrate_run(run, strategy="f1")  # the thresholds of the weights it now holds
    assert Detector.load(run, runtime="onnx").predict(IMAGE).verdict


def test_an_onnx_model_without_its_record_is_refused(run: Path) -> None:
    (run / EXPORT_JSON).unlink()
    with pytest.raises(SurfadError, match=rf"{run / bundle.ONNX}: no export.json beside it.*re-export"):
        Detector.load(run, runtime="onnx")
    export_onnx(run)
    assert Detector.load(run, runtime="onnx").predict(IMAGE).verdict


def test_a_record_without_the_model_hash_is_refused(run: Path) -> None:
    record = json.loads((run / EXPORT_JSON).read_text())
    del record["onnx_sha256"]  # as an older surfad wrote it
    (run / EXPORT_JSON).write_text(json.dumps(record))
    with pytest.raises(SurfadError, match=r"records no hash of model\.onnx.*re-export"):
        Detector.load(run, runtime="onnx")


def test_a_calibration_without_hashes_is_trusted(run: Path, other: Path) -> None:
    """Runs calibrated before the hashes were recorded keep working; the ONNX model is then checked
    against the run's weights, as it was before."""
    raw = json.loads((run / bundle.CALIBRATION).read_text())
    del raw["weights_sha256"]
    (run / bundle.CALIBRATION).write_text(json.dumps(raw))
    for runtime in ("torch", "onnx"):
        assert Detector.load(run, runtime=runtime).predict(IMAGE).verdict
    shutil.copyfile(other / bundle.WEIGHTS, run / bundle.WEIGHTS)  # retrained after the export
    with pytest.raises(SurfadError, match=rf"{run / bundle.ONNX}: exported from other weights than "
                                          rf"{run / bundle.WEIGHTS}.*re-export with `surfad export"):
        Detector.load(run, runtime="onnx")


def test_a_malformed_weights_record_is_refused(run: Path) -> None:
    raw = json.loads((run / bundle.CALIBRATION).read_text())
    raw["weights_sha256"] = ["not a digest"]
    (run / bundle.CALIBRATION).write_text(json.dumps(raw))
    with pytest.raises(SurfadError, match=r"calibration\.json: calibration\.weights_sha256="):
        Detector.load(run)


def test_a_fused_detector_refuses_a_replaced_member(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = (copy_run(r, tmp_path / name) for r, name in zip(two_runs, ("first", "second")))
    fused = fuse_runs([first, second], tmp_path / "fused")
    assert Calibration.load(fused / bundle.CALIBRATION).weights_sha256 == [
        sha256_file(first / bundle.WEIGHTS), sha256_file(second / bundle.WEIGHTS)]
    assert Detector.load(fused).predict(IMAGE).verdict
    shutil.copyfile(first / bundle.WEIGHTS, second / bundle.WEIGHTS)
    calibrate_run(second, strategy="f1")  # the member itself is consistent again, the fused folder is not
    with pytest.raises(SurfadError, match=rf"{second / bundle.WEIGHTS}: not the weights {fused / bundle.CALIBRATION}"
                                          r" was calibrated with.*surfad fuse"):
        Detector.load(fused)
