"""An HTML report of a finished run: ``OUTPUT/_report/index.html``.

    dce-batch report OUTPUT                 # local folder or s3://bucket/prefix
    build_report("s3://bucket/enhanced")    # -> "s3://bucket/enhanced/_report/index.html"

What it shows, from the run's manifest and summary (``OUTPUT/_manifest/``):

* the run summary: counts, images/s, model, settings, versions, cluster;
* a sample of before/after pairs side by side, each linking to the full input and output;
* histograms of the images' brightness (mean Rec.709 luma) before and after;
* the slowest images, and the failed inputs with their reasons;
* the training loss curves of the weights, when their metadata points to them.

Decisions:

* **One self-contained file.** Thumbnails are JPEG data URIs and charts inline SVG; there is no
  script and no external asset (a Content-Security-Policy forbids any), so the page opens
  offline, from a bucket, or as an e-mail attachment, and no thumbnail file under OUTPUT can be
  mistaken for an input by a later run that reads OUTPUT.
* **Which run.** A manifest holds every run that wrote to OUTPUT. The report shows the latest
  finished run (the latest one with a ``_run-<id>.json`` summary; the latest run at all if none
  finished, with a warning). Its ``skipped`` rows are resolved to the earlier ``ok`` row that
  made their output, so pairs, histograms and slowest images cover every output of the run.
* **Huge manifests.** Only the needed columns are read and everything is computed with Arrow;
  pairs are an evenly spaced, deterministic sample (by input URI) of at most ``max_pairs``, and
  only those images are read. The failed table lists the first :data:`MAX_FAILED_ROWS`.
* **Links.** Local outputs are linked relatively (the report survives moving OUTPUT), local
  inputs as ``file://`` URLs. For ``s3://`` the links are presigned HTTPS GET URLs (boto3,
  ``pip install 'dce-batch[s3]'``) valid for ``presign_expires_s`` when credentials are
  available; anyone holding the file can then fetch those objects until they expire. Without
  boto3 or credentials (or with ``presign_expires_s=0``) the ``s3://`` URI is shown as text.
"""

from __future__ import annotations

import base64
import concurrent.futures
import html
import io
import json
import math
import posixpath
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.errors import DceBatchError, ReportError, StorageError, describe_error
from dce_batch.job.manifest import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, read_manifest
from dce_batch.storage import MANIFEST_DIR, Location, S3Options, filesystem_for, read_bytes, write_bytes_atomic

__all__ = ["DEFAULT_MAX_PAIRS", "REPORT_DIR", "ReportData", "build_report", "collect_report_data", "render_html"]

REPORT_DIR = "_report"
DEFAULT_MAX_PAIRS = 24
MAX_FAILED_ROWS = 200
SLOWEST_ROWS = 10
HISTOGRAM_BINS = 20
THUMBNAIL_SIDE = 360  # px, longest side; shown at up to 180 CSS px so it is sharp on 2x screens
THUMBNAIL_QUALITY = 82
THUMBNAIL_MAX_PIXELS = 150_000_000  # refuse to thumbnail decompression bombs
DEFAULT_PRESIGN_EXPIRES_S = 7 * 24 * 3600  # the longest SigV4 allows

# Manifest columns the report reads; any other (future) column is ignored.
COLUMNS = ["run_id", "input_uri", "output_uri", "status", "error", "width", "height", "bytes_in", "bytes_out",
           "mean_luma_in", "mean_luma_out", "duration_ms", "worker", "finished_at"]
# Columns an ok row lends to the skipped row whose output it made.
_RESOLVED = ["width", "height", "bytes_in", "bytes_out", "mean_luma_in", "mean_luma_out", "duration_ms",
             "worker", "finished_at", "run_id"]


# --------------------------------------------------------------------------------------------
# Data: what the report shows, computed from the manifest (no HTML here)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One sampled before/after pair."""

    input_uri: str
    output_uri: str
    width: int | None
    height: int | None
    mean_luma_in: float | None
    mean_luma_out: float | None
    made_by: str  # the run that wrote the output


@dataclass
class ReportData:
    """Everything the page shows (see :func:`collect_report_data`)."""

    run_id: str
    output_uri: str
    summary: dict[str, Any]
    finished: bool  # the run wrote its summary
    counts: dict[str, int]
    pairs: list[Pair]
    outputs_total: int  # outputs of the run (ok + resolved skipped): what the pairs sample from
    luma_in: np.ndarray
    luma_out: np.ndarray
    slowest: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    failed_total: int
    errors_by_type: dict[str, int]
    runs: list[str]  # every run_id in the manifest, oldest first
    notices: list[str] = field(default_factory=list)
    training: list[dict[str, Any]] = field(default_factory=list)
    weights_meta: dict[str, Any] = field(default_factory=dict)


