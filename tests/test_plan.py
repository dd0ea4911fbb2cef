"""Planning without Ray: output names, refusals, and settings-aware resume."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dce_batch.errors import ConfigError
from dce_batch.imaging import DEFAULT_MAX_PIXELS, max_file_bytes
from dce_batch.job.manifest import MANIFEST_SCHEMA, ManifestRow, conform, rows_to_table
from dce_batch.job import EnhanceConfig
from dce_batch.job.output_settings import describe_settings_change, output_settings, settings_digest, settings_for_run
from dce_batch.job.plan import input_table, list_output_files, output_relpath, plan_run
from dce_batch.storage import InputFile, Location, temp_tag


def _settings_for(strength=1.0, quality=95, model="m" * 64, precision="auto"):
    def settings_for(output_format):
        return output_settings(model_sha256=model, variant="full", scale=12, strength=strength, precision=precision,
                               format="same", quality=quality, output_format=output_format)
    return settings_for


def test_dce_net_at_scale_1_keeps_the_settings_earlier_versions_recorded():
    """Outputs made at full resolution before the scale applied to DCE-Net (recorded with scale
    None) resume with --scale 1, and are refused, naming the scale, under the default 4."""
    def settings(variant, scale):
        return output_settings(model_sha256="m" * 64, variant=variant, scale=scale, strength=1.0, precision="auto",
                               format="same", quality=95, output_format="jpeg")

    assert settings("full", 1)["scale"] is None  # what every earlier version recorded for DCE-Net
    assert settings("full", 4)["scale"] == 4.0 and settings("fast", 1)["scale"] == 1.0
    change = describe_settings_change(settings_digest(settings("full", 1))[0], settings_digest(settings("full", 4))[0])
    assert change == "scale 1.0 (full resolution) -> 4.0"


def _plan(tmp_path, inputs, *, fmt="same", done=None, existing=None, settings_for=None, max_pixels=DEFAULT_MAX_PIXELS,
          output=None, input_root=None):
    output = output or Location.parse(str(tmp_path / "out"))
    return plan_run(listing=input_table(inputs), output=output, run_id="run2", input_root=input_root,
                    settings_for=settings_for or _settings_for(), requested_format=fmt,
                    row_constants={"model_name": "m", "model_sha256": "m" * 64, "strength": 1.0, "variant": "full",
                                   "precision": "auto"},
                    done=done, existing_outputs=None if existing is None else pa.array(existing, pa.string()),
                    max_pixels=max_pixels)


def _inputs(*relpaths, root="/in", size=1):
    return [InputFile(uri=f"{root}/{r}", path=f"{root}/{r}", relpath=r, size=size) for r in relpaths]


def test_output_names_mirror_inputs_and_change_extension_only_with_the_format(tmp_path):
    plan = _plan(tmp_path, _inputs("sub/b.png", "a.jpg", "c.gif", "e.mpo", "d.JPEG"))  # in any order
    out = tmp_path / "out"
    # what remains to do comes back in name order
    assert plan.todo["input_relpath"].to_pylist() == ["a.jpg", "c.gif", "d.JPEG", "e.mpo", "sub/b.png"]
    assert plan.todo["output_path"].to_pylist() == [str(out / "a.jpg"), str(out / "c.png"), str(out / "d.JPEG"),
                                                    str(out / "e.mpo"), str(out / "sub/b.png")]
    assert plan.todo["output_format"].to_pylist() == ["JPEG", "PNG", "JPEG", "JPEG", "PNG"]
    assert plan.todo["output_relpath"].to_pylist() == ["a.jpg", "c.png", "d.JPEG", "e.mpo", "sub/b.png"]
    kept = _plan(tmp_path, _inputs("sub/b.png", "a.jpg", "d.JPEG", "e.mpo", "f.name.tif"))  # no name changes
    assert kept.todo["output_relpath"].to_pylist() == kept.todo["input_relpath"].to_pylist() == [
        "a.jpg", "d.JPEG", "e.mpo", "f.name.tif", "sub/b.png"]
    assert kept.todo["output_format"].to_pylist() == ["JPEG", "JPEG", "JPEG", "TIFF", "PNG"]
    webp = _plan(tmp_path, _inputs("a.jpg", "b.png"), fmt="webp")
    assert [p.rsplit("/", 1)[1] for p in webp.todo["output_path"].to_pylist()] == ["a.webp", "b.webp"]
    assert output_relpath("x/y.jpeg", "JPEG") == "x/y.jpeg" and output_relpath("x/y.gif", "PNG") == "x/y.png"


def test_planning_refuses_escaping_colliding_and_reserved_names(tmp_path):
    """Input keys can never make an output path escape OUTPUT, land in _manifest, or share an output."""
    inputs = [
        InputFile(uri="s3://b/../../etc/evil.jpg", path="b/x/evil.jpg", relpath="../../etc/evil.jpg", size=1),
        *_inputs("a.png", "a.jpg", "b.gif", "_manifest/part-x.png", "_report/index.png", "ok/_manifest.png"),
    ]
    plan = _plan(tmp_path, inputs, fmt="jpeg")
    refused = dict(zip(plan.refused["input_uri"].to_pylist(), plan.refused["error"].to_pylist()))
    assert refused["s3://b/../../etc/evil.jpg"].startswith("StorageError")
    # the first in name order claims the output, whatever order the listing came in
    assert "OutputCollisionError" in refused["/in/a.png"] and "/in/a.jpg" in refused["/in/a.png"]
    assert refused["/in/_manifest/part-x.png"].startswith("ReservedNameError") and "_manifest" in refused["/in/_manifest/part-x.png"]
    assert refused["/in/_report/index.png"].startswith("ReservedNameError")
    assert plan.todo["output_relpath"].to_pylist() == ["a.jpg", "b.jpg", "ok/_manifest.jpg"]
    assert set(plan.refused["status"].to_pylist()) == {"error"} and plan.refused.schema.equals(MANIFEST_SCHEMA)
    assert plan.total == len(inputs)


def test_a_collision_is_won_by_the_input_whose_name_the_output_is_and_the_advice_fits_it(tmp_path):
    """coll.gif is written as coll.png: the real coll.png keeps its output, whatever the name order
    or the listing's order, and the advice is only a new name, since no --format separates them."""
    for names in (("coll.gif", "coll.png"), ("coll.png", "coll.gif")):
        plan = _plan(tmp_path, _inputs(*names))
        refused = dict(zip(plan.refused["input_uri"].to_pylist(), plan.refused["error"].to_pylist()))
        assert plan.todo["input_relpath"].to_pylist() == ["coll.png"] and list(refused) == ["/in/coll.gif"]
        assert refused["/in/coll.gif"].endswith("already writes " + str(tmp_path / "out" / "coll.png") + "; rename one of them")
    plan = _plan(tmp_path, _inputs("a.png", "a.jpg", "b.gif", "b.png"), fmt="jpeg")
    refused = dict(zip(plan.refused["input_uri"].to_pylist(), plan.refused["error"].to_pylist()))
    assert refused["/in/a.png"].endswith("rename one of them or use --format same")  # a.jpg and a.png apart
    assert refused["/in/b.png"].endswith("rename one of them")  # b.gif is written as b.png under --format same


