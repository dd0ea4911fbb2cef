"""Bytes to upright pixels in their native depth: identification, size checks, modes, orientation.

Pillow identifies every file and checks its size from the header before any pixel is decoded
(decompression bombs), with the caller's limit and without changing Pillow's global settings. It
decodes the pixels, reads EXIF/ICC and orientation, converts CMYK through its profile and every
other mode to RGB plus alpha. 16-bit colour, which Pillow cannot hold, is decoded by
:mod:`~dce_batch.imaging.deep`. Colour tagged with a wide-gamut profile is converted to sRGB
(:mod:`~dce_batch.imaging.colour_space`).

A JPEG whose compressed data ends early or is damaged still decodes in Pillow: libjpeg fills what
is missing with grey and reports it only as a warning, which Pillow drops. Such a file is a
:class:`~dce_batch.errors.CorruptImageError` here, read from libjpeg-turbo's own warnings through
simplejpeg (:func:`_jpeg_damage`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import struct
import warnings
import zlib
from typing import Final

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, ImageOps, TiffImagePlugin

from dce_batch.errors import (
    ConfigError,
    CorruptImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from dce_batch.imaging.colour_space import needs_conversion, to_srgb
from dce_batch.imaging.decoded import GRAY_8BIT_MODES, HIGH_DEPTH_MODES, DecodedImage
from dce_batch.imaging.deep import decode_deep_colour, is_deep_colour
from dce_batch.imaging.formats import DECODED_FORMATS, DEFAULT_MAX_PIXELS, HEIF_ADVICE, SUPPORTED_TEXT
from dce_batch.imaging.isobmff import MAX_ITEMS, isobmff_extent, item_count
from dce_batch.imaging.jpeg2000_stream import jpeg2000_structures
from dce_batch.imaging.jpeg_stream import MAX_JPEG_PASSES, MAX_JPEG_SCANS, jpeg_scan_work
from dce_batch.imaging.metadata import icc_colour_space, icc_too_costly, usable_icc
from dce_batch.imaging.png_stream import png_stream_damage
from dce_batch.imaging.repairs import JPEG_EOI, close_jpeg, drop_damaged_png_chunks, trailing_zero_bytes

__all__ = ["decode_image"]

logger = logging.getLogger(__name__)

# What Pillow's decoders raise on damaged data. zlib.error comes from PNG/TIFF inflate;
# RuntimeError from the AVIF plugin ("Failed to decode image: Missing or empty image item").
_DECODE_ERRORS: Final = (
    OSError,
    RuntimeError,
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
        ImageTooLargeError: the image has more than ``max_pixels`` pixels, or its headers ask
            for far more decoding work than any real picture of its size (a JPEG's scans, a JPEG
            2000's code-blocks, an AVIF's items, a large run-length BMP: the ``_check_*``
            functions below).
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
            f"empty file (0 bytes), not an image; supported: {SUPPORTED_TEXT}. "
            "Check that the upload or copy completed"
        )

    # Damage that leaves every pixel intact is repaired as viewers do (dce_batch.imaging.repairs).
    closed = close_jpeg(data)
    jpeg_was_closed = closed is not data
    data = _without_plain_pnm_comments(drop_damaged_png_chunks(closed))

    with warnings.catch_warnings():
        # Some plugins still consult Pillow's own limit (e.g. when seeking frames); its warning
        # is noise because our limit, checked below, is the one that applies. Pillow's
        # UserWarnings about damaged metadata ("Corrupt EXIF data") would flood batch logs;
        # damage that matters surfaces as an exception instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        _check_webp_canvas(data, max_pixels)
        _check_isobmff_items(data)
        image = _identify(data)
        fmt = str(image.format)
        _check_size(image.size, max_pixels)
        if fmt in _JPEG_FORMATS:
            _check_jpeg_scans(data)
        elif fmt == "JPEG2000":
            _check_jpeg2000_structures(data)
        elif fmt in ("BMP", "DIB"):
            _check_run_length_bmp(image)
        elif fmt == "TIFF":
            _check_tiff_jpeg_scans(image, data)
        elif fmt == "TGA":
            _prepare_tga_colour_map(image, data)
        if is_deep_colour(image, fmt, data):
            return _in_srgb(decode_deep_colour(data, image, fmt))
        _load(image, fmt)
        _check_zero_tail(data, fmt)
        if fmt in _JPEG_FORMATS:
            _check_jpeg_data(data, closed=jpeg_was_closed)

        mode = image.mode
        if mode in ("P", "PA") and image.palette is None:
            # A PNG of colour type 3 whose PLTE chunk is missing: Pillow decodes the indices and
            # then fails an assertion when asked for the palette's transparency.
            raise CorruptImageError(
                f"{fmt} is a palette image without its palette (no PLTE chunk); the file is damaged, "
                "re-export or re-download it"
            )
        # EXIF and ICC are read after load() because PNG may store them after the pixel data.
        exif = image.info.get("exif") or None
        icc = image.info.get("icc_profile") or None
        _apply_orientation(image)
        if mode == "CMYK":
            image = _cmyk_to_rgb(image, icc)
            icc = None  # pixels are sRGB now; a CMYK profile cannot describe them
        pixels, alpha = _pil_to_arrays(image)
        del image
        if fmt == "PNG":
            _check_png_data(data, last_row_black=not pixels[-1].any())

    return _in_srgb(DecodedImage(
        pixels=pixels,
        alpha=alpha,
        format=fmt,
        mode=mode,
        grayscale=_is_grayscale_mode(mode),
        bit_depth=8 if pixels.dtype == np.uint8 else 16,
        exif=bytes(exif) if exif is not None else None,
        icc_profile=usable_icc(icc),
    ))


def _in_srgb(decoded: DecodedImage) -> DecodedImage:
    """``decoded`` with its colour converted to sRGB if its profile is an RGB space other than sRGB."""
    icc = decoded.icc_profile
    if decoded.grayscale or not needs_conversion(icc):
        return decoded
    assert icc is not None
    return dataclasses.replace(decoded, pixels=to_srgb(decoded.pixels, icc), converted_to_srgb=True)


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
    # First format not decoded (formats.DECODED_FORMATS) whose signature matched.
    other_format: str | None = None
    Image.preinit()  # the common plugins first, in Image.open's order
    Image.init()
    for fmt in tuple(Image.ID):
        factory, accept = Image.OPEN[fmt]
        if fmt not in DECODED_FORMATS and accept is None:
            continue
        try:
            verdict = accept(prefix) if accept else True
        except _NOT_THIS_FORMAT:  # a signature check that reads past a prefix this short (BMP's)
            continue
        if isinstance(verdict, str):  # e.g. "... because AVIF support not installed"
            hints.append(verdict)
            continue
        if not verdict:
            continue
        if fmt not in DECODED_FORMATS:
            # Its header is read to tell the format from a damaged file that happens to start
            # with its signature (CUR's and ICO's are four bytes); its pixels never are.
            try:
                _read_header_only(fmt, factory, data)
            except (*_NOT_THIS_FORMAT, *_DECODE_ERRORS, Image.DecompressionBombError) as exc:
                if damaged is None:
                    damaged = (fmt, exc)
                continue
            other_format = other_format or fmt
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
            if fmt == "AVIF" and "Not implemented" in str(exc):
                # libavif's AVIF_RESULT_NOT_IMPLEMENTED: a feature this build does not decode.
                raise UnsupportedImageError(
                    f"is an AVIF that uses a feature this build's libavif does not decode ({exc}); "
                    "convert it to JPEG, PNG or an 8/10-bit still AVIF (or, if it is one, the file is damaged)"
                ) from exc
            raise CorruptImageError(
                f"looks like {fmt} but its header cannot be read ({type(exc).__name__}: {exc}); "
                "the file is damaged or truncated, re-export or re-download it"
            ) from exc
    if damaged is not None:
        fmt, exc = damaged
        if fmt == "TIFF" and str(exc).isdigit() and int(str(exc)) in _TIFF_COMPRESSION_NAMES:
            # Pillow names a compression scheme it has no decoder for by its number alone; a
            # number no writer uses is a damaged header.
            raise UnsupportedImageError(_tiff_compression_advice(int(str(exc)))) from exc
        if fmt == "TIFF" and "unknown pixel mode" in str(exc):
            # Pillow's TIFF reader names no mode for this combination of samples: a valid file
            # of a layout it does not decode, far more often than a damaged one.
            raise UnsupportedImageError(
                f"is a TIFF whose sample layout cannot be decoded ({type(exc).__name__}: {exc}), "
                "e.g. floating-point samples or more than four channels; convert it to 8- or 16-bit "
                "RGB or gray (or, if it should be one of those, the file is damaged)"
            ) from exc
        if fmt == "JPEG" and "-bit layers" in str(exc):
            # Pillow reads 8-bit JPEG only; 12-bit (medical, some cameras' raw previews) and 16-bit
            # lossless JPEG are valid files it refuses in the frame header.
            raise UnsupportedImageError(
                f"is a JPEG of more than 8 bits per sample ({exc}), which cannot be decoded; "
                "convert it to 16-bit PNG or TIFF"
            ) from exc
        raise CorruptImageError(
            f"has a {fmt} signature but its header cannot be read ({type(exc).__name__}: {exc}); "
            "the file is damaged or truncated, re-export or re-download it"
        ) from exc
    if other_format is not None:
        raise UnsupportedImageError(
            f"its first bytes say {other_format}, which is not read (Pillow's other formats hold no "
            f"photos, and some decode without bound); supported: {SUPPORTED_TEXT}. Convert it to one of those"
        )
    raise UnsupportedImageError(_describe_unrecognised(data, hints))


def _read_header_only(fmt: str, factory, data: bytes) -> None:
    """Read the header of a format that is not decoded, raising as its plugin's opening does."""
    if fmt != "ICO":
        factory(io.BytesIO(data), "")
        return
    # ICO's plugin decodes the largest picture to open the file: its directory is read instead.
    from PIL import IcoImagePlugin

    directory = IcoImagePlugin.IcoFile(io.BytesIO(data))
    if not directory.entry or any(entry.offset + entry.size > len(data) for entry in directory.entry):
        raise SyntaxError("the icon directory is empty or points past the end of the file")


