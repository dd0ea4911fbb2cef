"""Tests for dce_batch.imaging. Every image is generated here with Pillow/numpy."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import PIL
import pytest
import simplejpeg
from PIL import Image, ImageCms, features

from dce_batch.errors import (
    ConfigError,
    CorruptImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from dce_batch.imaging import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    REC709_LUMA,
    DecodedImage,
    EncodedImage,
    EncodeOptions,
    decode_image,
    encode_image,
    extension_for,
    mean_luminance,
    output_format,
    output_format_for_path,
    to_uint8,
    to_unit_float,
)
from dce_batch.imaging.decode import _check_jpeg_scans, _pil_to_arrays
from dce_batch.imaging.metadata import png_with_metadata, upright_exif
from dce_batch.imaging.pixels import to_depth

from .crafted_files import (
    avif_sequence,
    fits_gzip,
    icc_profile_of_matrices,
    isobmff_with_items,
    jpeg2000_headers,
    jpeg_frame_of_scans,
    jpeg_scan_bomb,
    run_length_bmp,
    tiff_of_one_jpeg_strip,
    with_stray_bytes_after_a_table,
)

ORIENTATION = 0x0112
MAKE = 0x010F
MODEL = 0x0110
EXIF_IFD = 0x8769
EXPOSURE_TIME = 0x829A
PIXEL_X, PIXEL_Y = 0xA002, 0xA003
IMAGE_WIDTH, IMAGE_LENGTH = 0x0100, 0x0101


# ------------------------------------------------------------------------------------------
# helpers


def rgb_array(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def rgba_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)


def smooth_rgb(height: int = 64, width: int = 96) -> np.ndarray:
    """A gradient with mild noise: compresses differently at different qualities."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 255 / (width + height)], axis=2)
    noise = np.random.default_rng(1).normal(0, 12, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def open_bytes(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def as_u8_float(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) / np.float32(255)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def icc_with_colour_space(space: bytes) -> bytes:
    """The sRGB profile with its header's data colour space patched (enough for our checks)."""
    icc = bytearray(srgb_icc())
    icc[16:20] = space
    return bytes(icc)


def camera_exif(orientation: int | None = 6, **exif_ifd: object) -> Image.Exif:
    """EXIF with Make/Model in IFD0 and an Exif IFD (ExposureTime plus ``exif_ifd`` tags)."""
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif[MAKE] = "TestMaker"
    exif[MODEL] = "Model X"
    # Assigned as a dict: Pillow < 11 drops tags set through get_ifd() on a new Exif.
    tags = {"EXPOSURE_TIME": (1, 50), **exif_ifd}
    exif[EXIF_IFD] = {globals()[name]: value for name, value in tags.items()}
    return exif


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bytes(width: int, height: int, *, depth: int = 8, colour_type: int = 0, idat=None) -> bytes:
    """A hand-made PNG; with ``idat=None`` it has a header but no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    body = png_chunk(b"IHDR", ihdr)
    if idat is not None:
        body += png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> PNG colour type


def png16(array: np.ndarray, *, before: bytes = b"", after: bytes = b"") -> bytes:
    """A real 16-bit PNG (Pillow cannot write 16-bit colour): HxW gray, HxWx2 gray+alpha, HxWx3
    RGB or HxWx4 RGBA. ``before``/``after`` are extra chunks placed before/after the IDAT."""
    array = array if array.ndim == 3 else array[:, :, None]
    height, width, samples = array.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 16, PNG_COLOUR_TYPES[samples], 0, 0, 0)
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + before
        + png_chunk(b"IDAT", zlib.compress(rows)) + after + png_chunk(b"IEND", b"")
    )  # fmt: skip


def png16_rgb(array: np.ndarray) -> bytes:
    return png16(array)


def tiff16(
    array: np.ndarray,
    *,
    extra_samples: int | None = None,
    planar: bool = False,
    orientation: int | None = None,
    icc: bytes | None = None,
) -> bytes:
    """A hand-made little-endian, uncompressed 16-bit TIFF (Pillow cannot write 16-bit colour).

    ``array`` is HxW (gray) or HxWxS; ``extra_samples`` is the ExtraSamples value of the last
    sample (1 associated alpha, 2 unassociated alpha); ``planar`` stores one plane per sample;
    ``orientation`` and ``icc`` add the Orientation and ICC profile tags.
    """
    array = array if array.ndim == 3 else array[:, :, None]
    height, width, samples = array.shape
    planes = [array[:, :, i] for i in range(samples)] if planar else [array]
    strips = [np.ascontiguousarray(plane).astype("<u2").tobytes() for plane in planes]
    body = bytearray(b"II*\x00\x00\x00\x00\x00")
    strip_offsets = []
    for strip in strips:
        strip_offsets.append(len(body))
        body += strip

    def out_of_line(fmt: str, values: list[int]) -> int:
        offset = len(body) + len(body) % 2
        body.extend(b"\x00" * (offset - len(body)) + struct.pack(f"<{len(values)}{fmt}", *values))
        return offset

    def entry(tag: int, kind: int, values: list[int] | bytes) -> bytes:
        fmt, size = {3: ("H", 2), 4: ("I", 4), 7: ("B", 1)}[kind]
        if len(values) * size <= 4:
            inline = struct.pack(f"<{len(values)}{fmt}", *values).ljust(4, b"\x00")
        else:
            inline = struct.pack("<I", out_of_line(fmt, list(values)))
        return struct.pack("<HHI", tag, kind, len(values)) + inline

    entries = [
        entry(256, 4, [width]),
        entry(257, 4, [height]),
        entry(258, 3, [16] * samples),
        entry(259, 3, [1]),  # no compression
        entry(262, 3, [2 if samples >= 3 else 1]),  # RGB or min-is-black
        entry(273, 4, strip_offsets),
        *([entry(274, 3, [orientation])] if orientation is not None else []),
        entry(277, 3, [samples]),
        entry(278, 4, [height]),
        entry(279, 4, [len(strip) for strip in strips]),
        entry(284, 3, [2 if planar else 1]),
    ]
    if extra_samples is not None:
        entries.append(entry(338, 3, [extra_samples]))
    if icc is not None:
        entries.append(entry(34675, 7, icc))
    ifd_offset = len(body) + len(body) % 2
    body += b"\x00" * (ifd_offset - len(body))
    body += struct.pack("<H", len(entries)) + b"".join(entries) + b"\x00\x00\x00\x00"
    body[4:8] = struct.pack("<I", ifd_offset)
    return bytes(body)


def gradient16(height: int = 48, width: int = 96, channels: int = 3) -> np.ndarray:
    """A dark 16-bit ramp with thousands of distinct levels below 8-bit level 16 (shadows)."""
    ramp = np.arange(height * width, dtype=np.uint32).reshape(height, width) % 4096
    planes = [(ramp * 1 + c * 7) % 4096 for c in range(channels)]
    return np.stack(planes, axis=2).astype(np.uint16)


def tiff_associated_alpha(image: Image.Image) -> bytes:
    """TIFF whose ExtraSamples says premultiplied alpha (Pillow always writes unassociated)."""
    data = save(image, "TIFF")
    entry = b"\x52\x01\x03\x00\x01\x00\x00\x00\x02\x00"  # tag 338, SHORT, count 1, value 2
    assert data.count(entry) == 1
    return data.replace(entry, entry[:-2] + b"\x01\x00")


def check_pixels(decoded: DecodedImage, height: int, width: int, dtype=np.uint8) -> None:
    pixels = decoded.pixels
    assert pixels.dtype == dtype
    assert decoded.bit_depth == (8 if dtype == np.uint8 else 16)
    assert pixels.shape == (height, width, 3)
    assert pixels.flags.c_contiguous and pixels.flags.writeable
    assert (decoded.height, decoded.width) == (height, width)
    if decoded.alpha is not None:
        assert decoded.alpha.dtype == dtype
        assert decoded.alpha.shape == (height, width)
    as_float = decoded.to_float()
    assert as_float.dtype == np.float32 and as_float.shape == (height, width, 3)
    assert float(as_float.min()) >= 0.0 and float(as_float.max()) <= 1.0


# ------------------------------------------------------------------------------------------
# exact 8-bit round trip


def test_decode_is_exactly_uint8_over_255():
    array = rgb_array()
    decoded = decode_image(save(Image.fromarray(array), "PNG"))
    check_pixels(decoded, 24, 32)
    np.testing.assert_array_equal(decoded.pixels, array)
    np.testing.assert_array_equal(decoded.to_float(), as_u8_float(array))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert decoded.alpha is None and not decoded.grayscale and decoded.bit_depth == 8
    assert decoded.exif is None and decoded.icc_profile is None


def test_png_round_trip_is_lossless():
    array = rgb_array(seed=3)
    decoded = decode_image(save(Image.fromarray(array), "PNG"))
    encoded = encode_image(decoded.pixels, decoded, EncodeOptions())
    assert isinstance(encoded, EncodedImage)
    assert (encoded.format, encoded.extension) == ("PNG", ".png")
    out = open_bytes(encoded.data)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), array)


def test_every_uint8_level_survives_encode():
    levels = np.arange(256, dtype=np.uint8)
    array = np.stack([levels, levels[::-1], levels], axis=1)[None].repeat(2, axis=0)  # 2x256x3
    decoded = decode_image(save(Image.fromarray(array), "PNG"))
    encoded = encode_image(decoded.pixels, decoded, EncodeOptions(format="png"))
    np.testing.assert_array_equal(np.asarray(open_bytes(encoded.data)), array)


def test_encode_clips_and_handles_nan():
    decoded = decode_image(save(Image.fromarray(rgb_array(2, 2)), "PNG"))
    pixels = np.array(
        [[[-1.0, 2.0, np.nan], [0.5, np.inf, -np.inf]], [[0.0, 1.0, 0.25], [1e9, -1e9, 0.75]]],
        dtype=np.float32,
    )
    out = np.asarray(open_bytes(encode_image(pixels, decoded, EncodeOptions()).data))
    np.testing.assert_array_equal(
        out, [[[0, 255, 0], [128, 255, 0]], [[0, 255, 64], [255, 0, 191]]]
    )


@pytest.mark.parametrize(("requested", "side"), [("webp", 16384), ("jpeg", 65501)])
def test_encode_refuses_sizes_the_format_cannot_hold(requested, side):
    decoded = decode_image(save(Image.new("RGB", (side, 1), (9, 9, 9)), "PNG"))
    with pytest.raises(UnsupportedImageError, match="--format png"):
        encode_image(decoded.pixels, decoded, EncodeOptions(format=requested))
    narrower = decode_image(save(Image.new("RGB", (side - 1, 1), (9, 9, 9)), "PNG"))
    encoded = encode_image(narrower.pixels, narrower, EncodeOptions(format=requested))
    assert open_bytes(encoded.data).size == (side - 1, 1)


def test_encode_rejects_wrong_shape():
    decoded = decode_image(save(Image.fromarray(rgb_array(4, 6)), "PNG"))
    with pytest.raises(ValueError, match="shape"):
        encode_image(np.zeros((6, 4, 3), np.float32), decoded, EncodeOptions())
    with pytest.raises(ValueError, match="shape"):
        encode_image(np.zeros((4, 6), np.float32), decoded, EncodeOptions())


# ------------------------------------------------------------------------------------------
# EXIF orientation and metadata


ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise to display
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied(orientation):
    array = rgb_array(20, 40, seed=orientation)  # 40 wide, 20 high
    data = save(Image.fromarray(array), "PNG", exif=camera_exif(orientation))
    decoded = decode_image(data)
    expected = ORIENTED[orientation](array)
    check_pixels(decoded, *expected.shape[:2])
    np.testing.assert_array_equal(decoded.pixels, expected)


@pytest.mark.parametrize("requested", ["jpeg", "png", "webp"])
def test_orientation_reset_and_exif_tags_kept(requested):
    data = save(Image.fromarray(smooth_rgb(20, 40)), "JPEG", exif=camera_exif(6), quality=95)
    decoded = decode_image(data)
    assert decoded.pixels.shape == (40, 20, 3)  # rotated: 20 wide, 40 high
    assert decoded.exif is not None
    assert Image.Exif().load(decoded.exif) is None  # raw bytes are loadable

    encoded = encode_image(decoded.pixels, decoded, EncodeOptions(format=requested))
    out = open_bytes(encoded.data)
    assert out.size == (20, 40)
    exif = out.getexif()
    assert exif[ORIENTATION] == 1
    assert exif[MAKE] == "TestMaker" and exif[MODEL] == "Model X"
    exposure = exif.get_ifd(EXIF_IFD)[EXPOSURE_TIME]  # a tuple or an IFDRational
    assert (tuple(exposure) if isinstance(exposure, tuple) else float(exposure)) in ((1, 50), 0.02)
    # Decoding the output again must not rotate a second time.
    again = decode_image(encoded.data)
    assert again.pixels.shape == (40, 20, 3)


def test_malformed_exif_is_dropped_not_fatal():
    decoded = decode_image(save(Image.fromarray(rgb_array(4, 4)), "PNG"))
    broken = DecodedImage(
        pixels=decoded.pixels,
        alpha=None,
        format="JPEG",
        mode="RGB",
        grayscale=False,
        bit_depth=8,
        exif=b"Exif\x00\x00this is not a TIFF header",
    )
    for requested in ("jpeg", "png", "webp"):
        encoded = encode_image(broken.pixels, broken, EncodeOptions(format=requested))
        assert not open_bytes(encoded.data).getexif()


def test_malformed_exif_is_dropped_without_a_warning():
    """Pillow warns as it parses a truncated EXIF directory; the job drops the block quietly (the
    warning would reach the user's terminal with no image named)."""
    truncated = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + b"\xff" * 6  # an IFD of 65,535 entries, 6 bytes long
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert upright_exif(truncated, 4, 4) is None
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("samples", ["float32 RGB", "five channels"])
def test_a_tiff_of_a_sample_layout_pillow_cannot_decode_is_unsupported_not_corrupt(samples):
    import tifffile

    pixels = rgb_array(6, 8)
    array = pixels.astype(np.float32) / 255.0 if samples == "float32 RGB" else np.dstack([pixels, pixels[..., :2]])
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="rgb" if samples == "float32 RGB" else "minisblack", planarconfig="contig")
    with pytest.raises(UnsupportedImageError, match="sample layout cannot be decoded.*convert it to 8- or 16-bit"):
        decode_image(buffer.getvalue())


@pytest.mark.parametrize("kind", ["12-bit", "16-bit lossless"])
def test_a_jpeg_of_more_than_8_bits_is_unsupported_not_corrupt(kind):
    import imagecodecs

    samples = (np.random.default_rng(0).random((6, 8, 3)) * 4095).astype(np.uint16)
    options = {"bitspersample": 12} if kind == "12-bit" else {"lossless": True, "bitspersample": 16}
    data = imagecodecs.jpeg8_encode(samples, **options)
    with pytest.raises(UnsupportedImageError, match="JPEG of more than 8 bits per sample.*convert it to 16-bit PNG"):
        decode_image(data)


def _colour_mapped_tga(entries: int, index_bits: int = 8, map_bits: int = 24, first: int = 0) -> bytes:
    """An uncompressed colour-mapped TGA (type 1), 4x3, bottom-up rows of indices 0 .. 11, whose
    colour map holds ``entries`` entries of ``map_bits`` bits (entry i: bytes 7i, 7i+1, ...) from
    entry ``first`` on."""
    header = struct.pack("<BBBHHBHHHHBB", 0, 1, 1, first, entries, map_bits, 0, 0, 4, 3, index_bits, 0)
    colour_map = bytes(i * 7 % 256 for i in range(entries * map_bits // 8))
    indices = b"".join(i.to_bytes(index_bits // 8, "little") for i in range(12))
    return header + colour_map + indices


@pytest.mark.parametrize("map_bits", [16, 24, 32])
def test_a_tga_whose_colour_map_holds_more_than_256_entries_decodes(map_bits):
    """The format allows colour maps of up to 65,535 entries; 8-bit indices reach the first 256,
    and Pillow refuses a longer palette ("invalid palette size"): the picture is the one its first
    256 entries give, not a CorruptImageError."""
    expected = decode_image(_colour_mapped_tga(256, map_bits=map_bits)).pixels
    assert np.unique(expected.reshape(-1, 3), axis=0).shape[0] == 12  # 12 distinct colours
    for entries in (257, 300, 4096):
        np.testing.assert_array_equal(decode_image(_colour_mapped_tga(entries, map_bits=map_bits)).pixels, expected)
    # A map that starts at entry 226 leaves the pixels' indices 0 .. 11 without colours: a damaged header.
    with pytest.raises(CorruptImageError, match="TGA"):
        decode_image(_colour_mapped_tga(64, map_bits=map_bits, first=226))


def test_a_tga_with_16_bit_colour_map_indices_is_unsupported_not_corrupt():
    with pytest.raises(UnsupportedImageError, match="colour-mapped TGA with 16-bit indices.*convert it to PNG"):
        decode_image(_colour_mapped_tga(300, index_bits=16))


def test_icc_profile_kept():
    icc = srgb_icc()
    for source_format in ("JPEG", "PNG", "WEBP", "TIFF"):
        data = save(Image.fromarray(smooth_rgb(16, 16)), source_format, icc_profile=icc)
        decoded = decode_image(data)
        assert decoded.icc_profile == icc, source_format
        for requested in ("same", "jpeg", "png", "webp"):
            encoded = encode_image(decoded.pixels, decoded, EncodeOptions(format=requested))
            kept = open_bytes(encoded.data).info.get("icc_profile")
            assert kept == icc, (source_format, requested)


def p3_icc() -> bytes:
    """A Display P3-like profile: P3 primaries, D65, gamma 2.2."""
    import imagecodecs

    return bytes(imagecodecs.cms_profile("rgb", whitepoint=[0.3127, 0.329, 1.0],
                                         primaries=[0.68, 0.32, 1.0, 0.265, 0.69, 1.0, 0.15, 0.06, 1.0], gamma=2.2))


def photo_colours(height: int, width: int) -> np.ndarray:
    """Smooth, moderately saturated colours, as a photo holds (no noise for JPEG to smear)."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
    return np.rint(np.stack([30 + 170 * x, 30 + 120 * y, 60 + 100 * (1 - x) * y], axis=2)).astype(np.uint8)


def _cms(pixels: np.ndarray, source: bytes, target: bytes) -> np.ndarray:
    import imagecodecs

    return imagecodecs.cms_transform(np.ascontiguousarray(pixels), source, target, colorspace="rgb",
                                     outcolorspace="rgb", intent=1)


@pytest.mark.parametrize("source_format, depth", [("PNG", 8), ("TIFF", 8), ("JPEG", 8), ("WEBP", 8), ("PNG", 16)])
def test_a_wide_gamut_source_is_enhanced_in_srgb_and_written_back_in_its_profile(source_format, depth):
    """The network and the finishing read sRGB values: a Display P3 photo is converted to sRGB when
    decoded, and what is written goes back into P3 with the P3 profile, so that viewed through it
    the output looks as the sRGB version of the same picture would."""
    srgb = photo_colours(48, 64)
    p3 = p3_icc()
    stored = _cms(srgb, srgb_icc(), p3)  # the picture encoded for P3, as a phone stores it
    assert np.abs(stored.astype(int) - srgb).max() > 10  # far from its sRGB values
    if depth == 16:
        import imagecodecs

        data = png_with_metadata(bytes(imagecodecs.png_encode(stored.astype(np.uint16) * 257)), p3, None)
    else:
        data = save(Image.fromarray(stored), source_format, icc_profile=p3,
                    **({"quality": 100} if source_format in ("JPEG", "WEBP") else {}))
    decoded = decode_image(data)
    assert decoded.converted_to_srgb and decoded.icc_profile == p3 and decoded.bit_depth == depth
    lossless = source_format in ("PNG", "TIFF")
    as_8bit = to_depth(decoded.pixels, np.dtype(np.uint8)).astype(int)
    # Stored for this pure power curve at 8 bits, the darkest colours are off by up to 2.3 levels
    # (LittleCMS's tables; benchmarks/bench_decode_checks.py); 4 leaves room for other builds.
    assert np.abs(as_8bit - srgb).max() <= (4 if lossless else 12)
    assert np.abs(as_8bit - srgb).mean() <= (0.6 if lossless else 3)

    for requested in ("same", "png", "jpeg"):
        encoded = encode_image(decoded.pixels, decoded, EncodeOptions(format=requested, quality=100))
        out = open_bytes(encoded.data)
        assert out.info.get("icc_profile") == p3, requested
        written = to_depth(decode_image(encoded.data).pixels, np.dtype(np.uint8)).astype(int)
        assert np.abs(written - as_8bit).max() <= (4 if encoded.format == "PNG" else 12), requested
        if encoded.format == "PNG" and depth == 8 and lossless:  # stored for P3 again, as the input was
            raw = np.asarray(out.convert("RGB")).astype(int)
            assert np.abs(raw - stored).max() <= 2


def test_a_wide_gamut_source_written_as_bmp_is_srgb():
    """BMP carries no profile, so viewers take it as sRGB: its pixels are the sRGB ones."""
    srgb = photo_colours(32, 32)
    decoded = decode_image(save(Image.fromarray(_cms(srgb, srgb_icc(), p3_icc())), "PNG", icc_profile=p3_icc()))
    bmp_source = DecodedImage(**{**decoded.__dict__, "format": "BMP"})
    encoded = encode_image(decoded.pixels, bmp_source, EncodeOptions())
    out = open_bytes(encoded.data)
    assert encoded.format == "BMP" and "icc_profile" not in out.info
    assert np.abs(np.asarray(out.convert("RGB")).astype(int) - srgb).max() <= 4


@pytest.mark.parametrize("profile", ["Pillow's sRGB", "LittleCMS's sRGB", "unusable"])
def test_srgb_profiles_and_unusable_ones_leave_the_pixels_as_stored(profile):
    """sRGB comes under many names and builds; a profile LittleCMS cannot read is kept as it is."""
    import imagecodecs

    icc = {"Pillow's sRGB": srgb_icc(), "LittleCMS's sRGB": bytes(imagecodecs.cms_profile("srgb")),
           "unusable": srgb_icc()[:128] + bytes(200)}[profile]
    array = rgb_array(16, 24)
    decoded = decode_image(save(Image.fromarray(array), "PNG", icc_profile=icc))
    assert not decoded.converted_to_srgb and decoded.icc_profile == icc
    np.testing.assert_array_equal(decoded.pixels, array)
    encoded = encode_image(decoded.pixels, decoded, EncodeOptions())
    np.testing.assert_array_equal(np.asarray(open_bytes(encoded.data)), array)


def test_gray_profile_kept_only_where_output_is_gray():
    gray_icc = icc_with_colour_space(b"GRAY")
    data = save(Image.new("L", (8, 8), 40), "PNG", icc_profile=gray_icc)
    decoded = decode_image(data)
    assert decoded.icc_profile == gray_icc
    png = encode_image(decoded.pixels, decoded, EncodeOptions(format="png"))
    assert open_bytes(png.data).info.get("icc_profile") == gray_icc
    # WebP has no grayscale: a gray profile would not match its RGB data.
    webp = encode_image(decoded.pixels, decoded, EncodeOptions(format="webp"))
    assert open_bytes(webp.data).info.get("icc_profile") is None


def test_bmp_output_has_no_metadata_and_no_alpha():
    rgba = Image.fromarray(np.dstack([rgb_array(8, 8), np.full((8, 8), 7, np.uint8)]))
    decoded = decode_image(save(rgba, "PNG", icc_profile=srgb_icc()))
    bmp_source = DecodedImage(**{**decoded.__dict__, "format": "BMP"})
    encoded = encode_image(decoded.pixels, bmp_source, EncodeOptions())
    assert (encoded.format, encoded.extension) == ("BMP", ".bmp")
    out = open_bytes(encoded.data)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(rgba)[:, :, :3])


# ------------------------------------------------------------------------------------------
# modes


def _p_image(transparent: bool) -> Image.Image:
    image = Image.fromarray(rgb_array(10, 12)).quantize(16)
    if transparent:
        image.info["transparency"] = 0
    return image


def _rgb_colour_key_png() -> bytes:
    """An RGB PNG whose tRNS chunk makes one colour transparent."""
    array = rgb_array(10, 12)
    array[:5] = (7, 0, 0)
    return save(Image.fromarray(array), "PNG", transparency=(7, 0, 0))


# TIFF modes that Pillow reads only from 13.0 (dce-batch requires 11.3): premultiplied gray+alpha
# and YCbCr as Pillow writes it.
PILLOW_13_TIFF_MODES = ("La", "YCbCr")


def skip_unless_pillow_reads(data: bytes, name: str) -> None:
    """On a Pillow that cannot read ``data``, check it becomes an image error, then skip."""
    try:
        open_bytes(data)
    except (OSError, SyntaxError, ValueError):
        from dce_batch.errors import ImageError

        with pytest.raises(ImageError):  # an error row, never a crash
            decode_image(data)
        pytest.skip(f"Pillow {PIL.__version__} cannot read {name} TIFF files (Pillow >= 13 can)")


# (name, bytes factory, expected grayscale, expected alpha)
MODE_CASES = [
    ("RGB", lambda: save(Image.fromarray(rgb_array(10, 12)), "PNG"), False, False),
    ("L", lambda: save(Image.fromarray(rgb_array(10, 12)[:, :, 0]), "PNG"), True, False),
    ("LA", lambda: save(Image.fromarray(rgb_array(10, 12)[:, :, :2], "LA"), "PNG"), True, True),
    ("La", lambda: tiff_associated_alpha(Image.new("LA", (12, 10), (100, 128))), True, True),
    ("P", lambda: save(_p_image(False), "PNG"), False, False),
    ("P+transparency", lambda: save(_p_image(True), "PNG"), False, True),
    ("RGBA", lambda: save(Image.fromarray(rgba_array(10, 12)), "PNG"), False, True),
    ("CMYK", lambda: save(Image.new("CMYK", (12, 10), (10, 200, 30, 40)), "JPEG"), False, False),
    ("CMYK-tif", lambda: save(Image.new("CMYK", (12, 10), (9, 200, 30, 4)), "TIFF"), False, False),
    ("1", lambda: save(Image.fromarray(rgb_array(10, 12)[:, :, 0] > 127), "PNG"), True, False),
    ("I;16", lambda: save(Image.fromarray(np.full((10, 12), 1000, np.uint16)), "PNG"), True, False),
    ("I;16B", lambda: save(Image.new("I;16B", (12, 10), 1000), "TIFF"), True, False),
    ("I", lambda: save(Image.fromarray(np.full((10, 12), 1000, np.int32)), "TIFF"), True, False),
    ("F", lambda: save(Image.fromarray(np.full((10, 12), 0.25, np.float32)), "TIFF"), True, False),
    ("YCbCr", lambda: save(Image.new("YCbCr", (12, 10), (120, 100, 150)), "TIFF"), False, False),
    ("tRNS", lambda: _rgb_colour_key_png(), False, True),
    ("GIF", lambda: save(Image.fromarray(rgb_array(10, 12)).quantize(64), "GIF"), False, False),
    ("BMP", lambda: save(Image.fromarray(rgb_array(10, 12)), "BMP"), False, False),
    ("WEBP", lambda: save(Image.fromarray(rgb_array(10, 12)), "WEBP", lossless=True), False, False),
]


@pytest.mark.parametrize(
    ("name", "make", "grayscale", "has_alpha"), MODE_CASES, ids=[c[0] for c in MODE_CASES]
)
def test_modes_decode_to_native_rgb(name, make, grayscale, has_alpha):
    data = make()
    if name in PILLOW_13_TIFF_MODES:
        skip_unless_pillow_reads(data, name)
    source = open_bytes(data)
    decoded = decode_image(data)
    # 16/32-bit integer and float gray come as uint16, everything else as uint8.
    check_pixels(decoded, 10, 12, np.uint16 if name in ("I;16", "I;16B", "I", "F") else np.uint8)
    assert decoded.mode == source.mode
    assert decoded.format == source.format
    assert decoded.grayscale is grayscale
    assert (decoded.alpha is not None) is has_alpha
    if grayscale:  # all three channels equal
        np.testing.assert_array_equal(decoded.pixels[:, :, 0], decoded.pixels[:, :, 1])
        np.testing.assert_array_equal(decoded.pixels[:, :, 0], decoded.pixels[:, :, 2])
    if source.mode in ("RGB", "P", "CMYK", "YCbCr", "L", "1", "LA", "RGBA"):
        # 8-bit sources: exactly Pillow's own RGB conversion / 255.
        np.testing.assert_array_equal(
            decoded.pixels, np.asarray(source.convert("RGBA").convert("RGB"))
        )
    # Every case encodes in every output format, from native and from float pixels.
    for requested in ("same", "jpeg", "png", "webp"):
        for pixels in (decoded.pixels, decoded.to_float()):
            encoded = encode_image(pixels, decoded, EncodeOptions(format=requested))
            assert open_bytes(encoded.data).size == (12, 10)


def test_premultiplied_la_is_unpremultiplied():
    data = tiff_associated_alpha(Image.new("LA", (12, 10), (100, 128)))
    skip_unless_pillow_reads(data, "La")
    decoded = decode_image(data)
    assert decoded.mode == "La"
    # 100 premultiplied by alpha 128/255 -> about 199 straight.
    assert abs(int(decoded.pixels[0, 0, 0]) - 199) <= 1
    np.testing.assert_array_equal(decoded.alpha, 128)


def test_rgba_premultiplied_in_memory_mode():
    # Pillow 13 cannot write RGBa files, but the converter must still cope with the mode.
    image = Image.new("RGBA", (3, 2), (200, 100, 50, 128)).convert("RGBa")
    pixels, alpha = _pil_to_arrays(image)
    assert pixels.shape == (2, 3, 3) and pixels.dtype == np.uint8 and alpha is not None
    np.testing.assert_allclose(pixels[0, 0], [200, 100, 50], atol=2)


def test_alpha_kept_aside_and_reattached():
    array = rgb_array(10, 12)
    alpha = np.random.default_rng(5).integers(0, 256, (10, 12), dtype=np.uint8)
    decoded = decode_image(save(Image.fromarray(np.dstack([array, alpha])), "PNG"))
    np.testing.assert_array_equal(decoded.alpha, alpha)
    np.testing.assert_array_equal(decoded.pixels, array)

    png = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(format="png")).data)
    assert png.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(png)[:, :, 3], alpha)

    webp = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(format="webp")).data)
    assert webp.mode == "RGBA"
    np.testing.assert_allclose(np.asarray(webp)[:, :, 3], alpha, atol=2)

    tiff_source = decode_image(save(Image.fromarray(np.dstack([array, alpha])), "TIFF"))
    tiff = encode_image(tiff_source.pixels, tiff_source, EncodeOptions(format="same"))
    assert (tiff.format, tiff.extension) == ("TIFF", ".tif")
    np.testing.assert_array_equal(np.asarray(open_bytes(tiff.data)), np.dstack([array, alpha]))

    jpeg = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(format="jpeg")).data)
    assert jpeg.mode == "RGB"  # JPEG has no alpha: dropped


def test_palette_transparency_alpha():
    image = _p_image(True)
    decoded = decode_image(save(image, "PNG"))
    expected = np.asarray(image.convert("RGBA"))[:, :, 3]
    assert (expected == 0).any() and (expected == 255).any()
    np.testing.assert_array_equal(decoded.alpha, expected)
    out = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(format="png")).data)
    np.testing.assert_array_equal(np.asarray(out)[:, :, 3], expected)


def test_grayscale_written_back_as_gray():
    gray = rgb_array(10, 12)[:, :, 0]
    decoded = decode_image(save(Image.fromarray(gray), "PNG"))
    assert decoded.grayscale
    # Per-channel model output: the written gray is the Rec.709 luma of it.
    enhanced = decoded.to_float() * np.array([1.0, 0.5, 0.25], np.float32)
    png = open_bytes(encode_image(enhanced, decoded, EncodeOptions()).data)
    assert png.mode == "L"
    luma = enhanced @ np.array(REC709_LUMA, np.float32)
    np.testing.assert_array_equal(np.asarray(png), np.rint(luma * 255).astype(np.uint8))
    jpeg = encode_image(enhanced, decoded, EncodeOptions(format="jpeg"))
    assert open_bytes(jpeg.data).mode == "L"
    # Unchanged pixels give the source back exactly.
    same = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions()).data)
    np.testing.assert_array_equal(np.asarray(same), gray)


def test_gray_alpha_written_back_as_la():
    array = rgb_array(10, 12)[:, :, :2]
    decoded = decode_image(save(Image.fromarray(array, "LA"), "PNG"))
    png = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions()).data)
    assert png.mode == "LA"
    np.testing.assert_array_equal(np.asarray(png), array)
    jpeg = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(format="jpeg")).data)
    assert jpeg.mode == "L"


def test_cmyk_jpeg():
    data = save(Image.fromarray(smooth_rgb(16, 20)).convert("CMYK"), "JPEG", quality=90)
    decoded = decode_image(data)
    assert decoded.mode == "CMYK" and decoded.format == "JPEG" and not decoded.grayscale
    expected = np.asarray(open_bytes(data).convert("RGB"))
    np.testing.assert_array_equal(decoded.pixels, expected)
    encoded = encode_image(decoded.pixels, decoded, EncodeOptions())
    out = open_bytes(encoded.data)
    assert (encoded.format, out.mode) == ("JPEG", "RGB")


def test_cmyk_profile_is_dropped_and_bad_profile_falls_back():
    # The patched profile claims CMYK but holds RGB tags: the colour transform cannot be built,
    # so decoding falls back to Pillow's plain conversion instead of failing.
    cmyk_icc = icc_with_colour_space(b"CMYK")
    data = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", icc_profile=cmyk_icc)
    decoded = decode_image(data)
    assert decoded.icc_profile is None
    np.testing.assert_array_equal(decoded.pixels, np.asarray(open_bytes(data).convert("RGB")))
    out = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions()).data)
    assert out.info.get("icc_profile") is None


def test_16bit_gray_png_kept_at_16_bits_and_scales_by_65535():
    values = np.array([[0, 1, 255, 256], [1000, 32768, 65534, 65535]], dtype=np.uint16)
    data = save(Image.fromarray(values), "PNG")
    assert open_bytes(data).mode == "I;16"
    decoded = decode_image(data)
    assert decoded.bit_depth == 16 and decoded.grayscale and decoded.mode == "I;16"
    check_pixels(decoded, 2, 4, np.uint16)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.pixels[:, :, channel], values)
    expected = values.astype(np.float32) / np.float32(65535)
    np.testing.assert_array_equal(decoded.to_float()[:, :, 0], expected)
    # PNG output of a 16-bit source stays 16-bit gray, value for value.
    out = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions()).data)
    assert out.mode in ("I;16", "I;16B", "I")
    np.testing.assert_array_equal(np.asarray(out), values)
    # 8-bit formats get round(x / 257), i.e. round(x / 65535 * 255).
    jpeg = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(format="jpeg")).data)
    assert jpeg.mode == "L" and jpeg.size == (4, 2)


def test_big_endian_16bit_tiff():
    values = np.array([[0, 258, 65535]], dtype=np.uint16)
    data = save(Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes()), "TIFF")
    decoded = decode_image(data)
    assert decoded.mode == "I;16B" and decoded.bit_depth == 16
    np.testing.assert_array_equal(decoded.pixels[0, :, 0], values[0])
    np.testing.assert_array_equal(decoded.to_float()[0, :, 0], values[0] / np.float32(65535))


def test_int32_and_float_modes_are_clipped():
    ints = np.array([[-5, 0, 65535, 70000]], dtype=np.int32)
    decoded = decode_image(save(Image.fromarray(ints), "TIFF"))
    assert decoded.mode == "I" and decoded.bit_depth == 16
    np.testing.assert_array_equal(decoded.pixels[0, :, 0], [0, 0, 65535, 65535])

    floats = np.array([[-0.5, 0.25, 2.0, np.nan]], dtype=np.float32)
    decoded = decode_image(save(Image.fromarray(floats), "TIFF"))
    assert decoded.mode == "F" and decoded.bit_depth == 16
    # 0.25 * 65535 = 16383.75 -> 16384
    np.testing.assert_array_equal(decoded.pixels[0, :, 0], [0, 16384, 65535, 0])


# ------------------------------------------------------------------------------------------
# 16-bit colour: decoded from its 16-bit values, written back at 16 bits


@pytest.mark.parametrize("magic, channels, maximum", [(b"P6", 3, 65535), (b"P6", 3, 1023), (b"P5", 1, 4095),
                                                     (b"P5", 1, 65535)])
def test_16bit_pnm_keeps_its_16_bits_scaled_from_its_maximum(magic, channels, maximum):
    """Pillow cuts a 16-bit PPM (as dcraw -4 and netpbm write them) to 8 bits; its 16 bits are
    kept, scaled from the file's maximum to 65535, and a PGM's as well."""
    rng = np.random.default_rng(4)
    samples = rng.integers(0, maximum + 1, (5, 7, channels)).astype(">u2")
    data = magic + b"\n# made by a test\n7 5\n" + str(maximum).encode() + b"\n" + samples.tobytes()
    decoded = decode_image(data)
    assert decoded.bit_depth == 16 and decoded.grayscale is (channels == 1)
    check_pixels(decoded, 5, 7, np.uint16)
    expected = np.rint(samples.astype(np.float64) * 65535 / maximum).astype(np.uint16)
    np.testing.assert_array_equal(decoded.pixels, np.repeat(expected, 3 // channels, axis=2))
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(data[:-3])


@pytest.mark.parametrize("kind", ["AVIF 10-bit", "AVIF 12-bit", "AVIF 10-bit RGBA", "JPEG 2000 16-bit",
                                  "JPEG 2000 12-bit codestream", "JPEG 2000 16-bit RGBA", "AVIF 8-bit"])
def test_avif_and_jpeg2000_of_more_than_8_bits_keep_them(kind):
    """Pillow cuts AVIF and JPEG 2000 colour of more than 8 bits to 8 (a dark gradient bands);
    they are decoded at their depth, scaled to 16 bits, and written as 16-bit PNG."""
    import imagecodecs

    bits = 8 if "8-bit" in kind else 10 if "10-bit" in kind else 12 if "12-bit" in kind else 16
    ramp = np.linspace(0, (1 << bits) - 1, 1024)
    samples = np.rint(np.broadcast_to(ramp[None, :, None], (16, 1024, 3))).astype(np.uint16 if bits > 8 else np.uint8)
    if kind.endswith("RGBA"):
        samples = np.dstack([samples, samples[:, ::-1, :1]])  # an alpha ramp: an opaque one may be left out
    if kind.startswith("AVIF"):
        data = imagecodecs.avif_encode(samples, level=100, bitspersample=bits)
    else:
        data = imagecodecs.jpeg2k_encode(samples, codecformat="j2k" if "codestream" in kind else "jp2", bitspersample=bits)
    decoded = decode_image(data)
    levels = len(np.unique(decoded.pixels[..., 0]))
    if bits == 8:
        assert decoded.bit_depth == 8 and levels <= 256
        return
    assert decoded.bit_depth == 16 and decoded.pixels.dtype == np.uint16
    assert levels > 600  # 8 bits could hold 256
    assert abs(int(decoded.pixels.max()) - 65535) <= 65535 // 1000
    if kind.endswith("RGBA"):
        assert decoded.alpha is not None and decoded.alpha.dtype == np.uint16
        assert len(np.unique(decoded.alpha)) > 600 and abs(int(decoded.alpha[0, 0]) - 65535) <= 65535 // 1000
    encoded = encode_image(decoded.pixels, decoded, EncodeOptions(format="png"))
    assert decode_image(encoded.data).bit_depth == 16


def test_16bit_rgb_png():
    values = np.random.default_rng(2).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    decoded = decode_image(png16_rgb(values))
    assert decoded.bit_depth == 16 and not decoded.grayscale and decoded.mode == "RGB"
    check_pixels(decoded, 5, 7, np.uint16)
    np.testing.assert_array_equal(decoded.pixels, values)  # not just the high byte


@pytest.mark.parametrize(
    "make", [png16, tiff16, lambda a: tiff16(a, planar=True)], ids=["png", "tiff", "tiff-planar"]
)
def test_16bit_precision_survives_decode_and_encode(make):
    values = gradient16()
    assert len(np.unique(values)) == 4096 and values.max() < 16 * 257  # all below 8-bit level 16
    decoded = decode_image(make(values))
    check_pixels(decoded, *values.shape[:2], np.uint16)
    np.testing.assert_array_equal(decoded.pixels, values)
    encoded = encode_image(decoded.pixels, decoded, EncodeOptions())
    assert encoded.format == decoded.format
    again = decode_image(encoded.data)
    assert again.bit_depth == 16
    np.testing.assert_array_equal(again.pixels, values)
    # The model's float output (here: the input itself) is rounded to the same 65536 levels.
    from_float = decode_image(encode_image(decoded.to_float(), decoded, EncodeOptions()).data)
    np.testing.assert_array_equal(from_float.pixels, values)


def test_16bit_gray_plus_alpha_and_gray_tiff():
    gray_alpha = gradient16(channels=2)
    decoded = decode_image(png16(gray_alpha))
    assert decoded.grayscale and decoded.bit_depth == 16
    check_pixels(decoded, *gray_alpha.shape[:2], np.uint16)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.pixels[:, :, channel], gray_alpha[:, :, 0])
    np.testing.assert_array_equal(decoded.alpha, gray_alpha[:, :, 1])
    out = encode_image(decoded.pixels, decoded, EncodeOptions())
    again = decode_image(out.data)
    assert again.grayscale and again.bit_depth == 16
    np.testing.assert_array_equal(again.pixels, decoded.pixels)
    np.testing.assert_array_equal(again.alpha, gray_alpha[:, :, 1])

    gray = gray_alpha[:, :, 0]
    tiff = decode_image(tiff16(gray))
    assert tiff.grayscale and tiff.bit_depth == 16 and tiff.mode.startswith("I;16")
    np.testing.assert_array_equal(tiff.pixels[:, :, 1], gray)
    out = open_bytes(encode_image(tiff.pixels, tiff, EncodeOptions()).data)
    assert out.format == "TIFF"
    np.testing.assert_array_equal(np.asarray(out), gray)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_alpha_stays_16_bit(fmt):
    values = np.random.default_rng(7).integers(0, 65536, (6, 9, 4), dtype=np.uint16)
    data = png16(values) if fmt == "PNG" else tiff16(values, extra_samples=2)
    decoded = decode_image(data)
    assert (decoded.format, decoded.bit_depth, decoded.grayscale) == (fmt, 16, False)
    check_pixels(decoded, 6, 9, np.uint16)
    np.testing.assert_array_equal(decoded.pixels, values[:, :, :3])
    np.testing.assert_array_equal(decoded.alpha, values[:, :, 3])
    again = decode_image(encode_image(decoded.pixels, decoded, EncodeOptions()).data)
    np.testing.assert_array_equal(again.pixels, values[:, :, :3])
    np.testing.assert_array_equal(again.alpha, values[:, :, 3])
    # 8-bit formats with alpha get it rounded to 8 bits; JPEG has none.
    webp = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(format="webp")).data)
    assert webp.mode == "RGBA"
    assert open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(format="jpeg")).data).mode == "RGB"


def test_16bit_premultiplied_tiff_alpha_is_unpremultiplied():
    # Straight (40000, 20000, 0) at alpha 32768 (about half) is stored premultiplied.
    alpha = 32768
    straight = np.array([40000, 20000, 0])
    stored = np.rint(straight * alpha / 65535).astype(np.uint16)
    values = np.tile(np.append(stored, alpha).astype(np.uint16), (2, 3, 1))
    decoded = decode_image(tiff16(values, extra_samples=1))
    np.testing.assert_array_equal(decoded.alpha, alpha)
    # Undoing the premultiplication loses at most one 16-bit level to the rounding above.
    assert np.abs(decoded.pixels.astype(int) - straight).max() <= 1


def test_premultiplied_alpha_is_undone_block_by_block_as_in_one_piece(monkeypatch):
    """Un-premultiplying a 100 MP RGBA TIFF in one piece took 2.5 GB of float temporaries beyond the
    samples; it runs in blocks of rows, which must give the same values as one block."""
    from dce_batch.imaging import deep

    rng = np.random.default_rng(3)
    alpha = rng.integers(0, 65536, (37, 29), dtype=np.uint16)
    colour = (rng.random((37, 29, 3)) * alpha[:, :, None]).astype(np.uint16)
    whole = deep._unpremultiply(colour, alpha)
    monkeypatch.setattr(deep, "_UNPREMULTIPLY_BLOCK_PIXELS", 100)  # 3 rows a block, the last one short
    np.testing.assert_array_equal(deep._unpremultiply(colour, alpha), whole)
    assert not whole[alpha == 0].any()


def test_16bit_png_to_8bit_formats_rounds_x_over_257():
    # Each value is chosen so that round(x / 257) differs from the high byte (x >> 8).
    levels = np.array([200, 1000, 20000, 60000, 65535], dtype=np.uint16)
    expected = np.array([1, 4, 78, 233, 255], dtype=np.uint8)  # high bytes: 0, 3, 78, 234, 255
    assert (expected != levels >> 8).sum() >= 3
    colour = np.stack([levels, levels[::-1], levels], axis=1)[None].repeat(3, axis=0)  # 3x5x3
    decoded = decode_image(png16(colour))
    bmp = np.asarray(open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(), fmt="BMP").data))
    np.testing.assert_array_equal(bmp, np.stack([expected, expected[::-1], expected], axis=1)[None].repeat(3, axis=0))
    # Every 16-bit level: round(x / 257) == round(x / 65535 * 255).
    every = np.arange(65536, dtype=np.uint32).reshape(256, 256).astype(np.uint16)
    source = decode_image(png16(every))
    gray_bmp = np.asarray(open_bytes(encode_image(source.pixels, source, EncodeOptions(), fmt="BMP").data))
    np.testing.assert_array_equal(gray_bmp, np.floor(every / 257 + 0.5).astype(np.uint8))

    # JPEG: flat 16x16 patches (whole JPEG blocks); gray JPEG keeps flat blocks exactly.
    patches = np.repeat(np.repeat(levels[None], 16, axis=0), 16, axis=1)  # 16 x 80
    gray = decode_image(png16(patches))
    jpeg = open_bytes(encode_image(gray.pixels, gray, EncodeOptions(format="jpeg")).data)
    assert jpeg.mode == "L"
    np.testing.assert_array_equal(np.asarray(jpeg)[8, 8::16], expected)
    rgb = decode_image(png16(np.stack([patches] * 3, axis=2)[:, :, [0, 1, 2]]))
    rgb_jpeg = np.asarray(open_bytes(encode_image(rgb.pixels, rgb, EncodeOptions(format="jpeg")).data))
    assert np.abs(rgb_jpeg[8, 8::16].astype(int) - expected[:, None]).max() <= 1  # YCbCr rounding


def test_uint8_pixels_for_a_16bit_source_are_scaled_by_257():
    decoded = decode_image(png16(np.full((2, 3, 3), 1000, np.uint16)))
    eight = np.array([[[0, 128, 255]] * 3] * 2, dtype=np.uint8)
    out = imagecodecs_png_decode(encode_image(eight, decoded, EncodeOptions()).data)
    np.testing.assert_array_equal(out, eight.astype(np.uint16) * 257)


def imagecodecs_png_decode(data: bytes) -> np.ndarray:
    import imagecodecs

    return imagecodecs.png_decode(data)


def test_16bit_metadata_and_orientation():
    icc = srgb_icc()
    exif = camera_exif(6, PIXEL_X=7, PIXEL_Y=4)
    iccp = png_chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(icc))
    values = np.random.default_rng(3).integers(0, 65536, (4, 7, 3), dtype=np.uint16)
    # eXIf after the image data: Pillow reads it only on load(), which the 16-bit path skips.
    exif_chunk = png_chunk(b"eXIf", exif.tobytes()[6:])
    for before, after in ((iccp + exif_chunk, b""), (iccp, exif_chunk)):
        decoded = decode_image(png16(values, before=before, after=after))
        assert decoded.icc_profile == icc and decoded.exif is not None
        np.testing.assert_array_equal(decoded.pixels, np.rot90(values, -1))  # Orientation 6
        encoded = encode_image(decoded.pixels, decoded, EncodeOptions())
        out = open_bytes(encoded.data)
        assert out.info.get("icc_profile") == icc
        tags = out.getexif()
        assert tags[ORIENTATION] == 1 and tags[MAKE] == "TestMaker"
        assert (tags.get_ifd(EXIF_IFD)[PIXEL_X], tags.get_ifd(EXIF_IFD)[PIXEL_Y]) == (4, 7)
        again = decode_image(encoded.data)
        np.testing.assert_array_equal(again.pixels, np.rot90(values, -1))  # not rotated twice


def test_16bit_tiff_orientation_and_icc():
    icc = srgb_icc()
    values = np.random.default_rng(4).integers(0, 65536, (4, 7, 3), dtype=np.uint16)
    decoded = decode_image(tiff16(values, orientation=8, icc=icc))
    assert decoded.bit_depth == 16 and decoded.icc_profile == icc
    np.testing.assert_array_equal(decoded.pixels, np.rot90(values, 1))  # Orientation 8
    encoded = encode_image(decoded.pixels, decoded, EncodeOptions())
    out = open_bytes(encoded.data)
    assert (out.format, out.size) == ("TIFF", (4, 7)) and out.info.get("icc_profile") == icc
    assert out.getexif().get(ORIENTATION, 1) == 1  # upright pixels, no orientation written
    np.testing.assert_array_equal(decode_image(encoded.data).pixels, np.rot90(values, 1))


def test_corrupt_16bit_colour_is_corrupt():
    for data in (png16(gradient16()), tiff16(gradient16())):
        with pytest.raises(CorruptImageError, match="re-download"):
            decode_image(data[: len(data) // 2])


def test_16bit_tiff_whose_directory_libtiff_refuses_is_corrupt():
    """Pillow reads the header, libtiff refuses the directory (an entry count of 32,781): corrupt, not IndexError."""
    data = bytearray(tiff16(gradient16()))
    directory = struct.unpack("<I", data[4:8])[0]
    data[directory + 1] ^= 0x80
    with pytest.raises(CorruptImageError, match="16-bit TIFF data is damaged"):
        decode_image(bytes(data))


def test_size_limit_message_shows_small_sizes():
    data = save(Image.new("L", (2, 500)), "PNG")
    with pytest.raises(ImageTooLargeError, match=r"2x500 = 0\.001 MP exceeds the limit of 0\.0005 MP"):
        decode_image(data, max_pixels=500)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1)])
@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGB"])
def test_decoded_arrays_are_writable_for_one_row_and_one_column(mode, size):
    """numpy counts a one-row slice as contiguous; the decoder still hands back arrays it owns
    (torch.from_numpy warns on read-only memory)."""
    decoded = decode_image(save(Image.new(mode, size), "PNG"))
    assert decoded.pixels.flags.writeable
    assert decoded.alpha is None or decoded.alpha.flags.writeable


def test_16bit_colour_size_checked_before_decoding():
    data = png16(gradient16(40, 50))
    with pytest.raises(ImageTooLargeError, match="50x40"):
        decode_image(data, max_pixels=40 * 50 - 1)


# ------------------------------------------------------------------------------------------
# multi-frame


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (12, 10), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(open_bytes(data), "n_frames", 1) == 3
    decoded = decode_image(data)
    assert decoded.format == "GIF"
    np.testing.assert_array_equal(decoded.pixels[0, 0], [200, 0, 0])
    assert output_format(decoded.format, "same") == "PNG"


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF", "MPO"])
def test_other_multi_frame_formats_first_frame(fmt):
    first = Image.fromarray(np.full((10, 12, 3), (200, 10, 10), np.uint8))
    second = Image.fromarray(np.full((10, 12, 3), (10, 10, 200), np.uint8))
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    data = save(first, fmt, save_all=True, append_images=[second], **kwargs)
    decoded = decode_image(data)
    assert decoded.format == fmt
    np.testing.assert_allclose(decoded.pixels[5, 6], [200, 10, 10], atol=3)


# ------------------------------------------------------------------------------------------
# size limits (decompression bombs)


def test_large_png_rejected():
    data = save(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data, max_pixels=1_000_000)
    message = str(info.value)
    assert "2000x2000" in message and "4.0 MP" in message and "--max-pixels" in message
    # The limit is inclusive.
    assert decode_image(data, max_pixels=4_000_000).pixels.shape == (2000, 2000, 3)


def test_size_checked_before_pixel_data_is_read():
    header_only = png_bytes(2000, 2000)  # no IDAT: decoding it would be a CorruptImageError
    with pytest.raises(ImageTooLargeError):
        decode_image(header_only, max_pixels=1_000_000)
    with pytest.raises(CorruptImageError):
        decode_image(header_only, max_pixels=4_000_000)


@pytest.mark.parametrize(("width", "height"), [(10_000, 9_500), (20_000, 10_000)])
def test_limit_above_pillow_default(width, height):
    """Our limit applies, not Pillow's MAX_IMAGE_PIXELS (it warns above 1x and refuses above 2x).

    The PNGs declare 95 MP and 200 MP but hold almost no data, so "accepted" shows up as a
    truncation error, cheaply.
    """
    pillow_limit = Image.MAX_IMAGE_PIXELS
    assert pillow_limit is not None and width * height > pillow_limit
    data = png_bytes(width, height, idat=zlib.compress(b"\x00" * 64))
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=width * height - 1)
    for limit in (width * height, 10**9):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
            with pytest.raises(CorruptImageError, match="truncated"):
                decode_image(data, max_pixels=limit)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def test_huge_limit_small_image_and_pillow_global_unchanged():
    before = Image.MAX_IMAGE_PIXELS
    decoded = decode_image(save(Image.fromarray(rgb_array()), "PNG"), max_pixels=10**10)
    assert decoded.pixels.shape == (24, 32, 3)
    assert Image.MAX_IMAGE_PIXELS == before
    assert DEFAULT_MAX_PIXELS == 100_000_000


@pytest.mark.parametrize(
    "kwargs", [{"lossless": True}, {"quality": 80}, {"quality": 80, "exif": camera_exif(1)}]
)
def test_webp_size_checked_from_header(kwargs):
    # lossless -> VP8L chunk, lossy -> "VP8 ", lossy with EXIF -> VP8X: all three headers.
    data = save(Image.fromarray(rgb_array(23, 37)), "WEBP", **kwargs)
    assert decode_image(data, max_pixels=23 * 37).pixels.shape == (23, 37, 3)
    with pytest.raises(ImageTooLargeError, match="37x23"):
        decode_image(data, max_pixels=23 * 37 - 1)


def test_webp_canvas_checked_before_decoder_allocates():
    # VP8X header declaring a 16000x16000 canvas, no image data.
    dims = (16000 - 1).to_bytes(3, "little") * 2
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + b"\x00\x00\x00\x00" + dims
    data = b"RIFF" + (4 + len(vp8x)).to_bytes(4, "little") + b"WEBP" + vp8x
    with pytest.raises(ImageTooLargeError, match="16000x16000"):
        decode_image(data)


def test_invalid_max_pixels():
    data = save(Image.new("RGB", (2, 2)), "PNG")
    for bad in (0, -1, 1.5, True, "100"):
        with pytest.raises(ConfigError):
            decode_image(data, max_pixels=bad)


# ------------------------------------------------------------------------------------------
# damaged and unrecognised input


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_truncated_image_is_corrupt(fmt):
    data = save(Image.fromarray(rgb_array(64, 64)), fmt)
    with pytest.raises(CorruptImageError) as info:
        decode_image(data[: len(data) // 2])
    message = str(info.value)
    assert "re-download" in message
    if fmt in ("JPEG", "PNG"):
        assert fmt in message and "truncated" in message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP"])
@pytest.mark.parametrize("keep", [20, 40, 100])
def test_truncated_header_is_corrupt_not_unsupported(fmt, keep):
    data = save(Image.fromarray(rgb_array(64, 64)), fmt)
    with pytest.raises(CorruptImageError, match="re-download"):
        decode_image(data[:keep])


def _jpeg(progressive: bool) -> bytes:
    return save(Image.fromarray(smooth_rgb(96, 128)), "JPEG", quality=90, progressive=progressive)


EOI = b"\xff\xd9"


@pytest.mark.parametrize("progressive, damage", [
    (False, "cut at 50% and closed"), (False, "cut at 90% and closed"), (False, "1000 bytes lost mid-scan"),
    (False, "a header that claims twice the rows"), (True, "cut at 50% and closed"), (True, "cut at 90% and closed"),
])
def test_a_jpeg_whose_data_ends_early_is_corrupt(progressive, damage):
    """Pillow decodes these without an error, with grey where the data is missing; libjpeg's
    warning, read through simplejpeg, makes them corrupt."""
    data = _jpeg(progressive)
    assert data.endswith(EOI)
    if damage.startswith("cut"):
        keep = int(len(data) * int(damage.split("%")[0][-2:]) / 100)
        damaged = data[:keep] + EOI
    elif damage.startswith("a header"):
        frame = data.index(b"\xff\xc0") + 5  # SOF0: length (2 bytes), precision (1), then the height
        height = int.from_bytes(data[frame:frame + 2], "big")
        damaged = data[:frame] + (2 * height).to_bytes(2, "big") + data[frame + 2:]
    else:
        middle = len(data) // 2
        damaged = data[:middle] + data[middle + 1000:]
    open_bytes(damaged).load()  # what Pillow alone makes of it: no error
    with pytest.raises(CorruptImageError, match=r"JPEG data is damaged.*libjpeg: .*premature end.*re-download"):
        decode_image(damaged)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_that_lacks_only_its_end_marker_decodes_whole(progressive):
    """Every pixel is there, only the final FF D9 is missing: Pillow alone calls it truncated;
    it decodes to the complete file's pixels. Cut inside its data as well, it stays corrupt."""
    data = _jpeg(progressive)
    with pytest.raises(OSError, match="truncated"):
        open_bytes(data[:-2]).load()
    np.testing.assert_array_equal(decode_image(data[:-2]).pixels, decode_image(data).pixels)
    for cut in (len(data) // 2, len(data) - 200):
        with pytest.raises(CorruptImageError, match=r"JPEG data is damaged or truncated.*re-download"):
            decode_image(data[:cut])


def test_a_jpeg_with_extraneous_bytes_before_a_marker_decodes():
    """libjpeg warns about stray bytes between the scan and a marker, which webcams and scanners
    write into files that display correctly: the pixels are whole, so the file is read."""
    data = _jpeg(False)
    with_stray_bytes = data[:-2] + b"\x12" * 40 + EOI
    with pytest.raises(ValueError, match="extraneous bytes"):
        simplejpeg.decode_jpeg(with_stray_bytes, strict=True)
    np.testing.assert_array_equal(decode_image(with_stray_bytes).pixels, decode_image(data).pixels)


def _flip_crc(data: bytes, kind: bytes) -> bytes:
    """``data`` with the CRC of its first ``kind`` chunk changed."""
    at = data.index(kind)
    crc = at + 4 + struct.unpack(">I", data[at - 4:at])[0]
    return data[:crc] + bytes([data[crc] ^ 0xFF]) + data[crc + 1:]


def test_a_png_whose_metadata_chunk_fails_its_crc_decodes_without_that_chunk():
    """libpng (and so browsers) discards an ancillary chunk with a bad CRC; Pillow refuses the file.
    The pixels are whole, so the chunk is dropped and the picture decodes; its ICC profile and
    text go with it, a damaged IHDR stays an error."""
    from PIL import PngImagePlugin

    from dce_batch.imaging.repairs import drop_damaged_png_chunks

    pixels = rgb_array(24, 32)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "edited by a tool that forgot the CRC")
    data = save(Image.fromarray(pixels), "PNG", pnginfo=info, icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile("sRGB")).tobytes())
    for kind in (b"tEXt", b"iCCP"):
        damaged = _flip_crc(data, kind)
        with pytest.raises(PIL.UnidentifiedImageError):  # what Pillow alone makes of it
            open_bytes(damaged)
        np.testing.assert_array_equal(decode_image(damaged).pixels, pixels)
        assert kind not in drop_damaged_png_chunks(damaged)
    assert drop_damaged_png_chunks(data) is data  # nothing to repair: the same bytes
    with pytest.raises(CorruptImageError, match="PNG"):
        decode_image(_flip_crc(data, b"IHDR"))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, colour_type: int, raw_rows: bytes, *, depth: int = 8, extra: bytes = b"") -> bytes:
    """A PNG written by hand: IHDR, ``extra`` chunks, one IDAT holding ``raw_rows`` deflated, IEND."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + extra
            + _png_chunk(b"IDAT", zlib.compress(raw_rows)) + _png_chunk(b"IEND", b""))


def _zero_tail(data: bytes, fraction: float = 0.3) -> bytes:
    """``data`` at its full length with its last ``fraction`` zero-filled: a preallocated file whose
    download or copy stopped."""
    keep = int(len(data) * (1 - fraction))
    return data[:keep] + bytes(len(data) - keep)


def test_a_png_whose_image_data_ends_early_is_corrupt_not_black_rows():
    """A zlib stream that ends cleanly after 10 of 48 rows: Pillow leaves the other rows black
    without a word (libpng says "Not enough image data")."""
    pixels = rgb_array(48, 64)
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(48))
    whole = _png(64, 48, 2, rows)
    np.testing.assert_array_equal(decode_image(whole).pixels, pixels)
    short = _png(64, 48, 2, rows[:10 * (1 + 64 * 3)])
    assert not np.asarray(open_bytes(short))[10:].any()  # what Pillow alone makes of it
    with pytest.raises(CorruptImageError, match=r"PNG data is damaged or truncated \(its image data holds 1,930 of "
                                                r"the 9,264 bytes"):
        decode_image(short)


def test_a_png_with_a_black_bottom_edge_or_a_lost_crc_or_end_chunk_still_decodes():
    """The stream is inflated again only where a sign points at damage; what it finds whole decodes."""
    pixels = rgb_array(48, 64)
    pixels[-6:] = 0  # a black bottom edge: the last row is all zeros, and the data is whole
    data = save(Image.fromarray(pixels), "PNG")
    for variant in (data, _flip_crc(data, b"IDAT"), data[:-12]):  # as written, a bad IDAT CRC, no IEND
        np.testing.assert_array_equal(decode_image(variant).pixels, pixels)
    interlaced = save(Image.fromarray(pixels), "PNG", interlace=1)
    np.testing.assert_array_equal(decode_image(interlaced).pixels, pixels)


@pytest.mark.parametrize("interlace", [0, 1])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_a_png_whose_tail_was_zero_filled_is_corrupt_not_garbage(mode, interlace):
    data = save(Image.fromarray(smooth_rgb(48, 64)).convert(mode), "PNG", interlace=interlace)
    with pytest.raises(CorruptImageError, match="PNG data is damaged or truncated"):
        decode_image(_zero_tail(data))


def test_a_zero_tail_is_counted_back_across_reads_of_64_kb():
    from dce_batch.imaging.repairs import trailing_zero_bytes

    data = b"\x01" + bytes(200_000) + b"\x02\x00"
    assert trailing_zero_bytes(data, len(data)) == 1
    assert trailing_zero_bytes(data, len(data) - 2) == 200_000  # three 64 KB reads and a partial one
    assert trailing_zero_bytes(bytes(70_000), 70_000) == 70_000 and trailing_zero_bytes(b"", 0) == 0


@pytest.mark.parametrize("fmt, options", [
    ("JPEG", {"quality": 85}), ("JPEG", {"quality": 85, "progressive": True}), ("PNG", {}),
    ("WEBP", {"lossless": True}), ("WEBP", {"quality": 80}), ("AVIF", {"quality": 80}),
])
@pytest.mark.parametrize("padding", [16, 100, 4096, 200_000])
def test_a_whole_file_padded_with_zeros_after_its_end_decodes(fmt, options, padding):
    """Copies onto preallocated space or whole disk blocks, and some cameras' fixed-size files,
    end in zeros after the image's own end (JPEG's end marker, PNG's IEND, the RIFF extent, AVIF's
    last box): viewers show them whole, and so does the job, pixel for pixel."""
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    data = save(Image.fromarray(smooth_rgb(48, 64)), fmt, **options)
    np.testing.assert_array_equal(decode_image(data + bytes(padding)).pixels, decode_image(data).pixels)


def test_a_palette_png_without_its_palette_is_corrupt():
    """Colour type 3 with no PLTE chunk: Pillow decodes the indices, then fails an assertion."""
    indices = np.arange(64 * 4, dtype=np.uint8).reshape(4, 64) % 7
    data = _png(64, 4, 3, b"".join(b"\x00" + row.tobytes() for row in indices))
    with pytest.raises(CorruptImageError, match="palette image without its palette"):
        decode_image(data)
    palette = _png_chunk(b"PLTE", bytes(range(21)))
    decode_image(_png(64, 4, 3, b"".join(b"\x00" + row.tobytes() for row in indices), extra=palette))


def test_a_row_too_long_for_pillow_s_decoder_is_too_large_not_a_memory_error():
    """Pillow refuses a row of more than 2**31 bits (here 100,000,000 RGB pixels) with MemoryError
    before it decodes anything."""
    data = _png(100_000_000, 1, 2, b"\x00" * 64)
    with pytest.raises(ImageTooLargeError, match=r"PNG 100000000x1 could not be decoded: Pillow could not allocate"):
        decode_image(data, max_pixels=100_000_000)


def _avif() -> bytes:
    return save(Image.fromarray(rgb_array(48, 64)), "AVIF", quality=80)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF support")
@pytest.mark.parametrize("damage, message", [
    (lambda data: data.replace(b"iloc", b"iloX"), r"looks like AVIF but its header cannot be read \(RuntimeError"),
    (lambda data: data[:data.index(b"mdat") + 4] + b"\xff" * 16 + data[data.index(b"mdat") + 20:],
     r"AVIF data is damaged or truncated \(RuntimeError"),
    (_zero_tail, r"AVIF data is damaged or truncated \(its last \d+ bytes are zeros"),
])
def test_a_damaged_avif_is_corrupt_not_a_runtime_error_or_grey(damage, message):
    with pytest.raises(CorruptImageError, match=message):
        decode_image(damage(_avif()))


def test_a_lossless_webp_whose_tail_was_zero_filled_is_corrupt_and_a_flat_lossy_one_is_not():
    lossless = save(Image.fromarray(smooth_rgb(48, 64)), "WEBP", lossless=True)
    with pytest.raises(CorruptImageError, match=r"WEBP data is damaged or truncated \(its last \d+ bytes are zeros"):
        decode_image(_zero_tail(lossless))
    # Lossy WebP ends in a long run of zeros on a flat frame: that is data, not damage.
    black = save(Image.new("RGB", (1500, 1000)), "WEBP", quality=90)
    riff_end = 8 + int.from_bytes(black[4:8], "little")
    assert len(black[:riff_end]) - len(black[:riff_end].rstrip(b"\0")) >= 64
    assert not decode_image(black).pixels.any()


@pytest.mark.parametrize("mode, subsampling, progressive", [
    ("RGB", 2, False), ("RGB", 0, True), ("L", 0, False), ("CMYK", 2, False),
])
def test_a_jpeg_whose_tail_was_zero_filled_is_corrupt_though_its_end_marker_is_added(mode, subsampling,
                                                                                     progressive):
    """The end-marker repair holds only for data that ends at the marker: zeros decoded as blocks
    leave "extraneous bytes before marker 0xd9" or a premature end, and simplejpeg cannot read
    subsampled CMYK at all, so the run of zeros itself counts. The same files lacking only their
    marker still decode whole."""
    image = Image.fromarray(smooth_rgb(96, 128)).convert(mode)
    data = save(image, "JPEG", quality=85, subsampling=subsampling, progressive=progressive)
    np.testing.assert_array_equal(decode_image(data[:-2]).pixels, decode_image(data).pixels)
    for fraction in (0.05, 0.3):
        with pytest.raises(CorruptImageError, match="JPEG data is damaged or truncated"):
            decode_image(_zero_tail(data, fraction))


def test_a_jpeg_whose_scans_would_take_minutes_is_refused_before_decoding():
    """Thousands of scans keep libjpeg-turbo busy for minutes on a file of a few hundred KB, and so
    do a few hundred over a large picture: both the scans and the passes over the picture they
    make are bounded, above what encoders write (1 to 18 scans, up to 6 passes)."""
    from dce_batch.imaging.jpeg_stream import MAX_JPEG_PASSES, MAX_JPEG_SCANS, ScanWork, jpeg_scan_work

    picture = Image.fromarray(smooth_rgb(48, 64))
    assert jpeg_scan_work(save(picture, "JPEG")) == ScanWork(1, 1.0)
    for mode, subsampling, scans, passes in (("RGB", 0, 10, 14 / 3), ("RGB", 2, 10, 16 / 3), ("L", 0, 6, 6.0),
                                             ("CMYK", 0, 18, 6.0)):
        work = jpeg_scan_work(save(picture.convert(mode), "JPEG", progressive=True, subsampling=subsampling))
        assert work.scans == scans and work.passes == pytest.approx(passes) and not work.excessive
    # Each repeated scan adds a third of a pass: 14 / 3 + 82 / 3 = 32 passes decode, 83 repeats do not.
    assert jpeg_scan_work(jpeg_scan_bomb(82)) == ScanWork(92, 32.0)
    assert decode_image(jpeg_scan_bomb(82)).pixels.shape == (48, 64, 3)
    message = rf"JPEG: its 93 scans make more than {MAX_JPEG_PASSES} passes over the picture .* rewrite it as a baseline"
    with pytest.raises(ImageTooLargeError, match=message):
        decode_image(jpeg_scan_bomb(83))
    # Scans of a component with a small share of the blocks: the count of scans bounds them.
    assert jpeg_scan_work(jpeg_frame_of_scans(MAX_JPEG_SCANS, 2)) == ScanWork(256, pytest.approx(256 / 18))
    assert jpeg_scan_work(jpeg_frame_of_scans(MAX_JPEG_SCANS + 10, 2)).excessive
    assert jpeg_scan_work(jpeg_frame_of_scans(40, 1)).excessive  # 40 x 16/18 passes
    with pytest.raises(ImageTooLargeError, match="JPEG has more than 256 scans"):
        _check_jpeg_scans(jpeg_frame_of_scans(MAX_JPEG_SCANS + 1, 3))


def test_a_profile_too_costly_to_apply_is_neither_applied_nor_kept():
    """LittleCMS samples a profile's whole chain of processing elements to build a transform: a
    PNG of 8x8 pixels whose profile chains 1,000 matrices took 2 s to decode (5,000: 11 s). Such
    a profile is left out; one of a few elements is applied as any other."""
    from dce_batch.imaging.metadata import icc_processing_elements

    pixels = smooth_rgb(8, 8)
    costly = icc_profile_of_matrices(1000)
    assert icc_processing_elements(costly) == 1000 and len(zlib.compress(costly)) < 1000
    decoded = decode_image(save(Image.fromarray(pixels), "PNG", icc_profile=costly))
    assert decoded.icc_profile is None and not decoded.converted_to_srgb
    np.testing.assert_array_equal(decoded.pixels, pixels)
    cmyk = save(Image.fromarray(pixels).convert("CMYK"), "JPEG", icc_profile=costly[:16] + b"CMYK" + costly[20:])
    assert decode_image(cmyk).icc_profile is None
    few = icc_profile_of_matrices(2)
    assert icc_processing_elements(few) == 2
    applied = decode_image(save(Image.fromarray(pixels), "PNG", icc_profile=few))
    assert applied.icc_profile == few and applied.converted_to_srgb


def test_a_jpeg2000_asking_for_gigabytes_of_code_blocks_is_refused_before_decoding():
    """OpenJPEG allocates every code-block and precinct of a tile before reading its data: 100
    bytes asking for 4x4 code-blocks on 10000x10000 RGB took 9.1 GB, 2x2 precincts on 4000x4000
    8.8 GB. What encoders write (64x64 or 32x32 code-blocks, large precincts, tiles) decodes."""
    from dce_batch.imaging.jpeg2000_stream import jpeg2000_structures

    for bomb in (jpeg2000_headers(4000, 4000, block=2), jpeg2000_headers(2000, 2000, precincts=b"\x00" + b"\x11" * 5)):
        assert jpeg2000_structures(bomb).excessive
        with pytest.raises(ImageTooLargeError, match=r"JPEG 2000 asks for [\d,]+ code-blocks and precincts in one tile"):
            decode_image(bomb)
    assert not jpeg2000_structures(jpeg2000_headers(4000, 4000)).excessive
    # A tile-part header's coding style counts, though a comment before it holds an SOD's bytes.
    assert jpeg2000_structures(jpeg2000_headers(4000, 4000, tile_part_block=2)).excessive
    assert not jpeg2000_structures(jpeg2000_headers(4000, 4000, tile_part_block=6)).excessive
    assert not jpeg2000_structures(jpeg2000_headers(4000, 4000, block=3)).excessive  # 8x8
    assert not jpeg2000_structures(jpeg2000_headers(10000, 10000, tile=40)).excessive  # 62,500 tiles, one at a time
    assert not jpeg2000_structures(jpeg2000_headers(1000, 1000, block=2)).excessive  # 63,000: costs little
    picture = Image.fromarray(smooth_rgb(96, 128))
    for options in ({}, {"codeblock_size": (32, 32)}, {"precinct_size": (32, 32)}, {"tile_size": (40, 40)},
                    {"no_jp2": True}):
        data = save(picture, "JPEG2000", **options)
        assert not jpeg2000_structures(data).excessive
        assert decode_image(data).pixels.shape == (96, 128, 3)


@pytest.mark.parametrize("fmt", ["ICO", "DDS", "PCX", "SGI", "ICNS", "EPS"])
def test_formats_not_listed_as_supported_are_refused_without_being_opened(fmt):
    """Pillow's other plugins decode files that hold no photos, some without bound (FITS's gzip
    decoder is a Python loop per pixel; a BLP's 1x1 header may wrap a JPEG of thousands of
    scans): whatever the file is named, its first bytes decide, and it is not opened."""
    data = save(Image.fromarray(smooth_rgb(32, 32)), fmt)
    with pytest.raises(UnsupportedImageError, match=rf"its first bytes say {fmt}, which is not read .* supported: JPEG"):
        decode_image(data)


def test_a_fits_file_is_refused_without_being_decoded():
    """Pillow's decoder of a gzip-compressed FITS image is a Python loop per pixel."""
    data = fits_gzip(64, 64)
    assert PIL.Image.open(io.BytesIO(data)).format == "FITS"  # what Pillow alone would decode
    with pytest.raises(UnsupportedImageError, match="its first bytes say FITS"):
        decode_image(data)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF support")
def test_a_deep_avif_sequence_gives_its_first_frame_without_decoding_the_others():
    """imagecodecs decodes every frame of a sequence into one array (500 frames of 2000x2000 that
    share one frame's bytes, 5 KB: 11.5 GB), and then had no single picture to give; Pillow
    decodes the first frame only, at 8 bits. A still 10-bit AVIF keeps its 16-bit path."""
    first = decode_image(avif_sequence(3))
    assert first.pixels.shape == (48, 64, 3) and first.pixels.dtype == np.uint8
    assert abs(int(first.pixels.mean()) - round(200 / 1023 * 255)) <= 1  # frame 0, not 1 or 2
    still = decode_image(avif_sequence(1))
    assert still.pixels.dtype == np.uint16 and abs(int(still.pixels.mean()) - round(200 / 1023 * 65535)) <= 64


def test_an_avif_holding_more_items_than_cameras_write_is_refused_before_parsing():
    """libavif parses every item when the file is opened: 44,101 unused items (2 MB, a 64x64
    picture) took 18.8 s. A count damaged into a large number is no such file: it is left for
    libavif to refuse as damaged."""
    from dce_batch.imaging.isobmff import MAX_ITEMS, item_count

    assert item_count(isobmff_with_items(70_000)) == 70_000
    with pytest.raises(ImageTooLargeError, match=r"AVIF holds 5,000 items \(more than 4,096"):
        decode_image(isobmff_with_items(5000))
    assert item_count(isobmff_with_items(MAX_ITEMS)) == MAX_ITEMS
    assert item_count(isobmff_with_items(3, declared=49_409)) == 3
    with pytest.raises(CorruptImageError):
        decode_image(isobmff_with_items(3, declared=49_409))
    if features.check("avif"):
        single = save(Image.fromarray(smooth_rgb(48, 64)), "AVIF")
        assert item_count(single) == 1 and decode_image(single).pixels.shape == (48, 64, 3)


def test_a_run_length_bmp_larger_than_such_bmps_are_is_refused_before_decoding():
    """Pillow pads each row of a run-length BMP ended early one byte per Python step: one-pixel
    rows of 10000x10000 (41 KB) took 10.6 s."""
    with pytest.raises(ImageTooLargeError, match=r"BMP is run-length encoded and 5000x5000 = 25.0 MP, more than 20 MP"):
        decode_image(run_length_bmp(5000, 5000))
    small = decode_image(run_length_bmp(7, 3))
    expected = np.zeros((3, 7, 3), np.uint8)
    expected[:, 0] = 5
    np.testing.assert_array_equal(small.pixels, expected)


@pytest.mark.parametrize("magic, body, expected", [
    (b"P2", b"3 2\n# maxval next\n255\n0 # a comment\n10 20#another\n30 40 50\n", [[0, 10, 20], [30, 40, 50]]),
    (b"P1", b"3 2 #size\n1 0 1#x\n0 # y\n1 0\n", [[0, 255, 0], [255, 0, 255]]),
])
def test_a_plain_pnm_with_comments_in_its_data_decodes(magic, body, expected):
    """Plain PNM comments are taken out in one pass before Pillow (which removes them one at a
    time by re-slicing its block: 2 MB of comments took 34 s); the pixels are the same."""
    decoded = decode_image(magic + b"\n# made by hand\n" + body)
    np.testing.assert_array_equal(decoded.pixels[..., 0], np.array(expected, np.uint8))


def test_the_jpeg_strips_of_a_tiff_are_checked_for_their_scans_too():
    """libtiff decodes a JPEG-compressed TIFF's strips with libjpeg and stops only at 100 scans (97
    empty scans in one strip of 10000x10000 took 10.7 s)."""
    whole = tiff_of_one_jpeg_strip(jpeg_scan_bomb(0, mode="L"), 64, 48)
    assert decode_image(whole).pixels.shape == (48, 64, 3)
    with pytest.raises(ImageTooLargeError, match=r"JPEG \(a strip or tile of a TIFF\): its 33 scans make more than 32"):
        decode_image(tiff_of_one_jpeg_strip(jpeg_scan_bomb(40, mode="L"), 64, 48))
    written = save(Image.fromarray(smooth_rgb(48, 64)), "TIFF", compression="jpeg")  # by libtiff
    assert decode_image(written).pixels.shape == (48, 64, 3)


@pytest.mark.parametrize("compression, name", [("lerc", "LERC"), ("jpeg2000", "JPEG 2000"), ("png", "PNG"),
                                               ("webp", "WebP"), ("jpegxl", "JPEG XL")])
def test_a_tiff_compressed_with_a_scheme_pillow_does_not_decode_is_unsupported_not_damaged(compression, name):
    """tifffile writes these (for LERC and JPEG XL, scientific and camera archives); Pillow knows
    no decoder for most and its libtiff may lack WebP's. The file is whole: the row says what to
    convert it to, not to download it again."""
    import tifffile

    buffer = io.BytesIO()
    try:
        tifffile.imwrite(buffer, smooth_rgb(32, 48), compression=compression, photometric="rgb")
    except (ValueError, KeyError, ImportError) as exc:  # imagecodecs built without that codec
        pytest.skip(f"tifffile cannot write {compression} here: {exc}")
    with pytest.raises(UnsupportedImageError, match=rf"is a TIFF compressed with {name} \(compression \d+\)"):
        decode_image(buffer.getvalue())


@pytest.mark.parametrize("dtype, maximum", [(np.uint16, 1023), (np.uint16, 4095), (np.int32, 1000), (np.uint32, 300)])
def test_deep_samples_are_scaled_by_table_to_the_same_values_as_in_floating_point(dtype, maximum):
    """The table (a block of rows at a time) gives what scaling every sample in floating point
    gave, clipping included; it spares a 100 MP 10-bit AVIF 1.7 GB of float copies."""
    from dce_batch.imaging.deep import _scaled_to_16_bits

    samples = np.random.default_rng(3).integers(0, maximum + 50, (301, 257, 3)).astype(dtype)
    expected = np.rint(np.minimum(samples, maximum) * np.float32(65535.0 / maximum)).astype(np.uint16)
    np.testing.assert_array_equal(_scaled_to_16_bits(samples, maximum), expected)
    np.testing.assert_array_equal(_scaled_to_16_bits(samples[0, :, 0], maximum), expected[0, :, 0])


def test_stray_bytes_between_segments_do_not_hide_scans():
    """libjpeg skips bytes that are not a marker where one belongs ("extraneous bytes before
    marker", a warning Pillow drops) and goes on decoding every scan, so the walk skips them too."""
    with pytest.raises(ImageTooLargeError, match="passes over the picture"):
        decode_image(with_stray_bytes_after_a_table(jpeg_scan_bomb(2000)))


def test_a_row_refused_for_its_scans_gets_no_advice_about_the_pixel_limit():
    """Where the workers' memory set the pixel limit, a row refused by that limit says so; a JPEG
    refused for its scans is not about pixels, and its row does not."""
    from dce_batch.job.steps import ImageReader, WorkItem

    reader = ImageReader(None, run_id="r", max_pixels=64 * 48 - 1, limit_reason="this machine had 1.0 GiB of memory")
    item = WorkItem(input_uri="a.jpg", input_relpath="a.jpg", output_relpath="a.jpg", output_path="a.jpg",
                    output_format="JPEG")
    by_pixels = reader.decode(item, save(Image.fromarray(smooth_rgb(48, 64)), "JPEG")).row.error
    assert by_pixels.startswith("ImageTooLargeError: ") and by_pixels.endswith("(this machine had 1.0 GiB of memory)")
    by_scans = reader.decode(item, jpeg_scan_bomb(1000, size=(32, 24))).row.error
    assert by_scans.startswith("ImageTooLargeError: JPEG: its 93 scans make more than 32 passes") and "machine had" not in by_scans


def test_scans_are_counted_in_the_first_picture_only():
    """Scan markers inside a metadata segment (an embedded thumbnail, binary profile data), a
    scan's restart markers, fill bytes, and a second picture after the end marker (MPO) are not
    the picture's scans."""
    from dce_batch.imaging.jpeg_stream import jpeg_scan_work

    def jpeg_scan_count(data: bytes) -> int:
        return jpeg_scan_work(data).scans

    progressive = save(Image.fromarray(smooth_rgb(48, 64)), "JPEG", progressive=True)
    payload = progressive * 30 + b"\xff\xda" * 300  # 600 scan markers inside one APP2 segment
    assert len(payload) < 65533
    app2 = b"\xff\xe2" + (len(payload) + 2).to_bytes(2, "big") + payload
    with_metadata = progressive[:2] + app2 + progressive[2:]
    assert jpeg_scan_count(with_metadata) == 10
    np.testing.assert_array_equal(decode_image(with_metadata).pixels, decode_image(progressive).pixels)
    restarts = save(Image.fromarray(smooth_rgb(48, 64)), "JPEG", restart_marker_blocks=1)
    assert restarts.count(b"\xff\xd3") > 0 and jpeg_scan_count(restarts) == 1
    filled = progressive.replace(b"\xff\xda", b"\xff\xff\xff\xda")
    assert jpeg_scan_count(filled) == 10
    assert jpeg_scan_count(progressive + jpeg_scan_bomb(1000)) == 10
    assert jpeg_scan_count(jpeg_frame_of_scans(3, 1) + jpeg_frame_of_scans(300, 1)) == 3


def test_damaged_png_header_is_corrupt():
    data = bytearray(save(Image.fromarray(rgb_array(8, 8)), "PNG"))
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    with pytest.raises(CorruptImageError, match="PNG"):
        decode_image(bytes(data))


def test_truncation_setting_not_changed():
    from PIL import ImageFile

    data = save(Image.fromarray(rgb_array(64, 64)), "JPEG")
    with pytest.raises(CorruptImageError):
        decode_image(data[:-200])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_random_bytes_unsupported():
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data)
    message = str(info.value)
    assert "not a recognised image format" in message
    assert data[:4].hex(" ") in message
    assert "supported: JPEG, PNG" in message


@pytest.mark.parametrize("signature", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"II*\x00", b"GIF89a"])
def test_a_file_of_a_few_bytes_is_called_truncated(signature):
    """Shorter than some plugins' signature checks read (BMP's reads 4 bytes): never a struct.error.

    Part of a signature is not an image at all; a whole one is a damaged file of that format.
    """
    for length in range(1, len(signature) + 1):
        with pytest.raises((UnsupportedImageError, CorruptImageError), match="truncated") as info:
            decode_image(signature[:length])
        if isinstance(info.value, UnsupportedImageError):
            unit = "byte" if length == 1 else "bytes"
            assert f"only {length} {unit}, too short to be an image" in str(info.value)