def test_a_file_larger_than_any_image_within_max_pixels_is_refused_unread(tmp_path):
    """A 5 GB "photo" (a video renamed, say) would exhaust the actor's memory on every rerun."""
    limit = max_file_bytes(DEFAULT_MAX_PIXELS)
    assert limit == 100_000_000 * 8 + (256 << 20)  # 16-bit RGBA uncompressed, plus metadata
    inputs = [InputFile(uri=f"/in/{name}", path=f"/in/{name}", relpath=name, size=size)
              for name, size in [("edge.tif", limit), ("huge.jpg", 5_000_000_000), ("unknown.jpg", None)]]
    plan = _plan(tmp_path, inputs)
    refused = dict(zip(plan.refused["input_uri"].to_pylist(), plan.refused["error"].to_pylist()))
    assert list(refused) == ["/in/huge.jpg"] and plan.todo.num_rows == 2  # sizes not listed are read
    assert refused["/in/huge.jpg"] == (
        "ImageTooLargeError: the file is 5.00 GB, more than any image of up to 100 MP takes (1.07 GB), so it is "
        "not read; raise --max-pixels if it really is one image")
    small_limit = _plan(tmp_path, inputs[:1], max_pixels=1_000_000)
    assert small_limit.todo.num_rows == 0 and small_limit.refused.num_rows == 1


