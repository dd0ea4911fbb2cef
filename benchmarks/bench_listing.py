"""Planning inputs at scale: time and peak memory of listing huge list files and a big folder.

Side by side, each in a fresh process: ``list_inputs_table`` (columnar, what the driver should
use) and ``list_inputs`` (the same listing turned into one ``InputFile`` per input, for small
callers). Inputs, made once in a temp folder: a ``.txt`` list file of ``--lines`` entries
(relative, absolute and ``file://`` entries, comments, a duplicate every 1,000 lines), a Parquet
list file of as many entries with S3 Inventory's fingerprint columns (size, last_modified_date,
e_tag; a duplicate every 1,000 rows), and a folder of ``--files`` empty ``.jpg`` files in 100
subfolders (plus hidden files and a ``_manifest`` folder that must be skipped). Printed: rows,
seconds, peak RSS of the process (``ru_maxrss``) and the peak over the RSS after imports, and
the ratios.

The folder is also walked alone, ``--repeats`` times per variant, alternating, each in a fresh
process (median seconds): the job's walk (``local_tree.walk_input_folder``: one ``os.scandir``
and one ``stat`` per entry, symbolic-link loops and undecodable names handled) next to a
reference listing, pyarrow's recursive C++ listing followed by a ``scandir`` pass for what it
leaves out (broken links, pipes, sockets, devices), which follows links to folders without
loop protection. The ratio row is walk / reference.

Run from the repository root: ``python benchmarks/bench_listing.py`` (1,000,000 lines and
100,000 files; about 3 min, mostly making the files), ``--quick`` (100,000 and 10,000).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import LoadMonitor, foreign_load_now, hardware_line, median, table  # noqa: E402


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reference_walk(base: str) -> int:
    """pyarrow's recursive listing, then a scandir pass for the entries it leaves out; files found."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    infos = pafs.LocalFileSystem().get_file_info(pafs.FileSelector(base, recursive=True))
    files = [info for info in infos if info.type == pafs.FileType.File]
    columns = (pa.array([f.path for f in files], pa.string()), pa.array([f.size for f in files], pa.int64()))
    unlisted, pending = [], [base]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    try:
                        mode = os.stat(entry.path).st_mode
                    except OSError:
                        unlisted.append(entry.path)
                        continue
                    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                        unlisted.append(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif not entry.is_file(follow_symlinks=False):
                    unlisted.append(entry.path)
    return len(columns[0]) + len(unlisted)


def worker(variant: str, source: str) -> None:
    """Child process: one listing, then a JSON line with the measurements."""
    from dce_batch.storage import list_inputs, list_inputs_table
    from dce_batch.storage.local_tree import walk_input_folder

    base = _rss_mb()
    started = time.perf_counter()
    if variant == "list_inputs_table":
        # The inventory names S3 objects: settings for an S3 filesystem, to which no request is made.
        from dce_batch.storage import S3Options

        s3 = S3Options(endpoint_url="http://127.0.0.1:1", access_key="bench", secret_key="bench")
        _, result = list_inputs_table(source, s3, extensions=[".jpg"])
        rows = result.num_rows
    elif variant == "list_inputs":
        _, result = list_inputs(source, extensions=[".jpg"])
        rows = len(result)
    elif variant == "walk_input_folder":
        rows = len(walk_input_folder(source, warn=print).paths)
    else:
        rows = reference_walk(source)
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


def make_inventory(path: Path, rows: int) -> None:
    """A Parquet list file as S3 Inventory writes one: bucket, key and fingerprint columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = [f"photos/day{i % 365:03d}/IMG_{i:08d}.jpg" for i in range(rows)]
    keys += keys[::1000]  # duplicates
    pq.write_table(pa.table({
        "bucket": pa.array(["bench-bucket"] * len(keys), pa.string()),
        "key": keys,
        "size": pa.array([1_000_000 + i for i in range(len(keys))], pa.int64()),
        "last_modified_date": pa.array([1_714_564_800_000 + i for i in range(len(keys))], pa.timestamp("ms", tz="UTC")),
        "e_tag": [f"{i:032x}" for i in range(len(keys))],
        "is_latest": pa.array([True] * len(keys)),
        "is_delete_marker": pa.array([False] * len(keys)),
    }), path)


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
                         text=True, check=False, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{variant} on {source} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="walks of the folder per variant (median)")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "SOURCE"), help=argparse.SUPPRESS)
    parser.add_argument("--make-inventory", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if args.make_inventory:
        make_inventory(Path(args.make_inventory[0]), int(args.make_inventory[1]))
        return
    if args.quick:
        args.lines, args.files = 100_000, 10_000
    print(hardware_line("n/a (listing benchmark)"), flush=True)
    print(foreign_load_now(), flush=True)
    with tempfile.TemporaryDirectory(prefix="dce-listing-") as tmp:
        listing, inventory, folder = Path(tmp) / "list.txt", Path(tmp) / "inventory.parquet", Path(tmp) / "folder"
        started = time.perf_counter()
        make_list_file(listing, args.lines)
        # In a child: a child's ru_maxrss starts from its parent's RSS, which must stay small.
        subprocess.run([sys.executable, __file__, "--make-inventory", str(inventory), str(args.lines)], check=True)
        make_folder(folder, args.files)
        print(f"made a {listing.stat().st_size / 2**20:.0f} MB list file of {args.lines:,} entries, an inventory of "
              f"as many and {args.files:,} files in {time.perf_counter() - started:.0f} s", flush=True)
        monitor = LoadMonitor()
        rows = []
        for label, source, variants in (
            (f"{args.lines:,}-line .txt list file", str(listing), ("list_inputs_table", "list_inputs")),
            (f"{args.lines:,}-row inventory .parquet", str(inventory), ("list_inputs_table",)),
            (f"{args.files:,}-file local folder", str(folder), ("list_inputs_table", "list_inputs")),
        ):
            results = {v: measure(v, source) for v in variants}
            for variant, r in results.items():
                rows.append([label, variant, f"{r['rows']:,}", f"{r['seconds']:.2f}", f"{r['peak_mb']:.0f}",
                             f"{r['over_imports_mb']:.0f}"])
            if "list_inputs" in results:
                table_, objects = results["list_inputs_table"], results["list_inputs"]
                rows.append([label, "ratio list_inputs / table", "",
                             f"{objects['seconds'] / table_['seconds']:.2f}x",
                             f"{objects['peak_mb'] / table_['peak_mb']:.2f}x",
                             f"{objects['over_imports_mb'] / max(table_['over_imports_mb'], 1):.2f}x"])
        walks: dict[str, list[dict]] = {"walk_input_folder": [], "reference": []}
        for _ in range(args.repeats):
            for variant, runs in walks.items():
                runs.append(measure(variant, str(folder)))
        label = f"{args.files:,}-file folder, walk only"
        for variant, runs in walks.items():
            rows.append([label, f"{variant} (median of {len(runs)})", f"{runs[0]['rows']:,}",
                         f"{median([r['seconds'] for r in runs]):.3f}", f"{max(r['peak_mb'] for r in runs):.0f}",
                         f"{max(r['over_imports_mb'] for r in runs):.0f}"])
        walk_s = median([r["seconds"] for r in walks["walk_input_folder"]])
        reference_s = median([r["seconds"] for r in walks["reference"]])
        rows.append([label, "ratio walk / reference", "", f"{walk_s / reference_s:.2f}x", "", ""])
        monitor.stop()
    print(table(["input", "function", "rows", "seconds", "peak RSS MB", "peak over imports MB"], rows))
    print(monitor.line())


if __name__ == "__main__":
    main()
