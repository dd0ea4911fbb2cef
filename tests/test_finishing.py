"""The finishing stage: denoising, exposure, exact tiling, the per-image parameters (CPU, seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dce_batch.errors import ConfigError
from dce_batch.enhance.filters import DCT_STRIDE, GROUP_SEARCH
from dce_batch.enhance.finishing import (
    DEFAULT_EXPOSURE_TARGET,
    NUM_PARAMS,
    PARAM_SIGMA_LUMA,
    PARAM_TONE,
    FinishConfig,
    finish_halo,
    finish_image,
    finish_params,
    finish_tiles,
    params_copy,
    parse_exposure,
    scene_copy,
)
from dce_batch.enhance.exposure import TARGET_MAX, TARGET_MIN, scene_target, srgb_to_linear
from dce_batch.enhance.filters import luma
from dce_batch.enhance.finishing import _SHADOW_GAIN
from dce_batch.enhance.settings import RATIO_FINISH_METHODS

STEP = 1.0 / 255.0  # one 8-bit step


def _scene(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A 1 x 3 x H x W 'photo' in [0, 1]: smooth gradients, flat patches and hard edges."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack((0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.5 - 0.3 * xx * yy))
    blocks = (torch.rand(3, height // 16 + 1, width // 16 + 1, generator=g) * 0.4 - 0.2)
    blocks = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :height, :width]
    return (base + blocks).clamp(0.02, 0.98).unsqueeze(0)


def _noisy_dark_pair(height: int = 96, width: int = 128, gain: float = 8.0, sigma: float = 2.0 * STEP, seed: int = 0):
    """(low, enhanced): a dark noisy input and a 'curve' output that lifted it ``gain`` times."""
    g = torch.Generator().manual_seed(seed)
    clean = _scene(height, width, seed) / gain
    low = (clean + sigma * torch.randn(clean.shape, generator=g)).clamp(0.0, 1.0)
    return low, (low * gain).clamp(0.0, 1.0)


def _local_std(x: torch.Tensor) -> float:
    """Noise of a flat image: its standard deviation (flat: nothing else varies)."""
    return float(x.std())


def test_denoise_lowers_the_noise_of_a_flat_image_without_shifting_its_mean():
    g = torch.Generator().manual_seed(1)
    low = (0.05 + 0.004 * torch.randn((1, 3, 128, 128), generator=g)).clamp(0, 1)
    enhanced = low * 8.0  # what strong curves do to a dark flat wall: mean 0.4, noise x8
    config = FinishConfig(exposure="off")
    out = finish_image(low, enhanced, config)
    assert _local_std(out) < 0.5 * _local_std(enhanced)  # measured: 0.20 (0.30 with --denoise fast)
    for channel in range(3):
        assert abs(float(out[0, channel].mean() - enhanced[0, channel].mean())) < 0.5 * STEP


def _chroma_std(x: torch.Tensor) -> float:
    """Standard deviation of the chroma (B - Y and R - Y, BT.709) of a flat image."""
    y = 0.2126 * x[:, 0] + 0.7152 * x[:, 1] + 0.0722 * x[:, 2]
    return 0.5 * float((x[:, 2] - y).std() + (x[:, 0] - y).std())


def test_the_second_chroma_pass_removes_more_chroma_noise_and_keeps_the_colour():
    g = torch.Generator().manual_seed(2)
    # A dark flat wall with a colour tint and chroma noise that is blotchy (correlated over
    # 4 x 4 blocks, as demosaicing leaves it), lifted 8x by the curves.
    blotches = torch.randn((1, 3, 32, 32), generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)
    tint = torch.tensor([0.06, 0.05, 0.04]).view(1, 3, 1, 1)
    low = (tint + 0.003 * blotches + 0.002 * torch.randn((1, 3, 128, 128), generator=g)).clamp(0, 1)
    enhanced = low * 8.0
    one_pass = finish_image(low, enhanced, FinishConfig(exposure="off", chroma_refine_radius=0))
    two_pass = finish_image(low, enhanced, FinishConfig(exposure="off"))
    assert _chroma_std(two_pass) < 0.8 * _chroma_std(one_pass) < 0.8 * _chroma_std(enhanced)
    for channel in range(3):  # the wall keeps its colour
        assert abs(float(two_pass[0, channel].mean() - enhanced[0, channel].mean())) < 0.5 * STEP


def test_denoise_strength_orders_the_smoothing_and_off_changes_nothing():
    g = torch.Generator().manual_seed(1)
    low = (0.05 + 0.004 * torch.randn((1, 3, 128, 128), generator=g)).clamp(0, 1)
    enhanced = low * 8.0  # a dark flat wall lifted 8x: what is left of its variation is noise
    left = {strength: _local_std(finish_image(low, enhanced, FinishConfig(exposure="off", denoise_strength=strength)))
            for strength in (0.5, 1.0, 2.0)}
    assert left[2.0] < left[1.0] < left[0.5] < _local_std(enhanced)
    off = finish_image(low, enhanced, FinishConfig(exposure="off", denoise="off"))
    assert torch.equal(off, enhanced.clamp(0, 1))


def _noisy_texture(period: int, gain: float = 8.0, seed: int = 5):
    """(clean, low, enhanced): fine sinusoidal texture, made dark and noisy, lifted ``gain`` times."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(128), indexing="ij")
    clean = (0.4 + 0.08 * torch.sin(2 * np.pi * xx / period) + 0.08 * torch.sin(2 * np.pi * yy / (1.5 * period)))
    clean = clean.expand(1, 3, 96, 128)
    low = (clean / gain + 0.004 * torch.randn((1, 3, 96, 128), generator=g)).clamp(0, 1)
    return clean, low, low * gain