def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path):
    inputs = [InputFile(uri=str(tmp_path / "out" / "a.png"), path=str(tmp_path / "out" / "a.png"), relpath="a.png", size=1)]
    with pytest.raises(ConfigError, match="overwrite the input"):
        _plan(tmp_path, inputs)


def _done_row(input_uri, output_relpath, settings_for, output_format="PNG", run_id="run1", status="ok", age_s=60,
              with_settings=True, **extra):
    text, digest = settings_digest(settings_for(output_format))
    return ManifestRow(run_id=run_id, input_uri=input_uri, input_relpath=input_uri.rsplit("/in/", 1)[-1],
                       output_relpath=output_relpath, status=status,
                       output_format=output_format, strength=0.5, model_sha256="m" * 64, precision="bf16",
                       settings=text if with_settings else None, settings_sha256=digest if with_settings else None,
                       made_by_run_id=run_id, finished_at=datetime.now(timezone.utc) - timedelta(seconds=age_s),
                       width=10, height=20, **extra)


def test_resume_skips_only_outputs_that_exist_and_were_made_with_the_same_settings(tmp_path):
    settings = _settings_for()
    done = rows_to_table([
        _done_row("/in/a.png", "a.png", settings),
        _done_row("/in/b.png", "b.png", settings),  # output deleted since: redo
        _done_row("/in/c.png", None, settings, status="error"),  # failed before: retry
        _done_row("/in/d.png", "d.png", settings, run_id="run0", age_s=600),
        _done_row("/in/d.png", "d.png", settings, run_id="run1", age_s=60),  # redone later: latest wins
    ])
    plan = _plan(tmp_path, _inputs("a.png", "b.png", "c.png", "d.png"), done=done,
                 existing=["a.png", "d.png"])
    assert plan.todo["input_uri"].to_pylist() == ["/in/b.png", "/in/c.png"]
    skipped = {r["input_uri"]: r for r in plan.skipped.to_pylist()}
    assert set(skipped) == {"/in/a.png", "/in/d.png"}
    for row in skipped.values():
        assert row["status"] == "skipped" and row["run_id"] == "run2"
        # the settings of the run that made the output, never this run's
        assert row["made_by_run_id"] == "run1" and row["strength"] == 0.5 and row["precision"] == "bf16"
        assert (row["width"], row["height"]) == (10, 20) and row["duration_ms"] is None
    assert conform(plan.skipped).schema.equals(MANIFEST_SCHEMA)


@pytest.mark.parametrize("change", [dict(strength=0.3), dict(quality=80), dict(model="n" * 64), dict(precision="fp32")])
def test_resume_with_other_settings_is_refused_naming_the_difference(tmp_path, change):
    done = rows_to_table([_done_row("/in/a.jpg", "a.jpg", _settings_for(), output_format="JPEG")])
    with pytest.raises(ConfigError) as info:
        _plan(tmp_path, _inputs("a.jpg"), done=done, existing=["a.jpg"], settings_for=_settings_for(**change))
    message = str(info.value)
    assert "--overwrite" in message and "new OUTPUT" in message
    key, value = next(iter(change.items()))
    assert {"model": "model_sha256"}.get(key, key) in message


