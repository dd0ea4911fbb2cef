"""The run report: the builder on synthetic manifests (several runs, no ok rows, a huge manifest,
S3 with presigned links), and a real run over the bundled samples opened in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from dce_batch.errors import ReportError
from dce_batch.job.manifest import MANIFEST_SCHEMA, CommitRecord, ManifestRow, ManifestStore, RunSummary, rows_to_table
from dce_batch.job.manifest.store import part_name
from dce_batch.job import EnhanceConfig, run_enhance, sample_images_dir
from dce_batch.report import build_report
from dce_batch.report.charts import histogram_chart
from dce_batch.report.data import Counts, cluster_info, collect_report_data, sample_evenly, training_history
from dce_batch.report.render import environment
from dce_batch.report.thumbnails import thumbnail
from dce_batch.storage import Location

SAMPLES = sorted(p.name for p in Path(sample_images_dir()).iterdir() if p.suffix in (".jpg", ".png"))
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def cells(text: str, element_id: str) -> dict[str, str]:
    """The first table under the element with ``element_id``: first cell -> second cell (their text)."""
    start = text.rindex("<", 0, text.index(f'id="{element_id}"'))
    table = text[start:text.index("</table>", start)]
    rows: list[list[str]] = []

    class Cells(HTMLParser):
        in_cell = False

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                rows.append([])
            elif tag == "td":
                rows[-1].append("")
                self.in_cell = True

        def handle_endtag(self, tag):
            self.in_cell = self.in_cell and tag != "td"

        def handle_data(self, data):
            if self.in_cell:
                rows[-1][-1] += data

    Cells().feed(table)
    return {row[0]: row[1] for row in rows if len(row) >= 2}


def headline(text: str) -> dict[str, str]:
    """The headline cards of a page: label -> value."""
    start = text.rindex("<div", 0, text.index('id="headline"'))
    block = text[start:text.index("</div>\n</div>", start)]
    cards: dict[str, str] = {}
    parts: list[str] = []

    class Cards(HTMLParser):
        def handle_data(self, data):
            if data.strip():
                parts.append(data.strip())

    Cards().feed(block)
    for value, label in zip(parts[0::2], parts[1::2]):
        cards[label] = value
    return cards


class Page(HTMLParser):
    """The tags of a page that matter here: images, links, pair figures, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.links: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.figures = 0
        self.attributes: set[str] = set()  # every attribute name on any tag
        self.titles: list[str] = []
        self.texts: list[str] = []
        self.feed(text)

    def handle_data(self, data):
        self.texts.append(data)

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        self.attributes.update(attributes)
        if "title" in attributes:
            self.titles.append(attributes["title"])
        if tag == "img":
            self.images.append(attributes)
        elif tag == "a":
            self.links.append(attributes)
        elif tag == "figure" and "pair" in attributes.get("class", ""):
            self.figures += 1


def write_committed_part(location: Location, run_id: str, table: pa.Table) -> None:
    """A finished run's rows as the job leaves them: one part and the commit record naming it."""
    store = ManifestStore.of(location)
    part = store.write_part(part_name(run_id, "test", 0), table)
    store.write_commit(CommitRecord(run_id=run_id, status="finished", parts=[part]))


def _image(path: Path, seed: int, size=(64, 48)) -> int:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 80).astype(np.uint8)).save(path)
    return path.stat().st_size


def _row(run_id: str, name: str, status: str, root: Path, *, minutes: int, error: str | None = None,
         luma=(0.1, 0.4), duration=100.0, seed=0) -> ManifestRow:
    input_uri, output_uri = str(root / "in" / name), str(root / "out" / name)
    row = ManifestRow(run_id=run_id, input_relpath=name, input_uri=input_uri, status=status,
                      finished_at=T0 + timedelta(minutes=minutes))
    if status == "ok":
        _image(Path(input_uri), seed)
        _image(Path(output_uri), seed + 100)
        row.output_relpath, row.width, row.height = name, 64, 48
        row.mean_luma_in, row.mean_luma_out, row.duration_ms = luma[0], luma[1], duration
        row.bytes_in = row.bytes_out = 1000
        row.worker = f"node/{run_id}"
    elif status == "skipped":
        row.output_relpath = name
    else:  # a failed input exists, it just is not a usable image
        Path(input_uri).parent.mkdir(parents=True, exist_ok=True)
        Path(input_uri).write_bytes(b"not an image")
        row.error = error
        row.duration_ms = duration
    return row


