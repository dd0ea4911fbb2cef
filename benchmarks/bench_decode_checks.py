"""What decoding's safeguards cost: the JPEG and PNG damage checks, and wide-gamut colour through sRGB.

    python benchmarks/bench_decode_checks.py                      # DICM from ../shared + a 12 MP photo
    python benchmarks/bench_decode_checks.py --folder PHOTOS --size 4000x3000

1. **JPEG damage check** (``dce_batch.imaging.decode._check_jpeg_data``): every JPEG is
   entropy-decoded once more by libjpeg-turbo at 1/8 scale, through simplejpeg, to read the
   warnings Pillow drops. Side by side on the same files: ``decode_image`` with the check, and
   with the check replaced by a no-op, in alternating rounds; the ratio is of the medians.
2. **PNG stream check** (``dce_batch.imaging.png_stream``): one CRC pass over every PNG's image
   data, and a second inflate where a sign points at damage (here: a photo whose bottom rows are
   black, which always pays it). The photo of ``--size`` saved as PNG, as it is and with its last
   rows black; ``decode_image`` with the check and with it off, in alternating rounds.
3. **JPEG scan count** (``dce_batch.imaging.jpeg_stream``): the walk over every JPEG's marker
   segments that refuses more than 256 scans, on the same JPEGs with the check and with it off;
   then a scan bomb (a flat progressive JPEG of ``--size`` with one empty refinement scan repeated
   1,000 times), decoded once with the check off and refused once with it on.
4. **Wide gamut** (``dce_batch.imaging.colour_space``): one synthetic dark photo saved as a JPEG
   tagged with sRGB and with a Display P3-like profile; ``decode_image`` + ``encode_image`` (JPEG)
   of each, so the P3 row pays both conversions (to sRGB and back) and the sRGB one neither.
   Then the conversions' error: ``to_srgb`` and ``from_srgb`` at 8 and 16 bits on random colours
   inside sRGB, against LittleCMS's float transform, in 8-bit levels, for Display P3 (sRGB's
   curve) and for a pure power curve of 2.2 (Adobe RGB's), in the shadows (sRGB values up to 0.1)
   and over the rest.

Single-threaded work on a possibly shared machine: the last line says how much CPU other
processes used meanwhile.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
from _common import LoadMonitor, dark_image, foreign_load_now, hardware_line, image_size_for, table
from PIL import Image, ImageCms

import dce_batch.imaging.decode as decode_module
from dce_batch.imaging import EncodeOptions, decode_image, encode_image

SHARED = Path(os.environ.get("DCE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check_rows(blobs: list[bytes], rounds: int, check: str) -> list[list[str]]:
    """``decode_image`` on ``blobs`` with the module's function ``check`` and with it a no-op."""
    checked = getattr(decode_module, check)
    per_round: dict[str, list[float]] = {"with the check": [], "check off": []}
    for _ in range(rounds):
        for name in per_round:  # alternate, so drift in machine load falls on both
            setattr(decode_module, check, checked if name == "with the check" else (lambda data, **_: None))
            try:
                per_round[name].append(timed(lambda: [decode_image(b) for b in blobs]))
            finally:
                setattr(decode_module, check, checked)
    base = statistics.median(per_round["check off"])
    return [[name, f"{statistics.median(times) / len(blobs) * 1e3:.2f}", f"{statistics.median(times) / base:.3f}"]
            for name, times in per_round.items()]


def scan_bomb(size: tuple[int, int], repeats: int) -> bytes:
    """A flat progressive JPEG whose smallest scan (empty refinements) is repeated ``repeats`` times."""
    buffer = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), (120, 110, 100)).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    scans = [data[start:end] for start, end in zip(starts, starts[1:] + [len(data) - 2])]
    return data[:-2] + min(scans[1:], key=len) * repeats + data[-2:]


def bomb_rows(bomb: bytes) -> list[list[str]]:
    """One decode of ``bomb`` with the scan check off, and one refusal with it on."""
    checked = decode_module._check_jpeg_scans
    rows = []
    for name in ("check off", "with the check"):
        decode_module._check_jpeg_scans = checked if name == "with the check" else (lambda data: None)
        start = time.perf_counter()
        try:
            decode_image(bomb)
            outcome = "decoded"
        except Exception as exc:  # noqa: BLE001 - the outcome is what is reported
            outcome = type(exc).__name__
        finally:
            decode_module._check_jpeg_scans = checked
        rows.append([name, f"{time.perf_counter() - start:.3f}", outcome])
    return rows


