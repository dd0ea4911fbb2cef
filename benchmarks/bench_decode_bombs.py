"""What decoding's bomb checks save: crafted files decoded with each check off and on, side by side.

    python benchmarks/bench_decode_bombs.py              # every case, about 3 minutes
    python benchmarks/bench_decode_bombs.py --cases icc,fits

Each case is a file of a few hundred bytes to a few hundred KB (``tests/crafted_files.py``) whose
headers ask a decoder for far more work than its picture is worth. ``decode_image`` runs on it in
a fresh process, once with the check that refuses it turned off and once as shipped; the table
gives wall seconds and peak RSS (``wait4``) and what came out. The processes are capped at 16 GB
of address space and ``--timeout`` seconds.

Cases: ``scans`` (a progressive JPEG repeating an empty scan 1,000 times), ``passes`` (250 such
scans of one component of a 16 MP picture: under the scan limit), ``stray`` (the first with
three stray bytes after a Huffman table, which a walk that stops at the first byte that is not
a marker would miss),
``j2k-blocks`` (JPEG 2000 headers asking for 4x4 code-blocks on 4000x4000 RGB), ``j2k-precincts``
(2x2 precincts on 2000x2000), ``icc`` (an 8x8 PNG whose profile chains 5,000 matrices), ``fits``
(a FITS file of gzip-compressed zeros, 5000x5000: a format the job does not read),
``avif-sequence`` (a 10-bit AVIF of 30 flat frames of 2000x2000), ``bmp-rle`` (a run-length BMP of
10000x10000 one-pixel rows), ``pnm-comments`` (a plain PGM header followed by 1 MB of comments),
``avif-10bit-100mp`` (a 64x64 10-bit AVIF whose ``ispe`` says 10000x10000: not refused, a 100 MP
picture is within the limit; "off" scales it to 16 bits in one float pass instead of by table).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time

from _common import REPO, hardware_line, table

CASES = ("scans", "passes", "stray", "j2k-blocks", "j2k-precincts", "icc", "fits", "avif-sequence", "bmp-rle",
         "pnm-comments", "avif-10bit-100mp")


def build(case: str) -> bytes:
    from PIL import Image

    from tests import crafted_files as crafted

    if case == "scans":
        return crafted.jpeg_scan_bomb(1000, size=(4000, 3000))
    if case == "passes":
        return crafted.jpeg_scan_bomb(250, size=(4000, 4000))
    if case == "stray":
        return crafted.with_stray_bytes_after_a_table(crafted.jpeg_scan_bomb(1000, size=(4000, 3000)))
    if case == "j2k-blocks":
        return crafted.jpeg2000_headers(4000, 4000, block=2, components=3)
    if case == "j2k-precincts":
        return crafted.jpeg2000_headers(2000, 2000, precincts=b"\x00" + b"\x11" * 5)
    if case == "icc":
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (120, 80, 40)).save(buffer, "PNG", icc_profile=crafted.icc_profile_of_matrices(5000))
        return buffer.getvalue()
    if case == "fits":
        return crafted.fits_gzip(5000, 5000)
    if case == "avif-sequence":
        return crafted.avif_sequence(30, size=(2000, 2000))
    if case == "bmp-rle":
        return crafted.run_length_bmp(10000, 10000)
    if case == "pnm-comments":
        return b"P2\n10000 10000\n255\n" + b"#\n" * 500_000
    if case == "avif-10bit-100mp":
        return crafted.avif_claiming_size(10000, 10000)
    raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")


def turn_off(case: str) -> None:
    """Turn off the one check that refuses ``case``."""
    import dce_batch.imaging.decode as decode
    import dce_batch.imaging.metadata as metadata

    if case in ("scans", "passes", "stray"):
        decode._check_jpeg_scans = lambda data: None
    elif case.startswith("j2k"):
        decode._check_jpeg2000_structures = lambda data: None
    elif case == "icc":
        metadata.MAX_ICC_PROCESSING_ELEMENTS = 2**32
    elif case == "fits":
        from PIL import Image

        Image.init()
        decode.DECODED_FORMATS = frozenset(Image.ID)
    elif case == "avif-sequence":
        import dce_batch.imaging.deep as deep

        shipped = decode.is_deep_colour
        decode.is_deep_colour = lambda image, fmt, data: (
            deep._avif_bits(data) > 8 if fmt == "AVIF" else shipped(image, fmt, data))
    elif case == "bmp-rle":
        decode._check_run_length_bmp = lambda image: None
    elif case == "pnm-comments":
        decode._without_plain_pnm_comments = lambda data: data
    elif case == "avif-10bit-100mp":  # scaled to 16 bits in one float pass over the whole picture
        import numpy as np

        import dce_batch.imaging.deep as deep

        deep._scaled_to_16_bits = lambda samples, maximum: np.rint(
            np.minimum(samples, maximum) * np.float32(65535.0 / maximum)).astype(np.uint16)


def one(case: str, check: str) -> None:
    """Runs in the child: build, decode, print what came out."""
    from dce_batch.imaging import decode_image

    data = build(case)
    if check == "off":
        turn_off(case)
    start = time.perf_counter()
    try:
        decoded = decode_image(data)
        outcome = f"decoded {decoded.pixels.shape[1]}x{decoded.pixels.shape[0]}"
    except Exception as exc:  # noqa: BLE001 - the outcome is what is reported
        outcome = type(exc).__name__
    print(json.dumps({"bytes": len(data), "seconds": time.perf_counter() - start, "outcome": outcome}))


def measure(case: str, check: str, timeout: float) -> list[str]:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))

    process = subprocess.Popen([sys.executable, __file__, "--one", case, check], stdout=subprocess.PIPE, text=True,
                               cwd=REPO, preexec_fn=cap)
    started = time.monotonic()
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > timeout:
            process.kill()
            pid, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.05)
    output = process.stdout.read().strip()
    rss = f"{usage.ru_maxrss / 1024:.0f}"
    if not output:
        return [case, check, "-", f"> {timeout:.0f}" if time.monotonic() - started > timeout else "-", rss,
                f"ended without an answer (status {status})"]
    result = json.loads(output.splitlines()[-1])
    return [case, check, f"{result['bytes']:,}", f"{result['seconds']:.3f}", rss, result["outcome"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per decode")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(*args.one)
        return
    print(hardware_line(1))
    rows = [measure(case, check, args.timeout) for case in args.cases.split(",") for check in ("off", "on")]
    print(table(["case", "check", "file bytes", "decode s", "peak RSS MB", "outcome"], rows))


if __name__ == "__main__":
    main()
