"""The sliding-DCT Wiener filter (dce_batch.enhance.filters.dct_wiener): what it keeps, what it removes,
and exact tiling (CPU, milliseconds)."""

from __future__ import annotations

import math

import pytest
import torch

from dce_batch.enhance import filters
from dce_batch.enhance.filters import DCT_BLOCK, DCT_STRIDE, GROUP_SEARCH, GROUP_SIZE, dct_wiener, dct_wiener_reach

U32 = 2.0 ** -24  # float32's unit roundoff


def rounding_bound(noisy: torch.Tensor, matched: bool = False) -> float:
    """How far apart two float32 runs of the filter that sum in other orders (a tile and the full
    frame, other kernels) can be: 2 gamma_N M.

    N, the roundings an output pixel goes through: the forward DCT (64 products), the gain (a
    square, a sum, a division), the block's weight (64 squares summed, a reciprocal), the shrinking
    (2 products), the inverse DCT (64), the sums of the at most 9 blocks over the pixel and of their
    weights, the division; with matched groups also the DCT across the group and back (8 each) and
    the group's weight (8 x 64 squares). M: an orthonormal DCT's coefficient is at most its block's
    2-norm, so at most 8 times the largest input; the gains are in [0, 1] and the output is a
    weighted mean of blocks, so nothing later is larger. gamma_N = N u / (1 - N u) bounds N
    roundings in any order (Higham, Accuracy and Stability of Numerical Algorithms, section 3.1);
    the orthonormal transforms do not amplify errors in the 2-norm, which
    test_float32_is_within_the_bound_of_float64 checks on a float64 run.
    """
    n = 64 + 3 + 65 + 2 + 64 + 2 * 9 + 1 + (2 * GROUP_SIZE + GROUP_SIZE * 64 if matched else 0)
    return n * U32 / (1 - n * U32) * DCT_BLOCK * float(noisy.abs().max()) * 2


def _unit_noise(height: int = 64, width: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.randn((1, 1, height, width), generator=torch.Generator().manual_seed(seed))


def test_a_flat_pilot_removes_unit_noise_and_keeps_the_mean():
    noise = _unit_noise()
    out = dct_wiener(5.0 + noise, torch.full_like(noise, 5.0))
    # Only the blocks' means survive (gain 25 / 26 on the DC, 0 elsewhere): the blocks that
    # cover a pixel average 8 x 8 windows of noise.
    assert float(out.std()) < 0.2 * float(noise.std())
    assert abs(float(out.mean()) - 5.0 - float(noise.mean())) < 0.05


def test_a_pilot_far_above_the_noise_keeps_the_image():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(80.0), indexing="ij")
    texture = (1000.0 * torch.sin(xx * 0.9) * torch.cos(yy * 0.7)).view(1, 1, 64, 80)
    noisy = texture + _unit_noise()
    out = dct_wiener(noisy, texture)
    # Every coefficient's gain is p^2 / (p^2 + 1): near 1 where the pilot is strong, so the
    # noisy image comes back but for the coefficients the texture lacks.
    assert float((out - noisy).abs().max()) < 3.0
    assert float((out - texture).std()) < float((noisy - texture).std())


@pytest.mark.parametrize("origin", [(0, 0), (5, 8), (10, 3)])
def test_a_tile_that_names_its_origin_gets_the_full_frame_values(origin):
    noisy, pilot = _unit_noise(seed=1) * 2.0, _unit_noise(seed=2)
    full = dct_wiener(noisy, pilot)
    top, left = origin
    context = DCT_BLOCK - 1
    tile = (slice(None), slice(None), slice(top, top + 40), slice(left, left + 50))
    out = dct_wiener(noisy[tile], pilot[tile], origins=[origin])
    # The core: pixels with `context` pixels of real context (or the image border) on each side.
    core_top = 0 if top == 0 else context
    core_left = 0 if left == 0 else context
    core = out[..., core_top : 40 - context, core_left : 50 - context]
    expected = full[..., top + core_top : top + 40 - context, left + core_left : left + 50 - context]
    assert float((core - expected).abs().max()) <= rounding_bound(noisy)
    if top % DCT_STRIDE or left % DCT_STRIDE:  # the block grid is fixed to the image, not to the tile
        shifted = dct_wiener(noisy[tile], pilot[tile])[..., core_top : 40 - context, core_left : 50 - context]
        assert float((shifted - expected).abs().max()) > 10 * rounding_bound(noisy)


