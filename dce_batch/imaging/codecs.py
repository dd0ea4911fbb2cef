"""Image decoding and encoding: bytes <-> RGB pixels in their native integer depth plus the metadata
worth keeping.

The pipeline around the model is::

    bytes --decode_image--> DecodedImage (uint8 or uint16 HxWx3, alpha, EXIF, ICC, ...)
          --DecodedImage.to_float()--> float32 HxWx3 in [0, 1] --model--> enhanced float32 HxWx3
          --encode_image--> EncodedImage (bytes in JPEG/PNG/WebP/TIFF/BMP)

Pixels stay in the source's integer depth until the model needs them: a 100 MP photo is 300 MB
as uint8 but 1.2 GB as float32, and GPU workers move uint8 tiles. Sources with more than 8 bits
per channel (16-bit PNG and TIFF, 16/32-bit integer and float gray) come as uint16, so the curves
work on their real shadow levels instead of 8-bit steps, and their PNG/TIFF outputs are written at
16 bits per channel.

Pillow identifies every file, checks its size before any pixel is decoded (decompression bombs),
reads EXIF/ICC and orientation, and does all 8-bit work. Pillow cannot hold 16-bit colour (it cuts
16-bit RGB(A) PNG/TIFF to 8 bits when loading), so those pixels are decoded and encoded with
``imagecodecs`` (libpng, libtiff) and 16-bit TIFFs are written with ``tifffile``.

Everything here is a pure function of its arguments: no Ray, no torch, no global Pillow settings
changed (``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES`` are left alone), so
it is safe to call from any worker. Failures a user can act on are raised as the
:mod:`dce_batch.errors` types with messages that say what to do.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageFile, ImageOps

from dce_batch.errors import (
    ConfigError,
    CorruptImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "DecodedImage",
    "EncodeOptions",
    "EncodedImage",
    "decode_image",
    "encode_image",
    "extension_for",
    "max_file_bytes",
    "mean_luminance",
    "output_format",
    "output_format_for_path",
    "to_uint8",
    "to_unit_float",
]

logger = logging.getLogger(__name__)

#: Default decompression-bomb limit: 100 MP covers every current camera sensor.
DEFAULT_MAX_PIXELS: Final[int] = 100_000_000

#: File extensions (lower case, with the dot) that the driver treats as images. Formats people
#: store photos in and that Pillow decodes; a file whose content is something else still fails
#: per file with :class:`UnsupportedImageError` rather than being skipped silently.
IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo",
        ".png", ".apng",
        ".webp",
        ".bmp", ".dib",
        ".tif", ".tiff",
        ".gif",
        ".jp2", ".j2k", ".jpf", ".jpx",
        ".avif",
        ".ppm", ".pgm", ".pbm", ".pnm",
        ".tga",
        ".qoi",
    }
)  # fmt: skip

# Shown in "unsupported" messages; the decodable set is whatever Pillow identifies.
_SUPPORTED_TEXT: Final = "JPEG, PNG, WebP, TIFF, BMP, GIF, MPO, JPEG 2000, AVIF, PNM, TGA, QOI"

#: Rec.709 / sRGB luma weights, used for brightness statistics and for grayscale output.
REC709_LUMA: Final[tuple[float, float, float]] = (0.2126, 0.7152, 0.0722)

# Modes without colour: written back as grayscale. "La" is premultiplied LA.
_GRAY_8BIT_MODES: Final = frozenset({"1", "L", "LA", "La"})
_HIGH_DEPTH_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

# "same" keeps these formats; any other source (GIF, PPM, JPEG 2000, ...) becomes PNG, because
# re-encoding an enhanced photo through e.g. a 256-colour GIF palette would ruin it.
_SAME_FORMAT: Final[dict[str, str]] = {
    "JPEG": "JPEG",
    "MPO": "JPEG",  # multi-picture JPEG: we keep the first picture only
    "PNG": "PNG",
    "WEBP": "WEBP",
    "TIFF": "TIFF",
    "BMP": "BMP",
    "DIB": "BMP",  # Pillow registers .dib as "DIB"; such files open as "BMP"
}
_FALLBACK_FORMAT: Final = "PNG"
_REQUESTED_FORMATS: Final[dict[str, str | None]] = {
    "same": None,
    "jpeg": "JPEG",
    "jpg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
}
_EXTENSIONS: Final[dict[str, str]] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "BMP": ".bmp",
}
_ALPHA_FORMATS: Final = frozenset({"PNG", "WEBP", "TIFF"})
# Output formats that store 16 bits per channel: 16-bit sources are written at 16 bits there.
_DEEP_FORMATS: Final = frozenset({"PNG", "TIFF"})
# Largest width/height the encoders accept (libjpeg, libwebp); PNG/TIFF/BMP go far beyond 100 MP.
_MAX_SIDE: Final[dict[str, int]] = {"JPEG": 65500, "WEBP": 16383}

_EXIF_ORIENTATION: Final = 0x0112
_EXIF_IFD: Final = 0x8769
# Pixel-dimension tags that must describe the written (upright) image: IFD0's ImageWidth and
# ImageLength, and the Exif IFD's PixelXDimension and PixelYDimension.
_IFD0_WIDTH, _IFD0_HEIGHT = 0x0100, 0x0101
_EXIF_PIXEL_X, _EXIF_PIXEL_Y = 0xA002, 0xA003
_TIFF_BITS_PER_SAMPLE: Final = 258
_TIFF_PHOTOMETRIC: Final = 262
_TIFF_RGB: Final = 2
_TIFF_PLANAR_CONFIGURATION: Final = 284
_TIFF_EXTRA_SAMPLES: Final = 338
_TIFF_ASSOCIATED_ALPHA: Final = 1
_JPEG_MAX_MARKER_BYTES: Final = 65533  # an APP1 (EXIF) segment cannot be longer

# What Pillow's decoders raise on damaged data. zlib.error comes from PNG/TIFF inflate.
_DECODE_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
)
# Exceptions with which a plugin says "not my format" during identification (as Image.open).
_NOT_THIS_FORMAT: Final = (SyntaxError, IndexError, TypeError, struct.error)


# --------------------------------------------------------------------------------------------
# Data types


_MAX_LEVEL: Final[dict[np.dtype, float]] = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded image in its native integer depth, plus what is needed to write it back faithfully.

    Attributes:
        pixels: C-contiguous array of shape (H, W, 3), upright (EXIF orientation applied):
            ``uint8`` for 8-bit sources, ``uint16`` for sources with more than 8 bits per channel
            (16-bit PNG/TIFF colour and gray, ``I;16``, ``I`` clipped to 0..65535, ``F`` scaled
            from [0, 1] to 0..65535). Gray sources have three equal channels. Use
            :meth:`to_float` for the model's float32 input.
        alpha: array of shape (H, W), same dtype as ``pixels``, if the source had transparency,
            else None. The model never sees it; :func:`encode_image` puts it back.
        format: Pillow's format name of the source, e.g. ``"JPEG"``, ``"PNG"``, ``"MPO"``.
        mode: the source's Pillow mode, e.g. ``"RGB"``, ``"P"``, ``"I;16"``, ``"CMYK"``.
        grayscale: the source had no colour; the output is written back as grayscale.
        bit_depth: 8 or 16, always the depth of ``pixels.dtype``. PNG and TIFF outputs of 16-bit
            images are written at 16 bits per channel.
        exif: raw EXIF bytes of the source, as Pillow reads them, or None.
        icc_profile: the source ICC profile if it is an RGB or gray profile, else None (CMYK
            profiles are used for the CMYK -> RGB conversion and then dropped).

    Arrays are not compared by ``==`` (``eq=False``): compare ``pixels`` explicitly.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    mode: str
    grayscale: bool
    bit_depth: int
    exif: bytes | None = None
    icc_profile: bytes | None = None

    def __post_init__(self) -> None:
        # Cheap structural checks: a malformed DecodedImage would otherwise fail far away (in
        # the model or the encoder) with an unhelpful message.
        pixels = self.pixels
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype not in _MAX_LEVEL:
            raise ValueError(
                f"pixels must be uint8 or uint16 HxWx3, got {pixels.dtype} {pixels.shape}"
            )
        if not pixels.flags.c_contiguous:
            raise ValueError("pixels must be C-contiguous (use np.ascontiguousarray)")
        if self.alpha is not None:
            if self.alpha.shape != pixels.shape[:2]:
                raise ValueError(
                    f"alpha shape {self.alpha.shape} does not match pixels {pixels.shape[:2]}"
                )
            if self.alpha.dtype != pixels.dtype:
                raise ValueError(f"alpha dtype {self.alpha.dtype} differs from pixels {pixels.dtype}")
        expected_depth = 8 if pixels.dtype == np.uint8 else 16
        if self.bit_depth != expected_depth:
            raise ValueError(
                f"bit_depth must be {expected_depth} for {pixels.dtype} pixels, got {self.bit_depth}"
            )

    @property
    def height(self) -> int:
        """Displayed height in pixels (after EXIF orientation)."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Displayed width in pixels (after EXIF orientation)."""
        return int(self.pixels.shape[1])

    def to_float(self) -> np.ndarray:
        """The pixels as a new float32 HxWx3 array in [0, 1], the model's input.

        Exactly ``uint8 / 255`` in float32 for 8-bit images (what the model was trained with) and
        ``uint16 / 65535`` for 16-bit ones.
        """
        return to_unit_float(self.pixels)


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """A uint8, uint16 or float array as float32 in [0, 1] (a new array for integer input).

    Integers are divided by their dtype's maximum in float32 (``uint8 / 255``, ``uint16 / 65535``).
    Float arrays are returned as float32 with their values unchanged (no copy if already float32).

    Raises:
        ValueError: any other dtype.
    """
    array = np.asarray(array)
    level = _MAX_LEVEL.get(array.dtype)
    if level is not None:
        out = array.astype(np.float32)
        out /= np.float32(level)
        return out
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise ValueError(f"expected a uint8, uint16 or float array, got {array.dtype}")


