"""What the report shows, read from a run's summaries and manifest rows: plain dataclasses, no HTML.

Reading the manifest happens in exactly two functions, :func:`read_run_summaries` and
:func:`read_manifest_rows`; everything else here works on what they return.

Which run the page shows:

* **The run** (:attr:`ReportData.run_id`) is the one asked for, else the latest finished run (the
  latest with a ``_run-<id>.json`` summary; the latest run at all if none finished, with a
  notice). Its ``skipped`` rows are resolved to the earlier ``ok`` row that made their output, so
  pairs, histograms and slowest images cover every output the run left under OUTPUT.
* **The headline** (:attr:`ReportData.headline`) gives that run's own figures, unless it enhanced
  nothing (a rerun with nothing to do, or one that only retried failures): then the figures at
  the top are those of the latest earlier finished run that did enhance images, and a notice says
  so. A rerun that had nothing to do thus leaves the page's figures as the work left them, where
  a user looks for them, instead of "0 enhanced, 0.00 images/s".
* **Huge manifests.** Only the needed columns are read and everything is computed with Arrow;
  pairs are an evenly spaced, deterministic sample (by input URI) of at most ``max_pairs``; the
  failed list holds the first :data:`MAX_FAILED_ROWS`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.enhance.registry import read_safetensors_metadata
from dce_batch.errors import DceBatchError, ReportError, StorageError, describe_error
from dce_batch.job.manifest import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, RunSummary, read_manifest
from dce_batch.storage import MANIFEST_DIR, Location, S3Options, filesystem_for, read_bytes

__all__ = [
    "DEFAULT_MAX_PAIRS", "MAX_FAILED_ROWS", "SLOWEST_ROWS", "ClusterInfo", "Counts", "FailedInput", "ModelInfo",
    "Pair", "ReportData", "RunFigures", "TimedImage", "TrainingRun", "collect_report_data", "read_manifest_rows",
    "read_run_summaries", "read_safetensors_metadata", "sample_evenly", "training_history",
]

DEFAULT_MAX_PAIRS = 24
MAX_FAILED_ROWS = 200
SLOWEST_ROWS = 10

# Manifest columns the report reads; any other column is ignored.
COLUMNS = ["run_id", "input_uri", "output_uri", "status", "error", "width", "height", "bytes_in", "bytes_out",
           "mean_luma_in", "mean_luma_out", "duration_ms", "worker", "finished_at"]
# Columns an ok row lends to the skipped row whose output it made.
_RESOLVED = ["width", "height", "bytes_in", "bytes_out", "mean_luma_in", "mean_luma_out", "duration_ms",
             "worker", "finished_at", "run_id"]


# --------------------------------------------------------------------------------------------
# What the page shows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """A run's manifest rows by status."""

    total: int = 0
    ok: int = 0
    skipped: int = 0
    error: int = 0


@dataclass(frozen=True)
class RunFigures:
    """The headline: one run's counts (from its rows) and speed (from its summary)."""

    run_id: str
    counts: Counts
    started_at: str | None = None
    finished_at: str | None = None
    elapsed_s: float | None = None
    images_per_s: float | None = None
    megapixels_per_s: float | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None


@dataclass(frozen=True)
class Pair:
    """One sampled before/after pair."""

    input_uri: str
    output_uri: str
    name: str  # the input's path relative to the run's INPUT
    width: int | None
    height: int | None
    mean_luma_in: float | None
    mean_luma_out: float | None
    made_by: str  # the run that wrote the output ("?" when no row says)


@dataclass(frozen=True)
class TimedImage:
    """One of the slowest images."""

    input_uri: str
    name: str
    status: str
    width: int | None
    height: int | None
    duration_ms: float
    worker: str | None
    made_by: str


@dataclass(frozen=True)
class FailedInput:
    input_uri: str
    name: str
    error: str


@dataclass(frozen=True)
class ModelInfo:
    name: str | None = None
    variant: str | None = None
    parameters: int | None = None
    sha256: str | None = None
    source: str | None = None
    licence: str | None = None  # from the weights' own metadata, when it can be read
    data: str | None = None


