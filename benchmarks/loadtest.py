"""Load test of the inspection service on this machine: N POST /predict requests at concurrency C.

    python benchmarks/loadtest.py --run runs/wood --runtime onnx --requests 500 --concurrency 8
    python benchmarks/loadtest.py --url http://127.0.0.1:8000 --image board.png --api-key KEY

With --run it starts `surfad serve` on a free port of 127.0.0.1 and stops it afterwards; with --url it
targets a running service, which must be on 127.0.0.1 or localhost. The test is bounded: at most
--requests requests and --max-seconds seconds, after --warmup requests that are not measured (the
first answers pay for pools and caches starting). Reports requests/s, latency p50/p99/max and errors
(transport failures and non-200 answers, by status), and the mean milliseconds of each stage of a
request from the service's /stats. With --run, also the CPU time the service's processes spent per
request (which other work on the machine changes far less than requests/s) and the load
generator's own CPU per request (it shares the machine), and with --in-process
first what the detector alone does with the same image, runtime and threads (Detector.predict, and
predict_batch in batches of --concurrency images: images/s and CPU ms per image), so the service's
share of it is a ratio within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import cv2
import httpx
import numpy as np

LOCAL_HOSTS = ("127.0.0.1", "localhost")


async def run_load(url: str, payload: bytes, requests: int, concurrency: int, max_seconds: float,
                   api_key: str | None, images: bool) -> dict[str, object]:
    """Send up to `requests` uploads with `concurrency` clients; latencies of the 200 answers."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    sent = 0
    headers = {"X-API-Key": api_key} if api_key else {}
    deadline = time.perf_counter() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            start = time.perf_counter()
            try:
                response = await http.post("predict", files={"file": ("load.png", payload, "image/png")},
                                           params={"images": "true"} if images else None, headers=headers)
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
            except httpx.HTTPError as err:
                statuses[type(err).__name__] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(max(5.0, max_seconds))
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = np.array(latencies) * 1000
    return {
        "requests": sent,
        "ok": len(latencies),
        "errors": sent - len(latencies),
        "statuses": dict(statuses),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ok, 50)), 2) if len(ok) else None,
        "p99_ms": round(float(np.percentile(ok, 99)), 2) if len(ok) else None,
        "max_ms": round(float(ok.max()), 2) if len(ok) else None,
    }