def _write_run(root: Path, run_id: str, rows: list[ManifestRow], *, finished=True, minutes=0,
               settings=None, cluster=None, elapsed_s=12.5, images_per_s=2.0) -> None:
    location = Location.parse(str(root / "out"))
    write_committed_part(location, run_id, rows_to_table(rows))
    if finished:
        summary = RunSummary(run_id=run_id, input=str(root / "in"), output=location.uri,
                             started_at=(T0 + timedelta(minutes=minutes)).isoformat(), elapsed_s=elapsed_s,
                             images_per_s=images_per_s, model={"name": "zerodce_sice_v1", "sha256": "not-shipped"},
                             settings=settings or {"strength": 1.0}, versions={"dce_batch": "test"},
                             cluster=cluster or {})
        summary.add(rows_to_table(rows))
        ManifestStore.of(location).write_summary(run_id, summary.to_json())


def test_latest_finished_run_with_skipped_rows_resolved_to_the_run_that_made_them(tmp_path):
    hostile = "CorruptImageError: <script>alert(1)</script> & broken"
    _write_run(tmp_path, "run-a", [
        _row("run-a", "a.png", "ok", tmp_path, minutes=1, luma=(0.05, 0.35), duration=900, seed=1),
        _row("run-a", "sub/b.png", "ok", tmp_path, minutes=2, luma=(0.15, 0.45), duration=300, seed=2),
        _row("run-a", "c.png", "error", tmp_path, minutes=3, error="CorruptImageError: first try"),
    ], minutes=0)
    _write_run(tmp_path, "run-b", [
        _row("run-b", "a.png", "skipped", tmp_path, minutes=11),
        _row("run-b", "sub/b.png", "skipped", tmp_path, minutes=11),
        _row("run-b", "c.png", "error", tmp_path, minutes=12, error=hostile, duration=50),
        _row("run-b", "d.png", "ok", tmp_path, minutes=13, luma=(0.25, 0.55), duration=600, seed=4),
    ], minutes=10)
    _write_run(tmp_path, "run-c", [_row("run-c", "e.png", "ok", tmp_path, minutes=21, seed=5)], finished=False)

    out = Location.parse(str(tmp_path / "out"))
    data = collect_report_data(out)
    assert data.run_id == "run-b" and data.finished and data.runs == ["run-a", "run-b", "run-c"]
    assert data.counts == Counts(total=4, ok=1, skipped=2, error=1) and data.headline.run_id == "run-b"
    assert [(Path(p.input_uri).name, p.made_by) for p in data.pairs] == [("a.png", "run-a"), ("d.png", "run-b"),
                                                                         ("b.png", "run-a")]
    assert sorted(np.round(data.luma_in, 3)) == [0.05, 0.15, 0.25]
    assert sorted(np.round(data.luma_out, 3)) == [0.35, 0.45, 0.55]
    assert [Path(r.input_uri).name for r in data.slowest] == ["a.png", "d.png", "b.png", "c.png"]
    assert [r.error for r in data.failed] == [hostile] and data.errors_by_type == {"CorruptImageError": 1}
    assert any("run-c" in n for n in data.notices) and any("run-a" in n for n in data.notices)

    uri = build_report(str(tmp_path / "out"))
    assert uri == str(tmp_path / "out" / "_report" / "index.html")
    text = Path(uri).read_text()
    page = Page(text)
    assert "script" not in page.tags and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; broken" in text
    assert page.figures == 3 and len(page.images) == 6
    for img in page.images:  # every thumbnail is an inline JPEG that decodes
        assert img["src"].startswith("data:image/jpeg;base64,")
        thumb = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert thumb.size == (int(img["width"]), int(img["height"])) == (64, 48)
    report_dir = Path(uri).parent
    targets = {link["href"] for link in page.links}
    assert "../sub/b.png" in targets and "../d.png" in targets  # outputs: relative to the report
    for href in targets:
        path = Path(unquote(urlsplit(href).path)) if href.startswith("file://") else (report_dir / unquote(href))
        assert path.resolve().is_file(), href
    assert "made by run <span class=\"id\">run-a</span>" in text and "12.5 s" in text
    assert "loss curves" in text and "Not available" in text  # not shipped weights, no pointer


