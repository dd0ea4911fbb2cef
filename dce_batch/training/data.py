"""Training images: decode to a fixed base size, then augment batches on the training device.

Two steps, both plain functions (no Ray), so they are tested with pytest alone:

1. :func:`decode_for_training` (run once, in Ray Data tasks): bytes -> upright RGB uint8 of
   ``base_size`` x ``base_size``. Resizing every image to one square size is what the Zero-DCE
   authors do (they resize SICE to 256 x 256); it also lets batches stack without padding.
   Unreadable files come back as errors to be counted, never raised.
2. :func:`augment_batch` (every step, on the worker's device): a random square crop covering
   ``min_crop`` to all of the side, resized to ``image_size``, and a random horizontal flip,
   for the whole batch in one ``grid_sample`` call. With ``min_crop == 1`` and
   ``base_size == image_size`` it is just the flip (the authors' recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dce_batch.errors import ImageError, describe_error
from dce_batch.imaging import decode_image, to_uint8

__all__ = ["AugmentConfig", "DecodeResult", "augment_batch", "decode_for_training"]


@dataclass(frozen=True)
class DecodeResult:
    pixels: np.ndarray | None  # uint8 base_size x base_size x 3, or None
    error: str | None


def decode_for_training(data: bytes, base_size: int, *, max_pixels: int) -> DecodeResult:
    """Decode and resize one training image; errors are returned as ``TypeName: message``."""
    try:
        decoded = decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        return DecodeResult(None, describe_error(exc))
    # Training works on 8-bit base images (16-bit sources are rounded to 8 bits here).
    image = Image.fromarray(to_uint8(decoded.pixels))
    del decoded
    if image.size != (base_size, base_size):
        image = image.resize((base_size, base_size), Image.Resampling.LANCZOS)
    return DecodeResult(np.asarray(image, dtype=np.uint8), None)


@dataclass(frozen=True)
class AugmentConfig:
    image_size: int = 256
    min_crop: float = 1.0  # smallest crop side as a fraction of the base image's side
    hflip: bool = True


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 N x S x S x 3 (any device) -> float32 N x 3 x image_size x image_size in [0, 1].

    The random draws come from ``generator`` (on the CPU, so runs are reproducible across devices).
    """
    n, size = images.shape[0], images.shape[1]
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    flip = torch.rand(n, generator=generator) < 0.5 if config.hflip else torch.zeros(n, dtype=torch.bool)
    if config.min_crop >= 1.0 and size == config.image_size:
        if flip.any():
            x[flip.to(x.device)] = x[flip.to(x.device)].flip(-1)
        return x
    # Crop side s in [min_crop, 1] of the image, centre anywhere it fits; in grid_sample's
    # normalised coordinates the crop is a scale s and a shift within +-(1 - s).
    side = config.min_crop + (1.0 - config.min_crop) * torch.rand(n, generator=generator)
    shift = (1.0 - side).unsqueeze(1) * (torch.rand(n, 2, generator=generator) * 2 - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -side, side)
    theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device), [n, 3, config.image_size, config.image_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
