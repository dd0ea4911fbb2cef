"""``dce-batch evaluate``: image quality of one or more configurations, side by side.

* **Paired sets** (a folder of low-light inputs and a folder of references matched by file
  name, extension ignored): PSNR and SSIM per image and averaged, from scikit-image
  (``peak_signal_noise_ratio``, ``structural_similarity`` over RGB with ``data_range=1``; a
  well-kept implementation, not ours). Outputs are rounded to 8 bits first, as the job writes
  them. Identical images give PSNR = :data:`PSNR_CAP` (instead of infinity, so averages and
  JSON stay finite) and SSIM = 1.
* **Every set** (paired or not): no-reference statistics of the input and of each
  configuration's output: mean brightness (Rec.709 luma), exposure error against a target,
  clipped fractions (shadows: every channel 0; highlights: some channel 255 after 8-bit
  rounding), colour cast (distance of the average colour from grey in BT.709 CbCr), chroma (the
  average per-pixel distance from grey in CbCr: saturation), a noise estimate
  (``skimage.restoration.estimate_sigma``, wavelet-based, averaged over channels) and, where the
  ``pypiqe`` package is installed (``pip install 'dce-batch[iqa]'``), PIQE (Venkatanath et al.
  2015: a no-reference, opinion-unaware score of blockiness and noise, 0-100, lower is better;
  it needs no trained weights, so it works offline).

A configuration is the shipped weights or a checkpoint, a strength, and the finishing settings
(:class:`dce_batch.enhance.finishing.FinishConfig`), or an already-enhanced folder. Enhancement runs
in-process (no Ray) through the job's own decoder, :class:`dce_batch.enhance.enhancer.Enhancer` and
finishing stage. Results go to ``results.json`` (everything), ``per_image.csv`` and
``summary.md`` (one table per set, one row per configuration).
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from dce_batch.errors import ConfigError
from dce_batch.enhance.finishing import DEFAULT_EXPOSURE_TARGET, FinishConfig
from dce_batch.enhance.settings import PRECISIONS

__all__ = [
    "PSNR_CAP",
    "EvalConfiguration",
    "EvalSet",
    "ImageResult",
    "evaluate",
    "no_reference_stats",
    "paired_metrics",
    "parse_configuration",
    "write_reports",
]

PSNR_CAP = 100.0  # dB; what identical images score (skimage says inf)
_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _skimage():
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
        from skimage.restoration import estimate_sigma
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("dce-batch evaluate needs scikit-image: pip install 'dce-batch[eval]'") from exc
    return peak_signal_noise_ratio, structural_similarity, estimate_sigma


# --------------------------------------------------------------------------------------------
# Metrics


def quantize(pixels: np.ndarray) -> np.ndarray:
    """Float pixels as the job writes them: clipped to [0, 1] and rounded to 8 bits (float32)."""
    return (np.round(np.clip(pixels, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def paired_metrics(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """PSNR (dB, capped at :data:`PSNR_CAP`) and SSIM of H x W x 3 float images in [0, 1]."""
    if reference.shape != output.shape:
        raise ConfigError(f"reference and output sizes differ: {reference.shape[:2]} vs {output.shape[:2]}")
    psnr_fn, ssim_fn, _ = _skimage()
    reference = reference.astype(np.float64)
    output = output.astype(np.float64)
    if np.array_equal(reference, output):
        psnr = PSNR_CAP
    else:
        psnr = min(PSNR_CAP, float(psnr_fn(reference, output, data_range=1.0)))
    ssim = float(ssim_fn(reference, output, data_range=1.0, channel_axis=2))
    return {"psnr": psnr, "ssim": ssim}


def _piqe():
    """``pypiqe.piqe`` or None when the package (an optional extra) is absent."""
    try:
        from pypiqe import piqe
    except ImportError:
        return None
    return piqe


def no_reference_stats(pixels: np.ndarray, exposure_target: float = DEFAULT_EXPOSURE_TARGET) -> dict[str, float | None]:
    """Statistics of one H x W x 3 image in [0, 1] that need no reference (see module docs);
    ``piqe`` is None without the ``pypiqe`` package or on an image too small to score."""
    _, _, sigma_fn = _skimage()
    u8 = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    x = u8.astype(np.float32) / 255.0
    luma = x @ np.asarray([0.2126, 0.7152, 0.0722], dtype=np.float32)
    mean = float(luma.mean())
    mean_rgb = x.reshape(-1, 3).mean(axis=0)
    cb = (mean_rgb[2] - mean) / 1.8556
    cr = (mean_rgb[0] - mean) / 1.5748
    with warnings.catch_warnings():
        # skimage drops zero wavelet coefficients; a perfectly flat image has none left (NaN).
        warnings.simplefilter("ignore", RuntimeWarning)
        noise = float(sigma_fn(x, average_sigmas=True, channel_axis=-1))
    chroma = np.hypot((x[..., 2] - luma) / 1.8556, (x[..., 0] - luma) / 1.5748)
    piqe_fn, piqe = _piqe(), None
    if piqe_fn is not None and min(u8.shape[:2]) >= 32:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            score = float(piqe_fn(u8)[0])
        piqe = score if math.isfinite(score) else None
    return {
        "mean": mean,
        "exposure_error": abs(mean - exposure_target),
        "clip_shadows": float((u8.max(axis=2) == 0).mean()),
        "clip_highlights": float((u8.max(axis=2) == 255).mean()),
        "colour_cast": float(math.hypot(cb, cr)),
        "noise": noise if math.isfinite(noise) else 0.0,
        "chroma": float(chroma.mean()),
        "piqe": piqe,
    }


# --------------------------------------------------------------------------------------------
# Configurations and sets


@dataclass(frozen=True)
class EvalConfiguration:
    """One column of the comparison.

    Attributes:
        label: its name in the tables.
        weights: shipped name, .safetensors or published .pth (``None``: the default weights).
        strength: curve strength (0..1).
        finish: finishing settings; ``None`` is the network alone.
        folder: evaluate the images already in this folder (matched by name) instead.
        identity: the input itself, unenhanced.
    """

    label: str
    weights: str | None = None
    strength: float = 1.0
    finish: FinishConfig | None = field(default_factory=FinishConfig)
    folder: Path | None = None
    identity: bool = False
    scale: float | None = None  # None: the variant's default
    precision: str = "auto"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label}
        if self.identity:
            out["kind"] = "input (unenhanced)"
        elif self.folder is not None:
            out["kind"] = "folder"
            out["folder"] = str(self.folder)
        else:
            out.update(kind="enhance", weights=self.weights or "default", strength=self.strength,
                       scale=self.scale if self.scale is not None else "default", precision=self.precision, finish=asdict(self.finish) if self.finish else "off")
        return out


_FINISH_KEYS = {"denoise", "denoise_strength", "exposure", "chroma_refine_radius", "matched_noise_level", "noise_gain",
                "highlight_stretch", "colour"}


def parse_configuration(spec: str) -> EvalConfiguration:
    """``LABEL[:key=value,...]``. Keys: ``weights``, ``strength``, ``finish=on|off``, ``denoise``
    (auto/fast/off), ``denoise_strength``, ``exposure`` (auto/off/0.45), ``chroma_refine_radius`` (0: one
    chroma pass), ``matched_noise_level`` (``inf``: no block matching), ``noise_gain`` (slope/ratio),
    ``highlight_stretch`` (0: highlights as the curves leave them), ``colour`` (auto/off), ``folder``, ``scale``,
    ``precision`` (as ``--precision``).
    The label ``input`` alone is the unenhanced input. Example:
    ``authors:weights=../shared/reference_weights/zero_dce_epoch99.pth,finish=off``.
    """
    label, _, rest = spec.partition(":")
    label = label.strip()
    if not label:
        raise ConfigError(f"configuration {spec!r} has no label; write LABEL[:key=value,...]")
    if label == "input" and not rest:
        return EvalConfiguration(label="input", finish=None, identity=True)
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"configuration {spec!r}: {item!r} is not key=value")
        values[key.strip().replace("-", "_")] = value.strip()
    known = {"weights", "strength", "finish", "folder", "scale", "precision"} | _FINISH_KEYS
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"configuration {spec!r}: unknown keys {unknown}; known: {sorted(known)}")
    if "folder" in values:
        folder = Path(values["folder"])
        if not folder.is_dir():
            raise ConfigError(f"configuration {label!r}: folder {folder} does not exist")
        return EvalConfiguration(label=label, finish=None, folder=folder)
    finish: FinishConfig | None = FinishConfig()
    if values.get("finish", "on") == "off":
        finish = None
    elif values.get("finish", "on") != "on":
        raise ConfigError(f"configuration {spec!r}: finish must be on or off")
    if finish is not None:
        overrides: dict[str, Any] = {}
        if "denoise" in values:
            overrides["denoise"] = values["denoise"]
        if "denoise_strength" in values:
            overrides["denoise_strength"] = _number(values["denoise_strength"], spec)
        if "exposure" in values:
            exposure = values["exposure"]
            overrides["exposure"] = exposure if exposure in ("auto", "off") else _number(exposure, spec)
        if "chroma_refine_radius" in values:
            radius = _number(values["chroma_refine_radius"], spec)
            if radius != int(radius):
                raise ConfigError(f"configuration {spec!r}: chroma_refine_radius must be a whole number of pixels")
            overrides["chroma_refine_radius"] = int(radius)
        if "matched_noise_level" in values:
            overrides["matched_noise_level"] = _number(values["matched_noise_level"], spec)
        if "noise_gain" in values:
            overrides["noise_gain"] = values["noise_gain"]
        if "highlight_stretch" in values:
            overrides["highlight_stretch"] = _number(values["highlight_stretch"], spec)
        if "colour" in values:
            overrides["colour"] = values["colour"]
        finish = replace(finish, **overrides)
    precision = values.get("precision", "auto")
    if precision not in PRECISIONS:
        raise ConfigError(f"configuration {spec!r}: precision must be one of {', '.join(PRECISIONS)}")
    return EvalConfiguration(
        label=label, weights=values.get("weights"), strength=_number(values.get("strength", "1"), spec),
        finish=finish, scale=_number(values["scale"], spec) if "scale" in values else None, precision=precision,
    )


def _number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"configuration {spec!r}: {text!r} is not a number") from None


DEFAULT_CONFIGURATIONS = ("input", "network:finish=off", "default")


@dataclass(frozen=True)
class EvalSet:
    """Images to evaluate: ``low`` inputs, optionally with ``reference`` images matched by name."""

    name: str
    low: Path
    reference: Path | None = None

    def images(self, max_images: int | None = None) -> list[tuple[Path, Path | None]]:
        lows = _list_images(self.low)
        if not lows:
            raise ConfigError(f"set {self.name!r}: no images in {self.low}")
        if max_images:
            lows = lows[:max_images]
        if self.reference is None:
            return [(path, None) for path in lows]
        references = {path.stem: path for path in _list_images(self.reference)}
        missing = [path.name for path in lows if path.stem not in references]
        if missing:
            raise ConfigError(f"set {self.name!r}: no reference in {self.reference} for {len(missing)} "
                              f"input(s), e.g. {missing[:5]}; references are matched by file name")
        return [(path, references[path.stem]) for path in lows]


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _EXTENSIONS)


def set_from_paths(low: str, reference: str | None = None) -> EvalSet:
    """A set named after its folder (or the folder's parent when the folder is named ``low``)."""
    path = Path(low)
    name = path.parent.name if path.name.lower() in ("low", "input", "inputs") else path.name
    return EvalSet(name=name or str(path), low=path, reference=Path(reference) if reference else None)


def unique_set_names(sets: Sequence[EvalSet]) -> list[EvalSet]:
    """The sets, a repeated name getting ``-2``, ``-3``, ... (tables are keyed by set name)."""
    seen: dict[str, int] = {}
    out = []
    for s in sets:
        seen[s.name] = seen.get(s.name, 0) + 1
        out.append(s if seen[s.name] == 1 else replace(s, name=f"{s.name}-{seen[s.name]}"))
    return out


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class ImageResult:
    set: str
    image: str
    configuration: str
    width: int
    height: int
    seconds: float
    psnr: float | None
    ssim: float | None
    stats_in: dict[str, float]
    stats_out: dict[str, float]

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {k: getattr(self, k) for k in ("set", "image", "configuration", "width", "height",
                                                              "seconds", "psnr", "ssim")}
        row.update({f"{k}_in": v for k, v in self.stats_in.items()})
        row.update({f"{k}_out": v for k, v in self.stats_out.items()})
        return row


def _read(path: Path, max_side: int | None) -> np.ndarray:
    from dce_batch.imaging import decode_image

    pixels = decode_image(path.read_bytes()).to_float()
    if max_side and max(pixels.shape[:2]) > max_side:
        from PIL import Image

        factor = max_side / max(pixels.shape[:2])
        size = (max(1, round(pixels.shape[1] * factor)), max(1, round(pixels.shape[0] * factor)))
        u8 = Image.fromarray(np.round(pixels * 255).astype(np.uint8)).resize(size, Image.BOX)
        pixels = np.asarray(u8, dtype=np.float32) / 255.0
    return pixels


class _Runner:
    """Produces one configuration's output for an image, with the job's own pieces.

    Configurations that share weights, strength and scale share one :class:`Enhancer` and the
    network's output on the current image (it is the same computation), so comparing finishing
    settings costs one network pass per image, not one per configuration.
    """

    def __init__(self, config: EvalConfiguration, device: str, enhancers: dict) -> None:
        self.config = config
        self.key = None
        if not config.identity and config.folder is None:
            self.key = (config.weights, config.strength, config.scale, config.precision)
            if self.key not in enhancers:
                from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
                from dce_batch.enhance.weights import load_weights

                weights = load_weights(config.weights)
                enhancers[self.key] = Enhancer(weights, InferenceConfig(strength=config.strength, device=device,
                                                                        scale=config.scale, precision=config.precision))
            self.enhancer = enhancers[self.key]
        self._outputs = {p.stem: p for p in _list_images(config.folder)} if config.folder else {}

    def __call__(self, low_path: Path, pixels: np.ndarray, max_side: int | None, network_cache: dict) -> np.ndarray:
        if self.config.identity:
            return pixels
        if self.config.folder is not None:
            path = self._outputs.get(low_path.stem)
            if path is None:
                raise ConfigError(f"configuration {self.config.label!r}: no image named {low_path.stem}.* "
                                  f"in {self.config.folder}")
            return _read(path, max_side)
        if self.key not in network_cache:
            network_cache[self.key] = self.enhancer.enhance(pixels).pixels
        finish = self.config.finish
        if finish is not None:
            finish = self.enhancer.for_these_weights(finish)
        return apply_finishing(finish, pixels, network_cache[self.key], self.enhancer.device)


def apply_finishing(finish: FinishConfig | None, low: np.ndarray, enhanced: np.ndarray, device) -> np.ndarray:
    """The finishing stage on one image, as the job applies it after the network.

    It runs at full frame on the network's output, cached per image across configurations
    (the job's Enhancer runs it tile by tile after the network; finishing is exact under
    tiling, so both compute the same pixels).
    """
    if finish is None or not finish.enabled:
        return enhanced
    import torch

    from dce_batch.enhance.finishing import finish_image

    with torch.inference_mode():
        low_t = torch.from_numpy(np.ascontiguousarray(low)).permute(2, 0, 1).unsqueeze(0).to(device)
        out_t = torch.from_numpy(np.ascontiguousarray(enhanced)).permute(2, 0, 1).unsqueeze(0).to(device)
        return finish_image(low_t, out_t, finish)[0].permute(1, 2, 0).cpu().numpy()


def evaluate(
    sets: Sequence[EvalSet], configurations: Sequence[EvalConfiguration], *, device: str = "cpu",
    max_images: int | None = None, max_side: int | None = None,
    exposure_target: float = DEFAULT_EXPOSURE_TARGET, progress=None,
) -> list[ImageResult]:
    """Every configuration on every image of every set; one :class:`ImageResult` each."""
    labels = [c.label for c in configurations]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"configuration labels must be unique, got {labels}")
    if not configurations:
        raise ConfigError("no configurations to evaluate")
    plans = [(s, s.images(max_images)) for s in sets]  # fail on bad folders before any work
    enhancers: dict = {}
    runners = [_Runner(c, device, enhancers) for c in configurations]
    results: list[ImageResult] = []
    for eval_set, images in plans:
        for low_path, ref_path in images:
            low = _read(low_path, max_side)
            reference = quantize(_read(ref_path, max_side)) if ref_path else None
            stats_in = no_reference_stats(low, exposure_target)
            network_cache: dict = {}
            for runner in runners:
                start = time.perf_counter()
                output = quantize(runner(low_path, low, max_side, network_cache))
                seconds = time.perf_counter() - start
                metrics = paired_metrics(reference, output) if reference is not None else {"psnr": None, "ssim": None}
                results.append(ImageResult(
                    set=eval_set.name, image=low_path.name, configuration=runner.config.label,
                    width=int(low.shape[1]), height=int(low.shape[0]), seconds=seconds, psnr=metrics["psnr"],
                    ssim=metrics["ssim"], stats_in=stats_in, stats_out=no_reference_stats(output, exposure_target),
                ))
                if progress:
                    progress(results[-1])
    return results


