"""The HTML report of a run: ``build_report(OUTPUT)`` writes ``OUTPUT/_report/index.html``.

* :mod:`~dce_batch.report.data`: what the page shows, read from the run's summaries and manifest
  (which run, counts, sampled pairs, slowest and failed images, training history);
* :mod:`~dce_batch.report.charts`: histogram and line-chart geometry;
* :mod:`~dce_batch.report.thumbnails`: data-URI thumbnails;
* :mod:`~dce_batch.report.links`: relative, ``file://`` and presigned links;
* :mod:`~dce_batch.report.render` and ``templates/``: the page, Jinja2 with autoescape;
* :mod:`~dce_batch.report.build`: :func:`build_report`, which puts them together, and
  :func:`report_after_run`, the report ``dce-batch enhance`` builds after a run.
"""

from dce_batch.report.build import DEFAULT_MAX_PAIRS, REPORT_DIR, build_report, report_after_run

__all__ = ["DEFAULT_MAX_PAIRS", "REPORT_DIR", "build_report", "report_after_run"]
