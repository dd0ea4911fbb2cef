"""Checks of enhancement settings that need no torch (the driver validates before importing it)."""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["PRECISIONS", "check_inference_settings"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_inference_settings(*, strength: float, precision: str, scale: float, tile_size: int | None = None,
                             max_full_frame_pixels: int | None = None, batch_pixels: int | None = None) -> None:
    """ConfigError for the first invalid setting, with what is allowed."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"strength must be in [0, 1] (0 = unchanged, 1 = full model), got {strength}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if scale < 1:
        raise ConfigError(f"scale must be >= 1, got {scale}")
    if tile_size is not None and tile_size < 16:
        raise ConfigError(f"tile_size must be at least 16 pixels, got {tile_size}")
    if max_full_frame_pixels is not None and max_full_frame_pixels < 1:
        raise ConfigError("max_full_frame_pixels must be positive")
    if batch_pixels is not None and batch_pixels < 1:
        raise ConfigError("batch_pixels must be positive")