def test_tiles_of_several_origins_in_one_batch():
    noisy, pilot = _unit_noise(seed=3), _unit_noise(seed=4)
    full = dct_wiener(noisy, pilot)
    origins = [(0, 0), (1, 0), (0, 1), (3, 5)]
    tiles = torch.cat([noisy[..., t : t + 32, l : l + 32] for t, l in origins])
    pilots = torch.cat([pilot[..., t : t + 32, l : l + 32] for t, l in origins])
    out = dct_wiener(tiles, pilots, origins=origins)
    for row, (t, l) in enumerate(origins):
        inner = out[row, :, 7:25, 7:25]
        assert float((inner - full[0, :, t + 7 : t + 25, l + 7 : l + 25]).abs().max()) <= rounding_bound(noisy)


def test_float32_is_within_the_bound_of_float64(monkeypatch):
    """The bound's premise: a float32 run is within half of ``rounding_bound`` of exact arithmetic."""
    noisy, pilot = _unit_noise(seed=1) * 2.0, _unit_noise(seed=2)
    single = dct_wiener(noisy, pilot)
    n = torch.arange(DCT_BLOCK, dtype=torch.float64)
    one_d = torch.stack([torch.cos(math.pi * (n + 0.5) * k / DCT_BLOCK) * math.sqrt((1.0 if k == 0 else 2.0) / DCT_BLOCK)
                         for k in range(DCT_BLOCK)])
    monkeypatch.setattr(filters, "_dct_basis", lambda block, device: torch.kron(one_d, one_d))
    double = dct_wiener(noisy.double(), pilot.double())
    assert double.dtype == torch.float64
    assert float((single.double() - double).abs().max()) <= rounding_bound(noisy) / 2


def test_images_smaller_than_a_block_and_bad_shapes():
    tiny = _unit_noise(3, 5)
    assert dct_wiener(tiny, tiny).shape == tiny.shape
    with pytest.raises(ValueError, match="one shape"):
        dct_wiener(tiny, _unit_noise(3, 6))
    with pytest.raises(ValueError, match="origins"):
        dct_wiener(tiny, tiny, origins=[(0, 0), (1, 1)])


# Block matching (``strong``): blocks marked as strong noise are filtered in groups of similar blocks.


def _repeated_texture(height: int = 66, width: int = 84) -> torch.Tensor:
    """A texture that repeats every grid step (3 pixels) both ways: every block of the grid has
    identical neighbours to match."""
    yy, xx = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    pattern = torch.tensor([[3.0, -1.0, 0.5], [-2.0, 1.5, 0.0], [0.5, 0.0, -2.5]])
    return pattern[yy.long() % 3, xx.long() % 3].view(1, 1, height, width) + 0.05 * xx.view(1, 1, height, width)


def test_no_strong_block_is_the_plain_filter():
    noisy, pilot = _unit_noise(seed=5), _unit_noise(seed=6) * 3.0
    plain = dct_wiener(noisy, pilot)
    assert torch.equal(dct_wiener(noisy, pilot, strong=torch.zeros_like(noisy, dtype=torch.bool)), plain)
    assert float((dct_wiener(noisy, pilot, strong=torch.ones_like(noisy, dtype=torch.bool)) - plain).abs().max()) > 0.1


