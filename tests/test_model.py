import math

import pytest
import torch
import torch.nn.functional as F

from dce_batch.errors import ConfigError
from dce_batch.enhance.network import (
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


def _zeroed_model(scale: float) -> DCENet:
    """A DCE-Net at ``scale`` with every weight and bias zero, for the tests to set by hand."""
    model = DCENet(scale=scale).eval()
    with torch.no_grad():
        for conv in (model.e_conv1, model.e_conv2, model.e_conv3, model.e_conv4, model.e_conv5, model.e_conv6,
                     model.e_conv7):
            conv.weight.zero_()
            conv.bias.zero_()
    return model


def _constant_curve_model(a: float, scale: float) -> DCENet:
    """A DCE-Net whose 24 maps are ``a`` everywhere: one global curve, known in closed form."""
    model = _zeroed_model(scale)
    with torch.no_grad():
        model.e_conv7.bias.fill_(math.atanh(a))
    return model


def test_guided_upsampling_reproduces_one_curve_everywhere():
    """With the same curve at every pixel the guided fit's slopes are 0 and its intercepts the
    curve: scale 4 gives what the curve gives at full resolution (float rounding only)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 120), torch.linspace(0, 1, 160), indexing="ij")
    image = (0.02 + 0.3 * xx * yy + 0.05 * torch.sin(6 * xx)).clamp(0, 1).expand(1, 3, 120, 160).contiguous()
    image[..., 60:, 80:] = 0.8  # and a sharp step
    expected = apply_curves(image, torch.full((1, 24, 120, 160), -0.6))
    with torch.no_grad():
        got = _constant_curve_model(-0.6, scale=4)(image).image
    assert (expected - image).mean() > 0.1  # the curve brightens a lot
    assert (got - expected).abs().max() < 1e-4


def _pixelwise_curve_model(scale: float) -> DCENet:
    """A DCE-Net whose 24 maps are ``tanh(4 Y - 2)`` of each pixel's own mean Y (centre taps only):
    dark pixels brightened hard, bright ones darkened, so a map that bleeds across an edge shows."""
    model = _zeroed_model(scale)
    with torch.no_grad():
        model.e_conv1.weight[0, :, 1, 1] = 1 / 3
        for conv in (model.e_conv2, model.e_conv3, model.e_conv4):
            conv.weight[0, 0, 1, 1] = 1
        model.e_conv5.weight[0, 32, 1, 1] = 1  # channel 0 of x4 in cat([x3, x4])
        model.e_conv6.weight[0, 32, 1, 1] = 1  # channel 0 of x5 in cat([x2, x5])
        model.e_conv7.weight[:, 32, 1, 1] = 4  # channel 0 of x6 in cat([x1, x6])
        model.e_conv7.bias.fill_(-2.0)
    return model


def test_guided_upsampling_keeps_a_lamp_from_glowing():
    """A lamp (0.8) against a dark wall (0.03), each pixel with its own curve at full resolution.
    Maps from a 4x smaller copy, upsampled bilinearly, bleed across the edge (measured: up to 207
    levels over 4 pixels); guided by the full image's luma they stay with their side (34 levels,
    on the 3 pixels the small copy averages across the edge), and away from it both are exact."""
    image = torch.full((1, 3, 64, 96), 0.03)
    image[..., 48:] = 0.8
    with torch.no_grad():
        reference = _pixelwise_curve_model(1)(image).image
        guided = _pixelwise_curve_model(4)(image).image
        small_model = _pixelwise_curve_model(4)
        curves = small_model.head(small_model.downscale(image))
        bilinear = apply_curves(image, F.interpolate(curves, size=(64, 96), mode="bilinear", align_corners=True))
    assert reference[0, 0, 0, 0] > 0.9 and reference[0, 0, 0, -1] < 0.01  # the two sides' curves differ
    guided_error = (guided - reference).abs().amax(dim=(0, 1, 2))  # per column (every row is the same)
    bilinear_error = (bilinear - reference).abs().amax(dim=(0, 1, 2))
    away = torch.cat((guided_error[:44], guided_error[52:]))
    assert away.max() < 1e-4
    assert bilinear_error.max() > 100 / 255  # the glow the guide prevents
    assert guided_error.max() < bilinear_error.max() / 4 and guided_error.sum() < bilinear_error.sum() / 4


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