def png_blobs(size: tuple[int, int]) -> dict[str, bytes]:
    pixels = np.rint(dark_image(*size) * 255).astype(np.uint8)
    black_bottom = pixels.copy()
    black_bottom[-8:] = 0
    blobs = {}
    for name, image in (("PNG photo", pixels), ("PNG photo, black bottom rows (inflated twice)", black_bottom)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        blobs[name] = buffer.getvalue()
    return blobs


def p3_profile() -> bytes:
    import imagecodecs

    return bytes(imagecodecs.cms_profile("rgb", whitepoint=[0.3127, 0.329, 1.0],
                                         primaries=[0.68, 0.32, 1.0, 0.265, 0.69, 1.0, 0.15, 0.06, 1.0], gamma=2.2))


def display_p3_profile() -> bytes:
    """P3 primaries with sRGB's tone curve, as phones tag their photos."""
    import imagecodecs

    x = np.linspace(0.0, 1.0, 4096)
    curve = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    return bytes(imagecodecs.cms_profile("rgb", whitepoint=[0.3127, 0.329, 1.0],
                                         primaries=[0.68, 0.32, 1.0, 0.265, 0.69, 1.0, 0.15, 0.06, 1.0],
                                         transferfunction=np.rint(curve * 65535).astype(np.uint16)))


def gamut_error_rows() -> list[list[str]]:
    """Largest error of the job's conversions against LittleCMS's float transform, in 8-bit levels."""
    import imagecodecs

    from dce_batch.imaging.colour_space import _srgb_profile, from_srgb, to_srgb

    def exact(values: np.ndarray, source: bytes, target: bytes) -> np.ndarray:
        return np.clip(imagecodecs.cms_transform(values, source, target, colorspace="rgb", outcolorspace="rgb",
                                                 intent=1), 0.0, 1.0)

    rng = np.random.default_rng(0)
    srgb = _srgb_profile()
    rows = []
    for profile_name, icc in (("Display P3", display_p3_profile()), ("gamma 2.2 (Adobe RGB's curve)", p3_profile())):
        for lo, hi in ((0.0, 0.1), (0.1, 1.0)):
            # Colours inside sRGB (so inside both wide spaces too), by their sRGB values.
            inside = rng.uniform(lo, hi, (256, 256, 3)).astype(np.float32)
            for direction, convert, values, source, target in (
                    ("to sRGB", to_srgb, exact(inside, srgb, icc), icc, srgb),
                    ("from sRGB", from_srgb, inside, srgb, icc)):
                errors = []
                for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
                    stored = np.rint(values * top).astype(dtype)  # what a file of this depth holds
                    reference = exact((stored / top).astype(np.float32), source, target)
                    errors.append(f"{np.abs(convert(stored, icc) / top - reference).max() * 255:.2f}")
                rows.append([profile_name, f"{lo:g}-{hi:g}", direction, *errors])
    return rows


def gamut_rows(size: tuple[int, int], rounds: int) -> list[list[str]]:
    pixels = np.rint(dark_image(*size) * 255).astype(np.uint8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    files = {}
    for name, icc in (("sRGB-tagged JPEG", srgb), ("P3-tagged JPEG", p3_profile())):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=95, icc_profile=icc)
        files[name] = buffer.getvalue()

    def round_trip(data: bytes) -> None:
        decoded = decode_image(data)
        encode_image(decoded.pixels, decoded, EncodeOptions(format="jpeg"))

    per_round: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(rounds):
        for name, data in files.items():
            per_round[name].append(timed(lambda: round_trip(data)))
    base = statistics.median(per_round["sRGB-tagged JPEG"])
    megapixels = size[0] * size[1] / 1e6
    return [[f"{name}, {megapixels:.1f} MP", f"{statistics.median(times) * 1e3:.0f}",
             f"{statistics.median(times) / base:.3f}"] for name, times in per_round.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=SHARED / "data" / "lowlight_real" / "DICM",
                        help="JPEGs for the damage check (default: ../shared's DICM)")
    parser.add_argument("--size", default="4000x3000", help="the wide-gamut photo's WIDTHxHEIGHT")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    print(hardware_line(1))
    monitor = LoadMonitor()
    monitor.start()
    files = sorted(p for p in args.folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if files:
        print(f"\nJPEG damage check: decode_image on {len(files)} JPEGs of {args.folder}, "
              f"median of {args.rounds} alternating rounds")
        print(table(["decode_image", "ms / file", "ratio to check off"],
                    check_rows([f.read_bytes() for f in files], args.rounds, "_check_jpeg_data")))
    else:
        print(f"\nJPEG damage check: no JPEGs in {args.folder} (set --folder); skipped")
    width, height = image_size_for(args.size)
    if files:
        print(f"\nJPEG scan count: decode_image on the same {len(files)} JPEGs, median of {args.rounds} "
              "alternating rounds")
        print(table(["decode_image", "ms / file", "ratio to check off"],
                    check_rows([f.read_bytes() for f in files], args.rounds, "_check_jpeg_scans")))
    bomb = scan_bomb((height, width), 1000)
    print(f"\nJPEG scan bomb: a flat progressive {width}x{height} JPEG with one empty scan repeated "
          f"1,000 times ({len(bomb) / 1e3:.0f} KB), decoded once")
    print(table(["decode_image", "s", "outcome"], bomb_rows(bomb)))
    for name, blob in png_blobs((height, width)).items():
        print(f"\nPNG stream check: decode_image on a {name} ({width}x{height}, {len(blob) / 1e6:.1f} MB), "
              f"median of {args.rounds} alternating rounds")
        print(table(["decode_image", "ms / file", "ratio to check off"],
                    check_rows([blob], args.rounds, "_check_png_data")))
    print(f"\nWide gamut: decode_image + encode_image (JPEG q95), median of {args.rounds} rounds")
    print(table(["source", "ms", "ratio to sRGB-tagged"], gamut_rows((height, width), args.rounds)))
    print("\nConversion error against LittleCMS's float transform: largest, in 8-bit levels, "
          "colours inside sRGB (rows: their sRGB values)")
    print(table(["profile", "values", "direction", "at 8 bits", "at 16 bits"], gamut_error_rows()))
    monitor.stop()
    print(f"\n{monitor.line()}; {foreign_load_now()}")


if __name__ == "__main__":
    main()
