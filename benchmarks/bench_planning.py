"""The driver at scale: planning a run over 1,000,000 inputs, fresh and resumed.

What the driver does before any image is touched: list the inputs (here a 1,000,000-line list
file), fold dead runs' journals in, read the manifest, list OUTPUT to see which outputs exist,
and plan every input's output name, refusals and resume set (``dce_batch.job.pipeline.plan_inputs``,
the same call the job makes). Each scenario runs in a fresh child process; it prints the wall
time and the child's peak resident memory (``VmHWM``: the high-water mark of the whole
process, Python, torch, ray and pyarrow included, reset just before planning). Target: under 2 minutes and 2 GiB.

Scenarios:
  fresh      no manifest: every input is planned as work to do
  resume     a 1,000,000-row manifest whose outputs all exist: every input is skipped
  half       the manifest covers half the inputs (their outputs exist), the rest is to do

The inputs need not exist (planning never opens them); the outputs do, for the existence check,
so the script makes 1,000,000 empty files once (on /dev/shm when it has room) and reuses them.

    python benchmarks/bench_planning.py                 # 1,000,000 inputs, ~5 min the first time
    python benchmarks/bench_planning.py --inputs 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, hardware_line, status_mib, table

SCENARIOS = ("fresh", "resume", "half")


def _workdir(n: int) -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    return base / f"dce_bench_planning_{n}"


def prepare_files(n: int) -> Path:
    """The list file, and OUTPUT with n empty outputs and two manifests (all done, half done)."""
    work = _workdir(n)
    marker = work / "ready"
    import pyarrow as pa

    from dce_batch.job.manifest import MANIFEST_SCHEMA, write_manifest_part
    from dce_batch.job.pipeline import EnhanceConfig, run_output_settings
    from dce_batch.job.plan import settings_digest
    from dce_batch.storage import Location
    from dce_batch.enhance.weights import load_weights

    meta = load_weights().meta
    out = work / "out"
    config = EnhanceConfig(input=str(work / "inputs.txt"), output=str(out))
    text, digest = settings_digest(run_output_settings(config, meta, "JPEG"))
    # Made once and reused, as long as the manifests hold the current default settings.
    if marker.exists() and marker.read_text().split("\n")[0] == digest:
        return work
    started = time.time()
    work.mkdir(parents=True, exist_ok=True)
    for name in ("all", "half"):
        shutil.rmtree(work / f"manifest_{name}", ignore_errors=True)
    relpaths = [f"d{i % 1000:03d}/img{i:07d}.jpg" for i in range(n)]
    (work / "inputs.txt").write_text("".join(f"/data/photos/{r}\n" for r in relpaths))
    for folder in {r.split("/")[0] for r in relpaths}:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for r in relpaths:
        (out / r).touch()
    output = Location.parse(str(out))
    for name, count in (("all", n), ("half", n // 2)):
        manifest = work / f"manifest_{name}"
        manifest.mkdir(exist_ok=True)
        for start in range(0, count, 200_000):
            stop = min(count, start + 200_000)
            rows = stop - start
            table_ = pa.table({
                "run_id": pa.array(["earlier"] * rows),
                "input_uri": pa.array([f"/data/photos/{relpaths[i]}" for i in range(start, stop)]),
                "output_uri": pa.array([output.child_uri(relpaths[i]) for i in range(start, stop)]),
                "status": pa.array(["ok"] * rows),
                "output_format": pa.array(["JPEG"] * rows),
                "model_name": pa.array([meta.name] * rows),
                "model_sha256": pa.array([meta.sha256] * rows),
                "width": pa.array([640] * rows, pa.int32()), "height": pa.array([480] * rows, pa.int32()),
                "settings": pa.array([text] * rows), "settings_sha256": pa.array([digest] * rows),
                "made_by_run_id": pa.array(["earlier"] * rows),
                "finished_at": pa.array([int(time.time() * 1e6)] * rows, pa.int64()).cast(
                    MANIFEST_SCHEMA.field("finished_at").type),
            })
            write_manifest_part(_local_fs(), str(manifest), "earlier", start // 200_000, table_)
    marker.write_text(f"{digest}\nmade in {time.time() - started:.0f} s\n")
    return work


def _local_fs():
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def run_scenario(n: int, scenario: str) -> dict:
    """Child process: one planning, timed; returns counts, seconds and peak RSS."""
    import shutil

    from dce_batch.job import pipeline
    from dce_batch.storage import Location

    work = _workdir(n)
    manifest = work / "out" / "_manifest"
    if manifest.exists() or manifest.is_symlink():
        shutil.rmtree(manifest) if manifest.is_dir() and not manifest.is_symlink() else manifest.unlink()
    if scenario != "fresh":
        shutil.copytree(work / ("manifest_all" if scenario == "resume" else "manifest_half"), manifest)
    config = pipeline.EnhanceConfig(input=str(work / "inputs.txt"), output=str(work / "out"), precision="auto")
    import ray  # noqa: F401 - the driver has Ray imported too: count it in the baseline

    weights = pipeline.resolve_weights(config)
    _reset_peak()  # a child's peak starts at its parent's (Linux copies it on fork): start from now
    baseline = status_mib("VmRSS")
    started = time.perf_counter()
    prepared = pipeline.plan_inputs(config, Location.parse(config.output), weights)
    seconds = time.perf_counter() - started
    plan = prepared.plan
    return {"scenario": scenario, "todo": plan.todo.num_rows, "skipped": plan.skipped.num_rows,
            "refused": plan.refused.num_rows, "seconds": seconds, "peak_rss_mib": status_mib("VmHWM"),
            "rss_before_mib": baseline, "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(run_scenario(args.inputs, args.scenario)))
        return 0
    print(hardware_line("n/a (no model runs)"))
    started = time.time()
    work = prepare_files(args.inputs)
    print(f"inputs: {args.inputs:,}-line list file; OUTPUT with {args.inputs:,} existing outputs in {work} "
          f"(set up {'now' if time.time() - started > 2 else 'earlier'}: {(work / 'ready').read_text().split(chr(10))[1]})")
    rows = []
    for scenario in SCENARIOS:
        child = subprocess.run([sys.executable, __file__, "--inputs", str(args.inputs), "--scenario", scenario],
                               capture_output=True, text=True, cwd=REPO, timeout=1800)
        if child.returncode != 0:
            print(child.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(child.stdout.strip().splitlines()[-1])
        verdict = "ok" if result["seconds"] < 120 and result["peak_rss_mib"] < 2048 else "OVER TARGET"
        rows.append([scenario, f"{result['todo']:,}", f"{result['skipped']:,}", f"{result['seconds']:.1f}",
                     f"{result['peak_rss_mib']:.0f}", f"{result['rss_before_mib']:.0f}", verdict])
    print(table(["scenario", "to do", "skipped", "seconds", "peak RSS MiB", "RSS before MiB", "vs 2 min / 2 GiB"], rows))
    print("peak RSS: the child's VmHWM, reset just before planning (whole process: Python, torch and ray imported "
          "as in the driver, pyarrow); 'RSS before': its RSS then, imports and weights loaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
