"""PaDiM: per-position Gaussians, and the Mahalanobis map checked against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surfad.errors import SurfadError
from surfad.models import build_model


def images(n: int, seed: int, defect: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=gen), size=64, mode="bilinear")
    if defect:
        x[:, :, 20:34, 24:38] = 1.0
    return x


@pytest.mark.usefixtures("one_torch_thread")
def test_mahalanobis_map_matches_numpy_and_finds_the_defect() -> None:
    model = build_model("padim", {"preset": "tiny", "covariance": "sample"}, in_channels=3, image_size=64).eval()
    train = images(40, 0)
    assert model.fit([train[:20], train[20:]], 40, progress=False)["covariance"] == "sample"
    test = images(4, 5, defect=True)
    with torch.inference_mode():
        feats, grid = model.selected(train).double().numpy(), model.selected(test).double().numpy()  # (P, N, D)
        distances = model.grid_distances(model.descriptors(test)).flatten(1).numpy()  # (B, P)
        amap, good = model(test), model(images(4, 6))
    for position in (0, 10, 37):
        sample = feats[position]
        cov = np.cov(sample, rowvar=False) + model.config.regularisation * np.eye(sample.shape[1])
        diff = grid[position] - sample.mean(0)
        expected = np.sqrt(np.einsum("bd,de,be->b", diff, np.linalg.inv(cov), diff))
        np.testing.assert_allclose(distances[:, position], expected, rtol=1e-3)
    assert amap.shape == (4, 1, 64, 64)
    assert float(amap.flatten(1).amax(1).min()) > float(good.flatten(1).amax(1).max())


def test_padim_needs_two_images_and_a_feature_count_the_layers_have() -> None:
    with pytest.raises(SurfadError, match="only 64 channels"):
        build_model("padim", {"layers": ["stage2", "stage3"], "feature_dim": 100}, 3, 64)
    model = build_model("padim", {"preset": "tiny"}, 3, 64)
    with pytest.raises(SurfadError, match="at least 2 training images"):
        model.fit([images(1, 0)], 1, progress=False)


@pytest.mark.usefixtures("one_torch_thread")
def test_ledoit_wolf_covariances_match_sklearn_and_are_what_the_map_measures() -> None:
    from sklearn.covariance import ledoit_wolf as reference

    model = build_model("padim", {"preset": "tiny", "covariance": "ledoit_wolf"}, in_channels=3, image_size=64).eval()
    train = images(6, 0)  # fewer images than the 16 features: the sample covariance alone is singular
    figures = model.fit([train], 6, progress=False)
    assert figures["covariance"] == "ledoit_wolf" and 0 < figures["mean_shrinkage"] <= 1
    test = images(2, 5, defect=True)
    with torch.inference_mode():
        feats, grid = model.selected(train).double().numpy(), model.selected(test).double().numpy()
        distances = model.grid_distances(model.descriptors(test)).flatten(1).numpy()
    for position in (0, 21, 63):
        sample = feats[position]
        shrunk, _ = reference(sample)  # centres the samples itself
        cov = shrunk + model.config.regularisation * np.eye(sample.shape[1])
        diff = grid[position] - sample.mean(0)
        expected = np.sqrt(np.einsum("bd,de,be->b", diff, np.linalg.inv(cov), diff))
        np.testing.assert_allclose(distances[:, position], expected, rtol=1e-3)


def test_covariance_auto_shrinks_below_the_chosen_number_of_images(monkeypatch) -> None:
    from surfad.models.padim import model as padim

    monkeypatch.setattr(padim, "LEDOIT_WOLF_BELOW", 8)
    for n, chosen in ((6, "ledoit_wolf"), (8, "sample")):
        model = build_model("padim", {"preset": "tiny"}, in_channels=3, image_size=32)
        assert model.config.covariance == "auto"
        assert model.fit([images(n, 0)], n, progress=False)["covariance"] == chosen