def test_a_run_without_ok_rows(tmp_path):
    _write_run(tmp_path, "only-errors", [
        _row("only-errors", f"x{i}.jpg", "error", tmp_path, minutes=i, error="UnsupportedImageError: nope")
        for i in range(3)])
    uri = build_report(str(tmp_path / "out"))
    text = Path(uri).read_text()
    assert Page(text).figures == 0 and "no enhanced images" in text and "Failed inputs (3)" in text
    assert "UnsupportedImageError" in text and "No brightness figures" in text


def test_unfinished_run_is_reported_with_a_warning(tmp_path):
    _write_run(tmp_path, "cut", [_row("cut", "a.png", "ok", tmp_path, minutes=1)], finished=False)
    text = Path(build_report(str(tmp_path / "out"))).read_text()
    assert "did not finish" in text and Page(text).figures == 1


# The cluster record a Ray run writes into its summary (dce_batch.job.pipeline: engine, resources, ActorPool).
RAY_CLUSTER = {
    "engine": "ray", "resources": {"CPU": 16.0, "GPU": 0.0, "memory": 63_000_000_000.0},
    "actors": {"min_size": 4, "max_size": 4, "cpus_per_actor": 1.0, "gpus_per_actor": 0.0,
               "memory_per_actor": 3_934_003_200, "image_pixel_limit": 100_000_000, "staged": False,
               "task_memory": 0, "limited_by": "memory", "limit_reason": None},
}


def test_the_cluster_is_a_readable_table(tmp_path):
    _write_run(tmp_path, "r1", [_row("r1", "a.png", "ok", tmp_path, minutes=1)], cluster=RAY_CLUSTER)
    text = Path(build_report(str(tmp_path / "out"))).read_text()
    assert cells(text, "cluster") == {
        "engine": "Ray, fused", "actors": "4", "CPUs per actor": "1", "GPUs per actor": "0",
        "memory per actor": "3.66 GiB",  # 3,934,003,200 / 2**30 = 3.664
        "largest image": "100.0 MP", "pool limited by": "memory: as many as it holds",
        "cluster": "16 CPUs, 58.67 GiB of memory",  # 63e9 / 2**30 = 58.674
    }
    assert "3934003200" not in text and "memory_per_actor" not in text and "{&#34;" not in text

    local = {"engine": "local", "resources": {"CPU": 2},
             "actors": {**RAY_CLUSTER["actors"], "min_size": 1, "max_size": 2, "limited_by": "CPU",
                        "image_pixel_limit": 12_000_000, "memory_per_actor": 1_117_782_016,
                        "limit_reason": "this machine had 1.0 GiB of memory to give"}}
    info = cluster_info({"cluster": local, "settings": {"num_actors": [1, 2]}})
    assert (info.engine, info.min_actors, info.max_actors, info.limited_by) == ("local", 1, 2, "--num-actors")
    _write_run(tmp_path, "r2", [_row("r2", "b.png", "ok", tmp_path, minutes=11)], minutes=10, cluster=local,
               settings={"num_actors": [1, 2]})
    assert cells(Path(build_report(str(tmp_path / "out"))).read_text(), "cluster") == {
        "engine": "local processes (no Ray cluster)", "worker processes": "1 to 2", "CPUs per worker": "1",
        "memory per worker": "1.04 GiB", "largest image": "12.0 MP", "pool limited by": "--num-actors, as given",
        "larger images": "fail: this machine had 1.0 GiB of memory to give", "machine": "2 CPUs",
    }
    assert cluster_info({}) is None and cluster_info({"cluster": {}}) is None  # a run that started no pool


