"""The HTTP service: every route, the API key, limits and each kind of bad upload."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import hashlib
import json
import os
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from surfad.detector import Detector, RunDetector
from surfad.errors import SurfadError
from surfad.serve import MAX_BATCH
from surfad.serve.app import Batcher, create_app
from surfad.serve.record import BUCKETS, LOG, STAGES, InspectionLog, LiveStats, SharedStats, prometheus_text
from surfad.utils import Stopwatch

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def detector(tiny_run) -> Detector:
    return Detector.load(tiny_run(), runtime="onnx")


@pytest.fixture(scope="module")
def client(detector: Detector) -> TestClient:
    app = create_app(detector, api_key=KEY, max_upload_bytes=200_000, max_pixels=100_000)
    return TestClient(app, headers={"X-API-Key": KEY})


@pytest.fixture(scope="module")
def image(tiny_mvtec: Path) -> np.ndarray:
    """A 64 x 64 RGB test image with a defect."""
    path = sorted((tiny_mvtec / "test").glob("[!g]*/*.png"))[0]
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def post(client: TestClient, upload: bytes, name: str = "part.png", **kwargs) -> tuple[int, dict]:
    response = client.post("/predict", files={"file": (name, upload, "image/png")}, **kwargs)
    return response.status_code, response.json()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height in its header but holds almost no data (a 'pixel bomb')."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_health_needs_no_key(detector: Detector) -> None:
    bare = TestClient(create_app(detector, api_key=KEY))
    response = bare.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok", "worker": os.getpid()}


def test_page_is_self_contained(client: TestClient) -> None:
    response = TestClient(client.app).get("/")  # no key: the page holds no model data
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'id="file-input"' in page and 'id="verdict"' in page and "X-API-Key" in page
    assert "http://" not in page and "https://" not in page  # no CDN, no external anything
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_model_info(client: TestClient, detector: Detector) -> None:
    info = client.get("/model").json()
    assert info["model"] == "unet_vae" and info["image_size"] == 32 and info["runtime"] == "onnx"
    assert info["threshold"] == detector.threshold and info["training_data"]["train"] > 0
    assert info["surfad_version"] and info["service_version"]
    assert info["limits"] == {"max_upload_bytes": 200_000, "max_pixels": 100_000}


def test_predict(client: TestClient, detector: Detector, image: np.ndarray) -> None:
    status, body = post(client, png(image))
    assert status == 200
    expected = detector.predict(image)
    assert body["score"] == pytest.approx(expected.score, abs=1e-6) and body["verdict"] == expected.verdict
    assert body["threshold"] == detector.threshold and body["regions"] == [r.to_dict() for r in expected.regions]
    assert (body["width"], body["height"]) == (64, 64)
    assert {"decode", "inference", "total"} <= set(body["timing_ms"])
    assert "overlay_png" not in body


@pytest.mark.parametrize("model", ["padim", "patchcore"])
@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_fitted_models_are_served_like_the_others(tiny_run, image: np.ndarray, model: str, runtime: str) -> None:
    """The memory bank (patchcore) or the Gaussians (padim) inside the served graph answer as the
    Python API does, and /model shows the model without paths."""
    fitted = Detector.load(tiny_run(model), runtime=runtime)
    service = TestClient(create_app(fitted))
    status, body = post(service, png(image), params={"images": "true"})
    assert status == 200 and body["overlay_png"]
    expected = fitted.predict(image)
    assert body["score"] == pytest.approx(expected.score, rel=1e-6) and body["verdict"] == expected.verdict
    info = service.get("/model").json()
    assert info["model"] == model and info["runtime"] == runtime
    assert str(tiny_run(model)) not in json.dumps(info)


@pytest.mark.parametrize("how", ["query", "form"])
def test_predict_with_images(client: TestClient, image: np.ndarray, how: str) -> None:
    kwargs = {"params": {"images": "true"}} if how == "query" else {"data": {"images": "true"}}
    status, body = post(client, png(image), **kwargs)
    assert status == 200
    for key in ("heatmap_png", "overlay_png"):
        decoded = cv2.imdecode(np.frombuffer(base64.b64decode(body[key]), np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (64, 64, 3)


def test_grayscale_and_jpeg_uploads(client: TestClient, image: np.ndarray) -> None:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    jpeg = cv2.imencode(".jpg", gray)[1].tobytes()
    status, body = post(client, jpeg, name="no-extension")  # content decides, not the name
    assert status == 200 and body["width"] == 64


@pytest.mark.parametrize("data, status, words", [
    (b"", 400, "empty file"),
    (b"this is text, not a picture", 415, "not a readable image"),
])
def test_bad_content(client: TestClient, data: bytes, status: int, words: str) -> None:
    code, body = post(client, data)
    assert code == status and words in body["detail"]


def test_truncated_png(client: TestClient, image: np.ndarray) -> None:
    data = png(image)
    code, body = post(client, data[: len(data) // 2])
    assert code == 415 and "part.png" in body["detail"]


def test_oversized_upload(client: TestClient) -> None:
    code, body = post(client, b"\0" * 300_000)
    assert code == 413 and "200000 bytes" in body["detail"]


def test_oversized_upload_without_content_length(client: TestClient) -> None:
    boundary = "xyzBOUNDARY"

    def body():  # a generator: sent chunked, with no Content-Length to check up front
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()
        for _ in range(40):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413


def test_too_many_pixels(client: TestClient) -> None:
    big = np.zeros((400, 400, 3), dtype=np.uint8)  # 160,000 pixels > 100,000, a small file
    code, body = post(client, png(big))
    assert code == 413 and "400x400 pixels" in body["detail"]
    code, body = post(client, png_header_only(100_000, 100_000))  # refused from the header alone
    assert code == 413 and "image too large" in body["detail"]


def test_missing_or_wrong_field(client: TestClient, image: np.ndarray) -> None:
    response = client.post("/predict", files={"image": ("a.png", png(image), "image/png")})
    assert response.status_code == 422 and "missing form field 'file'" in response.json()["detail"]
    response = client.post("/predict", data={"file": "not a file"})
    assert response.status_code == 415  # a plain form, not multipart
    response = client.post("/predict", files={"other": ("x", b"x")}, data={"file": "text"})
    assert response.status_code == 422 and "must be a file upload" in response.json()["detail"]
    response = client.post("/predict", content=png(image), headers={"content-type": "image/png"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]
    code, body = post(client, png(image), params={"images": "maybe"})
    assert code == 422 and "images" in body["detail"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_api_key(client: TestClient, image: np.ndarray, headers: dict) -> None:
    bare = TestClient(client.app)
    for response in (bare.get("/model", headers=headers), bare.get("/stats", headers=headers),
                     bare.get("/metrics", headers=headers),
                     bare.post("/predict", files={"file": ("a.png", png(image))}, headers=headers)):
        assert response.status_code == 401 and "API key" in response.json()["detail"]


def test_unknown_route_is_json(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


def test_inference_runs_off_the_event_loop(detector: Detector, image: np.ndarray) -> None:
    loops = []

    class Recording(RunDetector):
        def predict(self, image, threshold=None, stopwatch=None):
            try:
                loops.append(asyncio.get_running_loop())
            except RuntimeError:
                loops.append(None)  # a worker thread: no event loop here
            return super().predict(image, threshold, stopwatch)

    spy = Recording(detector.run, detector.config, detector.score_fn, detector.calibration, detector.runtime)
    code, _ = post(TestClient(create_app(spy, concurrency=2)), png(image))
    assert code == 200 and loops == [None]


def test_torch_runtime_gives_the_same_answer(tiny_run, client: TestClient, image: np.ndarray) -> None:
    torch_client = TestClient(create_app(Detector.load(tiny_run(), runtime="torch")))
    _, expected = post(torch_client, png(image))
    _, got = post(client, png(image))
    assert got["score"] == pytest.approx(expected["score"], abs=1e-4) and got["verdict"] == expected["verdict"]


def test_cli_serve_passes_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import surfad.serve.app as app_module
    from surfad.cli import main

    calls = []
    monkeypatch.setattr(app_module, "serve", lambda run, **kwargs: calls.append((run, kwargs)))
    monkeypatch.setenv("SURFAD_API_KEY", "from-env")
    assert main(["serve", "RUN", "--port", "9001", "--runtime", "torch", "--max-upload-mb", "2.5", "--max-pixels", "5000"]) == 0
    assert main(["serve", "RUN", "--api-key", "given", "--host", "0.0.0.0"]) == 0
    assert calls[0] == ("RUN", {"host": "127.0.0.1", "port": 9001, "runtime": "torch", "api_key": "from-env",
                                "max_upload_bytes": 2_500_000, "max_pixels": 5000, "concurrency": 1, "record": None,
                                "keep_images": "ng", "allow_hosts": [], "roi": None, "workers": 1,
                                "threads": 0, "max_batch": MAX_BATCH})
    assert calls[1][1]["api_key"] == "given" and calls[1][1]["host"] == "0.0.0.0" and calls[1][1]["runtime"] == "onnx"
    assert main(["serve", "RUN", "--record", "log", "--keep-images", "all"]) == 0
    assert calls[2][1]["record"] == "log" and calls[2][1]["keep_images"] == "all"
    assert main(["serve", "RUN", "--max-pixels", "0"]) == 2
    assert main(["serve", "RUN", "--workers", "2", "--threads", "3"]) == 0
    assert calls[3][1]["workers"] == 2 and calls[3][1]["threads"] == 3
    assert main(["serve", "RUN", "--threads", "0"]) == 2
    assert main(["serve", "RUN", "--roi", "line.png"]) == 0
    assert calls[4][1]["roi"] == "line.png"
    assert main(["serve", "RUN", "--max-batch", "1", "--runtime", "onnx-int8"]) == 0
    assert calls[5][1]["max_batch"] == 1 and calls[5][1]["runtime"] == "onnx-int8"


def test_workers_share_the_cores_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from surfad.serve.app import worker_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert worker_threads(1) == 0  # one process: the runtime's default, every core
    assert worker_threads(2) == 4 and worker_threads(3) == 2 and worker_threads(16) == 1


def test_recording_logs_every_inspection_and_keeps_ng_uploads(detector: Detector, tiny_mvtec: Path, tmp_path: Path):
    paths = [sorted((tiny_mvtec / "test" / "good").iterdir())[0], sorted((tiny_mvtec / "test").glob("[!g]*/*.png"))[0]]
    uploads = [path.read_bytes() for path in paths]
    scores = [detector.predict(str(path)).score for path in paths]
    assert scores[0] != scores[1]
    between = copy.copy(detector)  # a threshold between the two scores: one OK, one NG
    between.calibration = dataclasses.replace(detector.calibration, threshold=sum(scores) / 2)
    folder = tmp_path / "record"
    client = TestClient(create_app(between, record=InspectionLog(folder)))
    answers = [client.post("/predict", files={"file": ("../../a part.png", data, "image/png")}).json() for data in uploads]

    lines = [json.loads(line) for line in (folder / LOG).read_text().splitlines()]
    assert [line["id"] for line in lines] == [answer["inspection_id"] for answer in answers]
    assert sorted(line["verdict"] for line in lines) == ["NG", "OK"]
    for line, data, answer in zip(lines, uploads, answers):
        assert line["sha256"] == hashlib.sha256(data).hexdigest() and line["score"] == answer["score"]
        if line["verdict"] == "NG":  # kept unchanged, inside the folder whatever the upload's name
            kept = folder / line["image"]
            assert kept.read_bytes() == data and kept.is_relative_to(folder / "images") and kept.name.endswith("_a_part.png")
        else:
            assert line["image"] is None

    stats = client.get("/stats").json()
    assert stats["inspected"] == 2 and stats["ng"] == 1 and stats["ng_rate"] == 0.5
    assert stats["recent_scores"]["n"] == 2 and stats["recording"] is True  # no path: see test_faults
    assert stats["validation_good_scores"] == detector.calibration.normal_stats
    assert stats["mean_ms"] > 0
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'surfad_inspections_total{verdict="NG"} 1' in metrics.text and 'surfad_inspections_total{verdict="OK"} 1' in metrics.text
    assert f"surfad_threshold {between.threshold}" in metrics.text and 'surfad_recent_score{quantile="0.5"}' in metrics.text


def test_a_failing_record_still_answers_the_verdict(detector: Detector, image: np.ndarray, tmp_path: Path):
    log = InspectionLog(tmp_path / "record")
    (tmp_path / "record" / LOG).mkdir()  # the log path is a folder: every append fails
    code, body = post(TestClient(create_app(detector, record=log)), png(image))
    assert code == 200 and body["verdict"] in ("OK", "NG") and body["inspection_id"] is None
    assert "not recorded" in body["recording_error"]


def stage_histograms(metrics_text: str) -> dict[str, dict[str, float]]:
    """surfad_stage_seconds, read with the official parser: stage -> {"count", "sum", "+Inf", le...}."""
    families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
    assert families["surfad_stage_seconds"].type == "histogram"
    stages: dict[str, dict[str, float]] = {}
    for sample in families["surfad_stage_seconds"].samples:
        key = sample.labels.get("le") or sample.name.rsplit("_", 1)[1]  # a bucket's bound, or count / sum
        stages.setdefault(sample.labels["stage"], {})[key] = sample.value
    return stages


@pytest.mark.parametrize("shared", [False, True])
def test_metrics_say_where_each_request_s_time_went(detector: Detector, image: np.ndarray, tmp_path: Path,
                                                   shared: bool) -> None:
    """Every stage of /predict as a Prometheus histogram, in one process or shared by several workers;
    the PNGs are made (and timed) only for the request that asked for them."""
    stats = SharedStats(tmp_path / "stats.sqlite", detector.threshold, detector.calibration.normal_stats) if shared else None
    client = TestClient(create_app(detector, record=InspectionLog(tmp_path / "record"), stats=stats))
    plain = client.post("/predict", files={"file": ("a.png", png(image), "image/png")}).json()
    assert "heatmap_png" not in plain and "images" not in plain["timing_ms"]
    assert {"upload", "queue", "decode", "preprocess", "model", "maps", "regions", "record", "inference",
            "total"} <= set(plain["timing_ms"])
    assert client.post("/predict?images=true", files={"file": ("b.png", png(image), "image/png")}).json()["heatmap_png"]
    stages = stage_histograms(client.get("/metrics").text)
    expected = {stage: 2 for stage in STAGES} | {"images": 1}
    assert {stage: values["count"] for stage, values in stages.items()} == expected
    for values in stages.values():
        buckets = [values[str(le)] for le in BUCKETS] + [values["+Inf"]]
        assert buckets == sorted(buckets) and buckets[-1] == values["count"]  # cumulative, as Prometheus wants
    assert stages["model"]["sum"] > 0 and stages["model"]["+Inf"] == 2
    assert client.get("/stats").json()["stage_ms"]["model"] == pytest.approx(1000 * stages["model"]["sum"] / 2, abs=1e-3)


def test_a_stage_lands_in_its_bucket() -> None:
    stats = LiveStats(1.0, {})
    stats.add("OK", 0.5, 0.02, {"model": 0.004, "decode": 3.0})
    stages = stage_histograms(prometheus_text(stats.summary()))
    assert stages["model"]["0.0025"] == 0 and stages["model"]["0.005"] == 1 and stages["model"]["sum"] == 0.004
    assert stages["decode"]["2.5"] == 0 and stages["decode"]["+Inf"] == 1


class SlowBatches(RunDetector):
    """Records the size of every batch; the first one waits, so the requests sent meanwhile queue up.
    An image whose first pixel is 0 cannot be inspected."""

    def predict_batch(self, images, threshold=None, stopwatch=None):
        self.sizes.append(len(images))
        if len(self.sizes) == 1:
            time.sleep(0.3)
        if any(image[0, 0, 0] == 0 for image in images):
            raise SurfadError("a broken image")
        return super().predict_batch(images, threshold, stopwatch)


def test_concurrent_requests_are_inspected_together(detector: Detector, image: np.ndarray) -> None:
    """With max_batch, requests waiting together share one forward pass; each gets its own answer, and
    an image that breaks its batch fails its own request only."""
    spy = SlowBatches(detector.run, detector.config, detector.score_fn, detector.calibration, detector.runtime)
    spy.sizes = []
    batcher = Batcher(spy, max_batch=4)
    images = [np.clip(image.astype(int) + shift, 1, 255).astype(np.uint8) for shift in (0, 20, 40, 60, 80)]
    broken = images[2].copy()
    broken[0, 0] = 0

    async def inspect_all() -> list:
        first = asyncio.ensure_future(batcher.predict(images[0], Stopwatch()))
        await asyncio.sleep(0.1)  # the first batch is running: the next ones wait together
        rest = [batcher.predict(im, Stopwatch()) for im in [images[1], broken, *images[2:]]]
        return [await first, *await asyncio.gather(*rest, return_exceptions=True)]

    results = asyncio.run(inspect_all())
    # alone; the next four together, which fail and are inspected one by one; the fifth waiting one alone
    assert spy.sizes == [1, 4, 1, 1, 1, 1, 1]
    assert isinstance(results[2], SurfadError)
    for im, got in zip(images, [results[0], results[1], *results[3:]]):
        assert got.score == pytest.approx(detector.predict(im).score, rel=1e-5)
    watch = Stopwatch()
    asyncio.run(batcher.predict(images[0], watch))
    assert {"queue", "preprocess", "model", "maps", "regions"} <= set(watch.seconds)


def test_a_batching_service_answers_as_one_that_does_not(detector: Detector, image: np.ndarray) -> None:
    _, plain = post(TestClient(create_app(detector)), png(image))
    _, batched = post(TestClient(create_app(detector, max_batch=8)), png(image))
    assert batched["score"] == plain["score"] and batched["verdict"] == plain["verdict"]


def test_the_service_s_inference_threads_sleep_between_operators(tiny_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's threads spin while they wait by default; in the service that took the CPU decoding and
    answering needed (benchmarks/RESULTS.md, "Inspections per core"). Batch prediction keeps the default."""
    import onnxruntime

    from surfad.serve.app import ServiceOptions, build_app

    run = tiny_run()  # exported before the count starts
    spinning: list[str] = []
    real = onnxruntime.InferenceSession

    def session(path, options, *args, **kwargs):
        try:
            spinning.append(options.get_session_config_entry("session.intra_op.allow_spinning"))
        except Exception:  # onnxruntime raises when the entry was never set
            spinning.append("default")
        return real(path, options, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    Detector.load(run, runtime="onnx")
    build_app(ServiceOptions(run=str(run), runtime="onnx"))
    assert spinning == ["default", "0"]