@pytest.mark.parametrize("period", [6, 12])
def test_the_dct_stage_keeps_texture_that_the_guided_filter_blurs_or_leaves_noisy(period):
    clean, low, enhanced = _noisy_texture(period)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))

    def error(mode: str) -> float:
        out = finish_image(low, enhanced, FinishConfig(exposure="off", denoise=mode))
        return float((out - clean)[inner].square().mean().sqrt())

    # Measured: RMS error 0.014 / 0.013 with the DCT stage, 0.031 / 0.022 without it, 0.032 unfiltered.
    assert error("auto") < 0.7 * error("fast")
    assert error("fast") < error("off")


def test_the_local_gain_is_the_slope_of_the_chain_or_the_ratio_of_means_where_larger():
    """Hand-computable chains: the regression slope of a linear map is its slope; where the input
    is flat the ratio of means stands in, with a floor of one 8-bit step under the input's mean."""
    from dce_batch.enhance.filters import small_box_mean
    from dce_batch.enhance.finishing import _local_gain

    def gain(low, out):
        return _local_gain(low, out, 3)

    g = torch.Generator().manual_seed(0)
    low = 0.2 + 2 * STEP * torch.randn(1, 1, 24, 24, generator=g, dtype=torch.float64)
    # Steeper than the ratio (out / in = 3): the noise grew 4x.
    assert torch.allclose(gain(low, 4.0 * low - 0.2), torch.full_like(low, 4.0), atol=1e-3)
    # Flatter than the ratio (slope 0.5, ratio about 2): the ratio of the window means, the larger.
    window_mean = small_box_mean(low, 3)
    assert torch.allclose(gain(low, 0.5 * low + 0.3), 0.5 + 0.3 / window_mean, atol=1e-3)
    flat = torch.full_like(low, 0.2)
    assert torch.allclose(gain(flat, flat + 0.3), torch.full_like(low, 2.5), atol=1e-3)
    # Near black the ratio's floor is one step: 0.5 step lifted to 10 steps reads 10x, not 20x.
    black = torch.full_like(low, 0.5 * STEP)
    assert torch.allclose(gain(black, black * 20), torch.full_like(low, 10.0), atol=1e-3)
    # Bounded: a chain never counts as removing noise, nor as amplifying it more than 30x.
    assert torch.allclose(gain(low, 0.5 * low), torch.ones_like(low), atol=1e-3)
    assert torch.allclose(gain(low, 100.0 * low - 19.0), torch.full_like(low, 30.0), atol=1e-3)


def test_the_slope_gain_removes_the_noise_a_steep_chain_added():
    """A chain steeper than its ratio of means (out = 4 in - 0.2, ratio 3) amplified the noise 4x;
    the ratio alone underestimates it and leaves more noise in place."""
    g = torch.Generator().manual_seed(1)
    low = 0.2 + 2 * STEP * torch.randn(1, 1, 96, 96, generator=g).expand(1, 3, 96, 96)
    enhanced = 4.0 * low - 0.2
    slope = finish_image(low, enhanced, FinishConfig(exposure="off"))
    ratio = finish_image(low, enhanced, FinishConfig(exposure="off", noise_gain="ratio"))
    assert FinishConfig().noise_gain == "slope" and FinishConfig(noise_gain="ratio").method == RATIO_FINISH_METHODS[True]
    # Measured: 0.0315 noisy, 0.0176 with the ratio, 0.0087 with the slope.
    assert _local_std(slope) < 0.7 * _local_std(ratio)
    assert abs(float(slope.mean()) - float(enhanced.mean())) < 0.5 * STEP


def test_a_clean_image_is_left_nearly_alone():
    clean = _scene(96, 128)
    out = finish_image(clean, clean, FinishConfig(exposure="off"))
    assert float((out - clean).abs().max()) < STEP


@pytest.mark.parametrize("tile", [32, 45])
def test_tiles_with_the_halo_match_the_full_frame(tile):
    low, enhanced = _noisy_dark_pair(110, 150, seed=3)
    low = torch.cat((low, _noisy_dark_pair(110, 150, gain=4.0, seed=4)[0]))  # a batch of two images
    enhanced = torch.cat((enhanced, (low[1:] * 4.0).clamp(0, 1)))
    config = FinishConfig(exposure=0.5)
    params = finish_params(params_copy(low), params_copy(enhanced), config)
    full = finish_tiles(low, enhanced, params, config)
    halo = finish_halo(config)
    # The DCT stage's blocks reach 7 pixels, its matched groups 2 x 2 grid steps of 3 more.
    assert halo == 2 * config.radius + 7 + 2 * GROUP_SEARCH * DCT_STRIDE == 25
    differences = _tile_differences(low, enhanced, params, config, full, tile, halo)
    # What a tile may change: the rounding of its box means' running sums, which start at the tile's
    # edge (the largest rounding in the chain: the other sums have at most 64 terms); and, rarely,
    # a discrete choice that rounding tips the other way: two candidate blocks at nearly the same
    # distance from a group's reference (one of GROUP_SIZE members swapped) or a pixel on a
    # threshold (strong noise, black). Those are few, and the job's requirement holds for them
    # too: no pixel moves by an 8-bit step (outputs are written in 8 bits).
    rounding = _prefix_sum_rounding(*low.shape[-2:], config.radius)
    assert float((differences > rounding).float().mean()) < 0.01, "more than near-ties differ"
    assert float(differences.max()) < STEP
    # Block matching is at work in these images (strong noise: 8x and 4x lifts of 2 steps), and
    # a halo without the groups' share is visibly wrong.
    unmatched = FinishConfig(exposure=0.5, matched_noise_level=math.inf)
    assert float((finish_tiles(low, enhanced, params, unmatched) - full).abs().max()) > 4 * STEP
    assert _worst_tile_error(low, enhanced, params, config, full, tile, 2 * config.radius + 7) > STEP
    # Without the chroma pass's share the chroma is visibly wrong (more than a step).
    assert _worst_tile_error(low, enhanced, params, config, full, tile, 2 * config.radius) > STEP
    # The DCT blocks lie on a grid fixed to the image: a tile that does not say where it lies
    # gets other blocks (these tiles start 13 rows before their cores, off the grid of 3).
    assert _worst_tile_error(low, enhanced, params, config, full, tile, halo, origins=False) > STEP
    # The first chroma pass alone: one pixel less context is visibly wrong, the halo is not
    # generous, it is needed.
    first_only = FinishConfig(exposure=0.5, chroma_refine_radius=0, denoise="fast")
    full = finish_tiles(low, enhanced, params, first_only)
    assert finish_halo(first_only) == 2 * config.radius
    assert _worst_tile_error(low, enhanced, params, first_only, full, tile, 2 * config.radius) < STEP
    assert _worst_tile_error(low, enhanced, params, first_only, full, tile, 2 * config.radius - 1) > STEP
    # The same with the DCT stage: its blocks need 7 pixels more.
    with_dct = FinishConfig(exposure=0.5, chroma_refine_radius=0, matched_noise_level=math.inf)
    full = finish_tiles(low, enhanced, params, with_dct)
    assert finish_halo(with_dct) == 2 * config.radius + 7
    assert _worst_tile_error(low, enhanced, params, with_dct, full, tile, 2 * config.radius + 7) < STEP
    assert _worst_tile_error(low, enhanced, params, with_dct, full, tile, 2 * config.radius) > STEP


