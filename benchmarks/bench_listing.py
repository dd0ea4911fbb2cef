"""Planning inputs at scale: time and peak memory of listing a huge list file and a big folder.

Side by side, each in a fresh process: ``list_inputs_table`` (columnar, what the driver should
use) and ``list_inputs`` (the same listing turned into one ``InputFile`` per input, for small
callers). Inputs, made once in a temp folder: a ``.txt`` list file of ``--lines`` entries
(relative, absolute and ``file://`` entries, comments, a duplicate every 1,000 lines) and a
folder of ``--files`` empty ``.jpg`` files in 100 subfolders (plus hidden files and a
``_manifest`` folder that must be skipped). Printed: rows, seconds, peak RSS of the process
(``ru_maxrss``) and the peak over the RSS after imports, and the ratios.

Run from the repository root: ``python benchmarks/bench_listing.py`` (1,000,000 lines and
100,000 files; about 2 min, mostly making the files), ``--quick`` (100,000 and 10,000).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import LoadMonitor, foreign_load_now, hardware_line, table  # noqa: E402


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(variant: str, source: str) -> None:
    """Child process: one listing, then a JSON line with the measurements."""
    from dce_batch.storage import list_inputs, list_inputs_table

    base = _rss_mb()
    started = time.perf_counter()
    if variant == "list_inputs_table":
        _, result = list_inputs_table(source, extensions=[".jpg"])
        rows = result.num_rows
    else:
        _, result = list_inputs(source, extensions=[".jpg"])
        rows = len(result)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak, "over_imports_mb": peak - base}))


def make_list_file(path: Path, lines: int) -> None:
    folder = path.parent
    with open(path, "w") as out:
        out.write("# images to enhance\n")
        for i in range(lines):
            name = f"photos/day{i % 365:03d}/IMG_{i:08d}.jpg"
            if i % 3 == 0:
                out.write(f"{name}\n")
            elif i % 3 == 1:
                out.write(f"{folder}/{name}\n")
            else:
                out.write(f"file://{folder}/{name}\n")
            if i % 1000 == 999:
                out.write(f"\n# batch {i // 1000}\n{name}\n")


def make_folder(root: Path, files: int) -> None:
    for i in range(files):
        sub = root / f"d{i % 100:02d}"
        if i < 100:
            sub.mkdir(parents=True)
        (sub / f"IMG_{i:07d}.jpg").touch()
    (root / ".hidden.jpg").touch()
    (root / "_manifest").mkdir()
    (root / "_manifest" / "part.jpg").touch()


def measure(variant: str, source: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", variant, source], capture_output=True,
                         text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if args.quick:
        args.lines, args.files = 100_000, 10_000
    print(hardware_line("n/a (listing benchmark)"), flush=True)
    print(foreign_load_now(), flush=True)
    with tempfile.TemporaryDirectory(prefix="dce-listing-") as tmp:
        listing, folder = Path(tmp) / "list.txt", Path(tmp) / "folder"
        started = time.perf_counter()
        make_list_file(listing, args.lines)
        make_folder(folder, args.files)
        print(f"made a {listing.stat().st_size / 2**20:.0f} MB list file of {args.lines:,} entries and "
              f"{args.files:,} files in {time.perf_counter() - started:.0f} s", flush=True)
        monitor = LoadMonitor()
        rows = []
        for label, source in ((f"{args.lines:,}-line .txt list file", str(listing)),
                              (f"{args.files:,}-file local folder", str(folder))):
            results = {v: measure(v, source) for v in ("list_inputs_table", "list_inputs")}
            table_, objects = results["list_inputs_table"], results["list_inputs"]
            for variant, r in results.items():
                rows.append([label, variant, f"{r['rows']:,}", f"{r['seconds']:.2f}", f"{r['peak_mb']:.0f}",
                             f"{r['over_imports_mb']:.0f}"])
            rows.append([label, "ratio list_inputs / table", "",
                         f"{objects['seconds'] / table_['seconds']:.2f}x", f"{objects['peak_mb'] / table_['peak_mb']:.2f}x",
                         f"{objects['over_imports_mb'] / max(table_['over_imports_mb'], 1):.2f}x"])
        monitor.stop()
    print(table(["input", "function", "rows", "seconds", "peak RSS MB", "peak over imports MB"], rows))
    print(monitor.line())


if __name__ == "__main__":
    main()
