import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dce_batch.errors import ConfigError
from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
from dce_batch.enhance.network import CURVE_ITERATIONS, GUIDED_RADIUS, DCENet, DCENetFast, init_weights
from dce_batch.enhance.precision import cpu_has_native_bf16, resolve_precision
from dce_batch.enhance.quantization import int8_available
from dce_batch.enhance.tiling import window_grid
from dce_batch.enhance.weights import LoadedWeights, WeightsMeta, load_weights, state_dict_sha256

from .shared_data import shared_path

STEP = 1 / 255
U32 = 2.0 ** -24  # float32's unit roundoff: one rounding is within a relative U32 of exact

# Tiled, banded, batched and full-frame inference compute the same arithmetic, but convolutions of
# differently shaped inputs take different kernels, and so different summation orders, on
# different CPUs (SIMD widths). How far apart two such float32 results can be: each output value
# ends a chain of N roundings (every convolution's sum of C_in x 3 x 3 products plus its bias, the
# area average and the guided filter's box sums when scale > 1, the bilinear upsampling, three
# per curve iteration) on values no larger than M (the largest activation, from a float32 run, which
# is within a relative gamma_N of the exact one: 1% is added). N roundings in a row, in any order, are off by at most gamma_N * M with gamma_N =
# N u / (1 - N u) (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1),
# so two orders differ by at most twice that, whatever the CPU. That leaves out the weights' gain
# from layer to layer (the worst case through |W| is vastly loose for roundings of random sign):
# the float64 run checks that assumption for these weights (on a crop: float64 convolutions are slow).
_BOUNDS: dict[tuple[str, float, str], float] = {}