def read_run_summaries(fs: pafs.FileSystem, manifest_path: str) -> dict[str, dict[str, Any]]:
    """``run_id -> summary`` for every ``_run-<run_id>.json`` under the manifest folder."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(manifest_path, allow_not_found=True, recursive=False))
    except OSError as exc:
        raise StorageError(f"cannot list {manifest_path}: {exc}") from exc
    summaries = {}
    for info in infos:
        if info.type == pafs.FileType.File and info.base_name.startswith("_run-") and info.base_name.endswith(".json"):
            try:
                summary = json.loads(read_bytes(fs, info.path))
            except (ValueError, StorageError):
                continue  # a damaged summary: the run counts as unfinished
            summaries[str(summary.get("run_id") or info.base_name[5:-5])] = summary
    return summaries


def order_runs(manifest: pa.Table, summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Run ids, oldest first: by start time when a summary says it, else by their first row."""
    first_row: dict[str, Any] = {}
    if manifest.num_rows:
        grouped = manifest.group_by("run_id").aggregate([("finished_at", "min")])
        first_row = dict(zip(grouped["run_id"].to_pylist(), grouped["finished_at_min"].to_pylist()))

    def start(run_id: str) -> str:
        started = (summaries.get(run_id) or {}).get("started_at")
        if started:
            return str(started)
        first = first_row.get(run_id)
        return first.isoformat() if first is not None else ""

    return sorted(set(first_row) | set(summaries), key=lambda r: (start(r), r))


def pick_run(runs: Sequence[str], summaries: Mapping[str, Any]) -> tuple[str, bool]:
    """The latest finished run, else the latest run; and whether it finished."""
    finished = [r for r in runs if r in summaries]
    if finished:
        return finished[-1], True
    if not runs:
        raise ReportError("no run found")
    return runs[-1], False


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