def test_a_later_run_that_enhanced_nothing_keeps_the_figures_of_the_run_that_did(tmp_path):
    _write_run(tmp_path, "work", [
        _row("work", "a.png", "ok", tmp_path, minutes=1, seed=1), _row("work", "b.png", "ok", tmp_path, minutes=1, seed=2),
        _row("work", "c.png", "error", tmp_path, minutes=1, error="CorruptImageError: truncated"),
    ], elapsed_s=40.0, images_per_s=0.075)
    _write_run(tmp_path, "retry", [  # retried the failure, which failed again: enhanced nothing
        _row("retry", "a.png", "skipped", tmp_path, minutes=11), _row("retry", "b.png", "skipped", tmp_path, minutes=11),
        _row("retry", "c.png", "error", tmp_path, minutes=11, error="CorruptImageError: still truncated"),
    ], minutes=10, elapsed_s=1.5, images_per_s=0.67)
    out = Location.parse(str(tmp_path / "out"))
    data = collect_report_data(out)
    assert data.run_id == "retry" and data.counts == Counts(total=3, ok=0, skipped=2, error=1)
    assert data.headline.run_id == "work" and data.headline.counts == Counts(total=3, ok=2, skipped=0, error=1)
    assert (data.headline.elapsed_s, data.headline.images_per_s) == (40.0, 0.075)
    assert [f.error for f in data.failed] == ["CorruptImageError: still truncated"]  # the latest attempt
    assert any("Run retry" in n and "2 inputs were enhanced before and 1 failed" in n and "run work" in n
               for n in data.notices), data.notices
    text = Path(build_report(str(tmp_path / "out"))).read_text()
    assert headline(text) == {"inputs": "3", "enhanced (ok)": "2", "skipped (done before)": "0", "failed": "1",
                              "images/s": "0.07", "megapixels/s": "0.00", "elapsed": "40.0 s",
                              "bytes in / out": "2,000 / 2,000"}
    assert "made by run" not in text  # every output is the headline run's own

    # A later run that enhanced something heads the page again, and the explicit earlier one still can.
    _write_run(tmp_path, "more", [_row("more", "d.png", "ok", tmp_path, minutes=21, seed=4)], minutes=20)
    assert collect_report_data(out).headline.run_id == "more"
    earlier = collect_report_data(out, run_id="work")
    assert earlier.headline.run_id == "work" and any("Later finished runs are not shown: retry, more" in n
                                                     for n in earlier.notices)


@pytest.mark.slow
def test_a_rerun_with_nothing_to_do_reports_the_first_runs_figures(tmp_path):
    """Two real `dce-batch enhance` runs on one folder: the report the second one writes, and the one
    `dce-batch report` writes after it, head with the first run's figures."""
    for i, name in enumerate(["one.png", "two.png"]):
        _image(tmp_path / "in" / name, seed=i, size=(96, 64))
    out = tmp_path / "out"
    # A subprocess: the command ends its process when done (os._exit).
    command = [sys.executable, "-m", "dce_batch.cli", "enhance", str(tmp_path / "in"), str(out), "--engine", "local",
               "--quiet"]
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    first, second = sorted((json.loads(p.read_text()) for p in (out / "_manifest").glob("_run-*.json")),
                           key=lambda s: s["started_at"])
    assert (first["ok"], second["ok"], second["skipped"]) == (2, 0, 2) and first["images_per_s"] > 0
    expected = {"inputs": "2", "enhanced (ok)": "2", "skipped (done before)": "0", "failed": "0",
                "images/s": f"{first['images_per_s']:.2f}", "megapixels/s": f"{first['megapixels_per_s']:.2f}",
                "elapsed": f"{first['elapsed_s']:.1f} s",
                "bytes in / out": f"{first['bytes_in']:,} / {first['bytes_out']:,}"}
    index = out / "_report" / "index.html"
    for text in (index.read_text(), Path(build_report(str(out))).read_text()):  # enhance's, then report's
        assert headline(text) == expected
        assert f"Run {second['run_id']}" in text and "had nothing to do: all 2 of its inputs were enhanced before" in text
        assert f"Enhancement run {first['run_id']}" in text
        assert cells(text, "cluster")["engine"] == "local processes (no Ray cluster)"
        assert Page(text).figures == 2 and "made by run" not in text


HOSTILE_NAME = """x" onerror="alert('n') & <script>alert(1)<\\script> 'q'.png"""
HOSTILE_ERROR = """CorruptImageError: <script>alert("e")</script> & 'quoted' "too" """
HOSTILE_SETTINGS = {"weights": "<script>alert('s')</script>", "note": '" onmouseover="alert(2)', "a&b": "<img src=x>"}