def test_empty_bytes_unsupported():
    with pytest.raises(UnsupportedImageError, match="empty file") as info:
        decode_image(b"")
    assert "supported" in str(info.value)


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "error page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "git lfs pull"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, "HEIC"),
    ],
)
def test_unsupported_messages_say_what_to_do(data, hint):
    with pytest.raises(UnsupportedImageError, match=hint):
        decode_image(data)


def test_errors_are_library_errors():
    from dce_batch.errors import DceBatchError, ImageError

    for exc in (UnsupportedImageError, CorruptImageError, ImageTooLargeError):
        assert issubclass(exc, ImageError) and issubclass(exc, DceBatchError)


# ------------------------------------------------------------------------------------------
# encoding options and formats


@pytest.mark.parametrize("requested", ["jpeg", "webp"])
def test_quality_honoured(requested):
    decoded = decode_image(save(Image.fromarray(smooth_rgb(128, 160)), "PNG"))
    low = encode_image(decoded.pixels, decoded, EncodeOptions(format=requested, quality=20))
    high = encode_image(decoded.pixels, decoded, EncodeOptions(format=requested, quality=95))
    assert len(low.data) < len(high.data)
    assert low.format == high.format == requested.upper()


def test_png_output_is_lossless_regardless_of_quality():
    decoded = decode_image(save(Image.fromarray(smooth_rgb()), "PNG"))
    a = encode_image(decoded.pixels, decoded, EncodeOptions(format="png", quality=20))
    b = encode_image(decoded.pixels, decoded, EncodeOptions(format="png", quality=95))
    np.testing.assert_array_equal(np.asarray(open_bytes(a.data)), np.asarray(open_bytes(b.data)))


