"""What one worker needs for one call of its images: measured peak against what it declares.

A worker declares its memory per call (dce_batch/job/sizing.py): ``ACTOR_BASE_MEMORY`` plus
``images_per_call x pixel limit x FUSED_BYTES_PER_PIXEL`` (``worker_memory_bytes``), because it
holds every image of one call at once. Each case here runs in a fresh child process that does
what a fused worker of the job does (``build_enhancer`` with the job's default settings and one
torch thread, then ``ImageProcessor.process_batch`` on one call of BATCH copies of one image:
read, decode, enhance, encode, atomic write). After a warm-up image it resets the peak, so the
printed peak (``VmHWM``) is the whole process's high-water mark during the call, the worker's base
(Python, torch, the model) included; it is compared with ``worker_memory_bytes(pixels, BATCH)``,
what a worker would declare with ``--max-pixels`` set to that image's size and ``--batch-size
BATCH``. "bytes/px" is (peak - RSS before) / (BATCH x pixels), to set against
``FUSED_BYTES_PER_PIXEL``.

    python benchmarks/bench_memory.py                 # 12 MP JPEG and 24 MP 16-bit PNG, batches 1, 2, 4 (~4 min)
    python benchmarks/bench_memory.py --cases 24mp-jpeg --batch-sizes 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, hardware_line, status_mib, table

CASES = {
    "12mp-jpeg": (3000, 4000, "jpeg"),
    "24mp-jpeg": (4000, 6000, "jpeg"),
    "100mp-jpeg": (8000, 12500, "jpeg"),
    "24mp-png16": (4000, 6000, "png16"),
    "50mp-png16": (5000, 10000, "png16"),
}


def make_image(path: Path, height: int, width: int, kind: str) -> None:
    """A dark photo-like image (smooth structure and noise), written without holding float copies."""
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == "jpeg":
        from PIL import Image

        rows = []
        for top in range(0, height, 500):  # in bands, to keep this process small
            h = min(500, height - top)
            yy = np.arange(top, top + h)[:, None]
            xx = np.arange(width)[None, :]
            base = (30 + 20 * np.sin(yy / 37.0) * np.cos(xx / 53.0)).astype(np.int16)
            band = np.clip(base[..., None] + rng.integers(0, 12, (h, width, 3)), 0, 255).astype(np.uint8)
            rows.append(band)
        Image.fromarray(np.concatenate(rows)).save(path, "JPEG", quality=92)
    else:
        import imagecodecs

        yy = np.arange(height)[:, None]
        xx = np.arange(width)[None, :]
        base = (6000 + 4000 * np.sin(yy / 37.0) * np.cos(xx / 53.0)).astype(np.int32)
        image = np.clip(base[..., None] + rng.integers(0, 800, (height, width, 3)), 0, 65535).astype(np.uint16)
        path.write_bytes(imagecodecs.png_encode(image, level=1))



def run_case(path: str, batch: int) -> dict:
    """Child: one call of ``batch`` copies of the image through a fused worker's code; RSS before and peak during."""
    import os

    import pyarrow.fs as pafs

    from dce_batch.job.config import EnhanceConfig
    from dce_batch.job.steps import ImageProcessor, WorkItem
    from dce_batch.job.worker import build_enhancer, read_weights_spec

    folder = Path(path).parent
    config = EnhanceConfig(input=str(folder), output=str(folder / "out"))
    blob, name = read_weights_spec(config)
    enhancer = build_enhancer(config, blob, name, threads=1)  # as a worker: one torch thread
    fs = pafs.LocalFileSystem()
    processor = ImageProcessor(enhancer, config.encode_options(), fs, fs, run_id=config.run_id, worker="bench")
    suffix = Path(path).suffix
    fmt = "JPEG" if suffix == ".jpg" else "PNG"
    out = folder / "out"
    out.mkdir(exist_ok=True)
    items = []
    for i in range(batch):  # distinct inputs, as a call of the job gets
        copy = folder / f"in{i}{suffix}"
        if not copy.exists():
            os.link(path, copy)
        items.append(WorkItem(input_uri=str(copy), input_relpath=copy.name, output_relpath=copy.name,
                              output_path=str(out / copy.name), output_format=fmt, input_path=str(copy)))
    warm = folder / "warm.png"
    from PIL import Image

    Image.new("RGB", (300, 300), (20, 20, 20)).save(warm)  # warm up the model and codecs
    processor.process_batch([WorkItem(str(warm), "warm.png", "warm.o.png", str(out / "warm.o.png"), "PNG",
                                      input_path=str(warm))])
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := current RSS
    before = status_mib("VmRSS")
    started = time.perf_counter()
    rows = processor.process_batch(items)
    seconds = time.perf_counter() - started
    peak = status_mib("VmHWM")
    processor.close()
    shutil.rmtree(out, ignore_errors=True)
    row = rows[0]
    return {"status": ",".join(sorted({r.status for r in rows})), "error": row.error,
            "pixels": row.width * row.height if row.width else 0, "bit_depth": row.bit_depth,
            "precision": enhancer.precision, "before_mib": before, "peak_mib": peak, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="12mp-jpeg,24mp-png16", help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--batch-sizes", default="1,2,4", help="images per call, comma-separated (default: %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.batch)))
        return 0
    from dce_batch.job.config import CPU_IMAGES_PER_CALL
    from dce_batch.job.sizing import ACTOR_BASE_MEMORY, FUSED_BYTES_PER_PIXEL, worker_memory_bytes

    print(hardware_line(1))
    rows = []
    for name in args.cases.split(","):
        height, width, kind = CASES[name]
        with tempfile.TemporaryDirectory(prefix="bench_memory_") as folder:
            path = Path(folder) / (f"{name}.jpg" if kind == "jpeg" else f"{name}.png")
            make_image(path, height, width, kind)
            for batch in [int(b) for b in args.batch_sizes.split(",")]:
                child = subprocess.run([sys.executable, __file__, "--child", str(path), "--batch", str(batch)],
                                       capture_output=True, text=True, cwd=REPO, timeout=1800)
                if child.returncode != 0:
                    print(child.stderr[-3000:], file=sys.stderr)
                    return 1
                r = json.loads(child.stdout.strip().splitlines()[-1])
                declared = worker_memory_bytes(r["pixels"], batch) / 2**20
                image_mib = r["peak_mib"] - r["before_mib"]
                rows.append([name, f"{r['pixels'] / 1e6:.1f}", str(r["bit_depth"]), str(batch), r["status"],
                             f"{r['seconds']:.1f}", f"{r['before_mib']:.0f}", f"{r['peak_mib']:.0f}",
                             f"{image_mib * 2**20 / max(batch * r['pixels'], 1):.1f}", f"{declared:.0f}",
                             f"{r['peak_mib'] / declared:.2f}", "fits" if r["peak_mib"] <= declared else "OVER"])
    print(table(["case", "MP", "bits", "batch", "status", "seconds", "RSS before MiB", "peak MiB",
                 "bytes/px per image", "declared MiB", "peak/declared", "peak vs declared"], rows))
    print(f"declared = ACTOR_BASE_MEMORY ({ACTOR_BASE_MEMORY >> 20} MiB) + batch x pixels x FUSED_BYTES_PER_PIXEL "
          f"({FUSED_BYTES_PER_PIXEL}) (dce_batch.job.sizing.worker_memory_bytes, --max-pixels = the image's pixels); "
          f"the job's default batch on CPUs is {CPU_IMAGES_PER_CALL}; precision {r['precision']}; RSS before = the "
          "worker's base after a warm-up image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
