"""The Ray job's overhead: the same images through a plain loop and through ``run_enhance``.

What it proves: how much wall time the Ray Data job (``dce_batch.pipeline.run_enhance``: read tasks,
an actor pool of ``ImageProcessor``, manifest) costs or saves against the simplest possible
program doing the same work, a single-process loop over ``ImageProcessor`` (read bytes -> decode ->
enhance -> encode -> atomic write), on the same generated images, in one run:

* plain loop, 1 torch thread (what one Ray CPU actor gets) and 2 torch threads (the whole machine);
* ``run_enhance`` with the library's defaults (no ``num_actors``, no ``cpus_per_actor``: the pool that
  ``plan_actor_pool`` picks, on 2 CPUs 1 actor x 1 CPU; the log line is printed);
* ``run_enhance`` with 2 actors (``num_actors=(2, 2)``, ``cpus_per_actor=0.5``; each actor still runs
  1 torch thread, so 2 actors use both cores);
* the same for the fast variant (Zero-DCE++ at scale 12): plain loop, and the job with both pools;
* trials (``--no-trial`` skips them), each in a child process with its own Ray cluster, killed after
  ``--trial-timeout`` seconds: ``num_actors=(2, 2)`` with ``cpus_per_actor`` 0.9 (leaves 0.2 CPU, less
  than a read task's ``READ_TASK_CPUS`` = 0.25, so ``plan_actor_pool`` must refuse it with a
  ConfigError) and 0.75 (leaves 0.5: must run), and the defaults on a 1-CPU cluster
  (``ray.init(num_cpus=1)``: the default 1 CPU per actor must shrink so that reads still run). A row
  says how many images were written before a kill, or the ConfigError's message.

Every model runs with the library's CPU inference defaults (``InferenceConfig(device="cpu")``).

Ray startup (``ray.init(address="local", num_cpus=2)``) is timed and reported on its own; a job's
time is the wall time of ``run_enhance`` (planning, actor start with its torch import and model load,
reading, enhancing, writing, manifest). Actor busy time is the sum of the manifest's per-image
``duration_ms`` (decode -> write), so "job - busy/actors" is what the job adds around the work.
Every run writes to a fresh output folder (nothing is skipped by resume).

    python benchmarks/bench_pipeline.py            # 24 images of 640x480 (~2 min on 2 cores)
    python benchmarks/bench_pipeline.py --quick    # 8 images of 320x240, no trials (~30 s)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, LoadMonitor, dark_image, foreign_load_now, hardware_line, image_set_parser, table  # noqa: E402


def make_inputs(folder: Path, count: int, width: int, height: int) -> float:
    """``count`` dark JPEGs (quality 92) in ``folder``; returns their total megapixels."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = (dark_image(height, width, seed=100 + i) * 255).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
        (folder / f"img_{i:03d}.jpg").write_bytes(buffer.getvalue())
    return count * width * height / 1e6


def plain_loop(inputs: Path, output: Path, variant: str, threads: int, scale: float) -> dict:
    """Single process: the job's per-image work without Ray. Model load is timed separately."""
    import pyarrow.fs as pafs
    import torch

    from dce_batch.imageio import EncodeOptions
    from dce_batch.inference import Enhancer, InferenceConfig
    from dce_batch.process import ImageProcessor, WorkItem
    from dce_batch.storage import read_bytes
    from dce_batch.weights import load_weights

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        weights = load_weights(None, variant=variant)
        enhancer = Enhancer(weights, InferenceConfig(device="cpu", scale=scale if variant == "fast" else 1.0))
        fs = pafs.LocalFileSystem()
        processor = ImageProcessor(enhancer, EncodeOptions(), fs, run_id="bench-plain")
        load_s = time.perf_counter() - started
        files = sorted(inputs.iterdir())
        started = time.perf_counter()
        ok = 0
        for path in files:
            out = output / path.name
            item = WorkItem(input_uri=str(path), output_uri=str(out), output_path=str(out), output_format="JPEG")
            row = processor.process(item, read_bytes(fs, str(path)))
            ok += row.status == "ok"
        loop_s = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)
    return {"load_s": load_s, "job_s": loop_s, "ok": ok, "n": len(files), "busy_s": loop_s, "actors": 0}


