"""Checks of enhancement settings that need no torch (the driver validates before importing it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

from dce_batch.errors import ConfigError
from dce_batch.limits import MAX_SCALE, MAX_SIDE

__all__ = ["DEFAULT_EXPOSURE_TARGET", "DEFAULT_SCALES", "FAST_FINISH_METHOD", "FINISH_METHOD", "PRECISIONS",
           "RATIO_FINISH_METHODS", "UNMATCHED_FINISH_METHOD", "FinishConfig", "check_inference_settings",
           "colour_exponents_for", "parse_exposure", "resolve_scale"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")

# Downscale factor of the copy each variant estimates its curves on, when none is given.
# DCE-Net: 4, with guided upsampling (higher PSNR and SSIM than full resolution after finishing on
# the simulated pairs, for 1/16 of the network's work: benchmarks/quality/README.md, "Curves from
# a 4x smaller copy"). Zero-DCE++:
# 12, its authors' test setting.
DEFAULT_SCALES = {"full": 4.0, "fast": 12.0}


def resolve_scale(variant: str, scale: float | None) -> float:
    """``scale``, or the variant's default (:data:`DEFAULT_SCALES`) when None."""
    return DEFAULT_SCALES[variant] if scale is None else float(scale)


def check_inference_settings(*, strength: float, precision: str, scale: float | None, tile_size: int | None = None,
                             max_full_frame_pixels: int | None = None, batch_pixels: int | None = None) -> None:
    """ConfigError for the first invalid setting, with what is allowed."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"strength must be in [0, 1] (0 = unchanged, 1 = full model), got {strength}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if scale is not None and not 1 <= scale <= MAX_SCALE:  # NaN fails the comparison too
        raise ConfigError(f"scale must be from 1 to {MAX_SCALE:g} (a downscale factor; 1 = full resolution), got {scale}")
    if tile_size is not None and not 16 <= tile_size <= MAX_SIDE:
        raise ConfigError(f"tile_size must be from 16 to {MAX_SIDE} pixels, got {tile_size}")
    if max_full_frame_pixels is not None and max_full_frame_pixels < 1:
        raise ConfigError("max_full_frame_pixels must be positive")
    if batch_pixels is not None and batch_pixels < 1:
        raise ConfigError("batch_pixels must be positive")


DenoiseMode = Literal["auto", "fast", "off"]
ColourSetting = Literal["auto", "off"]
NoiseGain = Literal["slope", "ratio"]
ExposureSetting = Union[float, Literal["auto", "off"]]

# Mean luma (BT.709, non-linear) of well-exposed photographs on average (LOL's and Kodak24's
# references: benchmarks/quality/README.md, "What the default does", and "Harder simulated
# levels"): what `dce-batch evaluate` measures the exposure error against. "auto" exposure reads a
# target per image from the scene (dce_batch.enhance.exposure), between 0.15 and 0.62.
DEFAULT_EXPOSURE_TARGET = 0.45


# Names of the finishing algorithm in the output settings that resume compares, so that outputs
# made with other pixels are never silently mixed with new ones. Every name carries one version
# number (the last): bump FINISH_VERSION whenever the pixels of any path change (exposure and
# blacks, say, change them all).
FINISH_VERSION = 11
FINISH_METHOD = f"dct-wiener-bm-{FINISH_VERSION}"
# The DCT stage without block matching (``matched_noise_level=inf``).
UNMATCHED_FINISH_METHOD = f"dct-wiener-{FINISH_VERSION}"
# ``noise_gain="ratio"`` (with and without block matching).
RATIO_FINISH_METHODS = {True: f"dct-wiener-bm-ratio-{FINISH_VERSION}", False: f"dct-wiener-ratio-{FINISH_VERSION}"}
# ``denoise="fast"``: no DCT stage.
FAST_FINISH_METHOD = f"lee-wiener-{FINISH_VERSION}"


@dataclass(frozen=True)
class FinishConfig:
    """Settings of the finishing stage.

    Attributes:
        denoise: ``auto`` (noise-aware luma + chroma filtering, with the luma's DCT stage),
            ``fast`` (the same without the DCT stage: faster, noisier) or ``off``.
        denoise_strength: scales the smoothing threshold; 0 disables, 1 is the tuned
            default, 2 smooths harder.
        exposure: ``auto`` (the mean luma of dark inputs brought to the brightness their
            well-exposed version would have, read from the scene: :mod:`dce_batch.enhance.exposure`),
            a target mean luma in (0, 1) for every image, or ``off``.
        max_exposure_boost: bound on the exposure curve (the exponent never goes below
            1 / this), so near-black scenes are not pushed into noise.
        highlight_stretch: with exposure on, how much the exposure curve lifts the highlights
            of dark scenes (above 0.5, smoothly, never past 1), in [0, 1]; scaled down with the
            exposure correction for brighter and night scenes. 0 keeps the highlights as the
            curves left them.
        radius: half-width of the luma filter's windows (and of the one the local gain and the
            chroma's pilot are measured over), in pixels.
        luma_noise_factor, chroma_noise_factor: the noise variance each filter removes, as a
            multiple of the estimated local noise standard deviation (before ``denoise_strength``).
        dct_noise_factor: the same for the luma's DCT Wiener stage (``denoise="auto"``); 0
            skips that stage.
        matched_noise_level: in that stage, blocks whose local noise level (the standard
            deviation it removes, on the 0-1 scale) is at least this go through block matching
            (filtered with the most similar nearby blocks); ``math.inf`` matches none.
        noise_gain: how much the curves and the exposure amplified the input's noise at each
            pixel, under ``denoise="auto"``: ``slope`` (the default), the local slope of the
            output's luma against the input's (a regression over the filter's window), or the
            ratio of their window means where that is larger; ``ratio``, the ratio alone (which
            ``denoise="fast"`` always uses).
        colour: ``auto`` takes the network's own colour cast out of its output, where its weights
            declare one (the shipped DCE-Net weights do: :class:`~dce_batch.enhance.registry.ShippedWeights`);
            ``off`` keeps the curves' colour.
        colour_exponents: what ``auto`` applies: a power on each of R, G and B of the network's
            output (sRGB values in [0, 1], so black and white stay where they are), filled in from
            the weights by the :class:`~dce_batch.enhance.enhancer.Enhancer`
            (:func:`colour_exponents_for`); 1, 1, 1 changes nothing.
        chroma_refine_radius: half-width of the windows of chroma's empirical Wiener filter;
            0 filters chroma like luma instead (one pass). The tiling halo
            is :func:`dce_batch.enhance.finishing.finish_halo` (25 by default: the DCT stage's groups).
    """

    denoise: DenoiseMode = "auto"
    denoise_strength: float = 1.0
    exposure: ExposureSetting = "auto"
    max_exposure_boost: float = 4.0
    highlight_stretch: float = 0.8
    radius: int = 3
    luma_noise_factor: float = 0.9
    chroma_noise_factor: float = 3.0
    chroma_refine_radius: int = 5
    dct_noise_factor: float = 1.35
    matched_noise_level: float = 0.05
    noise_gain: NoiseGain = "slope"
    colour: ColourSetting = "auto"
    colour_exponents: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.colour not in ("auto", "off"):
            raise ConfigError(f"colour must be 'auto' or 'off', got {self.colour!r}")
        if len(self.colour_exponents) != 3 or not all(0.5 <= float(e) <= 2.0 for e in self.colour_exponents):
            raise ConfigError(f"colour_exponents must be three exponents in [0.5, 2], got {self.colour_exponents!r}")
        if self.denoise not in ("auto", "fast", "off"):
            raise ConfigError(f"denoise must be 'auto', 'fast' or 'off', got {self.denoise!r}")
        if not 0.0 <= self.denoise_strength <= 4.0:
            raise ConfigError(f"denoise strength must be in [0, 4] (1 = default), got {self.denoise_strength}")
        if isinstance(self.exposure, str):
            if self.exposure not in ("auto", "off"):
                raise ConfigError(f"exposure must be 'auto', 'off' or a target mean brightness in (0, 1), "
                                  f"got {self.exposure!r}")
        elif isinstance(self.exposure, bool) or not 0.0 < float(self.exposure) < 1.0:
            raise ConfigError(f"exposure target must be a mean brightness in (0, 1), e.g. 0.45; got {self.exposure!r}")
        if not 0.0 <= self.highlight_stretch <= 1.0:
            raise ConfigError(f"highlight stretch must be in [0, 1] (0 = none), got {self.highlight_stretch}")
        if self.max_exposure_boost < 1.0:
            raise ConfigError(f"max_exposure_boost must be >= 1, got {self.max_exposure_boost}")
        if not 1 <= self.radius <= 32:
            raise ConfigError(f"radius must be in 1..32 pixels, got {self.radius}")
        if not 0 <= self.chroma_refine_radius <= 32:
            raise ConfigError(f"chroma_refine_radius must be in 0..32 pixels (0 filters chroma like luma), "
                              f"got {self.chroma_refine_radius}")
        if self.luma_noise_factor < 0 or self.chroma_noise_factor < 0 or self.dct_noise_factor < 0:
            raise ConfigError("noise factors must be non-negative")
        if self.noise_gain not in ("slope", "ratio"):
            raise ConfigError(f"noise_gain must be 'slope' or 'ratio', got {self.noise_gain!r}")
        if not self.matched_noise_level >= 0:
            raise ConfigError(f"matched_noise_level must be >= 0 (inf: no block matching), "
                              f"got {self.matched_noise_level}")

    @property
    def denoising(self) -> bool:
        return self.denoise != "off" and self.denoise_strength > 0

    @property
    def dct_stage(self) -> bool:
        """Whether the luma goes through the DCT Wiener stage after the guided filter."""
        return self.denoising and self.denoise == "auto" and self.dct_noise_factor > 0

    @property
    def block_matching(self) -> bool:
        """Whether the DCT stage filters strong-noise blocks with block matching."""
        return self.dct_stage and self.matched_noise_level != math.inf

    @property
    def method(self) -> str:
        """The algorithm's name that output settings record (see :data:`FINISH_METHOD`)."""
        if not self.dct_stage:
            return FAST_FINISH_METHOD
        if self.noise_gain == "ratio":
            return RATIO_FINISH_METHODS[self.block_matching]
        return FINISH_METHOD if self.block_matching else UNMATCHED_FINISH_METHOD

    @property
    def exposure_target(self) -> float | None:
        if self.exposure == "off":
            return None
        return DEFAULT_EXPOSURE_TARGET if self.exposure == "auto" else float(self.exposure)

    @property
    def takes_out_cast(self) -> bool:
        """Whether the colour correction changes any pixel (``auto``, with weights that declare a cast)."""
        return self.colour != "off" and any(e != 1.0 for e in self.colour_exponents)

    @property
    def enabled(self) -> bool:
        """False when finishing changes nothing (the caller may skip it)."""
        return self.denoising or self.exposure_target is not None


def colour_exponents_for(bias: tuple[float, float] | None) -> tuple[float, float, float]:
    """Powers on a network output's sRGB values that take out a colour ``bias`` (log R/G, log B/G
    of its mean linear colour against the reference's; None: none).

    The gains that would take it out in linear light are ``exp(-bias)`` on R and B (1 on G),
    divided by the largest so that no channel is raised. sRGB values follow roughly a power of
    1/2.4 of linear light, so on them the gain is about that gain to the power 1/2.4. A power
    curve ``x ** e`` gives that sRGB gain at mid-grey (0.5) and keeps black and white where they
    are (a plain gain turned white highlights yellow): ``e = 1 - log2(gain)``. (At mid-grey that
    is within 2.5 % of the linear gain asked for: 0.844 for 0.828 on blue.) The exposure fit then
    brings the mean back to its target. On the simulated and real pairs the power gained 0.004 to
    0.09 dB more than the plain gain (benchmarks/quality/README.md, "The network's colour cast").
    """
    if bias is None:
        return (1.0, 1.0, 1.0)
    linear = (math.exp(-bias[0]), 1.0, math.exp(-bias[1]))
    top = max(linear)
    return tuple(round(1.0 - math.log2((g / top) ** (1 / 2.4)), 6) for g in linear)  # type: ignore[return-value]


def parse_exposure(text: str) -> ExposureSetting:
    """``--exposure`` on a command line: ``auto``, ``off`` or a target mean brightness (0.45)."""
    text = text.strip().lower()
    if text in ("auto", "off"):
        return text  # type: ignore[return-value]
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--exposure must be auto, off or a target mean brightness in (0, 1), got {text!r}") from None
    FinishConfig(exposure=value)  # validates the range with the same message as the config
    return value


