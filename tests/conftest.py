"""Shared fixtures: a tiny synthetic MVTec-layout dataset written once per test session."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest
import torch

import httpx

from surfad.config import RunConfig
from surfad.data.synthetic_wood import write_synthetic_dataset
from surfad.export.onnx import export_onnx
from surfad.training import train

TINY = {"size": 64, "n_train": 12, "n_test_good": 4, "n_test_defect": 8, "n_val_good": 2, "n_val_defect": 4}


@pytest.fixture(scope="session")
def tiny_mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Category folder of a 64 px synthetic wood dataset (counts in TINY); shared: treat as read-only."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("tiny_mvtec"), seed=0, **TINY)


@pytest.fixture(scope="session")
def tiny_gray(tiny_mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_mvtec with every image converted to one channel (masks unchanged); shared: read-only."""
    root = tmp_path_factory.mktemp("gray") / "gray"
    for path in tiny_mvtec.rglob("*.png"):
        target = root / path.relative_to(tiny_mvtec)
        target.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        is_mask = "ground_truth" in path.parts
        cv2.imwrite(str(target), image if is_mask or image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_mvtec: Path) -> Callable[..., Path]:
    """tiny_run(model="unet_vae"): a 32 px run trained one epoch on tiny_mvtec and exported to ONNX,
    built once per session and model. Shared: copy it before changing anything in it."""
    runs: dict[str, Path] = {}

    def get(model: str = "unet_vae") -> Path:
        if model not in runs:
            torch.set_num_threads(1)
            config = RunConfig.from_dict({
                "model": model,
                "model_params": {"preset": "tiny"},
                "data": {"path": str(tiny_mvtec), "image_size": 32},
                "train": {"epochs": 1, "batch_size": 8, "threads": 1, "device": "cpu", "grid_every": 0},
            })
            runs[model] = train(config, tmp_path_factory.mktemp(f"run_{model}") / "run", progress=False)
            export_onnx(runs[model])
        return runs[model]

    return get


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread and seeded with 0 for the test, the thread count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def wait_until_serving(url: str, process: subprocess.Popen, deadline: float, pause: float = 0.2) -> None:
    """Poll url/health until a `surfad serve` subprocess answers 200; fail with its output if it exits or
    time.monotonic() passes `deadline` first."""
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, process.stdout.read().decode()
        time.sleep(pause)