def _tile_differences(low, enhanced, params, config, full, tile, halo, origins=True) -> torch.Tensor:
    """|tiled - full| at every pixel, the image finished in tiles of ``tile`` with ``halo``."""
    _, _, height, width = low.shape
    differences = torch.zeros_like(full)
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            py0, px0, py1, px1 = max(0, y0 - halo), max(0, x0 - halo), min(height, y1 + halo), min(width, x1 + halo)
            out = finish_tiles(low[..., py0:py1, px0:px1], enhanced[..., py0:py1, px0:px1], params, config,
                               origins=[(py0, px0)] * low.shape[0] if origins else None)
            core = out[..., y0 - py0:y1 - py0, x0 - px0:x1 - px0]
            differences[..., y0:y1, x0:x1] = (core - full[..., y0:y1, x0:x1]).abs()
    return differences


def _worst_tile_error(*args, **kwargs) -> float:
    return float(_tile_differences(*args, **kwargs).max())


def _prefix_sum_rounding(height: int, width: int, radius: int) -> float:
    """How far a tile's box mean of values in [0, 1] can be from the full frame's: the means come
    from running sums (filters.box_mean) that start at the tile's edge, not the image's. A running
    sum over k <= n such values is off by at most gamma_n * n (gamma_n = n u / (1 - n u), u =
    2^-24: Higham, Accuracy and Stability of Numerical Algorithms, section 3.1); a window's sum is
    the difference of two, along each of two axes, the second summing 2r + 1 of the first's; the
    mean divides by (2r + 1)^2. Two such computations differ by at most twice that."""
    n = max(height, width)
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)
    return 2 * (2 * gamma * n * (2 * radius + 1) + 2 * gamma * n) / (2 * radius + 1) ** 2


def test_exposure_moves_a_dark_result_toward_the_scene_target():
    low = 0.02 + _scene(80, 120) * 0.06  # a dark input (mean luma ~0.05) without black regions
    enhanced = low.pow(0.4)  # curves that left it at ~0.29
    before = float(enhanced.mean())
    out = finish_image(low, enhanced, FinishConfig(denoise="off"))
    target = float(scene_target(low, luma(enhanced).mean(dim=(1, 2, 3))))
    assert before < 0.3 and 0.35 < target <= TARGET_MAX + 1e-6
    assert abs(float(luma(out).mean()) - target) < 0.01
    assert bool((out <= _SHADOW_GAIN * enhanced + 1e-6).all())  # shadow gain capped
    custom = finish_image(low, enhanced, FinishConfig(denoise="off", exposure=0.35))
    assert abs(float(luma(custom).mean()) - 0.35) < 0.01


def test_the_scene_target_follows_the_curves_and_the_feature_is_a_ratio_in_linear_light():
    """Hand-computable: curves that left an image at mean luma m give it a + c m (within the
    clamps); brighter curves, a brighter target. The highlight feature of a flat frame is 0; a
    frame whose 99.5th percentile stands 8x above its mean (in linear light) reads log(1/8),
    whatever its exposure (it is a ratio in linear light)."""
    from dce_batch.enhance.exposure import CURVES_WEIGHT, TARGET_INTERCEPT, scene_feature

    flat = torch.full((1, 3, 64, 64), 0.05)
    for m in (0.2, 0.35, 0.5):
        assert float(scene_target(flat, torch.tensor([m]))) == pytest.approx(
            min(max(TARGET_INTERCEPT + CURVES_WEIGHT * m, TARGET_MIN), TARGET_MAX), abs=1e-5)
    assert float(scene_target(flat, torch.tensor([0.4]))) > float(scene_target(flat, torch.tensor([0.3])))
    assert float(scene_target(flat, torch.tensor([1.0]))) == pytest.approx(TARGET_MAX)
    assert float(scene_feature(flat)) == pytest.approx(0.0, abs=1e-5)
    # Linear light: a room at 0.002 with a white sheet at 0.2 on 1/8 of the frame (4 x 4 pools intact).
    linear = torch.full((1, 3, 64, 64), 0.002)
    linear[..., :8, :] = 0.2
    encode = lambda lin: torch.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin.pow(1 / 2.4) - 0.055)
    mean = (7 * 0.002 + 0.2) / 8
    expected = math.log(mean / 0.2)
    # (the feature decodes sRGB through a 12-bit table: the dark room's 0.026 is read within 0.5 %)
    for scale in (1.0, 0.25):  # the same scene exposed 4x shorter
        assert float(scene_feature(encode(linear * scale))) == pytest.approx(expected, abs=0.005)