def _describe_unrecognised(data: bytes, hints: list[str]) -> str:
    """Say what the bytes look like, so the user can tell a bad file from a missing codec."""
    head = data[:12]
    printable = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
    message = f"not a recognised image format (first bytes {head.hex(' ')} {printable!r})"
    if len(data) < 16:
        unit = "byte" if len(data) == 1 else "bytes"
        message += f": only {len(data)} {unit}, too short to be an image (a truncated upload or copy?)"
    elif hints:
        message += f": {hints[0]}"
    elif data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"heif", b"mif1", b"msf1"):
        message += f": {HEIF_ADVICE}"
    elif data.startswith(b"version https://git-lfs"):
        message += ": this is a Git LFS pointer, run 'git lfs pull' to fetch the real file"
    elif data.lstrip()[:1] in (b"<", b"{"):
        message += ": the file is text (HTML/XML/JSON), probably an error page saved in its place"
    return f"{message}; supported: {SUPPORTED_TEXT}"


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    """Raise :class:`ImageTooLargeError` if ``size`` (from the header) exceeds ``max_pixels``."""
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} = {_megapixels(pixels)} MP exceeds the limit of "
            f"{max_pixels / 1e6:g} MP ({max_pixels:,} pixels); raise --max-pixels if this image "
            "is expected"
        )


