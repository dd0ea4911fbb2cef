"""16-bit PNG/TIFF codecs side by side: why dce_batch decodes and writes them with imagecodecs.

    python benchmarks/bench_codecs16.py            # a 12 MP image, ~1-2 min on 2 cores
    python benchmarks/bench_codecs16.py --quick    # 2 MP, ~15 s
    PYTHONPATH=/path/to/opencv:/path/to/pypng python benchmarks/bench_codecs16.py   # with the others

Pillow cannot hold 16-bit colour (it cuts 16-bit RGB PNG/TIFF to 8 bits on load), so another
library has to decode and encode them. Candidates: ``imagecodecs`` (libpng, libtiff; the choice),
``tifffile`` (pure Python TIFF, used by dce_batch for writing TIFF), OpenCV headless
(``cv2.imdecode(..., IMREAD_UNCHANGED)``) and ``pypng`` (pure Python). Those not installed are
reported as such; they are not dependencies of dce_batch.

For one synthetic dark 16-bit RGB photo (``_common.dark_image`` scaled to 0..65535) it prints, per
codec and operation: the best of ``--repeat`` wall times, the ratio to imagecodecs, whether the
decoded array equals the source exactly, and the encoded size; then each package's installed size
(the files its distribution lists) and, as the "before" reference, Pillow's 8-bit load of the
same files. Single-threaded libraries on a possibly shared machine: the last line says how much CPU
other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from importlib import metadata

import numpy as np
from _common import LoadMonitor, dark_image, foreign_load_now, hardware_line, image_size_for, table


def best_of(repeat: int, fn):
    """(best wall seconds, last result) of ``repeat`` calls."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def installed_mb(distribution: str) -> str:
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"
    total = 0
    for file in dist.files or []:
        path = dist.locate_file(file)
        if os.path.isfile(path):
            total += os.path.getsize(path)
    return f"{total / 2**20:.1f} MB"


def codecs(source: np.ndarray) -> dict[str, dict[str, object]]:
    """name -> {"png_decode", "png_encode", "tiff_decode", "tiff_encode"} callables (None if n/a)."""
    found: dict[str, dict[str, object]] = {}
    import imagecodecs
    import tifffile

    def tifffile_encode(array):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, photometric="rgb", compression="zlib", metadata=None)
        return buffer.getvalue()

    found["imagecodecs (chosen)"] = {
        "png_decode": imagecodecs.png_decode,
        "png_encode": lambda a: bytes(imagecodecs.png_encode(a)),
        "tiff_decode": lambda b: imagecodecs.tiff_decode(b, index=0),
        "tiff_encode": None,  # tiff_encode needs imagecodecs >= 2026; dce_batch writes with tifffile
    }
    found["tifffile (chosen for TIFF writing)"] = {
        "png_decode": None, "png_encode": None,
        "tiff_decode": lambda b: tifffile.imread(io.BytesIO(b)),
        "tiff_encode": tifffile_encode,
    }
    try:
        import cv2
    except ImportError:
        found["OpenCV headless"] = {}
    else:
        def cv2_decode(b):
            bgr = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
            return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

        def cv2_encode(ext, params):
            return lambda a: cv2.imencode(ext, cv2.cvtColor(a, cv2.COLOR_RGB2BGR), params)[1].tobytes()

        found["OpenCV headless"] = {
            "png_decode": cv2_decode,
            # zlib level 6 as the other PNG writers (OpenCV's own default is 1).
            "png_encode": cv2_encode(".png", [cv2.IMWRITE_PNG_COMPRESSION, 6]),
            "tiff_decode": cv2_decode,
            "tiff_encode": cv2_encode(".tif", [cv2.IMWRITE_TIFF_COMPRESSION, 8]),  # Adobe Deflate
        }
    try:
        import png
    except ImportError:
        found["pypng"] = {}
    else:
        def pypng_decode(b):
            width, height, rows, _ = png.Reader(bytes=b).read_flat()
            return np.asarray(rows, dtype=np.uint16).reshape(height, width, 3)

        def pypng_encode(a):
            buffer = io.BytesIO()
            png.Writer(a.shape[1], a.shape[0], greyscale=False, bitdepth=16).write_array(buffer, a.reshape(-1))
            return buffer.getvalue()

        found["pypng"] = {"png_decode": pypng_decode, "png_encode": pypng_encode,
                          "tiff_decode": None, "tiff_encode": None}
    return found


