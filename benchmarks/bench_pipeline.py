"""The job against the plain loops it replaces, end to end, as a user runs each command.

The commands below, on the same images, each a fresh process timed from start to exit (Python start,
imports, model load, Ray start, work, shutdown), in rotating order over several rounds:

* **authors' loop**: benchmarks/authors_loop.py, the Zero-DCE authors' network one image at a time
  in fp32 (their test script's way), torch on every core;
* **bare loop**: this project's pieces in one process with the job's default settings
  (``ImageProcessor``: decode, the default precision and tiling, encode, atomic write), torch on
  every core, no Ray;
* **job**: ``python jobs/enhance.py IN OUT --no-report --quiet`` with its defaults (with no cluster
  running and up to 1,000 images: the local engine, one worker process per CPU);
* **job on Ray**: the same with ``--engine ray`` (a local Ray started for it, one actor per CPU);
* **job, network alone**: the job with ``--denoise off --exposure off``: what the default finishing
  (denoise + exposure) costs the whole job (the quality issue allows 30 %);
* **job, --denoise fast**: the finishing without the luma's DCT stage (the earlier default):
  what that stage costs the whole job;
* **job, --precision fp32** (and **bf16** where the CPU has it natively): what the default
  precision (int8 on x86 CPUs) gains over the earlier defaults;
* **job, --scale 1** (with and without finishing): Zero-DCE's curves estimated at full
  resolution, the default before curves came from a 4x smaller copy.

Part 1 prints the median wall time of each on the image set and the ratios the throughput issue
asks for; it also prints how far the job's default precision is from fp32 (in 8-bit steps).
Part 2 runs the bare loop and the job on 16, 64 and 512 images (the set repeated) to show how
the job's fixed start-up cost is spread over larger collections.

With ``--baseline-tree PATH`` it does only this instead: the job command above (``jobs/enhance.py
IN OUT --no-report --quiet``, every enhancement setting at its default, engine auto) from this
checkout and from the checkout at PATH (e.g. the previous version: ``git worktree add --detach
/tmp/baseline-main main``), each with ``PYTHONPATH`` set to its own tree and the same Python,
alternately (this tree first in odd rounds, the baseline first in even ones), on the same inputs,
into a fresh OUTPUT each time. It prints each run's wall time (process start to exit) and the
images/s of each tree (images / median wall time, and the job's own summary ``images_per_s``),
and the ratio this tree / baseline. ``--first N`` takes the first N images by name (hard links in
a temporary folder), the same for both.

    python benchmarks/bench_pipeline.py                       # DICM from ../shared, else synthetic
    python benchmarks/bench_pipeline.py --images DIR --rounds 3 --sizes 16,64,512
    python benchmarks/bench_pipeline.py --baseline-tree /tmp/baseline-main --rounds 2   # this tree vs main on DICM
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, LoadMonitor, dark_image, foreign_load_now, hardware_line, median, table

DICM = Path(os.environ.get("DCE_SHARED", REPO.parent / "shared")) / "data" / "lowlight_real" / "DICM"


def synthetic_set(folder: Path, count: int = 64) -> Path:
    """DICM-like: 640x480 and 800x480 dark JPEGs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = (480, 640) if i % 2 else (480, 800)
        Image.fromarray((dark_image(h, w, seed=i) * 255).astype("uint8")).save(folder / f"{i:03d}.jpg", quality=92)
    return folder


def repeated_set(source: Path, folder: Path, count: int) -> Path:
    """``count`` images: the source set's files, repeated under new names (hard links when possible)."""
    files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = files[i % len(files)]
        dst = folder / f"{i:04d}_{src.name}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return folder


