import pytest
import torch

from dce_batch.training.losses import (
    LossWeights,
    ZeroDCELoss,
    color_constancy_loss,
    exposure_control_loss,
    illumination_smoothness_loss,
    spatial_consistency_loss,
)


def test_identical_images_have_zero_spatial_loss():
    x = torch.rand(2, 3, 32, 32)
    assert spatial_consistency_loss(x, x).item() == 0.0


def test_spatial_loss_by_hand():
    # One 4x4 region brighter by d in the enhanced image: the pooled maps are 1x1, so each of the
    # four neighbour differences (against zero padding) changes by d; loss = 4 * d^2.
    org = torch.zeros(1, 3, 4, 4)
    enh = torch.full((1, 3, 4, 4), 0.25)
    assert spatial_consistency_loss(org, enh).item() == pytest.approx(4 * 0.25**2)


@pytest.mark.parametrize("c", [0.0, 0.2, 0.6, 0.9])
def test_exposure_loss_of_constant_image(c):
    x = torch.full((2, 3, 64, 48), c)
    assert exposure_control_loss(x).item() == pytest.approx((c - 0.6) ** 2, abs=1e-5)
    assert exposure_control_loss(x, target=0.5).item() == pytest.approx((c - 0.5) ** 2, abs=1e-5)


def test_grey_images_have_zero_colour_loss():
    x = torch.rand(2, 1, 16, 16).repeat(1, 3, 1, 1)
    assert color_constancy_loss(x).item() == 0.0


def test_colour_loss_by_hand():
    x = torch.zeros(1, 3, 4, 4)
    x[:, 0] = 0.5  # mean r = 0.5, g = b = 0: Drg = Drb = 0.25, Dgb = 0
    expected = (0.25**2 + 0.25**2) ** 0.5
    assert color_constancy_loss(x).item() == pytest.approx(expected)


def test_constant_maps_have_zero_tv_and_tv_by_hand():
    assert illumination_smoothness_loss(torch.full((2, 24, 9, 9), 0.3)).item() == 0.0
    maps = torch.zeros(1, 1, 2, 2)
    maps[..., 1, :] = 1.0  # vertical step of 1 across 2 columns; count_h = 2, count_w = 2
    assert illumination_smoothness_loss(maps).item() == pytest.approx(2 * (2 / 2 + 0 / 2))


def test_gradients_stay_finite_where_the_authors_colour_loss_is_nan():
    x = torch.full((1, 3, 16, 16), 0.4, requires_grad=True)  # grey: sqrt at exactly zero
    color_constancy_loss(x).backward()
    assert torch.isfinite(x.grad).all()
    # The authors' formula gives NaN here, which is what this guards against.
    y = x.detach().clone().requires_grad_(True)
    m = y.mean((2, 3))
    d = (m[:, 0] - m[:, 1]) ** 2
    torch.pow(d**2 + d**2 + d**2, 0.5).sum().backward()
    assert torch.isnan(y.grad).any()


def test_total_loss_weights_and_terms():
    torch.manual_seed(0)
    org = torch.rand(2, 3, 32, 32) * 0.3
    enh = torch.rand(2, 3, 32, 32, requires_grad=True)
    curves = torch.rand(2, 24, 32, 32, requires_grad=True)
    w = LossWeights()
    total, terms = ZeroDCELoss(w)(org, enh, curves)
    assert set(terms) == {"smoothness", "spatial", "color", "exposure"}
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)
    assert terms["exposure"].item() == pytest.approx(10 * exposure_control_loss(enh).item(), rel=1e-6)
    assert terms["smoothness"].item() == pytest.approx(200 * illumination_smoothness_loss(curves).item(), rel=1e-6)
    total.backward()
    assert torch.isfinite(enh.grad).all() and torch.isfinite(curves.grad).all()


def test_variant_defaults_and_overrides():
    assert LossWeights.for_variant("full").smoothness == 200
    assert LossWeights.for_variant("fast").smoothness == 1600
    w = LossWeights.for_variant("full", exposure_target=0.5, color=None)
    assert w.exposure_target == 0.5 and w.color == 5