@dataclass(frozen=True)
class EncodeOptions:
    """How to write enhanced images.

    Attributes:
        format: ``"same"`` (keep the source format where sensible, see :func:`output_format`),
            ``"jpeg"``, ``"png"`` or ``"webp"``. Case-insensitive; ``"jpg"`` means ``"jpeg"``.
        quality: 1..100, used by JPEG and WebP.
    """

    format: str = "same"
    quality: int = 95

    def __post_init__(self) -> None:
        # Normalise so that equal settings compare (and hash) equal.
        object.__setattr__(self, "format", _normalise_requested(self.format))
        if isinstance(self.quality, bool) or not isinstance(self.quality, (int, np.integer)):
            raise ConfigError(f"quality must be an integer 1..100, got {self.quality!r}")
        if not 1 <= int(self.quality) <= 100:
            raise ConfigError(f"quality must be in 1..100, got {self.quality}")
        object.__setattr__(self, "quality", int(self.quality))


@dataclass(frozen=True)
class EncodedImage:
    """Encoded output bytes with the Pillow format written and the matching file extension."""

    data: bytes
    format: str
    extension: str


def to_uint8(array: np.ndarray) -> np.ndarray:
    """A uint8, uint16 or float array as uint8, rounded as :func:`encode_image` does for 8-bit
    outputs: uint8 unchanged (the same array), uint16 to ``round(x / 257)``, float in [0, 1] to
    ``round(x * 255)`` after clipping (NaN counts as 0).

    Raises:
        ValueError: any other dtype.
    """
    array = np.asarray(array)
    if array.dtype not in _MAX_LEVEL and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected a uint8, uint16 or float array, got {array.dtype}")
    return _to_depth(array, np.dtype(np.uint8))


