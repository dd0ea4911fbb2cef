"""Images: bytes <-> pixels in their native depth, with the metadata worth keeping.

Import from here; the modules behind it are an implementation detail.
"""

from dce_batch.imaging.codecs import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    REC709_LUMA,
    DecodedImage,
    EncodedImage,
    EncodeOptions,
    decode_image,
    encode_image,
    extension_for,
    format_of_extension,
    max_file_bytes,
    mean_luminance,
    output_format,
    output_format_for_path,
    to_uint8,
    to_unit_float,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "REC709_LUMA",
    "DecodedImage",
    "EncodeOptions",
    "EncodedImage",
    "decode_image",
    "encode_image",
    "extension_for",
    "format_of_extension",
    "max_file_bytes",
    "mean_luminance",
    "output_format",
    "output_format_for_path",
    "to_uint8",
    "to_unit_float",
]
