"""Box means over clipped windows, luma, and the guided filter's linear models: the local
operations shared by the finishing (:mod:`dce_batch.finishing`) and DCE-Net's guided
upsampling (:class:`dce_batch.model.DCENet`).

Every box mean averages the valid pixels of its window (prefix sums along each axis), so a tile
that carries ``radius`` pixels of real context on each side gives exactly the full frame's
values on its core, and at the image border both see the same clipped windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LUMA_WEIGHTS", "box_mean", "guided_coefficients", "luma", "small_box_mean"]

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
    columns = padded[..., 0:height, :]
    for dy in range(1, 2 * radius + 1):
        columns = columns + padded[..., dy : dy + height, :]
    sums = columns[..., 0:width]
    for dx in range(1, 2 * radius + 1):
        sums = sums + columns[..., dx : dx + width]
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
    rounding of prefix sums (measured: 3e-4 at the output between two bandings of one image).
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