# --------------------------------------------------------------------------------------------
# Decoding


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode image bytes into upright RGB pixels in their native depth (uint8/uint16) plus metadata.

    Multi-frame files (GIF, animated WebP, multi-page TIFF, MPO) give their first frame.

    Args:
        data: the encoded file content.
        max_pixels: refuse images with more pixels than this, checked from the header before any
            pixel data is decoded. This limit replaces Pillow's ``Image.MAX_IMAGE_PIXELS`` for
            this call (it may be above or below it); the global is not modified.

    Raises:
        UnsupportedImageError: the bytes are not an image format Pillow recognises.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
        CorruptImageError: the data is truncated or damaged.
        ConfigError: ``max_pixels`` is not a positive integer.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if max_pixels <= 0:
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels}")
    data = bytes(data)  # accept bytearray/memoryview; BytesIO needs a stable buffer
    if not data:
        raise UnsupportedImageError(
            f"empty file (0 bytes), not an image; supported: {_SUPPORTED_TEXT}. "
            "Check that the upload or copy completed"
        )

    with warnings.catch_warnings():
        # Some plugins still consult Pillow's own limit (e.g. when seeking frames); its warning
        # is noise because our limit, checked below, is the one that applies. Pillow's
        # UserWarnings about damaged metadata ("Corrupt EXIF data") would flood batch logs;
        # damage that matters surfaces as an exception instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        _check_webp_canvas(data, max_pixels)
        image = _identify(data)
        fmt = str(image.format)
        _check_size(image.size, max_pixels)
        if _is_deep_colour(image, fmt):
            return _decode_deep_colour(data, image, fmt)
        _load(image, fmt)

        mode = image.mode
        # EXIF and ICC are read after load() because PNG may store them after the pixel data.
        exif = image.info.get("exif") or None
        icc = image.info.get("icc_profile") or None
        _apply_orientation(image)
        if mode == "CMYK":
            image = _cmyk_to_rgb(image, icc)
            icc = None  # pixels are sRGB now; a CMYK profile cannot describe them
        pixels, alpha = _pil_to_arrays(image)
        del image

    return DecodedImage(
        pixels=pixels,
        alpha=alpha,
        format=fmt,
        mode=mode,
        grayscale=_is_grayscale_mode(mode),
        bit_depth=8 if pixels.dtype == np.uint8 else 16,
        exif=bytes(exif) if exif is not None else None,
        icc_profile=_usable_icc(icc),
    )


def _identify(data: bytes) -> ImageFile.ImageFile:
    """Open ``data`` lazily (header only), like :func:`PIL.Image.open` without its size check.

    ``Image.open`` rejects images above ``2 * Image.MAX_IMAGE_PIXELS`` before returning. That
    global is process-wide, so rather than raising it (and racing other threads) we run the same
    plugin search ourselves and let :func:`_check_size` apply the caller's limit.
    """
    fp = io.BytesIO(data)
    prefix = data[:16]
    hints: list[str] = []
    # First plugin whose signature check matched but whose header parser then gave up.
    damaged: tuple[str, BaseException] | None = None
    Image.preinit()  # the common plugins first, in Image.open's order
    Image.init()
    for fmt in tuple(Image.ID):
        factory, accept = Image.OPEN[fmt]
        try:
            verdict = accept(prefix) if accept else True
        except _NOT_THIS_FORMAT:  # a signature check that reads past a prefix this short (BMP's)
            continue
        if isinstance(verdict, str):  # e.g. "... because AVIF support not installed"
            hints.append(verdict)
            continue
        if not verdict:
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except _NOT_THIS_FORMAT as exc:
            # Try the next plugin, as Image.open does. Plugins without a signature check (TGA,
            # IM, ...) try every file, so only a signature match hints at a damaged header.
            if accept is not None and damaged is None:
                damaged = (fmt, exc)
            continue
        except Image.DecompressionBombError as exc:
            # Only plugins that allocate while opening (WebP) check Pillow's limit here.
            raise _pillow_limit_error(exc, fmt) from exc
        except _DECODE_ERRORS as exc:
            if accept is None:
                continue  # a guess by a plugin without a signature check, not evidence
            raise CorruptImageError(
                f"looks like {fmt} but its header cannot be read ({type(exc).__name__}: {exc}); "
                "the file is damaged or truncated, re-export or re-download it"
            ) from exc
    if damaged is not None:
        fmt, exc = damaged
        raise CorruptImageError(
            f"has a {fmt} signature but its header cannot be read ({type(exc).__name__}: {exc}); "
            "the file is damaged or truncated, re-export or re-download it"
        ) from exc
    raise UnsupportedImageError(_describe_unrecognised(data, hints))


