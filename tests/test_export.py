"""ONNX export: torch and onnxruntime give the same maps, scores and verdicts for every model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from surfad import bundle
from surfad.calibrate import Calibration
from surfad.cli import main
from surfad.config import RunConfig
from surfad.detector import Detector
from surfad.errors import SurfadError
from surfad.evaluate import calibrate_run
from surfad.export import onnx as onnx_export
from surfad.export.onnx import EXPORT_JSON, export_onnx, onnx_score_fn, parity_bound
from surfad.export.runtime import onnx_score_fns
from surfad.models import available_models

REAL_DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
def allowed(*reference: np.ndarray | float) -> float:
    """The export's parity bound for outputs of this magnitude (distances of fitted models exceed 1)."""
    return parity_bound(max(float(np.abs(r).max()) for r in reference))


def copy_run(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest / run.name))


def synthetic_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Random-texture uint8 images of assorted sizes and channel counts, some with a bright blob."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = int(rng.integers(24, 90)), int(rng.integers(24, 90))
        image = (rng.random((h, w, 1 if i % 3 == 0 else 3)) * 120 + 60).astype(np.uint8)
        if i % 2:
            image[h // 4: h // 2, w // 4: w // 2] = 255
        images.append(image)
    return images


def real_images() -> list[Path]:
    wood = sorted((REAL_DATA / "wood-vsb-256" / "wood" / "test" / "defect").glob("*"))[:2]
    tiles = sorted((REAL_DATA / "magnetic-tile" / "MT_Blowhole" / "Imgs").glob("*.jpg"))[:2]
    return wood + tiles


@pytest.fixture(params=available_models())
def run(tiny_run, request: pytest.FixtureRequest) -> Path:
    return tiny_run(request.param)


def assert_same_predictions(run: Path, images: list) -> None:
    """Detector with torch and with onnx: maps and scores within the parity bound, identical verdicts."""
    torch_det, onnx_det = Detector.load(run, runtime="torch"), Detector.load(run, runtime="onnx")
    expected, got = torch_det.predict_batch(images), onnx_det.predict_batch(images)
    for a, b in zip(expected, got):
        assert abs(a.score - b.score) <= allowed(a.score, a.anomaly_map)
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= allowed(a.score, a.anomaly_map)
        assert a.threshold == b.threshold and a.verdict == b.verdict


def test_export_writes_model_and_parity_record(run: Path) -> None:
    record = json.loads((run / EXPORT_JSON).read_text())
    assert record["opset"] == 17 and record["torch_version"] == torch.__version__
    assert record["onnxruntime_version"] == onnxruntime.__version__
    parity = record["parity"]
    assert parity["val_images"] > 0  # the run's own validation images were checked
    bound = allowed(parity["output_scale"])
    assert parity["max_abs_diff_map"] <= bound and parity["max_abs_diff_score"] <= bound
    session = onnxruntime.InferenceSession(str(run / bundle.ONNX), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    config = RunConfig.load(run / bundle.CONFIG)
    assert inp.name == "image" and isinstance(inp.shape[0], str)  # dynamic batch
    assert inp.shape[1:] == [config.data.channels, 32, 32]
    described = config.model in ("padim", "patchcore")  # their descriptors are their features
    assert [o.name for o in session.get_outputs()] == ["anomaly_map", "score"] + ["descriptors"] * described
    if described:
        assert parity["max_abs_diff_descriptors"] <= allowed(parity["descriptor_scale"])
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_score_fn_matches_torch_on_raw_batches(run: Path) -> None:
    config, graph = bundle.load_graph(run)
    batch = np.random.default_rng(1).random((5, config.data.channels, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        ref_map, ref_score = graph(torch.from_numpy(batch))
    amap, score = onnx_score_fn(run / bundle.ONNX, threads=1)(batch)
    assert amap.shape == (5, 32, 32) and score.shape == (5,)
    bound = allowed(ref_map.numpy(), ref_score.numpy())
    assert np.abs(amap - ref_map[:, 0].numpy()).max() <= bound
    assert np.abs(score - ref_score.numpy()).max() <= bound


def test_exported_descriptors_match_torch(run: Path) -> None:
    """The descriptors output (what a region's nearest good example is searched with) is the model's own."""
    config, graph = bundle.load_graph(run)
    _, describe = onnx_score_fns(run / bundle.ONNX, threads=1)
    if not graph.model.descriptors_from_features:
        assert describe is None
        return
    batch = np.random.default_rng(2).random((3, config.data.channels, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = graph.model.descriptors(torch.from_numpy(batch)).numpy()
    amap, score, got = describe(batch)
    assert amap.shape == (3, 32, 32) and score.shape == (3,) and got.shape == expected.shape
    assert np.abs(got - expected).max() <= allowed(expected)


def test_runtimes_agree_on_synthetic_images(run: Path, tmp_path: Path) -> None:
    images = synthetic_images(8)
    run = copy_run(run, tmp_path)
    # A threshold mid-way in the widest gap between the scores, so both verdicts occur.
    scores = np.sort([p.score for p in Detector.load(run).predict_batch(images)])
    gap = int(np.argmax(np.diff(scores)))
    assert scores[gap + 1] - scores[gap] > 2 * allowed(scores)  # no score within the tolerance of the threshold
    calibration = Calibration.load(run / bundle.CALIBRATION)
    calibration.threshold = float((scores[gap] + scores[gap + 1]) / 2)
    calibration.save(run / bundle.CALIBRATION)
    assert_same_predictions(run, images)
    verdicts = {p.verdict for p in Detector.load(run, runtime="onnx").predict_batch(images)}
    assert verdicts == {"OK", "NG"}


@pytest.mark.realdata
def test_runtimes_agree_on_real_images(run: Path) -> None:
    paths = real_images()
    if len(paths) < 4:
        pytest.skip(f"real data not found under {REAL_DATA.resolve()}")
    assert_same_predictions(run, paths)


def test_threshold_is_read_from_calibration_without_reexport(run: Path, tmp_path: Path) -> None:
    run = copy_run(run, tmp_path)
    calibration = Calibration.load(run / bundle.CALIBRATION)
    calibration.threshold = -1.0
    calibration.save(run / bundle.CALIBRATION)
    result = Detector.load(run, runtime="onnx").predict(synthetic_images(1)[0])
    assert result.threshold == -1.0 and result.verdict == "NG"


def test_stale_export_is_refused(tiny_run, tmp_path: Path) -> None:
    """Retrained (new weights, calibrated anew), the run's old model.onnx no longer fits its thresholds."""
    run = copy_run(tiny_run(), tmp_path)
    _, graph = bundle.load_graph(run)
    with torch.no_grad():
        next(graph.parameters()).add_(1.0)
    bundle.save_weights(graph.model, run / bundle.WEIGHTS)
    calibrate_run(run, strategy="f1")
    with pytest.raises(SurfadError, match=r"model\.onnx: exported from other weights .* re-export"):
        Detector.load(run, runtime="onnx")
    export_onnx(run)
    assert Detector.load(run, runtime="onnx").runtime == "onnx"


def test_a_reexport_removes_what_an_interrupted_one_left(tiny_run, tmp_path: Path) -> None:
    run = copy_run(tiny_run(), tmp_path)
    stale = [run / ".model.onnx.k1ll3d.tmp", run / ".export.json.k1ll3d.tmp", run / ".model.int8.onnx.x.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    other = run / ".calibration.json.elsewhere.tmp"  # not the export's: another writer's, left alone
    other.write_bytes(b"")
    export_onnx(run)
    assert not [p for p in stale if p.exists()] and other.exists()
    assert Detector.load(run, runtime="onnx").runtime == "onnx"


def test_failed_parity_keeps_the_old_model(tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(tiny_run(), tmp_path)
    before = (run / bundle.ONNX).read_bytes()
    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(SurfadError, match="disagrees with torch"):
        export_onnx(run)
    assert (run / bundle.ONNX).read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_an_export_that_outputs_nan_is_refused(tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN difference must fail the parity check, not vanish in a running maximum."""
    run = copy_run(tiny_run(), tmp_path)
    before = (run / bundle.ONNX).read_bytes()
    exact = onnx_export.onnx_score_fns

    def nan_on_the_second_batch(path):
        score, describe = exact(path)
        calls = []

        def broken(batch):
            calls.append(1)
            amap, scores = score(batch)
            return (amap * np.nan if len(calls) == 2 else amap), scores

        return broken, describe

    monkeypatch.setattr(onnx_export, "onnx_score_fns", nan_on_the_second_batch)
    with pytest.raises(SurfadError, match="disagrees with torch"):
        export_onnx(run)
    assert (run / bundle.ONNX).read_bytes() == before


def test_descriptors_that_disagree_keep_the_old_model(tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The descriptors a region's nearest good example is searched with are held to the map's parity."""
    run = copy_run(tiny_run("padim"), tmp_path)
    before = (run / bundle.ONNX).read_bytes()
    exact = onnx_export.torch_described_fn

    def shifted(graph, device):  # torch's descriptors moved, as a wrong export's would be against them
        describe = exact(graph, device)
        return lambda batch: (*describe(batch)[:2], describe(batch)[2] + 0.5)

    monkeypatch.setattr(onnx_export, "torch_described_fn", shifted)
    with pytest.raises(SurfadError, match="descriptors disagree with torch"):
        export_onnx(run)
    assert (run / bundle.ONNX).read_bytes() == before


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SurfadError, match="not a (trained )?run folder"):
        export_onnx(tmp_path)
    with pytest.raises(SurfadError, match="ONNX model not found"):
        onnx_score_fn(tmp_path / "model.onnx")
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(SurfadError, match="not a loadable ONNX model"):
        onnx_score_fn(tmp_path / "model.onnx")


def test_cli_export(tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run(), tmp_path)
    (run / bundle.ONNX).unlink()
    assert main(["export", str(run), "--format", "onnx", "--opset", "17"]) == 0
    assert "max abs diff" in capsys.readouterr().out and (run / bundle.ONNX).is_file()
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_inference_threads_are_set_as_asked(tiny_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Detector.load(threads=N) gives onnxruntime N intra-op threads and torch N threads, with the same
    predictions: what lets several service workers share the cores instead of contending for them."""
    run = tiny_run("padim")
    asked: list[int] = []
    session = onnxruntime.InferenceSession

    def recording_session(path, sess_options=None, **kwargs):
        asked.append(sess_options.intra_op_num_threads)
        return session(path, sess_options=sess_options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)
    images = synthetic_images(3)
    expected = Detector.load(run, runtime="onnx").predict_batch(images)
    got = Detector.load(run, runtime="onnx", threads=1).predict_batch(images)
    assert asked == [0, 1]
    assert [p.score for p in got] == pytest.approx([p.score for p in expected], rel=1e-5)
    before = torch.get_num_threads()
    try:
        Detector.load(run, runtime="torch", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SurfadError, match="threads"):
        Detector.load(run, threads=-1)