def test_hostile_names_errors_and_settings_are_escaped(tmp_path):
    _write_run(tmp_path, "r<&>", [
        _row("r<&>", HOSTILE_NAME, "ok", tmp_path, minutes=1, duration=500),
        _row("r<&>", "bad " + HOSTILE_NAME, "error", tmp_path, minutes=2, error=HOSTILE_ERROR),
    ], settings=HOSTILE_SETTINGS)
    text = Path(build_report(str(tmp_path / "out"))).read_text()
    page = Page(text)
    assert "<script" not in text and "<img src=x" not in text and "<\\script" not in text
    assert page.tags.count("script") == 0 and page.tags.count("img") == 2  # the pair's two thumbnails
    assert page.attributes <= {"lang", "charset", "http-equiv", "content", "name", "id", "class", "href", "title",
                               "src", "width", "height", "alt", "viewbox", "xmlns", "role", "x", "y", "x1", "y1",
                               "x2", "y2", "fill", "text-anchor", "transform"}, page.attributes
    # Escaped, not dropped: the parsed page gives back every hostile string exactly.
    assert HOSTILE_NAME in page.titles and f"{tmp_path}/in/bad {HOSTILE_NAME}" in page.titles
    shown = "".join(page.texts)
    assert HOSTILE_ERROR in shown and HOSTILE_NAME in shown and "r<&>" in shown
    for key, value in HOSTILE_SETTINGS.items():
        assert key + value in shown
    assert "&lt;script&gt;alert(&#34;e&#34;)&lt;/script&gt; &amp; &#39;quoted&#39;" in text


def test_the_template_renders_with_autoescape(tmp_path):
    assert environment().autoescape is True
    assert str(environment().from_string("{{ value }}").render(value="<b>x</b>")) == "&lt;b&gt;x&lt;/b&gt;"
    _write_run(tmp_path, "r1", [_row("r1", "a.png", "ok", tmp_path, minutes=1)], settings={"note": "<b>bold</b>"})
    text = Path(build_report(str(tmp_path / "out"))).read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold" not in text


def test_captions_wrap_between_words_and_long_names_end_in_an_ellipsis(tmp_path):
    """The page's own rules; test_long_and_hostile_names_in_headless_chromium checks the layout."""
    long_name = "a_long_camera_export_name_" * 6 + ".png"
    _write_run(tmp_path, "r1", [_row("r1", long_name, "ok", tmp_path, minutes=1)])
    text = Path(build_report(str(tmp_path / "out"))).read_text()
    assert "word-break: break-all" not in text and "overflow-wrap: anywhere" not in text  # both split words
    assert "overflow-wrap: break-word; word-break: normal;" in text and "text-overflow: ellipsis" in text
    assert f'<span class="name" title="{long_name}">{long_name}</span>' in text


def test_no_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="no run manifest"):
        build_report(str(tmp_path))
    from dce_batch.cli import main

    assert main(["report", str(tmp_path)]) == 2


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "null", '{"settings": [1]}', '{"model": "m"}',
                                     '{"run_id": 7}', '{"cluster": [1]}', '{"elapsed_s": "slow"}', '{"versions": 3}',
                                     '{"settings": {"strength": 1.0}, "ok": "many"}'])