def _megapixels(pixels: int) -> str:
    """``pixels`` in MP, with the digits that tell a small image from an empty one."""
    mp = pixels / 1e6
    return f"{mp:.1f}" if mp >= 0.1 else f"{mp:.2g}"


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
    except MemoryError as exc:
        # Pillow's decoders refuse a row of more than 2**31 bits (a 100,000,000 x 1 RGB strip)
        # with MemoryError before allocating anything; a worker short of memory says the same.
        width, height = image.size
        raise ImageTooLargeError(
            f"{fmt} {width}x{height} could not be decoded: Pillow could not allocate memory for it "
            "(rows of more than 2**31 bits, or a worker short of memory); convert it to a shape "
            "of fewer pixels per row, or give the workers more memory"
        ) from exc
    except _DECODE_ERRORS as exc:
        compression = image.tag_v2.get(TiffImagePlugin.COMPRESSION) if fmt == "TIFF" else None
        if compression in _TIFF_COMPRESSION_NAMES:
            # A scheme Pillow knows (WebP) that the libtiff it was built with may lack ("WEBP
            # compression support is not configured"); the others fail when the header is read.
            raise UnsupportedImageError(_tiff_compression_advice(compression)) from exc
        raise CorruptImageError(
            f"{fmt} data is damaged or truncated ({type(exc).__name__}: {exc}); "
            "re-export or re-download the file"
        ) from exc