@dataclass(frozen=True)
class ClusterInfo:
    """The pool that enhanced the images, from the run summary's ``cluster`` record."""

    engine: str  # "ray" or "local"
    min_actors: int | None = None
    max_actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    memory_per_actor: int | None = None  # bytes
    largest_image_pixels: int | None = None  # the largest image an actor takes
    limited_by: str | None = None  # "CPU", "GPU", "memory" or "--num-actors"
    limit_reason: str | None = None  # why the largest image is below --max-pixels
    staged: bool = False
    cluster_cpus: float | None = None
    cluster_gpus: float | None = None
    cluster_memory: float | None = None  # bytes


@dataclass(frozen=True)
class TrainingRun:
    """The loss curves of one training run of the model: ``(epoch, loss)`` points."""

    run: str
    source: str
    epochs: int
    train: tuple[tuple[float, float], ...]
    validation: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows (see :func:`collect_report_data`)."""

    output_uri: str
    input_uri: str  # the run's INPUT ("" when no summary says)
    run_id: str  # the run whose outputs the page shows
    finished: bool  # that run wrote its summary
    counts: Counts  # that run's rows
    headline: RunFigures  # the figures at the top (see the module docstring)
    model: ModelInfo
    cluster: ClusterInfo | None
    settings: dict[str, Any]
    versions: dict[str, str]
    runs: list[str]  # every run_id in the manifest, oldest first
    pairs: list[Pair]
    outputs_total: int  # outputs of the run (ok + resolved skipped): what the pairs sample from
    luma_in: np.ndarray
    luma_out: np.ndarray
    slowest: list[TimedImage]
    failed: list[FailedInput]
    failed_total: int
    errors_by_type: dict[str, int]
    notices: list[str] = field(default_factory=list)
    training: list[TrainingRun] = field(default_factory=list)

    @property
    def median_luma_in(self) -> float | None:
        return float(np.median(self.luma_in)) if self.luma_in.size else None

    @property
    def median_luma_out(self) -> float | None:
        return float(np.median(self.luma_out)) if self.luma_out.size else None


# --------------------------------------------------------------------------------------------
# Reading the manifest: the only two functions that know its layout
# --------------------------------------------------------------------------------------------


def read_run_summaries(output: Location, *, warn: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """``run_id -> summary`` for every ``_run-<run_id>.json`` under OUTPUT's manifest folder.

    A summary that cannot be read, is not a JSON object, or has a field of another type than
    :class:`~dce_batch.job.manifest.RunSummary` writes is skipped (its run counts as unfinished),
    and ``warn`` is told which and why."""
    fs = output.filesystem
    manifest_path = output.child(MANIFEST_DIR)
    try:
        infos = fs.get_file_info(pafs.FileSelector(manifest_path, allow_not_found=True, recursive=False))
    except OSError as exc:
        raise StorageError(f"cannot list {output.child_uri(MANIFEST_DIR)}: {exc}") from exc
    summaries = {}
    for info in infos:
        if info.type == pafs.FileType.File and info.base_name.startswith("_run-") and info.base_name.endswith(".json"):
            try:
                summary = json.loads(read_bytes(fs, info.path))
                problem = _summary_problem(summary)
            except (ValueError, StorageError) as exc:
                problem = f"it cannot be read ({describe_error(exc)})"
            if problem is not None:
                if warn is not None:
                    warn(f"skipped the run summary {output.child_uri(MANIFEST_DIR + '/' + info.base_name)}: {problem}; "
                         "its run counts as unfinished")
                continue
            summaries[str(summary.get("run_id") or info.base_name[5:-5])] = summary
    return summaries


@functools.lru_cache(maxsize=1)
def _summary_field_types() -> dict[str, tuple[type, ...]]:
    """The JSON types of each field :class:`RunSummary` writes (a float field takes an integer too)."""
    hints = typing.get_type_hints(RunSummary)
    json_types = {float: (int, float), int: (int,), str: (str,), dict: (dict,), list: (list,)}
    return {f.name: json_types[typing.get_origin(hints[f.name]) or hints[f.name]] for f in dataclasses.fields(RunSummary)}


def _summary_problem(summary: Any) -> str | None:
    """Why a parsed run summary cannot be used, or None."""
    if not isinstance(summary, dict):
        return f"it holds a JSON {type(summary).__name__}, not an object"
    for name, kinds in _summary_field_types().items():
        value = summary.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            return f"its field {name!r} is a {type(value).__name__}, not a {' or '.join(k.__name__ for k in kinds)}"
    return None


def read_manifest_rows(output: Location) -> pa.Table:
    """Every run's rows under OUTPUT, the :data:`COLUMNS` only, with full input and output URIs
    (the manifest records output paths relative to OUTPUT: they are joined to where OUTPUT is now)."""
    rows = read_manifest(output)
    prefix = output.uri.rstrip("/") + "/"
    output_uri = pc.binary_join_element_wise(pa.scalar(prefix), rows["output_relpath"], "")
    rows = rows.append_column("output_uri", output_uri)
    return rows.select(COLUMNS)


# --------------------------------------------------------------------------------------------
# Choosing the run
# --------------------------------------------------------------------------------------------


def order_runs(manifest: pa.Table, summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Run ids, oldest first: by start time when a summary says it, else by their first row."""
    first_row: dict[str, Any] = {}
    if manifest.num_rows:
        grouped = manifest.group_by("run_id").aggregate([("finished_at", "min")])
        first_row = dict(zip(grouped["run_id"].to_pylist(), grouped["finished_at_min"].to_pylist()))

    def first(run_id: str) -> str:
        when = first_row.get(run_id)
        return when.isoformat() if when is not None else ""

    def start(run_id: str) -> str:
        return str((summaries.get(run_id) or {}).get("started_at") or first(run_id))

    # Summaries give start times to the second; the first row breaks ties between runs started in one.
    return sorted(set(first_row) | set(summaries), key=lambda r: (start(r), first(r), r))


