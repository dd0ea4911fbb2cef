"""16-bit colour: PNG and TIFF decoded and encoded with imagecodecs (libpng, libtiff) and tifffile;
10- and 12-bit AVIF and JPEG 2000 of more than 8 bits decoded with imagecodecs (libavif, OpenJPEG);
binary 16-bit PPM/PGM decoded with numpy.

Pillow cannot hold 16-bit colour (it cuts 16-bit RGB(A) PNG/TIFF/PPM, and AVIF and JPEG 2000 colour of
more than 8 bits, to 8 bits when loading), so
:mod:`~dce_batch.imaging.decode` lets Pillow identify such a file, check its size and read its
metadata, and hands the pixels to this module; 16-bit PNG and TIFF outputs are written here too.
16-bit gray without alpha stays with Pillow, which decodes it exactly.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Final

import numpy as np
from PIL import ImageFile

from dce_batch.errors import CorruptImageError, UnsupportedImageError
from dce_batch.imaging.decoded import HIGH_DEPTH_MODES, DecodedImage
from dce_batch.imaging.metadata import (
    EXIF_ORIENTATION,
    IFD0_HEIGHT,
    IFD0_WIDTH,
    icc_colour_space,
    png_chunk_after_pixels,
    png_with_metadata,
    upright_exif,
    usable_icc,
)

logger = logging.getLogger(__name__)

_TIFF_BITS_PER_SAMPLE: Final = 258
_TIFF_PHOTOMETRIC: Final = 262
_TIFF_RGB: Final = 2
_TIFF_PLANAR_CONFIGURATION: Final = 284
_TIFF_EXTRA_SAMPLES: Final = 338
_TIFF_ASSOCIATED_ALPHA: Final = 1


def is_deep_colour(image: ImageFile.ImageFile, fmt: str, data: bytes) -> bool:
    """Colour (or gray + alpha) of more than 8 bits, which Pillow would cut to 8 bits when loading.

    Decided from the header, before ``load()``. PNG: Pillow opens such files in 8-bit modes but
    their raw mode still says ``;16``. TIFF: RGB photometric with 16 bits per sample (Pillow also
    misreads planar 16-bit RGB as 8-bit). AVIF: the bit depth its AV1 configuration box declares
    (10 or 12), for a still picture. JPEG 2000: more than 8 bits in the codestream's first
    component, for Pillow's
    8-bit modes (its 16-bit gray, ``I;16``, is exact). 16-bit gray without alpha (``I;16``)
    stays with Pillow, which decodes it exactly; other 16-bit TIFF colour spaces (CMYK, YCbCr,
    Lab) also stay with Pillow and come out 8-bit.
    """
    if fmt == "AVIF":
        # A sequence stays with Pillow, which decodes its first frame (at 8 bits): imagecodecs
        # decodes every frame into one array (500 frames of 2000x2000 that share one frame's
        # bytes, a file of 5 KB: 11.5 GB).
        return _avif_bits(data) > 8 and getattr(image, "n_frames", 1) == 1
    if fmt == "JPEG2000":
        return image.mode in ("L", "LA", "RGB", "RGBA") and _jpeg2000_bits(data) > 8
    if fmt == "PPM":
        return _pnm_samples(image) is not None
    if fmt == "TIFF":
        bits = image.tag_v2.get(_TIFF_BITS_PER_SAMPLE)
        bits = bits if isinstance(bits, tuple) else (bits,)
        return image.tag_v2.get(_TIFF_PHOTOMETRIC) == _TIFF_RGB and set(bits) == {16}
    if fmt != "PNG" or image.mode in HIGH_DEPTH_MODES:
        return False
    for tile in image.tile or ():  # Pillow < 11 leaves None when there is no image data
        # Index 3 is the decoder arguments (Pillow >= 11 names it .args); the raw mode comes first.
        args = tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if args else None)
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def _avif_bits(data: bytes) -> int:
    """Bits per sample of an AVIF's AV1 stream, from its ``av1C`` box (8 when it cannot be read)."""
    box = data.find(b"av1C")
    if box < 0 or len(data) < box + 7:
        return 8
    flags = data[box + 6]  # seq_tier_0, high_bitdepth, twelve_bit, monochrome, ...
    if not flags & 0x40:
        return 8
    return 12 if flags & 0x20 else 10


def _jpeg2000_bits(data: bytes) -> int:
    """Bits per sample of a JPEG 2000 codestream's first component, from its SIZ marker segment,
    which follows the start-of-codestream marker (8 when it cannot be read)."""
    start = data.find(b"\xff\x4f\xff\x51")  # SOC, SIZ
    ssiz = start + 42  # after SIZ's length, capabilities, 8 sizes and offsets, and component count
    if start < 0 or len(data) <= ssiz:
        return 8
    return (data[ssiz] & 0x7F) + 1