def test_matched_groups_remove_more_noise_from_a_repeated_texture():
    texture = _repeated_texture()
    noisy = texture + _unit_noise(*texture.shape[-2:], seed=7)
    plain = dct_wiener(noisy, texture)
    matched = dct_wiener(noisy, texture, strong=torch.ones_like(noisy, dtype=torch.bool))
    plain_error = float((plain - texture).square().mean())
    matched_error = float((matched - texture).square().mean())
    # Eight identical blocks per group: their noise averages where one block's could not (measured 0.28x).
    assert matched_error < 0.8 * plain_error
    # Only where it is asked for: the right half alone is matched.
    half = torch.zeros_like(noisy, dtype=torch.bool)
    half[..., 42:] = True
    mixed = dct_wiener(noisy, texture, strong=half)
    reach = DCT_BLOCK - 1 + 2 * GROUP_SEARCH * DCT_STRIDE
    assert torch.allclose(mixed[..., : 42 - reach], plain[..., : 42 - reach], rtol=0, atol=rounding_bound(noisy))
    assert float((mixed[..., 42 + reach :] - texture[..., 42 + reach :]).square().mean()) < 0.8 * plain_error


def _same_but_near_ties(tile: torch.Tensor, full: torch.Tensor, noisy: torch.Tensor) -> None:
    """A tile and the full frame sum in other orders, so distances can round differently and, at a
    near-tie, pick another candidate into a group (rounding makes that rare, not impossible). Float
    rounding alone stays within ``rounding_bound``; a swapped candidate changes one of eight group
    members, so it may move a few pixels by a fraction of the data's spread, never many pixels and
    never by more than that spread."""
    difference = (tile - full).abs()
    swapped = difference > rounding_bound(noisy, matched=True)
    assert float(swapped.float().mean()) < 0.01, "more than near-ties differ"
    assert float(difference.max()) < float(full.std()), "a swap moved a pixel by more than the data's spread"


@pytest.mark.parametrize("origin", [(0, 0), (4, 7), (12, 3)])
def test_a_tile_with_matched_groups_gets_the_full_frame_values(origin):
    noisy, pilot = _unit_noise(72, 90, seed=8) * 2.0, _unit_noise(72, 90, seed=9) * 3.0
    strong = torch.ones_like(noisy, dtype=torch.bool)
    strong[..., :20, :30] = False
    full = dct_wiener(noisy, pilot, strong=strong)
    context = dct_wiener_reach(matched=True)
    assert context == DCT_BLOCK - 1 + 2 * GROUP_SEARCH * DCT_STRIDE == 19
    top, left = origin
    tile = (slice(None), slice(None), slice(top, top + 60), slice(left, left + 70))
    out = dct_wiener(noisy[tile], pilot[tile], origins=[origin], strong=strong[tile])
    core_top = 0 if top == 0 else context
    core_left = 0 if left == 0 else context
    core = out[..., core_top : 60 - context, core_left : 70 - context]
    expected = full[..., top + core_top : top + 60 - context, left + core_left : left + 70 - context]
    _same_but_near_ties(core, expected, noisy)
    if origin != (0, 0):  # the plain filter's context is not enough for the groups
        short = dct_wiener_reach(matched=False)
        core = out[..., core_top and short : 60 - short, core_left and short : 70 - short]
        expected = full[..., top + (core_top and short) : top + 60 - short, left + (core_left and short) : left + 70 - short]
        assert float((core - expected).abs().max()) > 10 * rounding_bound(noisy, matched=True)


def test_a_strong_noise_mask_of_another_shape_is_refused():
    noisy = _unit_noise(20, 24)
    with pytest.raises(ValueError, match="strong-noise mask"):
        dct_wiener(noisy, noisy, strong=torch.ones((1, 1, 20, 23), dtype=torch.bool))


@pytest.mark.parametrize("height, width, origin", [(1, 1, (0, 0)), (1, 1, (1, 1)), (2, 3, (1, 2)), (3, 50, (0, 0)), (5, 1, (2, 0))])
def test_matched_groups_on_images_and_tiles_smaller_than_a_block(height, width, origin):
    noisy, pilot = _unit_noise(height, width, seed=10), _unit_noise(height, width, seed=11)
    out = dct_wiener(noisy, pilot, origins=[origin], strong=torch.ones_like(noisy, dtype=torch.bool))
    assert out.shape == noisy.shape and bool(torch.isfinite(out).all())