def ray_job(inputs: Path, output: Path, variant: str, actors: int | None, cpus: float | None, scale: float,
            batch: int) -> dict:
    """``run_enhance`` timed; ``actors``/``cpus`` None leave ``num_actors``/``cpus_per_actor`` at their defaults."""
    from dce_batch.manifest import read_manifest
    from dce_batch.pipeline import EnhanceConfig, run_enhance
    from dce_batch.storage import Location

    lines: list[str] = []
    config = EnhanceConfig(input=str(inputs), output=str(output), variant=variant, scale=scale,
                           num_actors=(actors, actors) if actors else None, cpus_per_actor=cpus, batch_size=batch,
                           progress_interval_s=3600)
    started = time.perf_counter()
    summary = run_enhance(config, log=lines.append)
    job_s = time.perf_counter() - started
    rows = read_manifest(Location.parse(str(output)).filesystem, str(output / "_manifest")).to_pylist()
    busy = sum((r["duration_ms"] or 0) for r in rows) / 1000
    pool = summary.cluster.get("actors") or {}
    return {"job_s": job_s, "ok": summary.ok, "n": summary.total, "busy_s": busy,
            "actors": pool.get("max_size") or actors or 1, "pool": pool,
            "workers": len({r["worker"] for r in rows}), "log": lines}


def pool_text(pool: dict) -> str:
    if not pool:
        return "?"
    size = (f"{pool['min_size']}" if pool["min_size"] == pool["max_size"]
            else f"{pool['min_size']}..{pool['max_size']}")
    return f"{size} actor{'s' if pool['max_size'] > 1 else ''} x {pool['cpus_per_actor']:g} CPU"


def trial_child(args: argparse.Namespace, inputs: Path, output: Path, actors: int | None, cpus: float | None,
                num_cpus: int) -> dict:
    """A DCE-Net job in a separate process with its own ``num_cpus`` cluster, killed after --trial-timeout."""
    spec = json.dumps({"inputs": str(inputs), "output": str(output), "batch": args.batch_size, "actors": actors,
                       "cpus": cpus, "num_cpus": num_cpus})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trial", spec]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=args.trial_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the child's own session: its driver, raylet, GCS and agents, nothing else
        proc.communicate()
        time.sleep(3)  # its workers (own process groups) exit once their raylet is gone
        done = len(list(output.glob("*.jpg"))) if output.exists() else 0
        return {"stalled": True, "after_s": time.perf_counter() - started, "done": done}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": (err or out).strip().splitlines()[-1] if (err or out).strip() else f"exit {proc.returncode}"}