# --------------------------------------------------------------------------------------------
# Reports


_SUMMARY_STATS = ("mean", "exposure_error", "clip_shadows", "clip_highlights", "colour_cast", "chroma", "noise", "piqe")


def _mean(values) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def summarize(results: Iterable[ImageResult]) -> list[dict[str, Any]]:
    """Averages per (set, configuration), plus one ``input`` row per set with the inputs' stats."""
    groups: dict[tuple[str, str], list[ImageResult]] = {}
    for r in results:
        groups.setdefault((r.set, r.configuration), []).append(r)
    rows: list[dict[str, Any]] = []
    seen_sets: set[str] = set()
    for (set_name, label), items in groups.items():
        if set_name not in seen_sets:
            seen_sets.add(set_name)
            first_config = items[0].configuration
            inputs = [r for r in groups[(set_name, first_config)]]
            row = {"set": set_name, "configuration": "(input stats)", "images": len(inputs), "psnr": None,
                   "ssim": None, "seconds": None}
            row.update({k: _mean(r.stats_in.get(k) for r in inputs) for k in _SUMMARY_STATS})
            rows.append(row)
        paired = [r for r in items if r.psnr is not None]
        row = {
            "set": set_name, "configuration": label, "images": len(items),
            "psnr": float(np.mean([r.psnr for r in paired])) if paired else None,
            "ssim": float(np.mean([r.ssim for r in paired])) if paired else None,
            "seconds": float(np.mean([r.seconds for r in items])),
        }
        row.update({k: _mean(r.stats_out.get(k) for r in items) for k in _SUMMARY_STATS})
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    header = ("| set | configuration | images | PSNR dB | SSIM | mean | exp. err | clip shadows % | "
              "clip highlights % | cast | chroma | noise | PIQE | s/image |")
    lines = [header, "|" + "---|" * 14]
    for r in summary:
        lines.append("| " + " | ".join([
            r["set"], r["configuration"], str(r["images"]), _fmt(r["psnr"], 2), _fmt(r["ssim"], 3),
            _fmt(r["mean"], 3), _fmt(r["exposure_error"], 3), _fmt(100 * r["clip_shadows"], 2),
            _fmt(100 * r["clip_highlights"], 2), _fmt(r["colour_cast"], 3), _fmt(r["chroma"], 3),
            _fmt(r["noise"], 4), _fmt(r["piqe"], 1), _fmt(r["seconds"], 2),
        ]) + " |")
    return "\n".join(lines) + "\n"


