"""Model builders and a weights registry in the manner of torchvision.

    from dce_batch import models
    net = models.zero_dce(weights="zerodce_sice_v1")         # DCE-Net, eval mode, shipped weights
    fast = models.zero_dce_pp(weights=models.ZeroDCEPP_Weights.DEFAULT, scale=12)
    models.ZeroDCE_Weights.SICE_V1.meta["metrics"]["val_loss"]   # no torch, nothing loaded

    from dce_batch import enhance_image                      # one PIL image, e.g. in a notebook
    enhanced = enhance_image(Image.open("dark.jpg"), strength=0.8)

The shipped weights are declared once, in :mod:`dce_batch.enhance.registry`; the enums here are
built from those declarations. Each shipped weights file ``dce_batch/weights/NAME.safetensors``
has a JSON sidecar ``NAME.json`` (made by ``scripts/make_weights_sidecars.py`` from the file's
own header and the training results; a test checks they agree), so the registry's metadata
(recipe, metrics, licence, transforms, training curves) is read with the standard library alone:
importing this module does not import torch. Tensors are read, and their checksum verified, only
by a builder or :meth:`Weights.load`.

Like torchvision, ``weights=None`` builds a randomly initialised network (the authors'
initialisation), for training from scratch.
"""

from __future__ import annotations

import enum
import functools
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dce_batch.errors import ConfigError, WeightsError
from dce_batch.enhance.registry import PACKAGED_WEIGHTS, SHIPPED_WEIGHTS, default_weights_for, shipped_weights
from dce_batch.enhance.settings import FinishConfig

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time
    from typing import Sequence

    import numpy as np
    from PIL import Image
    from typing_extensions import TypedDict, Unpack  # typing's Unpack needs Python 3.11

    class EnhanceSettings(TypedDict, total=False):
        """The keywords :func:`enhance_image` passes on to :func:`enhance_batch`."""

        scale: float | None
        device: str
        precision: str
        denoise: str
        denoise_strength: float
        exposure: float | str
        highlight_stretch: float

    from dce_batch.enhance.network import DCENet, DCENetFast
    from dce_batch.enhance.weights import LoadedWeights

__all__ = [
    "Weights",
    "WeightsEnum",
    "ZeroDCEPP_Weights",
    "ZeroDCE_Weights",
    "enhance_batch",
    "enhance_image",
    "get_weights",
    "list_weights",
    "zero_dce",
    "zero_dce_pp",
]

DEFAULT_FAST_SCALE = 12.0  # the authors' test setting, and `dce-batch enhance --scale`'s default


@dataclass(frozen=True)
class Weights:
    """One set of shipped weights: where it is and what it is, known before loading it.

    Attributes:
        name: the registry name (what ``--weights`` and ``weights=`` accept).
        variant: ``full`` (DCE-Net) or ``fast`` (Zero-DCE++).
        file: the file name under ``dce_batch/weights/``.
        url: where to download it from, or None when it ships inside the package.
        file_sha256, file_bytes: of the whole file (the tensors' own checksum is ``meta["sha256"]``).
        meta: the metadata stored in the file: name, variant, num_params, sha256, source, licence,
            recipe, data, metrics, created.
        transforms_info: what the network expects as input and gives as output.
        training: the training runs that made the weights, oldest first, each ``{"run", "source",
            "history": [{"epoch", "train_loss", "val_loss", ...}, ...]}``.
    """

    name: str
    variant: str
    file: str
    url: str | None
    file_sha256: str
    file_bytes: int
    meta: Mapping[str, Any] = field(repr=False)
    transforms_info: Mapping[str, str] = field(repr=False)
    training: tuple[Mapping[str, Any], ...] = field(repr=False)

    @property
    def path(self) -> Path:
        """The weights file inside the installed package."""
        return shipped_weights(self.name).path

    @property
    def num_params(self) -> int:
        return int(self.meta["num_params"])

    @property
    def sha256(self) -> str:
        """Checksum of the tensors (what the batch job's manifest records as ``model_sha256``)."""
        return str(self.meta["sha256"])

    def load(self) -> "LoadedWeights":
        """The tensors and metadata (checksum verified); imports torch."""
        from dce_batch.enhance.weights import load_weights

        return load_weights(shipped_weights(self.name).read_bytes(), name=self.file)

    def transforms(self) -> "ImageToTensor":
        """The preprocessing the network expects, as a callable: PIL image -> 1 x 3 x H x W tensor."""
        return ImageToTensor()

    @classmethod
    def from_sidecar(cls, raw: Mapping[str, Any]) -> "Weights":
        meta = raw["meta"]
        return cls(name=raw["name"], variant=meta["variant"], file=raw["file"], url=raw.get("url"),
                   file_sha256=raw["file_sha256"], file_bytes=int(raw["file_bytes"]), meta=meta,
                   transforms_info=raw.get("transforms", {}), training=tuple(raw.get("training", ())))