def _describe_unrecognised(data: bytes, hints: list[str]) -> str:
    """Say what the bytes look like, so the user can tell a bad file from a missing codec."""
    head = data[:12]
    printable = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
    message = f"not a recognised image format (first bytes {head.hex(' ')} {printable!r})"
    if len(data) < 16:
        message += f": only {len(data)} bytes, too short to be an image (a truncated upload or copy?)"
    elif hints:
        message += f": {hints[0]}"
    elif data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"heif", b"mif1", b"msf1"):
        message += ": HEIC/HEIF is not supported, convert it to JPEG first"
    elif data.startswith(b"version https://git-lfs"):
        message += ": this is a Git LFS pointer, run 'git lfs pull' to fetch the real file"
    elif data.lstrip()[:1] in (b"<", b"{"):
        message += ": the file is text (HTML/XML/JSON), probably an error page saved in its place"
    return f"{message}; supported: {_SUPPORTED_TEXT}"


def max_file_bytes(max_pixels: int) -> int:
    """The most bytes a file holding one image of up to ``max_pixels`` takes in a supported format.

    Uncompressed 16-bit RGBA (TIFF, PNG's worst case) is 8 bytes per pixel; 256 MiB more covers
    metadata, thumbnails and a few extra frames. A larger file is read whole by no worker: it
    could only exhaust the memory an actor was sized for (and fail every rerun the same way).
    """
    return max_pixels * 8 + (256 << 20)


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    """Raise :class:`ImageTooLargeError` if ``size`` (from the header) exceeds ``max_pixels``."""
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} = {pixels / 1e6:.1f} MP exceeds the limit of "
            f"{max_pixels / 1e6:g} MP ({max_pixels:,} pixels); raise --max-pixels if this image "
            "is expected"
        )