def pick_run(runs: Sequence[str], summaries: Mapping[str, Any]) -> tuple[str, bool]:
    """The latest finished run, else the latest run; and whether it finished."""
    finished = [r for r in runs if r in summaries]
    if finished:
        return finished[-1], True
    if not runs:
        raise ReportError("no run found")
    return runs[-1], False


def pick_headline_run(runs: Sequence[str], summaries: Mapping[str, Any], enhanced: Mapping[str, int],
                      run_id: str) -> str:
    """The run whose figures head the page: ``run_id`` when it enhanced images, else the latest
    earlier finished run that did (``run_id`` when there is none).

    ``enhanced`` maps run ids to their ``ok`` row counts.
    """
    if enhanced.get(run_id, 0) > 0:
        return run_id
    earlier = runs[:runs.index(run_id)] if run_id in runs else []
    worked = [r for r in earlier if r in summaries and enhanced.get(r, 0) > 0]
    return worked[-1] if worked else run_id


def count_rows(manifest: pa.Table, run_id: str) -> Counts:
    statuses = _where(manifest, pc.equal(manifest["run_id"], run_id))["status"]

    def count(status: str) -> int:
        return int(pc.sum(pc.equal(statuses, status)).as_py() or 0)

    return Counts(total=len(statuses), ok=count(STATUS_OK), skipped=count(STATUS_SKIPPED), error=count(STATUS_ERROR))


def _ok_rows_by_run(manifest: pa.Table) -> dict[str, int]:
    ok = manifest.filter(pc.equal(manifest["status"], STATUS_OK)).select(["run_id"])
    if not ok.num_rows:
        return {}
    grouped = ok.group_by("run_id").aggregate([([], "count_all")])
    return dict(zip(grouped["run_id"].to_pylist(), grouped["count_all"].to_pylist()))


def _where(table: pa.Table, mask: pa.ChunkedArray | pa.Array) -> pa.Table:
    """``table.filter(mask)``, without the copy when every row is kept (the common one-run case)."""
    return table if pc.all(mask).as_py() in (True, None) else table.filter(mask)


