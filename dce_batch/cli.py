"""Command line: ``dce-batch enhance|train|convert-weights|show-weights|evaluate``.

``jobs/enhance.py`` and ``jobs/train.py`` are thin wrappers around :func:`enhance_main` and
:func:`train_main`, so ``ray job submit --working-dir . -- python jobs/enhance.py ...`` and
``dce-batch enhance ...`` are the same program.

Exit status of ``enhance``: 0 when every input succeeded (or was already done), 3 when the job
finished but some inputs failed (their manifest rows say why), 2 for invalid arguments (settings,
INPUT, OUTPUT, weights), 1 when the job itself failed at run time (storage, cluster), 130 when
interrupted (Ctrl-C) and 143 when terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from dce_batch.errors import ConfigError, DceBatchError, describe_error

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _num_actors(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN or MIN:MAX, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts[0] < 1 or parts[1] < parts[0]:
        raise argparse.ArgumentTypeError(f"expected MIN[:MAX] with 1 <= MIN <= MAX, got {text!r}")
    return parts[0], parts[1]


def _exposure(text: str):
    from dce_batch.enhance.settings import parse_exposure

    try:
        return parse_exposure(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 4G or 512M, got {text!r}") from None


def _add_s3_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint", metavar="URL",
                        help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL, else AWS)")


def _s3_options(args: argparse.Namespace):
    from dce_batch.storage import S3Options

    return S3Options.from_env(endpoint_url=args.s3_endpoint)


def enhance_parser() -> argparse.ArgumentParser:
    from dce_batch.job.pipeline import DEFAULT_OUTPUT
    from dce_batch.enhance.settings import FinishConfig

    p = argparse.ArgumentParser(
        prog="dce-batch enhance",
        description="Enhance low-light images with Zero-DCE on a Ray cluster (a local one is started if none "
                    "is running). With no arguments, enhances the bundled sample images into ./enhanced/.",
    )
    p.add_argument("input", nargs="?", metavar="INPUT",
                   help="folder, glob, s3://bucket/prefix/, or a .parquet/.csv/.txt file listing image URIs "
                        "(default: the bundled samples)")
    p.add_argument("output", nargs="?", metavar="OUTPUT", default=DEFAULT_OUTPUT,
                   help=f"folder or s3:// prefix for enhanced images and the _manifest/ (default: {DEFAULT_OUTPUT})")
    g = p.add_argument_group("model")
    g.add_argument("--weights", metavar="PATH|NAME",
                   help="shipped model name, a .safetensors file, or a published .pth checkpoint (local or s3://)")
    g.add_argument("--model-variant", choices=["full", "fast"],
                   help="full = Zero-DCE (default), fast = Zero-DCE++; picks the shipped weights of that variant")
    g.add_argument("--scale", type=float, default=None,
                   help="estimate the curves on a copy downscaled by this factor, 1 = full resolution "
                        "(default: 4 for Zero-DCE, with guided upsampling; 12 for the fast variant)")
    g.add_argument("--strength", type=float, default=1.0, help="0 = unchanged ... 1 = full enhancement (default 1)")
    g.add_argument("--denoise", choices=["auto", "fast", "off"], default="auto",
                   help="noise-aware denoising of what the curves lifted (default auto: strength follows the "
                        "measured noise and the local gain; clean images are left alone). fast: without the "
                        "luma's DCT stage (the earlier default: noisier, 4-18 %% more images/s on a CPU)")
    g.add_argument("--denoise-strength", type=float, default=1.0, help="0..4, 1 = the measured default")
    g.add_argument("--exposure", type=_exposure, default="auto",
                   help="auto (default: dark scenes are brought to a natural brightness, night scenes keep "
                        "their look, bright ones are left alone), off, or a target mean brightness such as 0.45")
    g.add_argument("--highlight-stretch", type=float, default=FinishConfig.highlight_stretch,
                   help="0..1: how much exposure lifts the highlights of dark scenes, which the curves compress "
                        "(smoothly, never past white; default %(default)s). 0 = the earlier tone: an OUTPUT made "
                        "before this option resumes with --highlight-stretch 0")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "int8"], default="auto",
                   help="network precision (default auto: int8 on x86 CPUs, within 3 8-bit steps of fp32 and "
                        "1.8-3.2x its speed; bf16 on GPUs and on other CPUs that compute it natively, within one "
                        "step; fp32 elsewhere). fp16 needs CUDA, int8 an x86 CPU")
    g = p.add_argument_group("output")
    g.add_argument("--format", choices=["same", "jpeg", "png", "webp"], default="same",
                   help="output format (default: same as input)")
    g.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality 1-100 (default 95)")
    g.add_argument("--overwrite", action="store_true",
                   help="redo every input and replace the manifest (default: resume, skipping finished inputs)")
    g.add_argument("--allow-output-inside-input", action="store_true",
                   help="allow an OUTPUT folder inside the INPUT folder")
    g = p.add_argument_group("cluster sizing")
    g.add_argument("--num-actors", type=_num_actors, metavar="MIN[:MAX]",
                   help="actor pool size (default: 1 up to what the cluster's CPUs/GPUs hold)")
    g.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor, fractional allowed (default 0)")
    g.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs per actor, fractional allowed (default 1: one actor per CPU)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per actor call (default 2 on CPUs, 16 on GPUs)")
    g.add_argument("--pipeline", choices=["auto", "fused", "staged"], default="auto",
                   help="fused: each actor reads, enhances and writes (default on CPUs); staged: CPU tasks "
                        "decode and encode around actors that only run the network (default with GPUs)")
    g.add_argument("--actor-memory", type=_size, metavar="BYTES",
                   help="memory each actor declares to Ray, e.g. 4G (default: enough for --max-pixels)")
    g.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with the local cluster")
    g.add_argument("--engine", choices=["auto", "ray", "local"], default="auto",
                   help="ray: Ray Data actors (on RAY_ADDRESS, a running cluster, or a local one it starts); local: "
                        "worker processes on this machine; auto (default): local for up to 1,000 images when no "
                        "cluster is running and no GPUs are asked for, else ray")
    g = p.add_argument_group("what you see")
    g.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                   help="build OUTPUT/_report/index.html at the end (default: yes for local OUTPUTs, no for "
                        "object storage, whose report would hold presigned links)")
    g.add_argument("--quiet", action="store_true", help="print only errors and the final summary")
    g.add_argument("--verbose", action="store_true", help="also Ray's own INFO lines and the actors' logs")
    g = p.add_argument_group("limits")
    g.add_argument("--max-pixels", type=int, default=None, help="refuse images above this many pixels (default 100 MP)")
    g.add_argument("--tile-size", type=int, default=None,
                   help="tile side for exact tiled inference (default: 256 on CPUs, 1024 on GPUs)")
    g.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, a running local cluster, or a new one)")
    _add_s3_options(p)
    return p


def enhance_main(argv: Sequence[str] | None = None) -> int:
    from dce_batch.imaging import DEFAULT_MAX_PIXELS
    from dce_batch.job.pipeline import EXIT_OK, EXIT_SOME_FAILED, EnhanceConfig, run_enhance, sample_images_dir

    args = enhance_parser().parse_args(argv)
    try:
        config = EnhanceConfig(
            input=args.input or sample_images_dir(), output=args.output, weights=args.weights,
            variant=args.model_variant, scale=args.scale, format=args.format, quality=args.quality,
            strength=args.strength, precision=args.precision, num_actors=args.num_actors, denoise=args.denoise,
            denoise_strength=args.denoise_strength, exposure=args.exposure,
            highlight_stretch=args.highlight_stretch, gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size,
            s3=_s3_options(args), overwrite=args.overwrite,
            allow_output_inside_input=args.allow_output_inside_input,
            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, tile_size=args.tile_size, pipeline=args.pipeline,
            actor_memory=args.actor_memory, dashboard=args.dashboard, engine=args.engine, report=args.report, quiet=args.quiet,
            verbose=args.verbose,
        )
        if args.address:
            os.environ["RAY_ADDRESS"] = args.address  # run_enhance connects there
        summary = run_enhance(config, shutdown=False)
    except KeyboardInterrupt as exc:
        terminated = type(exc).__name__ == "_Interrupted"
        print(f"dce-batch enhance: {'terminated' if terminated else 'interrupted'}; finished images are in the "
              "manifest, run again to resume", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - exit status by cause, message first
        return _report_failure("dce-batch enhance", exc)
    print(summary.table())
    if summary.report:
        print(f"report: {summary.report}")
    code = EXIT_SOME_FAILED if summary.error else EXIT_OK
    # Everything is written. Leave now: a local cluster this run started ends with this process
    # (its processes share its fate), without a second or more of orderly Ray shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _report_failure(program: str, exc: Exception) -> int:
    """Print why the command failed; 2 for invalid arguments, 1 for a run-time failure."""
    from dce_batch.errors import WeightsError

    invalid = isinstance(exc, (ConfigError, WeightsError))
    if isinstance(exc, DceBatchError):
        print(f"{program}: {describe_error(exc)}", file=sys.stderr)
    else:
        cause = _dce_cause(exc)
        if cause is not None:  # e.g. an actor's OutputWriteError wrapped by Ray
            print(f"{program}: {describe_error(cause)}", file=sys.stderr)
            invalid = isinstance(cause, (ConfigError, WeightsError))
        else:
            traceback.print_exc()
    return EXIT_INVALID if invalid else EXIT_FAILED


def _dce_cause(exc: BaseException) -> DceBatchError | None:
    """The DceBatchError behind a wrapped exception.

    Ray re-raises an error from an actor or task as a RayTaskError whose text holds the original
    traceback (Ray Data's UserCodeException keeps no exception object), so the last
    ``dce_batch.errors.<Type>: message`` line of that text is rebuilt as the error it was.
    """
    import re

    from dce_batch import errors

    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DceBatchError):
            return current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    found = re.findall(r"dce_batch\.errors\.(\w+): ([^\n]*)", str(exc))
    if found:
        name, message = found[-1]
        kind = getattr(errors, name, None)
        if isinstance(kind, type) and issubclass(kind, DceBatchError):
            return kind(message)
    return None


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dce-batch train",
        description="Train DCE-Net with Ray Train on a folder or s3:// prefix of (unpaired, low- and "
                    "over-exposed) images, on the Ray cluster at RAY_ADDRESS or a local one it starts. "
                    "The same --name and --storage resume a run. Try it: dce-batch train --data samples "
                    "--epochs 2 --image-size 64 --workers 1 --name try1 --export runs/try1.safetensors",
    )
    p.add_argument("--config", metavar="FILE",
                   help="a TOML recipe whose keys are these options' long names (e.g. training/zerodce_sice_v1.toml); "
                        "options given on the command line override it")
    p.add_argument("--data", metavar="URI",
                   help="training images: folder, glob, s3:// prefix or list file, or 'samples': the few "
                        "bundled with the package (write ./samples for a folder of that name) (required)")
    p.add_argument("--storage", default="./runs", metavar="URI",
                   help="checkpoints, metrics.json and loss_curves.png go under STORAGE/NAME (local or s3://; "
                        "default ./runs)")
    p.add_argument("--name", help="run name; a new name starts a run, an existing one resumes it (default: timestamped)")
    p.add_argument("--export", metavar="PATH",
                   help="write the final weights to this file (.safetensors with metadata; local or s3://)")
    p.add_argument("--init-weights", metavar="PATH|NAME",
                   help="fine-tune: start from these weights (a shipped name, .safetensors or .pth) instead of random")
    p.add_argument("--verbose", action="store_true",
                   help="also Ray's own log lines, progress bars and the workers' output")
    g = p.add_argument_group("scaling")
    g.add_argument("--workers", type=int, default=2, help="training workers (default 2)")
    g.add_argument("--gpu", action="store_true", help="one GPU per worker (same as --gpus-per-worker 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0)
    g.add_argument("--cpus-per-worker", type=float, default=1.0)
    g.add_argument("--max-failures", type=int, default=3,
                   help="worker-group restarts from the latest checkpoint (default 3; -1: no limit)")
    g = p.add_argument_group("recipe (defaults: the Zero-DCE authors')")
    g.add_argument("--model-variant", choices=["full", "fast"], default="full")
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument("--image-size", type=int, default=256, help="training crops/resizes to this size (default 256)")
    g.add_argument("--base-size", type=int, help="decode images to this square size first (default: --image-size)")
    g.add_argument("--min-crop", type=float, default=1.0,
                   help="random crops cover this fraction of the side at least (default 1: whole image, resized)")
    g.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    g.add_argument("--batch-size", type=int, default=8, help="per worker (default 8)")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--grad-clip", type=float, default=0.1)
    g.add_argument("--tv-weight", type=float, help="illumination smoothness weight (default 200; 1600 for fast)")
    g.add_argument("--spatial-weight", type=float, help="spatial consistency weight (default 1)")
    g.add_argument("--color-weight", type=float, help="colour constancy weight (default 5)")
    g.add_argument("--exposure-weight", type=float, help="exposure control weight (default 10)")
    g.add_argument("--exposure-target", type=float, help="well-exposedness level E (default 0.6)")
    g.add_argument("--val-fraction", type=float, default=0.05)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto = bf16 autocast on GPUs, fp32 on CPUs")
    g.add_argument("--max-images", type=int, help="train on a random subset of this many images")
    g.add_argument("--keep-checkpoints", type=int, default=3, help="best checkpoints kept (the latest always is)")
    g.add_argument("--checkpoint-every", type=int, default=1, help="checkpoint every N epochs (and after the last)")
    g.add_argument("--inject-failure-at-epoch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--s3-endpoint", metavar="URL",
                   help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL, else AWS)")
    return p


def train_config_from_args(args: argparse.Namespace):
    from dce_batch.storage import S3Options
    from dce_batch.training.config import TrainConfig
    from dce_batch.training.losses import LossWeights

    loss = LossWeights.for_variant(
        args.model_variant, smoothness=args.tv_weight, spatial=args.spatial_weight, color=args.color_weight,
        exposure=args.exposure_weight, exposure_target=args.exposure_target,
    )
    return TrainConfig(
        data=args.data, storage=args.storage, name=args.name, workers=args.workers,
        gpus_per_worker=max(args.gpus_per_worker, 1.0 if args.gpu else 0.0), cpus_per_worker=args.cpus_per_worker,
        epochs=args.epochs, image_size=args.image_size, base_size=args.base_size, min_crop=args.min_crop,
        hflip=not args.no_flip, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, variant=args.model_variant, loss=loss, max_failures=args.max_failures,
        val_fraction=args.val_fraction, seed=args.seed, export=args.export, init_weights=args.init_weights,
        keep_checkpoints=args.keep_checkpoints, checkpoint_every=args.checkpoint_every,
        precision=args.precision, max_images=args.max_images, s3=S3Options.from_env(endpoint_url=args.s3_endpoint),
        verbose=args.verbose, inject_failure_at_epoch=args.inject_failure_at_epoch,
    )


def load_recipe(path: str, parser: argparse.ArgumentParser) -> dict[str, object]:
    """A TOML recipe as argparse defaults; unknown keys are errors, not silently ignored."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the recipe {path}: {exc}") from exc
    # The parser's options are the names its namespace holds when nothing is given.
    known = set(vars(parser.parse_known_args([])[0]))
    recipe = {key.replace("-", "_"): value for key, value in raw.items()}
    unknown = sorted(set(recipe) - known - {"config"})
    if unknown:
        raise ConfigError(f"{path}: unknown recipe keys {unknown}; use the long option names of dce-batch train")
    return recipe