def _scaled_to_16_bits(samples: np.ndarray, maximum: int) -> np.ndarray:
    """Integer samples of 0..``maximum`` (larger ones clipped) scaled to 0..65535 as uint16.

    Through a table of the ``maximum + 1`` scaled values, a block of rows at a time: the same
    values as scaling every sample in floating point, without float copies of the whole picture
    (a 100 MP 10-bit picture: 2.7 s and 3 GB of temporaries that way)."""
    if maximum == 65535:
        return samples.astype(np.uint16)
    levels = np.arange(maximum + 1, dtype=samples.dtype)
    table = np.rint(levels * np.float32(65535.0 / maximum)).astype(np.uint16)
    scaled = np.empty(samples.shape, np.uint16)
    for rows in _row_blocks(samples, _SCALE_BLOCK_SAMPLES):
        scaled[rows] = table[np.minimum(samples[rows], maximum)]
    return scaled


_SCALE_BLOCK_SAMPLES: Final = 1 << 22


def _row_blocks(array: np.ndarray, block: int) -> Iterator[slice]:
    """Slices of ``array``'s first axis, each of about ``block`` elements of its later axes."""
    rows = max(1, block // max(1, array[:1].size))
    for start in range(0, len(array), rows):
        yield slice(start, start + rows)


def _pnm_samples(image: ImageFile.ImageFile) -> tuple[int, int, int] | None:
    """(channels, maximum value, offset of the samples) of a binary PPM/PGM with more than 8 bits
    per sample and a maximum Pillow scales itself (Pillow cuts such a PPM to 8 bits; its PGM are
    read here too, so that both scale alike); None for every other PNM (8-bit, plain-text, and
    16-bit PGM of maximum 65535, which Pillow reads exactly as raw data)."""
    tiles = image.tile or ()
    if len(tiles) != 1 or tiles[0][0] != "ppm":
        return None
    args = tiles[0][3]
    if not (isinstance(args, tuple) and len(args) == 2 and args[0] in ("RGB", "L") and args[1] > 255):
        return None
    return (3 if args[0] == "RGB" else 1), int(args[1]), int(tiles[0][2])


def _decode_pnm(data: bytes, image: ImageFile.ImageFile) -> np.ndarray:
    """The samples of a binary 16-bit PPM/PGM (big-endian), scaled from its maximum to 0..65535."""
    channels, maximum, offset = _pnm_samples(image)  # type: ignore[misc]
    width, height = image.size
    count = width * height * channels
    if len(data) < offset + 2 * count:
        raise CorruptImageError(
            f"16-bit {'PPM' if channels == 3 else 'PGM'} data is truncated ({len(data) - offset:,} bytes of "
            f"samples, {2 * count:,} expected); re-export or re-download the file")
    return _scaled_to_16_bits(np.frombuffer(data, ">u2", count, offset).reshape(height, width, channels), maximum)


def decode_deep_colour(data: bytes, image: ImageFile.ImageFile, fmt: str) -> DecodedImage:
    """Decode colour or gray+alpha of more than 8 bits to uint16 with imagecodecs (libpng, libtiff,
    libavif, OpenJPEG), scaled to 0..65535.

    Pillow has already identified the file and checked its size; it still supplies the metadata
    (ICC, EXIF, orientation, TIFF tags), but never decodes the pixels.
    """
    import imagecodecs

    width, height = image.size
    mode = image.mode
    icc = image.info.get("icc_profile") or None
    if fmt == "PPM":  # no metadata, no orientation: the samples follow the header
        array = _decode_pnm(data, image)
        image.close()
        return _decoded(array, fmt=fmt, mode=mode, associated_alpha=False, orientation=1, exif=None, icc=icc)
    bits = 16
    if fmt == "PNG":
        # The eXIf chunk may follow the pixel data, where Pillow reads it only on load().
        exif = image.info.get("exif") or png_chunk_after_pixels(data, b"eXIf")
        # Pillow's getexif() on a PNG decodes the pixels when info has no "exif": give it one.
        image.info["exif"] = exif or b""
        planar = associated_alpha = False
    elif fmt in ("AVIF", "JPEG2000"):
        # An AVIF's rotation and mirroring reach Pillow as its EXIF orientation, read below;
        # JPEG 2000 has none.
        exif = image.info.get("exif") or None
        bits = _avif_bits(data) if fmt == "AVIF" else _jpeg2000_bits(data)
        planar = associated_alpha = False
    else:
        exif = None  # Pillow exposes no EXIF block for TIFF sources (their tags are IFD0's)
        # Stored size: recent Pillow reports a TIFF's size already turned by its Orientation.
        width, height = image.tag_v2[IFD0_WIDTH], image.tag_v2[IFD0_HEIGHT]
        planar = image.tag_v2.get(_TIFF_PLANAR_CONFIGURATION) == 2
        extra = image.tag_v2.get(_TIFF_EXTRA_SAMPLES)
        extra = extra if isinstance(extra, tuple) else (extra,)
        associated_alpha = mode == "RGBa" or _TIFF_ASSOCIATED_ALPHA in extra
    try:
        orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not fail the image
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
        orientation = 1
    image.close()
    del image

    decoders = {"PNG": imagecodecs.png_decode, "AVIF": imagecodecs.avif_decode, "JPEG2000": imagecodecs.jpeg2k_decode}
    try:
        array = decoders[fmt](data) if fmt in decoders else imagecodecs.tiff_decode(data, index=0)
    except MemoryError:
        raise
    # imagecodecs' PngError/TiffError/AvifError/Jpeg2kError are RuntimeErrors; a damaged first
    # IFD offset is "directory out of range" (IndexError).
    except (RuntimeError, ValueError, IndexError) as exc:
        raise CorruptImageError(
            f"{bits}-bit {fmt} data is damaged or truncated ({type(exc).__name__}: {exc}); "
            "re-export or re-download the file"
        ) from exc
    if bits < 16 and array.dtype == np.uint16:
        array = _scaled_to_16_bits(array, (1 << bits) - 1)
    if planar and array.ndim == 3 and array.shape[1:] == (height, width):
        array = np.moveaxis(array, 0, -1)  # libtiff returns separate planes as (S, H, W)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint16 or array.shape[:2] != (height, width) or array.shape[2] > 4:
        raise UnsupportedImageError(
            f"{bits}-bit {fmt} ({mode}) decoded to {array.dtype} {array.shape}, not {height}x{width} "
            "16-bit gray or colour; convert the file to 16-bit RGB first"
        )

    return _decoded(array, fmt=fmt, mode=mode, associated_alpha=associated_alpha, orientation=orientation,
                    exif=exif, icc=icc)


def _decoded(array: np.ndarray, *, fmt: str, mode: str, associated_alpha: bool, orientation: int,
             exif: bytes | None, icc: bytes | None) -> DecodedImage:
    """H x W x S uint16 samples (gray, gray + alpha, RGB or RGBA) as an upright DecodedImage."""
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
        icc_profile=usable_icc(icc),
    )