def resolve_outputs(manifest: pa.Table, run_id: str) -> pa.Table:
    """The run's outputs: its ``ok`` rows, plus its ``skipped`` rows with the columns of the
    latest earlier ``ok`` row for the same input and output (column ``made_by``: that run).

    Skipped rows whose making row is not in the manifest any more keep nulls.
    """
    run = _where(manifest, pc.equal(manifest["run_id"], run_id))
    ok = _where(run, pc.equal(run["status"], STATUS_OK))
    ok = ok.append_column("made_by", ok["run_id"])
    skipped = run.filter(pc.equal(run["status"], STATUS_SKIPPED))
    if skipped.num_rows == 0:
        return ok
    earlier = manifest.filter(pc.and_(pc.equal(manifest["status"], STATUS_OK), pc.not_equal(manifest["run_id"], run_id)))
    keys = ["input_uri", "output_uri"]
    if earlier.num_rows:
        # Latest earlier ok row per (input, output): sort by time, keep the last of each group.
        earlier = earlier.sort_by([("finished_at", "ascending")]).select(keys + _RESOLVED)
        latest = earlier.group_by(keys, use_threads=False).aggregate([(c, "last") for c in _RESOLVED])
        latest = latest.rename_columns([c.removesuffix("_last") for c in latest.column_names])
        latest = latest.rename_columns(["made_by" if c == "run_id" else c for c in latest.column_names])
        resolved = skipped.select(["run_id", "input_uri", "output_uri", "status", "error"]).join(
            latest, keys=keys, join_type="left outer", use_threads=False)
    else:
        resolved = skipped.select(["run_id", "input_uri", "output_uri", "status", "error"])
        for name in _RESOLVED:
            if name != "run_id":
                resolved = resolved.append_column(name, pa.nulls(resolved.num_rows, manifest.schema.field(name).type))
        resolved = resolved.append_column("made_by", pa.nulls(resolved.num_rows, pa.string()))
    # Left joins make every column nullable; give the ok rows the same schema to concatenate.
    schema = pa.schema([f.with_nullable(True) for f in ok.schema])
    return pa.concat_tables([ok.cast(schema), resolved.select(ok.column_names).cast(schema)])


def sample_evenly(count: int, k: int) -> list[int]:
    """``k`` evenly spaced indices of ``range(count)`` (all of them when ``count <= k``)."""
    if k <= 0 or count <= 0:
        return []
    if count <= k:
        return list(range(count))
    return [int(i * count / k + count / (2 * k)) for i in range(k)]


def relative_name(uri: str, root: str) -> str:
    """``uri`` relative to the folder ``root`` when inside it, else its base name."""
    root = root.rstrip("/")
    if root and uri.startswith(root + "/"):
        return uri[len(root) + 1:]
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


# --------------------------------------------------------------------------------------------
# Summary records
# --------------------------------------------------------------------------------------------


def run_figures(run_id: str, counts: Counts, summary: Mapping[str, Any]) -> RunFigures:
    return RunFigures(
        run_id=run_id, counts=counts, started_at=_text(summary.get("started_at")),
        finished_at=_text(summary.get("finished_at")), elapsed_s=_number(summary.get("elapsed_s")),
        images_per_s=_number(summary.get("images_per_s")), megapixels_per_s=_number(summary.get("megapixels_per_s")),
        bytes_in=_integer(summary.get("bytes_in")), bytes_out=_integer(summary.get("bytes_out")),
    )


def model_info(summary: Mapping[str, Any], weights_meta: Mapping[str, Any]) -> ModelInfo:
    model = summary.get("model") or {}
    return ModelInfo(name=_text(model.get("name")), variant=_text(model.get("variant")),
                     parameters=_integer(model.get("parameters")), sha256=_text(model.get("sha256")),
                     source=_text(model.get("source")), licence=_text(weights_meta.get("licence")),
                     data=_text(weights_meta.get("data")))


