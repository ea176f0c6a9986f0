"""HTTP inspection service: POST an image, get the verdict; a web page for inspectors at /.

    surfad serve runs/wood --runtime onnx --api-key SECRET
    curl -H "X-API-Key: SECRET" -F file=@board.png "http://127.0.0.1:8000/predict?images=true"

Routes:
    GET  /          the web page (static, self-contained; holds no model data, so it needs no key)
    GET  /health    {"status": "ok", "worker": PID}; never needs a key (for load balancers and monitoring)
    GET  /model     Detector.info(): model, input size, thresholds, training data, versions, limits
    GET  /stats     verdict counts since the start, NG rate, quantiles of the last 1000 scores beside
                    those of the good validation images (surfad.serve.record.LiveStats)
    GET  /metrics   the same for Prometheus (text exposition format)
    POST /predict   multipart/form-data, the image in field "file"; `images=true` (query or form
                    field) adds base64 PNGs of the heatmap and the overlay with the regions drawn, and
                    region_crops: each region's crop beside its nearest good example's (null for a
                    region without one)

Recording (`record`, an InspectionLog): every inspection is appended to inspections.jsonl and NG
and REVIEW uploads (or all, or none) are kept as they were sent; the answer then carries its "inspection_id".
When writing fails (a full disk), the answer still carries the verdict, with "inspection_id" null
and a "recording_error".

API key: with `api_key` set, /model, /stats, /metrics and /predict need the header ``X-API-Key``. The page asks for
the key when the service answers 401 and keeps it in the browser's localStorage, then sends it as
that header; it is never put in a URL. Use HTTPS (a reverse proxy) when the key crosses a network.
An empty key is refused (`--api-key "$KEY"` with KEY unset would otherwise serve without one).

Hosts: without an API key, `surfad serve` answers only requests whose Host is a served host: the
address it listens on (not a wildcard such as 0.0.0.0, which names no host), localhost, 127.0.0.1,
::1 and each --allow-host name; so a foreign name pointed at this address (DNS rebinding) cannot
read /model. With an API key every Host is answered: the key protects the service.

Origins: a request with an Origin header passes only when that origin is the request's own, the
origin of the page at / it was sent to: the same scheme (http, or https when a proxy on this
machine says so in X-Forwarded-Proto), host and port as the request's URL (its Host header).
So the page works from wherever it was opened (http://127.0.0.1:PORT, http://localhost:PORT,
http://NAME:PORT for an --allow-host NAME, https://NAME behind a proxy that passes Host and
X-Forwarded-Proto), and any other origin is refused (403), including another port, scheme or
address of the same machine (http://localhost:3000 against a service on 127.0.0.1:8000): a web
page elsewhere cannot post uploads (which would be recorded) nor read /model. The same holds with
an API key and with a wildcard bind: the origin must be the one the request was addressed to.
Answers carry no file-system paths.

Limits: uploads over `max_upload_bytes` get 413 (checked on the bytes received, so a client cannot
get around it by omitting Content-Length); images over `max_pixels` get 413, checked on the file
header before any decoding, and only formats whose header is checked (PNG, JPEG, BMP, TIFF, WebP)
are decoded at all, so a small file cannot inflate to a huge image. The content is judged by its
header and decoding (surfad.data.io.decode_image), never by the file name: empty -> 400, not a
readable image -> 415, no "file" field -> 422, not multipart -> 415. Every error is JSON
{"detail": "<message>"}.

Concurrency: decoding, inference and the answer (the PNGs, the record, the statistics, the JSON)
run in worker threads, never on the event loop, and all requests share one Detector. Concurrent
calls are safe for every runtime (onnxruntime sessions allow concurrent `run`; the torch graph is
in eval mode under inference_mode, which changes no state). At most `concurrency` images are
inspected at once by a process: each inference already uses the process's cores, so more only
adds contention and memory. With `max_batch` > 1, the requests waiting together are inspected in
one forward pass instead (Batcher). Every request's time is timed stage by stage
(surfad.serve.record.STAGES) into its answer's timing_ms and the /metrics histograms. `surfad serve --workers N` runs
N such processes on one port (uvicorn's workers), each with its share of the cores (--threads);
they share /stats and /metrics through a SQLite file (SharedStats) and append to one
inspections.jsonl under a file lock, a line per inspection.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import queue
import secrets
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from surfad import __version__
from surfad.data.io import decode_image
from surfad.detector import Detector
from surfad.errors import BadInputError, ImageTooLarge, SurfadError
from surfad.serve import MAX_BATCH
from surfad.serve.record import STAGES, InspectionLog, LiveStats, SharedStats, prometheus_text
from surfad.utils import Stopwatch
from surfad.verdict import Prediction
from surfad.visualize import encode_png, render

STATIC = Path(__file__).parent / "static"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and small fields beside the file
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
DETECTOR_STAGES = ("preprocess", "model", "maps", "regions", "explain")  # Detector.predict's laps: "inference" in timing_ms
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'")


class RequestError(Exception):
    """A client error answered as JSON {"detail": message} with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _BodyTooLarge(Exception):
    """Raised from the receive channel when a request body passes its limit."""


