"""``build_report``: the run report of an OUTPUT, written to ``OUTPUT/_report/index.html``.

    dce-batch report OUTPUT                 # local folder or s3://bucket/prefix
    build_report("s3://bucket/enhanced")    # -> "s3://bucket/enhanced/_report/index.html"

One self-contained file: thumbnails are JPEG data URIs and charts inline SVG; there is no script
and no external asset (a Content-Security-Policy forbids any), so the page opens offline, from a
bucket, or as an e-mail attachment, and no thumbnail file under OUTPUT can be mistaken for an
input by a later run that reads OUTPUT. Which run it shows: :mod:`dce_batch.report.data`; links:
:mod:`dce_batch.report.links`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pyarrow.fs as pafs

from dce_batch.errors import ReportError, describe_error
from dce_batch.report.data import DEFAULT_MAX_PAIRS, collect_report_data
from dce_batch.report.links import DEFAULT_PRESIGN_EXPIRES_S, LinkMaker
from dce_batch.report.render import render_html
from dce_batch.report.thumbnails import make_thumbnails
from dce_batch.storage import Location, S3Options, write_bytes_atomic

if TYPE_CHECKING:
    from dce_batch.job.config import EnhanceConfig

__all__ = ["DEFAULT_MAX_PAIRS", "REPORT_DIR", "build_report"]

REPORT_DIR = "_report"


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
    data = collect_report_data(location, s3=s3, max_pairs=max_pairs, run_id=run_id,
                               warn=lambda line: say(f"warning: {line}"))
    say(f"report of run {data.run_id}: {data.counts.total:,} rows, {data.outputs_total:,} outputs, "
        f"{data.failed_total:,} failed; {len(data.pairs)} pairs")
    thumbs = make_thumbnails([u for p in data.pairs for u in (p.input_uri, p.output_uri)], s3)
    page = render_html(data, list(zip(thumbs[0::2], thumbs[1::2])), LinkMaker(location, s3, presign_expires_s))
    write_bytes_atomic(location.filesystem, location.child(f"{REPORT_DIR}/index.html"), page.encode("utf-8"))
    uri = location.child_uri(f"{REPORT_DIR}/index.html")
    say(f"report written: {uri}")
    return uri


def report_after_run(config: "EnhanceConfig", log: Callable[[str], None],
                     warn: Callable[[str], None]) -> str | None:
    """The report ``dce-batch enhance`` builds once a run has finished: its path, or None when
    the run's settings do not ask for one (``EnhanceConfig.report``; unset: for a local OUTPUT,
    whose report is a file to open, not for object storage) or it could not be built. The
    images are done by then, so a failure here is a ``warn``-ing, never the run's."""
    output = Location.parse(config.output, config.s3)
    wants = config.report if config.report is not None else isinstance(output.filesystem, pafs.LocalFileSystem)
    if not wants:
        return None
    try:
        return build_report(config.output, s3=config.s3, log=log, run_id=config.run_id)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        warn(f"the report could not be built: {describe_error(exc)}")
        return None