def _check_webp_canvas(data: bytes, max_pixels: int) -> None:
    """Check a WebP canvas size from its first bytes.

    Pillow's WebP plugin creates the decoder (which allocates the whole canvas) while opening,
    i.e. before :func:`_check_size` could run, so the size is read from the RIFF header here.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1, height-1
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    elif chunk == b"VP8L":  # lossless: 14-bit width-1, height-1 after a 1-byte signature
        bits = int.from_bytes(data[21:25], "little")
        width = (bits & 0x3FFF) + 1
        height = ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8 ":  # lossy: 14-bit width, height after the key frame start code
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
    else:
        return
    _check_size((width, height), max_pixels)


def _is_deep_colour(image: ImageFile.ImageFile, fmt: str) -> bool:
    """16-bit colour (or gray + alpha) PNG/TIFF, which Pillow would cut to 8 bits when loading.

    Decided from the header, before ``load()``. PNG: Pillow opens such files in 8-bit modes but
    their raw mode still says ``;16``. TIFF: RGB photometric with 16 bits per sample (Pillow also
    misreads planar 16-bit RGB as 8-bit). 16-bit gray without alpha (``I;16``) stays with Pillow,
    which decodes it exactly; other 16-bit TIFF colour spaces (CMYK, YCbCr, Lab) also stay with
    Pillow and come out 8-bit.
    """
    if fmt == "TIFF":
        bits = image.tag_v2.get(_TIFF_BITS_PER_SAMPLE)
        bits = bits if isinstance(bits, tuple) else (bits,)
        return image.tag_v2.get(_TIFF_PHOTOMETRIC) == _TIFF_RGB and set(bits) == {16}
    if fmt != "PNG" or image.mode in _HIGH_DEPTH_MODES:
        return False
    for tile in image.tile or ():  # Pillow < 11 leaves None when there is no image data
        # Index 3 is the decoder arguments (Pillow >= 11 names it .args); the raw mode comes first.
        args = tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if args else None)
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def _decode_deep_colour(data: bytes, image: ImageFile.ImageFile, fmt: str) -> DecodedImage:
    """Decode a 16-bit colour or gray+alpha PNG/TIFF to uint16 with imagecodecs (libpng/libtiff).

    Pillow has already identified the file and checked its size; it still supplies the metadata
    (ICC, EXIF, orientation, TIFF tags), but never decodes the pixels.
    """
    import imagecodecs

    width, height = image.size
    mode = image.mode
    icc = image.info.get("icc_profile") or None
    if fmt == "PNG":
        # The eXIf chunk may follow the pixel data, where Pillow reads it only on load().
        exif = image.info.get("exif") or _png_chunk_after_pixels(data, b"eXIf")
        # Pillow's getexif() on a PNG decodes the pixels when info has no "exif": give it one.
        image.info["exif"] = exif or b""
        planar = associated_alpha = False
    else:
        exif = None  # Pillow exposes no EXIF block for TIFF sources (their tags are IFD0's)
        # Stored size: recent Pillow reports a TIFF's size already turned by its Orientation.
        width, height = image.tag_v2[_IFD0_WIDTH], image.tag_v2[_IFD0_HEIGHT]
        planar = image.tag_v2.get(_TIFF_PLANAR_CONFIGURATION) == 2
        extra = image.tag_v2.get(_TIFF_EXTRA_SAMPLES)
        extra = extra if isinstance(extra, tuple) else (extra,)
        associated_alpha = mode == "RGBa" or _TIFF_ASSOCIATED_ALPHA in extra
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not fail the image
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
        orientation = 1
    image.close()
    del image

    try:
        if fmt == "PNG":
            array = imagecodecs.png_decode(data)
        else:
            array = imagecodecs.tiff_decode(data, index=0)
    except MemoryError:
        raise
    # imagecodecs' PngError/TiffError are RuntimeErrors; a damaged first IFD offset is "directory
    # out of range" (IndexError).
    except (RuntimeError, ValueError, IndexError) as exc:
        raise CorruptImageError(
            f"16-bit {fmt} data is damaged or truncated ({type(exc).__name__}: {exc}); "
            "re-export or re-download the file"
        ) from exc
    if planar and array.ndim == 3 and array.shape[1:] == (height, width):
        array = np.moveaxis(array, 0, -1)  # libtiff returns separate planes as (S, H, W)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint16 or array.shape[:2] != (height, width) or array.shape[2] > 4:
        raise UnsupportedImageError(
            f"16-bit {fmt} ({mode}) decoded to {array.dtype} {array.shape}, not {height}x{width} "
            "16-bit gray or colour; convert the file to 16-bit RGB first"
        )

    channels = array.shape[2]
    colour = array[:, :, :3] if channels >= 3 else array[:, :, :1].repeat(3, axis=2)
    alpha = array[:, :, channels - 1] if channels in (2, 4) else None
    if associated_alpha and alpha is not None:
        colour = _unpremultiply(colour, alpha)
    pixels = np.ascontiguousarray(_orient(colour, orientation))
    if alpha is not None:
        alpha = np.ascontiguousarray(_orient(alpha, orientation))
    del array, colour
    return DecodedImage(
        pixels=pixels,
        alpha=alpha,
        format=fmt,
        mode=mode,
        grayscale=channels <= 2,
        bit_depth=16,
        exif=bytes(exif) if exif else None,
        icc_profile=_usable_icc(icc),
    )


def _png_chunk_after_pixels(data: bytes, kind: bytes) -> bytes | None:
    """The payload of the first ``kind`` chunk after a PNG's image data, or None.

    Only chunk headers are read (each is skipped by its length); Pillow reads the chunks before
    the image data when it opens the file.
    """
    offset, seen_pixels = 8, False
    while offset + 8 <= len(data):
        length, chunk = struct.unpack(">I4s", data[offset : offset + 8])
        if chunk == b"IDAT":
            seen_pixels = True
        elif seen_pixels and chunk == kind:
            return data[offset + 8 : offset + 8 + length]
        elif chunk == b"IEND":
            break
        offset += 12 + length
    return None


def _unpremultiply(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight colour from premultiplied 16-bit colour (as Pillow does for 8-bit RGBa/La)."""
    scale = np.where(alpha > 0, np.float32(65535.0) / np.maximum(alpha, 1), 0).astype(np.float32)
    straight = np.rint(colour * scale[:, :, None])
    return np.clip(straight, 0, 65535).astype(np.uint16)


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """A view of ``array`` (H x W [x C]) made upright per an EXIF Orientation value (1..8).

    The same transposes as Pillow's ``ImageOps.exif_transpose``.
    """
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, -1)
    if orientation == 7:
        return array.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(array, 1)
    return array


def _pillow_limit_error(exc: Exception, fmt: str) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{exc}; this exceeds Pillow's own hard limit for {fmt} files, which --max-pixels cannot raise"
    )


def _load(image: ImageFile.ImageFile, fmt: str) -> None:
    """Decode the pixel data, turning decoder failures into :class:`CorruptImageError`."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        # A plugin checked Pillow's global limit while decoding (e.g. GIF/TIFF internals).
        raise _pillow_limit_error(exc, fmt) from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(
            f"{fmt} data is damaged or truncated ({type(exc).__name__}: {exc}); "
            "re-export or re-download the file"
        ) from exc


def _apply_orientation(image: Image.Image) -> None:
    """Rotate/flip ``image`` in place so it is upright, per its EXIF Orientation tag."""
    try:
        # in_place=True avoids a full copy when no rotation is needed.
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not fail the image
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)


def _cmyk_to_rgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert CMYK to RGB, through the embedded CMYK profile into sRGB when there is one.

    Pillow's plain ``convert("RGB")`` ignores colour management, which noticeably distorts
    print-oriented CMYK files; it is the fallback when there is no usable profile.
    """
    if icc is not None and _icc_colour_space(icc) == "CMYK":
        try:
            from PIL import ImageCms
        except ImportError:  # Pillow built without LittleCMS
            return image.convert("RGB")
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
            logger.debug("CMYK profile unusable, converting without it: %s", exc)
    return image.convert("RGB")