class ImageToTensor:
    """PIL image -> float32 tensor 1 x 3 x H x W in [0, 1], upright, as the network expects.

    Decodes through :mod:`dce_batch.imaging` (EXIF orientation, any mode, 16-bit, CMYK), like
    the batch job. Alpha is dropped: use :func:`enhance_image` to keep it.
    """

    def __call__(self, image: "Image.Image"):
        import torch

        from dce_batch.imaging import decode_image

        decoded = decode_image(_pil_to_bytes(image), max_pixels=_pixel_limit(image))
        return torch.from_numpy(decoded.to_float()).permute(2, 0, 1).unsqueeze(0).contiguous()

    def __repr__(self) -> str:
        return "ImageToTensor(RGB float32 [0, 1], N x 3 x H x W, EXIF orientation applied)"


@functools.lru_cache(maxsize=None)
def _shipped(name: str) -> Weights:
    """The shipped weights called ``name``, described by their sidecar (read once)."""
    return Weights.from_sidecar(shipped_weights(name).sidecar())


class WeightsEnum(enum.Enum):
    """Base of the per-architecture enums; members forward to their :class:`Weights`."""

    @property
    def weights(self) -> Weights:
        return _shipped(self.value)

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.weights.meta

    @property
    def url(self) -> str | None:
        return self.weights.url

    def transforms(self) -> ImageToTensor:
        return self.weights.transforms()

    def load(self) -> "LoadedWeights":
        return self.weights.load()


def _weights_enum(class_name: str, variant: str, doc: str) -> type[WeightsEnum]:
    """The enum of a variant's shipped weights: one member per declaration in
    :data:`~dce_batch.enhance.registry.SHIPPED_WEIGHTS`, named by its tag and valued by its name,
    plus ``DEFAULT``, an alias of the variant's default (same value, so the same member)."""
    members = [(shipped.tag, shipped.name) for shipped in SHIPPED_WEIGHTS if shipped.variant == variant]
    members.append(("DEFAULT", default_weights_for(variant)))
    weights_enum = WeightsEnum(class_name, members, module=__name__, qualname=class_name)
    weights_enum.__doc__ = doc
    return weights_enum


# Named as torchvision names its weights enums (ResNet50_Weights).
ZeroDCE_Weights = _weights_enum("ZeroDCE_Weights", "full", "Weights of DCE-Net (Zero-DCE), the ``full`` variant.")
ZeroDCEPP_Weights = _weights_enum("ZeroDCEPP_Weights", "fast", "Weights of Zero-DCE++, the ``fast`` variant.")


_ENUMS: dict[str, type[WeightsEnum]] = {"full": ZeroDCE_Weights, "fast": ZeroDCEPP_Weights}


def list_weights(variant: str | None = None) -> list[str]:
    """Names of the shipped weights (of one variant, if given)."""
    return sorted(shipped.name for shipped in SHIPPED_WEIGHTS if variant in (None, shipped.variant))


def get_weights(name: str) -> Weights:
    """Shipped weights by registry name (``"zerodce_sice_v1"``) or enum name
    (``"ZeroDCE_Weights.SICE_V1"``, ``"ZeroDCEPP_Weights.DEFAULT"``)."""
    if "." in name and not name.endswith((".safetensors", ".pth", ".pt")):
        enum_name, _, member = name.partition(".")
        for enum_cls in _ENUMS.values():
            if enum_cls.__name__ == enum_name and member in enum_cls.__members__:
                return enum_cls[member].weights
        raise WeightsError(f"unknown weights {name!r}; try one of {[str(m) for e in _ENUMS.values() for m in e]}")
    return _shipped(name)


