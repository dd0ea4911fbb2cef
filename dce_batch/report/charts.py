"""The report's charts as geometry: where each bar, line, tick and label goes, in SVG user units.

The SVG markup itself is in ``templates/charts.svg.j2`` (rendered with autoescape like the rest
of the page), so this module is plain arithmetic that tests can check without parsing markup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["BEFORE_COLOUR", "AFTER_COLOUR", "HISTOGRAM_BINS", "Bar", "Chart", "Label", "LegendEntry", "Polyline",
           "Segment", "histogram_chart", "line_chart"]

BEFORE_COLOUR, AFTER_COLOUR = "#5b6f95", "#e8a33d"
HISTOGRAM_BINS = 20
_LEGEND_CHAR_WIDTH = 7  # px per character of a legend label at the chart's 11 px font


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    tooltip: str


@dataclass(frozen=True)
class Segment:
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Polyline:
    colour: str
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"  # SVG text-anchor: start, middle, end
    rotate: float = 0.0  # degrees, about (x, y)


@dataclass(frozen=True)
class LegendEntry:
    x: float
    y: float  # the text's baseline; the swatch sits just above it
    label: str
    colour: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    title: str
    axes: tuple[Segment, ...]
    bars: tuple[Bar, ...] = ()
    lines: tuple[Polyline, ...] = ()
    labels: tuple[Label, ...] = ()
    legend: tuple[LegendEntry, ...] = ()


def histogram_chart(before: np.ndarray, after: np.ndarray, *, bins: int = HISTOGRAM_BINS,
                    width: int = 560, height: int = 220) -> Chart:
    """Overlaid histograms of two sets of values in [0, 1] (values outside count in the end bins)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts_before = np.histogram(np.clip(before, 0, 1), bins=edges)[0]
    counts_after = np.histogram(np.clip(after, 0, 1), bins=edges)[0]
    top = max(1, int(max(counts_before.max(initial=0), counts_after.max(initial=0))))
    left, bottom, right, upper = 44, 34, 10, 22
    plot_w, plot_h = width - left - right, height - bottom - upper
    bar_w = plot_w / bins
    bars = []
    for counts, colour, offset in ((counts_before, BEFORE_COLOUR, 0.08), (counts_after, AFTER_COLOUR, 0.5)):
        for i, count in enumerate(counts):
            if count:
                bar_h = plot_h * count / top
                bars.append(Bar(x=left + bar_w * (i + offset), y=upper + plot_h - bar_h, width=bar_w * 0.42,
                                height=bar_h, colour=colour, tooltip=f"{edges[i]:.2f}-{edges[i + 1]:.2f}: {int(count)}"))
    y_ticks = [("0", 0.0), (str(top), 1.0)] + ([(str(top // 2), 0.5)] if top % 2 == 0 and top > 2 else [])
    labels = _axis_labels(left, upper, plot_w, plot_h, height,
                          x_ticks=[(f"{v:.1f}", v) for v in np.linspace(0, 1, 6)], y_ticks=y_ticks,
                          x_label="mean brightness (Rec.709 luma, 0-1)", y_label="images")
    return Chart(width=width, height=height, title="brightness histogram", axes=_axes(left, upper, plot_w, plot_h),
                 bars=tuple(bars), labels=labels,
                 legend=_legend([("before", BEFORE_COLOUR), ("after", AFTER_COLOUR)], left + 8, 14))


def line_chart(series: Sequence[tuple[str, str, Sequence[tuple[float, float]]]], *, title: str,
               width: int = 560, height: int = 220, y_label: str = "loss", x_label: str = "epoch") -> Chart | None:
    """Lines ``(label, colour, [(x, y), ...])`` on shared axes; None when no point is finite."""
    finite = [[(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
              for _, _, points in series]
    every = [p for points in finite for p in points]
    if not every:
        return None
    x_min, x_max = min(p[0] for p in every), max(p[0] for p in every)
    y_min, y_max = min(p[1] for p in every), max(p[1] for p in every)
    if x_max == x_min:
        x_max = x_min + 1
    pad = (y_max - y_min) * 0.05 or max(abs(y_min) * 0.05, 1e-9)  # a flat line still gets a y range
    y_min, y_max = y_min - pad, y_max + pad
    left, bottom, right, upper = 52, 34, 10, 22
    plot_w, plot_h = width - left - right, height - bottom - upper

    def place(x: float, y: float) -> tuple[float, float]:
        return (left + plot_w * (x - x_min) / (x_max - x_min), upper + plot_h * (1 - (y - y_min) / (y_max - y_min)))

    lines = tuple(Polyline(colour=colour, points=tuple(place(x, y) for x, y in points))
                  for (_, colour, _), points in zip(series, finite) if points)
    x_values = np.linspace(x_min, x_max, min(6, int(x_max - x_min) + 1))
    x_ticks = [(f"{v:.0f}", (v - x_min) / (x_max - x_min)) for v in x_values]
    y_ticks = [(f"{y_min + (y_max - y_min) * f:.3g}", f) for f in (0.0, 0.5, 1.0)]
    labels = _axis_labels(left, upper, plot_w, plot_h, height, x_ticks=x_ticks, y_ticks=y_ticks,
                          x_label=x_label, y_label=y_label)
    return Chart(width=width, height=height, title=title, axes=_axes(left, upper, plot_w, plot_h), lines=lines,
                 labels=labels, legend=_legend([(label, colour) for label, colour, _ in series], left + 8, 14))


def _axes(left: float, upper: float, plot_w: float, plot_h: float) -> tuple[Segment, ...]:
    bottom_y = upper + plot_h
    return (Segment(left, bottom_y, left + plot_w, bottom_y), Segment(left, upper, left, bottom_y))


def _axis_labels(left: float, upper: float, plot_w: float, plot_h: float, height: int, *,
                 x_ticks: Sequence[tuple[str, float]], y_ticks: Sequence[tuple[str, float]],
                 x_label: str, y_label: str) -> tuple[Label, ...]:
    """Tick texts (``(text, fraction of the axis)``) and the two axis titles."""
    bottom_y = upper + plot_h
    labels = [Label(left + plot_w * float(f), bottom_y + 14, text) for text, f in x_ticks]
    labels += [Label(left - 6, bottom_y - plot_h * float(f) + 4, text, anchor="end") for text, f in y_ticks]
    labels.append(Label(left + plot_w / 2, height - 4, x_label))
    labels.append(Label(12, upper + plot_h / 2, y_label, rotate=-90))
    return tuple(labels)


def _legend(entries: Sequence[tuple[str, str]], x: float, y: float) -> tuple[LegendEntry, ...]:
    placed = []
    for label, colour in entries:
        placed.append(LegendEntry(x, y, label, colour))
        x += 24 + _LEGEND_CHAR_WIDTH * len(label)
    return tuple(placed)