def robustness(found: dict[str, dict[str, object]], small: np.ndarray) -> str:
    """How each decoder handles damaged and less common 16-bit files: what a batch job meets."""
    import tifffile

    def tiff(array, **kwargs):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, metadata=None, **kwargs)
        return buffer.getvalue()

    gray_alpha = np.ascontiguousarray(small[:, :, :2])
    planar = tiff(np.moveaxis(small, 2, 0).copy(), photometric="rgb", planarconfig="separate")
    png = found["imagecodecs (chosen)"]["png_encode"](small)
    cases = {
        "PNG cut in half": ("png_decode", png[: len(png) // 2], None),
        "TIFF cut in half": ("tiff_decode", tiff(small, photometric="rgb")[:6000], None),
        "planar TIFF": ("tiff_decode", planar, small),
        "planar TIFF cut": ("tiff_decode", planar[: len(planar) // 2], None),
        "gray+alpha TIFF": ("tiff_decode", tiff(gray_alpha, photometric="minisblack",
                                                extrasamples=["unassalpha"]), gray_alpha),
    }
    rows = []
    for name, ops in found.items():
        row = [name]
        for op, data, expected in cases.values():
            fn = ops.get(op) if ops else None
            if fn is None:
                row.append("n/a")
                continue
            try:
                out = fn(data)
            except Exception as exc:  # noqa: BLE001 - what each library raises is the point
                row.append(f"raises {type(exc).__name__}")
                continue
            if out is None:
                row.append("None (log line)")
            elif expected is None:
                row.append(f"SILENT {out.dtype} {'x'.join(map(str, out.shape))}")
            elif op == "tiff_decode" and out.ndim == 3 and out.shape[0] == expected.shape[2]:
                same = np.array_equal(np.moveaxis(out, 0, -1), expected)
                row.append("planes first, exact" if same else "WRONG")
            else:
                row.append("exact" if out.shape == expected.shape and np.array_equal(out, expected) else
                           f"WRONG {out.dtype} {'x'.join(map(str, out.shape))}")
        rows.append(row)
    return table(["decoder", *cases], rows)


DISTRIBUTIONS = {"imagecodecs (chosen)": "imagecodecs", "tifffile (chosen for TIFF writing)": "tifffile",
                 "OpenCV headless": "opencv-python-headless", "pypng": "pypng"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="12", help="WxH or megapixels (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls per cell, best kept (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="2 MP")
    args = parser.parse_args()
    height, width = image_size_for("2" if args.quick else args.size)

    print(hardware_line("n/a"))
    print(foreign_load_now())
    monitor = LoadMonitor()
    source = np.rint(dark_image(height, width) * np.float32(65535)).astype(np.uint16)
    print(f"source: {width}x{height} 16-bit RGB ({width * height / 1e6:.1f} MP), "
          f"{len(np.unique(source[:, :, 1]))} distinct green levels (8 bits would keep "
          f"{len(np.unique(source[:, :, 1] >> 8))})")
    found = codecs(source)
    chosen = found["imagecodecs (chosen)"]
    png_bytes = chosen["png_encode"](source)
    tiff_bytes = found["tifffile (chosen for TIFF writing)"]["tiff_encode"](source)
    inputs = {"png": png_bytes, "tiff": tiff_bytes}

    rows, reference = [], {}
    for op in ("png_decode", "png_encode", "tiff_decode", "tiff_encode"):
        for name, ops in found.items():
            fn = ops.get(op) if ops else None
            if not ops:
                rows.append([op, name, "not installed", "", "", ""])
                continue
            if fn is None:
                continue
            arg = inputs[op.split("_")[0]] if op.endswith("decode") else source
            seconds, out = best_of(args.repeat, lambda: fn(arg))
            reference.setdefault(op, seconds)
            if op.endswith("decode"):
                exact = "yes" if out is not None and out.shape == source.shape and np.array_equal(out, source) else "NO"
                size = ""
            else:
                exact = "yes" if np.array_equal(chosen["png_decode"](out) if op == "png_encode"
                                                else found["tifffile (chosen for TIFF writing)"]["tiff_decode"](out),
                                                source) else "NO"
                size = f"{len(out) / 2**20:.1f} MB"
            rows.append([op, name, f"{seconds * 1000:.0f}", f"{seconds / reference[op]:.2f}x", exact, size])

    from PIL import Image

    for kind, data in inputs.items():
        def pillow_load(data=data):
            image = Image.open(io.BytesIO(data))
            image.load()
            return np.asarray(image)

        seconds, out = best_of(args.repeat, pillow_load)
        rows.append([f"{kind}_decode", "Pillow (before: cuts to 8 bits)", f"{seconds * 1000:.0f}",
                     f"{seconds / reference[f'{kind}_decode']:.2f}x", f"no ({out.dtype})", ""])

    print()
    print(table(["operation", "library", "ms", "vs first", "exact", "encoded"], rows))
    print()
    print(robustness(found, source[:64, :96]))
    print()
    print(table(["package", "installed"], [[name, installed_mb(dist)] for name, dist in DISTRIBUTIONS.items()]
                + [["Pillow (already a dependency)", installed_mb("pillow")]]))
    monitor.stop()
    print()
    print(monitor.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