def weights_for_sha256(sha256: str) -> Weights | None:
    """The shipped weights whose tensors have this checksum (a manifest's ``model_sha256``)."""
    return next((w for w in map(_shipped, PACKAGED_WEIGHTS) if w.sha256 == sha256), None)


def _resolve(weights: Any, variant: str) -> "LoadedWeights | None":
    """``weights=`` of a builder -> loaded weights of ``variant`` (None: random initialisation)."""
    if weights is None:
        return None
    if isinstance(weights, WeightsEnum):
        shipped = weights.weights
    elif isinstance(weights, Weights):
        shipped = weights
    elif isinstance(weights, (str, Path)):
        text = str(weights)
        if text == "DEFAULT":
            shipped = _ENUMS[variant].DEFAULT.weights
        elif text in PACKAGED_WEIGHTS or (text.partition(".")[0] in {e.__name__ for e in _ENUMS.values()}):
            shipped = get_weights(text)
        else:  # a file: the project's .safetensors or a published checkpoint
            from dce_batch.enhance.weights import load_weights

            loaded = load_weights(Path(text).expanduser())
            _check_variant(loaded.meta.name, loaded.meta.variant, variant)
            return loaded
    else:
        raise ConfigError(f"weights must be None, a name, a path or a {_ENUMS[variant].__name__} member, "
                          f"got {type(weights).__name__}")
    _check_variant(shipped.name, shipped.variant, variant)
    return shipped.load()


def _check_variant(name: str, actual: str, wanted: str) -> None:
    if actual != wanted:
        builder = {"full": "zero_dce", "fast": "zero_dce_pp"}[actual]
        raise WeightsError(f"weights {name!r} are for the {actual!r} variant: build them with models.{builder}()")


def zero_dce(*, weights: ZeroDCE_Weights | Weights | str | Path | None = None, scale: float = 1.0) -> "DCENet":
    """DCE-Net (Zero-DCE), 79,416 parameters, in eval mode.

    Args:
        weights: ``None`` for a randomly initialised network (the authors' initialisation),
            a :class:`ZeroDCE_Weights` member, a shipped name (``"zerodce_sice_v1"``,
            ``"DEFAULT"``), or a weights file (this project's ``.safetensors`` or a published
            Zero-DCE ``.pth`` checkpoint).
        scale: 1 (the authors' network) estimates the curves at the input's resolution; 4 is
            what ``dce-batch enhance`` runs: curves from a copy downscaled 4x, brought back by
            guided upsampling.

    ``net(x)`` takes N x 3 x H x W in [0, 1] and returns a ``CurveOutput`` whose ``.image`` is the
    enhanced batch; ``net(x, strength=0.5)`` applies half the curve.
    """
    return _network(weights, "full", scale)  # type: ignore[return-value]


def zero_dce_pp(*, weights: ZeroDCEPP_Weights | Weights | str | Path | None = None,
                scale: float = DEFAULT_FAST_SCALE) -> "DCENetFast":
    """Zero-DCE++ (the fast variant), 10,561 parameters, in eval mode.

    ``scale``: the curves are estimated on the input downscaled by this factor (12, the
    authors' and ``dce-batch enhance``'s default, suits photos; use 1 for small images).
    ``weights`` as for :func:`zero_dce`, with :class:`ZeroDCEPP_Weights`.
    """
    return _network(weights, "fast", scale)  # type: ignore[return-value]