def parse_train_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = train_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**load_recipe(first.config, parser))
    return parser.parse_args(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``dce-batch train``: 0 when the run finished, 2 for invalid arguments (reported before Ray
    starts where they can be), 1 when training failed at run time, 130 when interrupted."""
    from dce_batch.errors import WeightsError
    from dce_batch.job.progress import format_duration
    from dce_batch.training.run import run_training

    ray_module = sys.modules.get("ray")
    joined_callers_ray = ray_module is not None and ray_module.is_initialized()
    try:
        config = train_config_from_args(parse_train_args(argv))
        outcome = run_training(config)
    except KeyboardInterrupt:
        print("dce-batch train: interrupted; the same --name and --storage continue from the latest checkpoint",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, WeightsError) as exc:
        print(f"dce-batch train: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    except DceBatchError as exc:
        print(f"dce-batch train: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:  # noqa: BLE001 - an unexpected failure: the traceback is what helps
        traceback.print_exc()
        return EXIT_FAILED
    final = outcome.metrics
    epochs = f"{final['epoch']} epoch{'s' if final['epoch'] != 1 else ''}"
    print(f"run finished: {epochs} in {format_duration(outcome.seconds)}, train loss {final['train_loss']:.4f}"
          + (f", val loss {final['val_loss']:.4f}" if "val_loss" in final else "")
          + f"; results in {outcome.run_uri}" + (f"; weights in {outcome.export_uri}" if outcome.export_uri else ""))
    if joined_callers_ray:
        return 0
    # Everything is written. Leave now, without seconds of orderly Ray shutdown: a local cluster
    # this run started ends with this process (its processes share its fate).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def convert_weights_main(argv: Sequence[str] | None = None) -> int:
    from dce_batch.enhance.weights import load_weights, save_weights

    p = argparse.ArgumentParser(
        prog="dce-batch convert-weights",
        description="Write weights in the project's safetensors format: import a published checkpoint (.pth), or "
                    "re-save a .safetensors file (its metadata kept, subnormal values flushed to zero).")
    p.add_argument("source", help="a checkpoint (Zero-DCE, Zero-DCE++ or the seed's layout) or a .safetensors file")
    p.add_argument("target", help="output .safetensors file")
    p.add_argument("--name", help="model name recorded in the metadata (default: the source's own name for "
                                  "dce_batch files, else the target's file name)")
    p.add_argument("--licence", help="licence recorded in the metadata (default: the source's, else 'as published "
                                     "by the checkpoint's authors')")
    args = p.parse_args(argv)
    try:
        loaded = load_weights(Path(args.source))
        meta = loaded.meta
        ours = bool(meta.created)  # a dce_batch file (imported checkpoints have no creation time)
        _, written = save_weights(
            loaded.state_dict, args.target, name=args.name or (meta.name if ours else Path(args.target).stem),
            variant=meta.variant, source=meta.source,
            licence=args.licence or meta.licence or "as published by the checkpoint's authors",
            recipe=meta.recipe, data=meta.data, metrics=meta.metrics, created=meta.created or None)
    except DceBatchError as exc:
        print(f"dce-batch convert-weights: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {args.target}: {written.variant}, {written.num_params:,} parameters, sha256 {written.sha256}")
    return 0


def show_weights_main(argv: Sequence[str] | None = None) -> int:
    from dce_batch.enhance.weights import PACKAGED_WEIGHTS, load_weights

    p = argparse.ArgumentParser(prog="dce-batch show-weights", description="Print a weights file's metadata.")
    p.add_argument("weights", nargs="?", default=None,
                   help=f"a shipped name ({', '.join(PACKAGED_WEIGHTS)}) or a file (default: the default model)")
    args = p.parse_args(argv)
    try:
        meta = load_weights(args.weights).meta
    except DceBatchError as exc:
        print(f"dce-batch show-weights: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(vars(meta), indent=2, default=str))
    return 0


def report_parser() -> argparse.ArgumentParser:
    from dce_batch.report.build import DEFAULT_MAX_PAIRS

    p = argparse.ArgumentParser(
        prog="dce-batch report",
        description="Build OUTPUT/_report/index.html for the latest finished run under OUTPUT: summary, "
                    "before/after pairs, brightness histograms, slowest and failed images, training curves. "
                    "One self-contained file that opens offline.",
    )
    p.add_argument("output", metavar="OUTPUT", help="the run's OUTPUT folder or s3:// prefix")
    p.add_argument("--max-pairs", type=int, default=DEFAULT_MAX_PAIRS,
                   help=f"before/after pairs shown at most, evenly sampled (default {DEFAULT_MAX_PAIRS})")
    p.add_argument("--run-id", help="report this run instead of the latest finished one")
    p.add_argument("--link-expiry-hours", type=float, default=168.0,
                   help="lifetime of presigned links to s3:// images (default 168 = 7 days, the most S3 allows); "
                        "0 shows s3:// URIs as text instead of links")
    _add_s3_options(p)
    return p


def report_main(argv: Sequence[str] | None = None) -> int:
    from dce_batch.report.build import build_report

    args = report_parser().parse_args(argv)
    try:
        uri = build_report(args.output, s3=_s3_options(args), max_pairs=args.max_pairs, run_id=args.run_id,
                           presign_expires_s=int(args.link_expiry_hours * 3600),
                           log=lambda line: print(f"[dce-batch report] {line}", file=sys.stderr, flush=True))
    except DceBatchError as exc:
        print(f"dce-batch report: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    print(uri)
    return 0


def export_onnx_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dce-batch export-onnx",
        description="Export weights to ONNX: input 'image' (N x 3 x H x W float32 in [0, 1], any N, H, W) and "
                    "'strength' (float32 [1], 0..1), output 'enhanced'. Needs pip install 'dce-batch[onnx]'.",
    )
    p.add_argument("args", nargs="+", metavar="[WEIGHTS] OUT.onnx",
                   help="weights (shipped name, .safetensors or .pth; default zerodce_sice_v1) and the output file")
    p.add_argument("--model-variant", choices=["full", "fast"],
                   help="pick the shipped weights of this variant when WEIGHTS is not given")
    p.add_argument("--scale", type=float, default=12.0,
                   help="fast variant: the downscale factor for curve estimation, fixed in the graph (default 12)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    return p


def export_onnx_main(argv: Sequence[str] | None = None) -> int:
    from dce_batch.enhance.onnx_export import export_onnx

    parser = export_onnx_parser()
    args = parser.parse_args(argv)
    if len(args.args) > 2:
        parser.error("expected [WEIGHTS] OUT.onnx")
    weights, target = (args.args if len(args.args) == 2 else (None, args.args[0]))
    try:
        info = export_onnx(weights, target, variant=args.model_variant, scale=args.scale, opset=args.opset)
    except DceBatchError as exc:
        print(f"dce-batch export-onnx: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {target}: {info.name} ({info.variant}{f', scale {info.scale:g}' if info.variant == 'fast' else ''}), "
          f"opset {info.opset}, {info.bytes:,} bytes")
    return 0


def evaluate_parser() -> argparse.ArgumentParser:
    from dce_batch.enhance.finishing import DEFAULT_EXPOSURE_TARGET

    p = argparse.ArgumentParser(
        prog="dce-batch evaluate",
        description="Compare enhancement configurations side by side: PSNR/SSIM on paired sets (low and "
                    "reference folders matched by file name), no-reference statistics on every set. Runs "
                    "in-process (no Ray); writes results.json, per_image.csv and summary.md.",
    )
    p.add_argument("--paired", nargs=2, action="append", default=[], metavar=("LOW", "REFERENCE"),
                   help="a folder of inputs and a folder of references with the same file names (repeatable)")
    p.add_argument("--unpaired", action="append", default=[], metavar="DIR",
                   help="a folder of inputs without references (repeatable)")
    p.add_argument("--simulate", metavar="LEVEL[,LEVEL]",
                   help="also build simulated low-light pairs at these levels (see dce_batch.evaluation.lowlight_sim.LEVELS) "
                        "from --simulate-from, under OUT/simulated/")
    p.add_argument("--simulate-from", metavar="DIR", help="well-exposed images to darken for --simulate")
    p.add_argument("--simulate-max-side", type=int, default=600,
                   help="downsize references to this longer side first (default 600, LOL-like)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument("--config", action="append", default=[], metavar="LABEL[:key=value,...]", dest="configs",
                   help="a configuration (repeatable). Keys: weights, strength, finish=on|off, denoise=auto|fast|off, "
                        "denoise_strength, exposure=auto|off|TARGET, chroma_refine_radius (0: one chroma pass), "
                        "matched_noise_level (inf: no block matching), noise_gain (slope|ratio; ratio: the earlier "
                        "default), highlight_stretch (0: the earlier tone), folder (already-enhanced images), scale. "
                        "'input' alone is the unenhanced input. Default: input, network:finish=off, default")
    p.add_argument("--out", default="evaluation", metavar="DIR", help="where to write the reports (default ./evaluation)")
    p.add_argument("--max-images", type=int, help="at most this many images per set (first by name)")
    p.add_argument("--max-side", type=int, help="downsize images whose longer side exceeds this first (speed)")
    p.add_argument("--target", type=float, default=DEFAULT_EXPOSURE_TARGET,
                   help=f"mean brightness the exposure error is measured against (default {DEFAULT_EXPOSURE_TARGET})")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: steady timings, and no oversubscription on a shared machine)")
    return p


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    from dce_batch.evaluation.evaluate import (DEFAULT_CONFIGURATIONS, evaluate, parse_configuration, set_from_paths, unique_set_names,
                           write_reports)

    args = evaluate_parser().parse_args(argv)
    try:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
        out = Path(args.out)
        sets = [set_from_paths(low, ref) for low, ref in args.paired] + [set_from_paths(d) for d in args.unpaired]
        if args.simulate:
            from dce_batch.evaluation.lowlight_sim import LEVELS, write_simulated_set

            if not args.simulate_from:
                raise ConfigError("--simulate needs --simulate-from DIR (well-exposed images)")
            source = Path(args.simulate_from)
            references = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")) \
                if source.is_dir() else []
            for name in filter(None, (n.strip() for n in args.simulate.split(","))):
                if name not in LEVELS:
                    raise ConfigError(f"unknown simulation level {name!r}; choose from {sorted(LEVELS)}")
                low, high = write_simulated_set(references, out / "simulated" / name, LEVELS[name], seed=args.seed,
                                                max_side=args.simulate_max_side)
                sets.append(set_from_paths(str(low), str(high)))
        if not sets:
            raise ConfigError("nothing to evaluate: give --paired LOW REF, --unpaired DIR or --simulate LEVELS")
        sets = unique_set_names(sets)
        configurations = [parse_configuration(spec) for spec in (args.configs or DEFAULT_CONFIGURATIONS)]

        def progress(result) -> None:
            score = f" PSNR {result.psnr:.2f} SSIM {result.ssim:.3f}" if result.psnr is not None else ""
            print(f"{result.set}/{result.image} [{result.configuration}]{score} "
                  f"mean {result.stats_out['mean']:.3f} ({result.seconds:.2f} s)", file=sys.stderr, flush=True)

        results = evaluate(sets, configurations, device=args.device, max_images=args.max_images,
                           max_side=args.max_side, exposure_target=args.target, progress=progress)
        paths = write_reports(results, out, configurations=configurations, sets=sets, settings={
            "max_images": args.max_images, "max_side": args.max_side, "exposure_target": args.target,
            "simulate": args.simulate, "seed": args.seed, "device": args.device,
            "threads": args.threads})
    except DceBatchError as exc:
        print(f"dce-batch evaluate: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


COMMANDS = {
    "enhance": enhance_main,
    "train": train_main,
    "convert-weights": convert_weights_main,
    "show-weights": show_weights_main,
    "report": report_main,
    "export-onnx": export_onnx_main,
    "evaluate": evaluate_main,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: dce-batch {" + ",".join(COMMANDS) + "} [options]\n\n"
              "  enhance           enhance images (no arguments: the bundled samples into ./enhanced/)\n"
              "  train             train DCE-Net with Ray Train\n"
              "  convert-weights   import a published checkpoint into the safetensors format\n"
              "  show-weights      print a weights file's metadata\n"
              "  evaluate          compare configurations: PSNR/SSIM on paired sets, no-reference stats\n"
              "  report            build OUTPUT/_report/index.html for a finished run\n"
              "  export-onnx       export the network to ONNX (dynamic size, strength as an input)",
              file=sys.stderr if argv else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ndce-batch: unknown command {argv[0]!r}", file=sys.stderr)
            return EXIT_INVALID
        return 0 if argv else EXIT_INVALID
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