def test_a_summary_that_is_not_an_object_of_the_right_types_is_skipped_with_a_warning(content, tmp_path, capsys):
    _write_run(tmp_path, "r1", [_row("r1", "a.png", "ok", tmp_path, minutes=1)])
    _write_run(tmp_path, "r2", [_row("r2", "b.png", "ok", tmp_path, minutes=11)], minutes=10)
    summary = tmp_path / "out" / "_manifest" / "_run-r2.json"
    summary.write_text(content)
    said = []
    build_report(str(tmp_path / "out"), log=said.append)
    data = collect_report_data(Location.parse(str(tmp_path / "out")))
    assert data.run_id == "r1" and "r2" in data.runs, "r2 counts as a run that did not finish"
    assert any("_run-r2.json" in line and "skipped" in line for line in said), said
    from dce_batch.cli import main

    assert main(["report", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "_run-r2.json" in err


@pytest.mark.slow
def test_a_huge_manifest_is_sampled(tmp_path):
    """200,000 rows: only max_pairs images are read (the rest are never touched)."""
    count = 200_000
    root = tmp_path / "out"
    names = [f"{root}/img{i:06d}.jpg" for i in range(count)]
    rng = np.random.default_rng(0)
    table = pa.table({
        "run_id": ["big"] * count, "input_uri": [n.replace("/out/", "/in/") for n in names],
        "input_relpath": [n.rsplit("/", 1)[1] for n in names], "output_relpath": [n.rsplit("/", 1)[1] for n in names],
        "status": ["ok"] * (count - 10) + ["error"] * 10, "error": [None] * (count - 10) + ["CorruptImageError: x"] * 10,
        "mean_luma_in": rng.random(count).astype(np.float32) * 0.2,
        "mean_luma_out": rng.random(count).astype(np.float32) * 0.3 + 0.3,
        "duration_ms": rng.random(count).astype(np.float32) * 1000, "width": [640] * count, "height": [480] * count,
        "finished_at": [T0] * count,
    })
    full = pa.table({f.name: table[f.name] if f.name in table.column_names else pa.nulls(count, f.type)
                     for f in MANIFEST_SCHEMA}, schema=MANIFEST_SCHEMA)
    location = Location.parse(str(root))
    write_committed_part(location, "big", full)
    sampled = sample_evenly(count - 10, 8)  # the ok rows, in input order (names are zero-padded)
    for i in (sampled[0], sampled[4]):  # two of the sampled images exist
        _image(Path(names[i]), i)
        _image(Path(names[i].replace("/out/", "/in/")), i)
    text = Path(build_report(str(root), max_pairs=8)).read_text()
    page = Page(text)
    assert page.figures == 8 and "8 evenly spaced of 199,990" in text and "Failed inputs (10)" in text
    assert len(page.images) == 4 and text.count("unavailable") == 12  # 6 sampled pairs have no files
    assert len(text) < 400_000


def test_sample_evenly_and_histogram():
    assert sample_evenly(5, 24) == [0, 1, 2, 3, 4]
    assert sample_evenly(100, 4) == [12, 37, 62, 87]
    assert sample_evenly(0, 4) == [] and sample_evenly(3, 0) == []
    chart = histogram_chart(np.array([0.05, 0.06, 0.5]), np.array([0.4, 0.41, 0.9]), bins=10)
    # Bins of 0.1: before has 2 in [0.0, 0.1) and 1 in [0.5, 0.6); after 2 in [0.4, 0.5) and 1 in [0.9, 1.0].
    assert [bar.tooltip for bar in chart.bars] == ["0.00-0.10: 2", "0.50-0.60: 1", "0.40-0.50: 2", "0.90-1.00: 1"]
    tallest = [bar.height for bar in chart.bars if bar.tooltip.endswith(": 2")]
    assert tallest == [max(bar.height for bar in chart.bars)] * 2  # heights scale with the counts
    assert [entry.label for entry in chart.legend] == ["before", "after"]
    svg = environment().get_template("charts.svg.j2").module.svg(chart)
    assert svg.count("<rect") == 4 + 2 and svg.lstrip().startswith("<svg")  # 4 bars + 2 legend swatches


def test_loss_curves_of_own_weights_through_metrics_uri(tmp_path):
    from dce_batch.enhance.network import DCENet
    from dce_batch.enhance.weights import save_weights

    metrics = tmp_path / "run" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"run": "mine", "history": [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1}, {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9}]}))
    weights = tmp_path / "mine.safetensors"
    _, meta = save_weights(DCENet(), weights, name="mine", variant="full", recipe={"metrics_uri": str(metrics)})
    found_meta, runs = training_history({"model": {"sha256": meta.sha256}, "settings": {"weights": str(weights)}}, None)
    assert found_meta["name"] == "mine" and runs[0].run == "mine" and runs[0].epochs == 2
    assert runs[0].train == ((1.0, 1.0), (2.0, 0.8)) and runs[0].validation == ((1.0, 1.1), (2.0, 0.9))
    shipped_meta, shipped_runs = training_history({"model": {"sha256": _shipped_sha("zerodcepp_sice_v2")}}, None)
    assert shipped_meta["name"] == "zerodcepp_sice_v2" and [r.run for r in shipped_runs] == [
        "zerodcepp_sice_v1", "zerodcepp_sice_v2_stage2", "zerodcepp_sice_v2"]


def _shipped_sha(name: str) -> str:
    from dce_batch.models import get_weights

    return get_weights(name).sha256