@pytest.mark.parametrize(
    ("source", "requested", "expected"),
    [
        ("JPEG", "same", "JPEG"),
        ("MPO", "same", "JPEG"),
        ("PNG", "same", "PNG"),
        ("WEBP", "same", "WEBP"),
        ("TIFF", "same", "TIFF"),
        ("BMP", "same", "BMP"),
        ("GIF", "same", "PNG"),
        ("PPM", "same", "PNG"),
        ("JPEG2000", "same", "PNG"),
        ("", "same", "PNG"),
        ("GIF", "jpeg", "JPEG"),
        ("JPEG", "png", "PNG"),
        ("TIFF", "webp", "WEBP"),
        ("PNG", "JPG", "JPEG"),
    ],
)
def test_output_format_table(source, requested, expected):
    assert output_format(source, requested) == expected


# (file name, Pillow save format, save kwargs)
PATH_CASES = [
    ("a.jpg", "JPEG", {}),
    ("b.JPEG", "JPEG", {}),
    ("c.jfif", "JPEG", {}),
    ("d.mpo", "MPO", {"save_all": True}),
    ("e.png", "PNG", {}),
    ("f.webp", "WEBP", {}),
    ("g.tif", "TIFF", {}),
    ("h.tiff", "TIFF", {}),
    ("i.bmp", "BMP", {}),
    ("j.gif", "GIF", {}),
    ("k.ppm", "PPM", {}),
    ("l.tga", "TGA", {}),
    ("dir.v2/m.Png", "PNG", {}),
]


