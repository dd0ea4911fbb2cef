"""Command line: ``dce-batch COMMAND [options]``, one argparse subparser per command.

``jobs/enhance.py`` and ``jobs/train.py`` are thin wrappers around :func:`enhance_main` and
:func:`train_main`, so ``ray job submit --working-dir . -- python jobs/enhance.py ...`` and
``dce-batch enhance ...`` are the same program.

Exit status: 0 when every input succeeded (or was already done), 3 when the job finished but some
inputs failed (their manifest rows say why), 2 for invalid arguments (settings, INPUT, OUTPUT,
weights, an OUTPUT another run holds), 1 when the job failed at run time (storage, cluster), 130
when interrupted (Ctrl-C) and 143 when terminated (SIGTERM). Errors are told apart by their type
(:mod:`dce_batch.errors`), never by their wording; a failure is one line, never a traceback, except
for a bug (an exception that is not one of those types), whose traceback is what a report needs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from dce_batch import __version__
from dce_batch.errors import ConfigError, DceBatchError, ReportError, RunInterrupted, WeightsError, describe_error
from dce_batch.limits import (MAX_ACTOR_MEMORY, MAX_COUNT, MAX_FLUSH_S, MAX_IMAGES_PER_CALL, MAX_LOSS_WEIGHT, MAX_LR,
                              MAX_OUTAGE_WAIT_S, MAX_PIXEL_LIMIT, MAX_REPORT_PAIRS, MAX_SCALE, MAX_SEED, MAX_SIDE,
                              MAX_THREADS, MAX_WORKERS, MAX_WORKER_RESOURCES, describe_range)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


# --------------------------------------------------------------------------------------------
# Argument types: every number finite and in range, or a one-line error (exit 2)
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit 2): what is wrong, and where the
    options are listed. ``--help`` prints the full usage as usual."""

    def error(self, message: str):  # type: ignore[override]
        line = " ".join(message.splitlines())
        self.exit(EXIT_INVALID, f"{self.prog}: error: {line} ({self.prog} --help shows the options)\n")