def _network(weights: Any, variant: str, scale: float):
    """The network of ``variant`` in eval mode: with ``weights``, or freshly initialised without."""
    from dce_batch.enhance.network import DCENet, DCENetFast, init_weights

    loaded = _resolve(weights, variant)
    if loaded is None:
        model = (DCENet if variant == "full" else DCENetFast)(scale=scale)
        init_weights(model)
        return model.eval()
    return loaded.build(scale=scale)


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def _pil_to_bytes(image: "Image.Image") -> bytes:
    """Lossless bytes of a PIL image with its EXIF and ICC, for :func:`dce_batch.imaging.decode_image`.

    Going through the batch job's decoder (rather than ``np.asarray``) gives notebook users the
    same handling of orientation, palettes, 16-bit, CMYK and alpha as the job.
    """
    from PIL import Image as PILImage

    if not isinstance(image, PILImage.Image):
        raise ConfigError(f"expected a PIL.Image.Image, got {type(image).__name__}; use PIL.Image.open(path)")
    extra: dict[str, Any] = {}
    if image.info.get("icc_profile"):
        extra["icc_profile"] = image.info["icc_profile"]
    exif = image.getexif()
    if len(exif):
        extra["exif"] = exif.tobytes()
    # Modes neither PNG nor TIFF can hold become their plain equivalent (premultiplied alpha is
    # undone, HSV becomes RGB).
    plain = {"La": "LA", "RGBa": "RGBA", "HSV": "RGB", "I;16N": "I;16"}.get(image.mode)
    if plain is not None:
        image = image.convert(plain)
    buffer = io.BytesIO()
    # PNG holds every mode that PNG can (fast, uncompressed); TIFF the rest (CMYK, 32-bit, float, ...).
    fmt = "PNG" if image.mode in ("1", "L", "LA", "I;16", "I;16B", "P", "RGB", "RGBA") else "TIFF"
    options = {"compress_level": 0} if fmt == "PNG" else {}
    image.save(buffer, fmt, **options, **extra)
    return buffer.getvalue()


def _pixel_limit(image: "Image.Image") -> int:
    # The caller already holds the decoded image in memory: no decompression-bomb limit applies.
    return max(1, image.width * image.height)


@functools.lru_cache(maxsize=4)
def _enhancer(weights_key: str, variant: str, strength: float, scale: float | None, device: str, precision: str,
              finish: "FinishConfig"):
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig

    loaded = _resolve(weights_key, variant)
    assert loaded is not None
    config = InferenceConfig(strength=strength, precision=precision,  # type: ignore[arg-type]
                             device=device, scale=scale, finish=finish)
    return Enhancer(loaded, config)


def enhance_image(image: "Image.Image", weights: str | WeightsEnum | Weights | Path | None = None,
                  strength: float = 1.0, **settings: Unpack[EnhanceSettings]) -> "Image.Image":
    """Enhance one PIL image and return a new PIL image, exactly as ``dce-batch enhance`` would.

    Args:
        image: any PIL image (RGB, grayscale, palette, 16-bit, CMYK, with or without alpha).
            EXIF orientation is applied: the result is upright (its EXIF orientation is 1).
        weights: a shipped name (default ``zerodce_sice_v1``; ``zerodcepp_sice_v2`` is the fast
            variant), an enum member, or a weights file.
        strength: 0 returns the image unchanged, 1 applies the model as trained.
        settings: ``scale``, ``device``, ``precision``, ``denoise``, ``denoise_strength``,
            ``exposure``, ``highlight_stretch``: as for :func:`enhance_batch`, same defaults.

    The network is cached as for :func:`enhance_batch`. Grayscale stays grayscale and alpha is
    kept; the result is ``L``, ``LA``, ``RGB`` or ``RGBA`` at 8 bits per channel, except that a
    16-bit, 32-bit integer or float (``F``, read as [0, 1]) grayscale image comes back ``I;16``.
    ICC profile and EXIF are kept.
    """
    from PIL import Image as PILImage

    from dce_batch.imaging import EncodeOptions, decode_image, encode_image

    decoded = decode_image(_pil_to_bytes(image), max_pixels=_pixel_limit(image))
    # decoded.pixels is H x W x 3 (alpha and grayscale are kept aside in ``decoded``).
    (pixels,) = enhance_batch([decoded.pixels], weights, strength, **settings)
    encoded = encode_image(pixels, decoded, EncodeOptions(format="png"), fmt="PNG")
    out = PILImage.open(io.BytesIO(encoded.data))
    out.load()
    return out