@pytest.mark.parametrize(("name", "fmt", "kwargs"), PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_output_format_for_path_agrees_with_content(name, fmt, kwargs):
    image = Image.fromarray(rgb_array(8, 8))
    data = save(image, fmt, **kwargs)
    decoded = decode_image(data)
    for requested in ("same", "jpeg", "png", "webp"):
        planned = output_format_for_path(f"s3://bucket/in/{name}", requested)
        assert planned == output_format(decoded.format, requested), (name, requested)
        encoded = encode_image(decoded.pixels, decoded, EncodeOptions(format=requested))
        assert encoded.format == planned
        assert encoded.extension == extension_for(planned)
        assert open_bytes(encoded.data).format == planned


def test_output_format_for_unknown_extension():
    assert output_format_for_path("photo.xyz", "same") == "PNG"
    assert output_format_for_path("noext", "same") == "PNG"
    assert output_format_for_path("noext", "jpeg") == "JPEG"


def test_image_extensions():
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)
    for ext in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif", ".mpo"):
        assert ext in IMAGE_EXTENSIONS
    # Every listed extension is one Pillow has a decoder for.
    Image.init()
    assert IMAGE_EXTENSIONS <= set(Image.registered_extensions())


def test_extension_for():
    assert extension_for("JPEG") == ".jpg"
    assert extension_for("png") == ".png"
    assert extension_for("WEBP") == ".webp"
    assert extension_for("TIFF") == ".tif"
    assert extension_for("BMP") == ".bmp"
    with pytest.raises(ConfigError):
        extension_for("GIF")