def _tiff_compression_advice(compression: int) -> str:
    return (f"is a TIFF compressed with {_TIFF_COMPRESSION_NAMES[compression]} (compression {compression}), "
            "which cannot be decoded; "
            "convert it to an uncompressed, LZW, Deflate or JPEG-compressed TIFF, or to PNG "
            "(or, if it should be one of those, the file is damaged)")


# Compression schemes of TIFF that Pillow does not decode, or (WebP) that depend on how its libtiff
# was built, by the numbers their writers use (tifffile's TIFF.COMPRESSION).
_TIFF_COMPRESSION_NAMES: Final = {34712: "JPEG 2000", 34887: "LERC", 34933: "PNG", 50001: "WebP",
                                  50002: "JPEG XL", 52546: "JPEG XL"}


_PLAIN_PNM: Final = (b"P1", b"P2", b"P3")
_PNM_COMMENT: Final = re.compile(rb"#[^\r\n]*")
_MAX_RUN_LENGTH_BMP_PIXELS: Final = 20_000_000
_JPEG_FORMATS: Final = ("JPEG", "MPO")  # MPO: a JPEG followed by more pictures; its first is the one read
_TIFF_JPEG: Final = 7  # the compression of a JPEG-compressed TIFF (TIFF 6.0 Technical Note 2)
# libjpeg-turbo's warnings that mean pixels are missing or wrong (jerror.h: JWRN_JPEG_EOF, JWRN_HIT_MARKER,
# JWRN_HUFF_BAD_CODE, JWRN_ARITH_BAD_CODE, JWRN_MUST_RESYNC). Others pass: "extraneous bytes before
# marker" is common in files that display correctly (webcams, scanners, some cameras), and warnings
# about metadata (JFIF version, ICC marker, Adobe transform) say nothing about the pixels.
_JPEG_DAMAGE_WARNINGS: Final = (
    "Premature end of JPEG file",
    "Corrupt JPEG data: premature end of data segment",
    "Corrupt JPEG data: bad Huffman code",
    "Corrupt JPEG data: bad arithmetic code",
    "Corrupt JPEG data: found marker",
)


# Also damage in a file whose end marker was added (see _jpeg_damage): data that does not end
# exactly at the marker, or garbage read as scan parameters.
_JPEG_CLOSED_DAMAGE: Final = ("Corrupt JPEG data: ", "Invalid SOS parameters")
#: A run of zero bytes this long before an added end marker is a zero-filled tail.
_ZERO_TAIL_BYTES: Final = 16
#: The same at the end of an AVIF or lossless WebP (no encoder of either ended a test image with
#: more than 2 zero bytes).
_ZERO_TAIL_BYTES_COMPRESSED: Final = 64


