"""The service's guards through the real `surfad serve` (one process, and two workers): the API key,
the Host check and the Origin check, as a browser or an attacker on the same machine meets them.

The servers run as subprocesses on free ports, so what is tested is what `surfad serve` passes on
to the app of each process (a dropped key or host list fails here, not only in create_app)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import wait_until_serving

KEY = "guard-key-123"
ALLOWED = "inspect.plant.local"


@dataclass
class Server:
    port: int
    key: str | None
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, host: str | None = None, origin: str | None = None,
                key: str | None = None, image: bytes | None = None) -> httpx.Response:
        """One request on a new connection (with two workers, either may take it)."""
        headers = {"Host": host or f"127.0.0.1:{self.port}"}
        if origin is not None:
            headers["Origin"] = origin
        if key is not None:
            headers["X-API-Key"] = key
        files = None if image is None else {"file": ("part.png", image, "image/png")}
        with httpx.Client(timeout=30) as client:
            return client.request(method, f"{self.url}{path}", headers=headers, files=files)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# name: (extra flags, key given in $SURFAD_API_KEY or None)
SETUPS = {
    "one process, no key": (["--allow-host", ALLOWED], None),
    "one process, --api-key": (["--api-key", KEY], None),
    "two workers, no key": (["--workers", "2", "--allow-host", ALLOWED], None),
    "two workers, $SURFAD_API_KEY": (["--workers", "2"], KEY),
}
KEYED = [name for name, (flags, env_key) in SETUPS.items() if "--api-key" in flags or env_key]
UNKEYED = [name for name in SETUPS if name not in KEYED]


def start_servers(run: Path, names: list[str]) -> dict[str, Server]:
    """The named setups' servers, started together, each once it answers /health."""
    started: dict[str, Server] = {}
    for name in names:
        flags, env_key = SETUPS[name]
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("SURFAD_API_KEY", None)
        if env_key:
            env["SURFAD_API_KEY"] = env_key
        process = subprocess.Popen([sys.executable, "-m", "surfad", "serve", str(run), "--port", str(port),
                                    "--threads", "1", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=env)
        started[name] = Server(port, KEY if name in KEYED else None, process)
    deadline = time.monotonic() + 120
    try:
        for server in started.values():
            wait_until_serving(server.url, server.process, deadline)
    except BaseException:
        stop_servers(started)
        raise
    return started


def stop_servers(servers: dict[str, Server]) -> None:
    for server in servers.values():
        server.process.terminate()
    for server in servers.values():
        server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def one_process_servers(tiny_run) -> Iterator[dict[str, Server]]:
    servers = start_servers(tiny_run(), [name for name in SETUPS if name.startswith("one process")])
    yield servers
    stop_servers(servers)


@pytest.fixture(scope="module")
def two_worker_servers(tiny_run) -> Iterator[dict[str, Server]]:
    """Slow to start (the service loads the model, then each worker does): about 15 s on 2 cores."""
    servers = start_servers(tiny_run(), [name for name in SETUPS if name.startswith("two workers")])
    yield servers
    stop_servers(servers)


def setups(names: list[str]) -> list:
    return [pytest.param(name, marks=[pytest.mark.slow] if name.startswith("two workers") else []) for name in names]


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Server:
    """The server of the test's setup (parametrized indirectly by name)."""
    group = "two_worker_servers" if request.param.startswith("two workers") else "one_process_servers"
    return request.getfixturevalue(group)[request.param]


@pytest.fixture(scope="module")
def image(tiny_mvtec: Path) -> bytes:
    return sorted((tiny_mvtec / "test" / "good").iterdir())[0].read_bytes()


# Origins of the same machine that are not the service's own (it listens on 127.0.0.1:PORT).
def foreign_origins(port: int) -> list[str]:
    return ["http://localhost:3000", f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", "http://[::1]:8080",
            f"http://[::1]:{port}0", "http://127.0.0.1", f"http://{ALLOWED}:{port + 1}", "https://evil.example", "null"]


@pytest.mark.parametrize("server", setups(list(SETUPS)), indirect=True)
def test_other_origins_are_refused_on_predict_and_model(server: Server, image: bytes) -> None:
    for origin in foreign_origins(server.port):
        for method, path, upload in (("POST", "/predict", image), ("GET", "/model", None)):
            answer = server.request(method, path, origin=origin, key=server.key, image=upload)
            assert answer.status_code == 403, (origin, path, answer.status_code, answer.text)
            assert "cross-origin" in answer.json()["detail"]


@pytest.mark.parametrize("server", setups(list(SETUPS)), indirect=True)
def test_the_page_works_from_its_own_origin(server: Server, image: bytes) -> None:
    """As opened at http://127.0.0.1:PORT, http://localhost:PORT or an --allow-host name (the page sends
    its own origin with every request it makes)."""
    names = ["127.0.0.1", "localhost"] + ([ALLOWED] if server.key is None else [])
    for name in names:
        host = f"{name}:{server.port}"
        page = server.request("GET", "/", host=host)
        assert page.status_code == 200 and 'id="file-input"' in page.text
        origin = f"http://{host}"
        assert server.request("GET", "/model", host=host, origin=origin, key=server.key).status_code == 200
        answer = server.request("POST", "/predict", host=host, origin=origin, key=server.key, image=image)
        assert answer.status_code == 200 and answer.json()["verdict"] in ("OK", "NG"), (name, answer.text)


@pytest.mark.parametrize("server", setups(UNKEYED), indirect=True)
def test_without_a_key_only_served_hosts_are_answered(server: Server, image: bytes) -> None:
    for host in (f"evil.example:{server.port}", f"{ALLOWED}.evil.example:{server.port}", "10.1.2.3"):
        for method, path, upload in (("POST", "/predict", image), ("GET", "/model", None)):
            answer = server.request(method, path, host=host, image=upload)
            assert answer.status_code == 403 and "not served here" in answer.json()["detail"], (host, path)
    assert server.request("GET", "/model").status_code == 200  # no key asked


@pytest.mark.parametrize("server", setups(KEYED), indirect=True)
def test_with_a_key_every_route_but_health_and_the_page_needs_it(server: Server, image: bytes) -> None:
    assert server.key == KEY
    for key in (None, "wrong", KEY[:-1], ""):
        for method, path, upload in (("POST", "/predict", image), ("GET", "/model", None), ("GET", "/stats", None),
                                     ("GET", "/metrics", None)):
            answer = server.request(method, path, key=key, image=upload)
            assert answer.status_code == 401, (key, path, answer.status_code)
    assert server.request("GET", "/health").status_code == 200 and server.request("GET", "/").status_code == 200
    # With a key any Host is answered (the key protects the service), but never without the key.
    assert server.request("GET", "/model", host=f"evil.example:{server.port}", key=KEY).status_code == 200
    assert server.request("GET", "/model", host=f"evil.example:{server.port}").status_code == 401
    assert server.request("POST", "/predict", key=KEY, image=image).status_code == 200
