"""The sliding-DCT Wiener filter (dce_batch.filters.dct_wiener): what it keeps, what it removes,
and exact tiling (CPU, milliseconds)."""

from __future__ import annotations

import pytest
import torch

from dce_batch.filters import DCT_BLOCK, DCT_STRIDE, dct_wiener


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
    assert float((core - expected).abs().max()) < 1e-4
    if top % DCT_STRIDE or left % DCT_STRIDE:  # the block grid is fixed to the image, not to the tile
        shifted = dct_wiener(noisy[tile], pilot[tile])[..., core_top : 40 - context, core_left : 50 - context]
        assert float((shifted - expected).abs().max()) > 1e-2


def test_tiles_of_several_origins_in_one_batch():
    noisy, pilot = _unit_noise(seed=3), _unit_noise(seed=4)
    full = dct_wiener(noisy, pilot)
    origins = [(0, 0), (1, 0), (0, 1), (3, 5)]
    tiles = torch.cat([noisy[..., t : t + 32, l : l + 32] for t, l in origins])
    pilots = torch.cat([pilot[..., t : t + 32, l : l + 32] for t, l in origins])
    out = dct_wiener(tiles, pilots, origins=origins)
    for row, (t, l) in enumerate(origins):
        inner = out[row, :, 7:25, 7:25]
        assert float((inner - full[0, :, t + 7 : t + 25, l + 7 : l + 25]).abs().max()) < 1e-4


def test_images_smaller_than_a_block_and_bad_shapes():
    tiny = _unit_noise(3, 5)
    assert dct_wiener(tiny, tiny).shape == tiny.shape
    with pytest.raises(ValueError, match="one shape"):
        dct_wiener(tiny, _unit_noise(3, 6))
    with pytest.raises(ValueError, match="origins"):
        dct_wiener(tiny, tiny, origins=[(0, 0), (1, 1)])
