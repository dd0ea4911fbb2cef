"""Helpers shared by the benchmark scripts (not a benchmark itself).

Kept free of torch and ray imports so that a benchmark's parent process can stay small while
its measurements run in child processes.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo, on sys.path
    sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def total_memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def hardware_line(torch_threads: int | str) -> str:
    """One line: CPUs, memory, torch threads, versions (without importing torch or ray)."""
    bf16 = "yes" if _cpu_flag("avx512_bf16") or _cpu_flag("amx_bf16") else "no"
    for cap in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):  # kernels capped below the hardware
        if os.environ.get(cap):
            bf16 += f", {cap}={os.environ[cap]}"
    return (f"hardware: {os.cpu_count()} CPUs ({cpu_model()}, native bf16: {bf16}), "
            f"{total_memory_gib():.1f} GiB RAM, no GPU used | torch threads {torch_threads} | "
            f"torch {version_of('torch')}, ray {version_of('ray')}, numpy {np.__version__}, "
            f"python {platform.python_version()}")


def malloc_env_line() -> str:
    """glibc reads MALLOC_* variables (and GLIBC_TUNABLES) at start; set, they would blur allocator comparisons."""
    found = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}
    if found:
        return f"WARNING: allocator variables set, allocator comparisons are blurred: {found}"
    return ("allocator: no MALLOC_*/GLIBC_TUNABLES set; library defaults call keep_freed_memory() "
            "(mallopt M_MMAP_THRESHOLD 512 MB, M_TRIM_THRESHOLD 1 GB) when an Enhancer is built on a CPU")


def _cpu_flag(flag: str) -> bool:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return flag in line.split()
    except OSError:
        pass
    return False


def dark_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic synthetic low-light photo: float32 H x W x 3 in [0, ~0.2].

    Smooth structure plus noise, built row-chunk by row-chunk in float32 so that making a 24 MP
    image needs no temporaries larger than a few MB besides the image itself.
    """
    rng = np.random.default_rng(seed)
    image = rng.random((height, width, 3), dtype=np.float32)  # noise in [0, 1)
    image *= np.float32(0.1)
    xs = np.arange(width, dtype=np.float32)
    cos_x = np.cos(xs / np.float32(17.0))[None, :, None]
    tint = np.asarray([1.0, 0.9, 0.75], dtype=np.float32)[None, None, :]
    for r0 in range(0, height, 256):
        r1 = min(height, r0 + 256)
        ys = np.arange(r0, r1, dtype=np.float32)
        sin_y = np.sin(ys / np.float32(13.0))[:, None, None]
        block = image[r0:r1]
        block += np.float32(0.25) + np.float32(0.2) * sin_y * cos_x
        block *= np.float32(0.35) * tint
    np.clip(image, 0.0, 1.0, out=image)
    return image


def image_size_for(spec: str) -> tuple[int, int]:
    """``"6000x4000"`` -> (4000, 6000); ``"12"`` (megapixels) -> a 4:3 size near that many pixels.

    Returns (height, width).
    """
    spec = spec.strip().lower()
    if "x" in spec:
        w, h = spec.split("x")
        return int(h), int(w)
    named = {"0.5": (612, 816), "2": (1224, 1632), "6": (2000, 3000), "12": (3000, 4000), "24": (4000, 6000)}
    if spec in named:
        return named[spec]
    pixels = float(spec) * 1e6
    width = int(round(math.sqrt(pixels * 4 / 3) / 8) * 8)
    return int(round(pixels / width)), width


