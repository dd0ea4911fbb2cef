"""The page: :class:`~dce_batch.report.data.ReportData` through ``templates/report.html.j2``.

Jinja2 with autoescape on for every template (file names end in ``.j2``, which Jinja's
extension-based default would leave unescaped), so every value the page shows (input names,
error messages, settings) is escaped by the template engine, and no markup is built in Python.
Undefined names fail the render instead of printing nothing.
"""

from __future__ import annotations

import functools
import json
import math
from datetime import datetime, timezone
from typing import Any, Sequence

import jinja2

from dce_batch.report.charts import AFTER_COLOUR, BEFORE_COLOUR, Chart, histogram_chart, line_chart
from dce_batch.report.data import ReportData
from dce_batch.report.links import LinkMaker
from dce_batch.report.thumbnails import Thumbnail
from dce_batch.storage import MANIFEST_DIR

__all__ = ["CONTENT_SECURITY_POLICY", "environment", "render_html"]

# No scripts, no remote anything: images only from data: URIs, styles only from the page itself.
CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
                           "form-action 'none'")
TEMPLATE = "report.html.j2"


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja environment of the report's templates (package data of ``dce_batch.report``)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dce_batch.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=format_number, plain=plain_text, gib=gibibytes, megapixels=megapixels)
    return env


def format_number(value: Any, fmt: str = "{:,}") -> str:
    """``fmt`` applied to a number; a dash for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt.format(value)


def plain_text(value: Any) -> str:
    """A setting's value as text: JSON for containers, empty for None."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def gibibytes(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**30:,.2f} GiB"


def megapixels(value: float | None) -> str:
    return "–" if value is None else f"{value / 1e6:,.1f} MP"


def render_html(data: ReportData, thumbnails: Sequence[tuple[Thumbnail, Thumbnail]], links: LinkMaker, *,
                generated_at: datetime | None = None) -> str:
    """The page (a complete HTML document) for ``data``; ``thumbnails`` align with ``data.pairs``."""
    # Every link first: the sentence about links depends on which kinds were made.
    shown = ([u for p in data.pairs for u in (p.input_uri, p.output_uri)] + [f.input_uri for f in data.failed])
    hrefs = {uri: links.href(uri) for uri in dict.fromkeys(shown)}
    histogram = histogram_chart(data.luma_in, data.luma_out) if data.luma_in.size else None
    loss_charts: list[tuple[Chart, Any]] = []
    for run in data.training:
        chart = line_chart([("train", BEFORE_COLOUR, run.train), ("validation", AFTER_COLOUR, run.validation)],
                           title=f"loss of run {run.run}")
        if chart is not None:
            loss_charts.append((chart, run))
    return environment().get_template(TEMPLATE).render(
        data=data,
        pairs=list(zip(data.pairs, thumbnails)),
        hrefs=hrefs,
        link_policy=links.policy(),
        histogram=histogram,
        loss_charts=loss_charts,
        csp=CONTENT_SECURITY_POLICY,
        manifest_dir=MANIFEST_DIR,
        generated=(generated_at or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
    )