def test_the_highlight_stretch_lifts_highlights_smoothly_up_to_white():
    """Hand-computable: below the knee (0.5) the curve is the power curve; above it the lift is
    ``a (y - 0.5)^2 (1 - y) / 0.25``; white stays white and the curve stays monotonic."""
    from dce_batch.enhance.finishing import _exposure_curve

    x = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    plain = _exposure_curve(x, torch.tensor(0.8, dtype=torch.float64))
    lifted = _exposure_curve(x, torch.tensor(0.8, dtype=torch.float64), 0.8)
    assert torch.equal(lifted[plain <= 0.5], plain[plain <= 0.5])
    expected = plain + 0.8 * (plain - 0.5).clamp(min=0) ** 2 * (1 - plain) / 0.25
    assert torch.allclose(lifted, expected, atol=1e-12)
    assert float(lifted[-1]) == 1.0 and bool((lifted[1:] >= lifted[:-1]).all()) and bool((lifted >= plain).all())
    y = torch.tensor([0.75], dtype=torch.float64)
    assert float(_exposure_curve(y, torch.tensor(1.0, dtype=torch.float64), 0.8)) == pytest.approx(0.75 + 0.05)


def test_the_highlight_stretch_acts_on_dark_scenes_and_keeps_the_target_mean():
    """Per image, the stretch follows the exposure correction's strength: full for a dark scene,
    none for a well-exposed one or with exposure off; the exponent is refitted with it, so the
    mean of the lit regions still reaches the target."""
    from dce_batch.enhance.finishing import PARAM_HIGHLIGHTS

    low = _scene(64, 64) * 0.08
    enhanced = _scene(64, 64) * 0.5 + 0.1  # highlights up to about 0.6 over a 0.35 mean
    bright = _scene(64, 64)
    config = FinishConfig(exposure=0.45, denoise="off")
    params = finish_params(torch.cat((low, bright)), torch.cat((enhanced, bright)), config)
    assert params[0, PARAM_HIGHLIGHTS] == pytest.approx(0.8) and params[1, PARAM_HIGHLIGHTS] == 0.0
    stretched = finish_tiles(low, enhanced, params[:1], config)
    assert float(stretched.mean(dim=1).mean()) == pytest.approx(0.45, abs=0.01)
    # What the target is set on: the mean luma of the lit regions (all of this frame; 0.4491).
    from dce_batch.enhance.filters import box_mean, luma

    assert bool((box_mean(luma(low), 4) >= 2.5 / 255).all())
    assert float(luma(stretched).mean()) == pytest.approx(0.45, abs=0.002)
    plain = FinishConfig(exposure=0.45, denoise="off", highlight_stretch=0.0)
    plain_params = finish_params(low, enhanced, plain)
    assert plain_params[0, PARAM_HIGHLIGHTS] == 0.0
    assert float(plain_params[0, PARAM_TONE]) < float(params[0, PARAM_TONE])  # midtones lifted less
    off = finish_params(low, enhanced, FinishConfig(exposure="off"))
    assert off[0, PARAM_TONE] == 1.0 and off[0, PARAM_HIGHLIGHTS] == 0.0


def test_exposure_leaves_a_well_exposed_image_alone():
    image = _scene(80, 120)  # mean ~0.45 as input and as output
    for enhanced in (image, (image * 0.7)):  # even if the curves had darkened it
        out = finish_image(image, enhanced, FinishConfig(denoise="off"))
        assert float((out - enhanced).abs().max()) < 0.5 * STEP


def test_exposure_is_bounded_for_very_dark_scenes():
    low = torch.full((1, 3, 32, 32), 3.0 / 255.0)  # dim but not black: there is signal to lift
    enhanced = torch.full((1, 3, 32, 32), 0.02)
    config = FinishConfig(denoise="off")
    params = finish_params(low, enhanced, config)
    assert float(params[0, PARAM_TONE]) == pytest.approx(1.0 / config.max_exposure_boost, abs=1e-4)


def test_exposure_keeps_a_night_town_as_the_curves_left_it_and_lifts_a_dim_room():
    # A town at night: four lamps that clip even in the dark capture (each one 4 x 4 pool), over a
    # dim street and a black sky; their 99.9th percentile stands ~160x above the mean.
    low = torch.zeros((1, 3, 200, 200))
    low[..., 72:, :] = 0.08
    for x in (20, 60, 120, 160):
        low[..., 72:76, x:x + 4] = 1.0
    enhanced = (low * 5.0).clamp(0.0, 1.0)  # the curves left it at a mean of 0.26
    night = finish_image(low, enhanced, FinishConfig(denoise="off"))
    assert float(scene_target(low, luma(enhanced).mean(dim=(1, 2, 3)))) == pytest.approx(TARGET_MIN)
    assert float((night - enhanced).abs().max()) < STEP
    assert float(night[..., :72, :].max()) == 0.0  # the sky stays black
    # The same light spread evenly over a room with nothing bright in it becomes a room.
    room = torch.full((1, 3, 100, 100), 0.04)
    room[..., ::8, :] = 0.06
    lifted = finish_image(room, room * 3.0, FinishConfig(denoise="off"))
    assert float(lifted.mean()) > float((room * 3.0).mean()) + 0.1


