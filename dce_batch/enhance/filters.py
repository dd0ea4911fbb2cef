"""Box means over clipped windows, luma, the guided filter's linear models and a sliding-DCT
Wiener filter: the local operations shared by the finishing (:mod:`dce_batch.enhance.finishing`) and
DCE-Net's guided upsampling (:class:`dce_batch.enhance.network.DCENet`).

Every box mean averages the valid pixels of its window (prefix sums along each axis), so a tile
that carries ``radius`` pixels of real context on each side gives exactly the full frame's
values on its core, and at the image border both see the same clipped windows.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DCT_BLOCK", "DCT_STRIDE", "GROUP_SEARCH", "GROUP_SIZE", "LUMA_WEIGHTS", "box_mean", "dct_wiener",
           "dct_wiener_reach", "guided_coefficients", "luma", "small_box_mean"]

LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)  # BT.709


def luma(x: torch.Tensor) -> torch.Tensor:
    """BT.709 luma of N x 3 x H x W RGB, N x 1 x H x W."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b


def _window_sums(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sums over ``[i - radius, i + radius]`` along ``dim`` (-1 or -2), clipped to the valid range.

    One prefix sum ``C``, then window i is ``C[min(i + r, n - 1)] - C[i - r - 1]`` (the second
    term only where ``i > r``): the cost does not depend on the radius, and the two steps run
    in place on one buffer (this is most of the finishing's time).
    """
    n = x.shape[dim]
    running = x.cumsum(dim)
    out = torch.empty_like(running)
    inside = n - radius  # windows whose right end lies inside the range
    if inside > 0:
        out.narrow(dim, 0, inside).copy_(running.narrow(dim, radius, inside))
        tail = out.narrow(dim, inside, n - inside)
        tail.copy_(running.narrow(dim, n - 1, 1).expand_as(tail))
        if inside > 1:
            out.narrow(dim, radius + 1, inside - 1).sub_(running.narrow(dim, 0, inside - 1))
    else:
        out.copy_(running.narrow(dim, n - 1, 1).expand_as(out))
    return out


def _window_counts(n: int, radius: int, device: torch.device) -> torch.Tensor:
    index = torch.arange(n, device=device)
    return ((index + radius + 1).clamp(max=n) - (index - radius).clamp(min=0)).to(torch.float32)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)^2 window around each pixel of N x C x H x W, clipped at the borders.

    Clipped windows average only the pixels that exist, so a tile whose edge is the image's
    edge sees the same windows as the full frame, and one with ``radius`` pixels of real
    context gives the full frame's values.
    """
    if radius == 0:
        return x
    height, width = x.shape[-2:]
    sums = _window_sums(_window_sums(x, radius, -2), radius, -1)
    counts = _window_counts(height, radius, x.device).view(-1, 1) * _window_counts(width, radius, x.device)
    return sums.mul_(counts.reciprocal_())


def small_box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`box_mean` summed directly ((2r+1) shifted adds along each axis, zeros outside the
    image, divided by the valid count) instead of by prefix sums: for small radii only, but each
    window's mean is the same arithmetic wherever the window is cut from (a band of rows gives
    the whole image's values bit for bit) and loses nothing to the cancellation of large running
    sums."""
    if radius == 0:
        return x
    height, width = x.shape[-2:]
    padded = F.pad(x, (radius, radius, radius, radius))
    columns = padded[..., 0:height, :].clone()
    for dy in range(1, 2 * radius + 1):
        columns.add_(padded[..., dy : dy + height, :])
    sums = columns[..., 0:width].clone()
    for dx in range(1, 2 * radius + 1):
        sums.add_(columns[..., dx : dx + width])
    counts = _window_counts(height, radius, x.device).view(-1, 1) * _window_counts(width, radius, x.device)
    return sums.mul_(counts.reciprocal_())


def guided_coefficients(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float,
                        group: int = 3) -> torch.Tensor:
    """The guided filter's linear models ``src ~ a * guide + b`` (He et al. 2013), averaged over
    the windows that contain each pixel: N x 2C x h x w, the C ``a`` maps then the C ``b``.

    ``guide`` is N x 1 x h x w, ``src`` N x C x h x w; ``eps`` is the guide variance below which a
    window takes its mean (``a`` near 0). Evaluating ``a * G + b`` with the coefficients
    upsampled and ``G`` a full-resolution guide is the fast guided filter's joint upsampling
    (He and Sun 2015): ``src`` follows the guide's edges instead of bleeding across them.
    ``src`` goes through ``group`` channels at a time to bound the temporaries. The window means
    are :func:`small_box_mean`: the slopes divide by ``variance + eps``, which would amplify the
    rounding of prefix sums until two bandings of one image differ at the output.
    """
    mean_g = small_box_mean(guide, radius)
    var_g = (small_box_mean(guide * guide, radius) - mean_g * mean_g).clamp_min_(0.0)
    a_parts, b_parts = [], []
    for part in src.split(group, dim=1):
        stats = small_box_mean(torch.cat((part, part * guide), dim=1), radius)
        mean_s, mean_sg = stats.split(part.shape[1], dim=1)
        a = (mean_sg - mean_s * mean_g) / (var_g + eps)
        coeffs = small_box_mean(torch.cat((a, mean_s - a * mean_g), dim=1), radius)
        a_parts.append(coeffs[:, : part.shape[1]])
        b_parts.append(coeffs[:, part.shape[1] :])
    return torch.cat(a_parts + b_parts, dim=1)


# Sliding-DCT Wiener filter: 8 x 8 blocks, one every 3 pixels along each axis (BM3D's step; 4
# to 9 blocks cover a pixel). On the simulated pairs a denser stride costs several times the time
# for almost no gain and a sparser one loses quality (benchmarks/quality/README.md, "A DCT stage
# for the luma").
DCT_BLOCK = 8
DCT_STRIDE = 3


@functools.lru_cache(maxsize=8)
def _dct_basis(block: int, device: torch.device) -> torch.Tensor:
    """The orthonormal 2-D DCT-II basis as a (block^2) x (block^2) matrix: row u * block + v is
    the basis image (u, v), flattened like a block's pixels."""
    n = torch.arange(block, dtype=torch.float64)
    one_d = torch.stack([torch.cos(math.pi * (n + 0.5) * k / block) * math.sqrt((1.0 if k == 0 else 2.0) / block)
                         for k in range(block)])
    return torch.kron(one_d, one_d).to(device, torch.float32)


def _pad_to_block_grid(x: torch.Tensor, origin: tuple[int, int], block: int, stride: int) -> tuple[torch.Tensor, int, int]:
    """``x`` padded so that blocks start every ``stride`` pixels on a grid fixed to the *image*
    (``origin`` is ``x``'s top-left corner in the image): every 8 x 8 block that touches a pixel
    of ``x`` fits. Reflecting padding (edge replication for sides under ``block`` pixels). Returns
    the padded tensor and where ``x`` starts in it."""
    reach = block - 1
    top = reach - (-origin[0]) % stride
    left = reach - (-origin[1]) % stride
    mode = "reflect" if min(x.shape[-2:]) > reach else "replicate"
    padded = F.pad(x, (reach, reach, reach, reach), mode=mode)
    return padded[..., reach - top :, reach - left :], top, left


def _dct_wiener_aligned(noisy: torch.Tensor, pilot: torch.Tensor, origin: tuple[int, int], block: int,
                        stride: int, strong: torch.Tensor | None) -> torch.Tensor:
    height, width = noisy.shape[-2:]
    count = noisy.shape[0]
    basis = _dct_basis(block, noisy.device)
    padded, top, left = _pad_to_block_grid(torch.cat((noisy, pilot)), origin, block, stride)
    size = padded.shape[-2:]
    coefficients = F.conv2d(padded, basis.view(block * block, 1, block, block), stride=stride)
    grid = coefficients.shape[-2:]
    grouped = None
    if strong is not None:
        # Blocks mostly inside the strong-noise mask go through matched groups (_add_matched_groups).
        strong_blocks = F.avg_pool2d(_pad_to_block_grid(strong.float(), origin, block, stride)[0], block, stride)
        grouped = strong_blocks[:, 0] >= 0.5
        if not bool(grouped.any()):
            grouped = None
    if grouped is None:
        noisy_c, pilot_power = coefficients[:count], coefficients[count:].square_()
        gain = pilot_power.div_(pilot_power + 1.0)  # Wiener gain per coefficient, unit noise variance
        # Each block's estimate is weighted by the inverse of its residual noise (as in BM3D).
        weight = gain.square().sum(1, keepdim=True).clamp_min_(1e-3).reciprocal_()
        shrunk = noisy_c.mul_(gain).mul_(weight).flatten(2)
        blocks = torch.matmul(basis.t(), shrunk)
    else:
        # One row of coefficients per block (noisy images' blocks first): groups gather rows.
        rows = coefficients.permute(0, 2, 3, 1).reshape(-1, block * block)
        noisy_rows, pilot_rows = rows.split(rows.shape[0] // 2)
        pilot_power = pilot_rows.square()
        gain = pilot_power.div_(pilot_power + 1.0)
        weight = gain.square().sum(1).clamp_min_(1e-3).reciprocal_().masked_fill_(grouped.flatten(), 0.0)
        shrunk = noisy_rows * gain.mul_(weight[:, None])
        _add_matched_groups(rows, (count, grid[0], grid[1]), grouped, shrunk, weight)
        blocks = torch.matmul(shrunk.view(count, -1, block * block), basis).transpose(1, 2)
        weight = weight.view(count, 1, grid[0], grid[1])
    total = F.fold(blocks, size, block, stride=stride)
    weights = F.conv_transpose2d(weight, basis.new_ones(1, 1, block, block), stride=stride)
    weights = F.pad(weights, (0, size[1] - weights.shape[-1], 0, size[0] - weights.shape[-2]))
    return total[..., top : top + height, left : left + width] / weights[..., top : top + height, left : left + width]


# Matched groups: a strong-noise block is filtered together with the GROUP_SIZE - 1 blocks of the
# grid most like it (on its pilot's lowest 4 x 4 frequencies) within GROUP_SEARCH grid steps.
GROUP_SIZE = 8
GROUP_SEARCH = 2
_MATCH_FREQUENCIES = 4
# Distances are compared in these units (a tenth of one coefficient's noise variance) and ties go to
# the nearest shift, so float rounding (a tile against the full frame) rarely reorders candidates
# (the tiling test's near-tie: benchmarks/quality/README.md, "Block matching where the noise is
# strong").
_MATCH_QUANTUM = 0.1
# Blocks per chunk of groups: on the CPU few enough to stay in cache and enough that the calls per
# chunk do not dominate (benchmarks/quality/README.md, "Block matching where the noise is
# strong"), on a GPU enough to keep it busy.
_MEMBERS_PER_CHUNK = {"cpu": 2048, "cuda": 262_144}


@functools.lru_cache(maxsize=8)
def _group_transform(size: int, device: torch.device) -> torch.Tensor:
    """The orthonormal 1-D DCT-II of a group of ``size`` blocks, as a size x size matrix."""
    n = torch.arange(size, dtype=torch.float64)
    return torch.stack([torch.cos(math.pi * (n + 0.5) * k / size) * math.sqrt((1.0 if k == 0 else 2.0) / size)
                        for k in range(size)]).to(device, torch.float32)


def _add_matched_groups(rows: torch.Tensor, grid: tuple[int, int, int], grouped: torch.Tensor,
                        estimates_sum: torch.Tensor, weight_sum: torch.Tensor) -> None:
    """The collaborative Wiener filter of BM3D's second step (Dabov et al. 2007) for the grid
    blocks where ``grouped`` (N x gh x gw) is set: each such block, with the blocks of the grid
    nearest to it in the pilot, goes through a 1-D DCT across the group; every coefficient is
    multiplied by ``p^2 / (p^2 + 1)`` of the pilot's group spectrum, and the group is transformed
    back. ``rows`` holds the DCT coefficients of every block of the grid, one row each: the noisy
    images' N x gh x gw blocks, then the pilots'. Each member's estimate, weighted by its group's
    inverse residual noise, is added to its row of ``estimates_sum`` ((N * gh * gw) x 64) and the
    weight to ``weight_sum`` (N * gh * gw).
    """
    count, rows_g, cols_g = grid
    device = rows.device
    cells = rows_g * cols_g
    pilots = count * cells  # where the pilots' rows start
    refs = grouped.flatten().nonzero().squeeze(1)  # flat indices of the reference blocks
    image, cell = refs // cells, refs % cells
    row, col = cell // cols_g, cell % cols_g
    span = torch.arange(-GROUP_SEARCH, GROUP_SEARCH + 1, device=device)
    dy, dx = span.repeat_interleave(span.numel()), span.repeat(span.numel())
    # The reference itself first, then by distance: ties (identical blocks) go to the nearer shift.
    order = torch.argsort(dy.abs() + dx.abs(), stable=True)
    dy, dx = dy[order], dx[order]
    shifts = dy.numel()
    cand_row, cand_col = row[:, None] + dy, col[:, None] + dx
    inside = (cand_row >= 0) & (cand_row < rows_g) & (cand_col >= 0) & (cand_col < cols_g)
    # Distances on the pilot's lowest frequencies (its noise is lowest there).
    block = math.isqrt(rows.shape[1])
    frequencies = torch.tensor([u * block + v for u in range(_MATCH_FREQUENCIES) for v in range(_MATCH_FREQUENCIES)],
                               device=device)
    features = rows[pilots:].index_select(1, frequencies)  # (N * gh * gw) x 16
    if refs.numel() * 4 < pilots:
        # Few references: gather each one's candidates (index_select: much faster than advanced
        # indexing for gathering rows on the CPU; benchmarks/quality/README.md, "Block matching").
        candidates = image[:, None] * cells + cand_row.clamp(0, rows_g - 1) * cols_g + cand_col.clamp(0, cols_g - 1)
        neighbours = features.index_select(0, candidates.flatten()).view(*candidates.shape, -1)
        distance = (neighbours - features.index_select(0, refs)[:, None]).square_().sum(-1)
    else:
        # Most of the grid: one shifted difference per shift over the whole grid is cheaper.
        on_grid = features.view(count, rows_g, cols_g, -1).permute(0, 3, 1, 2)
        reach = GROUP_SEARCH
        padded = F.pad(on_grid, (reach, reach, reach, reach))
        distance = torch.empty((count, shifts, rows_g, cols_g), device=device)
        for index in range(shifts):
            y0, x0 = reach + int(dy[index]), reach + int(dx[index])
            torch.sum((padded[..., y0 : y0 + rows_g, x0 : x0 + cols_g] - on_grid).square_(), dim=1, out=distance[:, index])
        distance = distance.view(count, shifts, cells).permute(0, 2, 1).reshape(-1, shifts).index_select(0, refs)
    key = torch.round(distance.clamp_max_(1e12) / _MATCH_QUANTUM).long() * shifts + torch.arange(shifts, device=device)
    key = key.masked_fill_(~inside, torch.iinfo(torch.int64).max)
    # Groups are as large as every reference's candidates allow: GROUP_SIZE but on grids under 3 x 3
    # (images of a pixel or two), where a corner has only 4.
    size = min(GROUP_SIZE, int(inside.sum(1).min()))
    chosen = key.topk(size, dim=1, largest=False, sorted=True).values % shifts
    members = image[:, None] * cells + (row[:, None] + dy[chosen]) * cols_g + col[:, None] + dx[chosen]
    transform = _group_transform(size, device)
    channels = rows.shape[1]
    # In chunks of references: the groups' copies stay small whatever the image size.
    step = max(1, _MEMBERS_PER_CHUNK.get(device.type, 16_384) // size)
    for start in range(0, members.shape[0], step):
        chunk = members[start : start + step].t().flatten()  # size x refs, row 0 the references
        gathered = rows.index_select(0, torch.cat((chunk, chunk + pilots))).view(2, size, -1)
        spectrum = torch.matmul(transform, gathered)  # across each group, for noisy and pilot
        noisy_s, pilot_power = spectrum[0], spectrum[1].square_()
        gain = pilot_power.div_(pilot_power + 1.0)
        weight = gain.view(size, -1, channels).square().sum((0, 2)).clamp_min_(1e-3).reciprocal_()
        estimates = torch.matmul(transform.t(), noisy_s.mul_(gain)).view(size, -1, channels)
        estimates_sum.index_add_(0, chunk, estimates.mul_(weight.view(1, -1, 1)).view(-1, channels))
        weight_sum.index_add_(0, chunk, weight.repeat(size))


def dct_wiener(noisy: torch.Tensor, pilot: torch.Tensor, origins: Sequence[tuple[int, int]] | None = None,
               block: int = DCT_BLOCK, stride: int = DCT_STRIDE, strong: torch.Tensor | None = None) -> torch.Tensor:
    """Empirical Wiener filter in sliding DCT blocks (the second step of BM3D, Dabov et al. 2007,
    on the sliding DCT of Yu and Sapiro 2011).

    ``noisy`` is N x 1 x H x W with noise of unit variance (divide by the local noise level
    first), ``pilot`` a first estimate of the clean image on the same scale. Each 8 x 8 block's
    DCT coefficients are multiplied by ``p^2 / (p^2 + 1)``, ``p`` the pilot's coefficient, and the
    overlapping blocks are averaged back, weighted by their residual noise.

    ``strong`` (N x 1 x H x W, bool) marks where the noise is strong: blocks mostly inside it are
    filtered with block matching, in a group with the :data:`GROUP_SIZE` - 1 grid blocks whose
    pilots are nearest within :data:`GROUP_SEARCH` grid steps (see :func:`_add_matched_groups`).

    Exact under tiling: blocks lie on a grid fixed to the image, so a tile needs ``origins``,
    its top-left corner in the image (one per tile; None = every tile is a whole image), and
    :func:`dct_wiener_reach` pixels of real context; the image border is reflected, as in the
    full frame. With ``strong``, two candidate blocks whose distances differ by less than float
    rounding may be ranked apart in a tile and in the full frame.
    """
    if noisy.shape != pilot.shape or noisy.ndim != 4 or noisy.shape[1] != 1:
        raise ValueError(f"expected N x 1 x H x W noisy and pilot of one shape, got {tuple(noisy.shape)} and {tuple(pilot.shape)}")
    if strong is not None and strong.shape != noisy.shape:
        raise ValueError(f"expected a strong-noise mask of shape {tuple(noisy.shape)}, got {tuple(strong.shape)}")
    phases = [(0, 0)] * noisy.shape[0] if origins is None else [(top % stride, left % stride) for top, left in origins]
    if len(phases) != noisy.shape[0]:
        raise ValueError(f"expected {noisy.shape[0]} origins, got {len(phases)}")
    if len(set(phases)) == 1:
        return _dct_wiener_aligned(noisy, pilot, phases[0], block, stride, strong)
    out = torch.empty_like(noisy)
    for phase in set(phases):
        rows = torch.tensor([i for i, p in enumerate(phases) if p == phase], device=noisy.device)
        out[rows] = _dct_wiener_aligned(noisy[rows], pilot[rows], phase, block, stride,
                                        None if strong is None else strong[rows])
    return out


def dct_wiener_reach(block: int = DCT_BLOCK, stride: int = DCT_STRIDE, matched: bool = False) -> int:
    """Pixels of context on each side that :func:`dct_wiener` reads around an output pixel: the
    blocks that cover it, and with matching (``strong``) the groups those blocks belong to and
    the candidates those groups were chosen from."""
    return block - 1 + (2 * GROUP_SEARCH * stride if matched else 0)
