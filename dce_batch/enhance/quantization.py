"""int8 inference of the curve network on x86 CPUs (``precision="int8"``, the CPU default).

CPUs without native bf16 (AVX2-only machines: most laptops and many cloud VMs) run the network
in fp32, slower than a CPU with native bf16 runs it. Post-training static quantization makes
the seven convolutions int8 (oneDNN's kernels: AVX2's ``vpmaddubsw`` or AVX-512 VNNI): faster
than fp32 with kernels capped at AVX2, and faster than fp32 and bf16 on an AVX-512 CPU with
native bf16 (``benchmarks/bench_throughput.py --quick``; figures in ``benchmarks/README.md``,
"int8 against fp32 and bf16").

Only the curve estimation is quantized: the input image, the 8 curve iterations and the
finishing stay float32, so a curve-map error ``dA`` moves a pixel by about ``dA * x * (1 - x)``
per iteration, least in the shadows that the curves lift most. On real photos the outputs stay
within a few 8-bit steps of fp32's, with AVX2 and AVX-512 kernels alike, and PSNR/SSIM on the
simulated pairs match fp32's (``benchmarks/README.md``, "int8 against fp32 and bf16";
``benchmarks/quality/README.md``).

Details that matter:

* Activations are quantized to 7 bits (``reduce_range``): without VNNI the u8 x s8 multiply-adds
  saturate at int16 otherwise, and the outputs drift by many 8-bit steps with torch's default
  oneDNN config (``benchmarks/README.md``, "Figures behind design choices in the code").
* Weights are per-channel symmetric int8. Activation ranges are the min/max over a fixed
  calibration set: the bundled sample photos (``dce_batch/samples``), four 32-pixel corner crops
  each, as they are and brightened (gamma 0.5). Every process derives the same model, cheaply,
  when it starts.
* Bias correction (Nagel et al., 2019): ReLU clips the rounding noise below zero, so each
  layer's error has a nonzero mean, which the 8 curve iterations add up; each convolution's bias
  absorbs its mean error on the calibration crops. Without it the outputs are darker on average
  than fp32's (``benchmarks/README.md``, "int8 against fp32 and bf16").
* e_conv7's output feeds no convolution: it gets all 8 bits, and ``tanh`` runs in float32.
* Hand-built from ``torch.ao.nn.quantized`` modules rather than torch's FX flow: FX's tracer
  imports torch._inductor (a slow start in every process) and is deprecated for torchao's pt2e flow, which
  reaches int8 kernels only through torch.compile (a C++ toolchain at run time).
"""

from __future__ import annotations

import copy
import functools
import platform
import warnings
from importlib import resources

import numpy as np
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.nn import functional as F

from dce_batch.errors import ConfigError

__all__ = ["INT8_ENGINE", "QuantizedCurveHead", "calibration_crops", "int8_available", "int8_refusal",
           "quantize_curve_head"]

#: torch's quantized engine for int8 convolutions (oneDNN: honours the CPU's ISA, x86 only).
INT8_ENGINE = "onednn"

_CROP, _GRID = 32, 2       # 32-pixel crops on a _GRID x _GRID grid over each sample
_GAMMAS = (1.0, 0.5)        # the samples as they are (dark), and brightened


def int8_available() -> bool:
    """Whether this torch build and CPU can run the int8 network (x86-64 with oneDNN)."""
    return (platform.machine().lower() in ("x86_64", "amd64")
            and INT8_ENGINE in torch.backends.quantized.supported_engines)


def int8_refusal(variant: str) -> str | None:
    """Why a model of ``variant`` cannot run in int8 here, as a message naming what to use
    instead; None when it can."""
    if not int8_available():
        return (f"int8 needs an x86-64 CPU and a torch build with oneDNN (this is {platform.machine()}; "
                f"engines {torch.backends.quantized.supported_engines}); use --precision auto or fp32")
    if variant != "full":
        return "int8 quantizes DCE-Net (the full model); run the fast variant with --precision auto, fp32 or bf16"
    return None


