"""Enhancing images: the network applied to whole images of any size, several at once.

:class:`Enhancer` turns H x W x 3 images (uint8, uint16 or float32 in [0, 1]) into enhanced images
of the same size and dtype. Integer images stay integers end to end: each window is converted to
float on the device and the result is rounded back per window, so memory holds the image twice in
its own depth (not as float32) and a GPU receives uint8, a quarter of the bytes.

At scale 1 a large image is cut into windows whose cores give exactly the full-frame result
(:mod:`dce_batch.enhance.tiling`); windows of equal shape, from one image or several, share a
forward pass up to ``batch_pixels``.

At scale > 1 (DCE-Net's default is 4) the curve maps are estimated on a downscaled copy of the
whole image (small, itself tiled like above when large; small copies of one shape share a forward
pass up to ``batch_pixels``, so a GPU gets batches), then what the model upsamples (the fast
variant's 3 maps, DCE-Net's guided-filter coefficients) is computed in bands of rows and applied
in horizontal strips (:mod:`dce_batch.enhance.upsampling`): the result is the same whatever the
bands and strips, and no full-resolution map of the whole image is held.

The device and the precision the network runs in are decided by
:mod:`dce_batch.enhance.precision`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from dce_batch.enhance.finishing import (FinishConfig, finish_halo, finish_params, finish_tiles, params_copy,
                                         scene_copy)
from dce_batch.enhance.network import RECEPTIVE_FIELD_RADIUS, DCENet, DCENetFast, apply_curves
from dce_batch.enhance.precision import (
    NETWORK_DTYPES,
    Precision,
    flush_denormals,
    prepare_cpu_process,
    resolve_device,
    resolve_precision,
)
from dce_batch.enhance.quantization import quantize_curve_head
from dce_batch.enhance.registry import declared_colour_bias
from dce_batch.enhance.settings import check_inference_settings, colour_exponents_for, resolve_scale
from dce_batch.enhance.tiling import Window, balanced_grid, window_grid
from dce_batch.enhance.upsampling import source_positions, upsample_rows_align_corners
from dce_batch.enhance.weights import LoadedWeights

__all__ = ["EnhanceResult", "Enhancer", "InferenceConfig"]

_INTEGER_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}

#: Pixels per strip where curves estimated on a downscaled copy are applied to the full image.
_STRIP_PIXELS = 16_384
#: Pixels of the small copy whose upsampling source is computed at once: bounds its memory (DCE-Net:
#: 192 bytes each, 25 MB) while a photo of a few megapixels still takes one band.
_SOURCE_BAND_PIXELS = 131_072

@dataclass(frozen=True)
class InferenceConfig:
    """How to run the network.

    Attributes:
        strength: scales the curve maps; 0 leaves the image unchanged, 1 is the model as trained.
        precision: ``auto`` (on CPUs int8 for DCE-Net where oneDNN runs it, else native bf16
            where the hardware has it, else fp32; on CUDA bf16, or fp16 where bf16 is missing),
            ``fp32``, ``bf16`` (CUDA, or CPUs with native bf16), ``fp16`` (CUDA only), ``int8``
            (x86 CPUs, DCE-Net only: :mod:`dce_batch.enhance.quantization`).
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``.
        scale: the curves are estimated on a copy downscaled by this factor (1: at full
            resolution); ``None`` takes the variant's default (:data:`DEFAULT_SCALES`: 4 for
            DCE-Net, with guided upsampling; 12 for the fast variant).
        tile_size: side of a window's core when tiling; ``None`` picks per device (below).
        max_full_frame_pixels: images up to this many pixels run as one window; larger ones are
            tiled. ``None`` picks per device.
        batch_pixels: at most this many pixels go through the network in one call (windows of
            several images are stacked up to it). ``None`` picks per device.
        finish: denoising and exposure after the curves (:mod:`dce_batch.enhance.finishing`), or None
            for the network alone. The job turns it on by default.

    CPU defaults: 256-pixel tiles above two tiles' worth of pixels (small windows stay in cache
    and keep memory flat), one window per call. GPU defaults: 1024-pixel tiles above 2 MP, and
    up to 8 MP per call so that a GPU gets large batches.
    """

    strength: float = 1.0
    precision: Precision = "auto"
    device: str = "auto"
    scale: float | None = None
    tile_size: int | None = None
    max_full_frame_pixels: int | None = None
    batch_pixels: int | None = None
    finish: FinishConfig | None = None

    def __post_init__(self) -> None:
        check_inference_settings(strength=self.strength, precision=self.precision, scale=self.scale,
                                 tile_size=self.tile_size, max_full_frame_pixels=self.max_full_frame_pixels,
                                 batch_pixels=self.batch_pixels)

    def for_device(self, device: torch.device, variant: str = "full") -> "InferenceConfig":
        """These settings with the per-device defaults filled in (precision resolved too, for a
        model of ``variant``)."""
        cuda = device.type == "cuda"
        tile = self.tile_size or (1024 if cuda else 256)
        budget = self.max_full_frame_pixels or (2_097_152 if cuda else 2 * tile * tile)
        batch = self.batch_pixels or (8_388_608 if cuda else 1)
        return replace(self, tile_size=tile, max_full_frame_pixels=budget, batch_pixels=batch,
                       precision=resolve_precision(self.precision, device, variant),
                       scale=resolve_scale(variant, self.scale))


@dataclass(frozen=True)
class EnhanceResult:
    pixels: np.ndarray  # H x W x 3, the input's dtype
    tiled: bool



class Enhancer:
    """A loaded network plus settings; call :meth:`enhance` or :meth:`enhance_batch` on images.

    Build one per process (a Ray actor builds one in its constructor) and reuse it.
    """

    def __init__(self, weights: LoadedWeights, config: InferenceConfig = InferenceConfig()) -> None:
        self.device = resolve_device(config.device)
        config = self.config = config.for_device(self.device, weights.meta.variant)
        if self.device.type == "cpu":
            prepare_cpu_process()
        self.weights = weights
        self.model: DCENet | DCENetFast = weights.build(scale=config.scale)
        self.network_dtype = NETWORK_DTYPES[config.precision]
        # Channels-last: the images arrive as H x W x 3 (so the layout is free) and oneDNN's
        # convolutions are faster on it (benchmarks/bench_throughput.py).
        self.model.to(self.device, self.network_dtype).to(memory_format=torch.channels_last)
        self._head = quantize_curve_head(self.model) if config.precision == "int8" else self.model.head
        # Halo of real pixels around each window (an attribute so a test can show 6 is not enough).
        self.halo = RECEPTIVE_FIELD_RADIUS
        # What the finishing's colour="auto" applies: the cast these weights are known to add.
        self.colour_exponents = colour_exponents_for(declared_colour_bias(weights.meta.name, weights.meta.sha256))

    @property
    def variant(self) -> str:
        return self.model.variant

    @property
    def _strip_pixels(self) -> int:
        """Pixels per strip of the downscaled path (see :meth:`_enhance_downscaled`)."""
        budget = self.config.max_full_frame_pixels
        return min(budget, _STRIP_PIXELS) if self.device.type == "cpu" else budget

    @property
    def precision(self) -> str:
        """The precision the network really runs in (``auto`` resolved for this device)."""
        return self.config.precision

    def _curves(self, x: torch.Tensor) -> torch.Tensor:
        """Curve maps of ``x`` (float32, on the device) at its own resolution, float32, strength applied."""
        curves = self._head(x.to(self.network_dtype)).float()
        if self.config.strength != 1.0:
            curves = curves * self.config.strength
        return curves

    @torch.inference_mode()
    def enhance(self, pixels: np.ndarray) -> EnhanceResult:
        """Enhance one H x W x 3 image (uint8, uint16, or float32 in [0, 1]); same size and dtype back."""
        return self.enhance_batch([pixels])[0]

    @torch.inference_mode()
    def enhance_batch(self, images: Sequence[np.ndarray]) -> list[EnhanceResult]:
        """Enhance several images; windows of equal shape from different images share a forward pass."""
        for pixels in images:
            if pixels.ndim != 3 or pixels.shape[2] != 3:
                raise ValueError(f"expected H x W x 3 pixels, got shape {pixels.shape}")
            if pixels.dtype not in _INTEGER_MAX and pixels.dtype != np.float32:
                raise ValueError(f"expected uint8, uint16 or float32 pixels, got {pixels.dtype}")
        if self.device.type == "cpu":
            flush_denormals()  # per thread, and the caller's thread may not be the one that built this
        outputs = [np.empty_like(pixels) for pixels in images]
        finish = self.finishing
        # With finishing, the network's output goes to a 16-bit (or float) stage first: the
        # finishing windows read their neighbours' context, so it cannot work in place.
        stages = outputs if finish is None else [
            np.empty(p.shape, np.float32 if p.dtype == np.float32 else np.uint16) for p in images]
        if self.model.scale != 1.0:
            tiled = self._enhance_all_downscaled(images, stages)
        else:
            tiled = self._over_windows(images, self.halo, lambda members: self._run_windows(images, stages, members))
        if finish is not None:
            params = torch.cat([self._finish_params(pixels, stage, finish) for pixels, stage in zip(images, stages)])
            self._over_windows(images, finish_halo(finish),
                               lambda members: self._finish_windows(images, stages, outputs, members, params, finish))
        return [EnhanceResult(pixels=out, tiled=t) for out, t in zip(outputs, tiled)]

    @property
    def finishing(self) -> FinishConfig | None:
        """The finishing in effect: none when off, or when strength 0 asks for the input unchanged."""
        finish = self.config.finish
        if finish is None or not finish.enabled or self.config.strength == 0.0:
            return None
        return self.for_these_weights(finish)

    def for_these_weights(self, finish: FinishConfig) -> FinishConfig:
        """``finish`` with what these weights decide in it: the colour cast ``colour="auto"`` takes out."""
        return replace(finish, colour_exponents=self.colour_exponents) if finish.colour == "auto" else finish

    def _finish_params(self, pixels: np.ndarray, stage: np.ndarray, finish: FinishConfig) -> torch.Tensor:
        """Per-image statistics from small copies of the input and the network's output (1 x P)."""
        def small(array: np.ndarray) -> torch.Tensor:
            copy = params_copy(torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0))  # picks pixels, no float copy
            return _to_unit_float(copy.contiguous().to(self.device), array.dtype)

        scene = None
        if finish.exposure == "auto":  # the scene's target is read from the whole frame
            scene = _to_unit_float(scene_copy(torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)).to(self.device),
                                   pixels.dtype)
        return finish_params(small(pixels), small(stage), finish, scene)

    def _finish_windows(self, images, stages, outputs, members: list[tuple[int, Window]], params: torch.Tensor,
                        finish: FinishConfig) -> None:
        """Finishing on equally shaped windows of input and network output; cores into ``outputs``."""
        def stack(arrays) -> torch.Tensor:
            batch = np.stack([arrays[i][w.top : w.top + w.height, w.left : w.left + w.width] for i, w in members])
            return _to_unit_float(torch.from_numpy(batch).to(self.device, non_blocking=True), batch.dtype).permute(0, 3, 1, 2)

        rows = torch.tensor([i for i, _ in members], device=params.device)
        finished = finish_tiles(stack(images), stack(stages), params[rows], finish,
                                origins=[(w.top, w.left) for _, w in members])
        for row, (index, w) in enumerate(members):
            core = finished[row, :, w.core_top - w.top : w.core_bottom - w.top, w.core_left - w.left : w.core_right - w.left]
            outputs[index][w.core_top : w.core_bottom, w.core_left : w.core_right] = _from_unit_float(
                core.permute(1, 2, 0), outputs[index].dtype)

    def _windows_of(self, height: int, width: int, halo: int) -> list[Window]:
        if height * width <= self.config.max_full_frame_pixels:
            return [Window(0, 0, height, width, 0, height, 0, width)]
        grid = window_grid if self.config.batch_pixels > 1 else balanced_grid
        return grid(height, width, self.config.tile_size, halo)

    def _over_windows(self, images: Sequence[np.ndarray], halo: int, run) -> list[bool]:
        """Call ``run(members)`` on every window of every image, equally shaped ones stacked."""
        groups: dict[tuple[int, int], list[tuple[int, Window]]] = {}
        tiled = []
        for index, pixels in enumerate(images):
            windows = self._windows_of(pixels.shape[0], pixels.shape[1], halo)
            tiled.append(len(windows) > 1)
            for window in windows:
                groups.setdefault((window.height, window.width), []).append((index, window))
        for (height, width), members in groups.items():
            per_call = max(1, self.config.batch_pixels // (height * width))
            for start in range(0, len(members), per_call):
                run(members[start : start + per_call])
        return tiled

    def _run_windows(self, images, outputs, members: list[tuple[int, Window]]) -> None:
        """One forward pass over equally shaped windows, their cores written into ``outputs``."""
        batch = np.stack([images[i][w.top : w.top + w.height, w.left : w.left + w.width] for i, w in members])
        x = _to_unit_float(torch.from_numpy(batch).to(self.device, non_blocking=True), batch.dtype)
        x = x.permute(0, 3, 1, 2)  # N x 3 x H x W view, channels-last in memory
        curves = self._curves(x)
        if isinstance(self.model, DCENetFast):  # scale 1: one map for all iterations, same size
            curves = self.model.upsample_curves(curves, x.shape[-2:])
        for row, (index, w) in enumerate(members):
            # Keep the core: its receptive field lies inside the window.
            rows = slice(w.core_top - w.top, w.core_bottom - w.top)
            cols = slice(w.core_left - w.left, w.core_right - w.left)
            enhanced = apply_curves(x[row : row + 1, :, rows, cols], curves[row : row + 1, :, rows, cols])
            outputs[index][w.core_top : w.core_bottom, w.core_left : w.core_right] = _from_unit_float(
                enhanced[0].permute(1, 2, 0), outputs[index].dtype)

    def _enhance_all_downscaled(self, images: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> list[bool]:
        """Scale > 1: each image's small copy, their curves (small copies of one shape stacked
        into one forward pass up to ``batch_pixels``, as full-resolution windows are: on a GPU a
        batch, on a CPU one image per call), then :meth:`_enhance_downscaled` for each."""
        groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        for index, pixels in enumerate(images):
            small = self._small_copy(pixels)
            groups.setdefault((small.shape[-2], small.shape[-1]), []).append((index, small))
        tiled = [False] * len(images)
        for (h, w), members in groups.items():
            fits = h * w <= self.config.max_full_frame_pixels
            per_call = max(1, self.config.batch_pixels // (h * w)) if fits else 1
            for start in range(0, len(members), per_call):
                chunk = members[start : start + per_call]
                if len(chunk) == 1:
                    curves = [self._curves_of_small(chunk[0][1])]
                else:
                    curves = list(self._curves(torch.cat([small for _, small in chunk])).split(1))
                for (index, small), maps in zip(chunk, curves):
                    tiled[index] = self._enhance_downscaled(images[index], outputs[index], small, maps)
        return tiled

    def _small_copy(self, pixels: np.ndarray) -> torch.Tensor:
        """The copy the curves are estimated on, float32 1 x 3 x h x w on the device."""
        image = torch.from_numpy(pixels)
        size = self.model.downscaled_size(*pixels.shape[:2])
        if isinstance(self.model, DCENet):
            return self._area_downscaled(image, pixels.dtype, size)
        return self._downscaled(image, size)

    def _enhance_downscaled(self, pixels: np.ndarray, out: np.ndarray, small: torch.Tensor,
                            curves: torch.Tensor) -> bool:
        """Curves from a small copy, applied to the full image in strips (scale > 1).

        What is upsampled is the model's ``upsampling_source`` (the fast variant's maps, or
        DCE-Net's guided-filter coefficients: 48 channels, 12 bytes per full-resolution pixel at
        scale 4). It is computed band by band of the small copy's rows (with the model's
        ``upsampling_halo`` of context, so each band is exact), and each band is upsampled strip
        by strip for the full-resolution rows it serves: neither the whole source nor any
        full-resolution map of the whole image is ever held.
        """
        model = self.model
        height, width = pixels.shape[:2]
        image = torch.from_numpy(pixels)  # H x W x 3 on the CPU; moved strip by strip
        h, halo = small.shape[-2], model.upsampling_halo
        band = max(1, _SOURCE_BAND_PIXELS // small.shape[-1])
        # Full-resolution row y interpolates small rows lo(y) and lo(y) + 1 (align_corners=True).
        _, lo = source_positions(0, height, h, height)
        # Rows are independent, so any strip height gives the same pixels: on CPUs strips of about
        # _STRIP_PIXELS keep the upsampled maps in cache, where strips of a few hundred rows fall
        # out of it (benchmarks/README.md, "Figures behind design choices in the code"); a GPU
        # takes its full-frame budget per strip (fewer kernel launches).
        strip = max(1, self._strip_pixels // max(width, 1))
        for b0 in range(0, h, band):
            b1 = min(h - 1, b0 + band)  # source rows b0..b1: the next band starts at b1
            t0, t1 = max(0, b0 - halo), min(h, b1 + 1 + halo)
            source = model.upsampling_source(small[..., t0:t1, :], curves[..., t0:t1, :])
            source = source[..., b0 - t0 : b1 + 1 - t0, :].contiguous(memory_format=torch.channels_last)
            last = b0 + band >= h
            y0 = int(torch.searchsorted(lo, b0))
            y1 = height if last else int(torch.searchsorted(lo, b0 + band))
            for r0 in range(y0, y1, strip):
                r1 = min(y1, r0 + strip)
                x = _to_unit_float(image[r0:r1].to(self.device), pixels.dtype).permute(2, 0, 1).unsqueeze(0)
                maps = upsample_rows_align_corners(source, r0, r1, height, width, h, row_offset=b0)
                out[r0:r1] = _from_unit_float(model.apply_upsampled(maps, x)[0].permute(1, 2, 0), out.dtype)
        return height * width > self.config.max_full_frame_pixels

    def _downscaled(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bilinear downscale of the whole image (as the authors' F.interpolate), float32 1 x 3 x h x w."""
        full = _to_unit_float(image.to(self.device), image.numpy().dtype).permute(2, 0, 1).unsqueeze(0)
        return torch.nn.functional.interpolate(full.contiguous(), size=size, mode="bilinear", align_corners=False)

    def _area_downscaled(self, image: torch.Tensor, dtype: np.dtype, size: tuple[int, int]) -> torch.Tensor:
        """``adaptive_avg_pool2d`` of the H x W x 3 image to ``size`` (DCENet.downscale), float32
        1 x 3 x h x w, computed over strips of rows so that no full-resolution float copy exists
        (a 24 MP photo would need 288 MB for one).

        Output row i averages input rows ``[floor(i H / h), ceil((i + 1) H / h))`` (PyTorch's
        adaptive windows): the columns of a strip are pooled by ``adaptive_avg_pool2d`` itself
        (rows kept), the rows by differences of a running sum within the strip.
        """
        height, width = image.shape[:2]
        h, w = size
        index = torch.arange(h + 1)
        starts = (index[:-1] * height) // h
        ends = -((-(index[:-1] + 1) * height) // h)  # ceil
        out = torch.empty((1, 3, h, w), dtype=torch.float32, device=self.device)
        rows_per_strip = max(1, (4 * self._strip_pixels * h) // max(1, height * width))
        for i0 in range(0, h, rows_per_strip):
            i1 = min(h, i0 + rows_per_strip)
            r0, r1 = int(starts[i0]), int(ends[i1 - 1])
            strip = _to_unit_float(image[r0:r1].to(self.device), dtype).permute(2, 0, 1).unsqueeze(0)
            columns = torch.nn.functional.adaptive_avg_pool2d(strip, (r1 - r0, w))
            running = torch.nn.functional.pad(columns.cumsum(2), (0, 0, 1, 0))
            lo, hi = (starts[i0:i1] - r0).to(self.device), (ends[i0:i1] - r0).to(self.device)
            counts = (hi - lo).to(torch.float32).view(1, 1, -1, 1)
            out[:, :, i0:i1] = (running[:, :, hi] - running[:, :, lo]) / counts
        return out

    def _curves_of_small(self, small: torch.Tensor) -> torch.Tensor:
        """Curve maps of the downscaled image, itself tiled exactly if it is large."""
        _, _, h, w = small.shape
        if h * w <= self.config.max_full_frame_pixels:
            return self._curves(small)
        curves = torch.empty((1, self.model.curve_maps, h, w), dtype=torch.float32, device=small.device)
        for win in window_grid(h, w, self.config.tile_size, self.halo):
            c = self._curves(small[:, :, win.top : win.top + win.height, win.left : win.left + win.width])
            curves[:, :, win.core_top : win.core_bottom, win.core_left : win.core_right] = c[
                :, :, win.core_top - win.top : win.core_bottom - win.top,
                win.core_left - win.left : win.core_right - win.left]
        return curves


def _to_unit_float(values: torch.Tensor, dtype: np.dtype) -> torch.Tensor:
    """uint8/uint16 -> float32 in [0, 1] (exactly ``x / 255`` as the model was trained); float32 as is."""
    maximum = _INTEGER_MAX.get(np.dtype(dtype))
    if maximum is None:
        return values
    if values.dtype == torch.uint16:  # few kernels take uint16: widen first (exact)
        values = values.to(torch.int32)
    return values.float().div_(maximum)


def _from_unit_float(values: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """float32 -> the output dtype on the CPU: integers rounded half-to-even after clipping to [0, 1]."""
    maximum = _INTEGER_MAX.get(np.dtype(dtype))
    if maximum is None:
        return values.cpu().numpy()
    quantised = values.clamp(0.0, 1.0).mul_(maximum).round_()
    target = torch.uint8 if maximum == 255.0 else torch.int32
    result = quantised.to(target).cpu().numpy()
    return result if result.dtype == dtype else result.astype(dtype)
