"""Training with several processes (torch.distributed, gloo on CPU), as torchrun runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from surfad import bundle
from surfad.data.synthetic_wood import write_synthetic_dataset

pytestmark = pytest.mark.slow
ARGS = ["--model", "unet_vae", "--preset", "tiny", "--image-size", "32", "--threads", "1", "--quiet", "--grid-every", "0", "--select-after", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(data: Path, out: Path, batch: int, epochs: int, *extra: str, processes: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                             "-m", "surfad", "train", "--data", str(data), "--out", str(out), "--batch-size", str(batch),
                             "--epochs", str(epochs), *ARGS, *extra], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def single(data: Path, out: Path, batch: int, epochs: int, *extra: str) -> None:
    done = subprocess.run([sys.executable, "-m", "surfad", "train", "--data", str(data), "--out", str(out),
                           "--batch-size", str(batch), "--epochs", str(epochs), *ARGS, *extra], env=ENV,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def finished(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def relative_difference(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    keys = [k for k in x if x[k].dtype.kind == "f"]
    return float(np.sqrt(sum(((x[k] - y[k]) ** 2).sum() for k in keys) / sum((x[k] ** 2).sum() for k in keys)))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("ddp"), seed=3, size=64, n_train=24, n_test_good=4,
                                   n_test_defect=4, n_val_good=2, n_val_defect=2)


def test_two_processes_match_one_with_the_same_global_batch(data: Path, tmp_path: Path) -> None:
    """Broken sharding (every process on every sample) or gradients not averaged would give other
    steps. Not bit-identical: each process normalises its own half batch (BatchNorm), and the VAE
    draws its noise per process; the stated tolerance is 5% of the weights' norm (another seed: ~70%)."""
    output = finished(torchrun(data, tmp_path / "ddp", batch=2, epochs=2))
    single(data, tmp_path / "one", batch=4, epochs=2)
    single(data, tmp_path / "other_seed", 4, 2, "--seed", "1")
    assert output.count("run folder:") == 1 and "2 processes" in output
    last = "checkpoints/last.safetensors"
    difference = relative_difference(tmp_path / "one" / last, tmp_path / "ddp" / last)
    assert difference < 0.05 and difference < 0.1 * relative_difference(tmp_path / "one" / last,
                                                                       tmp_path / "other_seed" / last)
    losses = [[float(row.split(",")[2]) for row in (tmp_path / run / "history.csv").read_text().splitlines()[1:]]
              for run in ("one", "ddp")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=0.02)
    for name in ("config.yaml", "splits.json", "meta.json", "model.safetensors", "calibration.json", "history.csv"):
        assert (tmp_path / "ddp" / name).is_file(), name


def test_a_distributed_run_resumes_exactly(data: Path, tmp_path: Path) -> None:
    finished(torchrun(data, tmp_path / "straight", batch=2, epochs=6))
    run = tmp_path / "killed"
    process = torchrun(data, run, batch=2, epochs=6)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last_state.pt").is_file():  # killed after a first checkpoint
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # the launcher; its workers are stopped with it
    process.wait(timeout=30)
    subprocess.run(["pkill", "-9", "-f", str(run)], check=False)
    assert len((run / "history.csv").read_text().splitlines()) - 1 < 6  # it had not finished
    resumed = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                "-m", "surfad", "train", "--out", str(run), "--resume", "--quiet"], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert "resuming" in finished(resumed)
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        assert relative_difference(tmp_path / "straight" / name, run / name) < 1e-6, name


def test_a_stop_decided_by_process_0_stops_every_process(data: Path, tmp_path: Path) -> None:
    """Broken: each process deciding alone (the other would wait for steps that never come, until
    the timeout), or the budget ignored under torchrun. A budget of about a second stops both
    processes at the end of the first epoch."""
    run = tmp_path / "budget"
    output = finished(torchrun(data, run, 2, 20, "--time-budget", "0.02"), timeout=180)
    assert output.count("run folder:") == 1
    assert len((run / "history.csv").read_text().splitlines()) - 1 < 20
    assert (run / bundle.CALIBRATION).is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_killed_process_stops_the_other_with_an_error(data: Path, tmp_path: Path) -> None:
    """Without torchrun's agent (which would stop the others itself): the survivor must not hang."""
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "SURFAD_DIST_TIMEOUT_MIN": "1"}
    run = tmp_path / "run"
    command = [sys.executable, "-m", "surfad", "train", "--data", str(data), "--out", str(run), "--batch-size", "2",
               "--epochs", "200", *ARGS]
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    deadline = time.monotonic() + 120
    while not (run / "history.csv").is_file():
        assert time.monotonic() < deadline and all(p.poll() is None for p in ranks)
        time.sleep(0.1)
    ranks[1].kill()
    started = time.monotonic()
    output, _ = ranks[0].communicate(timeout=90)
    assert ranks[0].returncode == 2 and time.monotonic() - started < 90
    assert "lost the other processes" in output


def test_fitting_shares_feature_extraction_and_fits_the_same_bank(data: Path, tmp_path: Path) -> None:
    finished(torchrun(data, tmp_path / "ddp", 4, 1, "--model", "patchcore"))
    single(data, tmp_path / "one", 4, 1, "--model", "patchcore")
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    np.testing.assert_allclose(a["bank"], b["bank"], atol=1e-5)
    assert '"processes": 2' in (tmp_path / "ddp" / "meta.json").read_text()