def test_quality_does_not_matter_for_lossless_outputs(tmp_path):
    done = rows_to_table([_done_row("/in/a.png", "a.png", _settings_for())])
    plan = _plan(tmp_path, _inputs("a.png"), done=done, existing=["a.png"],
                 settings_for=_settings_for(quality=50))
    assert plan.skipped.num_rows == 1 and plan.todo.num_rows == 0


def test_outputs_from_a_manifest_without_settings_are_not_resumed_blindly(tmp_path):
    done = rows_to_table([_done_row("/in/a.png", "a.png", _settings_for(), with_settings=False)])
    with pytest.raises(ConfigError, match="settings not recorded"):
        _plan(tmp_path, _inputs("a.png"), done=done, existing=["a.png"])


def test_outputs_of_an_earlier_finishing_algorithm_are_not_resumed(tmp_path):
    """The job's settings name the finishing algorithm, so a new release never mixes its pixels
    with an earlier one's under the same flags."""
    from types import SimpleNamespace

    
    from dce_batch.enhance.settings import FINISH_METHOD

    out = tmp_path / "out"
    meta = SimpleNamespace(sha256="m" * 64, variant="full")
    now = settings_for_run(EnhanceConfig(input="/in", output=str(out)), meta, "PNG")
    assert now["finishing"]["method"] == FINISH_METHOD
    earlier = dict(now, finishing={k: v for k, v in now["finishing"].items() if k != "method"})
    done = rows_to_table([_done_row("/in/a.png", "a.png", lambda fmt: earlier)])
    with pytest.raises(ConfigError, match=f"finishing .*'method': '{FINISH_METHOD}'"):
        _plan(tmp_path, _inputs("a.png"), done=done, existing=["a.png"], settings_for=lambda fmt: now)
    same = rows_to_table([_done_row("/in/a.png", "a.png", lambda fmt: now)])
    plan = _plan(tmp_path, _inputs("a.png"), done=same, existing=["a.png"], settings_for=lambda fmt: now)
    assert plan.skipped.num_rows == 1


def test_outputs_of_another_finishing_version_are_refused_naming_the_method(tmp_path):
    """Rows whose finishing method (name and version) differs from this run's describe other
    pixels: resume refuses them, naming the method; every path's name carries one version."""
    from types import SimpleNamespace

    from dce_batch.enhance.settings import (FAST_FINISH_METHOD, FINISH_METHOD, FINISH_VERSION, RATIO_FINISH_METHODS,
                                            UNMATCHED_FINISH_METHOD)

    out = tmp_path / "out"
    meta = SimpleNamespace(sha256="m" * 64, variant="full")
    default = settings_for_run(EnhanceConfig(input="/in", output=str(out)), meta, "PNG")
    earlier = dict(default, finishing=dict(default["finishing"], method="lee-wiener-2"))
    done = rows_to_table([_done_row("/in/a.png", "a.png", lambda fmt: earlier)])
    with pytest.raises(ConfigError, match=f"'method': '{FINISH_METHOD}'"):
        _plan(tmp_path, _inputs("a.png"), done=done, existing=["a.png"], settings_for=lambda fmt: default)
    fast = settings_for_run(EnhanceConfig(input="/in", output=str(out), denoise="fast"), meta, "PNG")
    assert fast["finishing"]["method"] == FAST_FINISH_METHOD
    names = [FINISH_METHOD, UNMATCHED_FINISH_METHOD, FAST_FINISH_METHOD, *RATIO_FINISH_METHODS.values()]
    assert len(set(names)) == len(names) and all(n.endswith(f"-{FINISH_VERSION}") for n in names)


