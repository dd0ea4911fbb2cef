"""DCE-Net (Zero-DCE) and its fast variant (Zero-DCE++), with the light-enhancement curve.

Zero-DCE (Guo et al., CVPR 2020) predicts per-pixel curve parameters ``A`` and brightens an image
in [0, 1] by iterating the quadratic light-enhancement curve

    LE(x) = x + A * x * (1 - x)        (written x + A * (x^2 - x) with A in [-1, 1])

eight times. ``A`` in [-1, 1] keeps every iterate in [0, 1] and the curve monotonic.

* :class:`DCENet` is the authors' network: 7 plain 3x3 convolutions with 32 channels, symmetric
  skip concatenations ``[x3, x4]``, ``[x2, x5]``, ``[x1, x6]``, and ``tanh`` on 24 maps (8
  iterations x 3 channels). 79,416 parameters, fully convolutional.
* :class:`DCENetFast` is Zero-DCE++: depthwise-separable convolutions, 3 maps reused by all 8
  iterations, estimated on a bilinearly downscaled copy and upsampled back (``align_corners``
  as in the authors' test script). 10,561 parameters. Any input size works: the downscaled size
  is rounded, not the input cropped.

Both can estimate their curves on a copy downscaled by ``scale`` (an inference setting, not a
weight). The fast variant samples that copy and upsamples its maps bilinearly, as its authors do.
DCE-Net's copy is an area average (the noise of the pixels averaged too), and it upsamples its
24 maps with the guided filter's joint upsampling, guided by the input's luma: the maps follow
the image's edges instead of bleeding a glow around lamps and windows, and every pixel still
goes through its own curve (so highlights keep their detail). On simulated low-light pairs
(``benchmarks/quality/README.md``), scale 4 scores higher than full resolution after finishing (the
curves see less sensor noise and keep the scene's contrast), for 1/16 of the network's work.

Both return :class:`CurveOutput` so that training (which needs the curve maps for the
illumination-smoothness loss) and inference share one forward pass. ``strength`` in [0, 1]
scales the curve maps: 0 is the identity, 1 the model as trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dce_batch.errors import ConfigError
from dce_batch.limits import MAX_SCALE
from dce_batch.enhance.filters import guided_coefficients, luma

__all__ = [
    "CURVE_ITERATIONS",
    "RECEPTIVE_FIELD_RADIUS",
    "CurveOutput",
    "DCENet",
    "DCENetFast",
    "ModelVariant",
    "apply_curves",
    "build_model",
    "count_parameters",
    "downscaled_size",
    "init_weights",
]

CURVE_ITERATIONS = 8
# Seven 3x3 convolutions: an output pixel depends on inputs at most 7 pixels away. Tiles
# padded by this many pixels of real image give exactly the full-frame result.
RECEPTIVE_FIELD_RADIUS = 7

ModelVariant = Literal["full", "fast"]

# DCE-Net's guided upsampling: windows of 3 x 3 pixels of the downscaled copy, and the luma
# variance below which a window keeps its mean maps (luma in [0, 1]; chosen on crops of lamps
# against dark walls, where this value leaves no glow at scale 4 and a larger one lets more of it
# back: benchmarks/quality/README.md, "Curves from a 4x smaller copy").
GUIDED_RADIUS = 1
GUIDED_EPS = 1e-4


def downscaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size the curve maps are estimated at: ``round(size / scale)``, at least 1."""
    return max(1, round(height / scale)), max(1, round(width / scale))


def _check_scale(scale: float) -> float:
    if not 1 <= scale <= MAX_SCALE:  # NaN fails the comparison too
        raise ConfigError(f"scale must be from 1 to {MAX_SCALE:g} (a downscale factor), got {scale}")
    return float(scale)


@dataclass
class CurveOutput:
    """What a forward pass gives.

    Attributes:
        image: the enhanced image, N x 3 x H x W (not clamped; the curve keeps [0, 1] inputs in [0, 1]).
        curves: the curve maps at the resolution they were estimated, N x (3 * k) x h x w with
            k = 8 for DCE-Net and k = 1 for the fast variant (its one map is reused 8 times).
    """

    image: torch.Tensor
    curves: torch.Tensor