def bare_loop(source: str, target: str) -> None:
    """Child: the project's own loop, the job's default settings, no Ray."""
    started = time.time()
    import pyarrow.fs as pafs
    import torch

    from dce_batch.imaging import EncodeOptions, IMAGE_EXTENSIONS
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.job.steps import ImageProcessor, WorkItem
    from dce_batch.enhance.settings import FinishConfig
    from dce_batch.enhance.weights import load_weights

    fs = pafs.LocalFileSystem()
    # The job's defaults include the finishing (denoise + exposure): the same work as the job.
    enhancer = Enhancer(load_weights(), InferenceConfig(finish=FinishConfig()))
    processor = ImageProcessor(enhancer, EncodeOptions(), fs, fs, run_id="bare")
    os.makedirs(target, exist_ok=True)
    items = [WorkItem(input_uri=str(p), input_relpath=p.name, output_relpath=p.name,
                      output_path=str(Path(target) / p.name),
                      output_format={"jpg": "JPEG", "jpeg": "JPEG"}.get(p.suffix[1:].lower(), "PNG"),
                      input_path=str(p))
             for p in sorted(Path(source).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    for item in items:  # one at a time, as a plain loop does
        processor.process_batch([item])
    print(json.dumps({"images": len(items), "process_seconds": time.time() - started,
                      "precision": enhancer.precision, "threads": torch.get_num_threads()}))


def run_command(kind: str, source: Path, target: Path, ray_tmp: str) -> dict:
    shutil.rmtree(target, ignore_errors=True)
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    env.pop("RAY_ADDRESS", None)
    if kind == "authors":
        command = [sys.executable, str(REPO / "benchmarks" / "authors_loop.py"), str(source), str(target)]
    elif kind == "bare":
        command = [sys.executable, __file__, "--bare", str(source), str(target)]
    else:
        command = [sys.executable, str(REPO / "jobs" / "enhance.py"), str(source), str(target), "--no-report", "--quiet"]
        if kind == "job_ray":
            command += ["--engine", "ray"]
        if kind == "job_no_finish":
            command += ["--denoise", "off", "--exposure", "off"]
        if kind == "job_denoise_fast":
            command += ["--denoise", "fast"]
        if kind in ("job_fp32", "job_bf16"):
            command += ["--precision", kind[4:]]
        if kind.startswith("job_scale1"):
            command += ["--scale", "1"] + (["--denoise", "off", "--exposure", "off"] if kind.endswith("no_finish") else [])
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = {"wall_s": seconds}
    if kind.startswith("job"):
        summary = json.loads(next((target / "_manifest").glob("_run-*.json")).read_text())
        result.update(images=summary["ok"], timings=summary["timings"], elapsed_s=summary["elapsed_s"],
                      precision=summary["settings"]["precision"], engine=summary["cluster"].get("engine", "ray"))
    else:
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    _stop_cluster(ray_tmp)
    return result


def run_tree_job(tree: Path, source: Path, target: Path, ray_tmp: str) -> dict:
    """The job with its defaults, from the checkout ``tree`` (its own package on PYTHONPATH), timed."""
    shutil.rmtree(target, ignore_errors=True)
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONPATH=str(tree))
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, str(tree / "jobs" / "enhance.py"), str(source), str(target), "--no-report", "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree, timeout=3600)
    seconds = time.perf_counter() - started
    _stop_cluster(ray_tmp)
    if done.returncode != 0:
        raise RuntimeError(f"the job of {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(next((target / "_manifest").glob("_run-*.json")).read_text())
    result = {"wall_s": seconds, "images": summary["ok"], "errors": summary["error"],
              "images_per_s": summary["images_per_s"], "elapsed_s": summary["elapsed_s"],
              "precision": summary["settings"].get("precision"), "engine": summary["cluster"].get("engine", "ray"),
              "timings": summary["timings"]}
    shutil.rmtree(target, ignore_errors=True)
    return result


def _commit_of(tree: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return (git("rev-parse", "--short", "HEAD") or "?") + (" with uncommitted changes" if dirty else "")


def compare_trees(source: Path, baseline: Path, rounds: int, work: Path, ray_tmp: str) -> None:
    """This checkout's job against the one at ``baseline``, alternately, same inputs, fresh OUTPUTs."""
    trees = {"this tree": REPO, "baseline": baseline.resolve()}
    for label, tree in trees.items():
        print(f"{label}: {tree} at {_commit_of(tree)}")
    images = len([p for p in source.iterdir() if p.is_file()])
    results: dict[str, list[dict]] = {label: [] for label in trees}
    monitor = LoadMonitor()
    for round_ in range(rounds):
        order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
        for label in order:
            result = run_tree_job(trees[label], source, work / "out_compare", ray_tmp)
            if result["images"] != images:
                raise RuntimeError(f"{label}: {result['images']} of {images} images enhanced ({result['errors']} errors)")
            results[label].append(result)
            print(f"round {round_ + 1} {label}: {result['wall_s']:.1f} s wall, {result['images_per_s']:.2f} images/s "
                  f"by its summary ({result['engine']} engine, precision {result['precision']})", flush=True)
    load = monitor.line()
    monitor.stop()
    walls = {label: median([r["wall_s"] for r in runs]) for label, runs in results.items()}
    inner = {label: median([r["images_per_s"] for r in runs]) for label, runs in results.items()}
    rows = [[label, " ".join(f"{r['wall_s']:.1f}" for r in results[label]), f"{walls[label]:.1f}",
             f"{images / walls[label]:.3f}", f"{inner[label]:.3f}", results[label][0]["engine"],
             str(results[label][0]["precision"])] for label in trees]
    print(table(["job", "wall s per round", "median wall s", "images/s (wall)", "images/s (summary)", "engine",
                 "precision"], rows))
    print(f"images/s this tree / baseline: {walls['baseline'] / walls['this tree']:.3f} by wall time, "
          f"{inner['this tree'] / inner['baseline']:.3f} by the jobs' summaries ({images} images, {rounds} round(s))")
    print(load)


def subset(source: Path, folder: Path, count: int) -> Path:
    """The first ``count`` images of ``source`` by name (hard links when possible)."""
    files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))[:count]
    folder.mkdir(parents=True, exist_ok=True)
    for src in files:
        try:
            os.link(src, folder / src.name)
        except OSError:
            shutil.copyfile(src, folder / src.name)
    return folder


def _stop_cluster(ray_tmp: str) -> None:
    """Leftover processes of the job's own cluster (there should be none), stopped by temp dir."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if ray_tmp.encode() in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def precision_check(source: Path, limit: int = 16) -> str:
    """Largest 8-bit difference between the default precision and fp32, on the set's first images."""
    import numpy as np

    from dce_batch.imaging import decode_image
    from dce_batch.enhance.enhancer import Enhancer, InferenceConfig
    from dce_batch.enhance.weights import load_weights

    weights = load_weights()
    default, fp32 = Enhancer(weights, InferenceConfig()), Enhancer(weights, InferenceConfig(precision="fp32"))
    worst, differing, pixels = 0, 0, 0
    for path in sorted(source.iterdir())[:limit]:
        decoded = decode_image(path.read_bytes())
        a = default.enhance(decoded.pixels).pixels.astype(int)
        b = fp32.enhance(decoded.pixels).pixels.astype(int)
        worst = max(worst, int(np.abs(a - b).max()))
        differing += int((a != b).sum())
        pixels += a.size
    return (f"default precision {default.precision} vs fp32 on {min(limit, len(list(source.iterdir())))} images: "
            f"max 8-bit difference {worst}, {100 * differing / pixels:.1f} % of values differ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="image folder (default: ../shared DICM, else 64 synthetic)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="16,64,512", help="collection sizes for part 2 ('' skips it)")
    parser.add_argument("--baseline-tree", type=Path,
                        help="compare only: the job from this checkout against the job from the checkout at PATH")
    parser.add_argument("--first", type=int, help="only the first N images by name")
    parser.add_argument("--bare", nargs=2, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.bare:
        bare_loop(*args.bare)
        return 0
    print(hardware_line("all cores (each command's default)"))
    print(foreign_load_now())
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    try:
        source = args.images or (DICM if DICM.is_dir() else synthetic_set(work / "synthetic"))
        if args.first:
            source = subset(source, work / f"first{args.first}", args.first)
        if args.baseline_tree:
            images = len([p for p in source.iterdir() if p.is_file()])
            print(f"images: {source} ({images} files, {_megapixels(source):.1f} MP); {args.rounds} rounds, "
                  "alternating")
            compare_trees(source, args.baseline_tree, args.rounds, work, ray_tmp)
            return 0
        images = len([p for p in source.iterdir() if p.is_file()])
        megapixels = _megapixels(source)
        print(f"images: {source} ({images} files, {megapixels:.1f} MP); {args.rounds} rounds in rotating order")
        print(precision_check(source))
        from dce_batch.enhance.precision import cpu_has_native_bf16

        kinds = ["authors", "bare", "job", "job_ray", "job_no_finish", "job_denoise_fast", "job_scale1", "job_scale1_no_finish", "job_fp32"]
        if cpu_has_native_bf16():
            kinds.append("job_bf16")
        results: dict[str, list[dict]] = {k: [] for k in kinds}
        for round_ in range(args.rounds):
            for kind in kinds[round_ % len(kinds):] + kinds[: round_ % len(kinds)]:
                results[kind].append(run_command(kind, source, work / f"out_{kind}", ray_tmp))
        walls = {k: median([r["wall_s"] for r in v]) for k, v in results.items()}
        rows = [[name, f"{walls[k]:.1f}", " ".join(f"{r['wall_s']:.1f}" for r in results[k]),
                 f"{images / walls[k]:.2f}", f"{walls['authors'] / walls[k]:.2f}x"]
                for k, name in (("authors", "authors' loop (fp32, one image per forward)"),
                                ("bare", "bare loop, the job's settings, no Ray"),
                                ("job", f"the job, defaults ({results['job'][0]['engine']} engine)"),
                                ("job_ray", "the job, --engine ray (a local Ray)"),
                                ("job_no_finish", "the job, network alone (--denoise off --exposure off)"),
                                ("job_denoise_fast", "the job, --denoise fast (no DCT stage: the earlier default)"),
                                ("job_scale1", "the job, --scale 1 (curves at full resolution)"),
                                ("job_scale1_no_finish", "the job, --scale 1, network alone"),
                                ("job_fp32", "the job, --precision fp32"),
                                ("job_bf16", "the job, --precision bf16 (native here)"))
                if k in results]
        print(table(["command", "median wall s", "rounds", "images/s", "speed vs authors' loop"], rows))
        job = results["job"][len(results["job"]) // 2]
        print(f"job: precision {job['precision']}, {job['engine']} engine; timings of the median run: "
              + ", ".join(f"{k} {v:.1f}" for k, v in job["timings"].items()) + f", elapsed {job['elapsed_s']:.1f} s")
        print(f"job images/s / bare loop images/s: {walls['bare'] / walls['job']:.2f} (target >= 0.90; on Ray "
              f"{walls['bare'] / walls['job_ray']:.2f}); job speed / authors' loop: {walls['authors'] / walls['job']:.2f}x "
              f"(target >= 3; on Ray {walls['authors'] / walls['job_ray']:.2f}x)")
        for kind in ("job_fp32", "job_bf16"):
            if kind in results:
                print(f"the default precision ({job['precision']}) against --precision {kind[4:]}: "
                      f"{walls[kind] / walls['job']:.2f}x the images/s")
        print(f"the default finishing costs the job {1 - walls['job_no_finish'] / walls['job']:.1%} of its throughput "
              f"(images/s {images / walls['job']:.2f} against {images / walls['job_no_finish']:.2f} for the network "
              f"alone; the quality issue allows 30 %)")
        print(f"the luma's DCT stage costs the job {1 - walls['job_denoise_fast'] / walls['job']:.1%} of its throughput "
              f"(against --denoise fast)")
        print(f"the default against the network alone at full resolution (--scale 1, no finishing, the job "
              f"before finishing and the 4x smaller copy): {walls['job_scale1_no_finish'] / walls['job']:.2f}x the images/s; "
              f"--scale 1 with finishing: {walls['job_scale1'] / walls['job']:.2f}x")
        if args.sizes:
            rows = []
            for count in [int(n) for n in args.sizes.split(",")]:
                folder = repeated_set(source, work / f"set{count}", count)
                bare = run_command("bare", folder, work / "out_bare_n", ray_tmp)["wall_s"]
                job = run_command("job", folder, work / "out_job_n", ray_tmp)
                on_ray = run_command("job_ray", folder, work / "out_ray_n", ray_tmp)
                rows.append([str(count), f"{bare:.1f}", f"{job['wall_s']:.1f}", f"{on_ray['wall_s']:.1f}",
                             f"{count / bare:.2f}", f"{count / job['wall_s']:.2f}", f"{count / on_ray['wall_s']:.2f}",
                             f"{bare / job['wall_s']:.2f}", f"{bare / on_ray['wall_s']:.2f}",
                             f"{job['timings'].get('first_batch_s', float('nan')):.1f}",
                             f"{on_ray['timings'].get('first_batch_s', float('nan')):.1f}"])
                shutil.rmtree(folder)
            print(table(["images", "bare s", "job s", "job on Ray s", "bare img/s", "job img/s", "Ray img/s",
                         "job / bare", "Ray / bare", "job: 1st result s", "Ray: 1st result s"], rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _stop_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return 0


def _megapixels(folder: Path) -> float:
    from PIL import Image

    total = 0
    for path in folder.iterdir():
        if path.is_file():
            with Image.open(path) as image:
                total += image.width * image.height
    return total / 1e6


if __name__ == "__main__":
    sys.exit(main())
