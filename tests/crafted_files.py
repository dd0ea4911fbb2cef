"""Files crafted to cost a decoder far more than their pictures are worth (decompression bombs),
for the decoder's tests and ``benchmarks/bench_decode_bombs.py``. Each is built here, in bytes,
from Pillow's output or from the format's headers alone."""

from __future__ import annotations

import gzip
import io
import math
import struct

from PIL import Image

__all__ = [
    "avif_claiming_size",
    "avif_sequence",
    "fits_gzip",
    "icc_profile_of_matrices",
    "isobmff_with_items",
    "jpeg2000_headers",
    "jpeg_frame_of_scans",
    "jpeg_scan_bomb",
    "jpeg_segments",
    "run_length_bmp",
    "tiff_of_one_jpeg_strip",
    "with_stray_bytes_after_a_table",
]


def jpeg_segments(data: bytes, marker: int) -> list[bytes]:
    """Each segment of ``marker`` in ``data`` with what follows it up to the next marker, in order."""
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == marker]
    ends = starts[1:] + [len(data) - 2]
    return [data[start:end] for start, end in zip(starts, ends)]


def jpeg_scan_bomb(repeats: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    """A progressive JPEG (4:4:4, or gray with ``mode="L"``) of a flat picture of ``size`` (width,
    height) with one of its one-component scans of empty AC refinements repeated: a few bytes
    each, and a pass over a third of the blocks each (all of them in gray)."""
    buffer = io.BytesIO()
    flat = (120, 110, 100) if mode == "RGB" else 110
    Image.new(mode, size, flat).save(buffer, "JPEG", progressive=True, quality=90, subsampling=0)
    data = buffer.getvalue()
    empty = min(jpeg_segments(data, 0xDA)[1:], key=len)
    return data[:-2] + empty * repeats + data[-2:]


def with_stray_bytes_after_a_table(jpeg: bytes) -> bytes:
    """``jpeg`` with three bytes that are no marker after its second Huffman table: libjpeg skips
    them with a warning ("extraneous bytes before marker") and decodes every scan."""
    table = jpeg_segments(jpeg, 0xC4)[1]
    return jpeg.replace(table, table + b"\x00\x00\x17", 1)


def jpeg_frame_of_scans(scans: int, component: int) -> bytes:
    """SOI, a frame of three components sampled 4x4, 1x1, 1x1, ``scans`` scans of ``component``
    (one byte of data each), EOI: markers only, for the walk (no decoder reads it)."""
    frame = b"\xff\xc2\x00\x11\x08\x00\x10\x00\x10\x03" + b"\x01\x44\x00\x02\x11\x01\x03\x11\x01"
    scan = b"\xff\xda\x00\x08\x01" + bytes([component]) + b"\x00\x01\x3f\x00" + b"\x55"
    return b"\xff\xd8" + frame + scan * scans + b"\xff\xd9"


def icc_profile_of_matrices(elements: int) -> bytes:
    """An RGB ICC v4.3 profile whose D2B0 and D2B1 tags are one chain of ``elements`` 3x3 matrices
    (sRGB's to XYZ, then near-identities), every entry of its table pointing at the same two: 8
    bytes each."""
    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    to_xyz = (b"matf" + bytes(4) + struct.pack(">HH", 3, 3)
              + struct.pack(">12f", 0.4361, 0.3851, 0.1431, 0.2225, 0.7169, 0.0606, 0.0139, 0.0971, 0.7141, 0, 0, 0))
    near_identity = (b"matf" + bytes(4) + struct.pack(">HH", 3, 3)
                     + struct.pack(">12f", 1.0001, 0, 0, 0, 1, 0, 0, 0, 0.9999, 0, 0, 0))
    head = 16 + 8 * elements
    table = b"".join(struct.pack(">II", head + len(to_xyz), len(near_identity)) if i else
                     struct.pack(">II", head, len(to_xyz)) for i in range(elements))
    chain = b"mpet" + bytes(4) + struct.pack(">HHI", 3, 3, elements) + table + to_xyz + near_identity
    white = b"XYZ " + bytes(4) + s15(0.9642) + s15(1.0) + s15(0.8249)
    tags_at = 128 + 4 + 3 * 12
    body = chain + bytes(-len(chain) % 4) + white
    header = (struct.pack(">I", tags_at + len(body)) + b"lcms" + struct.pack(">I", 0x04300000) + b"mntrRGB XYZ "
              + bytes(12) + b"acspAPPL" + bytes(24) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"lcms" + bytes(44))
    table_of_tags = (struct.pack(">I", 3) + b"D2B0" + struct.pack(">II", tags_at, len(chain))  # perceptual
                     + b"D2B1" + struct.pack(">II", tags_at, len(chain))  # relative colorimetric, the job's intent
                     + b"wtpt" + struct.pack(">II", tags_at + len(chain) + (-len(chain) % 4), len(white)))
    return header + table_of_tags + body


def jpeg2000_headers(width: int, height: int, *, block: int = 6, precincts: bytes | None = None,
                     tile: int | None = None, components: int = 1, tile_part_block: int | None = None) -> bytes:
    """A JPEG 2000 codestream of headers only (SIZ, COD with 5 levels, QCD, one empty tile-part
    per tile, EOC): code-blocks of 2**block, the precinct exponents given. ``tile_part_block``:
    each tile-part header holds a comment with an SOD marker's bytes in it, then a COD asking for
    code-blocks of 2**tile_part_block."""
    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", marker, len(payload) + 2) + payload

    tile = tile or max(width, height)
    size = struct.pack(">HIIIIIIIIH", 0, width, height, 0, 0, tile, tile, 0, 0, components) + b"\x07\x01\x01" * components
    style = struct.pack(">BBHB", 1 if precincts else 0, 0, 1, 0) + bytes([5, block - 2, block - 2, 0, 1])
    stream = b"\xff\x4f" + segment(0xFF51, size) + segment(0xFF52, style + (precincts or b""))
    stream += segment(0xFF5C, bytes([0x40]) + bytes([8 << 3]) * 16)
    tile_header = b""
    if tile_part_block is not None:
        tile_header = (segment(0xFF64, b"\x00\x01 \xff\x93 ")
                       + segment(0xFF52, style[:5] + bytes([5, tile_part_block - 2, tile_part_block - 2, 0, 1])))
    for index in range(math.ceil(width / tile) * math.ceil(height / tile)):
        stream += (struct.pack(">HHHIBB", 0xFF90, 10, index, 15 + len(tile_header), 0, 1) + tile_header
                   + b"\xff\x93\x00")
    return stream + b"\xff\xd9"


def fits_gzip(width: int, height: int) -> bytes:
    """A FITS file whose image extension is GZIP_1-compressed zeros: Pillow's decoder for it is a
    Python loop per pixel."""
    def card(key: str, value: str) -> bytes:
        return f"{key:<8}= {value:>20}".ljust(80).encode()

    primary = (card("SIMPLE", "T") + card("BITPIX", "8") + card("NAXIS", "0") + b"END".ljust(80)).ljust(2880)
    extension = (card("XTENSION", "'BINTABLE'") + card("BITPIX", "8") + card("NAXIS", "2") + card("NAXIS1", "0")
                 + card("NAXIS2", "0") + card("ZIMAGE", "T") + card("ZCMPTYPE", "'GZIP_1  '") + card("ZBITPIX", "8")
                 + card("ZNAXIS", "2") + card("ZNAXIS1", str(width)) + card("ZNAXIS2", str(height))
                 + b"END".ljust(80)).ljust(2880)
    return primary + extension + gzip.compress(bytes(width * height * 4), 9)


def avif_sequence(frames: int, size: tuple[int, int] = (64, 48), bits: int = 10) -> bytes:
    """An AVIF image sequence of ``frames`` flat frames of ``size`` (width, height), frame i at
    level 200 + 300 i of 1023 (10 bits)."""
    import imagecodecs
    import numpy as np

    width, height = size
    levels = 200 + 300 * np.arange(frames, dtype=np.uint16)
    pixels = np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()
    return bytes(imagecodecs.avif_encode(pixels, level=90, speed=10, bitspersample=bits))


def isobmff_with_items(items: int, *, declared: int | None = None) -> bytes:
    """ftyp (avif) and a meta box whose iinf holds ``items`` entries of 21 bytes (and declares
    ``declared``, by default as many): what libavif parses, item by item, before the picture."""
    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", 8 + len(body)) + kind + body

    declared = items if declared is None else declared
    entries = b"".join(box(b"infe", b"\x02\x00\x00\x00" + struct.pack(">HH", i % 65535 + 1, 0) + b"av01\x00")
                       for i in range(items))
    iinf = box(b"iinf", (bytes(4) + struct.pack(">H", declared) if declared < 65536 else
                         b"\x01\x00\x00\x00" + struct.pack(">I", declared)) + entries)
    meta = box(b"meta", bytes(4) + box(b"hdlr", bytes(8) + b"pict" + bytes(13)) + iinf)
    return box(b"ftyp", b"avif" + bytes(4) + b"avifmif1miaf") + meta


def run_length_bmp(width: int, height: int) -> bytes:
    """An 8-bit run-length BMP of ``width`` x ``height`` whose every row is one pixel and an
    end-of-line escape: 4 bytes a row, and the rest of each row padded by Pillow's decoder."""
    rows = (b"\x01\x05" + b"\x00\x00") * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


def tiff_of_one_jpeg_strip(jpeg: bytes, width: int, height: int) -> bytes:
    """A gray 8-bit TIFF (little-endian) whose one strip is ``jpeg`` (compression 7: JPEG)."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 7), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, len(jpeg)), (284, 3, 1)]
    strip_at = 8 + 2 + 12 * len(entries) + 4
    ifd = b"".join(
        struct.pack("<HHII", tag, kind, 1, strip_at if tag == 273 else value) if kind == 4 else
        struct.pack("<HHIHH", tag, kind, 1, value, 0) for tag, kind, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + ifd + bytes(4) + jpeg


def avif_claiming_size(width: int, height: int, bits: int = 10) -> bytes:
    """A 64x64 AVIF (black) whose ``ispe`` box says ``width`` x ``height``: libavif gives a
    picture of that size, from about 300 bytes."""
    import imagecodecs
    import numpy as np

    data = bytearray(imagecodecs.avif_encode(np.zeros((64, 64, 3), np.uint16 if bits > 8 else np.uint8),
                                             **({"bitspersample": bits} if bits > 8 else {})))
    at = data.find(b"ispe")
    struct.pack_into(">II", data, at + 8, width, height)
    return bytes(data)
