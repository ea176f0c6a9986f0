import pytest
import torch
import torch.nn.functional

from surfad.errors import SurfadError
from surfad.models import build_model
from surfad.models.unet_vae.loss import kl_divergence, unet_vae_loss


def tiny(**params):
    torch.manual_seed(0)
    return build_model("unet_vae", {"base_width": 4, "depth": 2, "latent_channels": 2, "skip_levels": [1], **params}, in_channels=3, image_size=16)


def test_shapes_and_latent():
    model = tiny()
    x = torch.rand(2, 3, 16, 16)
    mu, logvar, skips = model.encode(x)
    assert mu.shape == logvar.shape == (2, 2, 4, 4)
    assert [s.shape[-1] for s in skips] == [16, 8]
    model.eval()
    assert model(x).shape == (2, 1, 16, 16)
    assert model.visuals(x)["reconstruction"].shape == x.shape


def test_kl_term_by_hand():
    zeros = torch.zeros(4)
    assert kl_divergence(zeros, zeros).item() == 0.0
    # mu = 1, sigma = 1: 0.5 * (1 + 1 - 1 - 0) = 0.5 per element
    assert kl_divergence(torch.ones(4), zeros).item() == pytest.approx(0.5)
    # mu = 0, log sigma^2 = log 2: 0.5 * (2 - 1 - log 2)
    logvar = torch.full((4,), float(torch.log(torch.tensor(2.0))))
    assert kl_divergence(zeros, logvar).item() == pytest.approx(0.5 * (1 - 0.693147), abs=1e-5)


def test_loss_terms_and_warmup():
    model = tiny(beta=1.0, kl_warmup=0.5)
    batch = {"image": torch.rand(2, 3, 16, 16)}
    torch.manual_seed(1)
    start = unet_vae_loss(model, batch, progress=0.0)
    assert start["loss"].item() == pytest.approx(start["recon"].item())  # beta ramps from 0
    torch.manual_seed(1)
    later = unet_vae_loss(model, batch, progress=1.0)
    assert later["loss"].item() == pytest.approx(later["recon"].item() + later["kl"].item(), rel=1e-5)


@pytest.mark.parametrize("loss", ["l1", "mse", "bce"])
def test_training_reduces_loss(loss):
    torch.manual_seed(0)
    model = tiny(recon_loss=loss, beta=0.001)
    grid = torch.linspace(0, 6.28, 16)
    phase = torch.rand(4, 3, 1, 1) * 6.28
    x = 0.5 + 0.4 * torch.sin(grid.view(1, 1, 1, 16) + phase) * torch.cos(grid.view(1, 1, 16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        out = unet_vae_loss(model, {"image": x}, progress=1.0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["recon"].item()
    # BCE cannot reach 0 on grey targets: compare the excess over its floor, BCE(x, x).
    floor = torch.nn.functional.binary_cross_entropy(x, x).item() if loss == "bce" else 0.0
    assert out["recon"].item() - floor < 0.7 * (first - floor)


def test_skip_levels_change_the_decoder():
    none = tiny(skip_levels=[])
    full = tiny(skip_levels=[0, 1])
    assert sum(p.numel() for p in full.parameters()) > sum(p.numel() for p in none.parameters())


@pytest.mark.parametrize(
    "params, field",
    [({"depth": 3}, "depth"), ({"skip_levels": [5]}, "skip_levels"), ({"recon_loss": "huber"}, "recon_loss"), ({"nope": 1}, "nope")],
)
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(SurfadError, match=field):
        build_model("unet_vae", {"base_width": 4, "depth": 2, "skip_levels": [1], **params}, in_channels=1, image_size=20 if field == "depth" else 16)


def test_grayscale_input():
    model = build_model("unet_vae", {"base_width": 4, "depth": 2, "skip_levels": [1]}, in_channels=1, image_size=16).eval()
    assert model(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)