def test_encode_options_validation():
    assert EncodeOptions() == EncodeOptions(format="same", quality=95)
    assert EncodeOptions(format="JPG").format == "jpeg"
    assert EncodeOptions(format=" WebP ").format == "webp"
    assert EncodeOptions(quality=np.int64(50)).quality == 50
    for bad_format in ("gif", "tiff", "", None, 3):
        with pytest.raises(ConfigError):
            EncodeOptions(format=bad_format)
    for bad_quality in (0, 101, -5, 95.0, True, "95"):
        with pytest.raises(ConfigError):
            EncodeOptions(quality=bad_quality)
    with pytest.raises(ConfigError, match="unknown output format"):
        output_format("PNG", "bmp")
    with pytest.raises(ConfigError):
        output_format_for_path("a.png", "gif")
    with pytest.raises(AttributeError):
        EncodeOptions().quality = 10  # frozen


def test_decoded_image_validation():
    pixels = np.zeros((2, 2, 3), np.uint8)
    ok = DecodedImage(pixels, None, "PNG", "RGB", False, 8)
    assert (ok.width, ok.height) == (2, 2)
    deep = DecodedImage(np.zeros((2, 2, 3), np.uint16), np.zeros((2, 2), np.uint16), "PNG", "RGBA", False, 16)
    assert deep.bit_depth == 16
    with pytest.raises(ValueError):
        DecodedImage(np.zeros((2, 2), np.uint8), None, "PNG", "L", True, 8)
    for dtype in (np.float32, np.float64, np.int16, np.uint32):  # native integer depths only
        with pytest.raises(ValueError, match="uint8 or uint16"):
            DecodedImage(np.zeros((2, 2, 3), dtype), None, "PNG", "RGB", False, 8)
    with pytest.raises(ValueError, match="shape"):
        DecodedImage(pixels, np.zeros((3, 2), np.uint8), "PNG", "RGBA", False, 8)
    with pytest.raises(ValueError, match="dtype"):
        DecodedImage(pixels, np.zeros((2, 2), np.uint16), "PNG", "RGBA", False, 8)
    with pytest.raises(ValueError, match="bit_depth"):
        DecodedImage(pixels, None, "PNG", "RGB", False, 16)  # must match the dtype
    with pytest.raises(ValueError, match="bit_depth"):
        DecodedImage(np.zeros((2, 2, 3), np.uint16), None, "PNG", "RGB", False, 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        DecodedImage(np.zeros((2, 4, 3), np.uint8)[:, ::2], None, "PNG", "RGB", False, 8)


def test_encode_rejects_other_dtypes():
    decoded = decode_image(save(Image.fromarray(rgb_array(4, 6)), "PNG"))
    for dtype in (np.int32, np.uint32, bool):
        with pytest.raises(ValueError, match="uint8, uint16 or float"):
            encode_image(np.zeros((4, 6, 3), dtype), decoded, EncodeOptions())


# ------------------------------------------------------------------------------------------
# float conversion


def test_to_float_is_exactly_uint8_over_255():
    levels = np.arange(256, dtype=np.uint8)
    array = np.stack([levels, levels[::-1], levels], axis=1)[None].repeat(2, axis=0)  # 2x256x3
    decoded = decode_image(save(Image.fromarray(array), "PNG"))
    as_float = decoded.to_float()
    assert as_float.dtype == np.float32 and as_float.flags.c_contiguous
    # Bit for bit what the model was trained with: float32(uint8) / float32(255).
    np.testing.assert_array_equal(as_float, array.astype(np.float32) / np.float32(255))
    assert as_float[0, 0, 0] == 0.0 and as_float[0, 255, 0] == 1.0
    assert as_float[0, 51, 0] == np.float32(0.2)  # 51 / 255 is exactly 0.2 rounded to float32
    # A new array each call: the model may write into it without touching the decoded pixels.
    assert not np.shares_memory(as_float, decoded.pixels)
    assert not np.shares_memory(decoded.to_float(), as_float)


def test_to_unit_float():
    every = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(to_unit_float(every), every.astype(np.float32) / np.float32(65535))
    assert to_unit_float(every)[-1] == 1.0 and to_unit_float(every)[32768] == np.float32(32768 / 65535)
    floats = np.array([0.25, 1.5, -1.0], np.float32)
    assert to_unit_float(floats) is floats  # float32 is passed through untouched
    np.testing.assert_array_equal(to_unit_float(floats.astype(np.float64)), floats)
    for bad in (np.zeros(3, np.int32), np.zeros(3, bool), np.zeros(3, np.uint32)):
        with pytest.raises(ValueError):
            to_unit_float(bad)


def test_to_uint8():
    eight = np.arange(256, dtype=np.uint8)
    assert to_uint8(eight) is eight
    sixteen = np.array([0, 128, 129, 385, 386, 65535], np.uint16)  # 128/257 < 0.5 < 129/257
    np.testing.assert_array_equal(to_uint8(sixteen), [0, 0, 1, 1, 2, 255])
    floats = np.array([-1.0, np.nan, 0.5, 1 / 255, 2.0], np.float32)
    np.testing.assert_array_equal(to_uint8(floats), [0, 0, 128, 1, 255])  # 127.5 rounds to even
    with pytest.raises(ValueError):
        to_uint8(np.zeros(2, np.int64))


# ------------------------------------------------------------------------------------------
# EXIF pixel dimensions


@pytest.mark.parametrize("requested", ["jpeg", "png", "webp"])
def test_exif_dimensions_match_the_written_image_after_rotation(requested):
    exif = camera_exif(6, PIXEL_X=40, PIXEL_Y=20)  # stored 40 wide x 20 high, shown 20 x 40
    exif[IMAGE_WIDTH], exif[IMAGE_LENGTH] = 40, 20
    data = save(Image.fromarray(smooth_rgb(20, 40)), "JPEG", exif=exif, quality=95)
    source_tags = open_bytes(data).getexif()
    assert source_tags.get_ifd(EXIF_IFD)[PIXEL_X] == 40 and source_tags[IMAGE_WIDTH] == 40
    decoded = decode_image(data)
    assert (decoded.width, decoded.height) == (20, 40)
    out = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions(format=requested)).data)
    assert out.size == (20, 40)
    tags = out.getexif()
    assert tags[ORIENTATION] == 1
    assert (tags[IMAGE_WIDTH], tags[IMAGE_LENGTH]) == (20, 40)
    assert (tags.get_ifd(EXIF_IFD)[PIXEL_X], tags.get_ifd(EXIF_IFD)[PIXEL_Y]) == (20, 40)
    assert tags.get_ifd(EXIF_IFD)[EXPOSURE_TIME] is not None  # the rest of the Exif IFD kept


