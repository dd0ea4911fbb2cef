"""A JPEG 2000 codestream's headers, read without decoding: how many coding structures it asks for.

OpenJPEG allocates a structure (400-500 bytes) for every code-block and every precinct of a
tile's components and resolutions, however little data the tile holds, so a codestream of 100
bytes that asks for 4x4 code-blocks on a 10000x10000 RGB picture took 9.1 GB and 12 s to decode,
and one with 2x2 precincts on 4000x4000 8.8 GB and 21 s. OpenJPEG's encoder defaults (64x64
code-blocks, one precinct per resolution) ask for one structure per 2,900 samples (an 800x600
picture), 32x32 code-blocks one per 870, 32x32 precincts one per 46. Tiles are decoded one at a
time, so the largest tile's structures are what a file costs.

:func:`jpeg2000_structures` reads the image and tile sizes (SIZ) and the coding style of each
component (COD, COC) from the main header and every tile-part header, and counts the structures
as if every tile used the costliest coding style any header asks for.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_SAMPLES_PER_STRUCTURE", "Jpeg2000Structures", "jpeg2000_structures"]

#: One tile with more than one structure per this many samples of the picture refuses the file
#: (about 14 bytes per sample, a few times what the decoded picture takes): 4x4 code-blocks or
#: 2x2 precincts reach it; 8x8 code-blocks, and 32x32 precincts (which OpenJPEG halves at each
#: lower resolution), stay under it. Tiles are not counted together: there are at most 65,535,
#: decoded one at a time (62,500 tiles of 40x40 pixels: 100 MP in 2.6 s and 724 MB).
MAX_SAMPLES_PER_STRUCTURE: Final = 32
#: Below this count (about 225 MB) a tile is never refused, however small the picture: a small
#: picture with odd coding styles costs little.
ALWAYS_ALLOWED_IN_ONE_TILE: Final = 500_000


@dataclass(frozen=True)
class Jpeg2000Structures:
    """The code-blocks and precincts a codestream asks for in its largest tile."""

    in_one_tile: int
    samples: int  # of the whole picture, all components

    @property
    def excessive(self) -> bool:
        return self.in_one_tile > max(self.samples / MAX_SAMPLES_PER_STRUCTURE, ALWAYS_ALLOWED_IN_ONE_TILE)


_SOC: Final = b"\xff\x4f"
_SIZ, _COD, _COC, _SOT, _SOD, _EOC = 0xFF51, 0xFF52, 0xFF53, 0xFF90, 0xFF93, 0xFFD9
_DEFAULT_PRECINCT: Final = 15  # exponent: 32768, one precinct per resolution
_MAX_LEVELS: Final = 32


@dataclass(frozen=True)
class _CodingStyle:
    levels: int
    block_width: int  # exponents of two
    block_height: int
    precincts: tuple[tuple[int, int], ...]  # (width, height) exponents per resolution, lowest first


def jpeg2000_structures(data: bytes) -> Jpeg2000Structures | None:
    """The code-blocks and precincts the codestream asks OpenJPEG for in its largest tile, or None
    where its headers cannot be read (left for the decoder to report)."""
    start = _codestream_start(data)
    if start is None:
        return None
    try:
        return _count(data, start)
    except (struct.error, IndexError, ValueError, ZeroDivisionError):
        return None


def _codestream_start(data: bytes) -> int | None:
    """Where the codestream starts: at 0 in a raw codestream, in the ``jp2c`` box of a JP2 file."""
    if data.startswith(_SOC):
        return 0
    position = 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if length == 1 and position + 16 <= len(data):
            (length,) = struct.unpack_from(">Q", data, position + 8)
            header = 16
        if kind == b"jp2c":
            return position + header if data.startswith(_SOC, position + header) else None
        if length == 0 or length < header:
            return None
        position += length
    return None


def _count(data: bytes, start: int) -> Jpeg2000Structures | None:
    position = start + 2
    size: tuple[int, ...] | None = None
    components: list[tuple[int, int]] = []  # (XRsiz, YRsiz) per component
    coded = False  # a COD segment was met: a codestream without one is left to the decoder
    styles: set[_CodingStyle] = set()  # every coding style a COD or COC asks for: the costliest counts
    while position + 4 <= len(data):
        marker, length = struct.unpack_from(">HH", data, position)
        if marker == _SOT:
            (tile_part_length,) = struct.unpack_from(">I", data, position + 6)
            # The tile-part's own header runs to its SOD; its COD/COC count like the main header's.
            _read_styles(data, position + 2 + length, len(components), styles)
            if tile_part_length == 0:
                break
            position += tile_part_length
            continue
        if marker == _EOC or marker >> 8 != 0xFF:
            break
        segment = data[position + 4:position + 2 + length]
        if marker == _SIZ:
            size = struct.unpack_from(">IIIIIIII", segment, 2)
            count = struct.unpack_from(">H", segment, 34)[0]
            components = [(segment[37 + 3 * i], segment[38 + 3 * i]) for i in range(count)]
        elif marker in (_COD, _COC):
            styles.add(_style(marker, segment, len(components)))
            coded = coded or marker == _COD
        position += 2 + length
    if size is None or not coded or not components:
        return None
    width, height, x_origin, y_origin, tile_width, tile_height, _tile_x, _tile_y = size
    tile_width, tile_height = min(tile_width, width - x_origin), min(tile_height, height - y_origin)
    in_one_tile = sum(max(_structures(style, math.ceil(tile_width / x_step), math.ceil(tile_height / y_step))
                          for style in styles) for x_step, y_step in components)
    samples = sum(math.ceil((width - x_origin) / x) * math.ceil((height - y_origin) / y) for x, y in components)
    return Jpeg2000Structures(in_one_tile=in_one_tile, samples=samples)


def _read_styles(data: bytes, position: int, component_count: int, styles: set[_CodingStyle]) -> None:
    """Add the coding styles of a tile-part header starting at ``position``, walked segment by
    segment (by their lengths: a comment may hold any bytes, an SOD's among them) up to its SOD."""
    while position + 4 <= len(data):
        marker, length = struct.unpack_from(">HH", data, position)
        if marker == _SOD or marker >> 8 != 0xFF:
            return
        if marker in (_COD, _COC):
            styles.add(_style(marker, data[position + 4:position + 2 + length], component_count))
        position += 2 + length


def _style(marker: int, segment: bytes, component_count: int) -> _CodingStyle:
    if marker == _COD:
        flags, parameters = segment[0], segment[5:]
    else:
        skip = 1 if component_count < 257 else 2
        flags, parameters = segment[skip], segment[skip + 1:]
    levels = min(parameters[0], _MAX_LEVELS)
    if flags & 1:
        precincts = tuple((b & 0x0F, b >> 4) for b in parameters[5:5 + levels + 1])
    else:
        precincts = ((_DEFAULT_PRECINCT, _DEFAULT_PRECINCT),) * (levels + 1)
    return _CodingStyle(levels, (parameters[1] & 0x0F) + 2, (parameters[2] & 0x0F) + 2, precincts)


def _structures(style: _CodingStyle, width: int, height: int) -> int:
    """Code-blocks and precincts of one tile-component of ``width`` x ``height`` samples."""
    total = 0
    for resolution, (precinct_x, precinct_y) in enumerate(style.precincts):
        scale = 2 ** (style.levels - resolution)
        res_width, res_height = math.ceil(width / scale), math.ceil(height / scale)
        precincts = math.ceil(res_width / 2 ** precinct_x) * math.ceil(res_height / 2 ** precinct_y)
        # Code-blocks fit inside a precinct (of the subbands, half its size above resolution 0).
        halve = 1 if resolution else 0
        block_x = min(style.block_width, max(precinct_x - halve, 0))
        block_y = min(style.block_height, max(precinct_y - halve, 0))
        bands = 3 if resolution else 1
        band_width, band_height = math.ceil(res_width / 2 ** halve), math.ceil(res_height / 2 ** halve)
        blocks = bands * math.ceil(band_width / 2 ** block_x) * math.ceil(band_height / 2 ** block_y)
        total += precincts + max(blocks, precincts * bands)
    return total
