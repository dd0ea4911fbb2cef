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


@pytest.mark.parametrize("scale", [1, 4, 12, 7.5])
@pytest.mark.parametrize("size", [(5, 9), (240, 360), (250, 377)])
def test_fast_variant_accepts_any_size_at_any_scale(scale, size):
    model = DCENetFast(scale=scale).eval()
    x = torch.rand(1, 3, *size)
    out = model(x)
    assert out.image.shape == x.shape
    assert out.curves.shape[-2:] == model.downscaled_size(*size)


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
    with pytest.raises(ConfigError):
        build_model("full", scale=4)
    with pytest.raises(ConfigError):
        DCENetFast(scale=0.5)
