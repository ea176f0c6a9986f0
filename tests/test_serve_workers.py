"""`surfad serve --workers 2`: two processes on one port answer, /stats and /metrics count the whole
service, and recording stays one line per answered request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import wait_until_serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_workers_share_statistics_and_the_recording(tiny_run, tiny_mvtec: Path, tmp_path: Path) -> None:
    port = free_port()
    record = tmp_path / "record"
    server = subprocess.Popen([sys.executable, "-m", "surfad", "serve", str(tiny_run()), "--port", str(port),
                               "--workers", "2", "--record", str(record), "--keep-images", "all"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, server, time.monotonic() + 60, pause=0.3)
        images = sorted((tiny_mvtec / "test").rglob("*.png"))
        uploads = [images[i % len(images)] for i in range(24)]

        def post(path: Path) -> dict:
            with httpx.Client(timeout=30) as client:  # a new connection each time: either worker may take it
                answer = client.post(f"{url}/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
                assert answer.status_code == 200, answer.text
                return answer.json()

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, uploads))
        workers = set()
        for _ in range(40):
            with httpx.Client(timeout=5) as client:
                workers.add(client.get(f"{url}/health").json()["worker"])
        assert len(workers) == 2
        for _ in range(4):  # whichever worker answers, it reports the whole service
            with httpx.Client(timeout=5) as client:
                stats = client.get(f"{url}/stats").json()
            assert stats["inspected"] == 24 and stats["recent_scores"]["n"] == 24
            assert stats["counts"]["NG"] == sum(a["verdict"] == "NG" for a in answers)
        with httpx.Client(timeout=5) as client:
            metrics = client.get(f"{url}/metrics").text
        assert f'surfad_inspections_total{{verdict="NG"}} {stats["counts"]["NG"]}' in metrics
        lines = [json.loads(line) for line in (record / "inspections.jsonl").read_text().splitlines()]
        assert sorted(line["id"] for line in lines) == sorted(a["inspection_id"] for a in answers)
    finally:
        server.terminate()
        server.wait(timeout=30)