def cluster_info(summary: Mapping[str, Any]) -> ClusterInfo | None:
    """The summary's ``cluster`` record as a :class:`ClusterInfo`; None when the run started no
    pool (a rerun with nothing to do) or the record is not there."""
    record = summary.get("cluster")
    if not isinstance(record, Mapping) or not record.get("engine"):
        return None
    actors = record.get("actors") if isinstance(record.get("actors"), Mapping) else {}
    resources = record.get("resources") if isinstance(record.get("resources"), Mapping) else {}
    num_actors = (summary.get("settings") or {}).get("num_actors")
    return ClusterInfo(
        engine=str(record["engine"]), min_actors=_integer(actors.get("min_size")),
        max_actors=_integer(actors.get("max_size")), cpus_per_actor=_number(actors.get("cpus_per_actor")),
        gpus_per_actor=_number(actors.get("gpus_per_actor")), memory_per_actor=_integer(actors.get("memory_per_actor")),
        largest_image_pixels=_integer(actors.get("image_pixel_limit")),
        # A pool sized by --num-actors was not limited by the cluster, whatever the plan defaulted to.
        limited_by="--num-actors" if num_actors else _text(actors.get("limited_by")),
        limit_reason=_text(actors.get("limit_reason")), staged=bool(actors.get("staged")),
        cluster_cpus=_number(resources.get("CPU")), cluster_gpus=_number(resources.get("GPU")),
        cluster_memory=_number(resources.get("memory")),
    )


def _nothing_done(counts: Counts) -> str:
    """What a run that enhanced no image did, for a notice."""
    if counts.error:
        done = f"{counts.skipped:,} input{' was' if counts.skipped == 1 else 's were'} enhanced before"
        return f"enhanced nothing: {done} and {counts.error:,} failed (listed below)"
    if counts.skipped == 0:
        return "had nothing to do: it found no inputs"
    if counts.skipped == 1:
        return "had nothing to do: its one input was enhanced before"
    return f"had nothing to do: all {counts.skipped:,} of its inputs were enhanced before"


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


# --------------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------------


