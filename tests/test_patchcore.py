"""PatchCore: the greedy coreset, the nearest-neighbour search, fitting and scoring, memory bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from surfad.errors import SurfadError
from surfad.models import build_model
from surfad.models.patchcore.coreset import (
    coreset_seconds,
    greedy_coreset,
    nearest,
    nearest_neighbours,
    principal_axes,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_coreset_first_centres_on_a_hand_checked_line() -> None:
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]])
    chosen, radius = greedy_coreset(points, 3)
    # mean 7.33: 20 is farthest; then 0 (20 away from 20); then 10 (10 from 0, 10 from 20; lowest index of ties)
    assert chosen.tolist() == [5, 0, 3]
    assert radius == pytest.approx(2.0)  # point 2 is 2 from centre 0, every other point nearer its centre


def test_every_point_lies_within_the_reported_radius_of_the_bank() -> None:
    points = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    chosen, radius = greedy_coreset(points, 40)
    assert len(set(chosen.tolist())) == 40
    nearest_centre = torch.cdist(points, points[chosen]).min(dim=1).values
    assert float(nearest_centre.max()) == pytest.approx(radius, rel=1e-5)
    fewer = greedy_coreset(points, 10)[1]
    assert fewer > radius  # more centres cover tighter


@pytest.mark.parametrize("size", [1, 7, 400])
def test_bounds_in_principal_components_choose_the_same_coreset(size: int) -> None:
    """coreset "exact": skipping the points the bounds rule out changes nothing but the work."""
    gen = torch.Generator().manual_seed(2)
    points = torch.randn(5000, 48, generator=gen) * torch.logspace(0, -1.5, 48)  # a spectrum that decays, like features
    full, bounded = greedy_coreset(points, size), greedy_coreset(points, size, bound_dim=6)
    assert torch.equal(full[0], bounded[0]) and bounded[1] == pytest.approx(full[1], rel=1e-6)


def test_principal_axes_are_orthonormal_and_never_lengthen_a_distance() -> None:
    gen = torch.Generator().manual_seed(3)
    points = torch.randn(3000, 20, generator=gen) @ torch.randn(20, 20, generator=gen)
    axes = principal_axes(points, 5)
    torch.testing.assert_close(axes.T @ axes, torch.eye(5), atol=1e-5, rtol=0)
    assert bool((torch.pdist(points[:200] @ axes) <= torch.pdist(points[:200]) * (1 + 1e-5)).all())


def test_coreset_progress_counts_every_centre() -> None:
    counted = []
    greedy_coreset(torch.randn(300, 3), 130, counted.append)
    assert sum(counted) == 130


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_neighbours_match_brute_force(k: int) -> None:
    gen = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(257, 8, generator=gen) * 3, torch.randn(90, 8, generator=gen)
    reference = torch.cdist(queries.double(), bank.double()).topk(k, dim=1, largest=False)
    for dist, idx in (nearest(queries, bank, k), nearest_neighbours(queries, bank, k, chunk=50)):
        np.testing.assert_allclose(dist.numpy(), reference.values.numpy(), rtol=1e-4, atol=1e-4)
        assert torch.equal(idx, reference.indices)


def test_coreset_time_estimate_is_positive_and_grows_with_the_bank() -> None:
    small, large = coreset_seconds(20_000, 16, 10), coreset_seconds(20_000, 16, 10_000)
    assert 0 < small < large


def blob_images(n: int, defect: bool, seed: int) -> torch.Tensor:
    """Smooth noise textures; a defect is a bright square."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=gen), size=64, mode="bilinear")
    images = 0.3 + 0.4 * base
    if defect:
        images[:, :, 20:34, 24:38] = 1.0
    return images


def fitted(**params) -> torch.nn.Module:
    model = build_model("patchcore", {"preset": "tiny", **params}, in_channels=3, image_size=64).eval()
    model.fit([blob_images(8, False, 0), blob_images(8, False, 1)], 16, progress=False)
    return model


