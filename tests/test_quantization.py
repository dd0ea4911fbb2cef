"""int8 inference (dce_batch.enhance.quantization): accuracy against fp32, exact tiling, reproducible
calibration, and clear refusals where it cannot run."""

import numpy as np
import pytest
import torch

from dce_batch.errors import ConfigError
from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
from dce_batch.enhance.precision import resolve_precision
from dce_batch.enhance.quantization import calibration_crops, int8_available, quantize_curve_head
from dce_batch.enhance.weights import load_weights

pytestmark = pytest.mark.skipif(not int8_available(), reason="int8 needs an x86-64 CPU with oneDNN")


@pytest.fixture(scope="module")
def dark_photo() -> np.ndarray:
    """A dark, textured 8-bit image (like the real inputs: smooth shading, edges, sensor noise)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:300, 0:420]
    shading = 0.12 + 0.08 * np.sin(yy / 9.0)[..., None] * np.cos(xx / 13.0)[..., None]
    edges = 0.06 * ((yy // 40 + xx // 50) % 2)[..., None] * np.array([1.0, 0.7, 0.4])
    return np.rint(np.clip(shading + edges + 0.04 * rng.random((300, 420, 3)), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shipped():
    return load_weights()  # the shipped model: its real activation ranges


@pytest.mark.parametrize("scale", [1.0, 4.0])  # full resolution, and the job's default
def test_int8_stays_within_a_few_8bit_steps_of_fp32(dark_photo, shipped, scale):
    fp32 = Enhancer(shipped, InferenceConfig(precision="fp32", scale=scale)).enhance(dark_photo).pixels.astype(int)
    int8 = Enhancer(shipped, InferenceConfig(precision="int8", scale=scale)).enhance(dark_photo).pixels.astype(int)
    difference = np.abs(int8 - fp32)
    # Measured on real photos (every 8th DICM image) with AVX-512 VNNI and with kernels capped at
    # AVX2: at scale 1 at most 2 steps, mean 0.25; at scale 4 at most 3, mean 0.11, shift -0.03.
    # The bounds leave room for other CPUs' kernels, not for a broken model: a wrong scale or a
    # missing bias moves most values by many steps.
    assert difference.max() <= 5
    assert difference.mean() < 0.75
    assert np.abs((int8 - fp32).mean()) < 0.3  # no brightness shift (bias correction)
    assert (int8 != fp32).any()  # it really ran quantized


def test_int8_tiles_equal_the_full_frame(dark_photo, shipped):
    tiled = Enhancer(shipped, InferenceConfig(precision="int8", tile_size=64, max_full_frame_pixels=4096))
    full = Enhancer(shipped, InferenceConfig(precision="int8", max_full_frame_pixels=10**9))
    a, b = tiled.enhance(dark_photo), full.enhance(dark_photo)
    assert a.tiled and not b.tiled
    # Integer arithmetic inside; zero padding is zero in every window. Allow one step for the
    # float curve iterations on differently shaped windows.
    assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max() <= 1


def test_calibration_is_reproducible_and_leaves_the_model_alone(shipped):
    model = shipped.build(scale=1.0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    first, second = quantize_curve_head(model)(x), quantize_curve_head(model)(x)
    assert torch.equal(first, second)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(calibration_crops()) == 5 * 4 * 2  # 5 bundled samples, 4 crops, 2 brightnesses
    with torch.no_grad():
        assert (first - model.head(x)).abs().max() < 0.05  # curve maps, in [-1, 1]


def test_int8_refusals_say_what_to_use():
    with pytest.raises(ConfigError, match="int8 runs on CPUs"):
        resolve_precision("int8", torch.device("cuda"))
    with pytest.raises(ConfigError, match="fast variant"):
        resolve_precision("int8", torch.device("cpu"), "fast")