def collect_report_data(output: Location, *, s3: S3Options | None = None, max_pairs: int = DEFAULT_MAX_PAIRS,
                        run_id: str | None = None, warn: Callable[[str], None] | None = None) -> ReportData:
    """Read the summaries, manifest rows and the model's training history of the runs under
    ``output`` and compute what the page shows. ``warn`` is told of each run summary skipped
    (see :func:`read_run_summaries`); the page shows them as notices.

    Raises:
        ReportError: there is no run under ``output``, or no run ``run_id``.
        StorageError: the manifest cannot be read.
    """
    unusable: list[str] = []  # summaries skipped, and why: warned about and shown on the page
    summaries = read_run_summaries(output, warn=unusable.append)
    for line in unusable:
        if warn is not None:
            warn(line)
    manifest = read_manifest_rows(output)
    runs = order_runs(manifest, summaries)
    if not runs:
        raise ReportError(f"no run manifest under {output.uri}/{MANIFEST_DIR}: run `dce-batch enhance INPUT "
                          f"{output.uri}` first, or check the OUTPUT path")
    if run_id is None:
        run_id, finished = pick_run(runs, summaries)
    elif run_id not in runs:
        raise ReportError(f"run {run_id!r} is not in the manifest under {output.uri}; runs: {', '.join(runs)}")
    else:
        finished = run_id in summaries
    counts = count_rows(manifest, run_id)
    headline_id = pick_headline_run(runs, summaries, _ok_rows_by_run(manifest), run_id)
    # The run that enhanced the images says how they were made (a rerun with nothing to do
    # started no pool and has no cluster to show).
    summary = dict(summaries.get(headline_id) or {})
    headline_counts = counts if headline_id == run_id else count_rows(manifest, headline_id)
    input_root = str(summary.get("input") or (summaries.get(run_id) or {}).get("input") or "")

    notices = [line[0].upper() + line[1:] + "." for line in unusable]
    if not finished:
        notices.append(f"Run {run_id} did not finish (it wrote no run summary): the report shows the rows it "
                       "wrote; run dce-batch enhance again with the same OUTPUT to finish it.")
    later = runs[runs.index(run_id) + 1:]
    unfinished = [r for r in later if r not in summaries]
    if unfinished:
        notices.append(f"Later runs that did not finish are not shown: {', '.join(unfinished)}.")
    if len(unfinished) < len(later):  # only when a run was asked for by its id
        notices.append(f"Later finished runs are not shown: {', '.join(r for r in later if r in summaries)}.")
    if headline_id != run_id:
        started = (summaries.get(run_id) or {}).get("started_at")
        notices.append(f"Run {run_id}{f' (started {started})' if started else ''} {_nothing_done(counts)}. The "
                       f"figures at the top are those of run {headline_id}, the latest run that enhanced images.")

    outputs = resolve_outputs(manifest, run_id)
    if counts.skipped:
        made_by = pc.fill_null(outputs["made_by"], "")
        earlier = pc.and_(pc.not_equal(made_by, ""),
                          pc.invert(pc.is_in(made_by, value_set=pa.array([run_id, headline_id]))))
        by_earlier = int(pc.sum(earlier).as_py() or 0)
        if by_earlier:
            makers = sorted(set(made_by.filter(earlier).unique().to_pylist()))
            notices.append(f"{by_earlier:,} outputs were made by earlier runs ({', '.join(makers)}); they are "
                           "included below with the figures of the run that made them.")
    unresolved = int(pc.sum(pc.is_null(outputs["made_by"])).as_py() or 0)
    if unresolved:
        notices.append(f"{unresolved:,} skipped outputs have no earlier ok row in the manifest; their sizes, "
                       "brightness and times are unknown.")

    # Column-wise (not whole-table filters and sorts): a million-row manifest stays a few columns.
    has_luma = pc.and_(pc.is_valid(outputs["mean_luma_in"]), pc.is_valid(outputs["mean_luma_out"]))
    luma_in = outputs["mean_luma_in"].filter(has_luma).to_numpy().astype(np.float64)
    luma_out = outputs["mean_luma_out"].filter(has_luma).to_numpy().astype(np.float64)

    by_input = pc.sort_indices(outputs["input_uri"])
    picked = outputs.take(by_input.take(pa.array(sample_evenly(outputs.num_rows, max_pairs), pa.int64())))
    pairs = [Pair(input_uri=r["input_uri"], output_uri=r["output_uri"], name=relative_name(r["input_uri"], input_root),
                  width=r["width"], height=r["height"], mean_luma_in=r["mean_luma_in"],
                  mean_luma_out=r["mean_luma_out"], made_by=r["made_by"] or "?")
             for r in picked.to_pylist()]

    run_rows = _where(manifest, pc.equal(manifest["run_id"], run_id))
    errors = run_rows.filter(pc.equal(run_rows["status"], STATUS_ERROR))
    slowest = _slowest(outputs, errors, run_id, input_root)

    errors_by_type: dict[str, int] = {}
    if errors.num_rows:
        kinds = pc.utf8_slice_codeunits(errors["error"].fill_null("Error: unknown"), 0, 200).to_pylist()
        for kind in (str(k).split(":", 1)[0] for k in kinds):
            errors_by_type[kind] = errors_by_type.get(kind, 0) + 1
        errors_by_type = dict(sorted(errors_by_type.items(), key=lambda kv: (-kv[1], kv[0])))
    failed = [FailedInput(input_uri=r["input_uri"], name=relative_name(r["input_uri"], input_root),
                          error=r["error"] or "unknown error")
              for r in errors.sort_by([("input_uri", "ascending")]).slice(0, MAX_FAILED_ROWS)
              .select(["input_uri", "error"]).to_pylist()]

    weights_meta, training = training_history(summary, s3)
    return ReportData(
        output_uri=output.uri, input_uri=input_root, run_id=run_id, finished=finished, counts=counts,
        headline=run_figures(headline_id, headline_counts, summary), model=model_info(summary, weights_meta),
        cluster=cluster_info(summary), settings=dict(summary.get("settings") or {}),
        versions={str(k): str(v) for k, v in (summary.get("versions") or {}).items()}, runs=runs, pairs=pairs,
        outputs_total=outputs.num_rows, luma_in=luma_in, luma_out=luma_out, slowest=slowest, failed=failed,
        failed_total=errors.num_rows, errors_by_type=errors_by_type, notices=notices, training=training,
    )


