"""Enhancing one image: device, precision, strength, and exact tiling for large images.

:class:`Enhancer` turns H x W x 3 float32 pixels in [0, 1] into enhanced pixels of the same size.
Above a pixel budget it works tile by tile so that memory depends on the tile, not the image:

* DCE-Net (and the fast variant at scale 1) sees at most :data:`RECEPTIVE_FIELD_RADIUS` = 7
  pixels around each output pixel, so each tile is computed with a halo of 7 real pixels
  (clipped at the image border, where the network's own zero padding applies in both cases) and
  only its core is kept: the result equals full-frame inference.
* The fast variant at scale > 1 estimates its 3 curve maps on a downscaled copy of the whole
  image (small), then upsamples and applies them in horizontal strips.

The network runs under autocast for bf16/fp16; the curve itself is always applied in float32.
"""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass, replace
from typing import Iterator, Literal

import numpy as np
import torch

from .errors import ConfigError
from .model import RECEPTIVE_FIELD_RADIUS, DCENet, DCENetFast, apply_curves
from .weights import LoadedWeights

__all__ = ["EnhanceResult", "Enhancer", "InferenceConfig", "Precision", "resolve_device", "tile_grid"]

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferenceConfig:
    """How to run the network.

    Attributes:
        strength: scales the curve maps; 0 leaves the image unchanged, 1 is the model as trained.
        precision: ``fp32``; ``bf16`` (CUDA, or CPUs with bf16 support); ``fp16`` (CUDA only).
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``.
        scale: downscale factor of the fast variant's curve estimation (ignored by DCE-Net).
        tile_size: side of a tile's core when tiling; ``None`` picks per device (below).
        max_full_frame_pixels: images up to this many pixels run in one pass; larger ones tile.
            ``None`` picks per device. DCE-Net needs about 1.2 KB of activations per pixel in fp32.

    On CPUs small tiles are faster as well as smaller: 256-pixel tiles keep the activations
    cache- and allocator-friendly (benchmarks/bench_throughput.py), so CPU inference tiles
    everything above two tiles' worth of pixels. GPUs get 1024-pixel tiles above 2 MP.
    """

    strength: float = 1.0
    precision: Precision = "fp32"
    device: str = "auto"
    scale: float = 1.0
    tile_size: int | None = None
    max_full_frame_pixels: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ConfigError(f"strength must be in [0, 1] (0 = unchanged, 1 = full model), got {self.strength}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.scale < 1:
            raise ConfigError(f"scale must be >= 1, got {self.scale}")
        if self.tile_size is not None and self.tile_size < 16:
            raise ConfigError(f"tile_size must be at least 16 pixels, got {self.tile_size}")
        if self.max_full_frame_pixels is not None and self.max_full_frame_pixels < 1:
            raise ConfigError("max_full_frame_pixels must be positive")

    def for_device(self, device: torch.device) -> "InferenceConfig":
        """These settings with the per-device tiling defaults filled in."""
        tile = self.tile_size or (1024 if device.type == "cuda" else 256)
        budget = self.max_full_frame_pixels or (2_097_152 if device.type == "cuda" else 2 * tile * tile)
        return replace(self, tile_size=tile, max_full_frame_pixels=budget)


@dataclass(frozen=True)
class EnhanceResult:
    pixels: np.ndarray  # float32 H x W x 3
    tiled: bool


def keep_freed_memory() -> None:
    """Let glibc keep freed activation memory in the heap instead of unmapping it.

    DCE-Net allocates and frees tens of MB per layer; by default glibc serves each such block
    with a fresh mmap, faults it in page by page and unmaps it again, which costs more CPU
    time than the convolutions (measured: 3x faster at 1024 x 768 with this, same pixels).
    Memory stays bounded by the tile size. A no-op where glibc's mallopt is not available.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 512 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; an explicit CUDA request without CUDA is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but no CUDA GPU is visible to this process")
    return device


def tile_grid(height: int, width: int, tile: int, halo: int) -> Iterator[tuple[slice, slice, slice, slice]]:
    """Tiles covering an image: ``(core_rows, core_cols, padded_rows, padded_cols)`` slices.

    The padded slices extend each core by ``halo`` pixels, clipped to the image.
    """
    for y0 in range(0, height, tile):
        y1 = min(y0 + tile, height)
        for x0 in range(0, width, tile):
            x1 = min(x0 + tile, width)
            yield (
                slice(y0, y1),
                slice(x0, x1),
                slice(max(0, y0 - halo), min(height, y1 + halo)),
                slice(max(0, x0 - halo), min(width, x1 + halo)),
            )


class Enhancer:
    """A loaded network plus settings; call :meth:`enhance` on H x W x 3 float32 arrays.

    Build one per process (a Ray actor builds one in its constructor) and reuse it.
    """

    def __init__(self, weights: LoadedWeights, config: InferenceConfig = InferenceConfig()) -> None:
        self.device = resolve_device(config.device)
        config = self.config = config.for_device(self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("fp16 needs a CUDA GPU; use fp32 or bf16 on CPUs")
        self.weights = weights
        self.model: DCENet | DCENetFast = weights.build(scale=config.scale if weights.meta.variant == "fast" else 1.0)
        self.model.to(self.device)
        # Halo of real pixels around each tile (an attribute so a test can show 6 is not enough).
        self.halo = RECEPTIVE_FIELD_RADIUS

    @property
    def variant(self) -> str:
        return self.model.variant

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.config.precision])

    def _curves(self, x: torch.Tensor) -> torch.Tensor:
        """Curve maps of ``x`` at its own resolution (float32, strength applied); x is on the device."""
        with self._autocast():
            curves = self.model.head(x)
        curves = curves.float()
        if self.config.strength != 1.0:
            curves = curves * self.config.strength
        return curves

    @torch.inference_mode()
    def enhance(self, pixels: np.ndarray) -> EnhanceResult:
        """Enhance an H x W x 3 float32 image in [0, 1]; returns float32 pixels of the same size."""
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected H x W x 3 pixels, got shape {pixels.shape}")
        image = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).permute(2, 0, 1)  # 3 x H x W view
        out = torch.empty(pixels.shape, dtype=torch.float32)  # H x W x 3, filled tile by tile
        if isinstance(self.model, DCENetFast) and self.model.scale != 1.0:
            tiled = self._enhance_downscaled(image, out)
        else:
            tiled = self._enhance_tiles(image, out)
        return EnhanceResult(pixels=out.numpy(), tiled=tiled)

    def _enhance_tiles(self, image: torch.Tensor, out: torch.Tensor) -> bool:
        _, height, width = image.shape
        cfg = self.config
        tiled = height * width > cfg.max_full_frame_pixels
        tile = cfg.tile_size if tiled else max(height, width)
        for rows, cols, prow, pcol in tile_grid(height, width, tile, self.halo):
            padded = image[:, prow, pcol].unsqueeze(0).to(self.device, non_blocking=True).contiguous()
            curves = self._curves(padded)
            if isinstance(self.model, DCENetFast):  # scale 1: one map for all iterations, same size
                curves = self.model.upsample_curves(curves, padded.shape[-2:])
            # Keep the core: its receptive field lies inside the padded tile.
            core = (slice(None), slice(None), slice(rows.start - prow.start, rows.stop - prow.start),
                    slice(cols.start - pcol.start, cols.stop - pcol.start))
            enhanced = apply_curves(padded[core], curves[core])
            out[rows, cols, :] = enhanced[0].permute(1, 2, 0).to("cpu")
        return tiled

    def _enhance_downscaled(self, image: torch.Tensor, out: torch.Tensor) -> bool:
        """Fast variant, scale > 1: curves from a small copy, applied to the full image in strips."""
        model = self.model
        assert isinstance(model, DCENetFast)
        _, height, width = image.shape
        small_size = model.downscaled_size(height, width)
        full = image.unsqueeze(0).to(self.device)
        small = torch.nn.functional.interpolate(full, size=small_size, mode="bilinear", align_corners=False)
        del full
        curves = self._curves_of_small(small)  # 1 x 3 x h x w
        tiled = height * width > self.config.max_full_frame_pixels
        strip = max(1, self.config.max_full_frame_pixels // max(width, 1)) if tiled else height
        for r0 in range(0, height, strip):
            r1 = min(height, r0 + strip)
            maps = _upsample_rows_align_corners(curves, r0, r1, height, width)
            x = image[:, r0:r1, :].unsqueeze(0).to(self.device)
            out[r0:r1, :, :] = apply_curves(x, maps)[0].permute(1, 2, 0).to("cpu")
        return tiled

    def _curves_of_small(self, small: torch.Tensor) -> torch.Tensor:
        """Curve maps of the downscaled image, itself tiled exactly if it is large."""
        _, _, h, w = small.shape
        if h * w <= self.config.max_full_frame_pixels:
            return self._curves(small)
        curves = torch.empty((1, 3, h, w), dtype=torch.float32, device=small.device)
        for rows, cols, prow, pcol in tile_grid(h, w, self.config.tile_size, self.halo):
            c = self._curves(small[:, :, prow, pcol].contiguous())
            curves[:, :, rows, cols] = c[:, :, rows.start - prow.start : rows.stop - prow.start,
                                         cols.start - pcol.start : cols.stop - pcol.start]
        return curves


def _upsample_rows_align_corners(curves: torch.Tensor, r0: int, r1: int, height: int, width: int) -> torch.Tensor:
    """Rows ``r0:r1`` of ``F.interpolate(curves, (height, width), mode="bilinear", align_corners=True)``.

    Rows are interpolated here with PyTorch's index arithmetic, columns by ``F.interpolate``
    (whose row mapping is the identity when the row count is unchanged), so a strip never
    needs the full-resolution map.
    """
    _, _, h, w = curves.shape
    scale = (h - 1) / (height - 1) if height > 1 else 0.0
    src = torch.arange(r0, r1, device=curves.device, dtype=torch.float32) * scale
    lo = src.floor().long().clamp_(0, h - 1)
    hi = (lo + 1).clamp_(max=h - 1)
    frac = (src - lo.float()).view(1, 1, -1, 1)
    rows = curves[:, :, lo, :] * (1 - frac) + curves[:, :, hi, :] * frac
    if w == width:
        return rows
    return torch.nn.functional.interpolate(rows, size=(r1 - r0, width), mode="bilinear", align_corners=True)