def run_trial(spec: dict) -> None:
    import ray

    from dce_batch.errors import ConfigError

    started = time.perf_counter()
    ray.init(address="local", num_cpus=spec["num_cpus"], include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    init_s = time.perf_counter() - started
    _quiet_ray_data()
    try:
        r = ray_job(Path(spec["inputs"]), Path(spec["output"]), "full", spec["actors"], spec["cpus"], 12.0,
                    spec["batch"])
        r["log"] = [line for line in r["log"] if line.startswith("actor pool")][:1]
    except ConfigError as exc:
        r = {"refused": f"{type(exc).__name__}: {exc}"}
    r["init_s"] = init_s
    print("RESULT " + json.dumps(r), flush=True)
    ray.shutdown()


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = False


def main() -> int:
    parser = image_set_parser(__doc__, images=24, size="640x480")
    parser.add_argument("--batch-size", type=int, default=4, help="job batch size (default: %(default)s)")
    parser.add_argument("--no-fast", action="store_true", help="skip the fast-variant rows")
    parser.add_argument("--no-trial", action="store_true",
                        help="skip the trials (2 actors x 0.9 / 0.75 CPU on 2 CPUs, defaults on 1 CPU)")
    parser.add_argument("--trial-timeout", type=float, default=60.0,
                        help="seconds before a trial counts as stalled (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="8 images of 320x240, no trial")
    parser.add_argument("--trial", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        run_trial(json.loads(args.trial))
        return 0
    if args.quick:
        args.images, args.size, args.no_trial = 8, "320x240", True

    import torch

    print(hardware_line("1 per process (plain loop also with 2); 1 per Ray actor (floor of cpus_per_actor)"),
          flush=True)
    print(foreign_load_now(), flush=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    results: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp_name:
        tmp = Path(tmp_name)
        inputs = tmp / "in"
        megapixels = make_inputs(inputs, args.images, width, height)
        print(f"{args.images} dark JPEGs of {width}x{height} ({megapixels:.2f} MP) in {inputs}; batch size "
              f"{args.batch_size}; output JPEG quality 95", flush=True)
        monitor = LoadMonitor()
        counter = iter(range(1000))

        def out_dir() -> Path:
            return tmp / f"out{next(counter)}"

        def record(name: str, r: dict) -> None:
            results.append((name, r))
            what = ("stalled" if r.get("stalled") else ("ERROR " + r["error"]) if "error" in r
                    else r["refused"] if "refused" in r else f"{r['job_s']:.2f} s")
            print(f"  [{time.perf_counter() - monitor.started:5.0f} s] {name}: {what}", file=sys.stderr, flush=True)

        variants = ["full"] + ([] if args.no_fast else ["fast"])
        label = {"full": "DCE-Net", "fast": f"Zero-DCE++ s{args.scale:g}"}
        for variant in variants:
            record(f"{label[variant]}: plain loop, 1 thread", plain_loop(inputs, out_dir(), variant, 1, args.scale))
            record(f"{label[variant]}: plain loop, 2 threads", plain_loop(inputs, out_dir(), variant, 2, args.scale))
        torch.set_num_threads(1)  # the driver only plans and collects while Ray runs

        import ray

        started = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        init_s = time.perf_counter() - started
        _quiet_ray_data()
        print(f"  ray.init(address='local', num_cpus=2): {init_s:.2f} s", file=sys.stderr, flush=True)
        pool_lines = []
        try:
            for variant in variants:
                for actors, cpus in ((None, None), (2, 0.5)):
                    r = ray_job(inputs, out_dir(), variant, actors, cpus, args.scale, args.batch_size)
                    pool_lines += [line for line in r["log"] if line.startswith("actor pool")][:1]
                    what = (f"defaults ({pool_text(r['pool'])})" if actors is None
                            else f"{actors} actors x {cpus:g} CPU")
                    record(f"{label[variant]}: Ray job, {what}", r)
        finally:
            ray.shutdown()
        if not args.no_trial:
            for actors, cpus, num_cpus in ((2, 0.9, 2), (2, 0.75, 2), (None, None, 1)):
                r = trial_child(args, inputs, out_dir(), actors, cpus, num_cpus)
                pool_lines += [f"{line} [trial]" for line in r.get("log", [])]
                what = (f"{actors} actors x {cpus:g} CPU" if actors else
                        f"defaults ({pool_text(r['pool'])})" if r.get("pool") else "defaults")
                record(f"DCE-Net: Ray job, {what} [trial, own {num_cpus}-CPU cluster]", r)
        foreign = monitor.line()

    plain_ref = {v: next(r for n, r in results if n == f"{label[v]}: plain loop, 1 thread") for v in variants}
    rows = []
    for name, r in results:
        variant = "fast" if name.startswith("Zero") else "full"
        if r.get("stalled"):
            rows.append([name, "-", "-", "-", "-", "-", f"STALLED: {r['done']} of {args.images} images written "
                         f"after {r['after_s']:.0f} s, killed"])
            continue
        if "error" in r:
            rows.append([name, "-", "-", "-", "-", "-", "ERROR " + r["error"]])
            continue
        if "refused" in r:
            rows.append([name, "-", "-", "-", "-", "-", f"REFUSED before start: {r['refused']}"])
            continue
        images_per_s = r["n"] / r["job_s"]
        ratio = r["job_s"] / plain_ref[variant]["job_s"]
        note = []
        if r["actors"]:
            overhead = r["job_s"] - r["busy_s"] / r["actors"]
            note.append(f"actor busy {r['busy_s']:.1f} s; job - busy/actors = {overhead:.1f} s")
            if r.get("workers") and r["workers"] != r["actors"]:
                note.append(f"{r['workers']} actors did work")
            if "init_s" in r:
                note.append(f"its ray.init {r['init_s']:.1f} s not included")
        else:
            note.append(f"model load {r['load_s']:.2f} s not included")
        if r["ok"] != r["n"]:
            note.append(f"only {r['ok']}/{r['n']} ok")
        rows.append([name, f"{r['job_s']:.2f}", f"{images_per_s:.2f}", f"{r['n'] * width * height / 1e6 / r['job_s']:.2f}",
                     f"{ratio:.2f}", str(r["ok"]), "; ".join(note)])
    print()
    print(table(["run", "wall s", "images/s", "MP/s", "ratio to plain 1 thread", "ok", "note"], rows))
    print(f"Ray startup, timed separately: ray.init(address='local', num_cpus=2) took {init_s:.2f} s "
          "(not in any row)")
    print("ratio: this row's wall time / the plain loop's with 1 thread, same model (below 1: faster)")
    for line in pool_lines:
        print(f"job log: {line}")
    print(foreign)
    return 0


if __name__ == "__main__":
    sys.exit(main())