def apply_curves(x: torch.Tensor, curves: torch.Tensor, iterations: int = CURVE_ITERATIONS) -> torch.Tensor:
    """Apply ``iterations`` light-enhancement curves to ``x`` (N x 3 x H x W).

    ``curves`` is N x 3k x H x W: with k == iterations each iteration has its own map (DCE-Net);
    with k == 1 the same map is used by every iteration (Zero-DCE++). The arithmetic is the
    authors' ``x + A * (x^2 - x)`` term for term, which the parity tests rely on.
    """
    maps_per_iteration = curves.shape[1] // 3
    if maps_per_iteration not in (1, iterations) or curves.shape[1] % 3:
        raise ValueError(f"curves must have 3 or {3 * iterations} channels, got {curves.shape[1]}")
    if maps_per_iteration == 1:
        for _ in range(iterations):
            x = x + curves * (torch.pow(x, 2) - x)
        return x
    for a in torch.split(curves, 3, dim=1):
        x = x + a * (torch.pow(x, 2) - x)
    return x


def _curve_head(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The seven layers shared by both variants (e_conv1..7 with symmetric skips, tanh out).

    Activations are released as soon as the last skip using them is done (``del``), which
    lowers peak inference memory by a third; autograd keeps what it needs regardless.
    """
    x1 = F.relu(net.e_conv1(x))
    x2 = F.relu(net.e_conv2(x1))
    x3 = F.relu(net.e_conv3(x2))
    x4 = F.relu(net.e_conv4(x3))
    x5 = F.relu(net.e_conv5(torch.cat([x3, x4], 1)))
    del x3, x4
    x6 = F.relu(net.e_conv6(torch.cat([x2, x5], 1)))
    del x2, x5
    return torch.tanh(net.e_conv7(torch.cat([x1, x6], 1)))


class DCENet(nn.Module):
    """The Zero-DCE curve estimation network ("enhance_net_nopool" in the authors' code).

    ``scale`` is an inference setting, not a weight: 1 (the default, and the authors' test
    script) estimates the curves at the input's resolution; above 1 they are estimated on a copy
    downscaled by that factor (area averaging), and the maps are brought back to full
    resolution by guided upsampling (see the module docstring).
    """

    variant: ModelVariant = "full"
    curve_maps = 3 * CURVE_ITERATIONS
    upsampling_halo = 2 * GUIDED_RADIUS  # rows of context upsampling_source needs (two box means)

    def __init__(self, channels: int = 32, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = _check_scale(scale)
        c = channels
        # Parameter names match the authors' checkpoint (e_conv1..7) so it loads without mapping.
        self.e_conv1 = nn.Conv2d(3, c, 3, 1, 1)
        self.e_conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.e_conv3 = nn.Conv2d(c, c, 3, 1, 1)
        self.e_conv4 = nn.Conv2d(c, c, 3, 1, 1)
        self.e_conv5 = nn.Conv2d(2 * c, c, 3, 1, 1)
        self.e_conv6 = nn.Conv2d(2 * c, c, 3, 1, 1)
        self.e_conv7 = nn.Conv2d(2 * c, self.curve_maps, 3, 1, 1)

    def downscaled_size(self, height: int, width: int) -> tuple[int, int]:
        return downscaled_size(height, width, self.scale)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The 24 curve maps in [-1, 1] of an N x 3 x H x W input in [0, 1], at its resolution."""
        return _curve_head(self, x)

    def downscale(self, x: torch.Tensor) -> torch.Tensor:
        """The copy the curves are estimated on (``x`` itself at scale 1): area averaging
        (``adaptive_avg_pool2d``), which averages the sensor noise too, and which the batch job
        computes strip by strip without a full-resolution float copy (it scores as antialiased
        bilinear does: benchmarks/quality/README.md, "Curves from a 4x smaller copy")."""
        if self.scale == 1.0:
            return x
        return F.adaptive_avg_pool2d(x, self.downscaled_size(x.shape[-2], x.shape[-1]))

    def estimate_curves(self, x: torch.Tensor) -> torch.Tensor:
        """The 24 curve maps at the downscaled resolution (N x 24 x h x w)."""
        return _curve_head(self, self.downscale(x))

    @staticmethod
    def upsampling_source(small: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
        """What is upsampled to full resolution: the guided filter's coefficients of the 24 maps
        against the small copy's luma (N x 48 x h x w; see :meth:`apply_upsampled`)."""
        return guided_coefficients(luma(small), curves, GUIDED_RADIUS, GUIDED_EPS)

    @staticmethod
    def apply_upsampled(upsampled: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The enhanced full-resolution image from upsampled coefficients: maps ``a * luma(x) +
        b``, kept in the tanh's [-1, 1] (every curve stays monotonic and inside [0, 1])."""
        maps = upsampled.shape[1] // 2
        curves = torch.addcmul(upsampled[:, maps:], upsampled[:, :maps], luma(x)).clamp_(-1.0, 1.0)
        return apply_curves(x, curves)

    def forward(self, x: torch.Tensor, strength: float = 1.0) -> CurveOutput:
        small = self.downscale(x)
        curves = _curve_head(self, small)
        if strength != 1.0:
            curves = curves * strength
        if self.scale == 1.0:
            return CurveOutput(image=apply_curves(x, curves), curves=curves)
        source = F.interpolate(self.upsampling_source(small, curves), size=x.shape[-2:], mode="bilinear",
                               align_corners=True)
        return CurveOutput(image=self.apply_upsampled(source, x), curves=curves)


class _DepthwiseSeparableConv(nn.Module):
    """3x3 depthwise then 1x1 pointwise convolution ("CSDN_Tem" in the authors' code)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depth_conv = nn.Conv2d(in_channels, in_channels, 3, 1, 1, groups=in_channels)
        self.point_conv = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class DCENetFast(nn.Module):
    """Zero-DCE++: curve maps estimated on a copy downscaled by ``scale``, then upsampled.

    ``scale`` is an inference setting, not a weight: the same weights run at any scale
    (the authors train at 1 and test at 12 for large photos).
    """

    variant: ModelVariant = "fast"
    curve_maps = 3
    upsampling_halo = 0

    def __init__(self, channels: int = 32, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = _check_scale(scale)
        c = channels
        self.e_conv1 = _DepthwiseSeparableConv(3, c)
        self.e_conv2 = _DepthwiseSeparableConv(c, c)
        self.e_conv3 = _DepthwiseSeparableConv(c, c)
        self.e_conv4 = _DepthwiseSeparableConv(c, c)
        self.e_conv5 = _DepthwiseSeparableConv(2 * c, c)
        self.e_conv6 = _DepthwiseSeparableConv(2 * c, c)
        self.e_conv7 = _DepthwiseSeparableConv(2 * c, self.curve_maps)

    def downscaled_size(self, height: int, width: int) -> tuple[int, int]:
        return downscaled_size(height, width, self.scale)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The 3 curve maps of ``x`` at its own resolution (no downscaling)."""
        return _curve_head(self, x)

    def estimate_curves(self, x: torch.Tensor) -> torch.Tensor:
        """The 3 curve maps at the downscaled resolution (N x 3 x h x w)."""
        if self.scale != 1.0:
            # Same sampling as the authors' F.interpolate(x, scale_factor=1/s, mode="bilinear")
            # whenever the size divides evenly; any other size rounds instead of failing.
            x = F.interpolate(x, size=self.downscaled_size(x.shape[-2], x.shape[-1]), mode="bilinear", align_corners=False)
        return _curve_head(self, x)

    @staticmethod
    def upsample_curves(curves: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bilinear upsampling with ``align_corners=True`` (nn.UpsamplingBilinear2d in the authors' code)."""
        if tuple(curves.shape[-2:]) == tuple(size):
            return curves
        return F.interpolate(curves, size=size, mode="bilinear", align_corners=True)

    @staticmethod
    def upsampling_source(small: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
        """What is upsampled to full resolution: the maps themselves."""
        return curves

    @staticmethod
    def apply_upsampled(upsampled: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The enhanced full-resolution image from the upsampled maps."""
        return apply_curves(x, upsampled)

    def forward(self, x: torch.Tensor, strength: float = 1.0) -> CurveOutput:
        curves = self.estimate_curves(x)
        if strength != 1.0:
            curves = curves * strength
        full = self.upsample_curves(curves, (x.shape[-2], x.shape[-1]))
        return CurveOutput(image=apply_curves(x, full), curves=curves)


def build_model(variant: ModelVariant = "full", *, scale: float = 1.0) -> DCENet | DCENetFast:
    """A freshly initialised network of the given variant, estimating its curves at ``scale``."""
    if variant == "full":
        return DCENet(scale=scale)
    if variant == "fast":
        return DCENetFast(scale=scale)
    raise ConfigError(f"unknown model variant {variant!r}: choose 'full' (Zero-DCE) or 'fast' (Zero-DCE++)")


def init_weights(model: nn.Module) -> None:
    """The authors' initialisation: conv weights from N(0, 0.02), biases left at PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