def _jpeg_damage(data: bytes, *, closed: bool = False) -> str | None:
    """libjpeg-turbo's warning if the JPEG's compressed data is cut short or damaged, else None.

    The data is entropy-decoded in full at 1/8 scale (the scaled IDCT skips most of the pixel
    work: about 2 ms per DICM photo, a third of Pillow's decode), and simplejpeg's strict mode
    turns the first warning into an exception. A first warning that is not about the pixels ends
    the check without a finding. Bytes lost mid-scan from a progressive JPEG, and damage that
    leaves the decoder in step, show only as "extraneous bytes" or not at all: they pass.

    ``closed``: the end marker was missing and :func:`~dce_batch.imaging.repairs.close_jpeg` added
    it. The repair holds only for a file whose data then ends exactly at the marker. A file whose
    tail was zero-filled (a preallocated download that stopped) decodes its zeros as garbage
    blocks: it ends in a run of zero bytes, and libjpeg reports "N extraneous bytes before marker
    0xd9" or a premature end where it can read the file (simplejpeg cannot read CMYK with
    subsampled channels, so the run of zeros is checked first).
    """
    if closed:
        zeros = trailing_zero_bytes(data, len(data) - len(JPEG_EOI))
        if zeros >= _ZERO_TAIL_BYTES:
            # Scan data seldom ends in 16 zero bytes (the encoder pads its last byte with ones); a
            # zero-filled tail always does.
            return f"its last {zeros} bytes are zeros, and it has no end marker"
    try:
        simplejpeg.decode_jpeg(data, strict=True, min_height=1, min_width=1)
    except (ValueError, RuntimeError) as exc:
        message = str(exc).strip()
        if message.startswith(_JPEG_DAMAGE_WARNINGS + (_JPEG_CLOSED_DAMAGE if closed else ())):
            return message
    return None


def _check_tiff_jpeg_scans(image: ImageFile.ImageFile, data: bytes) -> None:
    """:func:`_check_jpeg_scans` for each strip or tile of a JPEG-compressed TIFF (compression 7),
    which libtiff decodes with libjpeg and bounds only at 100 scans (97 empty scans in one strip
    of 10000x10000: 10.7 s)."""
    tags = image.tag_v2
    if tags.get(TiffImagePlugin.COMPRESSION) != _TIFF_JPEG:
        return
    offsets = tags.get(TiffImagePlugin.STRIPOFFSETS) or tags.get(TiffImagePlugin.TILEOFFSETS) or ()
    counts = tags.get(TiffImagePlugin.STRIPBYTECOUNTS) or tags.get(TiffImagePlugin.TILEBYTECOUNTS) or ()
    for offset, count in zip(_tag_values(offsets), _tag_values(counts)):
        if isinstance(offset, int) and isinstance(count, int):  # damaged tags are libtiff's to report
            _check_jpeg_scans(data[offset:offset + count], where=" (a strip or tile of a TIFF)")


def _tag_values(value: object) -> tuple:
    """A TIFF tag's values as Pillow gives them (one value, a tuple, or bytes for type BYTE)."""
    if isinstance(value, bytes):
        return tuple(value)
    return value if isinstance(value, tuple) else (value,)


def _check_jpeg_scans(data: bytes, *, where: str = "") -> None:
    """Raise :class:`ImageTooLargeError` for a JPEG whose scans would keep the decoder busy far
    longer than any real picture of its size (:mod:`~dce_batch.imaging.jpeg_stream`), before any
    of them is decoded."""
    work = jpeg_scan_work(data)
    if work.excessive:
        what = (f"JPEG{where} has more than {MAX_JPEG_SCANS} scans" if work.scans > MAX_JPEG_SCANS
                else f"JPEG{where}: its {work.scans} scans make more than {MAX_JPEG_PASSES} passes over the picture")
        raise ImageTooLargeError(
            f"{what} (encoders write 1 to about 18 scans, at most about 6 passes), so decoding it could "
            "take many minutes: a decompression bomb or a damaged file. If the picture is yours, rewrite "
            "it as a baseline JPEG (for example `jpegtran -optimize IN.jpg > OUT.jpg`, which keeps every pixel)",
            by_pixels=False,
        )


