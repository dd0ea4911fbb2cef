"""The enhancement job's driver: checks, lease, plan, engine, commit.

    checks      settings, INPUT, OUTPUT, weights: an invalid argument fails here, before anything
                is written (exit 2)
    lease       one run per OUTPUT (:mod:`.manifest.lease`)
    plan        list the inputs, read the manifest (adopting the parts of runs that died),
                remove this OUTPUT's own debris, decide each input's output and what is done
                (:mod:`.plan`); meanwhile the engine starts
    run         the engine (local worker processes, or Ray Data) enhances the planned inputs; each
                finished batch comes back for progress and the ledger (:mod:`.manifest.parts`);
                a stop request (Ctrl-C, SIGTERM) or a lost lease is noticed between batches
    commit      the parts not yet written, the summary, and last the commit record

Ray is imported only by :mod:`.engines.ray`, torch only by the workers (the driver reads the
weights' metadata from their header).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from dce_batch import __version__
from dce_batch.errors import (
    ConfigError,
    DceBatchError,
    InputNotFoundError,
    OutputWriteError,
    RunInterrupted,
    StorageError,
    WeightsError,
    describe_error,
)
from dce_batch.imaging import IMAGE_EXTENSIONS, UNDECODABLE_EXTENSIONS, UNREAD_IMAGE_EXTENSIONS
from dce_batch.job.config import EnhanceConfig
from dce_batch.job.manifest.lease import acquire_lease, lease_supported
from dce_batch.job.manifest.parts import PartLedger
from dce_batch.job.manifest.store import CommitRecord, ManifestStore, PartInfo, part_name
from dce_batch.job.manifest.summary import RunSummary
from dce_batch.job.output_settings import settings_for_run
from dce_batch.job.plan import Plan, list_output_files, plan_run
from dce_batch.job.progress import Progress
from dce_batch.job.signals import StopRequest
from dce_batch.job.worker import read_weights_spec
from dce_batch.storage import Location, filesystem_for, input_info, list_inputs_table, remove_files, temp_tag
from dce_batch.storage.globs import GLOB_CHARS, split_glob
from dce_batch.storage.outages import call_through_outages, outage_wait_s
from dce_batch.storage.uris import storage_error

__all__ = ["LOCAL_MAX_IMAGES", "ResolvedWeights", "choose_engine", "resolve_weights", "run_enhance"]

#: Collections up to this many images run in local processes when no cluster is running (Ray's
#: start-up would cost more than it saves); larger ones start a local Ray (benchmarks/bench_pipeline.py).
LOCAL_MAX_IMAGES = 1000


# --------------------------------------------------------------------------------------------
# Checks before anything is written
# --------------------------------------------------------------------------------------------


@dataclass
class ResolvedWeights:
    blob: bytes
    name: str
    meta: Any  # the metadata: name, variant, sha256, num_params, source


def resolve_weights(config: EnhanceConfig, blob: bytes | None = None, name: str | None = None) -> ResolvedWeights:
    """The weights' bytes and metadata: the project's own files are read from their header (no
    torch in the driver; the workers verify the tensors' sha256), published checkpoints are
    imported here."""
    from dce_batch.enhance.registry import read_header_metadata

    if blob is None:
        blob, name = read_weights_spec(config)
    header = read_header_metadata(blob)
    if header is not None:
        if config.variant is not None and header.variant != config.variant:
            raise WeightsError(
                f"weights {name!r} are for the {header.variant!r} variant, but --model-variant {config.variant!r} "
                "was asked for; drop one of the two or pass matching weights")
        return ResolvedWeights(blob, name, header)
    from dce_batch.enhance.weights import load_weights

    loaded = load_weights(blob, variant=config.variant, name=name)
    return ResolvedWeights(blob, name, loaded.meta)


def check_precision(config: EnhanceConfig, variant: str, *, local: bool) -> None:
    """What needs the weights' variant, or this machine's CPU when the workers run on it."""
    if config.precision == "int8" and variant != "full":
        raise ConfigError("--precision int8 quantizes DCE-Net (the full model); run the fast variant with --precision "
                          "auto, fp32 or bf16")
    if config.precision == "bf16" and config.gpus_per_actor == 0 and local:
        from dce_batch.enhance.precision import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            raise ConfigError("--precision bf16 on this CPU (no native bf16) would be emulated, far slower than "
                              "fp32; use --precision auto or fp32")


def _ray_working_dir() -> str | None:
    """The temporary folder ``ray job submit --working-dir`` unpacked this job into, if it is one."""
    cwd = os.getcwd()
    marker = "/runtime_resources/working_dir_files/"
    return cwd if marker in cwd else None


def check_output_location(config: EnhanceConfig, output: Location) -> None:
    """Refuse an OUTPUT that would be lost or would feed later runs:

    * inside Ray's temporary working folder of a submitted job (deleted with the job);
    * inside an INPUT folder (a later run would enhance its own outputs), unless allowed.
    """
    working_dir = _ray_working_dir()
    if working_dir and isinstance(output.filesystem, pafs.LocalFileSystem) and \
            (output.path + "/").startswith(working_dir.rstrip("/") + "/"):
        raise ConfigError(
            f"OUTPUT {config.output} would be written into Ray's temporary working folder of this job ({working_dir}), "
            "which is deleted with the job and the cluster: give an absolute path on the cluster's storage or an "
            "s3:// URI")
    if config.allow_output_inside_input:
        return
    input_fs, named = filesystem_for(config.input, config.s3)

    def look() -> tuple[str, pafs.FileInfo]:
        info = input_info(input_fs, named, config.input, input_fs.get_file_info(named))
        # A path that does not exist as named and holds * ? [ is a glob (as the listing reads it):
        # its fixed leading folders. A folder named "photos[1]" is that folder.
        if info.type == pafs.FileType.NotFound and GLOB_CHARS & set(named):
            fixed = split_glob(named)[0]
            return fixed, input_fs.get_file_info(fixed)
        return named, info

    try:
        root, info = call_through_outages(look, wait_s=outage_wait_s(input_fs), what=f"checking INPUT {config.input}",
                                          final_if_never_connected=True)
    except OSError as exc:
        raise storage_error(exc, "check INPUT", input_fs, named) from exc
    if info.type == pafs.FileType.NotFound:
        where = (f"relative paths are taken from {os.getcwd()}" if isinstance(input_fs, pafs.LocalFileSystem)
                 else "check the bucket and prefix, and the endpoint and credentials they belong to")
        raise InputNotFoundError(f"INPUT {config.input} does not exist ({where})")
    if info.type == pafs.FileType.File:
        return
    if Location(uri=config.input, filesystem=input_fs, path=root).contains(output):
        raise ConfigError(
            f"OUTPUT {output.uri} is inside INPUT {config.input}: a later run would enhance its own "
            "outputs. Choose an OUTPUT outside INPUT, or pass --allow-output-inside-input")


def _input_root(config: EnhanceConfig) -> Location | None:
    """INPUT as a folder, when it is one (for the checks that keep outputs out of it)."""
    try:
        fs, path = filesystem_for(config.input, config.s3)
        if input_info(fs, path, config.input, fs.get_file_info(path)).type != pafs.FileType.Directory:
            return None
    except (OSError, DceBatchError):
        return None
    return Location(uri=config.input, filesystem=fs, path=path.rstrip("/"))


def check_output_writable(output: Location) -> None:
    """Fail before any work when a local OUTPUT cannot be written (read-only, no permission)."""
    from dce_batch.storage import write_bytes_atomic

    if not isinstance(output.filesystem, pafs.LocalFileSystem):
        return  # object stores: the lease's write says it (a probe would leave folder markers)
    probe = f"{output.path}/_manifest/.write-probe-{uuid.uuid4().hex[:8]}"
    try:
        write_bytes_atomic(output.filesystem, probe, b"dce_batch checks that OUTPUT is writable")
        output.filesystem.delete_file(probe)
    except (StorageError, OSError) as exc:
        raise OutputWriteError(f"OUTPUT {output.uri} cannot be written: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    input_fs: pafs.FileSystem
    plan: Plan
    adopted: list[PartInfo]
    debris: list[str]  # temp files of writes this OUTPUT's interrupted runs never finished
    leave_uploads: list[str]  # folders whose unfinished uploads are not this job's
    lease_started: datetime
    removed_temp_files: int = 0
    aborted_uploads: int = 0


def prepare(config: EnhanceConfig, output: Location, store: ManifestStore, weights: ResolvedWeights,
            *, lease_started: datetime, dead_runs: set[str], warn: Callable[[str], None]) -> Prepared:
    """List inputs, read the manifest (adopting dead runs' parts), find this OUTPUT's debris, plan.
    Nothing under OUTPUT changes here: a run refused once planned leaves OUTPUT as it was
    (:func:`clear_debris` removes the debris once the run goes ahead).

    Finding no input raises NoInputsFoundError (exit 2); links the listing skipped are ``warn``-ed."""
    # Unsorted: plan_run sorts what remains to do, after resume (a million skipped rows never are).
    input_fs, listing = call_through_outages(
        lambda: list_inputs_table(config.input, config.s3, extensions=IMAGE_EXTENSIONS, base=config.base or None,
                                  warn=warn, sort=False, refused_extensions=UNDECODABLE_EXTENSIONS,
                                  reported_extensions=UNREAD_IMAGE_EXTENSIONS),
        wait_s=outage_wait_s(filesystem_for(config.input, config.s3)[0]),
        what=f"listing INPUT {config.input}", final_if_never_connected=True)
    if config.overwrite:  # the manifest is deleted once the run goes ahead (_run)
        done, adopted, runs = None, [], set()
    else:
        state = store.state()
        done, adopted, runs = state.rows, state.uncommitted, set(state.runs)
    input_root = _input_root(config)
    found = call_through_outages(
        lambda: list_output_files(output, temp_tags=frozenset(temp_tag(r) for r in runs | dead_runs),
                                  input_root=input_root),
        wait_s=outage_wait_s(output.filesystem), what=f"listing OUTPUT {output.uri}")
    # Uploads under another job's OUTPUT nested in this one, or under INPUT, are not this job's.
    leave = set(found.nested_outputs)
    if input_root is not None and output.contains(input_root):
        leave.add(input_root.path[len(output.path.rstrip("/")) + 1:])
    meta = weights.meta
    constants = dict(model_name=meta.name, model_sha256=meta.sha256, strength=config.strength,
                     variant=meta.variant, precision=config.precision)
    plan = plan_run(listing=listing, output=output, run_id=config.run_id,
                    settings_for=functools.partial(settings_for_run, config, meta),
                    requested_format=config.format, row_constants=constants, done=done,
                    existing_outputs=found.relpaths, max_pixels=config.max_pixels, input_root=input_root)
    return Prepared(input_fs, plan, adopted, debris=list(found.unfinished), leave_uploads=sorted(leave),
                    lease_started=lease_started)


def clear_debris(output: Location, prepared: Prepared) -> None:
    """Remove what writers of this OUTPUT's runs that were killed left: their temp files (never
    anyone else's) and, on S3, their unfinished uploads. Counts go into ``prepared``."""
    from dce_batch.storage.multipart import abort_stale_uploads

    prepared.removed_temp_files = remove_files(output.filesystem, prepared.debris)
    prepared.aborted_uploads = abort_stale_uploads(output.filesystem, output.path,
                                                   started_before=prepared.lease_started,
                                                   leave=prepared.leave_uploads)


class _Background:
    """Run a function in a daemon thread; :meth:`result` waits, checking for a stop request."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._result: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(fn,), daemon=True, name="dce-plan").start()

    def _run(self, fn) -> None:
        try:
            self._result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc
        finally:
            self._done.set()

    def result(self, stop: StopRequest) -> Any:
        while not self._done.wait(0.2):
            if stop.requested:
                raise _interrupted(stop)
        if self._error is not None:
            raise self._error
        return self._result


def _interrupted(stop: StopRequest) -> RunInterrupted:
    import signal

    name = "terminated" if stop.signum == signal.SIGTERM else "interrupted"
    return RunInterrupted(f"{name}; finished images are in the manifest, run again to resume", stop.signum or 2)


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------


def _could_run_locally(config: EnhanceConfig) -> bool:
    if not (config.engine == "auto" and config.gpus_per_actor == 0 and config.pipeline != "staged"
            and config.num_actors is None):
        return False
    from dce_batch.job.engines.ray import starts_local_cluster

    return starts_local_cluster()


def choose_engine(config: EnhanceConfig, images: int) -> str:
    """``local`` (a process pool on this machine) or ``ray`` for a run with ``images`` to do.

    ``auto`` picks local only when nothing else asks for Ray: no cluster is running or named
    (RAY_ADDRESS, ``ray start``, ``ray job submit``), no GPUs, staged pipeline or actor counts are
    asked for, and at most :data:`LOCAL_MAX_IMAGES` images are to do.
    """
    if config.engine != "auto":
        return config.engine
    return "local" if images <= LOCAL_MAX_IMAGES and _could_run_locally(config) else "ray"


def _warn_of_the_pixel_limit(plan, say: Callable[[str], None]) -> None:
    if plan.limit_reason:  # set only when the workers take less than --max-pixels
        say(f"warning: images over {plan.image_pixel_limit / 1e6:.0f} MP will get error rows: {plan.limit_reason}")


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _say_to_stderr(line: str) -> None:
    print(f"[dce-batch enhance] {line}", file=sys.stderr, flush=True)


def _warn(line: str) -> None:
    """Something the user should know even in a quiet run (a skipped link, say)."""
    print(f"[dce-batch enhance] warning: {line}", file=sys.stderr, flush=True)


def _silent(line: str) -> None:  # noqa: ARG001 - --quiet
    return None


def use_driver_memory_pool() -> None:
    """Arrow's allocations in this process from here on come from the C library's ``malloc``.

    The driver's planning allocates and frees column after column of tens of MB (a million
    paths, sizes, times, ETags, sort orders). pyarrow's default pool (mimalloc) backs them with
    transparent huge pages and purges them when freed, so the kernel zeroes fresh 2 MB pages
    again and again, more with every extra column; ``malloc`` reuses freed memory. Buffers
    allocated before keep their own pool, so switching at any point is safe
    (benchmarks/README.md, "Arrow's memory pool in the driver")."""
    pa.set_memory_pool(pa.system_memory_pool())


def run_enhance(config: EnhanceConfig, *, log: Callable[[str], None] | None = None,
                shutdown: bool = True) -> RunSummary:
    """Run the enhancement job (see the module docstring); the run's summary.

    Raises :class:`~dce_batch.errors.RunInterrupted` after a stop request (the finished images are
    committed), a :class:`~dce_batch.errors.ConfigError` for invalid arguments, other
    :class:`~dce_batch.errors.DceBatchError` types for failures at run time. ``shutdown=False``
    leaves a local Ray this call started running (the CLI exits right after). The HTML report is
    the caller's: :func:`dce_batch.report.report_after_run` builds it as ``dce-batch enhance`` does.
    """
    say = _silent if config.quiet else (log or _say_to_stderr)
    use_driver_memory_pool()
    started = time.time()
    timings: dict[str, float] = {}
    output = Location.parse(config.output, config.s3)
    check_output_location(config, output)
    blob, name = read_weights_spec(config)  # a missing file or unknown name fails here, before OUTPUT is touched
    weights = resolve_weights(config, blob, name)
    local = config.engine == "local" or _could_run_locally(config)
    check_precision(config, weights.meta.variant, local=local)
    timings["weights_s"] = time.time() - started
    missing = _missing_paths(output)
    store = ManifestStore.of(output)
    stop = StopRequest().install()
    lease = None
    engine = None
    refused = False
    try:
        if local:
            from dce_batch.job.engines.local import LocalEngine

            # Sized here, before OUTPUT is touched. The workers start (and import torch) while the
            # driver plans; if the plan turns out too large for them, Ray takes over and they are
            # dismissed.
            engine = LocalEngine(config, output, weights.blob, weights.name)
        check_output_writable(output)
        if lease_supported(output.filesystem):
            # One holder for every try: a create whose answer was lost is then found again as this
            # run's own lease, not another live run's.
            lease_started_at = time.time()
            lease = call_through_outages(
                lambda: acquire_lease(store, config.run_id, command=" ".join(sys.argv)[:500],
                                      started_at=lease_started_at),
                wait_s=outage_wait_s(output.filesystem), what=f"taking the lease of OUTPUT {output.uri}",
                final_if_never_connected=True)
            if lease.taken_over:
                say(f"took over OUTPUT's lease from {lease.taken_over}")
        else:
            say(f"warning: {output.uri} offers no conditional writes, so nothing stops a second run on it: run one "
                "job at a time per OUTPUT")
        lease_started = datetime.fromtimestamp(lease.holder.started_at if lease else started, timezone.utc)
        dead_runs = {lease.previous.run_id} if lease and lease.previous else set()
        preparing = _Background(lambda: prepare(config, output, store, weights, lease_started=lease_started,
                                                dead_runs=dead_runs, warn=_warn))
        if engine is not None:
            engine.start()
            prepared = preparing.result(stop)
            if choose_engine(config, prepared.plan.todo.num_rows) != "local":
                engine.close(cancel=True)
                engine = None
        if engine is None:
            from dce_batch.job.engines.ray import RayEngine

            engine = RayEngine(config, say, shutdown=shutdown)
            engine.start()
            stop.reinstall()  # ray.init installs its own SIGTERM handler
            timings["ray_ready_s"] = time.time() - started
        prepared = preparing.result(stop)
        timings["planned_s"] = time.time() - started
        return _run(config, output, store, weights, prepared, engine, stop, lease, started, timings, say)
    except (ConfigError, WeightsError):
        refused = True
        raise
    finally:
        if engine is not None:
            engine.close(cancel=True)
        if lease is not None:
            lease.release()
        stop.restore()
        if refused:
            _remove_missing_paths(output, missing)


def _missing_paths(output: Location) -> list[str]:
    """The folders of a local OUTPUT (OUTPUT itself, the folders above it, its ``_manifest``)
    and the lease's lock file that do not exist yet: what a run refused with exit 2 removes
    again, leaving OUTPUT as it found it. Object stores have no folders, and their lease
    object is deleted on release."""
    if not isinstance(output.filesystem, pafs.LocalFileSystem):
        return []
    store = ManifestStore.of(output)
    missing = [p for p in (f"{store.lease_path}.lock", store.path) if not os.path.lexists(p)]
    folder = output.path
    while folder and not os.path.lexists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        folder = parent if parent != folder else ""
    return missing


def _remove_missing_paths(output: Location, missing: list[str]) -> None:
    """Remove what :func:`_missing_paths` found missing, as far as it is this run's alone: the lock
    file only while no lease exists, a folder only when it is empty (best effort: the refusal is
    what the caller needs to see)."""
    from dce_batch.storage.conditional import discard_local_lock

    store = ManifestStore.of(output)
    for path in missing:
        try:
            if path == f"{store.lease_path}.lock":
                discard_local_lock(store.lease_path)
            else:
                os.rmdir(path)
        except OSError:
            continue


def _run(config, output, store, weights, prepared: Prepared, engine, stop: StopRequest, lease, started: float,
         timings: dict[str, float], say) -> RunSummary:
    plan = prepared.plan
    meta = weights.meta
    summary = RunSummary(
        run_id=config.run_id, input=config.input, output=output.uri,
        started_at=datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        model={"name": meta.name, "variant": meta.variant, "sha256": meta.sha256,
               "parameters": meta.num_params, "source": meta.source},
        settings=config.settings_record(), versions=_versions(), timings=timings,
    )
    summary.refused, summary.changed = plan.refused.num_rows, plan.changed
    # Sizing the pool may still refuse the run (a cluster too small). Then it goes ahead, and from
    # here on changes OUTPUT.
    worker_plan, resources = engine.plan() if plan.todo.num_rows else (None, None)
    if config.overwrite:
        store.delete_all()
    clear_debris(output, prepared)
    ledger = PartLedger(store)
    for part in prepared.adopted:
        ledger.add_written(part)
        summary.adopted_rows += part.rows
    say(f"run {config.run_id}: {plan.total} inputs in {config.input}: {plan.todo.num_rows} to enhance"
        + (f" ({plan.changed} changed since they were enhanced)" if plan.changed else "")
        + f", {plan.skipped.num_rows} already done, {plan.refused.num_rows} refused; model {meta.name} ({meta.variant})"
        + (f"; adopted {summary.adopted_rows} rows of {len(prepared.adopted)} parts of an interrupted run"
           if prepared.adopted else "")
        + (f"; removed {prepared.removed_temp_files} temp files of writes an interrupted run never finished"
           if prepared.removed_temp_files else "")
        + (f"; aborted {prepared.aborted_uploads} unfinished uploads" if prepared.aborted_uploads else ""))
    _write_planning_rows(config, store, ledger, summary, plan)
    progress = Progress(plan.todo.num_rows, quiet=config.quiet, interval_s=config.progress_interval_s,
                        interactive=False if config.verbose else None,
                        started=time.monotonic() - (time.time() - started))
    status = "failed"
    try:
        if worker_plan is not None:
            summary.cluster = {"engine": engine.name, "resources": resources, "workers": worker_plan.describe()}
            say(_describe_pool(engine, worker_plan, config))
            _warn_of_the_pixel_limit(worker_plan, say)
            for batch in engine.batches(plan.todo, worker_plan, prepared.input_fs, output, weights):
                if batch is not None:
                    if "first_batch_s" not in timings:
                        timings["first_batch_s"] = time.time() - started
                    ledger.add(batch)
                    summary.add(batch.rows)
                    progress.update_batch(batch.rows)
                if stop.requested:
                    status = "interrupted"
                    break
                if lease is not None:
                    lease.check()
        if status != "interrupted":
            status = "finished"
    finally:
        progress.close()
        # What finished is kept whatever ended the run: the workers stop first, then the driver
        # writes the parts they have not, and the commit record (best effort when OUTPUT itself
        # is what failed).
        engine.close(cancel=status != "finished")
        try:
            if lease is not None and lease.lost is not None:
                # Another run holds OUTPUT now: this one writes nothing more. The parts its workers
                # wrote are adopted by that run or the next; rows only held here are redone.
                raise lease.lost
            ledger.write_held()
            present = store.part_names()  # one listing for both checks
            lost = ledger.drop_lost(config.run_id, present)
            if lost:
                _warn(f"the storage acknowledged {len(lost)} manifest part(s) of this run that it does not hold "
                      f"({sum(info.rows for info in lost):,} rows, e.g. {lost[0].name}); the commit leaves them out and "
                      "the next run redoes those inputs. Check the storage: it lost writes it had confirmed")
            strays, duplicates = ledger.settle_strays(config.run_id, warn=_warn, present=present)
            if strays:
                say(f"{strays} manifest part(s) written by workers that died before replying: {duplicates} rows "
                    "their batches' retries wrote again were dropped from them")
            if status == "finished":
                summary.finish(progress.elapsed_s, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                store.write_summary(config.run_id, summary.to_json())
            store.write_commit(CommitRecord(
                run_id=config.run_id, status=status, parts=ledger.parts(),
                counts={"ok": summary.ok, "error": summary.error, "skipped": summary.skipped,
                        "refused": summary.refused, "changed": summary.changed},
                adopted=[p.name for p in prepared.adopted]))
        except DceBatchError as exc:
            if status == "finished":
                raise
            say(f"warning: could not commit the rows of this run ({describe_error(exc)}); the next run adopts "
                "the parts that were written")
    if status == "interrupted":
        raise _interrupted(stop)
    return summary


def _write_planning_rows(config, store: ManifestStore, ledger: PartLedger, summary: RunSummary, plan: Plan) -> None:
    """Skipped and refused rows, written by the driver (large tables in slices of a part each)."""
    sequence = 0
    for table in (plan.skipped, plan.refused):
        for start in range(0, table.num_rows, config.part_rows):
            piece = table.slice(start, config.part_rows)
            summary.add(piece)
            ledger.add_written(store.write_part(part_name(config.run_id, "plan", sequence), piece))
            sequence += 1


def _describe_pool(engine, plan, config) -> str:
    where = (f"{engine.workers} local processes (no cluster running: starting Ray would cost more than it saves; "
             "--engine ray to use it)" if engine.name == "local" else
             f"Ray: actors {plan.min_size}..{plan.max_size} x (CPU {plan.cpus_per_worker:g}, GPU "
             f"{plan.gpus_per_worker:g}, memory {plan.memory_per_worker / 2**30:.1f} GiB)")
    return (f"{'staged' if plan.staged else 'fused'} pipeline in {where}; {plan.images_per_call} images per call of up "
            f"to {plan.image_pixel_limit / 1e6:g} MP (pool limited by {plan.limited_by}), precision {config.precision}")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import PIL

    return {"dce_batch": __version__, "ray": version("ray"), "torch": version("torch"), "pillow": PIL.__version__,
            "pyarrow": pa.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}