@pytest.mark.parametrize("reweight", [False, True])
def test_a_pasted_defect_scores_above_good_images(reweight: bool) -> None:
    model = fitted(reweight=reweight)
    with torch.inference_mode():
        good_map, good = model(blob_images(6, False, 7))
        bad_map, bad = model(blob_images(6, True, 7))
    assert good_map.shape == (6, 1, 64, 64) and good.shape == (6,)
    assert float(bad.min()) > float(good.max())
    inside, outside = bad_map[:, 0, 20:34, 24:38].mean(), bad_map[:, 0, :, :16].mean()
    assert inside > 2 * outside  # the map points at the defect
    if not reweight:  # the score is the largest patch distance
        with torch.inference_mode():
            feats = model.patch_features(blob_images(6, False, 7))
            b, d = feats.shape[:2]
            distances, _ = model.patch_distances(feats.permute(0, 2, 3, 1).reshape(-1, d))
        assert torch.allclose(good, distances.view(b, -1).max(dim=1).values)


def test_fitted_bank_is_the_chosen_share_and_loads_back(tmp_path) -> None:
    model = fitted(coreset_ratio=0.25, reweight=True)
    patches = 16 * model.grid * model.grid
    assert model.bank.shape == (math.ceil(0.25 * patches), model.features.dim)
    assert int(model.bank_neighbours[:, 0].eq(torch.arange(len(model.bank))).sum()) >= len(model.bank) - 2  # itself first
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    fresh = build_model("patchcore", {"preset": "tiny", "coreset_ratio": 0.25, "reweight": True}, 3, 64).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    x = blob_images(3, True, 9)
    with torch.inference_mode():
        assert torch.equal(model(x)[1], fresh(x)[1])


def test_a_bank_too_large_is_refused_before_any_work() -> None:
    model = build_model("patchcore", {"preset": "tiny", "memory_limit_gb": 1e-6}, in_channels=3, image_size=64)

    def never():
        raise AssertionError("features were computed")
        yield

    with pytest.raises(SurfadError, match="needs about .* GiB, over the limit"):
        model.fit(never(), 1000, progress=False)
    plan = build_model("patchcore", {"preset": "tiny"}, 3, 64).plan(1000)
    assert "memory bank" in plan.lines[0] and plan.memory_bytes > 0


def test_unfitted_model_says_so() -> None:
    model = build_model("patchcore", {"preset": "tiny"}, 3, 64)
    with pytest.raises(RuntimeError, match="fit it first"):
        model(torch.rand(1, 3, 64, 64))


def test_settings_are_checked() -> None:
    for params, message in (({"coreset_ratio": 0}, "coreset_ratio=0"), ({"layers": []}, "at least one"),
                            ({"layers": ["stage9"]}, "feature tap"), ({"backbone": "resnet50"}, "backbone"),
                            ({"neighbours": 0}, "neighbours=0")):
        with pytest.raises(SurfadError, match=message):
            build_model("patchcore", params, 3, 64)


def test_position_weight_makes_a_normal_patch_in_the_wrong_place_anomalous() -> None:
    """Aligned parts: a bright mark that is normal at the top left is a defect at the bottom right."""
    def marked(n: int, y: int, x: int, seed: int) -> torch.Tensor:
        images = blob_images(n, False, seed)
        images[:, :, y : y + 12, x : x + 12] = 1.0
        return images

    at_mark = {}
    for weight in (0.0, 200.0):
        model = build_model("patchcore", {"preset": "tiny", "position_weight": weight}, in_channels=3, image_size=64)
        model.eval().fit([marked(8, 4, 4, 0), marked(8, 4, 4, 1)], 16, progress=False)
        with torch.inference_mode():
            normal, moved = model(marked(4, 4, 4, 7))[0], model(marked(4, 40, 40, 7))[0]
        at_mark[weight] = float(moved[:, 0, 44:48, 44:48].mean() / normal[:, 0, 8:12, 8:12].mean())
    assert at_mark[0.0] < 2 < at_mark[200.0], at_mark  # where the mark is: ordinary without position, not with it
