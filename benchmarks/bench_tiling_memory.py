"""Tiled inference bounds memory: peak RSS and time of full-frame vs tiled DCE-Net, side by side.

What it proves: DCE-Net run on the whole frame needs activation memory proportional to the image
(measured here in bytes per pixel), while :class:`dce_batch.enhance.enhancer.Enhancer` with its CPU
defaults (``InferenceConfig(device="cpu")``: 256-pixel tiles plus a 7-pixel halo above two tiles'
worth of pixels, and glibc told to keep freed memory) needs a fixed amount for the network plus
the output array, so a 24 MP photo fits in a small worker, at a measured time, with the same pixels.

How: every measurement runs in a fresh Python process (this script re-run with ``--worker``), so
runs cannot contaminate each other's peak or allocator state. In that process: import torch, set
the thread count, load the model, warm it up on a 64x64 image, build the synthetic dark input
image, then reset the kernel's peak-RSS mark (``/proc/self/clear_refs``) and note the RSS; enhance;
the reported memory is ``VmHWM`` minus that RSS, i.e. what ``Enhancer.enhance`` itself needs on top
of the input it is given (its float32 output, 12 B/pixel, included), over all repeats; then, with
the output dropped, the RSS the process keeps. A second, independent reading
(``ru_maxrss`` after minus ``ru_maxrss`` before) is cross-checked; it reads low when an earlier peak
(or pages the kernel reclaimed before the baseline) leaves ``ru_maxrss`` above the RSS at the start,
so it is the fallback only where ``clear_refs`` is not available.

Rows per size: DCE-Net full-frame (``max_full_frame_pixels`` huge) and DCE-Net with the library's
CPU defaults (nothing overridden; the resolved tile and budget are printed). Full-frame runs are
skipped where their estimated peak (the bytes/pixel measured by the largest full-frame run so far;
1.2 KB/pixel before any) exceeds ``--max-full-gb``. Where both ran, the tiled output is compared
with the full-frame output (max abs difference; tiling is exact, so it should be 0). Extra rows:
other tile sizes at the largest size up to 6 MP (``--tile-sweep``); at the largest size the
settings before commit 2c3c7fe (1024-pixel tiles above 2 MP, glibc's default allocator, i.e.
``dce_batch.enhance.precision.keep_freed_memory`` replaced by a no-op in that process), compared pixel for
pixel with the default row; and the fast variant (Zero-DCE++, scale 12) with its default strips,
with strips of 2,097,152 pixels (the budget before 2c3c7fe) and in one pass.

    python benchmarks/bench_tiling_memory.py            # 0.5, 2, 6, 12, 24 MP (~2.5 min on 2 cores)
    python benchmarks/bench_tiling_memory.py --quick    # 0.5 and 2 MP (~1 min)
    python benchmarks/bench_tiling_memory.py --sizes 2,6000x4000 --max-full-gb 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (REPO, LoadMonitor, dark_image, foreign_load_now, hardware_line, image_size_for,  # noqa: E402
                     malloc_env_line, median, table)

PRIOR_BYTES_PER_PIXEL = 1200.0  # used before any full-frame run has been measured
HUGE = 10**12  # max_full_frame_pixels that never tiles
OLD_BUDGET = 2_097_152  # max_full_frame_pixels before commit 2c3c7fe (then the default on every device)
OLD_TILE = 1024  # tile_size before commit 2c3c7fe

# kind -> (label, model, InferenceConfig overrides, glibc default allocator); "tile" takes its size from the spec
KINDS = {
    "full": ("DCE-Net full-frame", "full", {"max_full_frame_pixels": HUGE}, False),
    "default": ("DCE-Net CPU default", "full", {}, False),
    "tile": ("DCE-Net tile", "full", {}, False),
    "before": ("DCE-Net before 2c3c7fe", "full", {"tile_size": OLD_TILE, "max_full_frame_pixels": OLD_BUDGET}, True),
    "fast-default": ("Zero-DCE++ s12 default", "fast", {"scale": 12.0}, False),
    "fast-2mp": ("Zero-DCE++ s12 2 MP strips", "fast", {"scale": 12.0, "max_full_frame_pixels": OLD_BUDGET}, False),
    "fast-1pass": ("Zero-DCE++ s12 1 pass", "fast", {"scale": 12.0, "max_full_frame_pixels": HUGE}, False),
}


# ------------------------------------------------------------------------------------------
# Child process: one measurement


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _vm_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5": reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    import gc
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    from dce_batch.enhance import precision
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.weights import load_weights

    _, model, overrides, glibc_default = KINDS[spec["kind"]]
    if spec["kind"] == "tile":
        overrides = {"tile_size": spec["tile_size"]}  # its budget resolves to two tiles' worth, as for a user
    if glibc_default:  # before building the Enhancer, which would otherwise call mallopt in this process
        precision.keep_freed_memory = lambda: None
    weights = load_weights("zerodcepp_sice_v2") if model == "fast" else load_weights()
    # fp32, as when these rows were first measured: the library's default is "auto" (bf16 where native).
    # DCE-Net at scale 1: these rows measure the full-resolution network's tiling (the job's default,
    # scale 4, is measured by bench_memory.py).
    scale = {"scale": 1.0} if model == "full" else {}
    enhancer = Enhancer(weights, InferenceConfig(device="cpu", **{"precision": "fp32", **scale, **overrides}))
    enhancer.enhance(dark_image(64, 64, seed=1))  # loads oneDNN code pages, first-call setup

    height, width = spec["height"], spec["width"]
    image = dark_image(height, width)
    gc.collect()
    baseline_rss = _rss_kib()
    baseline_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_reset = _reset_hwm()
    hwm_base = _rss_kib()

    times, tiled, pixels = [], None, None
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(spec["repeats"]):
        pixels = None  # release the previous output before the next run
        started = time.perf_counter()
        result = enhancer.enhance(image)
        times.append(time.perf_counter() - started)
        pixels, tiled = result.pixels, result.tiled
        del result
    after = resource.getrusage(resource.RUSAGE_SELF)
    peak_maxrss = after.ru_maxrss
    hwm = _vm_hwm_kib() if hwm_reset else None

    if spec.get("save"):
        np.save(spec["save"], pixels)
    pixels = None
    gc.collect()
    kept_kib = _rss_kib() - baseline_rss  # what the process still holds once the output is dropped
    return {
        "times": times,
        "tiled": tiled,
        # per enhance() call: CPU seconds in user space and in the kernel, and minor page faults
        "user_s": (after.ru_utime - before.ru_utime) / len(times),
        "sys_s": (after.ru_stime - before.ru_stime) / len(times),
        "minflt": (after.ru_minflt - before.ru_minflt) / len(times),
        # the reported peak: VmHWM over the RSS at the reset where available, else ru_maxrss over its baseline
        "peak_over_kib": (hwm - hwm_base) if hwm is not None else peak_maxrss - baseline_maxrss,
        "baseline_maxrss_kib": baseline_maxrss,
        "baseline_rss_kib": baseline_rss,
        "hwm_over_kib": (hwm - hwm_base) if hwm is not None else None,
        "ru_over_kib": peak_maxrss - baseline_maxrss,
        "kept_kib": kept_kib,
        "input_mb": image.nbytes / 2**20,
        "tile_size": enhancer.config.tile_size,  # as resolved by the library for this device
        "budget": enhancer.config.max_full_frame_pixels,
        "glibc_default": glibc_default,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# ------------------------------------------------------------------------------------------
# Parent process


def run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"error": f"exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}",
            "stderr": tail}


def max_abs_diff(a_path: str, b_path: str) -> float:
    a = np.load(a_path, mmap_mode="r")
    b = np.load(b_path, mmap_mode="r")
    if a.shape != b.shape:
        return float("inf")
    worst = 0.0
    for r0 in range(0, a.shape[0], 512):
        worst = max(worst, float(np.max(np.abs(a[r0:r0 + 512] - b[r0:r0 + 512]))))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.5,2,6,12,24",
                        help="comma-separated megapixels (0.5, 2, 6, 12, 24 map to 816x612, 1632x1224, "
                             "3000x2000, 4000x3000, 6000x4000) or WxH (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="only 0.5 and 2 MP (about 1 min)")
    parser.add_argument("--max-full-gb", type=float, default=12.0,
                        help="skip full-frame runs whose estimated peak exceeds this (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement, median reported (default: 3 up to 2 MP, else 1)")
    parser.add_argument("--tile-sweep", default="512,1024",
                        help="tile sizes measured at the largest size up to 6 MP, side by side with the "
                             "CPU default (default: %(default)s; empty to skip)")
    parser.add_argument("--no-before", action="store_true",
                        help="skip the row with the settings before 2c3c7fe (tile 1024, glibc's default allocator)")
    parser.add_argument("--no-fast", action="store_true", help="skip the fast-variant rows")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    sizes = [image_size_for(s) for s in ("0.5,2" if args.quick else args.sizes).split(",")]
    sizes.sort(key=lambda hw: hw[0] * hw[1])
    print(hardware_line(args.threads), flush=True)
    print(malloc_env_line(), flush=True)
    print(f"full-frame skipped above an estimated {args.max_full_gb:g} GB; each row is a fresh process; memory = "
          "peak RSS (VmHWM, reset just before) minus the RSS after torch, the model, a warm-up and the input image",
          flush=True)
    print(foreign_load_now(), flush=True)
    monitor = LoadMonitor()

    tile_sweep = [int(t) for t in args.tile_sweep.split(",") if t.strip()] if args.tile_sweep else []
    sweep_candidates = [hw for hw in sizes if hw[0] * hw[1] <= 6_100_000]
    sweep_size = sweep_candidates[-1] if sweep_candidates and tile_sweep else None
    largest = sizes[-1]

    bytes_per_px, bpp_source = PRIOR_BYTES_PER_PIXEL, "prior"
    results: list[dict] = []
    diffs: list[tuple[str, str, tuple[int, int], float]] = []
    started = time.perf_counter()

    def measure(kind: str, height: int, width: int, repeats: int, tile: int | None = None,
                save: str | None = None) -> dict:
        spec = dict(kind=kind, height=height, width=width, threads=args.threads, repeats=repeats, tile_size=tile,
                    save=save)
        r = dict(size=(height, width), kind=kind, **run_child(spec, args.timeout))
        results.append(r)
        _progress(r, started)
        return r

    with tempfile.TemporaryDirectory(prefix="bench_tiling_") as tmp:
        for height, width in sizes:
            pixels = height * width
            repeats = args.repeats or (3 if pixels <= 2_100_000 else 1)
            estimate_gb = bytes_per_px * pixels / 2**30
            full_path = os.path.join(tmp, f"full_{width}x{height}.npy")
            default_path = os.path.join(tmp, f"default_{width}x{height}.npy")
            full_ran = False
            if estimate_gb > args.max_full_gb:
                r = dict(size=(height, width), kind="full", skipped=True,
                         note=f"skipped: est. {estimate_gb:.1f} GB > --max-full-gb {args.max_full_gb:g} "
                              f"({bytes_per_px:.0f} B/px, {bpp_source})")
                results.append(r)
                _progress(r, started)
            else:
                r = measure("full", height, width, repeats, save=full_path)
                if "error" not in r:
                    full_ran = True
                    bytes_per_px = r["peak_over_kib"] * 1024 / pixels
                    bpp_source = f"measured at {width}x{height}"
            with_before = not args.no_before and (height, width) == largest
            r = measure("default", height, width, repeats,
                        save=default_path if (full_ran or with_before) else None)
            default_ok = "error" not in r
            if full_ran and default_ok:
                diffs.append(("CPU default", "full-frame", (height, width), max_abs_diff(full_path, default_path)))
            if (height, width) == sweep_size:
                for tile in tile_sweep:
                    tiled_path = os.path.join(tmp, f"tile{tile}_{width}x{height}.npy")
                    r = measure("tile", height, width, repeats, tile=tile, save=tiled_path if full_ran else None)
                    if full_ran and "error" not in r:
                        diffs.append((f"tile {tile}", "full-frame", (height, width), max_abs_diff(full_path, tiled_path)))
                        os.remove(tiled_path)
            if full_ran:
                os.remove(full_path)
            if with_before:
                before_path = os.path.join(tmp, f"before_{width}x{height}.npy")
                r = measure("before", height, width, repeats, save=before_path if default_ok else None)
                if default_ok and "error" not in r:
                    diffs.append(("before 2c3c7fe", "CPU default", (height, width),
                                  max_abs_diff(default_path, before_path)))
                    os.remove(before_path)
            if os.path.exists(default_path):
                os.remove(default_path)
        if not args.no_fast:
            height, width = largest
            repeats = args.repeats or (3 if height * width <= 2_100_000 else 1)
            for kind in ("fast-default", "fast-2mp", "fast-1pass"):
                measure(kind, height, width, repeats)

    print()
    print(report(results, diffs, bytes_per_px, bpp_source))
    print(monitor.line())
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")
    return 1 if any("error" in r for r in results) else 0


def _label(r: dict) -> str:
    label = KINDS[r["kind"]][0]
    return f"{label} {r['tile_size']}" if r["kind"] == "tile" and "tile_size" in r else label


def _progress(r: dict, started: float) -> None:
    height, width = r["size"]
    if r.get("skipped"):
        what = r["note"]
    elif "error" in r:
        what = "ERROR " + r["error"]
    else:
        what = f"{median(r['times']):.2f} s, {r['peak_over_kib'] / 1024:.0f} MB over baseline"
    print(f"  [{time.perf_counter() - started:5.0f} s] {width}x{height} {_label(r)}: {what}", file=sys.stderr,
          flush=True)


def report(results: list[dict], diffs: list, bytes_per_px: float, bpp_source: str) -> str:
    def ok(r: dict | None) -> bool:
        return bool(r) and not r.get("skipped") and "error" not in r

    full = {r["size"]: r for r in results if r["kind"] == "full"}
    default = {r["size"]: r for r in results if r["kind"] == "default"}
    rows = []
    for r in results:
        height, width = r["size"]
        mp = height * width / 1e6
        label = _label(r)
        if not ok(r):
            rows.append([f"{width}x{height}", f"{mp:.1f}", label, "-"] + ["-"] * 10
                        + [r.get("note") or ("ERROR " + r["error"])])
            continue
        fast = r["kind"].startswith("fast")
        tiled = r["tiled"]
        if fast:
            strip_rows = max(1, r["budget"] // width) if tiled else height
            split = f"strips {strip_rows} rows" if tiled else "1 pass"
        else:
            split = f"tile {r['tile_size']}" if tiled else "full-frame"
        seconds, mem_mb = median(r["times"]), r["peak_over_kib"] / 1024
        ref = full.get(r["size"]) if r["kind"] in ("default", "tile") else (
            default.get(r["size"]) if r["kind"] in ("before",) or fast else None)
        notes = []
        if ok(ref):
            t_ratio = f"{seconds / median(ref['times']):.2f}"
            m_ratio = f"{mem_mb / max(ref['peak_over_kib'] / 1024, 1e-9):.3f}"
        else:
            t_ratio = m_ratio = "-"
        if tiled and not fast:
            count = -(-height // r["tile_size"]) * -(-width // r["tile_size"])
            notes.append(f"{count} tiles")
        if fast and tiled:
            notes.append(f"{-(-height // strip_rows)} strips")
        if r["glibc_default"]:
            notes.append("glibc default allocator")
        if len(r["times"]) > 1:
            notes.append(f"median of {len(r['times'])}")
        ru = r["ru_over_kib"]
        if r.get("hwm_over_kib") is not None and abs(ru - r["peak_over_kib"]) > max(0.05 * r["peak_over_kib"], 20 * 1024):
            gap = (r["baseline_maxrss_kib"] - r["baseline_rss_kib"]) / 1024
            notes.append(f"ru_maxrss check: {ru / 1024:.0f} MB" + (f" (its baseline {gap:.0f} MB above the RSS)"
                                                                     if gap > 10 else ""))
        rows.append([f"{width}x{height}", f"{mp:.1f}", label, split, f"{seconds:.2f}", f"{r['user_s']:.2f}",
                     f"{r['sys_s']:.2f}", f"{r['minflt'] / 1000:.0f}", f"{mem_mb:.0f}", f"{mem_mb / mp:.0f}",
                     f"{r['kept_kib'] / 1024:.0f}", t_ratio, m_ratio, "; ".join(notes)])
    out = [table(["size", "MP", "configuration", "ran as", "seconds", "cpu user s", "cpu sys s", "page faults k",
                  "peak MB over baseline", "MB/MP", "MB kept after", "time ratio", "mem ratio", "note"], rows)]
    resolved = next((r for r in results if r["kind"] == "default" and ok(r)), None)
    if resolved:
        out.append(f"CPU default as resolved by the library (InferenceConfig(device='cpu').for_device): tile_size "
                   f"{resolved['tile_size']}, max_full_frame_pixels {resolved['budget']:,}; glibc keeps freed memory")
    out.append("time/mem ratio: CPU default and tile rows / DCE-Net full-frame row of the same size; 'before 2c3c7fe' "
               "and Zero-DCE++ rows / CPU default row of the same size. cpu user/sys s and page faults: per call; MB kept "
               "after: RSS over baseline once the last output is dropped (memory the allocator keeps)")
    out.append(f"'before 2c3c7fe': tile_size {OLD_TILE}, max_full_frame_pixels {OLD_BUDGET:,}, glibc default "
               "allocator (keep_freed_memory replaced by a no-op in that process)")
    out.append(f"full-frame DCE-Net needs {bytes_per_px:.0f} bytes/pixel over baseline ({bpp_source}; "
               f"= {bytes_per_px * 1e6 / 2**30:.2f} GB per megapixel)")
    checked = [r for r in results if ok(r) and r.get("hwm_over_kib") is not None]
    if checked:
        gaps = sorted(abs(r["ru_over_kib"] - r["peak_over_kib"]) / 1024 for r in checked)
        close = sum(g <= 20 for g in gaps)
        out.append(f"cross-check: the ru_maxrss reading agrees with the VmHWM one within 20 MB on {close} of "
                   f"{len(checked)} measured rows (worst {gaps[-1]:.0f} MB)")
    elif any(ok(r) for r in results):
        out.append("memory column: ru_maxrss over its baseline (/proc/self/clear_refs not available here)")
    for name, ref_name, (height, width), diff in diffs:
        out.append(f"{name} == {ref_name} at {width}x{height}: max abs diff {diff:.3g}")
    big = max((r for r in results if r["kind"] == "default" and ok(r)),
              key=lambda r: r["size"][0] * r["size"][1], default=None)
    if big:
        height, width = big["size"]
        out.append(f"a {height * width / 1e6:.1f} MP image ({width}x{height}) enhanced with the CPU defaults (tile "
                   f"{big['tile_size']}, kept memory, torch threads {big['torch_threads']}) in "
                   f"{median(big['times']):.1f} s with {big['peak_over_kib'] / 1024:.0f} MB peak over baseline (the "
                   f"{big['input_mb']:.0f} MB input is in the baseline, the {big['input_mb']:.0f} MB float32 output "
                   "is counted)")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