#: Pixels un-premultiplied at a time: the float32 temporaries stay a few MB, where the whole
#: frame at once took 2.5 GB more than the decoded samples on a 100 MP RGBA TIFF.
_UNPREMULTIPLY_BLOCK_PIXELS = 1 << 20


def _unpremultiply(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight colour from premultiplied 16-bit colour (as Pillow does for 8-bit RGBa/La), in
    blocks of rows, into a new array."""
    straight = np.empty(colour.shape, dtype=np.uint16)
    for rows in _row_blocks(alpha, _UNPREMULTIPLY_BLOCK_PIXELS):  # alpha: one element per pixel
        block_alpha = alpha[rows]
        scale = np.where(block_alpha > 0, np.float32(65535.0) / np.maximum(block_alpha, 1), np.float32(0))
        block = colour[rows] * scale.astype(np.float32)[:, :, None]
        np.rint(block, out=block)
        np.clip(block, 0, 65535, out=block)
        straight[rows] = block
    return straight


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


def encode_16bit(array: np.ndarray, fmt: str, mode: str, source: DecodedImage) -> bytes:
    """16-bit PNG (imagecodecs/libpng) or TIFF (tifffile) with the ICC profile and EXIF kept.

    Pillow cannot hold 16-bit colour, so it cannot write these. ``array`` is HxW (gray), HxWx2
    (gray + alpha), HxWx3 (RGB) or HxWx4 (RGBA) uint16.
    """
    gray = mode in ("L", "LA")
    icc = source.icc_profile
    if icc is not None and icc_colour_space(icc) != ("GRAY" if gray else "RGB"):
        icc = None
    if fmt == "PNG":
        import imagecodecs

        png = bytes(imagecodecs.png_encode(array))
        exif = upright_exif(source.exif, source.width, source.height)
        return png_with_metadata(png, icc, exif)

    import tifffile

    exif = upright_exif(source.exif, source.width, source.height)
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
