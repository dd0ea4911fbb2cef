"""Exact tiling: the windows an image is cut into so that each pixel's result equals full-frame inference.

At scale 1, DCE-Net (and the fast variant) sees at most
:data:`~dce_batch.enhance.network.RECEPTIVE_FIELD_RADIUS` = 7 pixels around each output pixel,
the *halo*. :func:`window_grid` cuts the image into windows of one fixed size (``tile_size`` +
2 x halo on each side) that always lie inside the image: the last window of a row or column is
shifted back to end at the image border instead of being cut short. A window edge on the image
border sees the network's own zero padding exactly as full-frame inference does; every other edge
carries a halo of real context that is dropped from the window's *core*. The cores cover the
image, so the result equals full-frame inference (up to float rounding of differently shaped
convolutions), and, because every window of a large image has the same shape, windows of
different images share one batch on a GPU. :func:`balanced_grid` splits evenly instead, for CPUs,
which run one window at a time.

Pure geometry: no torch, no arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

from dce_batch.errors import ConfigError

__all__ = ["Window", "balanced_grid", "window_grid"]


@dataclass(frozen=True)
class Window:
    """A window of the image fed to the network, and the core of it that is kept.

    ``top, left, height, width`` place the window in the image; ``core_*`` are image
    coordinates of the kept part (half-open).
    """

    top: int
    left: int
    height: int
    width: int
    core_top: int
    core_bottom: int
    core_left: int
    core_right: int


def _axis_windows(length: int, window: int, halo: int) -> list[tuple[int, int, int]]:
    """``(start, core_start, core_stop)`` along one axis; windows of ``min(window, length)``.

    Windows start every ``window - 2 * halo`` pixels; the last one is moved back so that it
    ends at the border. A core keeps ``halo`` pixels away from every window edge that is not
    an image border, and consecutive cores meet or overlap, so they cover the axis.
    """
    if length <= window:
        return [(0, 0, length)]
    step = window - 2 * halo
    if step < 1:
        raise ConfigError(f"tile window {window} is too small for a halo of {halo}")
    starts = list(range(0, length - window, step)) + [length - window]
    spans = []
    for start in starts:
        core_start = start + halo if start > 0 else 0
        core_stop = start + window - halo if start + window < length else length
        spans.append((start, core_start, core_stop))
    return spans


def window_grid(height: int, width: int, tile: int, halo: int) -> list[Window]:
    """Windows of side ``tile + 2 * halo`` (clipped to the image) covering an image.

    All of one size, so that windows of different images can be stacked into one batch (GPUs).
    """
    side = tile + 2 * halo
    return [
        Window(top, left, min(side, height), min(side, width), core_top, core_bottom, core_left, core_right)
        for top, core_top, core_bottom in _axis_windows(height, side, halo)
        for left, core_left, core_right in _axis_windows(width, side, halo)
    ]


def _axis_split(length: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, core_start, core_stop)``: ``ceil(length / tile)`` equal cores plus halos."""
    count = max(1, -(-length // tile))
    bounds = [round(i * length / count) for i in range(count + 1)]
    return [(max(0, a - halo), min(length, b + halo), a, b) for a, b in zip(bounds, bounds[1:])]


def balanced_grid(height: int, width: int, tile: int, halo: int) -> list[Window]:
    """Windows whose cores split the image evenly (at most ``tile`` on a side), each with its halo.

    Computes the least: no window overlaps another beyond the halos (fixed-size windows shifted
    back at the border compute up to 40 % more on small photos). Used on CPUs, where windows
    run one at a time and need not share a size.
    """
    return [
        Window(top, left, bottom - top, right - left, core_top, core_bottom, core_left, core_right)
        for top, bottom, core_top, core_bottom in _axis_split(height, tile, halo)
        for left, right, core_left, core_right in _axis_split(width, tile, halo)
    ]