def in_process_rates(args: argparse.Namespace, payload: bytes, seconds: float = 10.0) -> dict[str, float]:
    """Images/s of the detector alone on the upload (decoded once), and the CPU milliseconds it spends
    per image: one at a time, and in batches of --concurrency, with the threads one service worker gets."""
    from surfad.data.io import decode_image
    from surfad.detector import Detector
    from surfad.serve.app import worker_threads

    detector = Detector.load(args.run, runtime=args.runtime, threads=args.threads or worker_threads(args.workers))
    image = decode_image(payload, name="upload")
    rates = {}
    for name, batch in (("predict", 1), ("predict_batch", args.concurrency)):
        detector.predict_batch([image] * batch)
        done, started, started_cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            detector.predict_batch([image] * batch)
            done += batch
        rates[f"{name}_per_s"] = round(done / (time.perf_counter() - started), 2)
        rates[f"{name}_cpu_ms"] = round(1000 * (time.process_time() - started_cpu) / done, 2)
    return rates


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants now (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, utime+stime
    tree, total = {pid}, 0.0
    for _ in range(4):  # the service, uvicorn's workers, their helpers
        tree |= {p for p, (ppid, _) in stats.items() if ppid in tree}
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


def stage_means(url: str, api_key: str | None) -> dict[str, float]:
    headers = {"X-API-Key": api_key} if api_key else {}
    return {k: round(v, 2) for k, v in httpx.get(url + "stats", headers=headers, timeout=10).json()["stage_ms"].items()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """`surfad serve RUN` on a free local port; waits until /health answers."""
    port = free_port()
    command = [sys.executable, "-m", "surfad", "serve", str(args.run), "--host", "127.0.0.1",
               "--port", str(port), "--runtime", args.runtime, "--workers", str(args.workers),
               "--concurrency", str(args.service_concurrency), "--max-batch", str(args.max_batch),
               *(["--threads", str(args.threads)] if args.threads else [])]
    env = {k: v for k, v in os.environ.items() if k != "SURFAD_API_KEY"}
    if args.api_key:
        env["SURFAD_API_KEY"] = args.api_key  # not on the command line, where ps shows it
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the service
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the service exited: {log.read().strip()}")
        try:
            if httpx.get(url + "health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("the service did not answer /health within 60 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", type=Path, help="start `surfad serve RUN` locally for the test")
    target.add_argument("--url", help="a running service on 127.0.0.1, e.g. http://127.0.0.1:8000")
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "onnx-int8", "torch"], help="with --run")
    parser.add_argument("--in-process", action="store_true", help="with --run: also measure the detector alone")
    parser.add_argument("--workers", type=int, default=1, help="with --run: service processes (serve --workers)")
    parser.add_argument("--service-concurrency", type=int, default=1,
                        help="with --run: images each process inspects at once (serve --concurrency)")
    parser.add_argument("--max-batch", type=int, default=8, help="with --run: serve --max-batch")
    parser.add_argument("--threads", type=int, default=0, help="with --run: serve --threads (0: its default)")
    parser.add_argument("--image", type=Path, help="image to upload (default: seeded random 256x256 RGB PNG)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=32, help="requests sent first and not measured")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this long")
    parser.add_argument("--api-key")
    parser.add_argument("--images", action="store_true", help="ask for the heatmap/overlay PNGs too")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.max_seconds <= 0:
        parser.error("--requests, --concurrency and --max-seconds must be positive")
    if args.url and urlparse(args.url).hostname not in LOCAL_HOSTS:
        parser.error(f"--url must be on {' or '.join(LOCAL_HOSTS)}, got {args.url}")

    if args.image:
        payload = args.image.read_bytes()
    else:
        noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        payload = cv2.imencode(".png", noise)[1].tobytes()
    process, detector_alone = None, {}
    if args.run and args.in_process:
        detector_alone = in_process_rates(args, payload)
    if args.run:
        process, url = start_service(args)
    else:
        url = args.url.rstrip("/") + "/"
    try:
        if args.warmup:  # the first answers pay for thread pools and caches starting: not the steady state
            asyncio.run(run_load(url, payload, args.warmup, args.concurrency, args.max_seconds, args.api_key,
                                 args.images))
        cpu_before = tree_cpu_seconds(process.pid) if process is not None else None
        client_before = time.process_time()
        result = asyncio.run(run_load(url, payload, args.requests, args.concurrency, args.max_seconds,
                                      args.api_key, args.images))
        if result["ok"]:  # the load generator shares the machine: what it spends is not the service's to use
            result["client_cpu_ms_per_request"] = round(1000 * (time.process_time() - client_before) / result["ok"], 2)
        if process is not None and result["ok"]:
            result["service_cpu_ms_per_request"] = round(1000 * (tree_cpu_seconds(process.pid) - cpu_before)
                                                         / result["ok"], 2)
        result["stage_ms"] = stage_means(url, args.api_key)
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
    print(f"{url}: {result['requests']} requests at concurrency {args.concurrency} in {result['seconds']} s: "
          f"{result['requests_per_s']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"max {result['max_ms']} ms, errors {result['errors']} {result['statuses']}")
    print("mean ms per stage: " + ", ".join(f"{k} {v}" for k, v in result["stage_ms"].items()))
    if "service_cpu_ms_per_request" in result:
        print(f"service CPU per request: {result['service_cpu_ms_per_request']} ms (all its processes); "
              f"the load generator's: {result['client_cpu_ms_per_request']} ms")
    if detector_alone:
        result["detector_alone"] = detector_alone
        result["share_of_batched"] = round(result["requests_per_s"] / detector_alone["predict_batch_per_s"], 3)
        result["cpu_share_of_batched"] = round(detector_alone["predict_batch_cpu_ms"]
                                               / result["service_cpu_ms_per_request"], 3)
        print(f"detector alone: {detector_alone['predict_per_s']} img/s one at a time "
              f"({detector_alone['predict_cpu_ms']} CPU ms each), {detector_alone['predict_batch_per_s']} in batches "
              f"of {args.concurrency} ({detector_alone['predict_batch_cpu_ms']} CPU ms each); the service answered "
              f"{result['share_of_batched']:.0%} of the batched rate, at {result['cpu_share_of_batched']:.0%} of its "
              f"cost per image")
    if args.json:
        args.json.write_text(json.dumps({"url": url, "concurrency": args.concurrency, "workers": args.workers,
                                         "runtime": args.runtime, "max_batch": args.max_batch,
                                         "threads": args.threads, **result},
                                        indent=2) + "\n")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