@pytest.mark.s3
def test_report_on_s3_with_presigned_links(s3_server, s3_bucket, tmp_path):
    options = s3_server.s3_options()
    prefix = f"s3://{s3_bucket}/out"
    location = Location.parse(prefix, options)
    images = {}
    for i, name in enumerate(["a.png", "dir/b c.png"]):  # a space: the key must be encoded in the link
        for side in ("in", "out"):
            buffer = io.BytesIO()
            Image.fromarray(np.full((20, 30, 3), 10 + 40 * i, np.uint8)).save(buffer, "PNG")
            key = f"{side}/{name}"
            s3_server.put_object(s3_bucket, key, buffer.getvalue())
            images[f"s3://{s3_bucket}/{key}"] = buffer.getvalue()
    rows = [ManifestRow(run_id="s3run", input_relpath=n, input_uri=f"s3://{s3_bucket}/in/{n}", output_relpath=n,
                        status="ok", width=30, height=20, mean_luma_in=0.1, mean_luma_out=0.4, duration_ms=10.0,
                        finished_at=T0) for n in ["a.png", "dir/b c.png"]]
    write_committed_part(location, "s3run", rows_to_table(rows))

    uri = build_report(prefix, s3=options)
    assert uri == f"{prefix}/_report/index.html"
    text = s3_server.get_object(s3_bucket, "out/_report/index.html").decode()
    page = Page(text)
    assert page.figures == 2 and all(img["src"].startswith("data:image/jpeg") for img in page.images)
    presigned = [link["href"] for link in page.links if "X-Amz-Signature=" in link["href"]]
    assert len(presigned) == 4 + 4  # each image and each "input"/"output" text link
    fetched = {}
    for href in presigned:
        with urllib.request.urlopen(href, timeout=10) as response:  # a plain HTTPS/HTTP GET, no credentials
            fetched[unquote(urlsplit(href).path)] = response.read()
    assert sorted(fetched.values()) == sorted(images.values())
    assert "presigned HTTPS URLs valid until" in text

    text = Path(_download(s3_server, s3_bucket, build_report(prefix, s3=options, presign_expires_s=0), tmp_path)).read_text()
    assert "X-Amz-Signature" not in text and f"s3://{s3_bucket}/out/dir/b c.png" in text
    assert "shown by URI, not linked (presigned links were turned off)" in text


def _download(s3_server, bucket: str, uri: str, tmp_path: Path) -> Path:
    key = uri.split(f"s3://{bucket}/", 1)[1]
    target = tmp_path / "index.html"
    target.write_bytes(s3_server.get_object(bucket, key))
    return target


def test_cli_prints_the_report_path(tmp_path):
    _write_run(tmp_path, "r1", [_row("r1", "a.png", "ok", tmp_path, minutes=1)])
    done = subprocess.run([sys.executable, "-m", "dce_batch.cli", "report", str(tmp_path / "out"), "--max-pairs", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "out" / "_report" / "index.html")


# --------------------------------------------------------------------------------------------
# A real run, a real browser
# --------------------------------------------------------------------------------------------

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def samples_run(ray_local, tmp_path_factory) -> Path:
    """The real job over the bundled samples, on Ray (one actor: the report shows the run's
    figures and pairs, whatever the pool's size)."""
    out = tmp_path_factory.mktemp("samples") / "enhanced"
    summary = run_enhance(EnhanceConfig(input=sample_images_dir(), output=str(out), num_actors=(1, 1)),
                          log=lambda line: None)
    assert summary.ok == len(SAMPLES) and summary.error == 0
    return out


# Words of the pair captions that the layout splits over two lines (each word a text range whose boxes
# sit on more than one line).
SPLIT_WORDS_JS = """() => {
  const split = [];
  for (const caption of document.querySelectorAll('figure.pair figcaption')) {
    const walker = document.createTreeWalker(caption, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const word of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, word.index);
        range.setEnd(node, word.index + word[0].length);
        const lines = new Set(Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (lines.size > 1) split.push(word[0]);
      }
    }
  }
  return split;
}"""
NAMES_JS = """() => Array.from(document.querySelectorAll('figcaption .name')).map(n => ({
  text: n.textContent, title: n.title, clipped: n.scrollWidth > n.clientWidth,
  ellipsis: getComputedStyle(n).textOverflow, lines: n.getClientRects().length}))"""


def _chromium_or_skip() -> str:
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium found (looked for chromium, chromium-browser, google-chrome on PATH): "
                    "install Debian's package with `apt-get install -y chromium` (.ci/run does)")
    return browser