class _CommandParser(_Parser):
    """A command's subparser under ``dce-batch``. Arguments it does not know are its own usage
    error (``dce-batch enhance: error: unrecognized arguments: ...``), as when the command runs
    alone: argparse would pass them up to the top parser, whose error names ``dce-batch``."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, []


def _command_parser(parser: argparse.ArgumentParser | None, *, prog: str, description: str) -> argparse.ArgumentParser:
    """The parser a command's arguments go into: ``parser`` (the command's subparser under
    ``dce-batch``), or one of its own for ``<command>_main``. Both print the same ``--help``."""
    if parser is None:
        return _Parser(prog=prog, description=description)
    parser.prog, parser.description = prog, description
    return parser


def _number(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite number within ``[low, high]`` (``(low, high]`` if ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"expected a finite number {describe_range(low, high, low_open=low_open)}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


_unit = _number(0, 1)


def _count(low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:  # not a whole number, or more digits than Python converts
            raise argparse.ArgumentTypeError(
                f"expected a whole number {describe_range(low, high)}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number {describe_range(low, high)}, got {text!r}")
        return value
    parse.__name__ = "whole number"
    return parse


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path or URI, got an empty string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise argparse.ArgumentTypeError(f"{shown!r} is not valid UTF-8, which the storage layer needs for paths; "
                                         "rename it") from None
    return text


def _num_actors(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN or MIN:MAX, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts[0] < 1 or parts[1] < parts[0] or parts[1] > MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"expected MIN[:MAX] with 1 <= MIN <= MAX <= {MAX_WORKERS:,}, got {text!r}")
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
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 4G or 512M, got {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_ACTOR_MEMORY:
        raise argparse.ArgumentTypeError(f"expected a size like 4G or 512M, at most {MAX_ACTOR_MEMORY >> 40}T, "
                                         f"got {text!r}")
    return int(value)


def _add_s3_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint", metavar="URL", type=_path,
                        help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--s3-outage-wait", metavar="S", type=_number(0, MAX_OUTAGE_WAIT_S), default=None,
                        help="how long a read or write that S3 could not serve after all its AWS_MAX_ATTEMPTS (the "
                             "store unreachable, timing out, failing or throttling) is tried again before it counts "
                             "as failed (default 300; 0: not at all)")


def _s3_options(args: argparse.Namespace):
    import dataclasses

    from dce_batch.storage import S3Options

    options = S3Options.from_env(endpoint_url=args.s3_endpoint)
    if args.s3_outage_wait is not None:
        options = dataclasses.replace(options, outage_wait_s=args.s3_outage_wait)
    return options


def _report_failure(program: str, exc: BaseException) -> int:
    """One line saying why the command failed; the exit status by the error's type."""
    cause = _dce_cause(exc)
    if cause is None:
        if _is_ray_error(exc):
            raised = _raised_in_worker(exc)
            if raised is not None:  # the code a worker ran failed, not Ray: name that error
                print(f"{program}: a Ray worker failed: {type(raised).__name__}: {_first_line(raised)} (a bug: "
                      "please report it, with the worker's traceback from Ray's logs)", file=sys.stderr)
            else:
                print(f"{program}: the Ray cluster failed: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
            return EXIT_FAILED
        traceback.print_exc()  # a bug: its traceback is the report
        return EXIT_FAILED
    print(f"{program}: {describe_error(cause)}", file=sys.stderr)
    # Settings, weights and an OUTPUT with nothing to report are the caller's to fix (2); the rest failed (1).
    return EXIT_INVALID if isinstance(cause, (ConfigError, WeightsError, ReportError)) else EXIT_FAILED


def _dce_cause(exc: BaseException) -> DceBatchError | None:
    """The DceBatchError itself, or the one a wrapper carries (Ray's RayTaskError keeps it as
    ``cause``; Python's chaining as ``__cause__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DceBatchError):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    """The first line of an error's text, without the terminal colours Ray adds to it."""
    return (_ANSI_ESCAPE.sub("", str(exc)).strip().splitlines() or [""])[0]


def _exception_chain(exc: BaseException, step: Callable[[BaseException], BaseException | None]):
    """``exc`` and the exceptions ``step`` leads to from it, each once (a chain may loop)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = step(current)


def _raised_in_worker(exc: BaseException) -> BaseException | None:
    """The innermost error under Ray's wrappers (RayTaskError, UserCodeException) that is not
    Ray's own: what the worker's code raised. None when Ray itself failed (a dead actor or node)."""
    raised = None
    for current in _exception_chain(exc, lambda e: getattr(e, "cause", None) or e.__cause__):
        if not type(current).__module__.startswith("ray."):
            raised = current
    return raised


def _is_ray_error(exc: BaseException) -> bool:
    return any(type(e).__module__.startswith("ray.") for e in (exc, exc.__cause__, exc.__context__) if e is not None)


# --------------------------------------------------------------------------------------------
# enhance
# --------------------------------------------------------------------------------------------


def enhance_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from dce_batch.enhance.settings import FinishConfig
    from dce_batch.job.config import DEFAULT_OUTPUT

    p = _command_parser(
        parser, prog="dce-batch enhance",
        description="Enhance low-light images with Zero-DCE: on worker processes of this machine for small runs "
                    "with no cluster around, else on Ray (a running cluster, or a local one it starts). With no "
                    "arguments, enhances the bundled sample images into ./enhanced/.",
    )
    p.add_argument("input", nargs="?", metavar="INPUT", type=_path,
                   help="folder, glob, s3://bucket/prefix/, or a .parquet/.csv/.txt file listing image URIs "
                        "(default: the bundled samples)")
    p.add_argument("output", nargs="?", metavar="OUTPUT", default=DEFAULT_OUTPUT, type=_path,
                   help=f"folder or s3:// prefix for enhanced images and the _manifest/ (default: {DEFAULT_OUTPUT})")
    g = p.add_argument_group("model")
    g.add_argument("--weights", metavar="PATH|NAME", type=_path,
                   help="shipped model name, a .safetensors file, or a published .pth checkpoint (local or s3://)")
    g.add_argument("--model-variant", choices=["full", "fast"],
                   help="full = Zero-DCE (default), fast = Zero-DCE++; picks the shipped weights of that variant")
    g.add_argument("--scale", type=_number(1, MAX_SCALE), default=None,
                   help="estimate the curves on a copy downscaled by this factor, 1 = full resolution "
                        "(default: 4 for Zero-DCE, with guided upsampling; 12 for the fast variant)")
    g.add_argument("--strength", type=_unit, default=1.0, help="0 = unchanged ... 1 = full enhancement (default 1)")
    g.add_argument("--denoise", choices=["auto", "fast", "off"], default="auto",
                   help="noise-aware denoising of what the curves lifted (default auto: strength follows the "
                        "measured noise and the local gain; clean images are left alone). fast: without the luma's "
                        "DCT stage (faster, noisier)")
    g.add_argument("--denoise-strength", type=_number(0, 4), default=1.0, help="0..4 (default 1); higher smooths harder")
    g.add_argument("--exposure", type=_exposure, default="auto",
                   help="auto (default: brightness chosen from the scene), off, or a target mean brightness such "
                        "as 0.45")
    g.add_argument("--highlight-stretch", type=_unit, default=FinishConfig.highlight_stretch,
                   help="0..1: how much exposure lifts the highlights of dark scenes, which the curves compress "
                        "(smoothly, never past white; default %(default)s; 0 = none)")
    g.add_argument("--colour", choices=["auto", "off"], default="auto",
                   help="auto (default): take out the blue cast the shipped Zero-DCE weights add (measured on real "
                        "pairs); off: keep the curves' colour")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "int8"], default="auto",
                   help="network precision (default auto: int8 on x86 CPUs, bf16 on GPUs and on CPUs that compute it "
                        "natively, fp32 elsewhere). fp16 needs a GPU, int8 an x86 CPU; bf16 is refused where the CPU "
                        "would emulate it")
    g = p.add_argument_group("output")
    g.add_argument("--format", choices=["same", "jpeg", "png", "webp"], default="same",
                   help="output format (default: same as input)")
    g.add_argument("--quality", type=_count(1, 100), default=95, help="JPEG/WebP quality 1-100 (default 95)")
    g.add_argument("--base", metavar="URI", type=_path,
                   help="list-file INPUT: name each output by its entry's path relative to this folder or prefix "
                        "(default: relative to the list file's folder, else the entry's own bucket/key or path)")
    g.add_argument("--overwrite", action="store_true",
                   help="redo every input and start a new manifest (default: resume, skipping finished inputs)")
    g.add_argument("--allow-output-inside-input", action="store_true",
                   help="allow an OUTPUT folder inside the INPUT folder")
    g = p.add_argument_group("cluster sizing")
    g.add_argument("--num-actors", type=_num_actors, metavar="MIN[:MAX]",
                   help="actor pool size (default: what the cluster's CPUs/GPUs and memory hold)")
    g.add_argument("--gpus-per-actor", type=_number(0, MAX_WORKER_RESOURCES), default=0.0,
                   help="GPUs per actor, fractional allowed (default 0)")
    g.add_argument("--cpus-per-actor", type=_number(0, MAX_WORKER_RESOURCES, low_open=True), default=None,
                   help="CPUs per actor, fractional allowed (default 1: one actor per CPU)")
    g.add_argument("--batch-size", type=_count(1, MAX_IMAGES_PER_CALL), default=None,
                   help="images per actor call (default 2 on CPUs; on GPUs up to 16, fewer for large --max-pixels). "
                        "Each actor declares memory for one call: batch size x --max-pixels x 36 bytes, plus 700 MiB")
    g.add_argument("--pipeline", choices=["auto", "fused", "staged"], default="auto",
                   help="fused: each actor reads, enhances and writes (default on CPUs); staged: CPU tasks "
                        "decode and encode around actors that only run the network (default with GPUs)")
    g.add_argument("--actor-memory", type=_size, metavar="BYTES",
                   help="memory each actor declares to Ray, e.g. 4G (default: enough for one call's images)")
    g.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with a local Ray cluster")
    g.add_argument("--engine", choices=["auto", "ray", "local"], default="auto",
                   help="ray: Ray Data actors (on RAY_ADDRESS, a running cluster, or a local one it starts); local: "
                        "worker processes on this machine; auto (default): local for up to 1,000 images when no "
                        "cluster is running and no GPUs are asked for, else ray")
    g.add_argument("--address", type=_path,
                   help="Ray cluster address (default: RAY_ADDRESS, a running local cluster, or a new one)")
    g = p.add_argument_group("what you see")
    g.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                   help="build OUTPUT/_report/index.html at the end (default: yes for local OUTPUTs, no for "
                        "object storage, whose report would hold presigned links)")
    g.add_argument("--manifest-flush-seconds", type=_number(0, MAX_FLUSH_S), default=None, metavar="S",
                   help="longest a finished image's row waits in its worker before the worker writes it to the "
                        "manifest (default 60): what the next run redoes if this one is killed")
    g.add_argument("--quiet", action="store_true", help="print only errors and the final summary")
    g.add_argument("--verbose", action="store_true", help="also Ray's own INFO lines and the workers' logs")
    g = p.add_argument_group("limits")
    g.add_argument("--max-pixels", type=_count(1, MAX_PIXEL_LIMIT), default=None,
                   help="refuse images above this many pixels (default 100,000,000)")
    g.add_argument("--tile-size", type=_count(16, MAX_SIDE), default=None,
                   help="tile side for exact tiled inference (default: 256 on CPUs, 1024 on GPUs)")
    _add_s3_options(p)
    return p


def enhance_run(args: argparse.Namespace) -> int:
    from dce_batch.imaging import DEFAULT_MAX_PIXELS
    from dce_batch.job import EnhanceConfig, run_enhance, sample_images_dir

    try:
        config = EnhanceConfig(
            input=args.input or sample_images_dir(), output=args.output, weights=args.weights,
            variant=args.model_variant, scale=args.scale, format=args.format, quality=args.quality,
            strength=args.strength, precision=args.precision, num_actors=args.num_actors, denoise=args.denoise,
            denoise_strength=args.denoise_strength, exposure=args.exposure, base=args.base,
            highlight_stretch=args.highlight_stretch, colour=args.colour, gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size,
            s3=_s3_options(args), overwrite=args.overwrite,
            allow_output_inside_input=args.allow_output_inside_input,
            max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
            tile_size=args.tile_size, pipeline=args.pipeline, actor_memory=args.actor_memory,
            dashboard=args.dashboard, engine=args.engine, report=args.report, quiet=args.quiet, verbose=args.verbose,
            **({} if args.manifest_flush_seconds is None else {"part_flush_s": args.manifest_flush_seconds}),
        )
        if args.address:
            os.environ["RAY_ADDRESS"] = args.address  # the Ray engine connects there
        summary = run_enhance(config, shutdown=False)
    except RunInterrupted as exc:
        print(f"dce-batch enhance: {exc}", file=sys.stderr)
        return EXIT_TERMINATED if exc.signal == signal.SIGTERM else EXIT_INTERRUPTED
    except KeyboardInterrupt:  # Ctrl-C before the run installed its own handling
        print("dce-batch enhance: interrupted before the run started", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - exit status by cause, message first
        return _report_failure("dce-batch enhance", exc)
    from dce_batch.report import report_after_run

    def say(line: str) -> None:
        if not config.quiet:
            print(f"[dce-batch enhance] {line}", file=sys.stderr, flush=True)

    def warn(line: str) -> None:
        print(f"[dce-batch enhance] warning: {line}", file=sys.stderr, flush=True)

    summary.report = report_after_run(config, say, warn)
    print(summary.table())
    if summary.report:
        print(f"report: {summary.report}")
    return EXIT_SOME_FAILED if summary.error else EXIT_OK


# --------------------------------------------------------------------------------------------
# weights, report, export-onnx, manifest
# --------------------------------------------------------------------------------------------


def convert_weights_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = _command_parser(
        parser, prog="dce-batch convert-weights",
        description="Write weights in the project's safetensors format: import a published checkpoint (.pth), or "
                    "re-save a .safetensors file (its metadata kept, subnormal values flushed to zero).")
    p.add_argument("source", type=_path,
                   help="a checkpoint (Zero-DCE, Zero-DCE++ or the seed's layout) or a .safetensors file")
    p.add_argument("target", type=_path, help="output .safetensors file")
    p.add_argument("--name", help="model name recorded in the metadata (default: the source's own name for "
                                  "dce_batch files, else the target's file name)")
    p.add_argument("--licence", help="licence recorded in the metadata (default: the source's, else 'as published "
                                     "by the checkpoint's authors')")
    return p


def convert_weights_run(args: argparse.Namespace) -> int:
    from dce_batch.enhance.weights import load_weights, save_weights

    try:
        loaded = load_weights(Path(args.source))
        meta = loaded.meta
        ours = bool(meta.created)  # a dce_batch file (imported checkpoints have no creation time)
        _, written = save_weights(
            loaded.state_dict, args.target, name=args.name or (meta.name if ours else Path(args.target).stem),
            variant=meta.variant, source=meta.source,
            licence=args.licence or meta.licence or "as published by the checkpoint's authors",
            recipe=meta.recipe, data=meta.data, metrics=meta.metrics, created=meta.created or None)
    except (DceBatchError, OSError) as exc:
        print(f"dce-batch convert-weights: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {args.target}: {written.variant}, {written.num_params:,} parameters, sha256 {written.sha256}")
    return EXIT_OK


def show_weights_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = _command_parser(parser, prog="dce-batch show-weights", description="Print a weights file's metadata.")
    p.add_argument("weights", nargs="?", default=None, type=_path,
                   help="a shipped name or a file (default: the default model)")
    return p


def show_weights_run(args: argparse.Namespace) -> int:
    from dce_batch.enhance.weights import load_weights

    try:
        meta = load_weights(args.weights).meta
    except DceBatchError as exc:
        print(f"dce-batch show-weights: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(vars(meta), indent=2, default=str))
    return EXIT_OK


def report_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from dce_batch.report import DEFAULT_MAX_PAIRS

    p = _command_parser(
        parser, prog="dce-batch report",
        description="Build OUTPUT/_report/index.html for the latest finished run under OUTPUT: summary, "
                    "before/after pairs, brightness histograms, slowest and failed images, training curves. "
                    "One self-contained file that opens offline.",
    )
    p.add_argument("output", metavar="OUTPUT", type=_path, help="the run's OUTPUT folder or s3:// prefix")
    p.add_argument("--max-pairs", type=_count(0, MAX_REPORT_PAIRS), default=DEFAULT_MAX_PAIRS,
                   help=f"before/after pairs shown at most, evenly sampled (default {DEFAULT_MAX_PAIRS})")
    p.add_argument("--run-id", help="report this run instead of the latest finished one")
    p.add_argument("--link-expiry-hours", type=_number(0, 168), default=168.0,
                   help="lifetime of presigned links to s3:// images (default 168 = 7 days, the most S3 allows); "
                        "0 shows s3:// URIs as text instead of links")
    _add_s3_options(p)
    return p


def report_run(args: argparse.Namespace) -> int:
    from dce_batch.report import build_report

    try:
        uri = build_report(args.output, s3=_s3_options(args), max_pairs=args.max_pairs, run_id=args.run_id,
                           presign_expires_s=int(args.link_expiry_hours * 3600),
                           log=lambda line: print(f"[dce-batch report] {line}", file=sys.stderr, flush=True))
    except Exception as exc:  # noqa: BLE001 - exit status by cause
        return _report_failure("dce-batch report", exc)
    print(uri)
    return EXIT_OK


def _opset(text: str) -> int:
    from dce_batch.enhance.onnx_export import DEFAULT_OPSET, MIN_OPSET, newest_opset

    return _count(MIN_OPSET, newest_opset() or DEFAULT_OPSET)(text)


class _WeightsAndTarget(argparse.Action):
    """``[WEIGHTS] OUT.onnx``: one path or two, refused by the parser like any other usage error."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            raise argparse.ArgumentError(None, "expected [WEIGHTS] OUT.onnx")
        setattr(namespace, self.dest, values)


def export_onnx_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from dce_batch.enhance.onnx_export import DEFAULT_OPSET, MIN_OPSET

    p = _command_parser(
        parser, prog="dce-batch export-onnx",
        description="Export weights to ONNX: input 'image' (N x 3 x H x W float32 in [0, 1], any N, H, W) and "
                    "'strength' (float32 [1], 0..1), output 'enhanced'. Needs pip install 'dce-batch[onnx]'.",
    )
    p.add_argument("args", nargs="+", metavar="[WEIGHTS] OUT.onnx", type=_path, action=_WeightsAndTarget,
                   help="weights (shipped name, .safetensors or .pth; default zerodce_sice_v1) and the output file")
    p.add_argument("--model-variant", choices=["full", "fast"],
                   help="pick the shipped weights of this variant when WEIGHTS is not given")
    p.add_argument("--scale", type=_number(1, MAX_SCALE), default=12.0,
                   help="fast variant: the downscale factor for curve estimation, fixed in the graph (default 12)")
    p.add_argument("--opset", type=_opset, default=None,
                   help=f"ONNX opset, from {MIN_OPSET} to the newest the installed onnx knows (default {DEFAULT_OPSET})")
    return p


def export_onnx_run(args: argparse.Namespace) -> int:
    from dce_batch.enhance.onnx_export import export_onnx

    weights, target = (args.args if len(args.args) == 2 else (None, args.args[0]))
    try:
        info = export_onnx(weights, target, variant=args.model_variant, scale=args.scale, opset=args.opset)
    except DceBatchError as exc:
        print(f"dce-batch export-onnx: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {target}: {info.name} ({info.variant}{f', scale {info.scale:g}' if info.variant == 'fast' else ''}), "
          f"opset {info.opset}, {info.bytes:,} bytes")
    return EXIT_OK


def manifest_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = _command_parser(
        parser, prog="dce-batch manifest",
        description="Maintain an OUTPUT's manifest: upgrade one written by an earlier version, repair a damaged "
                    "one, or break the lease of a run that is gone.")
    p.add_argument("action", choices=["upgrade", "repair", "unlock"],
                   help="upgrade: rewrite an earlier version's manifest in this format (no image is touched); "
                        "repair: set damaged parts and commit records aside and commit every part that reads; "
                        "unlock: remove OUTPUT's lease (refused while its holder runs on this host)")
    p.add_argument("output", metavar="OUTPUT", type=_path, help="folder or s3:// prefix")
    p.add_argument("--force", action="store_true", help="unlock: even if the holder's process exists on this host")
    _add_s3_options(p)
    return p


def manifest_run(args: argparse.Namespace) -> int:
    from dce_batch.job.manifest import ManifestStore
    from dce_batch.job.manifest.lease import acquire_lease, break_lease, lease_supported
    from dce_batch.job.manifest.maintenance import repair, upgrade
    from dce_batch.job.plan import list_output_files
    from dce_batch.storage import Location

    def say(line: str) -> None:
        print(f"[dce-batch manifest] {line}", file=sys.stderr, flush=True)

    try:
        output = Location.parse(args.output, _s3_options(args))
        if args.action in ("upgrade", "repair"):
            # Rewriting the manifest under a running job would lose its rows: hold the lease.
            store = ManifestStore.of(output)
            lease = (acquire_lease(store, f"manifest-{args.action}", command=" ".join(sys.argv)[:500])
                     if lease_supported(output.filesystem) else None)
            try:
                if args.action == "upgrade":
                    upgrade(output, log=say)
                else:
                    repair(output, log=say, list_outputs=lambda o: {
                        r for r in list_output_files(o).relpaths.to_pylist()
                        if not r.startswith(("_manifest/", "_report/"))})
            finally:
                if lease is not None:
                    lease.release()
        else:
            holder = break_lease(ManifestStore.of(output), force=args.force)
            say(f"removed the lease of {holder.run_id} (host {holder.host}, pid {holder.pid})" if holder
                else "OUTPUT had no lease")
    except Exception as exc:  # noqa: BLE001 - exit status by cause
        return _report_failure("dce-batch manifest", exc)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# train, evaluate
# --------------------------------------------------------------------------------------------


def train_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = _command_parser(
        parser, prog="dce-batch train",
        description="Train DCE-Net with Ray Train on a folder or s3:// prefix of (unpaired, low- and "
                    "over-exposed) images, on the Ray cluster at RAY_ADDRESS or a local one it starts. "
                    "The same --name and --storage resume a run. Try it: dce-batch train --data samples "
                    "--epochs 2 --image-size 64 --workers 1 --name try1 --export runs/try1.safetensors",
    )
    p.add_argument("--config", metavar="FILE", type=_path,
                   help="a TOML recipe whose keys are these options' long names (e.g. training/zerodce_sice_v1.toml); "
                        "options given on the command line override it")
    p.add_argument("--data", metavar="URI", type=_path,
                   help="training images: folder, glob, s3:// prefix or list file, or 'samples': the few "
                        "bundled with the package (write ./samples for a folder of that name) (required)")
    p.add_argument("--storage", default="./runs", metavar="URI", type=_path,
                   help="checkpoints, metrics.json and loss_curves.png go under STORAGE/NAME (local or s3://; "
                        "default ./runs)")
    p.add_argument("--name", help="run name; a new name starts a run, an existing one resumes it (default: timestamped)")
    p.add_argument("--export", metavar="PATH", type=_path,
                   help="write the final weights to this file (.safetensors with metadata; local or s3://)")
    p.add_argument("--init-weights", metavar="PATH|NAME", type=_path,
                   help="fine-tune: start from these weights (a shipped name, .safetensors or .pth) instead of random")
    p.add_argument("--verbose", action="store_true",
                   help="also Ray's own log lines, progress bars and the workers' output")
    g = p.add_argument_group("scaling")
    g.add_argument("--workers", type=_count(1, MAX_WORKERS), default=2, help="training workers (default 2)")
    g.add_argument("--gpu", action="store_true", help="one GPU per worker (same as --gpus-per-worker 1)")
    g.add_argument("--gpus-per-worker", type=_number(0, MAX_WORKER_RESOURCES), default=0.0)
    g.add_argument("--cpus-per-worker", type=_number(0, MAX_WORKER_RESOURCES, low_open=True), default=1.0)
    g.add_argument("--max-failures", type=_count(-1, MAX_COUNT), default=3,
                   help="worker-group restarts from the latest checkpoint (default 3; -1: no limit)")
    g = p.add_argument_group("recipe (defaults: the Zero-DCE authors')")
    g.add_argument("--model-variant", choices=["full", "fast"], default="full")
    g.add_argument("--epochs", type=_count(1, MAX_COUNT), default=200)
    g.add_argument("--image-size", type=_count(16, MAX_SIDE), default=256, help="training crops/resizes to this size (default 256)")
    g.add_argument("--base-size", type=_count(16, MAX_SIDE), help="decode images to this square size first (default: --image-size)")
    g.add_argument("--min-crop", type=_number(0.05, 1), default=1.0,
                   help="random crops cover this fraction of the side at least (default 1: whole image, resized)")
    g.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    g.add_argument("--batch-size", type=_count(1, MAX_IMAGES_PER_CALL), default=8, help="per worker (default 8)")
    g.add_argument("--lr", type=_number(0, MAX_LR, low_open=True), default=1e-4)
    g.add_argument("--weight-decay", type=_number(0, MAX_LR), default=1e-4)
    g.add_argument("--grad-clip", type=_number(0, MAX_LOSS_WEIGHT, low_open=True), default=0.1)
    g.add_argument("--tv-weight", type=_number(0, MAX_LOSS_WEIGHT), help="illumination smoothness weight (default 200; 1600 for fast)")
    g.add_argument("--spatial-weight", type=_number(0, MAX_LOSS_WEIGHT), help="spatial consistency weight (default 1)")
    g.add_argument("--color-weight", type=_number(0, MAX_LOSS_WEIGHT), help="colour constancy weight (default 5)")
    g.add_argument("--exposure-weight", type=_number(0, MAX_LOSS_WEIGHT), help="exposure control weight (default 10)")
    g.add_argument("--exposure-target", type=_number(0, 1, low_open=True), help="well-exposedness level E (default 0.6)")
    g.add_argument("--val-fraction", type=_unit, default=0.05)
    g.add_argument("--seed", type=_count(0, MAX_SEED), default=0)
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto = bf16 autocast on GPUs, fp32 on CPUs")
    g.add_argument("--max-images", type=_count(2, MAX_COUNT), help="train on a random subset of this many images")
    g.add_argument("--keep-checkpoints", type=_count(1, MAX_COUNT), default=3, help="best checkpoints kept (the latest always is)")
    g.add_argument("--checkpoint-every", type=_count(1, MAX_COUNT), default=1, help="checkpoint every N epochs (and after the last)")
    g.add_argument("--inject-failure-at-epoch", type=_count(1, MAX_COUNT), help=argparse.SUPPRESS)
    _add_s3_options(p)
    return p


def train_config_from_args(args: argparse.Namespace):
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
        precision=args.precision, max_images=args.max_images, s3=_s3_options(args),
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


def train_run(args: argparse.Namespace) -> int:
    """``dce-batch train``: 0 when the run finished, 2 for invalid arguments (reported before Ray
    starts where they can be), 1 when training failed at run time, 130 when interrupted.

    With ``--config``, the command's words (``args.argv``) are parsed again with the recipe's
    values as defaults, so an option on the command line wins wherever it stands."""
    from dce_batch.errors import WeightsError
    from dce_batch.job.progress import format_duration
    from dce_batch.training.run import run_training

    ray_module = sys.modules.get("ray")
    ray_was_running = ray_module is not None and ray_module.is_initialized()
    try:
        if args.config:
            args = parse_train_args(args.argv)
        config = train_config_from_args(args)
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
    if ray_was_running:
        return 0
    # Everything is written. Leave now, without seconds of orderly Ray shutdown: a local cluster
    # this run started ends with this process (its processes share its fate).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def evaluate_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from dce_batch.enhance.settings import DEFAULT_EXPOSURE_TARGET

    p = _command_parser(
        parser, prog="dce-batch evaluate",
        description="Compare enhancement configurations side by side: PSNR/SSIM on paired sets (low and "
                    "reference folders matched by file name), no-reference statistics on every set. Runs "
                    "in-process (no Ray); writes results.json, per_image.csv and summary.md.",
    )
    p.add_argument("--paired", nargs=2, action="append", default=[], metavar=("LOW", "REFERENCE"), type=_path,
                   help="a folder of inputs and a folder of references with the same file names (repeatable)")
    p.add_argument("--unpaired", action="append", default=[], metavar="DIR", type=_path,
                   help="a folder of inputs without references (repeatable)")
    p.add_argument("--simulate", metavar="LEVEL[,LEVEL]",
                   help="also build simulated low-light pairs at these levels (see dce_batch.evaluation.lowlight_sim.LEVELS) "
                        "from --simulate-from, under OUT/simulated/")
    p.add_argument("--simulate-from", metavar="DIR", type=_path, help="well-exposed images to darken for --simulate")
    p.add_argument("--simulate-max-side", type=_count(16, MAX_SIDE), default=600,
                   help="downsize references to this longer side first (default 600, LOL-like)")
    p.add_argument("--seed", type=_count(0, MAX_SEED), default=0, help="simulation seed (default 0)")
    p.add_argument("--config", action="append", default=[], metavar="LABEL[:key=value,...]", dest="configs",
                   help="a configuration (repeatable). Keys: weights, strength, finish=on|off, denoise=auto|fast|off, "
                        "denoise_strength, exposure=auto|off|TARGET, chroma_refine_radius (0: one chroma pass), "
                        "matched_noise_level (inf: no block matching), noise_gain (slope|ratio), highlight_stretch "
                        "(0: highlights as the curves leave them), folder (already-enhanced images), scale. "
                        "'input' alone is the unenhanced input. Default: input, network:finish=off, default")
    p.add_argument("--out", default="evaluation", metavar="DIR", type=_path, help="where to write the reports (default ./evaluation)")
    p.add_argument("--max-images", type=_count(1, MAX_COUNT), help="at most this many images per set (first by name)")
    p.add_argument("--max-side", type=_count(16, MAX_SIDE), help="downsize images whose longer side exceeds this first (speed)")
    p.add_argument("--target", type=_number(0, 1, low_open=True), default=DEFAULT_EXPOSURE_TARGET,
                   help=f"mean brightness the exposure error is measured against (default {DEFAULT_EXPOSURE_TARGET})")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto (CUDA when present)")
    p.add_argument("--threads", type=_count(1, MAX_THREADS), default=1,
                   help="torch CPU threads (default 1: steady timings, and no oversubscription on a shared machine)")
    return p


def evaluate_run(args: argparse.Namespace) -> int:
    from dce_batch.evaluation.evaluate import (DEFAULT_CONFIGURATIONS, evaluate, parse_configuration, set_from_paths, unique_set_names,
                           write_reports)

    try:
        import torch

        from dce_batch.enhance.precision import resolve_device

        resolve_device(args.device)  # an unknown device, or CUDA where there is none: refused before any work
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




# --------------------------------------------------------------------------------------------
# dce-batch COMMAND
# --------------------------------------------------------------------------------------------

def _run_alone(parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], int],
               argv: Sequence[str] | None) -> int:
    """A command on its own (``<command>_main``, ``jobs/*.py``): its own parser, then its run function."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv  # train parses its words again under a recipe's defaults
    return run(args)


def enhance_main(argv: Sequence[str] | None = None) -> int:
    return _run_alone(enhance_parser, enhance_run, argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    return _run_alone(train_parser, train_run, argv)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    return _run_alone(evaluate_parser, evaluate_run, argv)


def report_main(argv: Sequence[str] | None = None) -> int:
    return _run_alone(report_parser, report_run, argv)


def manifest_main(argv: Sequence[str] | None = None) -> int:
    return _run_alone(manifest_parser, manifest_run, argv)


def show_weights_main(argv: Sequence[str] | None = None) -> int:
    return _run_alone(show_weights_parser, show_weights_run, argv)


def convert_weights_main(argv: Sequence[str] | None = None) -> int:
    return _run_alone(convert_weights_parser, convert_weights_run, argv)


def export_onnx_main(argv: Sequence[str] | None = None) -> int:
    return _run_alone(export_onnx_parser, export_onnx_run, argv)


class Command(NamedTuple):
    """A ``dce-batch`` command: its subparser is filled by ``parser`` and runs ``run``."""

    help: str  #: its line in ``dce-batch --help``
    parser: Callable[..., argparse.ArgumentParser]  #: fills the parser it is given, else returns one of its own
    run: Callable[[argparse.Namespace], int]  #: runs on the parsed arguments; returns the exit status
    main: Callable[[Sequence[str] | None], int]  #: parser and run on its own: ``<command>_main(argv)``


COMMANDS: dict[str, Command] = {
    "enhance": Command("enhance images (no arguments: the bundled samples into ./enhanced/)", enhance_parser,
                       enhance_run, enhance_main),
    "train": Command("train DCE-Net with Ray Train", train_parser, train_run, train_main),
    "evaluate": Command("compare configurations: PSNR/SSIM on paired sets, no-reference statistics", evaluate_parser,
                        evaluate_run, evaluate_main),
    "report": Command("build OUTPUT/_report/index.html for a finished run", report_parser, report_run, report_main),
    "manifest": Command("upgrade, repair or unlock an OUTPUT's manifest", manifest_parser, manifest_run,
                        manifest_main),
    "show-weights": Command("print a weights file's metadata", show_weights_parser, show_weights_run,
                            show_weights_main),
    "convert-weights": Command("import a published checkpoint into the safetensors format", convert_weights_parser,
                               convert_weights_run, convert_weights_main),
    "export-onnx": Command("export the network to ONNX (dynamic size, strength as an input)", export_onnx_parser,
                           export_onnx_run, export_onnx_main),
}


def build_parser() -> argparse.ArgumentParser:
    """``dce-batch``: one subparser per command, filled by the command's own parser function, whose
    ``run`` default is the command's run function."""
    top = _Parser(prog="dce-batch", description="Enhance low-light photos at scale with Zero-DCE on Ray.")
    top.add_argument("--version", action="version", version=f"dce-batch {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser)
    for name, command in COMMANDS.items():
        command.parser(commands.add_parser(name, help=command.help)).set_defaults(run=command.run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """``dce-batch COMMAND [options]``: argparse picks the command and parses its options (``--help``,
    ``--version`` and usage errors exit there), then the command runs on them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # The command's own words follow its name (the top parser takes no value that could look like
    # one): train parses them again under a recipe's defaults.
    args.argv = argv[argv.index(args.command) + 1:]
    return args.run(args)


def program(argv: Sequence[str] | None = None, command: Callable[[Sequence[str] | None], int] = main) -> None:
    """The ``dce-batch`` program (and ``jobs/*.py``): run, then leave. After ``enhance`` everything is
    written, so the process ends at once: a local Ray it started ends with it (its processes share
    its fate) without seconds of orderly shutdown.

    A Ctrl-C that lands where no command handles it (while a command imports its modules, say) is
    one line and exit 130, never a traceback; once the command has returned, a late Ctrl-C is
    ignored and the program leaves with the command's status."""
    args = list(sys.argv[1:] if argv is None else argv)
    named = next((name for name, c in COMMANDS.items() if c.main is command), None)
    name = f"dce-batch {named or (args[0] if command is main and args[:1] and args[0] in COMMANDS else '')}".strip()
    try:
        try:
            code = command(argv)
        finally:
            _ignore_ctrl_c()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException as exc:  # noqa: BLE001 - re-raised unless a Ctrl-C caused it
        # Python 3.11 wraps a Ctrl-C that lands while a class is being created (an import) in a
        # RuntimeError ("Error calling __set_name__ ..."): the same interruption.
        if isinstance(exc, SystemExit) or not _caused_by_ctrl_c(exc):
            raise
        _ignore_ctrl_c()
        print(f"{name}: interrupted", file=sys.stderr, flush=True)
        code = EXIT_INTERRUPTED
    if command is enhance_main or (args[:1] == ["enhance"] and command is main):
        os._exit(code)
    sys.exit(code)


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` was raised because of a KeyboardInterrupt (its cause or context, at any depth)."""
    return any(isinstance(e, KeyboardInterrupt) for e in _exception_chain(exc, lambda e: e.__cause__ or e.__context__))


def _ignore_ctrl_c() -> None:
    if threading.current_thread() is threading.main_thread():  # only the main thread sets handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    program()