@functools.lru_cache(maxsize=4)
def calibration_crops(scale: float = 1.0) -> torch.Tensor:
    """N x 3 x 32 x 32 float32 crops of the bundled samples (4 per image, at 2 brightnesses), as
    the network sees them at ``scale``: each sample downscaled first, as DCE-Net downscales (area
    averaging), so the activations are calibrated on the statistics they will have: with
    full-resolution crops int8 comes out darker than fp32 on average at scale 4, with these it
    does not, with oneDNN capped at AVX2 too (``benchmarks/quality/README.md``, "Curves from a 4x
    smaller copy"). Samples too small for a crop are skipped.
    """
    from PIL import Image

    from dce_batch.enhance.network import downscaled_size

    crops = []
    for entry in sorted(resources.files("dce_batch").joinpath("samples").iterdir(), key=lambda e: e.name):
        if not entry.name.lower().endswith((".jpg", ".png")):
            continue
        with resources.as_file(entry) as path, Image.open(path) as image:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        pixels = pixels.permute(2, 0, 1).unsqueeze(0)
        height, width = pixels.shape[-2:]
        if scale != 1.0:
            pixels = F.adaptive_avg_pool2d(pixels, downscaled_size(height, width, scale))
            height, width = pixels.shape[-2:]
        if min(height, width) < _CROP:
            continue
        for top in np.linspace(0, height - _CROP, _GRID).round().astype(int):
            for left in np.linspace(0, width - _CROP, _GRID).round().astype(int):
                crop = pixels[..., top:top + _CROP, left:left + _CROP].contiguous()
                crops.extend(crop.pow(gamma) for gamma in _GAMMAS)
    if not crops:
        if scale != 1.0:
            return calibration_crops(1.0)  # every sample smaller than a crop at this scale
        raise ConfigError("the bundled sample images are missing: int8 calibration needs them (reinstall dce-batch)")
    return torch.cat(crops)


_ACTIVATION_LEVELS = 127  # 7-bit activations (reduce_range): see the module docstring
_CONVS = tuple(f"e_conv{i}" for i in range(1, 8))


def _quantized_weight(conv: nn.Conv2d) -> torch.Tensor:
    """``conv``'s weights, per-channel symmetric int8."""
    weight = conv.weight.detach().float()
    weight_scales = (weight.abs().amax(dim=(1, 2, 3)) / 127.5).clamp_min(1e-12).double()
    return torch.quantize_per_channel(weight, weight_scales, torch.zeros_like(weight_scales, dtype=torch.long),
                                      axis=0, dtype=torch.qint8)