def _open_in_chromium(browser: str, index: Path, screenshot: Path) -> dict:
    """Load a report in headless Chromium; what it shows and every problem it reports."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    # A new, empty profile; Playwright drives the system's Chromium and never downloads its own.
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(dir=screenshot.parent) as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=browser, headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} {r.failure}"))
            page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
            page.goto(index.as_uri(), wait_until="load")
            seen = {
                "images": page.evaluate("Array.from(document.images).map(i => ({complete: i.complete, "
                                        "width: i.naturalWidth, alt: i.alt}))"),
                "pairs": page.locator("figure.pair").count(),
                "summary": page.inner_text("#summary"),
                "pair_text": page.inner_text("#pairs"),
                "hrefs": page.evaluate("Array.from(document.querySelectorAll('#pairs a')).map(a => a.href)"),
                "scripts": page.evaluate("document.scripts.length"),
                "split_words": page.evaluate(SPLIT_WORDS_JS),
                "names": page.evaluate(NAMES_JS),
            }
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return {**seen, "problems": problems}


@pytest.mark.ray
@pytest.mark.slow
def test_report_of_a_real_run_in_headless_chromium(samples_run, tmp_path, capsys):
    browser = _chromium_or_skip()
    screenshot = tmp_path / "report.png"
    seen = _open_in_chromium(browser, Path(build_report(str(samples_run))), screenshot)
    with capsys.disabled():
        print(f"\nreport screenshot: {screenshot}")
    assert seen["problems"] == [] and seen["scripts"] == 0
    assert seen["pairs"] == len(SAMPLES) and len(seen["images"]) == 2 * len(SAMPLES)
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    for name in SAMPLES:
        assert name in seen["pair_text"]
    summary = seen["summary"]
    assert "5\ninputs" in summary and "5\nenhanced (ok)" in summary and "0\nfailed" in summary
    assert "zerodce_sice_v1" in summary and "Ray, fused" in summary
    for href in seen["hrefs"]:  # every link opens an existing full-size file
        assert href.startswith("file://") and Path(unquote(urlsplit(href).path)).is_file(), href
    assert seen["split_words"] == []
    assert screenshot.stat().st_size > 10_000


def test_long_and_hostile_names_in_headless_chromium(tmp_path):
    """Captions wrap between words only, a long name ends in an ellipsis with the whole name in its
    title, and hostile names run nothing."""
    browser = _chromium_or_skip()
    long_name = "holiday_photos_exported_from_the_camera_" * 4 + "IMG_0001.png"
    run_ids = ("2026-01-02T03-04-05-first-attempt-interrupted", "2026-01-02T05-06-07-resumed-after-a-power-cut")
    _write_run(tmp_path, run_ids[0], [_row(run_ids[0], n, "ok", tmp_path, minutes=1, seed=i)
                                      for i, n in enumerate([long_name, HOSTILE_NAME])])
    _write_run(tmp_path, run_ids[1], [_row(run_ids[1], long_name, "skipped", tmp_path, minutes=11),
                                      _row(run_ids[1], HOSTILE_NAME, "skipped", tmp_path, minutes=11),
                                      _row(run_ids[1], "short.png", "ok", tmp_path, minutes=12, seed=7)], minutes=10)
    seen = _open_in_chromium(browser, Path(build_report(str(tmp_path / "out"))), tmp_path / "names.png")
    assert seen["problems"] == [] and seen["scripts"] == 0
    assert len(seen["images"]) == 6 and all(i["complete"] and i["width"] > 0 for i in seen["images"])
    assert seen["split_words"] == []
    assert f"made by run {run_ids[0]}" in seen["pair_text"]  # the long captions that must wrap
    names = {n["title"]: n for n in seen["names"]}
    assert names.keys() == {long_name, HOSTILE_NAME, "short.png"}
    assert all(n["text"] == title and n["lines"] == 1 for title, n in names.items())
    assert names[long_name]["clipped"] and names[long_name]["ellipsis"] == "ellipsis"
    assert not names["short.png"]["clipped"]


def test_thumbnails_are_upright_and_handle_odd_modes():
    rotated = thumbnail((Path(sample_images_dir()) / "coffee_dim_rotated.jpg").read_bytes())
    assert (rotated.width, rotated.height) == (360, 240)  # stored 341 x 512 with EXIF orientation 6
    for mode, array in (("I;16", (np.arange(64 * 40, dtype=np.uint16).reshape(40, 64) * 20)),
                        ("CMYK", np.full((40, 64, 4), 60, np.uint8))):
        buffer = io.BytesIO()
        image = Image.fromarray(array, mode) if mode == "CMYK" else Image.fromarray(array)
        image.save(buffer, "TIFF")
        thumb = thumbnail(buffer.getvalue())
        assert thumb.data_uri is not None and (thumb.width, thumb.height) == (64, 40), mode
        decoded = Image.open(io.BytesIO(base64.b64decode(thumb.data_uri.split(",", 1)[1])))
        assert decoded.mode == "RGB" and decoded.size == (64, 40)
