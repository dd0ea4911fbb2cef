"""Rows of a bilinear, align-corners upsampling, computed strip by strip.

The curves estimated on a downscaled copy are brought back to full resolution by
``F.interpolate(..., mode="bilinear", align_corners=True)``. A full-resolution map of a large
photo does not fit in memory, so :func:`upsample_rows_align_corners` computes any band of its rows
from the small rows it needs, with PyTorch's own index arithmetic: the strips equal the rows of the
whole map.
"""

from __future__ import annotations

import torch

__all__ = ["source_positions", "upsample_rows_align_corners"]


def source_positions(r0: int, r1: int, h: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For full-resolution rows ``r0:r1`` of ``height``: their positions among ``h`` source rows
    under ``F.interpolate(..., align_corners=True)`` (PyTorch's index arithmetic), and the first
    of the two source rows each one blends."""
    scale = (h - 1) / (height - 1) if height > 1 else 0.0
    position = torch.arange(r0, r1, dtype=torch.float32) * scale
    return position, position.floor().long().clamp_(0, h - 1)


def upsample_rows_align_corners(curves: torch.Tensor, r0: int, r1: int, height: int, width: int,
                                rows_total: int | None = None, row_offset: int = 0) -> torch.Tensor:
    """Rows ``r0:r1`` of ``F.interpolate(maps, (height, width), mode="bilinear", align_corners=True)``,
    where ``curves`` holds rows ``row_offset ...`` of ``maps`` (``rows_total`` rows; default: all
    of them are in ``curves``).

    Rows are interpolated here with PyTorch's index arithmetic, columns by ``F.interpolate``
    (whose row mapping is the identity when the row count is unchanged), so a strip never
    needs the full-resolution map.
    """
    _, _, held, w = curves.shape
    h = held if rows_total is None else rows_total
    src, lo = source_positions(r0, r1, h, height)
    hi = (lo + 1).clamp_(max=h - 1)
    frac = (src - lo.float()).view(1, 1, -1, 1).to(curves.device)
    lo, hi = (lo - row_offset).to(curves.device), (hi - row_offset).to(curves.device)
    rows = torch.lerp(curves[:, :, lo, :], curves[:, :, hi, :], frac)
    if w == width:
        return rows
    # Channels-last (free when ``curves`` is): the CPU kernel vectorises over the channels, which
    # pays off for DCE-Net's 48 (benchmarks/README.md, "Figures behind design choices in the code").
    rows = rows.contiguous(memory_format=torch.channels_last)
    return torch.nn.functional.interpolate(rows, size=(r1 - r0, width), mode="bilinear", align_corners=True)