def _check_jpeg2000_structures(data: bytes) -> None:
    """Raise :class:`ImageTooLargeError` for a JPEG 2000 codestream whose code-blocks and precincts
    would cost OpenJPEG gigabytes before it reads any data (:mod:`~dce_batch.imaging.jpeg2000_stream`)."""
    structures = jpeg2000_structures(data)
    if structures is not None and structures.excessive:
        raise ImageTooLargeError(
            f"JPEG 2000 asks for {structures.in_one_tile:,} code-blocks and precincts in one tile for "
            f"{structures.samples:,} samples: its code-blocks or precincts are far smaller than any "
            "encoder's, and decoding it would take gigabytes "
            "or minutes (a decompression bomb or a damaged file). If the picture is yours, re-encode it "
            "with the encoder's defaults (64x64 code-blocks), or as PNG or TIFF",
            by_pixels=False,
        )


def _without_plain_pnm_comments(data: bytes) -> bytes:
    """A plain (text) PNM without its comments, which Pillow removes one at a time by re-slicing
    the rest of a 1 MB block: quadratic, so 1 MB of comments took 10 s and 2 MB 34 s. Binary
    PNMs, and plain ones without comments, are returned as they are."""
    if data[:2] in _PLAIN_PNM and data[2:3].isspace() and b"#" in data:
        return _PNM_COMMENT.sub(b"", data)
    return data


def _check_run_length_bmp(image: ImageFile.ImageFile) -> None:
    """Raise :class:`ImageTooLargeError` for a run-length BMP larger than any such BMP is: Pillow
    decodes them in Python and pads each row ended early one byte per step (about 100 ns a
    pixel), so 10000x10000 one-pixel rows (41 KB) took 10.6 s, and 100,000,000 x 1 (1 KB) 10.4 s.
    Run-length BMPs are 16- and 256-colour pictures the size of a screen."""
    width, height = image.size
    if image.tile and image.tile[0][0] == "bmp_rle" and width * height > _MAX_RUN_LENGTH_BMP_PIXELS:
        raise ImageTooLargeError(
            f"BMP is run-length encoded and {width}x{height} = {_megapixels(width * height)} MP, more than "
            f"{_MAX_RUN_LENGTH_BMP_PIXELS / 1e6:g} MP: its decoder is a Python loop that could take minutes "
            "(a decompression bomb or a damaged file). Convert it to PNG",
            by_pixels=False,
        )


# Bytes per entry of the raw palettes Pillow's TGA reader makes of each colour-map depth.
_TGA_ENTRY_BYTES = {"BGRA;15Z": 2, "BGR": 3, "BGRA": 4}


def _prepare_tga_colour_map(image: ImageFile.ImageFile, data: bytes) -> None:
    """A colour-mapped TGA (types 1 and 9) as the format allows it and Pillow's reader does not.

    * Its colour map may hold up to 65,535 entries; 8-bit indices reach the first 256 of them,
      and Pillow refuses a palette longer than that ("invalid palette size"). The rest cannot be
      shown: a map that starts at entry 0 is cut to 256 entries. One that starts further on
      (Pillow puts black entries before it) stays refused: its pixels would index entries it
      does not hold, as in a damaged header.
    * Indices of other than 8 bits (16, which a map of more than 256 colours needs): Pillow has
      no decoder for them. That is :class:`UnsupportedImageError`, not damage.
    """
    if image.mode != "P" or len(data) < 18:
        return
    if data[16] != 8:
        raise UnsupportedImageError(
            f"is a colour-mapped TGA with {data[16]}-bit indices, which cannot be decoded (8-bit indices "
            "can); convert it to PNG or a true-colour TGA (or, if it should be one of those, the file is damaged)"
        )
    palette = image.palette
    entry = _TGA_ENTRY_BYTES.get(str(getattr(palette, "rawmode", "")))
    first_entry = int.from_bytes(data[3:5], "little")
    if palette is not None and entry is not None and first_entry == 0 and len(palette.palette) > 256 * entry:
        palette.palette = palette.palette[: 256 * entry]