def image_set_parser(doc: str, images: int, size: str) -> argparse.ArgumentParser:
    """The options every image-set benchmark shares: how many images, their size, Zero-DCE++'s scale."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=images, help="number of images (default: %(default)s)")
    parser.add_argument("--size", default=size, help="WxH of each image (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=12.0, help="fast variant's scale (default: %(default)s)")
    return parser


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table, right-aligned numbers, left-aligned text."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        out = []
        for cell, width in zip(cells, widths):
            numeric = cell.replace(".", "", 1).replace("x", "").replace("-", "").replace("e", "").isdigit()
            out.append(cell.rjust(width) if numeric else cell.ljust(width))
        return "  ".join(out).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines.extend(fmt(r) for r in rows)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Other processes' CPU use while a benchmark runs (the machine may be shared)


TAG = "DCE_BATCH_BENCH_RUN"


def _tagged(pid: int, value: str) -> bool:
    """Whether the process inherited this benchmark's tag (Ray workers do, via their raylet)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{TAG}={value}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, CPU ticks incl. reaped children, start time) for every process in /proc.

    For pid 1 only its own time counts: it reaps orphans, e.g. this benchmark's own Ray workers
    once their raylet is gone.
    """
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        ppid = int(fields[1])
        ticks = sum(int(v) for v in fields[11:15 if entry != "1" else 13])  # utime stime [cutime cstime]
        procs[int(entry)] = (ppid, ticks, int(fields[19]))
    return procs


def _system_busy_s() -> float:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def _descendants(procs: dict[int, tuple[int, int, int]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class LoadMonitor:
    """CPU seconds used by processes outside this benchmark's process tree between start and stop.

    Timings on a shared machine are only meaningful if nobody else was busy: every benchmark
    prints this next to its results. Our processes are our descendants plus anything carrying the
    tag this sets in the environment (Ray workers inherit it). A background thread looks at every
    new process once a second while it is alive, because an exited process that nobody reaped yet
    (a zombie, e.g. a Ray worker of a cluster whose driver is gone) no longer shows its environment
    but still shows its CPU time. Processes that started and exited in between, reaped by no
    surviving parent, are missed, so this is a lower bound.
    """

    SAMPLE_S = 1.0

    def __init__(self) -> None:
        self.root = os.getpid()
        self.tag = os.environ.setdefault(TAG, f"{self.root}-{time.time():.0f}")
        self.tick = os.sysconf("SC_CLK_TCK")
        self.seen: dict[tuple[int, int], bool] = {}  # (pid, start time) -> ours, judged while it lived
        self._stop = threading.Event()
        self.start()
        threading.Thread(target=self._watch, name="LoadMonitor", daemon=True).start()

    def start(self) -> None:
        self.busy_before = _system_busy_s()
        self.before = _proc_table()
        self.ours = _descendants(self.before, self.root)
        self.started = time.perf_counter()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            try:
                table = _proc_table()
                descendants = None
                for pid, (_, _, start) in table.items():
                    if (pid, start) in self.seen:
                        continue
                    if descendants is None:
                        descendants = _descendants(table, self.root)
                    self.seen[(pid, start)] = pid in descendants or _tagged(pid, self.tag)
            except Exception:  # noqa: BLE001 - a monitoring hiccup must not break a benchmark
                pass

    def foreign_cpu_s(self) -> tuple[float, float]:
        """(CPU seconds of other processes, wall seconds) since start."""
        after = _proc_table()
        ours = self.ours | _descendants(after, self.root)
        ticks = 0
        self.top: list[tuple[int, int]] = []  # (ticks, pid) of the foreign processes that used CPU
        for pid, (_, t, start) in after.items():
            if pid in ours or self.seen.get((pid, start)) or _tagged(pid, self.tag):
                continue
            old = self.before.get(pid)
            used = t - old[1] if old and old[2] == start else t if start > self._boot_ticks_at_start() else 0
            ticks += used
            if used > 0:
                self.top.append((used, pid))
        self.top.sort(reverse=True)
        # Reaped children can carry CPU time from before the start: never report more than the
        # whole machine was busy.
        return min(ticks / self.tick, _system_busy_s() - self.busy_before), time.perf_counter() - self.started

    def top_line(self, count: int = 3) -> str:
        """The foreign processes that used the most CPU (after foreign_cpu_s), as 'comm(pid) 1.2 s'."""
        parts = []
        for used, pid in [(u, p) for u, p in self.top if u / self.tick >= 0.1][:count]:
            name = "?"
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    name = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:60]
                if not name:  # kernel thread or zombie: fall back to the command name and state
                    with open(f"/proc/{pid}/stat") as f:
                        text = f.read()
                    name = f"[{text[text.index('(') + 1:text.rindex(')')]}, state {text[text.rindex(')') + 2]}]"
            except (OSError, ValueError):
                pass
            parts.append(f"{name} (pid {pid}) {used / self.tick:.1f} s")
        return "; ".join(parts)

    def _boot_ticks_at_start(self) -> float:
        # Processes whose start time (ticks since boot) is before our start existed already: if we
        # did not see them at start, they are not new; count only genuinely new ones in full.
        if not hasattr(self, "_start_ticks"):
            with open("/proc/uptime") as f:
                uptime = float(f.read().split()[0])
            self._start_ticks = (uptime - (time.perf_counter() - self.started)) * self.tick
        return self._start_ticks

    def line(self) -> str:
        cpu_s, wall_s = self.foreign_cpu_s()
        share = cpu_s / max(wall_s * (os.cpu_count() or 1), 1e-9)
        verdict = "quiet machine" if share < 0.05 else "WARNING: the machine was shared, timings are disturbed"
        top = self.top_line()
        return (f"other processes used {cpu_s:.1f} CPU-s over these {wall_s:.0f} s "
                f"({share:.0%} of {os.cpu_count()} CPUs): {verdict}" + (f"; most: {top}" if top else ""))


def foreign_load_now(seconds: float = 2.0) -> str:
    """Sample other processes' CPU use for a moment before starting."""
    monitor = LoadMonitor()
    time.sleep(seconds)
    cpu_s, wall_s = monitor.foreign_cpu_s()
    monitor.stop()
    return f"before start: other processes busy {cpu_s / wall_s:.2f} of {os.cpu_count()} CPUs"


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MiB; NaN where there is none."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")