def _weights_key(weights: Any) -> tuple[str, str]:
    """A hashable cache key for ``weights`` and the variant it is for."""
    if isinstance(weights, WeightsEnum):
        weights = weights.weights
    if isinstance(weights, Weights):
        return weights.name, weights.variant
    text = str(weights)
    if text == "DEFAULT":
        text = ZeroDCE_Weights.DEFAULT.value
    if text in PACKAGED_WEIGHTS:
        return text, shipped_weights(text).variant
    try:
        return text, get_weights(text).variant
    except WeightsError:
        pass
    return text, _file_variant(text)


@functools.lru_cache(maxsize=16)
def _file_variant(text: str) -> str:
    """A weights file's variant, read once per path (not per image or batch)."""
    from dce_batch.enhance.weights import load_weights

    return load_weights(Path(text).expanduser()).meta.variant


def enhance_batch(
    images: "Sequence[np.ndarray]",
    weights: str | WeightsEnum | Weights | Path | None = None,
    strength: float = 1.0,
    *,
    scale: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    denoise: str = "auto",
    denoise_strength: float = 1.0,
    exposure: float | str = "auto",
    highlight_stretch: float = FinishConfig.highlight_stretch,
) -> "list[np.ndarray]":
    """Enhance arrays: each H x W x 3 (RGB), H x W x 4 (RGBA: alpha kept) or H x W (gray), uint8,
    uint16 or float32 in [0, 1]; the same shape and dtype back, with the pixels ``dce-batch
    enhance`` computes for those values (the same network, settings and finishing; windows of
    equal shape from several images share a forward pass). No EXIF orientation is applied: the
    arrays are taken as they are. ``weights`` and ``strength`` as for :func:`enhance_image`.

    Args:
        scale: the curves are estimated on a copy downscaled by this factor (1 = full
            resolution); None takes the variant's default, as ``dce-batch enhance`` does (4 for
            DCE-Net, with guided upsampling; 12 for the fast variant).
        device, precision: as for ``dce-batch enhance`` (``auto`` uses CUDA when present).
        denoise, denoise_strength, exposure, highlight_stretch: the finishing after the curves,
            as for ``dce-batch enhance`` (on by default there and here; ``denoise="off",
            exposure="off"`` gives the network alone).

    The loaded network is cached (the last four settings), so calling this in a loop is cheap.
    """
    import numpy as np

    if weights is None:
        weights = ZeroDCE_Weights.DEFAULT
    key, variant = _weights_key(weights)
    finish = FinishConfig(denoise=denoise, denoise_strength=denoise_strength, exposure=exposure,  # type: ignore[arg-type]
                          highlight_stretch=highlight_stretch)
    enhancer = _enhancer(key, variant, float(strength), None if scale is None else float(scale), device, precision,
                         finish)
    colour, rebuild = [], []
    for index, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim in (2, 3) and 0 in array.shape[:2]:
            raise ConfigError(f"image {index} has no pixels (shape {array.shape})")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ConfigError(f"image {index} holds NaN or infinite values; float pixels must be finite, in [0, 1]")
        if array.ndim == 2:
            colour.append(np.ascontiguousarray(np.repeat(array[..., None], 3, axis=2)))
            rebuild.append(lambda out: np.ascontiguousarray(out[..., 0]))
        elif array.ndim == 3 and array.shape[2] in (3, 4):
            colour.append(np.ascontiguousarray(array[..., :3]))
            alpha = array[..., 3:] if array.shape[2] == 4 else None
            rebuild.append(lambda out, alpha=alpha: out if alpha is None else np.concatenate([out, alpha], axis=2))
        else:
            raise ConfigError(f"image {index}: expected H x W, H x W x 3 or H x W x 4 pixels, got shape {array.shape}")
    if not colour:
        return []
    results = enhancer.enhance_batch(colour)
    return [make(result.pixels) for make, result in zip(rebuild, results)]


def _signature_with_settings(function, settings_from):
    """``function``'s signature with ``**settings`` spelled out as ``settings_from``'s keywords, for
    help() and editors that read signatures at run time."""
    import inspect

    own = [p for p in inspect.signature(function).parameters.values() if p.kind is not p.VAR_KEYWORD]
    keywords = [p for p in inspect.signature(settings_from).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return inspect.signature(function).replace(parameters=[*own, *keywords])


enhance_image.__signature__ = _signature_with_settings(enhance_image, enhance_batch)