def collect_report_data(fs: pafs.FileSystem, output_path: str, output_uri: str, *,
                        max_pairs: int = DEFAULT_MAX_PAIRS, run_id: str | None = None) -> ReportData:
    """Read the manifest and summaries under ``output_path`` and compute what the page shows."""
    manifest_path = f"{output_path.rstrip('/')}/{MANIFEST_DIR}"
    summaries = read_run_summaries(fs, manifest_path)
    manifest = read_manifest(fs, manifest_path, columns=COLUMNS)
    runs = order_runs(manifest, summaries)
    if not runs:
        raise ReportError(f"no run manifest under {output_uri}/{MANIFEST_DIR}: run `dce-batch enhance INPUT "
                          f"{output_uri}` first, or check the OUTPUT path")
    if run_id is None:
        run_id, finished = pick_run(runs, summaries)
    elif run_id not in runs:
        raise ReportError(f"run {run_id!r} is not in the manifest under {output_uri}; runs: {runs}")
    else:
        finished = run_id in summaries
    summary = dict(summaries.get(run_id) or {})
    notices = []
    if not finished:
        notices.append(f"Run {run_id} did not finish (it wrote no run summary): the report shows the rows it "
                       "wrote; run dce-batch enhance again with the same OUTPUT to finish it.")
    later = runs[runs.index(run_id) + 1:]
    if later:
        notices.append(f"Later runs that did not finish are not shown: {', '.join(later)}.")

    run_rows = _where(manifest, pc.equal(manifest["run_id"], run_id))
    statuses = run_rows["status"]
    counts = {status: int(pc.sum(pc.equal(statuses, status)).as_py() or 0)
              for status in (STATUS_OK, STATUS_SKIPPED, STATUS_ERROR)}
    counts["total"] = run_rows.num_rows

    outputs = resolve_outputs(manifest, run_id)
    made_by = sorted({r for r in outputs["made_by"].to_pylist() if r and r != run_id}) if counts[STATUS_SKIPPED] else []
    if made_by:
        notices.append(f"{counts[STATUS_SKIPPED]} outputs were made by earlier runs ({', '.join(made_by)}) and "
                       "skipped by this one; they are included below with the earlier run's figures.")
    unresolved = int(pc.sum(pc.is_null(outputs["made_by"])).as_py() or 0)
    if unresolved:
        notices.append(f"{unresolved} skipped outputs have no earlier ok row in the manifest; their sizes, "
                       "brightness and times are unknown.")

    # Column-wise (not whole-table filters and sorts): a million-row manifest stays a few columns.
    has_luma = pc.and_(pc.is_valid(outputs["mean_luma_in"]), pc.is_valid(outputs["mean_luma_out"]))
    luma_in = outputs["mean_luma_in"].filter(has_luma).to_numpy().astype(np.float64)
    luma_out = outputs["mean_luma_out"].filter(has_luma).to_numpy().astype(np.float64)

    by_input = pc.sort_indices(outputs["input_uri"])
    picked = outputs.take(by_input.take(pa.array(sample_evenly(outputs.num_rows, max_pairs), pa.int64())))
    pairs = [Pair(input_uri=r["input_uri"], output_uri=r["output_uri"], width=r["width"], height=r["height"],
                  mean_luma_in=r["mean_luma_in"], mean_luma_out=r["mean_luma_out"], made_by=r["made_by"] or "?")
             for r in picked.to_pylist()]

    # The slowest images: of the run's own work and of the outputs it kept from earlier runs.
    worked = pa.concat_tables([
        outputs.select(["input_uri", "status", "width", "height", "duration_ms", "worker", "made_by"]),
        run_rows.filter(pc.equal(statuses, STATUS_ERROR)).append_column("made_by", pa.array(
            [run_id] * counts[STATUS_ERROR], pa.string())).select(
            ["input_uri", "status", "width", "height", "duration_ms", "worker", "made_by"]),
    ], promote_options="permissive")
    worked = worked.filter(pc.is_valid(worked["duration_ms"]))
    slowest = []
    if worked.num_rows:
        top = pc.select_k_unstable(worked, k=min(SLOWEST_ROWS, worked.num_rows),
                                   sort_keys=[("duration_ms", "descending")])
        slowest = worked.take(top).sort_by([("duration_ms", "descending")]).to_pylist()

    errors = run_rows.filter(pc.equal(statuses, STATUS_ERROR))
    errors_by_type: dict[str, int] = {}
    if errors.num_rows:
        kinds = pc.utf8_slice_codeunits(errors["error"].fill_null("Error: unknown"), 0, 200)
        for kind, count in _count_by(str(k).split(":", 1)[0] for k in kinds.to_pylist()).items():
            errors_by_type[kind] = count
    failed = errors.sort_by([("input_uri", "ascending")]).slice(0, MAX_FAILED_ROWS).select(
        ["input_uri", "error", "worker", "duration_ms"]).to_pylist()

    return ReportData(
        run_id=run_id, output_uri=output_uri, summary=summary, finished=finished, counts=counts, pairs=pairs,
        outputs_total=outputs.num_rows, luma_in=luma_in, luma_out=luma_out, slowest=slowest, failed=failed,
        failed_total=errors.num_rows, errors_by_type=errors_by_type, runs=runs, notices=notices,
    )


def _count_by(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------------------------
# Thumbnails and links
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thumbnail:
    data_uri: str | None  # None when the image could not be read
    width: int = 0
    height: int = 0
    problem: str = ""


def thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> Thumbnail:
    """A JPEG thumbnail (longest side ``side``) of image bytes, upright, as a data URI.

    JPEGs are decoded at reduced size (``draft``), so a 24 MP photo costs a few MB, not
    hundreds. Modes Pillow cannot simply convert (16-bit, CMYK, float) go through the batch
    job's decoder.
    """
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF and decompression-bomb warnings: checked below
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > THUMBNAIL_MAX_PIXELS:
            return Thumbnail(None, problem=f"{image.width}x{image.height} is too large to thumbnail")
        image.draft("RGB", (side, side))
        if image.mode in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "YCbCr"):
            image = ImageOps.exif_transpose(image).convert("RGB")
        else:
            from dce_batch.imaging import decode_image, to_uint8

            image = Image.fromarray(to_uint8(decode_image(data, max_pixels=THUMBNAIL_MAX_PIXELS).pixels))
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(f"data:image/jpeg;base64,{encoded}", image.width, image.height)


def make_thumbnails(uris: Sequence[str], s3: S3Options | None, *, side: int = THUMBNAIL_SIDE,
                    threads: int = 4) -> list[Thumbnail]:
    """Thumbnails of ``uris`` (read in a few threads: object stores are latency-bound)."""

    def one(uri: str) -> Thumbnail:
        try:
            fs, path = filesystem_for(uri, s3)
            return thumbnail(read_bytes(fs, path), side)
        except DceBatchError as exc:
            return Thumbnail(None, problem=describe_error(exc))
        except Exception as exc:  # noqa: BLE001 - a damaged image shows as a note, not a failed report
            return Thumbnail(None, problem=describe_error(exc))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(threads, len(uris) or 1))) as pool:
        return list(pool.map(one, uris))


