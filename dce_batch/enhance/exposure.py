"""The brightness a dark photo should be finished at, read from the scene (``--exposure auto``).

A dark capture and its well-exposed version differ by an exposure ratio in linear light: a longer
exposure multiplies every pixel's light by the same factor, until it clips. Which factor a
photographer (or a camera's meter) picks depends on the scene, and the part of it that survives
the darkening is the *shape* of the linear histogram: a ratio of two of its statistics is the
same in the dark capture and in the well-exposed photo. Well-exposed photos put their highlights
at about the same place far more consistently than their mean (on Kodak24, see
``benchmarks/quality/README.md``, "Exposure read from the scene"): exposures are chosen so that
the brightest things in the scene do not clip. So a scene whose
highlights stand far above its mean (a dark room with a white sheet, a night street with lamps)
gets a dark reference, and a flat, evenly lit one (a white-walled room) a bright one.

The model is one feature and two fitted coefficients, clamped:

    r = log(mean / p)            (linear luma of the input, 4 x 4 area means; p its 99.5th percentile)
    target = clamp(a + b r, 0.15, 0.62)

fitted by least squares on the references' mean luma against ``r`` read from their simulated dark
captures (``benchmarks/quality/fit_exposure.py``, Kodak24 and SICE frames; the fit and its
cross-validation are in ``benchmarks/quality/README.md``). Light sources that clip even in the
dark capture raise ``p`` to 1: the scene keeps its brightness (a night street stays a night
street), while a dim room with nothing bright in it is lifted like a room.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dce_batch.enhance.filters import LUMA_WEIGHTS

__all__ = ["HIGHLIGHT_QUANTILE", "TARGET_INTERCEPT", "TARGET_SLOPE", "scene_feature", "scene_target"]

# Fitted by benchmarks/quality/fit_exposure.py (Kodak24 + 24 SICE frames, dark captures at
# several simulated levels); see the module docstring.
TARGET_INTERCEPT = 0.70
TARGET_SLOPE = 0.20
TARGET_MIN, TARGET_MAX = 0.15, 0.62
HIGHLIGHT_QUANTILE = 0.995
_POOL = 4                     # area means of 4 x 4 pixels: sensor noise averaged before the percentile
_MAX_SAMPLES = 65_536
_TABLE_SIZE = 4096


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """The sRGB decoding function (IEC 61966-2-1), element-wise."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).pow(2.4))


def scene_feature(low: torch.Tensor) -> torch.Tensor:
    """Per image, ``log(mean / p)`` of the input's linear luma (``low``: N x 3 x h x w in [0, 1]),
    after 4 x 4 area means; ``p`` is its :data:`HIGHLIGHT_QUANTILE` quantile. 0 for an image
    without light (all black) or too small to pool (the mean is its own highlight then)."""
    # Linear luma through a 4,096-entry table of the sRGB decoding (12 bits: exact to 1e-4 for
    # 8-bit inputs, and cheaper than the power on every pixel).
    table = srgb_to_linear(torch.arange(_TABLE_SIZE, device=low.device, dtype=torch.float32) / (_TABLE_SIZE - 1))
    index = low.float().clamp(0.0, 1.0).mul_(_TABLE_SIZE - 1).round_().long()
    weights = torch.tensor(LUMA_WEIGHTS, device=low.device, dtype=torch.float32).view(1, 3, 1, 1)
    y = (table[index] * weights).sum(dim=1, keepdim=True)
    if min(y.shape[-2:]) >= 2 * _POOL:
        y = F.avg_pool2d(y, _POOL)
    flat = y.flatten(1)
    step = max(1, flat.shape[1] // _MAX_SAMPLES)
    flat = flat[:, ::step]
    mean = flat.mean(dim=1)
    k = max(1, min(flat.shape[1], round(HIGHLIGHT_QUANTILE * flat.shape[1])))
    high = flat.kthvalue(k, dim=1).values
    ratio = torch.where(high > 1e-6, mean / high.clamp_min(1e-6), torch.ones_like(mean))
    return ratio.clamp(1e-4, 1.0).log()


def scene_target(low: torch.Tensor) -> torch.Tensor:
    """Per image, the mean luma (BT.709, sRGB) its well-exposed version would have (see the
    module docstring), from the input ``low`` (N x 3 x h x w in [0, 1])."""
    return (TARGET_INTERCEPT + TARGET_SLOPE * scene_feature(low)).clamp(TARGET_MIN, TARGET_MAX)