def fp32_bound(weights: LoadedWeights, scale: float, image: np.ndarray) -> float:
    """gamma_N * M for ``weights`` at ``scale`` on ``image`` (see above)."""
    key = (weights.meta.sha256, float(scale), hashlib.sha1(image.tobytes()).hexdigest())
    if key not in _BOUNDS:
        model = weights.build(scale=scale)
        n = sum(m.weight[0].numel() + 1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        n += 3 * CURVE_ITERATIONS
        if scale > 1:  # area-average window, two box sums, luma, bilinear, a * luma + b
            n += (math.ceil(scale) + 1) ** 2 + 2 * (2 * GUIDED_RADIUS + 1) ** 2 + 3 + 4 + 2
        peaks = [1.0]  # images and curves are within [-1, 1]
        hooks = [m.register_forward_hook(lambda _m, _i, out: peaks.append(float(out.abs().max())))
                 for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            model(torch.from_numpy(image).permute(2, 0, 1)[None])
        for hook in hooks:
            hook.remove()
        _BOUNDS[key] = n * U32 / (1 - n * U32) * 1.01 * max(peaks)
    return _BOUNDS[key]


def exact(weights: LoadedWeights, scale: float, image: np.ndarray) -> np.ndarray:
    """The network on ``image`` computed in float64."""
    model = weights.build(scale=scale).double()
    with torch.no_grad():
        return model(torch.from_numpy(image).double().permute(2, 0, 1)[None]).image[0].permute(1, 2, 0).numpy()


def same_arithmetic(weights: LoadedWeights, scale: float, image: np.ndarray) -> float:
    """The most two float32 evaluations of the network on ``image`` may differ by."""
    return 2 * fp32_bound(weights, scale, image)


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


def _fp32(**kwargs) -> InferenceConfig:
    return InferenceConfig(precision="fp32", **kwargs)


@pytest.mark.parametrize("variant,scale", [("full", 1), ("full", 4), ("full", 5.5), ("fast", 1), ("fast", 12), ("fast", 5)])
@pytest.mark.parametrize("tile", [32, 100])
def test_tiled_inference_equals_full_frame(image, variant, scale, tile):
    weights = _weights(variant)
    full = Enhancer(weights, _fp32(scale=scale, max_full_frame_pixels=10**9)).enhance(image)
    tiled = Enhancer(weights, _fp32(scale=scale, tile_size=tile, max_full_frame_pixels=1000)).enhance(image)
    assert not full.tiled and tiled.tiled
    assert np.abs(tiled.pixels - full.pixels).max() <= same_arithmetic(weights, scale, image)
    # and full-frame equals the plain forward pass of the network
    model = weights.build(scale=scale)
    with torch.no_grad():
        ref = model(torch.from_numpy(image).permute(2, 0, 1)[None]).image[0].permute(1, 2, 0).numpy()
    assert np.abs(full.pixels - ref).max() <= same_arithmetic(weights, scale, image)
    # The bound's assumption: a float32 run within gamma_N * M of the exact result.
    crop = np.ascontiguousarray(image[:96, :128])
    alone = Enhancer(weights, _fp32(scale=scale, max_full_frame_pixels=10**9)).enhance(crop).pixels
    assert np.abs(alone - exact(weights, scale, crop)).max() <= fp32_bound(weights, scale, crop)


def test_upsampling_source_in_bands_equals_one_band(image, monkeypatch):
    """Scale 4: the guided coefficients computed in bands of 3 rows of the small copy (with their
    halo) give the single band's pixels; without the halo the band edges show (the test can fail)."""
    from dce_batch.enhance import enhancer as inference

    weights = _weights("full")
    one_band = Enhancer(weights, _fp32(scale=4)).enhance(image).pixels
    monkeypatch.setattr(inference, "_SOURCE_BAND_PIXELS", 3 * 109)  # the small copy is 75 x 109
    banded = Enhancer(weights, _fp32(scale=4)).enhance(image).pixels
    assert np.abs(banded - one_band).max() <= same_arithmetic(weights, 4, image)
    monkeypatch.setattr(DCENet, "upsampling_halo", 0)
    without_halo = Enhancer(weights, _fp32(scale=4)).enhance(image).pixels
    assert np.abs(without_halo - one_band).max() > 10 * same_arithmetic(weights, 4, image)


@pytest.mark.parametrize("variant", ["full", "fast"])
def test_small_copies_of_one_shape_share_a_forward_pass(image, variant):
    """Scale > 1 with a batch budget (the GPU default): equal small copies go through the network
    together, and every image gets the pixels it gets alone."""
    weights = _weights(variant)
    images = [image, np.ascontiguousarray(image[::-1]), image[:200, :300].copy(), np.ascontiguousarray(image[:, ::-1])]
    alone = Enhancer(weights, _fp32(scale=4))
    batched = Enhancer(weights, _fp32(scale=4, batch_pixels=10**8))
    calls = []
    forward = batched._curves
    batched._curves = lambda x: calls.append(x.shape[0]) or forward(x)
    results = batched.enhance_batch(images)
    assert sorted(calls) == [1, 3]  # the three 301 x 437 images in one call, the other alone
    for got, pixels in zip(results, images):
        assert np.abs(got.pixels - alone.enhance(pixels).pixels).max() <= same_arithmetic(weights, 4, image)


def test_a_halo_of_six_is_not_enough(image):
    """The test above can fail: one pixel less of halo changes the output visibly."""
    weights = _weights("full")
    full = Enhancer(weights, _fp32(scale=1, max_full_frame_pixels=10**9)).enhance(image).pixels
    short = Enhancer(weights, _fp32(scale=1, tile_size=64, max_full_frame_pixels=1000))
    short.halo = 6
    assert np.abs(short.enhance(image).pixels - full).max() > same_arithmetic(weights, 1, image)


def test_tiling_is_exact_with_the_published_checkpoint(image):
    weights = load_weights(shared_path("reference_weights", "zero_dce_epoch99.pth"))
    full = Enhancer(weights, _fp32(max_full_frame_pixels=10**9)).enhance(image).pixels
    tiled = Enhancer(weights, _fp32(tile_size=50, max_full_frame_pixels=1000))
    result = tiled.enhance(image)
    assert result.tiled and np.abs(result.pixels - full).max() <= same_arithmetic(weights, tiled.model.scale, image)


@pytest.mark.parametrize("height,width,tile", [(50, 70, 16), (301, 437, 100), (10, 10, 16), (271, 270, 256), (30, 500, 64)])
def test_windows_have_one_size_stay_inside_and_cover_every_pixel(height, width, tile):
    halo = 7
    seen = np.zeros((height, width), dtype=int)
    windows = window_grid(height, width, tile, halo)
    assert len({(w.height, w.width) for w in windows}) == 1, "equal windows: they batch across images"
    for w in windows:
        assert 0 <= w.top and w.top + w.height <= height and 0 <= w.left and w.left + w.width <= width
        assert (w.height, w.width) == (min(tile + 2 * halo, height), min(tile + 2 * halo, width))
        # the core keeps `halo` pixels of real context inside the window, except at image borders
        assert w.core_top - w.top == (0 if w.top == 0 else halo)
        assert w.top + w.height - w.core_bottom == (0 if w.top + w.height == height else halo)
        assert w.core_left - w.left == (0 if w.left == 0 else halo)
        assert w.left + w.width - w.core_right == (0 if w.left + w.width == width else halo)
        seen[w.core_top:w.core_bottom, w.core_left:w.core_right] += 1
    assert (seen >= 1).all()


def test_integer_images_stay_integers_and_round_like_the_float_path(image):
    weights = _weights("full")
    enhancer = Enhancer(weights, _fp32(tile_size=64, max_full_frame_pixels=1000))
    u8 = np.rint(image * 255).astype(np.uint8)
    result = enhancer.enhance(u8)
    assert result.pixels.dtype == np.uint8 and result.pixels.shape == u8.shape
    reference = enhancer.enhance(u8.astype(np.float32) / np.float32(255)).pixels
    expected = np.rint(np.clip(reference, 0, 1) * 255)
    assert np.abs(result.pixels.astype(int) - expected).max() <= 1
    assert (result.pixels != expected).mean() < 1e-3  # only exact rounding ties may differ
    u16 = np.rint(image * 65535).astype(np.uint16)
    deep = enhancer.enhance(u16).pixels
    assert deep.dtype == np.uint16
    reference16 = enhancer.enhance(u16.astype(np.float32) / np.float32(65535)).pixels
    # the same arithmetic on the same values, then rounded to 16 bits: half a 16-bit step more
    bound = same_arithmetic(weights, enhancer.model.scale, u16.astype(np.float32) / np.float32(65535)) + 0.5 / 65535
    assert np.abs(deep.astype(float) / 65535 - np.clip(reference16, 0, 1)).max() <= bound
    # 16 bits carry what 8 bits cannot: thousands of distinct output levels
    assert len(np.unique(deep)) > 4 * len(np.unique(result.pixels))


def test_a_batch_of_images_equals_one_at_a_time(image):
    weights = _weights("full")
    enhancer = Enhancer(weights, _fp32(tile_size=64, max_full_frame_pixels=5000, batch_pixels=10**9))
    images = [np.rint(image * 255).astype(np.uint8), np.rint(image[:100, :333] * 255).astype(np.uint8),
              np.rint(image[:50, :60] * 255).astype(np.uint8)]
    together = enhancer.enhance_batch(images)
    for pixels, result in zip(images, together):
        alone = enhancer.enhance(pixels)
        assert result.pixels.shape == pixels.shape and result.tiled == alone.tiled
        assert np.abs(result.pixels.astype(int) - alone.pixels.astype(int)).max() <= 1


def test_strength_zero_returns_input_and_strength_tones_down(image):
    weights = _weights("full")
    assert np.array_equal(Enhancer(weights, _fp32(strength=0.0)).enhance(image).pixels, image)
    full = Enhancer(weights, _fp32()).enhance(image).pixels
    half = Enhancer(weights, _fp32(strength=0.5)).enhance(image).pixels
    assert np.abs(half - image).mean() < np.abs(full - image).mean()


def test_precision_auto_follows_the_hardware(image):
    cpu = torch.device("cpu")
    native = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", cpu) == ("int8" if int8_available() else native)
    assert resolve_precision("auto", cpu, "fast") == native  # the fast variant is not quantized
    assert Enhancer(_weights("full")).precision == resolve_precision("auto", cpu)
    assert Enhancer(_weights("fast")).precision == native
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (it would be emulated)")
def test_bf16_stays_within_one_8bit_step_of_fp32():
    weights = load_weights()  # the shipped model: its real curve magnitudes
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:240, 0:320]
    dark = np.clip(0.12 + 0.08 * np.sin(yy / 9.0)[..., None] * np.cos(xx / 13.0)[..., None]
                   + 0.05 * rng.random((240, 320, 3)), 0, 1)
    u8 = np.rint(dark * 255).astype(np.uint8)
    fp32 = Enhancer(weights, _fp32()).enhance(u8).pixels.astype(int)
    bf16 = Enhancer(weights, InferenceConfig(precision="bf16")).enhance(u8).pixels.astype(int)
    assert np.abs(bf16 - fp32).max() <= 1


@pytest.mark.skipif(cpu_has_native_bf16(), reason="this CPU computes bf16 natively")
def test_bf16_that_would_be_emulated_is_refused():
    with pytest.raises(ConfigError, match="emulated"):
        resolve_precision("bf16", torch.device("cpu"))


def test_kernels_capped_at_avx2_mean_no_native_bf16():
    """On an AVX2-only CPU bf16 is emulated (~50x slower): auto must pick fp32 and an explicit
    bf16 must be refused. Capping torch's kernels at AVX2 puts any x86 machine in that state."""
    script = ("import torch\n"
              "from dce_batch.errors import ConfigError\n"
              "from dce_batch.enhance.precision import cpu_has_native_bf16, resolve_precision\n"
              "cpu = torch.device('cpu')\n"
              "try:\n"
              "    resolve_precision('bf16', cpu)\n"
              "    refused = ''\n"
              "except ConfigError as error:\n"
              "    refused = str(error)\n"
              "print(torch.backends.cpu.get_cpu_capability(), cpu_has_native_bf16(), resolve_precision('auto', cpu))\n"
              "print(refused)\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first, refusal = result.stdout.splitlines()[:2]
    if not first.startswith("AVX2"):
        pytest.skip(f"torch does not dispatch AVX2 kernels on this CPU ({first.split()[0]})")
    assert first == f"AVX2 False {'int8' if int8_available() else 'fp32'}"
    assert "emulated" in refusal and "AVX2" in refusal


def test_cpu_defaults_tile_small_and_stay_exact(image):
    weights = _weights("full")
    auto = Enhancer(weights, _fp32())
    assert (auto.config.tile_size, auto.config.max_full_frame_pixels) == (256, 2 * 256 * 256)
    result = auto.enhance(image)
    full = Enhancer(weights, _fp32(max_full_frame_pixels=10**9)).enhance(image)
    assert result.tiled and np.abs(result.pixels - full.pixels).max() <= same_arithmetic(weights, auto.model.scale, image)


def test_invalid_settings_are_config_errors():
    weights = _weights("full")
    for bad in (dict(strength=1.5), dict(precision="int4"), dict(scale=0.5), dict(tile_size=4), dict(batch_pixels=0)):
        with pytest.raises(ConfigError):
            InferenceConfig(**bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16"):
            Enhancer(weights, InferenceConfig(precision="fp16"))
        with pytest.raises(ConfigError, match="CUDA"):
            Enhancer(weights, InferenceConfig(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_batches_windows_and_matches_the_cpu(image):
    weights = load_weights()
    u8 = np.rint(image * 255).astype(np.uint8)
    images = [u8, u8[:200, :300], np.ascontiguousarray(u8[::-1])]
    cpu = Enhancer(weights, InferenceConfig(device="cpu", precision="fp32"))
    gpu = Enhancer(weights, InferenceConfig(device="cuda", tile_size=64, max_full_frame_pixels=1000))
    for pixels, result in zip(images, gpu.enhance_batch(images)):
        assert np.abs(result.pixels.astype(int) - cpu.enhance(pixels).pixels.astype(int)).max() <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_finishing_tiled_equals_full_frame_within_an_8bit_step(image, dtype):
    """Denoising and exposure after the curves stay exact under tiling (their own halo), also
    when windows of several images share a batch."""
    from dce_batch.enhance.finishing import FinishConfig

    weights = load_weights()
    scale = 255 if dtype == np.uint8 else 65535
    noisy = np.clip(image * 0.4 + np.random.default_rng(1).normal(0, 0.02, image.shape), 0, 1)
    pixels = np.rint(noisy * scale).astype(dtype)
    finish = FinishConfig()
    full = Enhancer(weights, _fp32(finish=finish, max_full_frame_pixels=10**9)).enhance(pixels)
    cpu_tiled = Enhancer(weights, _fp32(finish=finish, tile_size=64, max_full_frame_pixels=1000)).enhance(pixels)
    batched = Enhancer(weights, _fp32(finish=finish, tile_size=64, max_full_frame_pixels=1000, batch_pixels=10**9))
    together = batched.enhance_batch([pixels, pixels[:120, :200]])
    plain = Enhancer(weights, _fp32(max_full_frame_pixels=10**9)).enhance(pixels).pixels
    step = scale / 255
    for result in (cpu_tiled, together[0]):
        assert result.tiled and result.pixels.dtype == dtype
        assert np.abs(result.pixels.astype(float) - full.pixels.astype(float)).max() <= step
    assert np.abs(together[1].pixels.astype(float) - batched.enhance(pixels[:120, :200]).pixels.astype(float)).max() <= step
    # and it did something: smoother (denoised) and at least as bright as the network alone
    assert np.abs(np.diff(full.pixels.astype(float), axis=1)).mean() < np.abs(np.diff(plain.astype(float), axis=1)).mean()
    assert full.pixels.mean() >= plain.mean() - step
    # strength 0 still means "unchanged", finishing included
    unchanged = Enhancer(weights, _fp32(finish=finish, strength=0.0)).enhance(pixels).pixels
    assert np.array_equal(unchanged, pixels)
