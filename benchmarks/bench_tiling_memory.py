"""Tiled inference bounds memory: peak RSS and time of full-frame vs tiled DCE-Net, side by side.

What it proves: DCE-Net run on the whole frame needs activation memory proportional to the image
(measured here in bytes per pixel), while :class:`dce_batch.inference.Enhancer` with tiling
(1024-pixel tiles plus a 7-pixel halo) needs a fixed amount for the network plus the output
array, so a 24 MP photo fits in a small worker, at a measured time cost, with the same pixels.

How: every measurement runs in a fresh Python process (this script re-run with ``--worker``), so
runs cannot contaminate each other's peak. In that process: import torch, set the thread count,
load the model, warm it up on a 64x64 image, build the synthetic dark input image, then take the
baseline ``ru_maxrss`` (``getrusage(RUSAGE_SELF)``, KiB on Linux); enhance; the reported memory is
the new ``ru_maxrss`` minus that baseline, i.e. what ``Enhancer.enhance`` itself needs on top of the
input it is given (its float32 output, 12 B/pixel, included). A second, independent reading (reset
the kernel's high-water mark via ``/proc/self/clear_refs``, read ``VmHWM``) is cross-checked.

Full-frame runs are skipped where their estimated peak (the bytes/pixel measured by the largest
full-frame run so far; 1.2 KB/pixel before any) exceeds ``--max-full-gb``. For sizes where both
ran, the tiled output is compared with the full-frame output (max abs difference; tiling is exact,
so it should be 0 or float rounding). The fast variant (Zero-DCE++, scale 12, strip-wise curve
application) is measured at the largest size too, with its strips and in one pass.

    python benchmarks/bench_tiling_memory.py            # 0.5, 2, 6, 12, 24 MP (~3-4 min on 2 cores)
    python benchmarks/bench_tiling_memory.py --quick    # 0.5 and 2 MP (~30 s)
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
from _common import REPO, dark_image, hardware_line, image_size_for, median, table  # noqa: E402

PRIOR_BYTES_PER_PIXEL = 1200.0  # used before any full-frame run has been measured
HUGE = 10**12  # max_full_frame_pixels that never tiles


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
    from dce_batch.inference import Enhancer, InferenceConfig
    from dce_batch.weights import load_weights

    if spec["mode"] == "full":
        weights, config = load_weights(), InferenceConfig(device="cpu", max_full_frame_pixels=HUGE)
    elif spec["mode"] == "tiled":  # forced: every size tiles (one tile if the image is smaller than one)
        weights = load_weights()
        config = InferenceConfig(device="cpu", tile_size=spec["tile_size"], max_full_frame_pixels=1)
    elif spec["mode"] == "fast-strips":  # the library's defaults: strips above 2,097,152 pixels
        weights, config = load_weights("zerodcepp_sice_v1"), InferenceConfig(device="cpu", scale=12)
    elif spec["mode"] == "fast-1pass":
        weights = load_weights("zerodcepp_sice_v1")
        config = InferenceConfig(device="cpu", scale=12, max_full_frame_pixels=HUGE)
    else:
        raise SystemExit(f"unknown mode {spec['mode']}")
    enhancer = Enhancer(weights, config)
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
    return {
        "times": times,
        "tiled": tiled,
        # per enhance() call: CPU seconds in user space and in the kernel, and minor page faults
        "user_s": (after.ru_utime - before.ru_utime) / len(times),
        "sys_s": (after.ru_stime - before.ru_stime) / len(times),
        "minflt": (after.ru_minflt - before.ru_minflt) / len(times),
        "peak_over_kib": peak_maxrss - baseline_maxrss,
        "baseline_maxrss_kib": baseline_maxrss,
        "baseline_rss_kib": baseline_rss,
        "hwm_over_kib": (hwm - hwm_base) if hwm is not None else None,
        "input_mb": image.nbytes / 2**20,
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
    parser.add_argument("--quick", action="store_true", help="only 0.5 and 2 MP (about 30 s)")
    parser.add_argument("--max-full-gb", type=float, default=8.0,
                        help="skip full-frame runs whose estimated peak exceeds this (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (default: %(default)s)")
    parser.add_argument("--tile-size", type=int, default=1024, help="tile core side (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement, median reported (default: 3 up to 2 MP, else 1)")
    parser.add_argument("--tile-sweep", default="256,512",
                        help="extra tile sizes measured at the largest size up to 6 MP, side by side with the "
                             "default tile (default: %(default)s; empty to skip)")
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
    print(f"tile {args.tile_size} + halo 7; full-frame skipped above an estimated {args.max_full_gb:g} GB; "
          "each row is a fresh process; memory = peak ru_maxrss minus the baseline taken after torch, "
          "the model, a warm-up and the input image", flush=True)

    tile_sweep = [int(t) for t in args.tile_sweep.split(",") if t.strip()] if args.tile_sweep else []
    sweep_candidates = [hw for hw in sizes if hw[0] * hw[1] <= 6_100_000]
    sweep_size = sweep_candidates[-1] if sweep_candidates and tile_sweep else None

    bytes_per_px, bpp_source = PRIOR_BYTES_PER_PIXEL, "prior"
    results: list[dict] = []
    diffs: dict[tuple[int, int, int], float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_tiling_") as tmp:
        for height, width in sizes:
            pixels = height * width
            repeats = args.repeats or (3 if pixels <= 2_100_000 else 1)
            base = dict(height=height, width=width, threads=args.threads, tile_size=args.tile_size, repeats=repeats)
            estimate_gb = bytes_per_px * pixels / 2**30
            full_path = os.path.join(tmp, f"full_{width}x{height}.npy")
            full_ran = False
            if estimate_gb > args.max_full_gb:
                results.append(dict(size=(height, width), mode="full", tile=None, skipped=True,
                                    note=f"skipped: est. {estimate_gb:.1f} GB > --max-full-gb {args.max_full_gb:g} "
                                         f"({bytes_per_px:.0f} B/px, {bpp_source})"))
            else:
                r = run_child({**base, "mode": "full", "save": full_path}, args.timeout)
                results.append(dict(size=(height, width), mode="full", tile=None, **r))
                if "error" not in r:
                    full_ran = True
                    bytes_per_px = r["peak_over_kib"] * 1024 / pixels
                    bpp_source = f"measured at {width}x{height}"
            _progress(results[-1], started)
            tiles = [args.tile_size] + ([t for t in tile_sweep if t != args.tile_size]
                                        if (height, width) == sweep_size else [])
            for tile in tiles:
                tiled_path = os.path.join(tmp, f"tiled{tile}_{width}x{height}.npy")
                r = run_child({**base, "tile_size": tile, "mode": "tiled", "save": tiled_path if full_ran else None},
                              args.timeout)
                results.append(dict(size=(height, width), mode="tiled", tile=tile, **r))
                _progress(results[-1], started)
                if full_ran and "error" not in r:
                    diffs[(height, width, tile)] = max_abs_diff(full_path, tiled_path)
                    os.remove(tiled_path)
            if full_ran:
                os.remove(full_path)
        if not args.no_fast:
            height, width = sizes[-1]
            base = dict(height=height, width=width, threads=args.threads, tile_size=args.tile_size,
                        repeats=args.repeats or (3 if height * width <= 2_100_000 else 1))
            for mode in ("fast-strips", "fast-1pass"):
                r = run_child({**base, "mode": mode}, args.timeout)
                results.append(dict(size=(height, width), mode=mode, tile=None, **r))
                _progress(results[-1], started)

    print()
    print(report(results, diffs, bytes_per_px, bpp_source, args.tile_size))
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")
    return 1 if any("error" in r for r in results) else 0


def _progress(r: dict, started: float) -> None:
    height, width = r["size"]
    if r.get("skipped"):
        what = r["note"]
    elif "error" in r:
        what = "ERROR " + r["error"]
    else:
        what = f"{median(r['times']):.2f} s, {r['peak_over_kib'] / 1024:.0f} MB over baseline"
    tile = f" tile {r['tile']}" if r.get("tile") else ""
    print(f"  [{time.perf_counter() - started:5.0f} s] {width}x{height} {r['mode']}{tile}: {what}", file=sys.stderr,
          flush=True)


MODE_LABEL = {"full": "DCE-Net full-frame", "tiled": "DCE-Net tiled", "fast-strips": "Zero-DCE++ s12 strips",
              "fast-1pass": "Zero-DCE++ s12 1 pass"}


def report(results: list[dict], diffs: dict, bytes_per_px: float, bpp_source: str, default_tile: int) -> str:
    def ok(r: dict | None) -> bool:
        return bool(r) and not r.get("skipped") and "error" not in r

    full = {r["size"]: r for r in results if r["mode"] == "full"}
    tiled_default = {r["size"]: r for r in results if r["mode"] == "tiled" and r["tile"] == default_tile}
    rows = []
    for r in results:
        height, width = r["size"]
        mp = height * width / 1e6
        label = MODE_LABEL[r["mode"]]
        tile = str(r["tile"]) if r["tile"] else ("strips" if r["mode"] == "fast-strips" else "-")
        if not ok(r):
            rows.append([f"{width}x{height}", f"{mp:.1f}", label, tile] + ["-"] * 9
                        + [r.get("note") or ("ERROR " + r["error"])])
            continue
        seconds, mem_mb = median(r["times"]), r["peak_over_kib"] / 1024
        ref = full.get(r["size"]) if r["mode"] == "tiled" else (
            tiled_default.get(r["size"]) if r["mode"].startswith("fast") else None)
        notes = []
        if ok(ref):
            t_ratio = f"{seconds / median(ref['times']):.2f}"
            m_ratio = f"{mem_mb / max(ref['peak_over_kib'] / 1024, 1e-9):.3f}"
        else:
            t_ratio = m_ratio = "-"
        if r["mode"] == "tiled" and not r["tiled"]:
            notes.append("did not tile")
        if r["mode"] == "fast-strips" and not r["tiled"]:
            notes.append("one pass: below 2,097,152 px")
        if len(r["times"]) > 1:
            notes.append(f"median of {len(r['times'])}")
        hwm = r.get("hwm_over_kib")
        if hwm is not None and abs(hwm - r["peak_over_kib"]) > max(0.05 * r["peak_over_kib"], 20 * 1024):
            notes.append(f"VmHWM check disagrees: {hwm / 1024:.0f} MB")
        rows.append([f"{width}x{height}", f"{mp:.1f}", label, tile, f"{seconds:.2f}", f"{r['user_s']:.2f}",
                     f"{r['sys_s']:.2f}", f"{r['minflt'] / 1000:.0f}", f"{mem_mb:.0f}", f"{mem_mb / mp:.0f}",
                     t_ratio, m_ratio, "; ".join(notes)])
    out = [table(["size", "MP", "mode", "tile", "seconds", "cpu user s", "cpu sys s", "page faults k",
                  "peak MB over baseline", "MB/MP", "time ratio", "mem ratio", "note"], rows)]
    out.append("time/mem ratio: DCE-Net tiled row / DCE-Net full-frame row of the same size; Zero-DCE++ rows / "
               f"DCE-Net tiled (tile {default_tile}) row of the same size. cpu user/sys s and page faults: per call")
    out.append(f"full-frame DCE-Net needs {bytes_per_px:.0f} bytes/pixel over baseline ({bpp_source}; "
               f"= {bytes_per_px * 1e6 / 2**30:.2f} GB per megapixel)")
    checked = [r for r in results if ok(r) and r.get("hwm_over_kib") is not None]
    if checked:
        worst = max(abs(r["hwm_over_kib"] - r["peak_over_kib"]) / 1024 for r in checked)
        out.append(f"cross-check: the VmHWM-reset reading agrees with ru_maxrss within {worst:.0f} MB on all "
                   f"{len(checked)} measured rows")
    for (height, width, tile), diff in diffs.items():
        out.append(f"tiled (tile {tile}) == full-frame at {width}x{height}: max abs diff {diff:.3g}")
    largest = max((r for r in results if r["mode"] == "tiled" and r["tile"] == default_tile and ok(r)),
                  key=lambda r: r["size"][0] * r["size"][1], default=None)
    if largest:
        height, width = largest["size"]
        out.append(f"a {height * width / 1e6:.0f} MP image ({width}x{height}) enhanced tiled in "
                   f"{median(largest['times']):.1f} s with {largest['peak_over_kib'] / 1024:.0f} MB peak over baseline "
                   f"(tile {default_tile}, torch threads {largest['torch_threads']}; the {largest['input_mb']:.0f} MB input "
                   f"is in the baseline, the {largest['input_mb']:.0f} MB float32 output is counted)")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
