"""simplenet beyond the model contract: its cached features, patch targets, exact resume, tiling
(with real defects), the dry run and fusing, as for the other models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from surfad import bundle
from surfad.cli import main
from surfad.detector import Detector, fuse_runs
from surfad.models import build_model
from surfad.models.simplenet.samples import patch_targets, simplenet_samples

ARGS = ["--model", "simplenet", "--preset", "tiny", "--image-size", "32", "--batch-size", "4", "--threads", "1",
        "--quiet", "--grid-every", "0"]


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "mask": torch.zeros(1, 32, 32), "label": torch.tensor(0), "index": torch.tensor(i)}


def test_a_patch_is_anomalous_when_any_of_its_pixels_is_and_its_neighbours_do_not_count() -> None:
    """Broken: a thin crack (one pixel in a patch) counted normal, or the patches it reaches through
    the receptive field taught as normal."""
    mask = torch.zeros(1, 32, 32)
    mask[0, 13, 9] = 1.0  # one pixel, in patch (3, 2) of an 8 x 8 grid of 4 px patches
    target, weight = patch_targets(mask, (8, 8))
    assert target.shape == weight.shape == (1, 8, 8)
    assert target[0, 3, 2] == 1 and target.sum() == 1
    assert weight[0, 3, 2] == 1 and weight[0, 2:5, 1:4].sum() == 1 and weight.sum() == 64 - 8


def test_features_are_extracted_once_and_standardised_on_the_good_images() -> None:
    """Broken: features recomputed at every epoch (or from the model as it trains), or standardising
    statistics left at their defaults."""
    model = build_model("simplenet", {"preset": "tiny"}, 3, 32)
    samples = simplenet_samples(model, Images(6), seed=0)
    samples.progress = False
    assert not torch.equal(model.spread, torch.ones_like(model.spread))
    assert len(samples) == 6 * (1 + model.config.positive_ratio)
    first = samples[7]["features"]
    with torch.no_grad():
        model.adaptor.weight.mul_(3.0)  # training changes the head, never the cached frozen features
    assert torch.equal(samples[7]["features"], first) and len(samples._cache) == len(samples)
    assert samples[7]["target"].sum() > 0 and samples[0]["target"].sum() == 0


def test_an_interrupted_run_resumes_exactly(tiny_mvtec: Path, tmp_path: Path, monkeypatch) -> None:
    """The features are cached again on resume and the feature noise continues from the saved RNG:
    the resumed run ends with the weights of the uninterrupted one."""
    straight = tmp_path / "straight"
    assert main(["train", "--data", str(tiny_mvtec), "--out", str(straight), "--epochs", "3", *ARGS]) == 0
    real_save = bundle.save_weights
    calls = {"n": 0}

    def stop_after_epoch_2(model, path):
        real_save(model, path)
        if Path(path).name == "last.safetensors":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(bundle, "save_weights", stop_after_epoch_2)
    assert main(["train", "--data", str(tiny_mvtec), "--out", str(resumed), "--epochs", "3", *ARGS]) == 130
    monkeypatch.setattr(bundle, "save_weights", real_save)
    assert main(["train", "--out", str(resumed), "--resume", "--quiet"]) == 0
    a, b = load_file(straight / "checkpoints/last.safetensors"), load_file(resumed / "checkpoints/last.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_tiled_run_learns_from_real_defects_tiles_and_fuses(tiny_mvtec: Path, tmp_path: Path, capsys) -> None:
    """Tiled, the real defects are cut to the tile that holds them; the run inspects whole images at
    their own size, and fuses with another run that left the same defects out."""
    listing = tmp_path / "list.txt"
    listing.write_text("test/crack/000.png\ntest/knot/000.png\n")
    tiled, other = tmp_path / "tiled", tmp_path / "other"
    settings = ["--data", str(tiny_mvtec), "--epochs", "2", "--tile-scale", "0.75", "--train-defects", str(listing),
                *ARGS]
    assert main(["train", *settings, "--dry-run"]) == 0
    assert "tiles" in capsys.readouterr().out
    assert main(["train", *settings, "--out", str(tiled)]) == 0
    image = str(tiny_mvtec / "test" / "crack" / "001.png")
    prediction = Detector.load(tiled).predict(image)
    assert prediction.anomaly_map.shape == (64, 64) and np.isfinite(prediction.score)
    # runs fuse when they keep the same images out: another one trained on the same listed defects
    assert main(["train", *settings, "--out", str(other), "--seed", "1"]) == 0
    assert Detector.load(fuse_runs([tiled, other], tmp_path / "fused")).predict(image).anomaly_map.shape == (64, 64)
