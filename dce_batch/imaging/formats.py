"""Image formats by name and extension: what the job reads, what it writes, and the size limits.

All of it is decided from names, before a byte of the file is read, so that the planner can name
outputs and size workers: the extensions treated as images, the output format for a source format
and a requested one (``--format``) and its extension, which output formats hold alpha and 16 bits,
and the decompression-bomb limit with the largest file it allows.
"""

from __future__ import annotations

import os
from typing import Final

from PIL import Image

from dce_batch.errors import ConfigError, UnsupportedImageError, describe_error

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "UNDECODABLE_EXTENSIONS",
    "UNREAD_IMAGE_EXTENSIONS",
    "extension_for",
    "format_of_extension",
    "max_file_bytes",
    "output_format",
    "output_format_for_path",
]

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

#: What to do with a HEIC/HEIF photo, which Pillow has no codec for (named by its extension in
#: a folder, or recognised by its bytes).
HEIF_ADVICE: Final = ("HEIC/HEIF photos cannot be decoded; convert them to JPEG first (for example with "
                      "heif-convert, or export as JPEG from the phone or Photos)")

#: Extensions of formats people store photos in that cannot be decoded here: a folder's such
#: files are listed with this manifest error, so that each gets a row that says what to do rather
#: than no row at all.
UNDECODABLE_EXTENSIONS: Final[dict[str, str]] = dict.fromkeys(
    (".heic", ".heif", ".hif"), describe_error(UnsupportedImageError(HEIF_ADVICE)))

#: Extensions of image formats that are not read (camera raw, layered and vector formats, icons,
#: HDR): a folder's such files are skipped, and the run says how many, so that a folder of raw
#: files is not mistaken for an empty one. Documents and sidecars (.txt, .md, .xmp) pass unmentioned.
UNREAD_IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {
        ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf",
        ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".raw",
        ".psd", ".psb", ".xcf", ".svg", ".svgz", ".eps", ".ico", ".icns", ".cur",
        ".exr", ".hdr", ".pfm", ".dds", ".jxl", ".jxr", ".wdp", ".hdp", ".pcx", ".sgi", ".ras", ".xbm", ".xpm",
    }
)  # fmt: skip

# Shown in "unsupported" messages.
SUPPORTED_TEXT: Final = "JPEG, PNG, WebP, TIFF, BMP, GIF, MPO, JPEG 2000, AVIF, PNM, TGA, QOI"
#: Pillow's names of the formats decoded, whatever a file's extension: those of SUPPORTED_TEXT
#: (DIB is BMP without its file header, PPM Pillow's name for PNM). Pillow's other plugins
#: (FITS, BLP, ICO, PSD, DDS ...) are refused from their signature without being opened: they
#: hold no photos, and some decode without bound (FITS's gzip decoder is a Python loop per
#: pixel: 22 s and 4.3 GB for a 395 KB file; a BLP's header of 1x1 pixels may wrap a JPEG of
#: 16 MP and thousands of scans).
DECODED_FORMATS: Final = frozenset(
    {"JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "DIB", "GIF", "JPEG2000", "AVIF", "PPM", "TGA", "QOI"})

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
ALPHA_FORMATS: Final = frozenset({"PNG", "WEBP", "TIFF"})
# Output formats that carry the source's ICC profile and EXIF (Pillow writes neither to BMP).
METADATA_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})
# Output formats that store 16 bits per channel: 16-bit sources are written at 16 bits there.
DEEP_FORMATS: Final = frozenset({"PNG", "TIFF"})
# Largest width/height the encoders accept (libjpeg, libwebp); PNG/TIFF/BMP go far beyond 100 MP.
MAX_SIDE: Final[dict[str, int]] = {"JPEG": 65500, "WEBP": 16383}


def max_file_bytes(max_pixels: int) -> int:
    """The most bytes a file holding one image of up to ``max_pixels`` takes in a supported format.

    Uncompressed 16-bit RGBA (TIFF, PNG's worst case) is 8 bytes per pixel; 256 MiB more covers
    metadata, thumbnails and a few extra frames. A larger file is read whole by no worker: it
    could only exhaust the memory an actor was sized for (and fail every rerun the same way).
    """
    return max_pixels * 8 + (256 << 20)


def output_format(source_format: str, requested: str) -> str:
    """The Pillow format :func:`encode_image` writes for a source format and a requested one.

    ``requested`` ``"jpeg"``/``"png"``/``"webp"`` wins; ``"same"`` keeps JPEG (also for MPO),
    PNG, WebP, TIFF and BMP and writes PNG for anything else.
    """
    explicit = _REQUESTED_FORMATS[normalise_requested_format(requested)]
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


def normalise_requested_format(requested: str) -> str:
    """Lower-case a requested output format and check it; ``"jpg"`` is ``"jpeg"``."""
    if not isinstance(requested, str):
        raise ConfigError(f"output format must be a string, got {requested!r}")
    key = requested.strip().lower()
    if key not in _REQUESTED_FORMATS:
        raise ConfigError(
            f"unknown output format {requested!r}; choose one of: same, jpeg, png, webp"
        )
    return "jpeg" if key == "jpg" else key
