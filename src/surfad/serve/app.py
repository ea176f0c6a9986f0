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

Origins: a request whose Origin header names another site is refused (403), so a web page
elsewhere cannot post uploads (which would be recorded). Without an API key, `surfad serve` also
answers only requests whose Host is the address served, localhost or an --allow-host name, so a
foreign name pointed at this address (DNS rebinding) cannot read /model. Answers carry no
file-system paths.

Limits: uploads over `max_upload_bytes` get 413 (checked on the bytes received, so a client cannot
get around it by omitting Content-Length); images over `max_pixels` get 413, checked on the file
header before any decoding, and only formats whose header is checked (PNG, JPEG, BMP, TIFF, WebP)
are decoded at all, so a small file cannot inflate to a huge image. The content is judged by its
header and decoding (surfad.data.io.decode_image), never by the file name: empty -> 400, not a
readable image -> 415, no "file" field -> 422, not multipart -> 415. Every error is JSON
{"detail": "<message>"}.

Concurrency: decoding and inference run in worker threads, never on the event loop, and all
requests share one Detector. Concurrent calls are safe for both runtimes (onnxruntime sessions
allow concurrent `run`; the torch graph is in eval mode under inference_mode, which changes no
state). At most `concurrency` images are inspected at once by a process: each inference already
uses the process's cores, so more only adds contention and memory. `surfad serve --workers N` runs
N such processes on one port (uvicorn's workers), each with its share of the cores (--threads);
they share /stats and /metrics through a SQLite file (SharedStats) and append to one
inspections.jsonl under a file lock, a line per inspection.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from surfad import __version__
from surfad.data.io import decode_image
from surfad.detector import Detector
from surfad.errors import BadInputError, ImageTooLarge
from surfad.serve.record import InspectionLog, LiveStats, SharedStats, prometheus_text
from surfad.visualize import encode_png, render

STATIC = Path(__file__).parent / "static"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and small fields beside the file
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
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


def guard_origin(app: FastAPI, allowed_hosts: frozenset[str] | None) -> None:
    """Refuse (403) a request whose Host is not served here (when allowed_hosts is given: DNS
    rebinding points a foreign name at this address) or whose Origin is another site (a page
    elsewhere posting uploads): an Origin passes when it is this Host or an allowed host."""

    @app.middleware("http")
    async def check(request: Request, call_next: Any) -> Any:
        host = request.headers.get("host", "")
        if allowed_hosts is not None and hostname(host) not in allowed_hosts:
            return JSONResponse({"detail": f"host {hostname(host)!r} is not served here; start the service with "
                                           f"--allow-host {hostname(host) or 'NAME'} to allow it"}, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None:
            netloc = urlsplit(origin).netloc.lower()
            if netloc != host.lower() and hostname(netloc) not in (allowed_hosts or ()):
                return JSONResponse({"detail": f"cross-site request from {origin!r} refused"}, status_code=403)
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
               allowed_hosts: frozenset[str] | None = None, stats: LiveStats | SharedStats | None = None) -> FastAPI:
    """The service around one loaded Detector (see the module doc for routes, limits, keys, origin
    checks and recording). allowed_hosts: the Host names served (None: any); concurrency: images
    inspected at once; stats: where /stats counts (default: this process's LiveStats)."""
    if max_upload_bytes < 1 or max_pixels < 1 or concurrency < 1:
        raise ValueError("max_upload_bytes, max_pixels and concurrency must be positive")
    app = FastAPI(title="surfad", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    guard_origin(app, allowed_hosts)
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    limiter = anyio.CapacityLimiter(concurrency)
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
        return {**stats.summary(), "recording": record is not None}

    @app.get("/metrics", dependencies=[Depends(check_key)], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus_text(stats.summary()), media_type="text/plain; version=0.0.4")

    @app.post("/predict", dependencies=[Depends(check_key)])
    async def predict(request: Request, images: str | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        data, name, form_images = await _read_upload(request, max_upload_bytes)
        want_images = _flag(images if images is not None else form_images, "images")
        result = await anyio.to_thread.run_sync(
            _inspect, detector, data, name, max_pixels, want_images, limiter=limiter
        )
        stats.add(result["verdict"], result["score"], time.perf_counter() - started)
        if record is not None:
            await record_inspection(record, data, result, detector.name)
        result["timing_ms"]["total"] = round(1000 * (time.perf_counter() - started), 2)
        return result

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


async def record_inspection(record: InspectionLog, data: bytes, result: dict[str, Any], model: str) -> None:
    """Log the inspection into `result["inspection_id"]`; a full or failing disk must not cost the line
    its verdict, so a failure is said in the answer ("recording_error", without paths) instead."""
    try:
        result["inspection_id"] = await anyio.to_thread.run_sync(record.record, data, result, model)
    except OSError as err:
        result["inspection_id"] = None
        result["recording_error"] = f"not recorded: {err.strerror or type(err).__name__}"
        print(f"recording failed: {err}", file=sys.stderr)


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


def _inspect(detector: Detector, data: bytes, name: str, max_pixels: int, want_images: bool) -> dict[str, Any]:
    """Decode, check and inspect one upload (runs in a worker thread)."""
    started = time.perf_counter()
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
    height, width = image.shape[:2]
    decoded = time.perf_counter()
    pred = detector.predict(image)
    inferred = time.perf_counter()
    result: dict[str, Any] = {**pred.to_dict(), "width": width, "height": height, "filename": name}
    if want_images:
        heat, picture = render(image, pred.anomaly_map, detector.calibration.pixel_threshold, pred.regions,
                               detector.roi_at(height, width))
        result["heatmap_png"] = base64.b64encode(encode_png(heat)).decode()
        result["overlay_png"] = base64.b64encode(encode_png(picture)).decode()
        result["region_crops"] = [_crop_pngs(detector.crops(image, region)) for region in pred.regions]
    result["timing_ms"] = {
        "decode": round(1000 * (decoded - started), 2),
        "inference": round(1000 * (inferred - decoded), 2),
    }
    if want_images:
        result["timing_ms"]["images"] = round(1000 * (time.perf_counter() - inferred), 2)
    return result


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
        detector = Detector.load(options.run, runtime=options.runtime, roi=options.roi, threads=options.threads)
    stats = None
    if options.stats_db is not None:
        stats = SharedStats(options.stats_db, detector.threshold, detector.calibration.normal_stats,
                            datetime.fromisoformat(options.started) if options.started else None)
    return create_app(detector, api_key=options.api_key, max_upload_bytes=options.max_upload_bytes,
                      max_pixels=options.max_pixels, concurrency=options.concurrency,
                      record=None if options.record is None else InspectionLog(options.record, options.keep_images),
                      allowed_hosts=None if options.allowed_hosts is None else frozenset(options.allowed_hosts),
                      stats=stats)


OPTIONS_ENV = "SURFAD_SERVE_OPTIONS"  # the JSON ServiceOptions a worker process reads


def app_from_environment() -> FastAPI:
    """The app of one worker of a multi-process service (uvicorn's factory; see serve)."""
    return build_app(ServiceOptions(**json.loads(os.environ[OPTIONS_ENV])))


LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def served_hosts(host: str, api_key: str | None, allow_hosts: list[str]) -> frozenset[str] | None:
    """The Host names a service answers: any with an API key (the key protects it); else the bound
    address (unless it is a wildcard), the local names and `allow_hosts`."""
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
          threads: int = 0) -> None:
    """Serve the run with uvicorn until interrupted: one process, or `workers` processes behind the
    same port (their /stats and /metrics shared, their recording one line per inspection).
    threads: inference threads per process; 0 shares the cores among the workers (every core for one)."""
    import uvicorn

    threads = threads or worker_threads(workers)
    hosts = served_hosts(host, api_key, allow_hosts or [])
    options = ServiceOptions(run=str(run), runtime=runtime, api_key=api_key, max_upload_bytes=max_upload_bytes,
                             max_pixels=max_pixels, concurrency=concurrency,
                             record=None if record is None else str(record), keep_images=keep_images,
                             allowed_hosts=None if hosts is None else sorted(hosts),
                             roi=None if roi is None else str(roi), threads=threads)
    detector = Detector.load(run, runtime=runtime, roi=roi, threads=threads)
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