def test_a_night_scene_lit_by_point_sources_is_left_as_the_curves_left_it():
    """A night sky with a few lamps far brighter than anything a dim room holds (the 99.9th
    percentile of linear luma 300x the mean, beyond NIGHT_FULL) gets no exposure lift; the same
    frame with the lamps 20x the mean is a room and is lifted."""
    from dce_batch.enhance.exposure import NIGHT_FULL, NIGHT_START, night_weight

    def scene(lamp: float) -> torch.Tensor:
        low = torch.full((1, 3, 128, 128), 0.02)  # sRGB: a dim sky
        low[..., 60:64, 60:64] = lamp  # one 4 x 4 pool of 1 / 1024 of the frame
        low[..., 100:104, 20:24] = lamp
        return low
    night, room = scene(1.0), scene(0.12)
    assert float(night_weight(night)) == 1.0 and float(night_weight(room)) == 0.0
    assert NIGHT_FULL < NIGHT_START
    curves = torch.tensor([0.3])
    assert float(scene_target(night, curves)) == pytest.approx(TARGET_MIN)
    assert float(scene_target(room, curves)) > 0.4
    enhanced = lambda low: (low * 8.0).clamp(0.0, 1.0)  # the sky at 0.16, above TARGET_MIN
    params = finish_params(torch.cat((night, room)), torch.cat((enhanced(night), enhanced(room))),
                           FinishConfig(denoise="off"))
    assert float(params[0, PARAM_TONE]) == 1.0 and float(params[1, PARAM_TONE]) < 0.9


def test_the_scene_is_read_from_the_whole_frame_not_the_mosaic_of_patches():
    """finish_params reads the exposure target from ``scene`` when given: a lamp outside every
    patch of the mosaic makes it a night scene there and nowhere else. scene_copy area-averages
    by an integer factor, band by band, exactly as one average pool of the whole frame."""
    from dce_batch.enhance.finishing import SCENE_SIDE, scene_copy

    low = torch.full((1, 3, 600, 900), 0.02)
    for x in (140, 400, 660):  # lamps between the mosaic's patches (a 4 x 4 grid of 128-px squares)
        low[..., 290:306, x:x + 16] = 1.0
    small = params_copy(low)
    assert float(small.max()) < 0.5  # the mosaic misses the lamp
    scene = scene_copy((low * 255).round().to(torch.uint8)) / 255
    assert scene.shape[-2:] == (600 // 2, 900 // 2) and max(scene.shape[-2:]) <= SCENE_SIDE
    whole = torch.nn.functional.avg_pool2d((low * 255).round(), 2) / 255
    assert torch.allclose(scene, whole, atol=1e-6)
    config = FinishConfig(denoise="off")
    enhanced = (small * 8.0).clamp(0.0, 1.0)
    from_mosaic = finish_params(small, enhanced, config)
    from_frame = finish_params(small, enhanced, config, scene)
    assert float(from_mosaic[0, PARAM_TONE]) < 0.9 and float(from_frame[0, PARAM_TONE]) == 1.0
    # The copy has the same shape whether the frame comes as 8-bit (the job's Enhancer) or float.
    assert scene_copy(low).shape == scene.shape
    # The full-frame path (finish_image) reads the whole frame too: the night scene is left as the
    # curves left it, where the mosaic's target would have lifted it.
    curves = (low * 8.0).clamp(0.0, 1.0)
    assert float((finish_image(low, curves, config) - curves).abs().max()) < STEP
    lifted = finish_tiles(low, curves, finish_params(params_copy(low), params_copy(curves), config), config)
    assert float((lifted - curves).mean()) > 0.02


def test_blacks_stay_black_on_the_retina_sample():
    """The bundled retina sample's black surround (0-2 in 8 bits), which the curves alone lift into
    grey blotches with a dark-red rim. Through the job's own path
    (``enhance_image``: decoder, Enhancer, network, finishing, encoder), every pixel more than
    12 px from any input value above 2 stays within 2 / 255 of black; the network alone lifts them."""
    from pathlib import Path

    from PIL import Image
    from scipy.ndimage import maximum_filter

    from dce_batch.models import enhance_image

    path = Path(__file__).resolve().parents[1] / "dce_batch" / "samples" / "retina_dark.jpg"
    image = Image.open(path).convert("RGB")
    pixels = np.asarray(image)
    brightest = pixels.max(axis=2)
    surround = maximum_filter(brightest, size=25) <= 2  # more than 12 px from any signal
    assert surround.mean() > 0.05  # the black mask around the retina
    out = np.asarray(enhance_image(image, device="cpu"))
    assert int(out[surround].max()) <= 2
    # The band of black inputs (0-2) within 12 px of the retina is exempt from that: it is the
    # disc's soft edge (its rim ramps 0, 1, 2, 3, 6 ... in the input, with runs of 2s up to 12 px
    # out) and the JPEG ringing beside it, both real input, which the curves lift steeply. Blacks
    # are decided by a pixel's 7 x 7 neighbourhood: deciding by its own value would cut a hard
    # step into every soft edge and break up dark content that noise dithers between 0 and 6
    # steps. What holds there: a ramp down from the edge to black, no rim of its own.
    brightness = out.max(axis=2).astype(float)
    black = brightest <= 2
    within = [black & (maximum_filter(brightest, size=2 * k + 1) > 2) for k in range(1, 13)]
    rings = [within[0]] + [outer & ~inner for inner, outer in zip(within, within[1:])]
    ring_means = [float(brightness[ring].mean()) for ring in rings]
    assert all(a > b for a, b in zip(ring_means, ring_means[1:])), ring_means
    edge = ~black & (maximum_filter(black, size=3))  # the signal's outermost pixels
    assert ring_means[0] < float(brightness[edge].mean()), (ring_means, float(brightness[edge].mean()))
    network = np.asarray(enhance_image(image, device="cpu", denoise="off", exposure="off"))
    assert float(network[surround].mean()) > 5.0  # what the fix is for
    # The retina itself is lifted, not blacked out.
    inside = maximum_filter(pixels.max(axis=2), size=13) > 20
    assert float(out[inside].mean()) > float(pixels[inside].mean()) + 40


def test_a_black_neighbourhood_fades_in_and_dark_noisy_signal_is_kept():
    """Hand-computable: the factor is 1 within 3 pixels of a value of 6 steps, 0 where every value
    within 3 pixels is at most 3 steps and fewer than a quarter reach 2, then averaged over 7 x 7:
    the output is kept at the 6, 0 from 7 pixels away, in between (decreasing) on the way; dark
    content dithered by noise (values of 0-6 steps) is never blacked out."""
    low = torch.zeros((1, 3, 40, 40))
    low[..., 20, 20] = 6.0 * STEP
    enhanced = torch.full((1, 3, 40, 40), 0.1)
    out = finish_tiles(low, enhanced, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), FinishConfig(denoise="off", exposure=0.5))
    assert float(out[..., 20, 20].min()) == pytest.approx(0.1, abs=1e-6)
    assert float(out[..., :14, :].max()) == 0.0 and float(out[..., 27:, :].max()) == 0.0
    row = out[0, 0, 20, 20:28]
    assert bool((row[1:] <= row[:-1] + 1e-7).all()) and 0.0 < float(row[3]) < 0.1 and float(row[7]) == 0.0
    g = torch.Generator().manual_seed(0)
    noisy = (torch.rand((1, 3, 40, 40), generator=g) * 6.0).round() * STEP
    kept = finish_tiles(noisy, enhanced, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), FinishConfig(denoise="off", exposure=0.5))
    assert torch.allclose(kept, enhanced, rtol=0.0, atol=1e-6)


