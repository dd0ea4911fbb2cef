"""Finishing after the curves: exposure that fits the scene, and noise-aware denoising.

Zero-DCE's curves lift signal and sensor noise alike, and very dark scenes stay too dark. This
stage runs after the network, in torch on the same device (CPU or CUDA), batched, in two steps:

* :func:`finish_params`, once per image on small copies of the input and of the network's output
  (see :func:`params_copy`): the noise level of the input (a low quantile of the local RMS of
  its detail layer; for the luma, read per brightness level) and the global exposure curve that
  brings the output's mean luma to the brightness the scene's well-exposed version would have
  (:mod:`dce_batch.enhance.exposure`: read from how far the network's curves lifted the scene,
  calibrated on real captures; a night scene lit by point sources keeps the curves' look).
* :func:`finish_tiles`, per tile: the exposure curve, then a luma/chroma split (BT.709 Y'CbCr)
  and on each a guided filter with a local Wiener gain (He et al. 2013; Lee 1980) that removes
  the *local* noise variance: the input's noise times the gain that the curves and the
  exposure gave each region (the slope of ``Y_out`` against ``Y_in`` over the window, or the
  ratio of their window means where larger; :func:`_local_gain`). Shadows lifted 10x are
  smoothed hard, mid-tones and clean images hardly at all, and texture above the noise stays.
  The luma then goes through a Wiener filter in sliding 8 x 8 DCT blocks
  (:func:`dce_batch.enhance.filters.dct_wiener`) with the guided filter's result as its pilot, on the
  luma divided by its local noise level: texture separates from noise by frequency there.
  Where that noise is strong, each block is filtered together with the seven most similar
  blocks nearby (block matching, as in BM3D's second step).
  Chroma (the blotchy purple grain) is held to a higher threshold than luma and goes through
  an empirical Wiener filter over larger windows whose signal variance comes from a pilot
  estimate, its local mean (the two-stage idea of BM3D, Dabov et al. 2007): the pilot's variance
  estimates the signal far better than ``noisy variance - noise variance``.

Every local operation is a box mean over the valid pixels of a window (prefix sums along each
axis) or a DCT block on a grid fixed to the image, so a tile that carries :func:`finish_halo`
pixels of real context on each side (and says where it lies) gives the full-frame values on its
core; at the image border both see the same clipped windows and reflected blocks.

Defaults were chosen by measurement on simulated pairs and real low-light sets
(``dce-batch evaluate``; see ``benchmarks/quality/``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from dce_batch.enhance.exposure import scene_target
from dce_batch.enhance.filters import LUMA_WEIGHTS, box_mean, dct_wiener, dct_wiener_reach, luma, small_box_mean
from dce_batch.enhance.settings import DEFAULT_EXPOSURE_TARGET, FINISH_METHOD, FinishConfig, parse_exposure

__all__ = [
    "DEFAULT_EXPOSURE_TARGET",
    "FINISH_METHOD",
    "FinishConfig",
    "NUM_PARAMS",
    "finish_halo",
    "finish_image",
    "finish_params",
    "finish_tiles",
    "params_copy",
    "parse_exposure",
]

# Columns of the per-image parameters returned by finish_params.
PARAM_TONE = 0         # exponent of the global exposure curve (1 = unchanged)
PARAM_SIGMA_LUMA = 1   # noise standard deviation of the input's luma
PARAM_SIGMA_CHROMA = 2 # noise standard deviation of the input's chroma (Cb, Cr averaged)
PARAM_HIGHLIGHTS = 3   # how much the exposure curve lifts the highlights (0 = none)
NUM_PARAMS = 4

# Exposure fitted to the scene (see _exposure_params).
_DARK_INPUT_FULL, _DARK_INPUT_END = 0.2, 0.35      # input mean luma: full correction .. none
_BLACK_LEVEL = 2.5 / 255.0                         # an input whose brightest luma is under this has no signal
_SHADOW_GAIN = 3.0                                 # exposure never multiplies a value by more
_HIGHLIGHT_KNEE = 0.5                              # the highlight lift starts here

_CB_SCALE, _CR_SCALE = 1.8556, 1.5748  # Cb = (B - Y) / 1.8556, Cr = (R - Y) / 1.5748


def finish_halo(config: FinishConfig) -> int:
    """Pixels of real context a tile needs on each side for :func:`finish_tiles` to be exact.

    The filter is two box means deep (window statistics, then the average of the per-window
    coefficients); the gain is one box, evaluated where the statistics are. Chroma's pilot is a
    box mean, read through two box means of the second pass's radius. The luma's DCT Wiener
    stage reads 7 pixels on each side of the luma and of its pilot, the guided filter's output,
    and 12 more with block matching (:func:`dce_batch.enhance.filters.dct_wiener_reach`).
    """
    if not config.denoising:
        return 2 * _BLACK_RADIUS if config.enabled else 0
    halo = max(2 * _BLACK_RADIUS, 2 * config.radius, config.radius + 2 * config.chroma_refine_radius)
    if config.dct_stage:
        halo = max(halo, 2 * config.radius + dct_wiener_reach(matched=config.block_matching))
    return halo


def params_copy(image: torch.Tensor, max_pixels: int = 262_144, patch: int = 128) -> torch.Tensor:
    """The small copy :func:`finish_params` expects: a mosaic of full-resolution patches.

    Images up to ``max_pixels`` are returned whole. Larger ones give a g x g grid of
    ``patch``-pixel squares spread evenly over the image (g = sqrt(max_pixels) // patch, 4 by
    default), placed side by side. Unlike a downscaled copy, a mosaic keeps the noise exactly
    as the full-resolution filter sees it (averaging would hide it) while sampling the whole
    frame for the exposure statistics; and the network can run on it at its native scale, so
    ``enhanced_small`` may be the network's output on ``params_copy(low)`` instead of a copy of
    the full output. ``image`` is N x C x H x W; the same call on two images of one size picks
    the same pixels.
    """
    height, width = image.shape[-2:]
    if height * width <= max_pixels:
        return image
    grid = max(1, math.isqrt(max_pixels) // patch)
    ph, pw = max(1, min(patch, height // grid)), max(1, min(patch, width // grid))
    ys = [round(i * (height - ph) / max(grid - 1, 1)) for i in range(grid)]
    xs = [round(j * (width - pw) / max(grid - 1, 1)) for j in range(grid)]
    rows = [torch.cat([image[..., y:y + ph, x:x + pw] for x in xs], dim=-1) for y in ys]
    return torch.cat(rows, dim=-2)


SCENE_SIDE = 640  # longer side of the copy the scene's exposure target is read from


def scene_copy(image: torch.Tensor, max_side: int = SCENE_SIDE, band: int = 32) -> torch.Tensor:
    """The copy :func:`dce_batch.enhance.exposure.scene_target` reads a scene from: the whole frame,
    area-averaged by the smallest integer factor that brings its longer side to ``max_side`` or
    less (as float32, in the input's own units). A mosaic of patches (:func:`params_copy`) would miss
    the lamps and windows the target depends on. ``image`` is N x C x H x W of any dtype; it is
    converted ``band`` output rows at a time, so a 4K frame never exists as float32 whole. A side
    shorter than the factor (a strip of 1000 x 1) is not averaged, so no side becomes empty.
    """
    height, width = image.shape[-2:]
    factor = max(1, -(-max(height, width) // max_side))
    if factor == 1:
        return image.float()
    fy, fx = min(factor, height), min(factor, width)
    rows = (height // fy) * fy
    step = band * fy
    return torch.cat([F.avg_pool2d(image[..., y:min(y + step, rows), :(width // fx) * fx].float(), (fy, fx))
                      for y in range(0, rows, step)], dim=-2)


# --------------------------------------------------------------------------------------------
# Colour


def _to_ycbcr(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 3 x H x W RGB -> (Y: N x 1, CbCr: N x 2)."""
    y = luma(x)
    cbcr = torch.cat(((x[:, 2:3] - y) / _CB_SCALE, (x[:, 0:1] - y) / _CR_SCALE), dim=1)
    return y, cbcr


def _to_rgb(y: torch.Tensor, cbcr: torch.Tensor) -> torch.Tensor:
    b = y + _CB_SCALE * cbcr[:, 0:1]
    r = y + _CR_SCALE * cbcr[:, 1:2]
    g = (y - LUMA_WEIGHTS[0] * r - LUMA_WEIGHTS[2] * b) / LUMA_WEIGHTS[1]
    return torch.cat((r, g, b), dim=1)


# --------------------------------------------------------------------------------------------
# Global step


_NOISE_WINDOW_RADIUS = 2    # 5 x 5 windows
_NOISE_QUANTILE = 0.25
# Per-image statistics use at most this many pixels (a mosaic of 64-pixel patches for the noise,
# a strided sample for the exposure), so their cost stays small next to the per-tile filters
# (benchmarks/quality/README.md, "The luma's noise level, read per brightness level").
_MAX_STAT_SAMPLES = 16_384


def _local_detail(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """On a mosaic of ``x`` (N x C x h x w; 64-pixel patches, see :func:`params_copy`), the 5 x 5
    box mean and the local RMS of the detail (``x`` minus that mean) over 5 x 5 windows: what
    both noise estimates read."""
    r = _NOISE_WINDOW_RADIUS
    x = params_copy(x, max_pixels=4 * _MAX_STAT_SAMPLES, patch=64)
    mean = box_mean(x, r)
    detail = x - mean  # a box mean keeps gradients: what is left is noise and edges
    return mean, box_mean(detail * detail, r).sqrt_()


def _noise_sigmas(mean: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
    """Per image and channel, the noise level: a low quantile of the local RMS of the detail
    (:func:`_local_detail` of Y'CbCr; channel 0, the luma, also says which pixels are black).

    The detail layer drops gradients and shading, so a clean image reads as clean; the windows
    are about as large as the filter's, so noise that demosaicing or JPEG made spatially
    correlated is measured as the filter sees it (a pixel-difference estimator misses most of
    it). The low quantile picks flat regions; pure-black (clipped) pixels are left out because
    clipping hides their noise.
    """
    std = rms.flatten(2)
    valid = (mean[:, 0] > 1.5 / 255.0).flatten(1)
    step = max(1, valid.shape[1] // _MAX_STAT_SAMPLES)
    std, valid = std[:, :, ::step], valid[:, ::step]
    out = torch.zeros(rms.shape[:2], device=rms.device)
    for i in range(rms.shape[0]):
        values = std[i][:, valid[i]]
        if values.shape[1] >= 16:
            k = max(1, round(_NOISE_QUANTILE * values.shape[1]))
            out[i] = values.kthvalue(k, dim=1).values
    return out


# Brightness levels (the input luma's 5 x 5 mean, in 8-bit steps) whose noise is read apart, and
# the fewest windows a level needs to count.
_NOISE_LEVEL_EDGES = (1.5, 3.0, 6.0, 12.0, 24.0, 48.0, 96.0, 256.0)
_MIN_LEVEL_WINDOWS = 64
# The estimate per level never exceeds this multiple of the whole frame's: noise varies with the
# brightness by a bounded factor (benchmarks/quality/README.md, "The luma's noise level, read per
# brightness level"), texture does not.
_MAX_LEVEL_NOISE_RATIO = 1.5


def _luma_noise_by_level(mean: torch.Tensor, rms: torch.Tensor, whole_frame: torch.Tensor) -> torch.Tensor:
    """Per image, the luma's noise level from its :func:`_local_detail` (``mean``, ``rms``: N x 1
    x h x w): the median, over brightness levels, of each level's estimate (the low quantile of
    :func:`_noise_sigmas`, within the level), at most :data:`_MAX_LEVEL_NOISE_RATIO` times
    ``whole_frame`` (that quantile over the whole frame).

    Noise in a dark photo depends on the brightness (in the simulated pairs' sRGB it is larger in
    the deep shadows than in the mid-tones), and texture reads as noise to any window statistic. A quantile
    over the whole frame reads whichever level has the flattest regions, or the texture where
    one level fills most of the frame; the median over levels reads a typical level. In real
    photos, levels that hold only a few edges read as texture, and the cap keeps them from
    taking over (without it the estimate runs away on some DICM photos). Against the true noise
    of the simulated pairs this estimate spreads less than the whole-frame quantile
    (benchmarks/quality/README.md, "The luma's noise level, read per brightness level").
    """
    rms = rms.flatten(1)
    # 0 below the first edge (black), 1 .. 7 the levels
    level = torch.bucketize(mean.flatten(1) * 255.0, torch.tensor(_NOISE_LEVEL_EDGES, device=mean.device), right=True)
    out = torch.zeros(mean.shape[0], device=mean.device)
    for i in range(mean.shape[0]):
        estimates = []
        for index in range(1, len(_NOISE_LEVEL_EDGES)):
            values = rms[i][level[i] == index]
            if values.numel() >= _MIN_LEVEL_WINDOWS:
                estimates.append(values.kthvalue(max(1, round(_NOISE_QUANTILE * values.numel()))).values)
        if estimates:
            ordered = torch.stack(estimates).sort().values
            out[i] = (ordered[(len(estimates) - 1) // 2] + ordered[len(estimates) // 2]) / 2
    return torch.minimum(out, _MAX_LEVEL_NOISE_RATIO * whole_frame)


def _exposure_curve(x: torch.Tensor, exponent: torch.Tensor, highlights: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``min(x ** g, SHADOW_GAIN * x)``: a power curve whose gain in the deep shadows is capped.

    A plain power has infinite slope at black, which turns the near-black of a night sky
    (and its JPEG and sensor residue) into a coloured haze; the cap keeps blacks black and
    leaves mid-tones and highlights to the power. Monotonic, maps [0, 1] onto [0, 1]. Per
    channel: measured against scaling RGB by the luma ratio, it clips nothing and amplifies
    less chroma noise.

    Values ``y`` above :data:`_HIGHLIGHT_KNEE` (k) are then lifted by ``highlights`` (a, in
    [0, 1]; 0 = none): ``y + a (y - k)^2 (1 - y) / (1 - k)^2``, smooth at the knee, 1 at white
    and monotonic. The curves compress the highlights of a dark photo (each iteration
    ``x + a x (1 - x)`` is flatter near 1) where a longer exposure would have scaled them like
    the rest, and the power curve compresses them further. The lift raises PSNR and SSIM on every
    simulated set, and on dark real sets it clips far fewer pixels at white than a linear stretch
    (benchmarks/quality/README.md, "Highlights the curves compress").
    """
    toned = torch.minimum(x.pow(exponent), x * _SHADOW_GAIN)
    if isinstance(highlights, float) and highlights == 0.0:
        return toned
    above = (toned - _HIGHLIGHT_KNEE).clamp_(min=0.0)
    lift = above.square_().mul_(1.0 - toned).mul_(highlights / (1.0 - _HIGHLIGHT_KNEE) ** 2)
    return toned + lift


def _exposure_exponent(luma: torch.Tensor, target: torch.Tensor, max_boost: float,
                       highlights: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, the exponent g in [1 / max_boost, 1] whose mean of the exposure curve
    (:func:`_exposure_curve` with ``highlights``, N) of ``luma`` (N x 1 x h x w) is closest to
    ``target`` (N); the mean weighted by ``weight`` (N x 1 x h x w in [0, 1]) when given.

    Only brightens: an image already at or above the target keeps g = 1. Bisection on a
    strided sample (the mean of luma ** g falls monotonically with g).
    """
    step = max(1, luma[0].numel() // _MAX_STAT_SAMPLES)
    flat = luma.flatten(1)[:, ::step].clamp(1e-6, 1.0)
    if weight is None:
        weight = torch.ones_like(flat)
    else:
        weight = weight.flatten(1)[:, ::step]
        weight = torch.where(weight.sum(dim=1, keepdim=True) > 0, weight, torch.ones_like(weight))
    total = weight.sum(dim=1, keepdim=True)
    lo = torch.full((flat.shape[0], 1), 1.0 / max_boost, device=flat.device, dtype=flat.dtype)
    hi = torch.ones_like(lo)
    for _ in range(16):  # the exponent to within 1e-5
        mid = 0.5 * (lo + hi)
        mean = (_exposure_curve(flat, mid, highlights.view(-1, 1)) * weight).sum(dim=1, keepdim=True) / total
        too_bright = mean > target.view(-1, 1)
        lo = torch.where(too_bright, mid, lo)
        hi = torch.where(too_bright, hi, mid)
    return hi.squeeze(1)


def _exposure_params(low_small: torch.Tensor, enhanced_small: torch.Tensor, target: float | None,
                     max_boost: float, highlight_stretch: float, scene: torch.Tensor,
                     corrected_small: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The exposure exponent and highlight stretch per image, fitted to the scene.

    * ``target`` None (``--exposure auto``): each image's target mean luma is the brightness its
      well-exposed version would have, read from the scene (:func:`dce_batch.enhance.exposure.scene_target`);
      a number forces one target for every image.
    * Inputs that are not dark (mean luma from 0.2 up to 0.35) get less and less correction,
      so a well-exposed photo keeps its tone whatever the curves did.
    * The highlight stretch (``highlight_stretch``, see :func:`_exposure_curve`) is scaled by the
      same strength, and the exponent is fitted with it in place, so the mean still reaches
      the target: midtones and shadows are lifted less, and so is their noise.
    * ``corrected_small``: ``enhanced_small`` with the colour cast taken out (:func:`_take_out_cast`),
      when that changes it. The exponent is fitted to it, the scene's target still read from the
      curves' own brightness, so taking out a colour cast leaves the exposure's level where it was.
    * The target is the mean of what stays lit: the pixels that :func:`_keep_blacks` blacks out
      (a night sky, a black backdrop) are left out of the fit, so that they do not drag the
      mean down and push the lit subject towards white (DICM 12's astronaut on a black
      backdrop). On scenes without black regions nothing changes; on SICE's real pairs at their
      references' level 18.645 / 0.6808 -> 18.614 / 0.6809 (benchmarks/quality/README.md,
      "Blacks: the share of dithered values").
    """
    luma_in = luma(low_small)
    dark = ((_DARK_INPUT_END - luma_in.mean(dim=(1, 2, 3))) / (_DARK_INPUT_END - _DARK_INPUT_FULL)).clamp(0.0, 1.0)
    no_signal = luma_in.flatten(1).amax(dim=1) < _BLACK_LEVEL
    strength = torch.where(no_signal, torch.zeros_like(dark), dark)
    highlights = strength * highlight_stretch
    luma_out = luma(enhanced_small)
    targets = scene_target(scene, luma_out.mean(dim=(1, 2, 3))) if target is None else torch.full_like(dark, target)
    if corrected_small is not None:
        luma_out = luma(corrected_small)
    exponent = _exposure_exponent(luma_out, targets, max_boost, highlights, _lit_factor(low_small))
    return 1.0 - strength * (1.0 - exponent), highlights


def _take_out_cast(x: torch.Tensor, config: FinishConfig) -> torch.Tensor:
    """``x`` (N x 3 x H x W in [0, 1]; changed in place and returned) with the network's colour
    cast taken out: each channel to its power in ``config.colour_exponents``. One scalar power
    per channel that needs one is a third faster than a broadcast tensor of powers."""
    for channel, exponent in enumerate(config.colour_exponents):
        if exponent != 1.0:
            x[:, channel].pow_(exponent)
    return x


@torch.inference_mode()
def finish_params(low_small: torch.Tensor, enhanced_small: torch.Tensor, config: FinishConfig,
                  scene: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image statistics, once per image, from small copies (see :func:`params_copy`).

    ``low_small`` and ``enhanced_small`` are N x 3 x h x w float32 in [0, 1] (the input and the
    network's output at the same small size); ``scene`` (N x 3 x h' x w', float32 in [0, 1]) is
    the input the exposure target is read from (:func:`scene_copy`; ``low_small`` when None).
    Returns N x :data:`NUM_PARAMS` float32.
    """
    if low_small.shape != enhanced_small.shape or low_small.ndim != 4 or low_small.shape[1] != 3:
        raise ValueError(f"expected two N x 3 x h x w tensors of one shape, got {tuple(low_small.shape)} "
                         f"and {tuple(enhanced_small.shape)}")
    low_small = low_small.float()
    enhanced_small = enhanced_small.float().clamp(0.0, 1.0)
    params = torch.zeros((low_small.shape[0], NUM_PARAMS), dtype=torch.float32, device=low_small.device)
    params[:, PARAM_TONE] = 1.0
    if config.exposure != "off":
        target = None if config.exposure == "auto" else float(config.exposure)
        params[:, PARAM_TONE], params[:, PARAM_HIGHLIGHTS] = _exposure_params(
            low_small, enhanced_small, target, config.max_exposure_boost, config.highlight_stretch,
            low_small if scene is None else scene.float(),
            _take_out_cast(enhanced_small.clone(), config) if config.takes_out_cast else None)
    if config.denoising:
        y, cbcr = _to_ycbcr(low_small)
        mean, rms = _local_detail(torch.cat((y, cbcr), dim=1))  # once, for both estimates
        sigmas = _noise_sigmas(mean, rms)
        # --denoise fast has no DCT stage, so the plain estimate is the luma's noise level.
        params[:, PARAM_SIGMA_LUMA] = (_luma_noise_by_level(mean[:, :1], rms[:, :1], sigmas[:, 0])
                                       if config.dct_stage else sigmas[:, 0])
        params[:, PARAM_SIGMA_CHROMA] = sigmas[:, 1:3].mean(dim=1)
    return params


# --------------------------------------------------------------------------------------------
# Local step


def _tone(x: torch.Tensor, exponent: torch.Tensor, highlights: torch.Tensor) -> torch.Tensor:
    """Global exposure on each channel (per image exponent and highlight stretch); see
    :func:`_exposure_curve`."""
    return _exposure_curve(x.clamp(0.0, 1.0), exponent.view(-1, 1, 1, 1), highlights.view(-1, 1, 1, 1))


@torch.inference_mode()
def finish_tiles(low: torch.Tensor, enhanced: torch.Tensor, params: torch.Tensor, config: FinishConfig,
                 origins: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
    """The local step on N x 3 x H x W tiles (row i of ``params`` belongs to tile i's image).

    ``low`` is the input tile, ``enhanced`` the network's output on it (same shape, float32);
    ``origins`` the tiles' top-left corners in their images (None: each tile is a whole image).
    Returns the finished tile, float32 in [0, 1]. Exact on the tile's core when the tile carries
    :func:`finish_halo` pixels of real context (see the module docstring).
    """
    if low.shape != enhanced.shape or low.ndim != 4 or low.shape[1] != 3:
        raise ValueError(f"expected two N x 3 x H x W tiles of one shape, got {tuple(low.shape)} and {tuple(enhanced.shape)}")
    if params.shape != (low.shape[0], NUM_PARAMS):
        raise ValueError(f"expected params of shape ({low.shape[0]}, {NUM_PARAMS}), got {tuple(params.shape)}")
    params = params.to(enhanced.device, torch.float32)
    out = enhanced.float().clamp(0.0, 1.0)  # a new tensor: the colour's powers may work in place
    if config.takes_out_cast:
        _take_out_cast(out, config)
    if config.exposure_target is not None:
        out = _tone(out, params[:, PARAM_TONE], params[:, PARAM_HIGHLIGHTS])
    if config.denoising:
        out = _denoise(low.float(), out, params, config, origins)
    return _keep_blacks(low.float(), out).clamp_(0.0, 1.0)


# The output is scaled to black where the input's neighbourhood (BLACK_RADIUS) is black: where
# fewer than BLACK_SHARE_START of its values reach BLACK_DITHER (fading in up to BLACK_SHARE_FULL)
# and none reaches BLACK_SIGNAL_FULL (fading in from BLACK_SIGNAL_START); smoothstep fades.
_BLACK_RADIUS = 3
_BLACK_DITHER = 1.5 / 255.0
_BLACK_SHARE_START, _BLACK_SHARE_FULL = 0.25, 0.5
_BLACK_SIGNAL_START, _BLACK_SIGNAL_FULL = 3.5 / 255.0, 6.0 / 255.0


def _smoothstep(x: torch.Tensor, start: float, full: float) -> torch.Tensor:
    t = ((x - start) / (full - start)).clamp_(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _keep_blacks(low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` scaled to black where the input is black all around. For each pixel, two readings
    of the input's 7 x 7 neighbourhood (the brightest channel of each pixel) keep the output:

    * **signal**: its brightest value, from 3.5 steps of 255 (0 below) to 6 (kept from there on):
      a star, a lamp's edge, a thin lit line or the rim of a lit object keeps its surround;
    * **dithered content**: the share of its values at 2 steps or more, from a quarter (0 below)
      to a half (kept from there on): a very dark but real scene, dithered by sensor noise.

    The larger of the two is then averaged over the same 7 x 7 window (so a tile needs 6 pixels
    of context, and the fade follows no square).

    Zero-DCE's curves have a slope of up to 2^8 at black (each of the 8 iterations
    ``x + a x (1 - x)`` nearly doubles a value near 0), so a JPEG's residue of a black backdrop
    (0s and 1s, with a few 2s to 5s) comes out as a mottled grey, and the exposure and the chroma
    filter add to it (the bundled retina sample's black surround, with dark-red blotches). Deciding
    by the neighbourhood's maximum alone would keep a 7 x 7 square around each of the backdrop's
    stray 3s and 4s, blobs on black (DICM 12, the astronaut on a black backdrop); the share
    of dithered values tells such residue (2 % of DICM 12's backdrop at 3 steps or more, 15 % at
    2 or more) from a dark scene under sensor noise (most of its values). Measured against
    the maximum alone at 2.5 / 4 steps (benchmarks/quality/README.md, "Blacks: the share of
    dithered values"): the real SICE pairs at their references' level +0.04 dB and +0.018 SSIM,
    the darkest JPEG'd simulated level +0.19 dB and +0.008, the LOL-like noisy levels unchanged.
    """
    factor = _lit_factor(low)
    return out if factor is None else out * factor


def _lit_factor(low: torch.Tensor) -> torch.Tensor | None:
    """N x 1 x H x W: how much of the output :func:`_keep_blacks` keeps at each pixel of ``low``
    (N x 3 x H x W), in [0, 1]; None where it keeps everything (nothing in ``low`` is dark)."""
    brightest = low.amax(dim=1, keepdim=True)
    if not bool((brightest < _BLACK_SIGNAL_FULL).any()):
        return None
    r = _BLACK_RADIUS  # the window's maximum, one axis at a time (2 x 7 comparisons, not 49)
    level = F.max_pool2d(F.max_pool2d(brightest, (2 * r + 1, 1), stride=1, padding=(r, 0)),
                         (1, 2 * r + 1), stride=1, padding=(0, r))
    if not bool((level < _BLACK_SIGNAL_FULL).any()):
        return None
    signal = _smoothstep(level, _BLACK_SIGNAL_START, _BLACK_SIGNAL_FULL)
    dithered = _smoothstep(small_box_mean((brightest > _BLACK_DITHER).float(), r), _BLACK_SHARE_START,
                           _BLACK_SHARE_FULL)
    return small_box_mean(torch.maximum(signal, dithered), r)


def _denoise(low: torch.Tensor, out: torch.Tensor, params: torch.Tensor, config: FinishConfig,
             origins: Sequence[tuple[int, int]] | None) -> torch.Tensor:
    """Luma through a guided filter (He et al.) whose gain is the local Wiener gain
    ``(var - noise_var)+ / var`` (as in Lee's filter), then (``denoise="auto"``) through a Wiener
    filter in sliding 8 x 8 DCT blocks with that result as its pilot (:func:`dce_batch.enhance.filters.
    dct_wiener`, on the luma divided by its local noise level; blocks whose noise level is at
    least ``config.matched_noise_level`` in matched groups); chroma through a second, wider
    Wiener filter whose signal variance comes from a pilot estimate (see :func:`_empirical_wiener`).

    He's gain ``var / (var + eps)`` leaves half of a flat region's noise in place when eps is the
    noise variance; the Wiener gain removes it and keeps texture that stands above the noise.
    The coefficients are averaged over the window as in the guided filter, which avoids blocky
    transitions. With ``chroma_refine_radius=0`` chroma goes through the luma's filter instead
    (one pass).
    """
    r = config.radius
    two_pass = config.chroma_refine_radius > 0
    y, cbcr = _to_ycbcr(out)
    y_low = luma(low)
    squares = y * y if two_pass else torch.cat((y, cbcr), dim=1).square_()
    slope_gain = config.dct_stage and config.noise_gain == "slope"
    # The input's window mean only serves the ratio gain (the slope sums its own, directly).
    stats = box_mean(torch.cat((y, cbcr, squares) if slope_gain else (y, cbcr, squares, y_low), dim=1), r)
    mean_y, mean_c, mean_squares = stats[:, 0:1], stats[:, 1:3], stats[:, 3:]
    # Local gain of the whole chain (curves and exposure): how much the input's noise grew here.
    # The ratio of means stays for --denoise fast and noise_gain="ratio": their pixels must not change.
    if slope_gain:
        gain = _local_gain(y_low, y, r)
    else:
        mean_low, mean_squares = mean_squares[:, -1:], mean_squares[:, :-1]
        gain = (mean_y / mean_low.clamp_min(2.0 / 255.0)).clamp_(1.0, 30.0)
    k = config.denoise_strength
    sigma_luma = (k * config.luma_noise_factor) * params[:, PARAM_SIGMA_LUMA].view(-1, 1, 1, 1)
    sigma_chroma = (k * config.chroma_noise_factor) * params[:, PARAM_SIGMA_CHROMA].view(-1, 1, 1, 1)
    noise_var_luma = (gain * sigma_luma).square_()
    noise_var_chroma = (gain * sigma_chroma).square_()
    if two_pass:
        y_filtered = _lee(y, mean_y, mean_squares, noise_var_luma, r)
        # The chroma's pilot is its window mean: the chroma grain is strong and the colour of
        # most regions changes slowly (as good as a first Lee pass, and cheaper:
        # benchmarks/quality/README.md, "What the default does").
        chroma = _empirical_wiener(cbcr, mean_c, noise_var_chroma, config.chroma_refine_radius)
    else:
        ycc = _lee(torch.cat((y, cbcr), dim=1), stats[:, 0:3], mean_squares,
                   torch.cat((noise_var_luma, noise_var_chroma, noise_var_chroma), dim=1), r)
        y_filtered, chroma = ycc[:, 0:1], ycc[:, 1:3]
    if config.dct_stage:
        # In DCT blocks texture and noise separate by frequency where a window's variance cannot
        # tell them apart (benchmarks/quality/README.md, "A DCT stage for the luma").
        sigma = params[:, PARAM_SIGMA_LUMA].view(-1, 1, 1, 1) * (k * config.dct_noise_factor)
        noise_sd = (gain * sigma).clamp_min_(1e-6)
        # Where the noise is strong, block matching adds what one block cannot tell apart
        # (benchmarks/quality/README.md, "Block matching where the noise is strong"); lower levels
        # gain little more and cost more time.
        strong = noise_sd >= config.matched_noise_level if config.block_matching else None
        y_filtered = dct_wiener(y / noise_sd, y_filtered / noise_sd, origins, strong=strong).mul_(noise_sd)
    return _to_rgb(y_filtered, chroma)


# Below this window variance (a quarter of an 8-bit step, squared) the input is flat (clipped black, or
# a single 8-bit value) and its regression slope says nothing: the gain falls back to the ratio of means.
_FLAT_INPUT_VARIANCE = 0.25 / 255.0**2


def _local_gain(luma_in: torch.Tensor, luma_out: torch.Tensor, radius: int) -> torch.Tensor:
    """How much the chain (curves, their guided upsampling, exposure) amplified the input's noise
    around each pixel: the slope of the output's luma against the input's, regressed over the
    window of ``radius`` (``cov(in, out) / var(in)``), or the ratio of the window means where
    that is larger, in [1, 30]. The window means are summed directly (:func:`small_box_mean`):
    a variance of a step or two read from prefix sums of squares would be lost to their rounding.

    The ratio alone underestimates the amplification where the curves' maps follow the luma
    (guided upsampling makes them steeper than the ratio of means) and in near-black windows,
    where the input's mean is a step or two. On ``lol_matched`` the slope scores a higher SSIM than
    the ratio alone from both sources of references, part of it in the near-black windows (the
    ratio's floor at 1 step rather than 2): benchmarks/quality/README.md, "The noise's local
    gain: the slope of the chain".
    """
    means = small_box_mean(torch.cat((luma_in, luma_out, luma_in * luma_in, luma_in * luma_out), dim=1), radius)
    mean_low, mean_out, mean_low_sq, mean_low_out = means.split(1, dim=1)
    var_low = mean_low_sq.sub_(mean_low * mean_low)
    slope = mean_low_out.sub_(mean_low * mean_out).div_(var_low.clamp_min(_FLAT_INPUT_VARIANCE))
    slope.masked_fill_(var_low <= _FLAT_INPUT_VARIANCE, 0.0)  # flat: the ratio alone
    ratio = mean_out.div_(mean_low.clamp_min_(1.0 / 255.0))
    return torch.maximum(slope, ratio).clamp_(1.0, 30.0)


def _lee(x: torch.Tensor, mean: torch.Tensor, mean_sq: torch.Tensor, noise_var: torch.Tensor, radius: int) -> torch.Tensor:
    """Guided filter of ``x`` (its own guide) with the Wiener gain, from its window ``mean`` and
    ``mean_sq`` (box means of radius ``radius``)."""
    var = (mean_sq - mean * mean).clamp_min_(0.0)
    a = (var - noise_var).clamp_min_(0.0) / (var + 1e-12)
    coeffs = box_mean(torch.cat((a, mean - a * mean), dim=1), radius)
    channels = x.shape[1]
    return coeffs[:, :channels] * x + coeffs[:, channels:]


def _empirical_wiener(noisy: torch.Tensor, pilot: torch.Tensor, noise_var: torch.Tensor, radius: int) -> torch.Tensor:
    """A guided-filter-style local Wiener filter of ``noisy`` whose signal statistics (window
    mean and variance) come from ``pilot``, a first, smoother estimate, instead of from
    ``noisy variance - noise variance``: the two-stage idea of BM3D (Dabov et al. 2007).

    On the simulated pairs (benchmarks/quality/README.md, "What the default does") it raises the
    SSIM of the noisy sets on chroma and takes nothing from clean ones; on luma it blurs texture.
    Taking the window mean from the pilot too (not from ``noisy``) scores the same and saves two
    box means.
    """
    channels = noisy.shape[1]
    stats = box_mean(torch.cat((pilot, pilot * pilot), dim=1), radius)
    mean, mean_sq = stats.split(channels, dim=1)
    signal_var = (mean_sq - mean * mean).clamp_min_(0.0)
    a = signal_var / (signal_var + noise_var + 1e-12)
    coeffs = box_mean(torch.cat((a, mean - a * mean), dim=1), radius)
    return coeffs[:, :channels] * noisy + coeffs[:, channels:]


def finish_image(low: torch.Tensor, enhanced: torch.Tensor, config: FinishConfig) -> torch.Tensor:
    """Full-frame finishing of N x 3 x H x W images (params from :func:`params_copy` copies)."""
    params = finish_params(params_copy(low), params_copy(enhanced), config, scene_copy(low))
    return finish_tiles(low, enhanced, params, config)
