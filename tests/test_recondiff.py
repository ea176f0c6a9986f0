"""recondiff: every part's shapes and gradients, the DPU maths by hand, the loss, training data,
schedule, presets and ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from surfad.config import TrainConfig
from surfad.data.defects import procedural_texture
from surfad.errors import SurfadError
from surfad.models import build_model, resolve_params
from surfad.models.recondiff.loss import focal_loss, recondiff_loss
from surfad.models.recondiff.memory import (
    DPU,
    MultiScaleMemory,
    dpu_losses,
    map_block_sizes,
)
from surfad.models.recondiff.model import (
    Decoder,
    Encoder,
    RecondiffModel,
    SegUNet,
    SiameseSegNet,
)
from surfad.models.recondiff.samples import augment_normal, recondiff_samples
from surfad.models.recondiff.schedule import lr_factor, recondiff_optimizer

TINY = dict(base_width=4, rec_depth=3, mblock_sizes=[4, 8], n_prototypes=4, seg_base_width=4, seg_depth=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(in_channels: int = 3, size: int = 32, **overrides) -> RecondiffModel:
    return build_model("recondiff", {**TINY, **overrides}, in_channels=in_channels, image_size=size)


def grads_reach(module: torch.nn.Module) -> bool:
    return all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


# --- parts ----------------------------------------------------------------------------------------


def test_encoder_shapes_and_gradients():
    enc = Encoder(3, [4, 8, 8])
    feats = enc(torch.rand(2, 3, 16, 16))
    assert [tuple(f.shape) for f in feats] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]
    feats[-1].sum().backward()
    assert grads_reach(enc)


def test_dpu_forward_by_hand():
    """With a zero position embedding and zero assignment weights every prototype is the normalised
    mean of z, so each output is that unit vector plus z itself (skip)."""
    dpu = DPU(channels=3, size=2, n_prototypes=2, skip=True)
    with torch.no_grad():
        dpu.pos.zero_()
        dpu.assign.weight.zero_()
    x = torch.randn(1, 3, 2, 2)
    z = x.flatten(2).transpose(1, 2)[0]  # (N, C)
    proto = z.mean(0) / z.mean(0).norm()
    expected = (proto[None] + z).T.reshape(1, 3, 2, 2)
    torch.testing.assert_close(dpu(x), expected)
    dpu.skip = False
    torch.testing.assert_close(dpu(x), proto.view(1, 3, 1, 1).expand(1, 3, 2, 2))


def test_dpu_output_is_unit_readout_plus_input_and_has_gradients():
    dpu = DPU(channels=8, size=4, n_prototypes=5, skip=True)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    losses: list = []
    out = dpu(x, losses)
    readout = out - (x + dpu.pos)
    torch.testing.assert_close(readout.norm(dim=1), torch.ones(2, 4, 4))
    assert len(losses) == 1
    (out.sum() + losses[0][0] + losses[0][1]).backward()
    assert grads_reach(dpu) and x.grad is not None


def test_dpu_losses_by_hand():
    c30, s30 = math.cos(math.pi / 6), math.sin(math.pi / 6)
    z = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 1.0]]])  # (B=2, N=2, C=2)
    protos = torch.tensor([[[1.0, 0.0], [c30, s30]], [[0.0, 1.0], [0.0, 1.0]]])  # (B, M=2, C)
    weights = torch.tensor([[[0.9, 0.1], [0.3, 0.7]], [[0.6, 0.4], [0.2, 0.8]]])  # nearest: 0, 1 / 0, 1
    compact, separate = dpu_losses(z, protos, weights)
    # image 0: z0 - p0 = (0, 0); z1 - p1 = (-cos30, 1.5) -> 0.75 + 2.25. image 1: (0, 0) and (1, 0) -> 1.
    assert compact.item() == pytest.approx((0 + 3.0 + 0 + 1.0) / 8)
    # ||p0 - p1||^2 = 2 - 2 cos30 -> hinge sqrt(3) - 1; identical prototypes -> hinge 1; batch mean.
    assert separate.item() == pytest.approx((math.sqrt(3) - 1 + 1) / 2, abs=1e-6)
    # M = 3: pairs (e1, e2), (e1, e1), (e2, e1) -> hinges 0, 1, 0; times 2 / (M (M - 1)) = 1/3
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    _, separate3 = dpu_losses(torch.zeros(1, 1, 2), torch.tensor([[e1, e2, e1]]), torch.ones(1, 1, 3))
    assert separate3.item() == pytest.approx(1 / 3)


def test_memory_shapes_losses_and_gradients():
    memory = MultiScaleMemory(channels=6, feat_size=8, sizes=[2, 4, 8], n_prototypes=3, skip=True)
    assert memory.kernels == [4, 2, 1]
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    losses: list = []
    out = memory(x, losses)
    assert out.shape == (2, 18, 8, 8) and len(losses) == 3
    (out.square().mean() + sum(lc + ld for lc, ld in losses)).backward()
    assert grads_reach(memory) and x.grad is not None


def test_decoder_shapes_and_gradients():
    dec = Decoder([4, 8, 8], n_scales=2, out_channels=1)
    out = dec(torch.randn(2, 16, 4, 4))
    assert out.shape == (2, 1, 16, 16)
    out.sum().backward()
    assert grads_reach(dec)


@pytest.mark.parametrize("net", [SegUNet, SiameseSegNet])
@pytest.mark.parametrize("channels", [1, 3])
def test_segmentation_nets_shapes_and_gradients(net, channels):
    seg = net(channels, base=4, depth=4)
    recon, image = torch.randn(2, channels, 16, 16), torch.randn(2, channels, 16, 16)
    logits = seg(recon, image)
    assert logits.shape == (2, 2, 16, 16)
    logits.sum().backward()
    assert grads_reach(seg)


def test_focal_loss_values():
    logits = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    pt = 0.5 + 1e-5  # the smoothed target changes p_t by ~1e-5 only
    assert focal_loss(logits, mask, 2.0).item() == pytest.approx(-(1 - pt) ** 2 * math.log(pt), rel=1e-3)
    confident = torch.tensor([[[[-9.0, 9.0], [9.0, 9.0]]], [[[9.0, -9.0], [-9.0, -9.0]]]]).permute(1, 0, 2, 3)
    assert focal_loss(confident, mask, 2.0).item() < 1e-6


# --- configuration --------------------------------------------------------------------------------


def test_block_size_mapping_rule():
    assert map_block_sizes([8, 16], 16) == [8, 16]  # the paper at 256 px
    assert map_block_sizes([8, 16], 8) == [4, 8]  # 128 px: ratios kept
    assert map_block_sizes([8, 16], 2) == [1, 2]
    assert map_block_sizes([1, 2, 4, 8], 16) == [1, 2, 4, 8]  # sizes up to F are used as given
    with pytest.raises(SurfadError, match="mblock_sizes"):
        map_block_sizes([3, 16], 16)  # 3 does not divide 16
    with pytest.raises(SurfadError, match="mblock_sizes"):
        map_block_sizes([8, 16], 5)  # 8 * 5 / 16 is not whole
    with pytest.raises(SurfadError, match="mblock_sizes"):
        map_block_sizes([], 8)


def test_bad_config_values_name_the_field():
    with pytest.raises(SurfadError, match="rec_depth"):
        tiny(size=36, rec_depth=4)
    with pytest.raises(SurfadError, match="seg_depth"):
        tiny(size=36, rec_depth=2, seg_depth=4, mblock_sizes=[18])
    with pytest.raises(SurfadError, match="segnet"):
        tiny(segnet="resnet")
    with pytest.raises(SurfadError, match="seg_input"):
        tiny(seg_input="noisy")
    with pytest.raises(SurfadError, match="n_prototypes"):
        tiny(n_prototypes=1)
    with pytest.raises(SurfadError, match="mblock_sizes"):
        tiny(mblock_sizes=[3, 8])
    with pytest.raises(SurfadError, match="warmup_fraction"):
        tiny(warmup_fraction=1.0)


def test_presets_build():
    assert resolve_params("recondiff", {"preset": "cpu"}) == resolve_params("recondiff", {})
    cpu = build_model("recondiff", {"preset": "cpu"}, in_channels=3, image_size=128)
    assert cpu.recon.block_sizes == [4, 8]
    paper = build_model("recondiff", {"preset": "paper"}, in_channels=3, image_size=256)
    assert paper.recon.block_sizes == [8, 16]
    n_params = sum(p.numel() for p in paper.parameters())
    assert abs(n_params - 79.0e6) < 0.1 * 79.0e6  # the method file's analytic count
    siamese = sum(p.numel() for p in SiameseSegNet(3, base=64, depth=6).parameters())
    assert abs(siamese - 34.7e6) < 0.1 * 34.7e6


# --- the model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("segnet", ["unet", "siamese"])
def test_model_forward_loss_and_visuals(channels, segnet):
    model = tiny(channels, segnet=segnet)
    x = torch.rand(2, channels, 32, 32)
    amap = model(x)
    assert amap.shape == (2, 1, 32, 32) and 0 <= amap.min() and amap.max() <= 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:16, 8:16] = 1
    terms = recondiff_loss(model, {"image": x, "target": torch.rand_like(x), "mask": mask}, progress=0.0)
    assert {"loss", "mse", "compact", "separate", "focal"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    assert grads_reach(model)
    assert recondiff_loss(model, {"image": x}, 0.0)["loss"].isfinite()  # a plain image batch works too
    assert model.visuals(x)["reconstruction"].shape == x.shape
    with_ssim = recondiff_loss(tiny(channels, ssim_weight=1.0), {"image": x}, 0.0)
    assert 0 <= with_ssim["ssim"].item() <= 2


def test_detach_recon_stops_the_focal_gradient():
    batch = {"image": torch.rand(2, 3, 32, 32), "mask": (torch.rand(2, 1, 32, 32) > 0.5).float()}
    for detach in (True, False):
        model = tiny(detach_recon=detach)
        recondiff_loss(model, batch, 0.0)["focal"].backward()
        recon_grads = [p.grad for p in model.recon.parameters()]
        assert all(g is None for g in recon_grads) == detach
        assert grads_reach(model.seg)


@pytest.mark.parametrize("seg_input", ["anomalous", "clean"])
def test_seg_input_option(seg_input, monkeypatch):
    model = tiny(seg_input=seg_input)
    seen = {}
    original = model.seg.forward

    def spy(recon, image):
        seen["image"] = image
        return original(recon, image)

    monkeypatch.setattr(model.seg, "forward", spy)
    image, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    recondiff_loss(model, {"image": image, "target": target}, 0.0)
    expected = image if seg_input == "anomalous" else target
    torch.testing.assert_close(seen["image"], model.normalize(expected))


def test_schedule_warms_up_then_decays():
    assert lr_factor(0, 100, 0.2, 0.1) == pytest.approx(0.1)
    assert lr_factor(10, 100, 0.2, 0.1) == pytest.approx(0.55)
    assert lr_factor(20, 100, 0.2, 0.1) == pytest.approx(1.0)
    assert lr_factor(60, 100, 0.2, 0.1) == pytest.approx(0.5)
    assert lr_factor(99, 100, 0.2, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 3, 0.0, 0.1) == pytest.approx(1.0)  # no warm-up
    model = tiny()
    optimizer, scheduler = recondiff_optimizer(model, TrainConfig(epochs=10, lr=1e-3))
    lrs = []
    for _ in range(10):  # stepped once per epoch, as surfad.training does
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] == pytest.approx(5.5e-4) and lrs[2] == pytest.approx(1e-3)
    assert lrs[2:] == sorted(lrs[2:], reverse=True) and lrs[-1] < 1e-4 * 2


# --- training data --------------------------------------------------------------------------------


def good_images(n: int, channels: int, size: int = 32) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        texture = procedural_texture(size, rng).transpose(2, 0, 1)
        images.append({"image": torch.from_numpy(np.ascontiguousarray(texture[:channels]))})
    return images


def test_augment_normal_keeps_shape_and_is_small():
    image = np.random.default_rng(0).random((1, 32, 32), dtype=np.float32)
    rng = np.random.default_rng(1)
    outs = [augment_normal(image, rng) for _ in range(20)]
    assert all(o.shape == image.shape and o.dtype == np.float32 for o in outs)
    assert any(np.array_equal(o, image) for o in outs)  # zero ops can be drawn
    assert any(not np.array_equal(o, image) for o in outs)


@pytest.mark.parametrize("channels", [1, 3])
def test_train_dataset_layout_and_randomness(channels):
    model = tiny(channels, negative_aug_ratio=2, positive_aug_ratio=1)
    data = recondiff_samples(model, good_images(3, channels), seed=5)
    assert len(data) == 3 * 3
    for i in range(len(data)):
        item = data[i]
        assert item["image"].shape == item["target"].shape == (channels, 32, 32)
        assert item["mask"].shape == (1, 32, 32)
        if i < 6:  # augmented normal images first
            assert item["label"] == 0 and item["mask"].sum() == 0
            assert torch.equal(item["image"], item["target"])
        else:
            assert item["label"] == 1 and item["mask"].sum() > 0
            outside = item["mask"][0] == 0
            assert torch.equal(item["image"][:, outside], item["target"][:, outside])
    # same seed and epoch -> same sample; the next epoch -> a different one
    epoch0 = recondiff_samples(model, good_images(3, channels), seed=5)[7]["image"]
    assert torch.equal(epoch0, recondiff_samples(model, good_images(3, channels), seed=5)[7]["image"])
    assert not torch.equal(epoch0, data[7]["image"])  # the loop above drew data[7] once: this is epoch 1
    data.set_epoch(0)
    assert torch.equal(data[7]["image"], epoch0)


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    model = tiny(3)
    data = recondiff_samples(model, good_images(8, 3), seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    losses = []
    while len(losses) < 32:
        for batch in loader:
            optimizer.zero_grad()
            loss = recondiff_loss(model, batch, progress=len(losses) / 32)["loss"]
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny(1, segnet="siamese").eval()
    x = torch.rand(2, 1, 32, 32)
    path = tmp_path / "recondiff.onnx"
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter: fast; dynamo=True also works (opset 18)
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"],
                          output_names=["map"], dynamic_axes={"x": {0: "batch"}, "map": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.rand(3, 1, 32, 32)
    (onnx_map,) = session.run(None, {"x": x3.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_map, model(x3).numpy(), atol=1e-5)


@pytest.mark.parametrize("switch", [{"memory": False}, {"position_embedding": False}])
def test_ablation_switches_build_train_and_export_shapes(switch):
    torch.manual_seed(0)
    params = {"base_width": 4, "rec_depth": 3, "seg_base_width": 4, "seg_depth": 3, "mblock_sizes": [4, 8], **switch}
    model = build_model("recondiff", params, in_channels=1, image_size=32)
    has_pos = any("pos" in name for name, _ in model.named_parameters())
    assert has_pos == (switch.get("position_embedding", True) and switch.get("memory", True))
    batch = {"image": torch.rand(2, 1, 32, 32), "mask": torch.zeros(2, 1, 32, 32)}
    terms = recondiff_loss(model, batch, 0.5)
    terms["loss"].backward()
    if not switch.get("memory", True):
        assert terms["compact"].item() == 0.0 and terms["separate"].item() == 0.0
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)