def test_a_black_backdrop_with_sparse_jpeg_residue_stays_black():
    """A black backdrop as a JPEG leaves it (DICM 12's: 0s and 1s, 13 % 2s, 1.7 % 3s, 0.14 % 4s)
    comes out black but for a faint trace of each 4, without a blob around each stray 3 or 4 (a
    rule of the neighbourhood's maximum alone keeps a 7 x 7 square around every 4); a dark scene
    under sensor noise (3 steps, sd 1.5: most values at 2 or more) and a flat dark grey of 2 steps
    are kept."""
    g = torch.Generator().manual_seed(1)
    u = torch.rand((1, 1, 96, 96), generator=g)
    residue = torch.bucketize(u, torch.tensor([0.43, 0.85, 0.98, 0.997])).float()  # 0 .. 4 steps
    assert 0.01 < float((residue >= 3).float().mean()) < 0.03 and float((residue == 4).sum()) >= 10
    enhanced = torch.full((1, 3, 96, 96), 0.2)
    params = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    config = FinishConfig(denoise="off", exposure=0.5)
    out = finish_tiles(residue.expand(1, 3, 96, 96) * STEP, enhanced, params, config)
    assert float(out.max()) < 0.2 * 0.15  # a faint trace at a 4 (the maximum alone keeps it whole)
    assert float(out.mean()) < 0.2 * 0.03
    noisy = (3.0 + 1.5 * torch.randn((1, 1, 96, 96), generator=g)).round().clamp(min=0.0)  # 84 % at 2 or more
    for dark in (noisy, torch.full_like(residue, 2.0)):  # a dark scene under sensor noise; flat at 2 steps
        kept = finish_tiles(dark.expand(1, 3, 96, 96) * STEP, enhanced, params, config)
        assert float(kept.min()) > 0.2 * 0.95


def test_the_exposure_target_is_the_mean_of_what_stays_lit():
    """A lit subject beside a black backdrop (DICM 12's astronaut): the backdrop, black in the
    input and so black in the output, is left out of the exposure's mean, so the subject comes
    out at the target instead of being pushed towards white to make up for the black half (a fit
    to the whole frame's mean puts it at 0.61 for a target of 0.4). Only the few backdrop pixels
    beside the subject, which the black rule keeps, still count."""
    low = torch.zeros((1, 3, 64, 256))
    low[..., 128:] = 0.05  # the lit half: dark, but real signal
    enhanced = torch.full((1, 3, 64, 256), 0.05)  # the curves lift the backdrop's residue a little
    enhanced[..., 128:] = 0.2
    config = FinishConfig(exposure=0.4, denoise="off")
    params = finish_params(low, enhanced, config)
    out = finish_tiles(low, enhanced, params, config)
    assert float(out[..., :, :120].max()) == 0.0  # the backdrop stays black
    assert 0.4 <= float(out[..., :, 136:].mean()) < 0.41
    whole = finish_params(low[..., 128:], enhanced[..., 128:], config)
    assert float(whole[0, 0]) == pytest.approx(float(params[0, 0]), abs=0.01)


