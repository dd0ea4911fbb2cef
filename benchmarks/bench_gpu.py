"""Images/s on one GPU: the network alone and the whole job, against the authors' loop on the same GPU.

For 1200x900 JPEGs (the Zero-DCE paper's timing size), side by side in one run:

* **model only**: the authors' network one image per forward in fp32 (their test script's way,
  tensors already on the GPU), against this project's ``Enhancer.enhance_batch`` (uint8 images
  from host memory, converted on the GPU, batches of ``--batch`` images) in fp32, bf16 and fp16,
  each at the default scale (Zero-DCE's curves from a 4x smaller copy; the small copies batched)
  and at scale 1 (full resolution, windows of several images in one forward pass);
* **end to end** (read JPEG, enhance, write JPEG, manifest): the authors' loop (Pillow decode,
  GPU forward, Pillow encode, one image at a time) against ``dce-batch enhance`` on a local Ray
  with GPU actors (the staged pipeline: CPU tasks decode and encode, actors run the network on
  batches of equal-size windows), fp32 and the default precision.

It also checks that bf16/fp16 stay within one 8-bit step of fp32. The paper reports 0.0025 s per
image on a 2080 Ti (~400 images/s, model only); the target here is 1,000 images/s end to end on
one H100/H200. ``benchmarks/gpu.sh`` runs this on the device machine; ``--device cpu --images 8``
is a smoke test of the same code on a CPU.

    python benchmarks/bench_gpu.py                    # CUDA, 2,000 images
    python benchmarks/bench_gpu.py --device cpu --images 8 --model-images 4
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, dark_image, hardware_line, table


def make_jpegs(folder: Path, count: int, height: int, width: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    first = (dark_image(height, width, seed=0) * 255).astype("uint8")

    def write(i: int) -> None:
        # A few distinct images, rolled: distinct bytes per file without generating 2,000 images.
        Image.fromarray(first if i % 8 == 0 else __import__("numpy").roll(first, 37 * i, axis=1)).save(
            folder / f"{i:05d}.jpg", quality=92)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        list(pool.map(write, range(count)))


def model_only(device: str, images, batch: int) -> list[list[str]]:
    import numpy as np
    import torch

    from authors_loop import EnhanceNetNoPool, load_state
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.weights import load_weights

    rows = []
    net = EnhanceNetNoPool()
    net.load_state_dict(load_state()[0])
    net.eval().to(device)
    tensors = [torch.from_numpy(a).to(device).permute(2, 0, 1).unsqueeze(0).float().div(255) for a in images]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        net(tensors[0])
        sync()
        start = time.perf_counter()
        for t in tensors:
            net(t)
        sync()
        authors = len(tensors) / (time.perf_counter() - start)
    rows.append(["authors' network, fp32, one image per forward", f"{authors:.1f}", "1.00"])
    weights = load_weights()
    outputs = {}
    precisions = ["fp32", "bf16", "fp16"] if device.startswith("cuda") else ["fp32", "auto"]
    # scale None: the default (Zero-DCE's curves from a 4x smaller copy, small copies batched);
    # scale 1: full resolution, windows of several images batched into one forward pass.
    for precision, scale in [(p, s) for p in precisions for s in (None, 1.0)]:
        try:
            enhancer = Enhancer(weights, InferenceConfig(device=device, precision=precision, scale=scale))
        except Exception as exc:  # noqa: BLE001 - e.g. fp16 where it cannot run: say so
            rows.append([f"dce_batch {precision}", "-", f"not run: {exc}"])
            continue
        enhancer.enhance_batch(images[:batch])
        sync()
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            results = enhancer.enhance_batch(images[i : i + batch])
        sync()
        rate = len(images) / (time.perf_counter() - start)
        if scale is None:
            outputs[precision] = [r.pixels.astype(int) for r in enhancer.enhance_batch(images[:4])]
        rows.append([f"dce_batch Enhancer, {enhancer.precision}, scale {enhancer.config.scale:g}, batches of {batch}",
                     f"{rate:.1f}", f"{rate / authors:.2f}"])
        del results
    for precision, out in outputs.items():
        if precision != "fp32":
            worst = max(int(np.abs(a - b).max()) for a, b in zip(out, outputs["fp32"]))
            rows.append([f"  {precision} vs fp32: max 8-bit difference", str(worst), ""])
    return rows


def authors_end_to_end(device: str, folder: Path, target: Path, limit: int) -> float:
    import numpy as np
    import torch
    from PIL import Image

    from authors_loop import EnhanceNetNoPool, load_state

    net = EnhanceNetNoPool()
    net.load_state_dict(load_state()[0])
    net.eval().to(device)
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(folder.iterdir())[:limit]
    start = time.perf_counter()
    with torch.no_grad():
        for path in files:
            x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
            y = net(x.permute(2, 0, 1).unsqueeze(0).to(device))
            out = (y.clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
            Image.fromarray(out).save(target / path.name, "JPEG", quality=95)
    return len(files) / (time.perf_counter() - start)


def job_end_to_end(device: str, folder: Path, target: Path, precision: str, batch: int) -> dict:
    from dce_batch.job import EnhanceConfig, run_enhance

    shutil.rmtree(target, ignore_errors=True)
    if device.startswith("cuda"):
        config = EnhanceConfig(input=str(folder), output=str(target), gpus_per_actor=0.25, batch_size=batch,
                               precision=precision, report=False, quiet=True, engine="ray")
    else:  # the same staged pipeline on CPUs (smoke test)
        config = EnhanceConfig(input=str(folder), output=str(target), pipeline="staged", cpus_per_actor=0.5,
                               batch_size=batch, precision=precision, report=False, quiet=True, engine="ray")
    summary = run_enhance(config)
    # Images/s once the first batch is out (start-up excluded); meaningless with a single batch.
    after_first = summary.elapsed_s - summary.timings.get("first_batch_s", 0.0)
    steady = (summary.ok - batch) / after_first if summary.ok > 2 * batch and after_first > 0 else None
    return {"ok": summary.ok, "elapsed": summary.elapsed_s, "rate": summary.images_per_s, "steady": steady,
            "cluster": summary.cluster}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument("--images", type=int, default=2000, help="JPEGs for the end-to-end runs")
    parser.add_argument("--model-images", type=int, default=200, help="images for the model-only rows")
    parser.add_argument("--authors-images", type=int, default=200, help="images for the authors' end-to-end loop")
    parser.add_argument("--size", default="1200x900")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    import numpy as np
    import ray
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    width, height = (int(v) for v in args.size.split("x"))
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "none"
    print(hardware_line(torch.get_num_threads()).replace("no GPU used", f"device {device} ({gpu})"), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        folder = work / "in"
        started = time.perf_counter()
        make_jpegs(folder, args.images, height, width)
        print(f"{args.images} JPEGs of {width}x{height} made in {time.perf_counter() - started:.1f} s", flush=True)
        from dce_batch.imaging import decode_image

        files = sorted(folder.iterdir())[: args.model_images]
        images = [decode_image(p.read_bytes()).pixels for p in files]
        print(table(["model only", "images/s", "vs authors"], model_only(device, images, args.batch)), flush=True)
        authors = authors_end_to_end(device, folder, work / "authors", args.authors_images)
        ray.init(num_gpus=1 if device.startswith("cuda") else 0, include_dashboard=False, log_to_driver=False)
        rows = [["authors' loop (Pillow decode, fp32 forward, Pillow encode)", f"{authors:.1f}", "-", "1.00"]]
        for precision in ("fp32", "auto"):
            result = job_end_to_end(device, folder, work / f"job_{precision}", precision, args.batch)
            steady = f"{result['steady']:.1f}" if result["steady"] else "-"
            rows.append([f"dce-batch enhance, precision {precision} ({result['ok']} ok, {result['elapsed']:.1f} s)",
                         f"{result['rate']:.1f}", steady, f"{result['rate'] / authors:.2f}"])
        ray.shutdown()
        print(table(["end to end (read JPEG, enhance, write JPEG, manifest)", "images/s", "after first result",
                     "vs authors"], rows), flush=True)
        del np
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.exit(main())
