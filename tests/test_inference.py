import numpy as np
import pytest
import torch

from dce_batch.errors import ConfigError
from dce_batch.inference import Enhancer, InferenceConfig, tile_grid
from dce_batch.model import DCENet, DCENetFast, init_weights
from dce_batch.weights import LoadedWeights, WeightsMeta, load_weights, state_dict_sha256

from .shared_data import shared_path


def _weights(variant: str, seed: int = 0) -> LoadedWeights:
    torch.manual_seed(seed)
    model = DCENet() if variant == "full" else DCENetFast()
    init_weights(model)
    # Make the curves large enough that tiling mistakes would show (N(0, 0.02) init gives tiny
    # maps); much larger and float32 rounding differences between conv algorithms get amplified.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    state = model.state_dict()
    meta = WeightsMeta(name="t", variant=variant, num_params=0, sha256=state_dict_sha256(state))
    return LoadedWeights(state_dict=state, meta=meta)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    # Smooth structure plus noise, dark like the real inputs.
    yy, xx = np.mgrid[0:301, 0:437].astype(np.float32)
    base = 0.15 + 0.1 * np.sin(yy / 17)[..., None] * np.cos(xx / 23)[..., None]
    return np.clip(base + rng.random((301, 437, 3), dtype=np.float32) * 0.1, 0, 1).astype(np.float32)


@pytest.mark.parametrize("variant,scale", [("full", 1), ("fast", 1), ("fast", 12), ("fast", 5)])
@pytest.mark.parametrize("tile", [32, 100])
def test_tiled_inference_equals_full_frame(image, variant, scale, tile):
    weights = _weights(variant)
    full = Enhancer(weights, InferenceConfig(scale=scale, max_full_frame_pixels=10**9)).enhance(image)
    tiled = Enhancer(weights, InferenceConfig(scale=scale, tile_size=tile, max_full_frame_pixels=1000)).enhance(image)
    assert not full.tiled and tiled.tiled
    assert np.abs(tiled.pixels - full.pixels).max() < 1e-6
    # and full-frame equals the plain forward pass of the network
    model = weights.build(scale=scale)
    with torch.no_grad():
        ref = model(torch.from_numpy(image).permute(2, 0, 1)[None]).image[0].permute(1, 2, 0).numpy()
    assert np.abs(full.pixels - ref).max() < 1e-6


def test_a_halo_of_six_is_not_enough(image):
    """The test above can fail: one pixel less of halo changes the output visibly."""
    weights = _weights("full")
    full = Enhancer(weights, InferenceConfig(max_full_frame_pixels=10**9)).enhance(image).pixels
    short = Enhancer(weights, InferenceConfig(tile_size=64, max_full_frame_pixels=1000))
    short.halo = 6
    assert np.abs(short.enhance(image).pixels - full).max() > 1e-4


def test_tiling_is_exact_with_the_published_checkpoint(image):
    weights = load_weights(shared_path("reference_weights", "zero_dce_epoch99.pth"))
    full = Enhancer(weights, InferenceConfig(max_full_frame_pixels=10**9)).enhance(image).pixels
    tiled = Enhancer(weights, InferenceConfig(tile_size=50, max_full_frame_pixels=1000)).enhance(image)
    assert tiled.tiled and np.abs(tiled.pixels - full).max() < 1e-6


def test_tile_grid_covers_every_pixel_once():
    seen = np.zeros((50, 70), dtype=int)
    for rows, cols, prow, pcol in tile_grid(50, 70, 16, 7):
        seen[rows, cols] += 1
        assert prow.start <= rows.start and prow.stop >= rows.stop
        # 7 pixels of halo on every side, except where the image ends
        assert rows.start - prow.start == min(7, rows.start)
        assert prow.stop - rows.stop == min(7, 50 - rows.stop)
        assert cols.start - pcol.start == min(7, cols.start)
        assert pcol.stop - cols.stop == min(7, 70 - cols.stop)
    assert (seen == 1).all()


def test_strength_zero_returns_input_and_strength_tones_down(image):
    weights = _weights("full")
    assert np.array_equal(Enhancer(weights, InferenceConfig(strength=0.0)).enhance(image).pixels, image)
    full = Enhancer(weights).enhance(image).pixels
    half = Enhancer(weights, InferenceConfig(strength=0.5)).enhance(image).pixels
    assert np.abs(half - image).mean() < np.abs(full - image).mean()


def test_bf16_on_cpu_is_close_to_fp32(image):
    weights = _weights("full")
    fp32 = Enhancer(weights).enhance(image).pixels
    bf16 = Enhancer(weights, InferenceConfig(precision="bf16")).enhance(image).pixels
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - fp32).mean() < 0.02


def test_cpu_defaults_tile_small_and_stay_exact(image):
    weights = _weights("full")
    auto = Enhancer(weights)
    assert (auto.config.tile_size, auto.config.max_full_frame_pixels) == (256, 2 * 256 * 256)
    result = auto.enhance(image)
    full = Enhancer(weights, InferenceConfig(max_full_frame_pixels=10**9)).enhance(image)
    assert result.tiled and np.abs(result.pixels - full.pixels).max() < 1e-6


def test_invalid_settings_are_config_errors():
    weights = _weights("full")
    for bad in (dict(strength=1.5), dict(precision="int8"), dict(scale=0.5), dict(tile_size=4)):
        with pytest.raises(ConfigError):
            InferenceConfig(**bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16"):
            Enhancer(weights, InferenceConfig(precision="fp16"))
        with pytest.raises(ConfigError, match="CUDA"):
            Enhancer(weights, InferenceConfig(device="cuda"))