@pytest.mark.parametrize("kind", ["black", "white", "single colour", "1x1", "1x1 black", "2x3"])
def test_images_without_usable_signal_get_a_valid_output(kind):
    """No NaN, no crash, values in [0, 1], through params and tiles with the default
    settings and with a forced target."""
    shapes = {"1x1": (1, 1), "1x1 black": (1, 1), "2x3": (2, 3)}
    h, w = shapes.get(kind, (48, 64))
    fill = {"black": 0.0, "white": 1.0, "1x1 black": 0.0}.get(kind)
    low = torch.full((1, 3, h, w), fill) if fill is not None else torch.tensor([0.3, 0.05, 0.6]).view(1, 3, 1, 1).expand(1, 3, h, w).clone()
    for enhanced in (low, (low * 3.0).clamp(0.0, 1.0), low.pow(0.5)):
        for config in (FinishConfig(), FinishConfig(exposure=0.45), FinishConfig(denoise="fast")):
            params = finish_params(params_copy(low), params_copy(enhanced), config)
            assert bool(torch.isfinite(params).all())
            out = finish_tiles(low, enhanced, params, config)
            assert out.shape == low.shape and bool(torch.isfinite(out).all())
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert bool(torch.isfinite(scene_target(low, luma(low).mean(dim=(1, 2, 3)))).all())
    if kind in ("black", "1x1 black"):
        assert float(finish_image(low, low, FinishConfig()).max()) == 0.0  # black stays black
    if kind == "white":
        assert float(finish_image(low, low, FinishConfig()).min()) == 1.0  # white stays white