def hostname(authority: str) -> str:
    """'example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1' (lower case)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_key(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL, the port filled in from the scheme; None when it names
    no host ("null", file:, a malformed address)."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if not host or scheme not in DEFAULT_PORTS:
        return None
    return scheme, host, DEFAULT_PORTS[scheme] if port is None else port


def guard_origin(app: FastAPI, allowed_hosts: frozenset[str] | None) -> None:
    """Refuse (403) a request whose Host is not served here (when allowed_hosts is given: DNS
    rebinding points a foreign name at this address) or whose Origin is not the request's own
    (scheme, host and port; a page elsewhere posting uploads). See the module doc."""

    @app.middleware("http")
    async def check(request: Request, call_next: Any) -> Any:
        host = request.headers.get("host", "")
        if allowed_hosts is not None and hostname(host) not in allowed_hosts:
            return JSONResponse({"detail": f"host {hostname(host)!r} is not served here; start the service with "
                                           f"--allow-host {hostname(host) or 'NAME'} to allow it"}, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None:
            own = origin_key(f"{request.url.scheme}://{host}")
            if own is None or origin_key(origin) != own:
                served = "" if own is None else f" (this service is {own[0]}://{host.lower()})"
                return JSONResponse({"detail": f"cross-origin request from {origin!r} refused{served}"},
                                    status_code=403)
        return await call_next(request)


def public(info: Any) -> Any:
    """A detector's info without file-system paths (the training data's "path"), for clients."""
    if isinstance(info, dict):
        return {k: public(v) for k, v in info.items() if k != "path"}
    if isinstance(info, list):
        return [public(v) for v in info]
    return info


def create_app(detector: Detector, api_key: str | None = None, max_upload_bytes: int = 10_000_000,
               max_pixels: int = 40_000_000, concurrency: int = 1, record: InspectionLog | None = None,
               allowed_hosts: frozenset[str] | None = None, stats: LiveStats | SharedStats | None = None,
               max_batch: int = 1) -> FastAPI:
    """The service around one loaded Detector (see the module doc for routes, limits, keys, origin
    checks and recording). allowed_hosts: the Host names served (None: any); concurrency: images
    inspected at once; stats: where /stats counts (default: this process's LiveStats); max_batch > 1:
    concurrent requests are inspected together, up to that many per forward pass (Batcher)."""
    if max_upload_bytes < 1 or max_pixels < 1 or concurrency < 1 or max_batch < 1:
        raise ValueError("max_upload_bytes, max_pixels, concurrency and max_batch must be positive")
    check_api_key(api_key)
    app = FastAPI(title="surfad", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    guard_origin(app, allowed_hosts)
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    limiter = anyio.CapacityLimiter(concurrency)
    batcher = Batcher(detector, max_batch) if max_batch > 1 else None
    limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}
    stats = stats or LiveStats(detector.threshold, detector.calibration.normal_stats)
    answer_errors_as_json(app)
    check_key = key_check(api_key)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "worker": os.getpid()}  # which worker process answered

    @app.get("/model", dependencies=[Depends(check_key)])
    async def model() -> dict[str, Any]:
        return {**public(detector.info()), "service_version": __version__, "limits": limits}

    @app.get("/stats", dependencies=[Depends(check_key)])
    async def live_stats() -> dict[str, Any]:
        summary = await anyio.to_thread.run_sync(stats.summary)
        return {**{k: v for k, v in summary.items() if k != "stage_histograms"}, "recording": record is not None}

    @app.get("/metrics", dependencies=[Depends(check_key)], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        text = prometheus_text(await anyio.to_thread.run_sync(stats.summary))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post("/predict", dependencies=[Depends(check_key)])
    async def predict(request: Request, images: str | None = None) -> Response:
        watch = Stopwatch()
        data, name, form_images = await _read_upload(request, max_upload_bytes)
        want_images = _flag(images if images is not None else form_images, "images")
        watch.lap("upload")
        image = await anyio.to_thread.run_sync(_decode, detector, data, name, max_pixels, watch)
        if batcher is not None:
            pred = await batcher.predict(image, watch)
        else:
            pred = await anyio.to_thread.run_sync(_predict, detector, image, watch, limiter=limiter)
        body = await anyio.to_thread.run_sync(_answer, detector, image, pred, name, want_images, data, record,
                                              stats, watch)
        return Response(body, media_type="application/json")

    return app


def answer_errors_as_json(app: FastAPI) -> None:
    """Every error as JSON {"detail": message}; an internal one without internals (the server logs them)."""

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error ({type(err).__name__}); see the service log"}, status_code=500)


def check_api_key(api_key: str | None) -> None:
    """SurfadError for an empty or blank key: serving would need no key (or an empty header) where one was
    meant, as `--api-key "$KEY"` gives with KEY unset. None means no key."""
    if api_key is not None and not api_key.strip():
        raise SurfadError("the API key is empty (an unset variable in --api-key \"$KEY\"?): give a key in "
                          "$SURFAD_API_KEY or --api-key, or neither to serve without one")


def key_check(api_key: str | None) -> Any:
    """The dependency that requires the X-API-Key header (nothing without a key)."""

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            raise RequestError(401, "missing API key: send it in the X-API-Key header")
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise RequestError(401, "wrong API key (X-API-Key header)")

    return check_key


def record_inspection(record: InspectionLog, data: bytes, result: dict[str, Any], model: str) -> None:
    """Log the inspection into `result["inspection_id"]`; a full or failing disk must not cost the line
    its verdict, so a failure is said in the answer ("recording_error", without paths) instead."""
    try:
        result["inspection_id"] = record.record(data, result, model)
    except OSError as err:
        result["inspection_id"] = None
        result["recording_error"] = f"not recorded: {err.strerror or type(err).__name__}"
        print(f"recording failed: {err}", file=sys.stderr)


def _answer(detector: Detector, image: np.ndarray, pred: Prediction, name: str, want_images: bool, data: bytes,
            record: InspectionLog | None, stats: LiveStats | SharedStats, watch: Stopwatch) -> bytes:
    """The answer to one inspection: the PNGs when asked for (they cost more than the rest of the
    answer), the record (with --record), the statistics and the JSON encoding. In a worker thread: the
    log, the shared statistics' SQLite file and the encoding would each hold up the event loop."""
    height, width = image.shape[:2]
    result: dict[str, Any] = {**pred.to_dict(), "width": width, "height": height, "filename": name}
    if want_images:
        heat, picture = render(image, pred.anomaly_map, detector.calibration.pixel_threshold, pred.regions,
                               detector.roi_at(height, width))
        result["heatmap_png"] = base64.b64encode(encode_png(heat)).decode()
        result["overlay_png"] = base64.b64encode(encode_png(picture)).decode()
        result["region_crops"] = [_crop_pngs(detector.crops(image, region)) for region in pred.regions]
        watch.lap("images")
    if record is not None:
        record_inspection(record, data, result, detector.name)
        watch.lap("record")
    stages = watch.seconds
    result["timing_ms"] = {stage: round(1000 * stages[stage], 2) for stage in STAGES if stage in stages}
    result["timing_ms"]["inference"] = round(1000 * sum(stages[s] for s in DETECTOR_STAGES if s in stages), 2)
    total = sum(stages.values())
    result["timing_ms"]["total"] = round(1000 * total, 2)
    body = json.dumps(result, allow_nan=False, separators=(",", ":")).encode()
    watch.lap("respond")
    stats.add(result["verdict"], result["score"], total + stages["respond"], stages)
    return body


async def _read_upload(request: Request, max_upload_bytes: int) -> tuple[bytes, str, str | None]:
    """(file bytes, file name, the "images" form field) of a multipart upload, within the size limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise RequestError(415, f"expected multipart/form-data with the image in field 'file', got {content_type or 'no content type'!r}")
    limit = max_upload_bytes + FORM_OVERHEAD
    too_large = f"upload too large: the limit is {max_upload_bytes} bytes"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, too_large)
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise _BodyTooLarge
        return message

    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=16)
    except _BodyTooLarge:
        raise RequestError(413, too_large) from None
    try:
        upload = form.get("file")
        if upload is None:
            raise RequestError(422, "missing form field 'file' (the image, sent as multipart/form-data)")
        if isinstance(upload, str):
            raise RequestError(422, "form field 'file' must be a file upload, not a text value")
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise RequestError(413, too_large)
        images = form.get("images")
        return data, upload.filename or "upload", images if isinstance(images, str) else None
    finally:
        await form.close()


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    text = value.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise RequestError(422, f"{name}={value!r}: expected true or false")


def _decode(detector: Detector, data: bytes, name: str, max_pixels: int, watch: Stopwatch) -> np.ndarray:
    """Decode and check one upload (in a worker thread)."""
    if not data:
        raise RequestError(400, f"{name}: empty file")
    try:
        image = decode_image(data, name=name, max_pixels=max_pixels)  # the header is checked before decoding
    except ImageTooLarge as err:
        raise RequestError(413, str(err)) from None
    except BadInputError as err:
        raise RequestError(415, f"{err}; send a PNG, JPEG, BMP, TIFF or WebP image") from None
    try:
        detector.check_image(image, name)
    except BadInputError as err:
        raise RequestError(422, str(err)) from None
    watch.lap("decode")
    return image


def _predict(detector: Detector, image: np.ndarray, watch: Stopwatch) -> Prediction:
    """Inspect one decoded image (in a worker thread, once an inference slot is free: the wait is the
    "queue" stage)."""
    watch.lap("queue")
    return detector.predict(image, stopwatch=watch)


Job = tuple[np.ndarray, Stopwatch, "asyncio.Future[Prediction]", asyncio.AbstractEventLoop]


class Batcher:
    """Inspects the images of concurrent requests together. One thread takes every request waiting
    when it is free (at most max_batch) into one Detector.predict_batch: a lone request waits for
    no other, and a busy service runs batches, which score faster per image (padim reads its
    Gaussians once per batch). Each request is charged the whole batch's stages; a batch that fails
    is inspected image by image, so an error is answered to the request it belongs to."""

    def __init__(self, detector: Detector, max_batch: int) -> None:
        self.detector = detector
        self.max_batch = max_batch
        self.waiting: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def predict(self, image: np.ndarray, watch: Stopwatch) -> Prediction:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Prediction] = loop.create_future()
        with self._lock:
            if self._thread is None:  # started by the first request, in the process that serves it
                self._thread = threading.Thread(target=self._run, name="surfad-batcher", daemon=True)
                self._thread.start()
        self.waiting.put((image, watch, answer, loop))
        return await answer

    def _run(self) -> None:
        while True:
            jobs = [self.waiting.get()]
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            self._inspect_all(jobs)

    def _inspect_all(self, jobs: list[Job]) -> None:
        for _, watch, _, _ in jobs:
            watch.lap("queue")
        batch = Stopwatch()
        try:
            outcomes = [(p, None) for p in self.detector.predict_batch([job[0] for job in jobs], stopwatch=batch)]
        except Exception as err:  # answered to the requests below
            outcomes = [(None, err)] if len(jobs) == 1 else [self._alone(job[0]) for job in jobs]
        for (_, watch, answer, loop), (pred, err) in zip(jobs, outcomes):
            watch.charge(batch.seconds)
            loop.call_soon_threadsafe(_settle, answer, pred, err)

    def _alone(self, image: np.ndarray) -> tuple[Prediction | None, Exception | None]:
        try:
            return self.detector.predict(image), None
        except Exception as err:  # answered to its request
            return None, err


def _settle(answer: asyncio.Future[Prediction], pred: Prediction | None, err: Exception | None) -> None:
    if answer.cancelled():  # the client went away
        return
    if err is not None:
        answer.set_exception(err)
    else:
        answer.set_result(pred)


def _crop_pngs(pair: tuple[np.ndarray, np.ndarray] | None) -> dict[str, str] | None:
    """A region's crop and its nearest good example's, as base64 PNGs (None without a nearest good example)."""
    if pair is None:
        return None
    return {"region_png": base64.b64encode(encode_png(pair[0])).decode(),
            "nearest_good_png": base64.b64encode(encode_png(pair[1])).decode()}


@dataclass
class ServiceOptions:
    """What `surfad serve` was asked for; every worker process builds its app from these."""

    run: str
    runtime: str = "onnx"
    api_key: str | None = None
    max_upload_bytes: int = 10_000_000
    max_pixels: int = 40_000_000
    concurrency: int = 1
    max_batch: int = MAX_BATCH  # > 1: concurrent requests inspected together (Batcher)
    record: str | None = None
    keep_images: str = "ng"
    allowed_hosts: list[str] | None = None  # None: any (an API key protects the service)
    roi: str | None = None
    threads: int = 0  # CPU threads for each process's inference (0: every core)
    stats_db: str | None = None  # several workers: the SQLite file their SharedStats share
    started: str | None = None  # ISO time the service started (for /stats)


def build_app(options: ServiceOptions, detector: Detector | None = None) -> FastAPI:
    """The service as `options` say, with `detector` or the one they name loaded here (in each worker
    process)."""
    if detector is None:
        detector = Detector.load(options.run, runtime=options.runtime, roi=options.roi, threads=options.threads,
                                 busy_wait=False)  # its threads leave the cores to decoding and answering
    stats = None
    if options.stats_db is not None:
        stats = SharedStats(options.stats_db, detector.threshold, detector.calibration.normal_stats,
                            datetime.fromisoformat(options.started) if options.started else None)
    return create_app(detector, api_key=options.api_key, max_upload_bytes=options.max_upload_bytes,
                      max_pixels=options.max_pixels, concurrency=options.concurrency,
                      record=None if options.record is None else InspectionLog(options.record, options.keep_images),
                      allowed_hosts=None if options.allowed_hosts is None else frozenset(options.allowed_hosts),
                      stats=stats, max_batch=options.max_batch)


OPTIONS_ENV = "SURFAD_SERVE_OPTIONS"  # the JSON ServiceOptions a worker process reads


def app_from_environment() -> FastAPI:
    """The app of one worker of a multi-process service (uvicorn's factory; see serve)."""
    return build_app(ServiceOptions(**json.loads(os.environ[OPTIONS_ENV])))


LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def served_hosts(host: str, api_key: str | None, allow_hosts: list[str]) -> frozenset[str] | None:
    """The Host names a service answers: any with an API key (the key protects it); else the bound
    address (unless it is a wildcard, which names no host), the local names and `allow_hosts`. Origins
    are checked against each request's own (guard_origin) whichever hosts are served."""
    if api_key:
        return None
    names = {*LOCAL_NAMES, *(hostname(h) for h in allow_hosts)}
    if host not in WILDCARDS:
        names.add(hostname(host))
    return frozenset(names)


def worker_threads(workers: int) -> int:
    """Inference threads per worker when not given: one worker uses every core (0, the runtime's
    default); several share them, since more threads than cores in all only adds contention."""
    return 0 if workers == 1 else max(1, (os.cpu_count() or 1) // workers)


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, runtime: str = "onnx",
          api_key: str | None = None, max_upload_bytes: int = 10_000_000, max_pixels: int = 40_000_000,
          concurrency: int = 1, record: str | Path | None = None, keep_images: str = "ng",
          allow_hosts: list[str] | None = None, roi: str | Path | None = None, workers: int = 1,
          threads: int = 0, max_batch: int = MAX_BATCH) -> None:
    """Serve the run with uvicorn until interrupted: one process, or `workers` processes behind the
    same port (their /stats and /metrics shared, their recording one line per inspection).
    threads: inference threads per process; 0 shares the cores among the workers (every core for one);
    max_batch: see create_app."""
    import uvicorn

    check_api_key(api_key)
    threads = threads or worker_threads(workers)
    hosts = served_hosts(host, api_key, allow_hosts or [])
    options = ServiceOptions(run=str(run), runtime=runtime, api_key=api_key, max_upload_bytes=max_upload_bytes,
                             max_pixels=max_pixels, concurrency=concurrency, max_batch=max_batch,
                             record=None if record is None else str(record), keep_images=keep_images,
                             allowed_hosts=None if hosts is None else sorted(hosts),
                             roi=None if roi is None else str(roi), threads=threads)
    detector = Detector.load(run, runtime=runtime, roi=roi, threads=threads, busy_wait=False)
    app = build_app(options, detector)  # a bad run, ROI or recording folder fails now, not in a worker
    if host not in LOCAL_NAMES and not api_key:
        print(f"warning: serving on {host} without --api-key: anyone who can reach it can use the model; "
              f"requests must name one of these hosts: {', '.join(sorted(hosts or ()))} (add others with --allow-host)")
    per_worker = f"{threads} thread(s) each" if threads else "every core"
    print(f"serving {run} ({detector.name}, runtime {runtime}, {workers} worker(s), {per_worker}) "
          f"on http://{host}:{port}/")
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    del app, detector  # each worker process loads its own
    with tempfile.TemporaryDirectory(prefix="surfad-serve-") as shared:
        options.stats_db = str(Path(shared) / "stats.sqlite")
        options.started = datetime.now(timezone.utc).isoformat()
        os.environ[OPTIONS_ENV] = json.dumps(dataclasses.asdict(options))
        uvicorn.run("surfad.serve.app:app_from_environment", factory=True, workers=workers, host=host, port=port,
                    log_level="info")