def test_the_highlight_stretch_is_recorded_where_it_acts(tmp_path):
    """The highlight stretch changes pixels, so it is recorded where it acts: rows made with it
    off are refused under the default, naming it, and resume with ``--highlight-stretch 0``;
    with exposure off it does nothing and is not recorded."""
    from types import SimpleNamespace


    out = tmp_path / "out"
    meta = SimpleNamespace(sha256="m" * 64, variant="full")
    default = settings_for_run(EnhanceConfig(input="/in", output=str(out)), meta, "PNG")
    assert default["finishing"]["highlight_stretch"] == 0.8
    off = settings_for_run(EnhanceConfig(input="/in", output=str(out), highlight_stretch=0.0), meta, "PNG")
    assert "highlight_stretch" not in off["finishing"]
    no_exposure = settings_for_run(EnhanceConfig(input="/in", output=str(out), exposure="off"), meta, "PNG")
    assert "highlight_stretch" not in no_exposure["finishing"]
    done = rows_to_table([_done_row("/in/a.png", "a.png", lambda fmt: off)])
    with pytest.raises(ConfigError, match="highlight_stretch"):
        _plan(tmp_path, _inputs("a.png"), done=done, existing=["a.png"], settings_for=lambda fmt: default)
    plan = _plan(tmp_path, _inputs("a.png"), done=done, existing=["a.png"], settings_for=lambda fmt: off)
    assert plan.skipped.num_rows == 1


def test_colour_off_is_recorded_and_refused_under_the_default(tmp_path):
    """``--colour off`` keeps the curves' colour, other pixels: recorded, and refused under the
    default naming it; ``auto`` is the method's default and not recorded."""
    from types import SimpleNamespace

    out = tmp_path / "out"
    meta = SimpleNamespace(sha256="m" * 64, variant="full")
    default = settings_for_run(EnhanceConfig(input="/in", output=str(out)), meta, "PNG")
    off = settings_for_run(EnhanceConfig(input="/in", output=str(out), colour="off"), meta, "PNG")
    assert "colour" not in default["finishing"] and off["finishing"]["colour"] == "off"
    done = rows_to_table([_done_row("/in/a.png", "a.png", lambda fmt: off)])
    with pytest.raises(ConfigError, match="finishing"):
        _plan(tmp_path, _inputs("a.png"), done=done, existing=["a.png"], settings_for=lambda fmt: default)
    with pytest.raises(ConfigError, match="colour"):
        EnhanceConfig(input="/in", output=str(out), colour="warm")


def test_describe_settings_change():
    a = json.dumps({"strength": 1.0, "quality": 95})
    b = json.dumps({"strength": 0.3, "quality": 95})
    assert describe_settings_change(a, b) == "strength 1.0 -> 0.3"


def test_planning_a_large_listing_is_columnar(tmp_path):
    """Every input is planned without a Python object per input (smoke test at 200k; the 1M
    figure is benchmarks/bench_planning.py)."""
    n = 200_000
    listing = pa.table({
        "uri": pa.array([f"/in/d{i % 100}/img{i}.jpg" for i in range(n)]),
        "path": pa.array([f"/in/d{i % 100}/img{i}.jpg" for i in range(n)]),
        "relpath": pa.array([f"d{i % 100}/img{i}.jpg" for i in range(n)]),
        "size": pa.array([1] * n, pa.int64()),
    })
    output = Location.parse(str(tmp_path / "out"))
    plan = plan_run(listing=listing, output=output, run_id="r",
                    settings_for=_settings_for(), requested_format="same", row_constants={}, done=None,
                    existing_outputs=None)
    assert plan.todo.num_rows == n and plan.refused.num_rows == 0
    last = f"d{(n - 1) % 100}/img{n - 1}.jpg"
    row = pc.index(plan.todo["input_relpath"], last).as_py()
    assert plan.todo["output_path"][row].as_py() == str(tmp_path / "out" / last)
    assert plan.todo["input_relpath"].to_pylist() == sorted(listing["relpath"].to_pylist())