def _slowest(outputs: pa.Table, errors: pa.Table, run_id: str, input_root: str) -> list[TimedImage]:
    """The slowest images: of the run's own work and of the outputs it kept from earlier runs."""
    columns = ["input_uri", "status", "width", "height", "duration_ms", "worker", "made_by"]
    worked = pa.concat_tables([
        outputs.select(columns),
        errors.append_column("made_by", pa.array([run_id] * errors.num_rows, pa.string())).select(columns),
    ], promote_options="permissive")
    worked = worked.filter(pc.is_valid(worked["duration_ms"]))
    if not worked.num_rows:
        return []
    top = pc.select_k_unstable(worked, k=min(SLOWEST_ROWS, worked.num_rows), sort_keys=[("duration_ms", "descending")])
    return [TimedImage(input_uri=r["input_uri"], name=relative_name(r["input_uri"], input_root), status=r["status"],
                       width=r["width"], height=r["height"], duration_ms=float(r["duration_ms"]), worker=r["worker"],
                       made_by=r["made_by"] or "?")
            for r in worked.take(top).sort_by([("duration_ms", "descending")]).to_pylist()]


# --------------------------------------------------------------------------------------------
# Training history (loss curves) of the weights
# --------------------------------------------------------------------------------------------


def training_history(summary: Mapping[str, Any], s3: S3Options | None) -> tuple[dict[str, Any], list[TrainingRun]]:
    """(weights metadata, training runs with per-epoch losses) for the run's model, when known.

    Shipped weights are found by their tensor checksum in the registry (their sidecars hold the
    curves). Other .safetensors weights point to their training run's metrics.json by a
    ``metrics_uri`` in their recipe (or metrics) metadata; ``dce-batch train --export`` records
    it. Anything missing just means no curves.
    """
    from dce_batch.models import weights_for_sha256

    model = summary.get("model") or {}
    shipped = weights_for_sha256(str(model.get("sha256") or ""))
    if shipped is not None:
        return dict(shipped.meta), [_training_run(r.get("run"), r.get("source"), r.get("history"))
                                    for r in shipped.training if isinstance(r, Mapping)]
    spec = (summary.get("settings") or {}).get("weights")
    if not spec:
        return {}, []
    try:
        fs, path = filesystem_for(str(spec), s3)
        try:
            meta = read_safetensors_metadata(read_bytes(fs, path)) or {}
        except DceBatchError:  # damaged metadata: no curves, not a failed report
            meta = {}
    except (DceBatchError, OSError):
        return {}, []
    pointer = (meta.get("recipe") or {}).get("metrics_uri") or (meta.get("metrics") or {}).get("metrics_uri")
    if not pointer:
        return meta, []
    try:
        fs, path = filesystem_for(str(pointer), s3)
        metrics = json.loads(read_bytes(fs, path))
    except (DceBatchError, OSError, ValueError):
        return meta, []
    if not isinstance(metrics, Mapping):
        return meta, []
    return meta, [_training_run(metrics.get("run", meta.get("name", "")), str(pointer), metrics.get("history"))]


def _training_run(run: Any, source: Any, history: Any) -> TrainingRun:
    epochs = [e for e in (history if isinstance(history, list) else []) if isinstance(e, Mapping) and "epoch" in e]

    def curve(key: str) -> tuple[tuple[float, float], ...]:
        points = ((_number(e["epoch"]), _number(e.get(key))) for e in epochs)
        return tuple((x, y) for x, y in points if x is not None and y is not None)

    return TrainingRun(run=str(run or ""), source=str(source or ""), epochs=len(epochs), train=curve("train_loss"),
                       validation=curve("val_loss"))