def _is_grayscale_mode(mode: str) -> bool:
    return mode in _GRAY_8BIT_MODES or mode in _HIGH_DEPTH_MODES


def _pil_to_arrays(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels as C-contiguous HxWx3 (uint8, or uint16 for high-depth gray) and alpha HxW or None.

    Closes ``image`` (and any converted copy) as soon as its array is made, so that no more than
    one decoded copy of the pixels is alive besides the array being built.
    """
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        # Transparency keys on 16-bit gray are ignored: there is no 16-bit gray+alpha mode.
        gray = _release(image)
        return _gray_to_rgb(_high_depth_to_u16(gray, mode)), None
    if mode in _GRAY_8BIT_MODES:
        if image.has_transparency_data:
            la = _release(_converted(image, "LA"))  # also un-premultiplies "La"
            return _gray_to_rgb(la[:, :, 0]), np.ascontiguousarray(la[:, :, 1])
        return _gray_to_rgb(_release(_converted(image, "L"))), None

    # Colour: RGB, RGBA, RGBa, RGBX, P, PA, YCbCr, HSV, LAB, ...
    target = "RGBA" if image.has_transparency_data else "RGB"
    try:
        array = _release(_converted(image, target))
    except ValueError as exc:
        raise UnsupportedImageError(
            f"Pillow mode {mode!r} cannot be converted to {target} ({exc}); "
            "convert the file to 8-bit RGB first"
        ) from exc
    if target == "RGBA":
        return np.ascontiguousarray(array[:, :, :3]), np.ascontiguousarray(array[:, :, 3])
    # np.asarray of a Pillow image is a read-only view of an exported bytes copy; callers may
    # write in place (torch.from_numpy needs writable memory), so own it.
    return np.array(array, order="C"), None


def _converted(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode``; the source is closed when a converted copy replaces it."""
    if image.mode == mode:
        return image
    converted = image.convert(mode)
    image.close()
    return converted


def _release(image: Image.Image) -> np.ndarray:
    """The image's pixels as an array; the Pillow image is closed (its memory freed) at once."""
    array = np.asarray(image)
    image.close()
    return array


def _high_depth_to_u16(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit integer, 32-bit integer and float gray to uint16 (0..65535)."""
    if mode == "F":
        out = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(out, 0.0, 1.0, out=out)
        return np.rint(out * np.float32(65535.0)).astype(np.uint16)
    if mode == "I":
        # 32-bit integer images are in practice 16-bit data (old Pillow opened 16-bit PNG as I).
        return np.clip(array, 0, 65535).astype(np.uint16)
    return array.astype(np.uint16)  # also converts big-endian I;16B to native


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _icc_colour_space(icc: bytes) -> str | None:
    """The ICC header's data colour space ("RGB", "GRAY", "CMYK", ...), or None if malformed."""
    if len(icc) < 128 or icc[36:40] != b"acsp":
        return None
    return icc[16:20].decode("latin-1").strip()


def _usable_icc(icc: bytes | None) -> bytes | None:
    """Keep RGB and gray profiles; drop CMYK/Lab/other and malformed ones."""
    if icc is None:
        return None
    return bytes(icc) if _icc_colour_space(icc) in ("RGB", "GRAY") else None


# --------------------------------------------------------------------------------------------
# Statistics


def mean_luminance(pixels: np.ndarray) -> float:
    """Mean Rec.709 luma, in [0, 1], of an (..., 3) uint8, uint16 or float array.

    Integer arrays are normalised by their dtype's maximum (255, 65535); float arrays are taken
    as values in [0, 1]. Computed from per-channel means in float64, which equals the mean of
    per-pixel luma without allocating an HxW temporary.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim < 1 or pixels.shape[-1] != 3:
        raise ValueError(f"expected an (..., 3) array, got shape {pixels.shape}")
    if pixels.size == 0:
        raise ValueError("mean_luminance of an empty image is undefined")
    level = _MAX_LEVEL.get(pixels.dtype)
    if level is None and not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"expected a uint8, uint16 or float array, got {pixels.dtype}")
    channel_means = pixels.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    luma = float(np.dot(channel_means, np.asarray(REC709_LUMA, dtype=np.float64)))
    return luma / level if level is not None else luma


# --------------------------------------------------------------------------------------------
# Encoding


def output_format(source_format: str, requested: str) -> str:
    """The Pillow format :func:`encode_image` writes for a source format and a requested one.

    ``requested`` ``"jpeg"``/``"png"``/``"webp"`` wins; ``"same"`` keeps JPEG (also for MPO),
    PNG, WebP, TIFF and BMP and writes PNG for anything else.
    """
    explicit = _REQUESTED_FORMATS[_normalise_requested(requested)]
    if explicit is not None:
        return explicit
    return _SAME_FORMAT.get(source_format.upper(), _FALLBACK_FORMAT)


def format_of_extension(path: str) -> str:
    """Pillow's format name for a file name's extension (``"JPEG"`` for ``x.jpeg``), or ``""``."""
    extension = os.path.splitext(path.rstrip("/"))[1].lower()
    Image.init()  # registered_extensions() only knows plugins that have been imported
    return Image.registered_extensions().get(extension, "")


def output_format_for_path(path: str, requested: str) -> str:
    """:func:`output_format` decided from a file name's extension, before decoding.

    Agrees with :func:`output_format` whenever the extension matches the content. Unknown
    extensions map like unknown formats (PNG under ``"same"``).
    """
    return output_format(format_of_extension(path), requested)


def extension_for(fmt: str) -> str:
    """File extension for an output format: ``"JPEG"`` -> ``".jpg"``, ``"TIFF"`` -> ``".tif"``."""
    try:
        return _EXTENSIONS[fmt.upper()]
    except KeyError:
        raise ConfigError(
            f"no output extension for format {fmt!r}; expected one of {sorted(_EXTENSIONS)}"
        ) from None


def encode_image(
    pixels: np.ndarray, source: DecodedImage, options: EncodeOptions, *, fmt: str | None = None
) -> EncodedImage:
    """Encode enhanced ``pixels`` in the format :func:`output_format` picks for ``source``.

    ``fmt`` (a Pillow format name) overrides that choice: the batch job plans output names
    from file extensions before decoding, and a file whose content differs from its extension
    must still be written in the format its planned name says.

    ``pixels`` is HxWx3 ``uint8``, ``uint16``, or float in [0, 1] (any values: NaN counts as 0,
    the rest is clipped). PNG and TIFF outputs of 16-bit sources are written at 16 bits per
    channel (uint16 exactly, float rounded to 65535 levels, uint8 scaled by 257); everything else
    at 8 bits (float rounded to 255 levels, uint16 as ``round(x / 257)``). Grayscale sources are
    written as grayscale (Rec.709 luma of ``pixels``), the source alpha is re-attached where the
    format supports it (PNG, WebP, TIFF), and the ICC profile and EXIF are kept where the format
    supports them, with EXIF Orientation reset to 1 (the pixels are already upright) and the EXIF
    pixel dimensions set to the written size.

    Raises:
        UnsupportedImageError: the image is wider or taller than the output format allows
            (JPEG 65500, WebP 16383 pixels).
        ValueError: ``pixels`` is not HxWx3 uint8/uint16/float or its size differs from ``source``.
    """
    pixels = np.asarray(pixels)
    expected = (source.height, source.width, 3)
    if pixels.shape != expected:
        raise ValueError(f"pixels must have shape {expected} (the source's), got {pixels.shape}")
    if pixels.dtype not in _MAX_LEVEL and not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"pixels must be uint8, uint16 or float, got {pixels.dtype}")
    fmt = (fmt or output_format(source.format, options.format)).upper()
    extension_for(fmt)  # ConfigError for formats this module does not write
    max_side = _MAX_SIDE.get(fmt)
    if max_side is not None and max(source.width, source.height) > max_side:
        raise UnsupportedImageError(
            f"{source.width}x{source.height} is too large for {fmt} (at most {max_side} pixels "
            "per side); choose --format png for this image"
        )

    depth = np.dtype(np.uint16 if source.bit_depth == 16 and fmt in _DEEP_FORMATS else np.uint8)
    alpha = source.alpha if fmt in _ALPHA_FORMATS else None
    if source.grayscale:
        channels = [_to_depth(_luma(pixels), depth)]
        mode = "L"
    else:
        channels = [_to_depth(pixels, depth)]
        mode = "RGB"
    if alpha is not None:
        channels.append(_to_depth(alpha, depth))
        mode += "A"
    array = channels[0] if len(channels) == 1 else _stack_channels(channels)
    del channels

    if depth == np.uint16:
        data = _encode_16bit(array, fmt, mode, source)
    else:
        image = Image.fromarray(array)
        assert image.mode == mode, (image.mode, mode)
        buffer = io.BytesIO()
        image.save(buffer, fmt, **_save_options(fmt, mode, source, options))
        data = buffer.getvalue()
    return EncodedImage(data=data, format=fmt, extension=extension_for(fmt))


def _clip_unit(values: np.ndarray) -> np.ndarray:
    out = np.nan_to_num(values.astype(np.float32, copy=True), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)


def _luma(pixels: np.ndarray) -> np.ndarray:
    """Rec.709 luma (HxW float32 in [0, 1]) of uint8/uint16/float HxWx3 pixels."""
    values = _clip_unit(to_unit_float(pixels))
    luma = values @ np.asarray(REC709_LUMA, dtype=np.float32)
    return np.clip(luma, 0.0, 1.0, out=luma)


def _to_depth(values: np.ndarray, depth: np.dtype) -> np.ndarray:
    """uint8/uint16/float values as ``depth`` (uint8 or uint16), by the rules of encode_image."""
    if values.dtype == depth:
        return values
    if values.dtype == np.uint8:  # to 16 bits: 255 -> 65535 exactly
        return values.astype(np.uint16) * np.uint16(257)
    if values.dtype == np.uint16:  # to 8 bits: round(x / 257); x / 257 is never exactly n + 0.5
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    # [0, 1] float to integers by round-half-to-even of x * max (the inverse of x / max).
    level = np.float32(_MAX_LEVEL[depth])
    return np.rint(_clip_unit(values) * level).astype(depth)


def _stack_channels(channels: list[np.ndarray]) -> np.ndarray:
    planes = [c if c.ndim == 3 else c[:, :, None] for c in channels]
    return np.ascontiguousarray(np.concatenate(planes, axis=2))


def _encode_16bit(array: np.ndarray, fmt: str, mode: str, source: DecodedImage) -> bytes:
    """16-bit PNG (imagecodecs/libpng) or TIFF (tifffile) with the ICC profile and EXIF kept.

    Pillow cannot hold 16-bit colour, so it cannot write these. ``array`` is HxW (gray), HxWx2
    (gray + alpha), HxWx3 (RGB) or HxWx4 (RGBA) uint16.
    """
    gray = mode in ("L", "LA")
    icc = source.icc_profile
    if icc is not None and _icc_colour_space(icc) != ("GRAY" if gray else "RGB"):
        icc = None
    if fmt == "PNG":
        import imagecodecs

        png = bytes(imagecodecs.png_encode(array))
        exif = _upright_exif(source.exif, source.width, source.height)
        return _png_with_metadata(png, icc, exif)

    import tifffile

    exif = _upright_exif(source.exif, source.width, source.height)
    if exif is not None:
        # Pillow exposes no EXIF block for TIFF sources, so this is a PNG/JPEG with a .tif name.
        logger.debug("16-bit TIFF output: source EXIF not written (tifffile writes no Exif IFD)")
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        array,
        photometric="minisblack" if gray else "rgb",
        planarconfig="contig",
        extrasamples=("unassalpha",) if mode.endswith("A") else None,
        compression="zlib",  # Adobe Deflate (tag value 8), as the 8-bit TIFFs: lossless, common
        iccprofile=icc,
        metadata=None,  # no tifffile JSON in ImageDescription
        software=False,
    )
    return buffer.getvalue()


def _png_with_metadata(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """``png`` with iCCP and eXIf chunks inserted after IHDR (both must precede the image data)."""
    chunks = b""
    if icc is not None:
        # Profile name, NUL, compression method 0 (zlib), compressed profile (PNG spec 11.3.3.3).
        chunks += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif is not None:
        # eXIf holds the TIFF-structured EXIF without the JPEG "Exif\0\0" prefix.
        chunks += _png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    if not chunks:
        return png
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _save_options(
    fmt: str, mode: str, source: DecodedImage, options: EncodeOptions
) -> dict[str, object]:
    """Keyword arguments for ``Image.save``: quality and the metadata the format can carry."""
    kwargs: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = options.quality
    if fmt == "TIFF":
        kwargs["compression"] = "tiff_adobe_deflate"  # lossless and readable everywhere
    if fmt == "BMP":
        return kwargs  # Pillow writes neither ICC nor EXIF to BMP

    # WebP has no grayscale; Pillow stores L/LA as RGB/RGBA, so only RGB profiles fit there.
    stored_gray = mode in ("L", "LA") and fmt != "WEBP"
    icc = source.icc_profile
    if icc is not None and _icc_colour_space(icc) == ("GRAY" if stored_gray else "RGB"):
        kwargs["icc_profile"] = icc

    exif = _upright_exif(source.exif, source.width, source.height)
    if exif is not None and fmt == "JPEG" and len(exif) > _JPEG_MAX_MARKER_BYTES:
        logger.debug("dropping EXIF of %d bytes: too long for a JPEG APP1 segment", len(exif))
        exif = None
    if exif is not None:
        kwargs["exif"] = exif
    return kwargs


def _upright_exif(raw: bytes | None, width: int, height: int) -> bytes | None:
    """The source EXIF for an upright ``width`` x ``height`` output, or None if absent/unreadable.

    Orientation becomes 1, and the pixel-dimension tags that are present (IFD0 ImageWidth and
    ImageLength, Exif IFD PixelXDimension and PixelYDimension) are set to the written size:
    after a 90-degree EXIF rotation the source's values are swapped.
    """
    if not raw:
        return None
    try:
        exif = Image.Exif()
        exif.load(raw)
        if _EXIF_ORIENTATION in exif:
            exif[_EXIF_ORIENTATION] = 1
        for tag, value in ((_IFD0_WIDTH, width), (_IFD0_HEIGHT, height)):
            if tag in exif:
                exif[tag] = value
        if _EXIF_IFD in exif:
            exif_ifd = exif.get_ifd(_EXIF_IFD)  # a live dict: tobytes() writes what is set here
            for tag, value in ((_EXIF_PIXEL_X, width), (_EXIF_PIXEL_Y, height)):
                if tag in exif_ifd:
                    exif_ifd[tag] = value
        data = exif.tobytes()
    except Exception as exc:  # noqa: BLE001 - malformed EXIF is dropped, never fatal
        logger.debug("dropping unreadable EXIF: %s", exc)
        return None
    # An EXIF block with no tags (e.g. only a thumbnail) is not worth writing.
    return data if len(exif) else None


def _normalise_requested(requested: str) -> str:
    """Lower-case a requested output format and check it; ``"jpg"`` is ``"jpeg"``."""
    if not isinstance(requested, str):
        raise ConfigError(f"output format must be a string, got {requested!r}")
    key = requested.strip().lower()
    if key not in _REQUESTED_FORMATS:
        raise ConfigError(
            f"unknown output format {requested!r}; choose one of: same, jpeg, png, webp"
        )
    return "jpeg" if key == "jpg" else key