def write_reports(results: Sequence[ImageResult], out_dir: Path, *, configurations: Sequence[EvalConfiguration],
                  sets: Sequence[EvalSet], settings: dict[str, Any] | None = None) -> dict[str, Path]:
    """``results.json``, ``per_image.csv`` and ``summary.md`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "per_image.csv", "markdown": out_dir / "summary.md"}
    document = {
        "settings": settings or {},
        "configurations": [c.describe() for c in configurations],
        "sets": [{"name": s.name, "low": str(s.low), "reference": str(s.reference) if s.reference else None}
                 for s in sets],
        "summary": summary,
        "images": [r.row() for r in results],
    }
    paths["json"].write_text(json.dumps(document, indent=2, default=str))
    rows = [r.row() for r in results]
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["set"])
        writer.writeheader()
        writer.writerows(rows)
    notes = ("PSNR/SSIM: scikit-image, RGB, data_range 1, outputs rounded to 8 bits; PSNR of identical images "
             f"capped at {PSNR_CAP:g} dB. mean: Rec.709 luma; exp. err: |mean - target|; clip: % of pixels "
             "with every channel 0 / some channel 255; cast: distance of the mean colour from grey in CbCr; "
             "chroma: mean per-pixel distance from grey in CbCr; noise: skimage estimate_sigma; PIQE: pypiqe "
             "(lower is better; - without the package). s/image: time to produce the output in this process (configurations with "
             "the same weights share one network pass, which the first of them is charged for).\n")
    paths["markdown"].write_text("# dce-batch evaluate\n\n" + markdown_table(summary) + "\n" + notes)
    return paths