class LinkMaker:
    """How the page links to a full-size input or output (see the module docstring)."""

    def __init__(self, output: Location, s3: S3Options | None, expires_s: int = DEFAULT_PRESIGN_EXPIRES_S,
                 *, now: datetime | None = None) -> None:
        self.output = output
        self.s3 = s3
        self.expires_s = expires_s
        self.expires_at = (now or datetime.now(timezone.utc)) + timedelta(seconds=expires_s)
        self._client: Any = None
        self.presign_problem: str | None = None  # why s3:// links are text, once we know
        self.used_presigned = False
        self.used_text = False

    def href(self, uri: str) -> str | None:
        """A URL for ``uri``, or None when it can only be shown as text."""
        if uri.startswith(("s3://", "s3a://")):
            url = self._presign(uri)
            if url is None:
                self.used_text = True
            else:
                self.used_presigned = True
            return url
        if "://" in uri and not uri.startswith("file://"):
            self.used_text = True
            return None  # gs://, az://, ...: no portable link
        path = uri.removeprefix("file://")
        if isinstance(self.output.filesystem, pafs.LocalFileSystem):
            base = self.output.path.rstrip("/")
            if path.startswith(base + "/"):
                # Relative to _report/: the page keeps working when OUTPUT is moved or copied.
                return "../" + quote(path[len(base) + 1:])
        return Path(path).as_uri() if path.startswith("/") else None

    def _presign(self, uri: str) -> str | None:
        if self.expires_s <= 0:
            self.presign_problem = "presigned links were turned off"
            return None
        client = self._s3_client()
        if client is None:
            return None
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=int(self.expires_s))

    def _s3_client(self) -> Any:
        if self._client is not None or self.presign_problem is not None:
            return self._client
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            self.presign_problem = "boto3 is not installed (pip install 'dce-batch[s3]')"
            return None
        options = self.s3 or S3Options.from_env()
        session = boto3.session.Session(aws_access_key_id=options.access_key,
                                        aws_secret_access_key=options.secret_key,
                                        aws_session_token=options.session_token,
                                        profile_name=None if options.access_key else options.profile)
        if session.get_credentials() is None:
            self.presign_problem = "no S3 credentials to sign links with"
            return None
        self._client = session.client("s3", endpoint_url=options.endpoint_url,
                                      region_name=options.region or session.region_name or "us-east-1",
                                      config=Config(signature_version="s3v4"))
        return self._client

    def policy(self) -> str:
        """One sentence for the page: what the links are."""
        if self.used_presigned:
            return (f"Links to object storage are presigned HTTPS URLs valid until "
                    f"{self.expires_at:%Y-%m-%d %H:%M} UTC: anyone with this file can open those images until then.")
        if self.used_text:
            reason = f" ({self.presign_problem})" if self.presign_problem else ""
            return f"Images in object storage are shown by URI, not linked{reason}."
        return "Links open the full-size images on this machine (outputs relative to this report, inputs as file:// URLs)."


# --------------------------------------------------------------------------------------------
# Training history (loss curves) of the weights
# --------------------------------------------------------------------------------------------


def safetensors_metadata(blob: bytes) -> dict[str, Any] | None:
    """The ``dce_batch`` metadata of a .safetensors file's header, read without torch."""
    if len(blob) < 10:
        return None
    header_len = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8:8 + header_len])
        return json.loads(header["__metadata__"]["dce_batch"])
    except (ValueError, KeyError, TypeError):
        return None


