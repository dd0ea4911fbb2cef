"""What one actor needs to enhance its largest image: the basis of the memory it declares to Ray.

Each case runs in a fresh child process that does what an actor of the job does (weights loaded,
an Enhancer with the CPU defaults, one torch thread, then ImageProcessor.process_batch on one
file: read, decode, enhance, encode, atomic write). It reports the process's RSS before the image
(Python, torch, the model: the actor's base) and its peak (VmHWM) during the image, and compares
them with what the pipeline declares: ``ACTOR_BASE_MEMORY + pixels x ACTOR_BYTES_PER_PIXEL``.

    python benchmarks/bench_memory.py                # 24 MP and 100 MP JPEG, 24 MP and 50 MP 16-bit PNG (~4 min)
    python benchmarks/bench_memory.py --cases 24mp-jpeg
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, hardware_line, status_mib, table

CASES = {
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



def run_case(path: str) -> dict:
    """Child: one image through an actor's code; RSS before and peak during."""
    import torch

    torch.set_num_threads(1)
    import pyarrow.fs as pafs

    from dce_batch.imaging import EncodeOptions
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.job.steps import ImageProcessor, WorkItem
    from dce_batch.enhance.weights import load_weights

    fs = pafs.LocalFileSystem()
    enhancer = Enhancer(load_weights(), InferenceConfig())
    processor = ImageProcessor(enhancer, EncodeOptions(), fs, fs, run_id="bench")
    out = Path(path).with_suffix(".out" + Path(path).suffix)
    item = WorkItem(input_uri=path, input_path=path, output_uri=str(out), output_path=str(out),
                    output_format="JPEG" if path.endswith(".jpg") else "PNG")
    warm = Path(path).with_name("warm.png")
    from PIL import Image

    Image.new("RGB", (300, 300), (20, 20, 20)).save(warm)  # warm up the model and codecs
    processor.process_batch([WorkItem(str(warm), str(warm.with_suffix(".o.png")), str(warm.with_suffix(".o.png")),
                                      "PNG", input_path=str(warm))])
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := current RSS
    before = status_mib("VmRSS")
    started = time.perf_counter()
    row = processor.process_batch([item])[0]
    seconds = time.perf_counter() - started
    out.unlink(missing_ok=True)
    return {"status": row.status, "error": row.error, "pixels": row.width * row.height if row.width else 0,
            "bit_depth": row.bit_depth, "before_mib": before, "peak_mib": status_mib("VmHWM"), "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child)))
        return 0
    from dce_batch.job.pipeline import ACTOR_BASE_MEMORY, ACTOR_BYTES_PER_PIXEL

    print(hardware_line(1))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as folder:
        for name in args.cases.split(","):
            height, width, kind = CASES[name]
            path = Path(folder) / (f"{name}.jpg" if kind == "jpeg" else f"{name}.png")
            make_image(path, height, width, kind)
            child = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                                   cwd=REPO, timeout=1800)
            if child.returncode != 0:
                print(child.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(child.stdout.strip().splitlines()[-1])
            declared = (ACTOR_BASE_MEMORY + r["pixels"] * ACTOR_BYTES_PER_PIXEL) / 2**20
            image_mib = r["peak_mib"] - r["before_mib"]
            rows.append([name, f"{r['pixels'] / 1e6:.1f}", str(r["bit_depth"]), r["status"], f"{r['seconds']:.1f}",
                         f"{r['before_mib']:.0f}", f"{r['peak_mib']:.0f}", f"{image_mib * 2**20 / max(r['pixels'], 1):.1f}",
                         f"{declared:.0f}", "fits" if r["peak_mib"] <= declared else "OVER"])
            path.unlink()
    print(table(["case", "MP", "bits", "status", "seconds", "RSS before MiB", "peak MiB", "bytes/px for the image",
                 "declared MiB", "peak vs declared"], rows))
    print(f"declared = ACTOR_BASE_MEMORY ({ACTOR_BASE_MEMORY >> 20} MiB) + pixels x ACTOR_BYTES_PER_PIXEL "
          f"({ACTOR_BYTES_PER_PIXEL}); RSS before = the actor's base after a warm-up image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