def _quantized_conv(conv: nn.Conv2d, qweight: torch.Tensor, bias: torch.Tensor, relu: bool, scale: float,
                    zero_point: int) -> nn.Module:
    """``conv`` (3x3, padding 1) with int8 weights ``qweight``, float ``bias`` and the given output qparams."""
    kind = nniq.ConvReLU2d if relu else nnq.Conv2d
    module = kind(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
    module.set_weight_bias(qweight, bias)
    module.scale, module.zero_point = float(scale), int(zero_point)
    return module


# The input of each convolution: the image, one earlier output, or the concatenation of two
# (the symmetric skips of dce_batch.enhance.network._curve_head).
_SOURCES = {"e_conv1": (), "e_conv2": ("e_conv1",), "e_conv3": ("e_conv2",), "e_conv4": ("e_conv3",),
            "e_conv5": ("e_conv3", "e_conv4"), "e_conv6": ("e_conv2", "e_conv5"), "e_conv7": ("e_conv1", "e_conv6")}


class QuantizedCurveHead(nn.Module):
    """DCE-Net's head (:func:`dce_batch.enhance.network._curve_head`) with int8 convolutions.

    ReLU is fused into e_conv1..6; each skip concatenation is requantized to the larger range of
    its two inputs; e_conv7's output is dequantized and ``tanh`` runs in float32. Build it with
    :func:`quantize_curve_head`.

    Each convolution is built once, layer by layer on the calibration ``crops``, with bias
    correction (Nagel et al. 2019): its bias absorbs the mean error that its quantized input and
    weights add to its output. The ReLUs clip rounding noise below zero, so uncorrected errors
    have a nonzero mean, and the 8 curve iterations add up what reaches the curve maps.
    ``pre_activations``: the float model's convolution outputs on ``crops``.
    """

    def __init__(self, model: nn.Module, crops: torch.Tensor, pre_activations: dict[str, torch.Tensor]) -> None:
        super().__init__()
        # The largest ReLU output of e_conv1..6 and the largest |output| of e_conv7 (min/max
        # observers over the calibration crops).
        peaks = {name: float((out.abs() if name == "e_conv7" else out).max()) for name, out in pre_activations.items()}
        # Output (scale, zero point) per convolution. Post-ReLU activations are in [0, peak]: zero
        # point 0, 127 levels. e_conv7's output (before tanh) is signed and no convolution reads
        # it: all 8 bits, symmetric around zero.
        self.qparams = {**{name: (max(peaks[name], 1e-6) / _ACTIVATION_LEVELS, 0) for name in _CONVS[:6]},
                        "e_conv7": (2 * max(peaks["e_conv7"], 1e-6) / 255, 128)}
        self.input_scale = 1.0 / _ACTIVATION_LEVELS  # images are in [0, 1]
        image = torch.quantize_per_tensor(crops.float(), self.input_scale, 0, torch.quint8)
        outputs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name in _CONVS:
                conv = getattr(model, name)
                quantized_input = self._input_of(name, outputs, image)
                qweight = _quantized_weight(conv)
                bias = torch.zeros(conv.out_channels) if conv.bias is None else conv.bias.detach().float()
                estimate = F.conv2d(quantized_input.dequantize(), qweight.dequantize(), bias, padding=1)
                bias = bias - (estimate - pre_activations[name]).mean(dim=(0, 2, 3))
                module = _quantized_conv(conv, qweight, bias, name != "e_conv7", *self.qparams[name])
                setattr(self, name, module)
                outputs[name] = module(quantized_input)

    def _input_of(self, name: str, outputs: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        sources = _SOURCES[name]
        if not sources:
            return image
        if len(sources) == 1:
            return outputs[sources[0]]
        scale = max(self.qparams[source][0] for source in sources)
        return torch.ops.quantized.cat([outputs[s] for s in sources], dim=1, scale=scale, zero_point=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = torch.quantize_per_tensor(x.float(), self.input_scale, 0, torch.quint8)
        outputs: dict[str, torch.Tensor] = {}
        for name in _CONVS:
            outputs[name] = getattr(self, name)(self._input_of(name, outputs, image))
        return torch.tanh(outputs["e_conv7"].dequantize())


def _pre_activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each convolution's output (before ReLU / tanh) in the float model on ``x``."""
    captured: dict[str, torch.Tensor] = {}
    handles = [getattr(model, name).register_forward_hook(
        lambda _m, _i, output, name=name: captured.__setitem__(name, output)) for name in _CONVS]
    try:
        with torch.no_grad():
            model.head(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def quantize_curve_head(model: nn.Module) -> nn.Module:
    """An int8 copy of DCE-Net's ``head`` (float32 N x 3 x H x W in, curve maps float32 out).

    ``model`` (a float32 :class:`~dce_batch.enhance.network.DCENet`) is not modified. Raises ConfigError
    where int8 cannot run.
    """
    refusal = int8_refusal(getattr(model, "variant", ""))
    if refusal:
        raise ConfigError(refusal)
    torch.backends.quantized.engine = INT8_ENGINE
    reference = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notes about migrating to torchao
        crops = calibration_crops(float(getattr(model, "scale", 1.0)))
        pre_activations = _pre_activations(reference, crops)
        return QuantizedCurveHead(reference, crops, pre_activations).eval()