def training_history(summary: Mapping[str, Any], s3: S3Options | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
        return dict(shipped.meta), [dict(r) for r in shipped.training]
    spec = (summary.get("settings") or {}).get("weights")
    if not spec:
        return {}, []
    try:
        fs, path = filesystem_for(str(spec), s3)
        meta = safetensors_metadata(read_bytes(fs, path)) or {}
    except (DceBatchError, OSError):
        return {}, []
    pointer = (meta.get("recipe") or {}).get("metrics_uri") or (meta.get("metrics") or {}).get("metrics_uri")
    if not pointer:
        return meta, []
    try:
        fs, path = filesystem_for(str(pointer), s3)
        metrics = json.loads(read_bytes(fs, path))
        history = [e for e in metrics.get("history", []) if isinstance(e, Mapping)]
    except (DceBatchError, OSError, ValueError):
        return meta, []
    return meta, [{"run": metrics.get("run", meta.get("name", "")), "source": str(pointer), "history": history}]


# --------------------------------------------------------------------------------------------
# Charts (inline SVG)
# --------------------------------------------------------------------------------------------

_IN_COLOUR, _OUT_COLOUR = "#5b6f95", "#e8a33d"


def histogram_svg(before: np.ndarray, after: np.ndarray, *, bins: int = HISTOGRAM_BINS,
                  width: int = 560, height: int = 220) -> str:
    """Overlaid histograms of two sets of values in [0, 1] as an SVG element."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    h_in = np.histogram(np.clip(before, 0, 1), bins=edges)[0]
    h_out = np.histogram(np.clip(after, 0, 1), bins=edges)[0]
    top = max(1, int(max(h_in.max(initial=0), h_out.max(initial=0))))
    left, bottom, right, upper = 44, 34, 10, 22
    plot_w, plot_h = width - left - right, height - bottom - upper
    bar_w = plot_w / bins
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>brightness histogram</title>']
    for counts, colour, offset in ((h_in, _IN_COLOUR, 0.08), (h_out, _OUT_COLOUR, 0.5)):
        for i, count in enumerate(counts):
            if count:
                bar_h = plot_h * count / top
                x = left + bar_w * (i + offset)
                parts.append(f'<rect x="{x:.1f}" y="{upper + plot_h - bar_h:.1f}" width="{bar_w * 0.42:.1f}" '
                             f'height="{bar_h:.1f}" fill="{colour}"><title>{edges[i]:.2f}-{edges[i + 1]:.2f}: '
                             f'{int(count)}</title></rect>')
    parts.append(_axes(left, upper, plot_w, plot_h, x_ticks=[(f"{v:.1f}", v) for v in np.linspace(0, 1, 6)],
                       y_max=top, y_label="images", x_label="mean brightness (Rec.709 luma, 0-1)", height=height))
    parts.append(_legend([("before", _IN_COLOUR), ("after", _OUT_COLOUR)], left + 8, 14))
    parts.append("</svg>")
    return "".join(parts)


def line_chart_svg(series: Sequence[tuple[str, str, Sequence[tuple[float, float]]]], *, title: str,
                   width: int = 560, height: int = 220, y_label: str = "loss") -> str:
    """Lines ``(label, colour, [(x, y), ...])`` on shared axes as an SVG element."""
    points = [p for _, _, pts in series for p in pts if p[1] is not None and math.isfinite(p[1])]
    if not points:
        return ""
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    if y_max == y_min:
        y_max = y_min + 1e-9
    if x_max == x_min:
        x_max = x_min + 1
    pad = (y_max - y_min) * 0.05
    y_min, y_max = y_min - pad, y_max + pad
    left, bottom, right, upper = 52, 34, 10, 22
    plot_w, plot_h = width - left - right, height - bottom - upper

    def sx(x: float) -> float:
        return left + plot_w * (x - x_min) / (x_max - x_min)

    def sy(y: float) -> float:
        return upper + plot_h * (1 - (y - y_min) / (y_max - y_min))

    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{html.escape(title)}</title>']
    for _, colour, pts in series:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts if y is not None and math.isfinite(y))
        if coords:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
    x_ticks = [(f"{v:.0f}", v) for v in np.linspace(x_min, x_max, min(6, int(x_max - x_min) + 1))]
    parts.append(_axes(left, upper, plot_w, plot_h, x_ticks=[(t, (v - x_min) / (x_max - x_min)) for t, v in x_ticks],
                       y_max=None, y_range=(y_min, y_max), y_label=y_label, x_label="epoch", height=height))
    parts.append(_legend([(label, colour) for label, colour, _ in series], left + 8, 14))
    parts.append("</svg>")
    return "".join(parts)


def _axes(left: float, upper: float, plot_w: float, plot_h: float, *, x_ticks: Sequence[tuple[str, float]],
          y_max: int | None, y_label: str, x_label: str, height: int,
          y_range: tuple[float, float] | None = None) -> str:
    bottom_y = upper + plot_h
    parts = [f'<line x1="{left}" y1="{bottom_y}" x2="{left + plot_w}" y2="{bottom_y}" stroke="#888"/>',
             f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{bottom_y}" stroke="#888"/>']
    for text, fraction in x_ticks:
        x = left + plot_w * float(fraction)
        parts.append(f'<text x="{x:.1f}" y="{bottom_y + 14}" text-anchor="middle">{html.escape(text)}</text>')
    if y_max is not None:
        y_ticks = [("0", 0.0), (str(y_max), 1.0)] + ([(str(y_max // 2), 0.5)] if y_max % 2 == 0 and y_max > 2 else [])
    else:
        low, high = y_range or (0.0, 1.0)
        y_ticks = [(f"{low + (high - low) * f:.3g}", f) for f in (0, 0.5, 1)]
    for text, fraction in y_ticks:
        y = bottom_y - plot_h * fraction
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{html.escape(text)}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">{html.escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{upper + plot_h / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {upper + plot_h / 2:.1f})">{html.escape(y_label)}</text>')
    return "".join(parts)


def _legend(entries: Sequence[tuple[str, str]], x: float, y: float) -> str:
    parts = []
    for label, colour in entries:
        parts.append(f'<rect x="{x}" y="{y - 9}" width="12" height="10" fill="{colour}"/>'
                     f'<text x="{x + 16}" y="{y}">{html.escape(label)}</text>')
        x += 24 + 7 * len(label)
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; --fg: #1d2330; --muted: #5f6b7a; --line: #d9dee5; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; padding: 24px 32px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 32px 0 10px; }
.sub { color: var(--muted); margin: 0 0 16px; word-break: break-all; }
.notice { background: #fff6e0; border: 1px solid #f0d48a; padding: 8px 12px; border-radius: 6px; margin: 6px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 120px; }
.card b { display: block; font-size: 20px; } .card span { color: var(--muted); font-size: 12px; }
.card.bad b { color: #b3261e; }
table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.uri { word-break: break-all; max-width: 560px; }
.kv td:first-child { color: var(--muted); white-space: nowrap; }
.tables { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.pairs { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 14px; }
figure.pair { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 0; padding: 8px; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
.side { text-align: center; } .side img { width: 100%; height: 150px; object-fit: contain; background: #111;
  border-radius: 4px; display: block; }
.side .label { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
.missing { height: 150px; display: flex; align-items: center; justify-content: center; background: #eee;
  color: #b3261e; font-size: 12px; padding: 6px; border-radius: 4px; word-break: break-word; }
figcaption { font-size: 12px; margin-top: 6px; word-break: break-all; }
figcaption .meta { color: var(--muted); }
svg.chart { background: #fff; border: 1px solid var(--line); border-radius: 8px; max-width: 100%; height: auto;
  font-size: 11px; fill: var(--fg); }
details summary { cursor: pointer; color: var(--muted); margin: 6px 0; }
code { background: #eef1f5; padding: 0 4px; border-radius: 3px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

# No scripts, no remote anything: images may only come from data: URIs, styles only from this page.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, fmt: str = "{:,}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt.format(value)


def _link(text: str, href: str | None, *, title: str | None = None) -> str:
    if href is None:
        return f'<code title="{_e(title or text)}">{_e(text)}</code>'
    return f'<a href="{_e(href)}" title="{_e(title or text)}">{_e(text)}</a>'


def _relative_name(uri: str, root: str) -> str:
    root = root.rstrip("/")
    return uri[len(root) + 1:] if root and uri.startswith(root + "/") else posixpath.basename(uri) or uri


def _kv_table(rows: Iterable[tuple[str, Any]], cls: str = "kv") -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_plain(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _plain(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def _size(row: Mapping[str, Any]) -> str:
    return f"{row['width']} x {row['height']}" if row.get("width") else "–"


def _card(value: str, label: str, *, bad: bool = False) -> str:
    return f'<div class="card{" bad" if bad else ""}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def render_html(data: ReportData, thumbnails: Sequence[tuple[Thumbnail, Thumbnail]], links: LinkMaker, *,
                generated_at: datetime | None = None) -> str:
    """The page (a complete HTML document) for ``data``; ``thumbnails`` align with ``data.pairs``."""
    s = data.summary
    generated = (generated_at or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    input_root = str(s.get("input") or "")
    out: list[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>dce_batch report: run {_e(data.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Enhancement run {_e(data.run_id)}</h1>",
        f'<p class="sub">{_e(input_root or "?")} &rarr; {_e(data.output_uri)}</p>',
    ]
    for notice in data.notices:
        out.append(f'<p class="notice">{_e(notice)}</p>')

    # Summary
    c = data.counts
    elapsed = s.get("elapsed_s")
    out.append('<section id="summary"><h2>Summary</h2><div class="cards">')
    out.append(_card(_num(c["total"]), "inputs"))
    out.append(_card(_num(c[STATUS_OK]), "enhanced (ok)"))
    out.append(_card(_num(c[STATUS_SKIPPED]), "skipped (done before)"))
    out.append(_card(_num(c[STATUS_ERROR]), "failed", bad=c[STATUS_ERROR] > 0))
    out.append(_card(_num(s.get("images_per_s"), "{:.2f}"), "images/s"))
    out.append(_card(_num(s.get("megapixels_per_s"), "{:.2f}"), "megapixels/s"))
    out.append(_card(_num(elapsed, "{:.1f} s"), "elapsed"))
    out.append(_card(f"{_num(s.get('bytes_in'))} / {_num(s.get('bytes_out'))}", "bytes in / out"))
    out.append("</div>")
    model = s.get("model") or {}
    out.append('<div class="tables">')
    out.append("<div><h3>Model</h3>" + _kv_table([
        ("name", model.get("name")), ("variant", model.get("variant")), ("parameters", model.get("parameters")),
        ("tensor sha256", model.get("sha256")), ("source", model.get("source")),
        ("licence", data.weights_meta.get("licence")), ("data", data.weights_meta.get("data")),
    ]) + "</div>")
    out.append("<div><h3>Run</h3>" + _kv_table([
        ("started", s.get("started_at")), ("finished", s.get("finished_at")), ("run id", data.run_id),
        ("runs in this manifest", ", ".join(data.runs)), ("cluster", s.get("cluster")),
    ]) + "</div>")
    out.append("<div><h3>Versions</h3>" + _kv_table(sorted((s.get("versions") or {}).items())) + "</div>")
    out.append("</div>")
    settings = s.get("settings") or {}
    if settings:
        out.append("<details><summary>Settings</summary>" + _kv_table(sorted(settings.items())) + "</details>")
    out.append("</section>")

    # Pairs
    shown = len(data.pairs)
    pair_links = [(links.href(p.input_uri), links.href(p.output_uri)) for p in data.pairs]  # before policy()
    out.append(f'<section id="pairs"><h2>Before and after</h2><p class="sub">'
               f'{"All" if shown == data.outputs_total else f"{shown} evenly spaced of"} {data.outputs_total:,} '
               f"outputs, ordered by input path; click an image for the full size. {_e(links.policy())}</p>")
    if not data.pairs:
        out.append('<p class="notice">This run has no enhanced images to show.</p>')
    out.append('<div class="pairs">')
    for pair, (before, after), (in_href, out_href) in zip(data.pairs, thumbnails, pair_links):
        name = _relative_name(pair.input_uri, input_root)
        size = f"{pair.width} x {pair.height}" if pair.width else "size unknown"
        luma = (f"brightness {pair.mean_luma_in:.3f} &rarr; {pair.mean_luma_out:.3f}"
                if pair.mean_luma_in is not None and pair.mean_luma_out is not None else "")
        made = f" · made by run {_e(pair.made_by)}" if pair.made_by != data.run_id else ""
        out.append('<figure class="pair"><div class="sides">')
        for label, thumb, href, uri in (("before", before, in_href, pair.input_uri),
                                        ("after", after, out_href, pair.output_uri)):
            if thumb.data_uri is None:
                image = f'<div class="missing">{_e(label)} unavailable: {_e(thumb.problem)}</div>'
            else:
                image = (f'<img src="{thumb.data_uri}" width="{thumb.width}" height="{thumb.height}" '
                         f'alt="{_e(label)}: {_e(name)}">')
            if href is not None and thumb.data_uri is not None:
                image = f'<a href="{_e(href)}" title="{_e(uri)}">{image}</a>'
            out.append(f'<div class="side"><div class="label">{label}</div>{image}</div>')
        out.append(f'</div><figcaption><b>{_e(name)}</b> <span class="meta">{size} · {luma}{made}</span><br>'
                   f'{_link("input", in_href, title=pair.input_uri)} · {_link("output", out_href, title=pair.output_uri)}'
                   "</figcaption></figure>")
    out.append("</div></section>")

    # Brightness
    out.append('<section id="brightness"><h2>Brightness before and after</h2>')
    if data.luma_in.size:
        out.append(f'<p class="sub">Mean Rec.709 luma of each of {data.luma_in.size:,} images: median '
                   f"{np.median(data.luma_in):.3f} before, {np.median(data.luma_out):.3f} after.</p>")
        out.append(histogram_svg(data.luma_in, data.luma_out))
    else:
        out.append('<p class="sub">No brightness figures: no image was enhanced.</p>')
    out.append("</section>")

    # Slowest
    out.append('<section id="slowest"><h2>Slowest images</h2>')
    if data.slowest:
        rows = "".join(
            f'<tr><td class="uri">{_e(_relative_name(r["input_uri"], input_root))}</td><td>{_e(r["status"])}</td>'
            f'<td class="num">{_num(r["duration_ms"], "{:,.0f}")}</td>'
            f'<td class="num">{_e(_size(r))}</td>'
            f'<td>{_e(r["worker"])}</td><td>{_e(r["made_by"])}</td></tr>' for r in data.slowest)
        out.append("<table><tr><th>input</th><th>status</th><th>ms (read to written)</th><th>size</th>"
                   f"<th>worker</th><th>run</th></tr>{rows}</table>")
    else:
        out.append('<p class="sub">No timings in this run.</p>')
    out.append("</section>")

    # Failed
    out.append(f'<section id="failed"><h2>Failed inputs ({data.failed_total:,})</h2>')
    if data.failed_total:
        out.append(_kv_table(data.errors_by_type.items()))
        if data.failed_total > len(data.failed):
            out.append(f'<p class="sub">The first {len(data.failed):,} by input path; the manifest has all '
                       f"{data.failed_total:,}.</p>")
        rows = "".join(f'<tr><td class="uri">{_link(_relative_name(r["input_uri"], input_root), links.href(r["input_uri"]), title=r["input_uri"])}</td>'
                       f'<td>{_e(r["error"])}</td></tr>' for r in data.failed)
        out.append(f"<table><tr><th>input</th><th>reason</th></tr>{rows}</table>")
    else:
        out.append('<p class="sub">None.</p>')
    out.append("</section>")

    # Training
    out.append('<section id="training"><h2>Training loss curves of the model</h2>')
    charts = []
    for run in data.training:
        history = run.get("history") or []
        series = [(label, colour, [(float(e["epoch"]), e.get(key)) for e in history if "epoch" in e])
                  for label, colour, key in (("train", _IN_COLOUR, "train_loss"), ("validation", _OUT_COLOUR, "val_loss"))]
        svg = line_chart_svg(series, title=f"loss of run {run.get('run', '')}")
        if svg:
            charts.append(f'<figure class="curve">{svg}<figcaption>run {_e(run.get("run"))} '
                          f'({len(history)} epochs; {_e(run.get("source"))})</figcaption></figure>')
    if charts:
        out.append('<div class="tables">' + "".join(charts) + "</div>")
    else:
        out.append('<p class="sub">Not available: the weights\' metadata points to no training history '
                   "(shipped weights have it; your own need a <code>metrics_uri</code> in their recipe).</p>")
    out.append("</section>")

    out.append(f"<footer>Made by dce-batch report on {generated} from {_e(data.output_uri)}/{MANIFEST_DIR}. "
               "This page loads nothing from the network.</footer></body></html>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def build_report(output: str, *, s3: S3Options | None = None, max_pairs: int = DEFAULT_MAX_PAIRS,
                 log: Callable[[str], None] | None = None, run_id: str | None = None,
                 presign_expires_s: int = DEFAULT_PRESIGN_EXPIRES_S) -> str:
    """Build ``OUTPUT/_report/index.html`` for the latest finished run under ``output``.

    Args:
        output: the run's OUTPUT folder or ``s3://`` prefix.
        s3: how to reach object storage (default: the AWS_* environment).
        max_pairs: before/after pairs to show at most (an evenly spaced sample).
        log: called with a line per step (default: silent).
        run_id: report this run instead of the latest finished one.
        presign_expires_s: lifetime of presigned ``s3://`` links; 0 shows URIs as text instead.

    Returns:
        The URI of the written ``index.html`` (a local path or ``s3://...``).

    Raises:
        ReportError: there is no run manifest under ``output`` (or no such ``run_id``).
        StorageError: the manifest cannot be read or the report cannot be written.
    """
    say = log or (lambda line: None)
    if max_pairs < 0:
        raise ReportError(f"max_pairs must be >= 0, got {max_pairs}")
    location = Location.parse(output, s3)
    data = collect_report_data(location.filesystem, location.path, location.uri, max_pairs=max_pairs, run_id=run_id)
    say(f"report of run {data.run_id}: {data.counts['total']:,} rows, {data.outputs_total:,} outputs, "
        f"{data.failed_total:,} failed; {len(data.pairs)} pairs")
    data.weights_meta, data.training = training_history(data.summary, s3)
    uris = [u for p in data.pairs for u in (p.input_uri, p.output_uri)]
    thumbs = make_thumbnails(uris, s3)
    pairs = list(zip(thumbs[0::2], thumbs[1::2]))
    links = LinkMaker(location, s3, presign_expires_s)
    page = render_html(data, pairs, links)
    target = location.child(f"{REPORT_DIR}/index.html")
    write_bytes_atomic(location.filesystem, target, page.encode("utf-8"))
    uri = location.child_uri(f"{REPORT_DIR}/index.html")
    say(f"report written: {uri}")
    return uri
