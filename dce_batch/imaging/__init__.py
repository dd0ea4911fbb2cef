"""Images: bytes <-> pixels in their native depth, with the metadata worth keeping.

The pipeline around the model is::

    bytes --decode_image--> DecodedImage (uint8 or uint16 HxWx3, alpha, EXIF, ICC, ...)
          --DecodedImage.to_float()--> float32 HxWx3 in [0, 1] --model--> enhanced float32 HxWx3
          --encode_image--> EncodedImage (bytes in JPEG/PNG/WebP/TIFF/BMP)

Pixels stay in the source's integer depth until the model needs them: a 100 MP photo is 300 MB
as uint8 but 1.2 GB as float32, and GPU workers move uint8 tiles. Sources with more than 8 bits
per channel (16-bit PNG, TIFF and PNM, 10/12-bit AVIF, JPEG 2000, 16/32-bit integer and float
gray) come as uint16, so the curves work on their real shadow levels instead of 8-bit steps, and
their PNG/TIFF outputs are written at 16 bits per channel.

Everything here is a pure function of its arguments: no Ray, no torch, no global Pillow settings
changed (``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES`` are left alone), so
it is safe to call from any worker. Failures a user can act on are raised as the
:mod:`dce_batch.errors` types with messages that say what to do.

Import from here; the modules behind it are an implementation detail, one concern each:

* :mod:`~dce_batch.imaging.formats`: extensions and format names, the output format and
  extension for a source, the size limits (known from a file's name, before it is read);
* :mod:`~dce_batch.imaging.decode`: bytes to upright pixels (identification, decompression-bomb
  checks, modes, CMYK, orientation) with Pillow;
* :mod:`~dce_batch.imaging.repairs`, :mod:`~dce_batch.imaging.png_stream`,
  :mod:`~dce_batch.imaging.jpeg_stream`, :mod:`~dce_batch.imaging.jpeg2000_stream`,
  :mod:`~dce_batch.imaging.isobmff`: what viewers mend without a word, and what Pillow does not
  check (a PNG's incomplete image data, the work a JPEG's scans, a JPEG 2000's code-blocks or an
  AVIF's items ask of the decoder);
* :mod:`~dce_batch.imaging.deep`: colour of more than 8 bits, which Pillow cannot hold, through
  imagecodecs and tifffile;
* :mod:`~dce_batch.imaging.colour_space`: wide-gamut colour to sRGB for enhancement, and back;
* :mod:`~dce_batch.imaging.metadata`: ICC profiles, EXIF and PNG chunks;
* :mod:`~dce_batch.imaging.encode`: pixels to bytes in the output format, metadata kept;
* :mod:`~dce_batch.imaging.decoded`: :class:`DecodedImage`, what decoding gives and encoding takes;
* :mod:`~dce_batch.imaging.pixels`: float and integer depths, luma and brightness (numpy only).
"""

from dce_batch.imaging.decode import decode_image
from dce_batch.imaging.decoded import DecodedImage
from dce_batch.imaging.encode import EncodedImage, EncodeOptions, encode_image
from dce_batch.imaging.formats import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    UNDECODABLE_EXTENSIONS,
    UNREAD_IMAGE_EXTENSIONS,
    extension_for,
    format_of_extension,
    max_file_bytes,
    output_format,
    output_format_for_path,
)
from dce_batch.imaging.pixels import REC709_LUMA, mean_luminance, to_uint8, to_unit_float

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "UNDECODABLE_EXTENSIONS",
    "UNREAD_IMAGE_EXTENSIONS",
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