def test_exif_dimension_tags_not_invented():
    data = save(Image.fromarray(smooth_rgb(20, 40)), "JPEG", exif=camera_exif(8))
    decoded = decode_image(data)
    tags = open_bytes(encode_image(decoded.pixels, decoded, EncodeOptions()).data).getexif()
    assert tags[ORIENTATION] == 1
    assert IMAGE_WIDTH not in tags and PIXEL_X not in tags.get_ifd(EXIF_IFD)


# ------------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("value", [0.0, 0.1, 0.5, 1.0])
def test_mean_luminance_constant(value):
    pixels = np.full((7, 9, 3), value, np.float32)
    assert mean_luminance(pixels) == pytest.approx(float(np.float32(value)), abs=1e-7)


def test_mean_luminance_rec709_weights():
    for channel, weight in enumerate((0.2126, 0.7152, 0.0722)):
        pixels = np.zeros((4, 4, 3), np.float32)
        pixels[:, :, channel] = 1.0
        assert mean_luminance(pixels) == pytest.approx(weight)
    array = np.random.default_rng(0).random((5, 6, 3), dtype=np.float32)
    per_pixel = array.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])
    assert mean_luminance(array) == pytest.approx(float(per_pixel.mean()), rel=1e-9)
    assert isinstance(mean_luminance(array), float)
    with pytest.raises(ValueError):
        mean_luminance(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        mean_luminance(np.zeros((4, 4, 3), np.int32))


@pytest.mark.parametrize(("dtype", "level"), [(np.uint8, 255), (np.uint16, 65535)])
def test_mean_luminance_normalises_integers(dtype, level):
    assert mean_luminance(np.full((3, 5, 3), level, dtype)) == pytest.approx(1.0, abs=1e-12)
    assert mean_luminance(np.zeros((3, 5, 3), dtype)) == 0.0
    array = np.random.default_rng(1).integers(0, level + 1, (6, 7, 3)).astype(dtype)
    expected = mean_luminance(array.astype(np.float64) / level)
    assert mean_luminance(array) == pytest.approx(expected, rel=1e-12)
    # Green alone at full scale is its weight.
    green = np.zeros((2, 2, 3), dtype)
    green[:, :, 1] = level
    assert mean_luminance(green) == pytest.approx(0.7152)