@pytest.mark.parametrize("shape", [(1, 1000), (1000, 1), (2, 1300), (3, 2000), (700, 2)])
def test_the_scene_copy_of_a_long_thin_strip_keeps_its_short_side(shape):
    """Only the long side is averaged down to 640 px when the short one is below the factor, so
    the copy is never empty, and the strip is finished at its own shape."""
    g = torch.Generator().manual_seed(4)
    low = torch.rand((1, 3, *shape), generator=g) * 0.2
    factor = -(-max(shape) // 640)
    expected = tuple(side // min(factor, side) for side in shape)  # a side under the factor stays whole
    assert scene_copy(low).shape[-2:] == expected and max(expected) <= 640
    out = finish_image(low, low.pow(0.5), FinishConfig())
    assert out.shape == low.shape and bool(torch.isfinite(out).all())


def test_params_shape_and_noise_estimate_track_the_noise():
    low_quiet, enh_quiet = _noisy_dark_pair(sigma=1.0 * STEP, seed=5)
    low_loud, enh_loud = _noisy_dark_pair(sigma=4.0 * STEP, seed=5)
    params = finish_params(torch.cat((low_quiet, low_loud)), torch.cat((enh_quiet, enh_loud)), FinishConfig())
    assert params.shape == (2, NUM_PARAMS) and params.dtype == torch.float32
    quiet, loud = float(params[0, PARAM_SIGMA_LUMA]), float(params[1, PARAM_SIGMA_LUMA])
    assert 2.0 < loud / quiet < 6.0  # 4x the noise reads as about 4x


def test_the_noise_estimate_is_not_read_from_texture_that_fills_most_of_the_frame():
    # Two flat dark bands (10 % of the frame each) and a textured brighter one (80 %), all with
    # the same noise: the estimate per brightness level reads the noise; one quantile over the
    # whole frame (what --denoise fast uses) falls in the texture.
    sigma = 2.0 * STEP
    g = torch.Generator().manual_seed(3)
    rows, cols = torch.meshgrid(torch.arange(200), torch.arange(200), indexing="ij")
    # A fine checkerboard (its 5 x 5 means stay at one level), levels 8, 18 and 36 (8-bit steps)
    # in three of the estimate's brightness levels, so that no level holds only band edges
    texture = 12.0 * STEP * (1 - 2 * ((rows + cols) % 2))
    clean = torch.where(rows < 20, 8.0 * STEP, torch.where(rows < 40, 18.0 * STEP, 36.0 * STEP + texture))
    low = (clean + sigma * torch.randn(clean.shape, generator=g)).clamp(0, 1).expand(1, 3, 200, 200)
    by_level = float(finish_params(low, low * 4, FinishConfig())[0, PARAM_SIGMA_LUMA])
    whole_frame = float(finish_params(low, low * 4, FinishConfig(denoise="fast"))[0, PARAM_SIGMA_LUMA])
    flat = (torch.full_like(clean, 20.0 * STEP) + sigma * torch.randn(clean.shape, generator=g)).expand(1, 3, 200, 200)
    reference = float(finish_params(flat, flat * 4, FinishConfig())[0, PARAM_SIGMA_LUMA])  # a flat frame
    assert 0.75 * reference < by_level < 1.25 * reference
    assert whole_frame > 2.0 * reference


def test_levels_that_hold_only_texture_do_not_take_the_noise_estimate_over():
    # A flat noisy level over 60 % of the frame and four brighter levels of pure texture (10 %
    # each): most levels read texture, and the estimate stays within 1.5x the flat level's noise.
    sigma = 2.0 * STEP
    g = torch.Generator().manual_seed(4)
    rows, cols = torch.meshgrid(torch.arange(200), torch.arange(200), indexing="ij")
    checker = 1 - 2 * ((rows + cols) % 2)
    band = (rows - 120).clamp_min(0) // 20  # 0 for the first 120 rows, then 1..4
    levels = torch.tensor([8.0, 18.0, 36.0, 70.0, 140.0]) * STEP
    clean = levels[band] + (band > 0) * 0.25 * levels[band] * checker
    low = (clean + sigma * torch.randn(clean.shape, generator=g)).clamp(0, 1).expand(1, 3, 200, 200)
    flat = (torch.full_like(clean, 8.0 * STEP) + sigma * torch.randn(clean.shape, generator=g)).expand(1, 3, 200, 200)
    reference = float(finish_params(flat, flat * 4, FinishConfig())[0, PARAM_SIGMA_LUMA])
    by_level = float(finish_params(low, low * 4, FinishConfig())[0, PARAM_SIGMA_LUMA])
    assert 0.75 * reference < by_level <= 1.5 * 1.25 * reference


def test_params_copy_is_a_mosaic_of_full_resolution_patches():
    small = torch.rand(1, 3, 300, 400)
    assert params_copy(small) is small
    big = torch.rand(2, 3, 1500, 2100)
    copy = params_copy(big)
    assert copy.shape == (2, 3, 512, 512)
    assert torch.equal(copy[..., :128, :128], big[..., :128, :128])  # top-left patch, untouched pixels
    assert torch.equal(copy[..., -128:, -128:], big[..., -128:, -128:])  # bottom-right patch
    # Noise survives (a downscaled copy would average it away).
    noise = 0.02 * torch.randn(1, 1, 1500, 2100, generator=torch.Generator().manual_seed(0))
    assert float(params_copy(noise).std()) == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("kwargs", [
    {"denoise": "maybe"}, {"denoise_strength": -1.0}, {"exposure": "bright"}, {"exposure": 1.5},
    {"exposure": 0.0}, {"max_exposure_boost": 0.5}, {"radius": 0}, {"luma_noise_factor": -1.0},
    {"chroma_refine_radius": -1}, {"chroma_refine_radius": 33}, {"noise_gain": "mean"},
    {"highlight_stretch": -0.1}, {"highlight_stretch": 1.5}, {"colour": "warm"},
    {"colour_exponents": (1.0, 1.0)}, {"colour_exponents": (1.0, 1.0, 3.0)},
])
def test_invalid_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        FinishConfig(**kwargs)


def test_the_colour_exponents_take_out_the_declared_cast_at_mid_grey_and_keep_black_and_white():
    """A plain gain turned white highlights yellow: the power keeps 0 and 1 and gives the gain
    that takes the cast out in linear light at mid-grey."""
    from dce_batch.enhance.settings import colour_exponents_for

    assert colour_exponents_for(None) == (1.0, 1.0, 1.0)
    bias = (-0.017, 0.172)  # log R/G, log B/G: the output is bluer and a little less red
    exponents = colour_exponents_for(bias)
    assert exponents[0] == 1.0 and 1.0 < exponents[1] < exponents[2]  # R the largest gain: unchanged
    linear_gains = np.exp(-np.array([bias[0], 0.0, bias[1]]))
    linear_gains /= linear_gains.max()
    mid = srgb_to_linear(0.5 ** torch.tensor(exponents, dtype=torch.float64)).numpy()  # where 0.5 goes
    # sRGB's curve is a power of 1/2.4 only above its toe: at mid-grey the gain comes within 2.5 %.
    np.testing.assert_allclose(mid / float(srgb_to_linear(torch.tensor(0.5))), linear_gains, rtol=0.025)
    values = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    config = FinishConfig(denoise="off", exposure="off", colour_exponents=exponents)
    low = torch.full_like(values, 0.5)  # not black: the black rule stays out of this
    params = torch.zeros(1, NUM_PARAMS)
    params[:, PARAM_TONE] = 1.0
    finished = finish_tiles(low, values, params, config)
    assert finished[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0] and finished[0, :, 0, 1].tolist() == [1.0, 1.0, 1.0]


def test_the_job_takes_the_shipped_network_s_cast_out_of_a_grey_image_and_colour_off_keeps_it():
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.registry import declared_colour_bias
    from dce_batch.enhance.weights import load_weights

    weights = load_weights(None)
    assert declared_colour_bias(weights.meta.name, weights.meta.sha256) == (-0.017, 0.172)
    assert declared_colour_bias(weights.meta.name, "0" * 64) is None  # other tensors under the same name
    fast = load_weights("zerodcepp_sice_v2")  # its cast is not taken out (it lost on the simulated levels)
    assert declared_colour_bias(fast.meta.name, fast.meta.sha256) is None
    assert Enhancer(fast, InferenceConfig(finish=FinishConfig())).finishing.colour_exponents == (1.0, 1.0, 1.0)
    grey = np.full((64, 64, 3), 128, np.uint8)
    spread = {}
    for colour in ("auto", "off"):
        enhancer = Enhancer(weights, InferenceConfig(precision="fp32", finish=FinishConfig(colour=colour)))
        mean = enhancer.enhance(grey).pixels.reshape(-1, 3).mean(axis=0)
        spread[colour] = float(mean[2] - mean[0])  # blue over red
        white = enhancer.enhance(np.full((16, 16, 3), 255, np.uint8)).pixels
        assert int(white.min()) == 255
    assert spread["off"] > 18 and spread["auto"] < spread["off"] - 4


def test_disabled_finishing_reports_itself():
    assert not FinishConfig(denoise="off", exposure="off").enabled
    assert finish_halo(FinishConfig(denoise="off", exposure="off")) == 0
    assert finish_halo(FinishConfig(denoise="off")) == 6  # the black factor: a 7 x 7 max, then a 7 x 7 mean
    assert FinishConfig().enabled and FinishConfig().exposure_target == DEFAULT_EXPOSURE_TARGET


def test_shape_errors_are_clear():
    low, enhanced = _noisy_dark_pair(32, 32)
    with pytest.raises(ValueError, match="params"):
        finish_tiles(low, enhanced, torch.zeros(2, NUM_PARAMS), FinishConfig())
    with pytest.raises(ValueError, match="same|one shape"):
        finish_params(low, enhanced[..., :16], FinishConfig())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    low, enhanced = _noisy_dark_pair(200, 300, seed=7)
    config = FinishConfig()
    cpu = finish_image(low, enhanced, config)
    gpu = finish_image(low.cuda(), enhanced.cuda(), config).cpu()
    assert float((cpu - gpu).abs().max()) < 0.5 * STEP
    assert np.isfinite(gpu.numpy()).all()


def test_parse_exposure_for_the_command_line():
    assert parse_exposure("auto") == "auto" and parse_exposure("OFF") == "off"
    assert parse_exposure("0.5") == 0.5
    for bad in ("bright", "1.5", "0"):
        with pytest.raises(ConfigError, match="exposure"):
            parse_exposure(bad)
