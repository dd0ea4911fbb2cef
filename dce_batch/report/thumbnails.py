"""Before/after thumbnails: small upright JPEGs as data URIs, so the page needs no files beside it."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import warnings
from dataclasses import dataclass
from typing import Sequence

from dce_batch.errors import describe_error
from dce_batch.storage import S3Options, filesystem_for, read_bytes

__all__ = ["THUMBNAIL_SIDE", "Thumbnail", "make_thumbnails", "thumbnail"]

THUMBNAIL_SIDE = 360  # px, longest side; shown at up to 180 CSS px so it is sharp on 2x screens
THUMBNAIL_QUALITY = 82
THUMBNAIL_MAX_PIXELS = 150_000_000  # refuse to thumbnail decompression bombs
# Modes Pillow converts to RGB directly; others (16-bit, CMYK, float) go through the job's decoder.
_PILLOW_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "YCbCr")


@dataclass(frozen=True)
class Thumbnail:
    data_uri: str | None  # None when the image could not be read
    width: int = 0
    height: int = 0
    problem: str = ""  # why there is no data_uri


def thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> Thumbnail:
    """A JPEG thumbnail (longest side ``side``) of image bytes, upright, as a data URI.

    JPEGs are decoded at reduced size (``draft``), so a 24 MP photo costs a few MB, not
    hundreds.
    """
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF and decompression-bomb warnings: checked below
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > THUMBNAIL_MAX_PIXELS:
            return Thumbnail(None, problem=f"{image.width}x{image.height} is too large to thumbnail")
        image.draft("RGB", (side, side))
        if image.mode in _PILLOW_MODES:
            image = ImageOps.exif_transpose(image).convert("RGB")
        else:
            from dce_batch.imaging import decode_image, to_uint8

            image = Image.fromarray(to_uint8(decode_image(data, max_pixels=THUMBNAIL_MAX_PIXELS).pixels))
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(f"data:image/jpeg;base64,{encoded}", image.width, image.height)


def make_thumbnails(uris: Sequence[str], s3: S3Options | None, *, side: int = THUMBNAIL_SIDE,
                    threads: int = 4) -> list[Thumbnail]:
    """Thumbnails of ``uris``, in order (read in a few threads: object stores are latency-bound)."""

    def one(uri: str) -> Thumbnail:
        try:
            fs, path = filesystem_for(uri, s3)
            return thumbnail(read_bytes(fs, path), side)
        except Exception as exc:  # noqa: BLE001 - a missing or damaged image shows as a note, not a failed report
            return Thumbnail(None, problem=describe_error(exc))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(threads, len(uris) or 1))) as pool:
        return list(pool.map(one, uris))
