"""The brightness a dark photo should be finished at, read from the scene (``--exposure auto``).

A dark capture and its well-exposed version differ by an exposure ratio, so the input's own
brightness says little about the scene's. The network's curves say more: trained without
references to bring every region towards one exposure level, they lift a flat, evenly lit scene
further than one whose light sits in a few bright places, so the mean luma ``m`` they leave is
a reading of the scene. The target is a linear model of it:

    target = clamp(a + c m, 0.15, 0.62)

A night scene lit by point sources (the 99.9th percentile of its linear luma, after 4 x 4 area
means, more than ~100x its mean: beyond any daytime or indoor dark frame of SICE) gets the floor
instead, which leaves it as the curves did (:func:`night_weight`).

The coefficients are fitted on **real captures** (``benchmarks/quality/fit_exposure.py``): SICE
Part 1's exposure brackets, each dark frame against the frame its camera metered. Out of sample
(one sequence left out at a time) the fit's error is 0.082 against 0.100 for one fixed target.
The slope ``c`` is that regression's; the intercept puts the average real dark frame at 0.45, the
mean brightness of well-exposed references (a camera's meter, protecting highlights, sits lower:
0.35 on SICE). How far the highlights stand above the mean (:func:`scene_feature`) adds little
on real captures (0.080) and misleads on simulated ones: a real dark capture keeps highlights
that the well-exposed photo of its scene clips or compresses, so it reads about one unit lower
than a well-exposed photo darkened in linear light, and a model of it fitted on simulated
captures (0.70 + 0.20 r) reads real dark photos as night scenes and leaves them at its floor
(benchmarks/quality/README.md, "Exposure calibrated on real captures").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dce_batch.enhance.filters import LUMA_WEIGHTS

__all__ = ["CURVES_WEIGHT", "HIGHLIGHT_QUANTILE", "LIGHT_SOURCE_QUANTILE", "TARGET_INTERCEPT", "night_weight",
           "scene_feature", "scene_target"]

# Fitted by benchmarks/quality/fit_exposure.py on SICE's real exposure brackets; see the module docstring.
TARGET_INTERCEPT = 0.218
CURVES_WEIGHT = 0.643
TARGET_MIN, TARGET_MAX = 0.15, 0.62
HIGHLIGHT_QUANTILE = 0.995
# Night scenes: point light sources (the 99.9th percentile) far above the mean, beyond what
# SICE's daytime and indoor dark frames reach (their lowest log ratio is -4.46).
LIGHT_SOURCE_QUANTILE = 0.999
NIGHT_START, NIGHT_FULL = -4.6, -5.0
_POOL = 4                     # area means of 4 x 4 pixels: sensor noise averaged before the percentile
_MAX_SAMPLES = 65_536
_TABLE_SIZE = 4096


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """The sRGB decoding function (IEC 61966-2-1), element-wise."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).pow(2.4))


def _log_highlight_ratios(low: torch.Tensor) -> torch.Tensor:
    """N x 2: ``log(mean / p)`` of the input's linear luma after 4 x 4 area means, for ``p`` its
    :data:`HIGHLIGHT_QUANTILE` and :data:`LIGHT_SOURCE_QUANTILE` quantiles (0 where ``p`` is 0)."""
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
    mean = flat.mean(dim=1, keepdim=True)
    ranks = [max(1, min(flat.shape[1], round(q * flat.shape[1]))) for q in (HIGHLIGHT_QUANTILE, LIGHT_SOURCE_QUANTILE)]
    high = torch.stack([flat.kthvalue(k, dim=1).values for k in ranks], dim=1)
    ratio = torch.where(high > 1e-6, mean / high.clamp_min(1e-6), torch.ones_like(high))
    return ratio.clamp(1e-4, 1.0).log()


def scene_feature(low: torch.Tensor) -> torch.Tensor:
    """Per image, ``log(mean / p)`` of the input's linear luma (``low``: N x 3 x h x w in [0, 1]),
    after 4 x 4 area means; ``p`` is its :data:`HIGHLIGHT_QUANTILE` quantile. 0 for an image
    without light (all black) or too small to pool (the mean is its own highlight then)."""
    return _log_highlight_ratios(low)[:, 0]


def night_weight(low: torch.Tensor) -> torch.Tensor:
    """Per image, how much it is a night scene lit by point sources, in [0, 1]: 0 until the
    :data:`LIGHT_SOURCE_QUANTILE` quantile of its linear luma stands ``exp(-NIGHT_START)`` (99x)
    above the mean, 1 from ``exp(-NIGHT_FULL)`` (148x) on, smoothstep between."""
    return _night_weight(_log_highlight_ratios(low))


def _night_weight(ratios: torch.Tensor) -> torch.Tensor:
    t = ((NIGHT_START - ratios[:, 1]) / (NIGHT_START - NIGHT_FULL)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def scene_target(low: torch.Tensor, curves_mean: torch.Tensor) -> torch.Tensor:
    """Per image, the mean luma (BT.709, sRGB) its well-exposed version would have (see the
    module docstring), from the mean luma the network's curves gave it (``curves_mean``, N) and,
    for night scenes (:func:`night_weight`: :data:`TARGET_MIN`, which leaves them as the curves
    did), the input ``low`` (N x 3 x h x w in [0, 1])."""
    ratios = _log_highlight_ratios(low)
    room = (TARGET_INTERCEPT + CURVES_WEIGHT * curves_mean.to(ratios)).clamp(TARGET_MIN, TARGET_MAX)
    return room + _night_weight(ratios) * (TARGET_MIN - room)