def _listing(entries):
    """(relpath, size, mtime, etag) -> a listing as the storage layer gives it."""
    return pa.table({
        "uri": pa.array([f"/in/{e[0]}" for e in entries]), "path": pa.array([f"/in/{e[0]}" for e in entries]),
        "relpath": pa.array([e[0] for e in entries]), "size": pa.array([e[1] for e in entries], pa.int64()),
        "mtime": pa.array([e[2] for e in entries], pa.timestamp("ns", tz="UTC")),
        "etag": pa.array([e[3] for e in entries], pa.string()),
    })


def _rechunked(listing: pa.Table, at: int) -> pa.Table:
    """``listing`` with its fingerprint columns split in two chunks at row ``at`` and the other
    columns left whole, as a list file of several row groups arrives (planning keeps those
    columns' chunks)."""
    for name in ("size", "mtime", "etag"):
        column = listing[name].combine_chunks()
        listing = listing.set_column(listing.schema.get_field_index(name), name,
                                     pa.chunked_array([column.slice(0, at), column.slice(at)]))
    return listing


@pytest.mark.parametrize("fingerprint_chunks", [1, 2])
def test_an_input_whose_fingerprint_changed_is_redone_and_counted(tmp_path, fingerprint_chunks):
    """Size, modification time (local disks) or ETag (object stores): any known difference means the
    input was replaced; what is unknown on either side (rows of earlier versions, list files without
    such columns) counts as unchanged. Skipped rows carry the fingerprint seen now. The same when
    the listing's fingerprint columns come in other chunks than its paths (and a refused input
    filters them)."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    t1 = t0 + timedelta(seconds=5)
    settings = _settings_for()
    done = rows_to_table([
        _done_row("/in/same.png", "same.png", settings, input_size=10, input_mtime=t0),
        _done_row("/in/bigger.png", "bigger.png", settings, input_size=10, input_mtime=t0),
        _done_row("/in/touched.png", "touched.png", settings, input_size=10, input_mtime=t0),
        _done_row("/in/etag.png", "etag.png", settings, input_size=10, input_etag='"abc"'),
        _done_row("/in/etag_same.png", "etag_same.png", settings, input_size=10, input_etag='"abc"'),
        _done_row("/in/old.png", "old.png", settings),  # made before fingerprints were recorded
    ])
    listing = _listing([("same.png", 10, t0, None), ("bigger.png", 11, t0, None), ("touched.png", 10, t1, None),
                        ("etag.png", 10, None, '"def"'), ("etag_same.png", 10, None, '"abc"'),
                        ("old.png", 10, t1, None), ("huge.png", 5_000_000_000, t0, None)])
    if fingerprint_chunks == 2:
        listing = _rechunked(listing, 3)
    plan = plan_run(listing=listing, output=Location.parse(str(tmp_path / "out")), run_id="run2",
                    settings_for=settings, requested_format="same", row_constants={}, done=done,
                    existing_outputs=pa.array(["same.png", "bigger.png", "touched.png", "etag.png", "etag_same.png",
                                               "old.png"]))
    assert sorted(plan.todo["input_relpath"].to_pylist()) == ["bigger.png", "etag.png", "touched.png"]
    assert plan.changed == 3
    assert plan.refused["input_uri"].to_pylist() == ["/in/huge.png"]  # refused by its size, unread
    skipped = {r["input_relpath"]: r for r in plan.skipped.to_pylist()}
    assert set(skipped) == {"same.png", "etag_same.png", "old.png"}
    assert skipped["old.png"]["input_mtime"] == t1 and skipped["old.png"]["input_size"] == 10  # now recorded
    assert plan.todo.filter(pa.compute.equal(plan.todo["input_relpath"], "bigger.png"))["input_size"][0].as_py() == 11


def test_a_moved_output_and_input_resume_from_relative_paths(tmp_path):
    """The manifest holds paths relative to OUTPUT and INPUT: both moved, nothing is redone."""
    settings = _settings_for()
    done = rows_to_table([_done_row("/old/in/a.png", "a.png", settings)])
    moved = Location.parse(str(tmp_path / "elsewhere"))
    plan = _plan(tmp_path, _inputs("a.png", root="/mnt/new/in"), done=done, existing=["a.png"], output=moved)
    assert plan.todo.num_rows == 0 and plan.skipped.num_rows == 1
    assert plan.skipped["input_uri"][0].as_py() == "/mnt/new/in/a.png"  # where it is now


def test_no_output_is_written_into_an_input_folder_inside_output(tmp_path):
    """OUTPUT=/x and INPUT=/x/in with a folder in/in: the output of in/in/a.png would be x/in/a.png,
    inside INPUT, and a later run would take it for an input."""
    output = Location.parse(str(tmp_path / "x"))
    input_root = Location.parse(str(tmp_path / "x" / "in"))
    inputs = [InputFile(uri=str(tmp_path / "x/in/in/a.png"), path=str(tmp_path / "x/in/in/a.png"), relpath="in/a.png",
                        size=1),
              InputFile(uri=str(tmp_path / "x/in/b.png"), path=str(tmp_path / "x/in/b.png"), relpath="b.png", size=1)]
    plan = _plan(tmp_path, inputs, output=output, input_root=input_root)
    assert plan.todo["input_relpath"].to_pylist() == ["b.png"]
    assert "inside INPUT" in plan.refused["error"][0].as_py()


def test_only_this_output_s_own_temp_files_are_debris(tmp_path):
    """A killed run leaves ``.<name>.<tag><random>.tmp`` files; a rerun removes those of this OUTPUT's
    runs only: never another writer's, never inside INPUT, never inside another job's OUTPUT nested here."""
    out = tmp_path / "out"
    ours, theirs = temp_tag("run1"), temp_tag("someone else")
    files = ["a.png", f".a.png.{ours}000000.tmp", f"sub/.b.png.{ours}111111.tmp", f".c.png.{theirs}222222.tmp",
             f"in/.d.png.{ours}333333.tmp", "nested/_manifest/_run-x.json", f"nested/.e.png.{ours}444444.tmp",
             f"_manifest/.part-run1-l1-00000.parquet.{ours}555555.tmp"]
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    found = list_output_files(Location.parse(str(out)), temp_tags=frozenset({ours}),
                              input_root=Location.parse(str(out / "in")))
    assert sorted(found.unfinished) == sorted(str(out / n) for n in [f".a.png.{ours}000000.tmp",
                                                                     f"sub/.b.png.{ours}111111.tmp",
                                                                     f"_manifest/.part-run1-l1-00000.parquet.{ours}555555.tmp"])
    assert "a.png" in found.relpaths.to_pylist()


def test_dictionary_encoded_digests_are_compared_as_their_strings():
    """Settings digests are compared by dictionary index (a manifest read in its compact form):
    the answer is the strings' answer, whatever each chunk's dictionary, with null as different."""
    import pyarrow as pa

    from dce_batch.job.plan import _strings_differ

    old = pa.chunked_array([
        pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 0], pa.int32()), pa.array(["png-d", "jpeg-d"])),
        pa.DictionaryArray.from_arrays(pa.array([1, 0], pa.int32()), pa.array(["jpeg-d", "webp-d"])),
    ])
    new = pa.DictionaryArray.from_arrays(pa.array([0, 0, 0, 1, 1, 0], pa.int32()), pa.array(["png-d", "jpeg-d"]))
    expected = [o != n if o is not None else True for o, n in zip(old.to_pylist(), new.to_pylist())]
    assert expected == [False, True, True, True, True, True]
    assert _strings_differ(old, new).to_pylist() == expected
    assert _strings_differ(old.cast(pa.string()), new.cast(pa.string())).to_pylist() == expected