def _check_isobmff_items(data: bytes) -> None:
    """Raise :class:`ImageTooLargeError` for an ISOBMFF file (AVIF) with more items than any camera
    writes, before libavif parses them (:mod:`~dce_batch.imaging.isobmff`)."""
    if data[4:8] != b"ftyp":
        return
    items = item_count(data)
    if items > MAX_ITEMS:
        raise ImageTooLargeError(
            f"AVIF holds {items:,} items (more than {MAX_ITEMS:,}; a 100 MP picture in 256x256 tiles has "
            "about 1,600), so reading it could take minutes: a decompression bomb or a damaged file. "
            "If the picture is yours, re-encode it as a single-image AVIF, or as PNG or JPEG",
            by_pixels=False,
        )


def _check_jpeg_data(data: bytes, *, closed: bool = False) -> None:
    """Raise :class:`CorruptImageError` for a JPEG that Pillow decoded with missing or wrong pixels."""
    damage = _jpeg_damage(data, closed=closed)
    if damage is not None:
        raise CorruptImageError(
            f"JPEG data is damaged or truncated (libjpeg: {damage}); part of the picture would be "
            "grey or garbled; re-export or re-download the file"
        )


def _check_zero_tail(data: bytes, fmt: str) -> None:
    """Raise :class:`CorruptImageError` for an AVIF or lossless WebP whose data ends in a run of
    zero bytes: a preallocated file whose download or copy stopped. Their decoders read the zeros
    as data (a flat grey AVIF, garbage WebP pixels) without an error. Zeros after the file's own
    extent (the RIFF size, AVIF's last box) are padding, not damage. Lossy WebP is left out: its
    token data legitimately ends in long zero runs on flat images (147 bytes on a black 1500x1000
    frame), and so are uncompressed formats, where zeros are black pixels."""
    if fmt == "WEBP" and data[12:16] == b"VP8L":
        end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))  # the RIFF extent: padding after it is no damage
    elif fmt == "AVIF":
        end = isobmff_extent(data)
    else:
        return
    zeros = trailing_zero_bytes(data, end)
    if zeros >= _ZERO_TAIL_BYTES_COMPRESSED:
        raise CorruptImageError(
            f"{fmt} data is damaged or truncated (its last {zeros} bytes are zeros: the file was never "
            "written to its end); the picture would be grey or garbled; re-export or re-download the file"
        )


def _check_png_data(data: bytes, *, last_row_black: bool) -> None:
    """Raise :class:`CorruptImageError` for a PNG that Pillow decoded from incomplete data."""
    damage = png_stream_damage(data, last_row_black=last_row_black)
    if damage is not None:
        raise CorruptImageError(
            f"PNG data is damaged or truncated ({damage}); part of the picture would be black or "
            "garbled; re-export or re-download the file"
        )


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
    print-oriented CMYK files; it is the fallback when there is no usable profile (or one too
    costly to apply).
    """
    if icc is not None and icc_colour_space(icc) == "CMYK" and not icc_too_costly(icc):
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
    return mode in GRAY_8BIT_MODES or mode in HIGH_DEPTH_MODES


def _pil_to_arrays(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels as C-contiguous HxWx3 (uint8, or uint16 for high-depth gray) and alpha HxW or None.

    Closes ``image`` (and any converted copy) as soon as its array is made, so that no more than
    one decoded copy of the pixels is alive besides the array being built.
    """
    mode = image.mode
    if mode in HIGH_DEPTH_MODES:
        # Transparency keys on 16-bit gray are ignored: there is no 16-bit gray+alpha mode.
        gray = _release(image)
        return _gray_to_rgb(_high_depth_to_u16(gray, mode)), None
    if mode in GRAY_8BIT_MODES:
        if image.has_transparency_data:
            la = _release(_converted(image, "LA"))  # also un-premultiplies "La"
            return _gray_to_rgb(la[:, :, 0]), np.array(la[:, :, 1], order="C")
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
    # np.asarray of a Pillow image is a read-only view of an exported bytes copy; callers may
    # write in place (torch.from_numpy needs writable memory), so own it. np.array copies even a
    # one-row or one-column slice that numpy already counts as contiguous.
    if target == "RGBA":
        return np.array(array[:, :, :3], order="C"), np.array(array[:, :, 3], order="C")
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
