import math

import pytest
import torch

from dce_batch.errors import ConfigError
from dce_batch.model import (
    CURVE_ITERATIONS,
    DCENet,
    DCENetFast,
    apply_curves,
    build_model,
    count_parameters,
    init_weights,
)


def test_parameter_counts_match_the_papers():
    assert count_parameters(DCENet()) == 79_416
    assert count_parameters(DCENetFast()) == 10_561


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (33, 64), (101, 57)])
def test_full_variant_is_fully_convolutional(size):
    model = DCENet().eval()
    x = torch.rand(2, 3, *size)
    out = model(x)
    assert out.image.shape == x.shape
    assert out.curves.shape == (2, 24, *size)


@pytest.mark.parametrize("variant", [DCENet, DCENetFast])
@pytest.mark.parametrize("scale", [1, 4, 12, 7.5])
@pytest.mark.parametrize("size", [(5, 9), (240, 360), (250, 377)])
def test_both_variants_accept_any_size_at_any_scale(variant, scale, size):
    model = variant(scale=scale).eval()
    x = torch.rand(1, 3, *size)
    out = model(x)
    assert out.image.shape == x.shape
    assert out.curves.shape[-2:] == model.downscaled_size(*size)
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0


def _constant_curve_model(a: float, scale: float) -> DCENet:
    """A DCE-Net whose 24 maps are ``a`` everywhere: one global curve, known in closed form."""
    model = DCENet(scale=scale).eval()
    with torch.no_grad():
        for conv in (model.e_conv1, model.e_conv2, model.e_conv3, model.e_conv4, model.e_conv5, model.e_conv6,
                     model.e_conv7):
            conv.weight.zero_()
            conv.bias.zero_()
        model.e_conv7.bias.fill_(math.atanh(a))
    return model


def test_guided_upsampling_reproduces_a_global_curve_on_a_smooth_image():
    """With the same curve at every pixel, scale 4 must give (almost) what the curve gives at
    full resolution: the local affine fits follow a smooth image's values."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 120), torch.linspace(0, 1, 160), indexing="ij")
    image = (0.02 + 0.3 * xx * yy + 0.05 * torch.sin(6 * xx)).clamp(0, 1).expand(1, 3, 120, 160).contiguous()
    expected = apply_curves(image, torch.full((1, 24, 120, 160), -0.6))
    with torch.no_grad():
        got = _constant_curve_model(-0.6, scale=4)(image).image
    assert (expected - image).mean() > 0.1  # the curve brightens a lot
    assert (got - expected).abs().max() < 1.0 / 255


def test_guided_upsampling_keeps_a_sharp_edge_sharp():
    """A lamp next to a dark wall: away from the edge each side gets its own curve value exactly
    (no glow), and at the edge the error stays within a few 8-bit steps."""
    image = torch.full((1, 3, 64, 96), 0.03)
    image[..., 48:] = 0.8
    expected = apply_curves(image, torch.full((1, 24, 64, 96), -0.6))
    with torch.no_grad():
        got = _constant_curve_model(-0.6, scale=4)(image).image
    error = (got - expected).abs()[0, 0, 0]  # one row (every row is the same)
    assert error[:40].max() < 1e-4 and error[56:].max() < 1e-4
    assert error.max() < 8.0 / 255


def test_guided_upsampling_at_strength_zero_is_the_identity():
    torch.manual_seed(0)
    model = DCENet(scale=4)
    init_weights(model)
    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x, strength=0.0).image, x, atol=1e-6)


def test_curve_output_stays_in_unit_range_and_brightens_with_positive_maps():
    x = torch.rand(1, 3, 16, 16)
    # A = +1 darkens (x -> x^2 each iteration), A = -1 brightens; both keep [0, 1].
    assert torch.all(apply_curves(x, torch.ones(1, 24, 16, 16)) <= x + 1e-7)
    y = apply_curves(x, torch.full((1, 24, 16, 16), -1.0))
    assert torch.all(y >= x - 1e-7) and torch.all(y <= 1.0)
    # A single map reused 8 times equals 8 identical maps.
    a = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.allclose(apply_curves(x, a), apply_curves(x, a.repeat(1, CURVE_ITERATIONS, 1, 1)))


def test_curve_rejects_wrong_channel_count():
    with pytest.raises(ValueError):
        apply_curves(torch.rand(1, 3, 4, 4), torch.rand(1, 6, 4, 4))


def test_strength_zero_is_identity_and_scales_curves():
    torch.manual_seed(0)
    model = DCENet()
    init_weights(model)
    model.eval()
    x = torch.rand(1, 3, 20, 20)
    assert torch.equal(model(x, strength=0.0).image, x)
    full = model(x).curves
    assert torch.allclose(model(x, strength=0.5).curves, full * 0.5)


def test_build_model_validates():
    assert isinstance(build_model("full"), DCENet)
    assert build_model("fast", scale=12).scale == 12
    with pytest.raises(ConfigError):
        build_model("huge")
    assert build_model("full", scale=4).scale == 4
    for variant in (DCENet, DCENetFast):
        with pytest.raises(ConfigError, match="downscale factor"):
            variant(scale=0.5)
