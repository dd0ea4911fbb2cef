"""Listing inputs (dce_batch.storage.listing and its parts): local folders and globs, list files,
S3 prefixes (moto_server), fingerprints, names that stay stable, and hostile trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dce_batch.errors import ConfigError, NoInputsFoundError, StorageError
from dce_batch.storage import (
    INPUT_TABLE_SCHEMA,
    InputFile,
    Location,
    list_files,
    list_inputs,
    list_inputs_table,
    read_bytes,
    walk_local_files,
)
from dce_batch.storage.globs import glob_regex
from tests.fault_proxy import fault_proxy  # noqa: F401 - a fixture
from tests.trees import IMAGES, LOCAL, REPO_ROOT, make_files, relpaths


@pytest.fixture
def photo_tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    make_files(
        root,
        [
            "a.jpg",
            "B.PNG",
            "notes.txt",
            "sub/c.jpeg",
            "sub/deeper/d.JPG",
            "sub/e.gif",
            ".hidden.jpg",
            ".cache/f.jpg",
            "sub/.g.png",
            "_manifest/part-0.jpg",
            "sub/_manifest/h.jpg",
            "x_manifest/i.jpg",
        ],
    )
    return root


# --- local listing -------------------------------------------------------------------------


def test_local_folder_recursive_filters_extensions_and_skips_hidden(photo_tree: Path) -> None:
    fs, files = list_inputs(str(photo_tree), extensions=IMAGES)
    assert isinstance(fs, pafs.LocalFileSystem)
    assert relpaths(files) == ["B.PNG", "a.jpg", "sub/c.jpeg", "sub/deeper/d.JPG", "x_manifest/i.jpg"]
    first = files[1]
    assert first.uri == first.path == str(photo_tree / "a.jpg")
    assert first.size == len("a.jpg")
    assert read_bytes(fs, first.path) == b"a.jpg"


def test_local_folder_trailing_slash_relative_path_and_file_uri(
    photo_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(photo_tree.parent)
    expected = relpaths(list_inputs(str(photo_tree), extensions=IMAGES)[1])
    assert relpaths(list_inputs("photos/", extensions=IMAGES)[1]) == expected
    _, files = list_inputs(f"file://{photo_tree}", extensions=["jpg", "JPEG", ".png"])
    assert relpaths(files) == expected


def test_local_glob(photo_tree: Path) -> None:
    _, files = list_inputs(f"{photo_tree}/**/*.jpg", extensions=IMAGES)
    # relpaths are relative to the non-glob part; ** matches zero folders too; glob patterns
    # are case-sensitive (d.JPG is not *.jpg) while the extension filter is not.
    assert relpaths(files) == ["a.jpg", "x_manifest/i.jpg"]
    _, files = list_inputs(f"{photo_tree}/sub/*.jp*g", extensions=IMAGES)
    assert relpaths(files) == ["c.jpeg"]
    _, files = list_inputs(f"{photo_tree}/**/*.[jJ][pP]*", extensions=IMAGES)
    assert relpaths(files) == ["a.jpg", "sub/c.jpeg", "sub/deeper/d.JPG", "x_manifest/i.jpg"]
    _, files = list_inputs(f"{photo_tree}/sub/*/*", extensions=IMAGES)
    assert relpaths(files) == ["deeper/d.JPG"]  # extension filter applies to globs too


def test_local_glob_without_match_says_what_was_searched(photo_tree: Path) -> None:
    with pytest.raises(StorageError, match=r"matching '\*\.webp'"):
        list_inputs(f"{photo_tree}/*.webp", extensions=IMAGES + (".webp",))


def test_glob_regex_semantics() -> None:
    regex = glob_regex("**/x?/[!a]*.jpg")
    assert regex.fullmatch("xy/b.jpg")
    assert regex.fullmatch("p/q/xy/b1.jpg")
    assert not regex.fullmatch("xy/a.jpg")
    assert not regex.fullmatch("xyz/b.jpg")
    assert not glob_regex("*.jpg").fullmatch("sub/a.jpg")
    # An S3 key may hold an empty segment ("p//q.png"): ** takes it as a prefix listing does, so
    # that the planner gives it a row (refused) instead of the glob dropping it unseen.
    assert glob_regex("**/*.png").fullmatch("p//q.png") and glob_regex("in/**").fullmatch("in//x")


def test_single_file_is_taken_as_given(photo_tree: Path) -> None:
    _, files = list_inputs(str(photo_tree / "sub" / "e.gif"), extensions=IMAGES)
    path = str(photo_tree / "sub/e.gif")
    modified = datetime.fromtimestamp(os.stat(path).st_mtime_ns // 1000 / 1e6, timezone.utc)
    assert files == [InputFile(uri=path, path=path, relpath="e.gif", size=len("sub/e.gif"), mtime=modified)]


def test_folder_without_images_reports_skipped_count(tmp_path: Path) -> None:
    make_files(tmp_path, ["readme.md", "data.bin", ".secret.jpg"])
    with pytest.raises(NoInputsFoundError, match=r"2 file\(s\) found but none ends in .jpg"):
        list_inputs(str(tmp_path), extensions=[".jpg"])


def test_missing_local_folder(tmp_path: Path) -> None:
    with pytest.raises(NoInputsFoundError, match="no such file or folder"):
        list_inputs(str(tmp_path / "nope"), extensions=IMAGES)


def test_finding_no_inputs_is_an_invalid_argument_and_a_storage_error(tmp_path: Path) -> None:
    """NoInputsFoundError is both, so the job can exit 2 without reading the message."""
    from dce_batch.errors import InputNotFoundError

    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text("# nothing\n")
    for source in (tmp_path / "nope", tmp_path / "empty", tmp_path / "list.txt", tmp_path / "nope" / "*.jpg"):
        with pytest.raises(NoInputsFoundError) as caught:
            list_inputs(str(source), extensions=IMAGES)
        assert isinstance(caught.value, InputNotFoundError) and isinstance(caught.value, StorageError)


def test_empty_extensions_rejected(photo_tree: Path) -> None:
    with pytest.raises(ConfigError, match="extensions"):
        list_inputs(str(photo_tree), extensions=[])


# --- list files ----------------------------------------------------------------------------


def test_txt_list_file_with_comments_relative_entries_and_duplicates(tmp_path: Path) -> None:
    make_files(tmp_path, ["imgs/a/1.jpg", "imgs/b/2.png", "imgs/b/3.tif"])
    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text(
        textwrap.dedent(
            f"""\
            # images to enhance
            a/1.jpg

            {tmp_path}/imgs/b/2.png
            ./b/3.tif
            a/1.jpg
            """
        )
    )
    fs, files = list_inputs(str(listing), extensions=IMAGES)
    assert isinstance(fs, pafs.LocalFileSystem)
    # Taken as given (3.tif too), relative to the list file's folder imgs/, deduplicated, no stat.
    assert relpaths(files) == ["a/1.jpg", "b/2.png", "b/3.tif"]
    assert files[0].path == str(tmp_path / "imgs/a/1.jpg")
    assert files[0].size is None


def test_csv_list_file_uses_uri_column(tmp_path: Path) -> None:
    make_files(tmp_path, ["x/p.jpg", "x/y/q.jpg"])
    listing = tmp_path / "list.csv"
    listing.write_text(f"id,URI\n1,{tmp_path}/x/p.jpg\n2,x/y/q.jpg\n")
    _, files = list_inputs(str(listing), extensions=IMAGES)
    assert relpaths(files) == ["x/p.jpg", "x/y/q.jpg"]  # below the list file's folder


def test_csv_list_file_without_header(tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text("a/1.jpg\nb/2.jpg\n")
    _, files = list_inputs(str(listing), extensions=IMAGES)
    assert relpaths(files) == ["a/1.jpg", "b/2.jpg"]


def test_parquet_list_file_first_string_column(tmp_path: Path) -> None:
    listing = tmp_path / "lists" / "list.parquet"
    listing.parent.mkdir()
    table = pa.table({"n": [1, 2], "image": ["../img/a.jpg", f"file://{tmp_path}/img/sub/b.jpg"]})
    pq.write_table(table, listing)
    _, files = list_inputs(str(listing), extensions=IMAGES)
    assert [f.path for f in files] == [str(tmp_path / "img/a.jpg"), str(tmp_path / "img/sub/b.jpg")]
    # Outside the list file's folder lists/: named by their absolute paths.
    assert relpaths(files) == [f"{str(tmp_path)[1:]}/img/a.jpg", f"{str(tmp_path)[1:]}/img/sub/b.jpg"]


def test_list_file_mixing_filesystems_is_config_error(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("/data/a.jpg\ns3://bucket/b.jpg\n")
    with pytest.raises(ConfigError, match="mixes filesystems"):
        list_inputs(str(listing), extensions=IMAGES)


def test_empty_list_file(tmp_path: Path) -> None:
    listing = tmp_path / "list.lst"
    listing.write_text("# nothing yet\n\n")
    with pytest.raises(NoInputsFoundError, match="lists no image URIs"):
        list_inputs(str(listing), extensions=IMAGES)


# --- the columnar listing, special files, odd names -----------------------------------------------------------------------


def test_list_inputs_table_schema_order_and_equivalence(photo_tree: Path) -> None:
    for source in (str(photo_tree), f"{photo_tree}/**/*.[jJ][pP]*", str(photo_tree / "sub" / "e.gif")):
        _, table = list_inputs_table(source, extensions=IMAGES)
        assert table.schema == INPUT_TABLE_SCHEMA
        relpaths_ = table.column("relpath").to_pylist()
        assert relpaths_ == sorted(relpaths_)
        files = list_inputs(source, extensions=IMAGES)[1]
        assert [f.uri for f in files] == table.column("uri").to_pylist()
        assert [f.relpath for f in files] == relpaths_
        assert [f.size for f in files] == table.column("size").to_pylist()
        # InputFile holds Python datetimes: microseconds.
        assert [f.mtime for f in files] == table.column("mtime").cast(pa.timestamp("us", tz="UTC"), safe=False).to_pylist()


def test_broken_symbolic_links_are_listed_and_say_why_they_cannot_be_read(tmp_path: Path) -> None:
    """pyarrow's listing leaves broken links out; a user sees them as files, so they are listed
    (size 0), in subfolders too and through the same name filters, and reading one names it."""
    make_files(tmp_path / "in", ["a.jpg", "sub/b.png"])
    (tmp_path / "in" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "in" / "sub" / "gone2.png").symlink_to("../../missing.png")
    (tmp_path / "in" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")  # not an image name
    (tmp_path / "in" / ".hidden.jpg").symlink_to(tmp_path / "nowhere.jpg")  # hidden: skipped
    (tmp_path / "in" / "good_link.jpg").symlink_to(tmp_path / "in" / "a.jpg")
    _, table = list_inputs_table(str(tmp_path / "in"), extensions=IMAGES)
    rows = dict(zip(table.column("relpath").to_pylist(), table.column("size").to_pylist()))
    assert rows == {"a.jpg": 5, "gone.jpg": 0, "good_link.jpg": 5, "sub/b.png": 9, "sub/gone2.png": 0}
    with pytest.raises(StorageError, match=r"gone\.jpg: a broken symbolic link \(its target .*nowhere\.jpg does not exist\)"):
        read_bytes(LOCAL, str(tmp_path / "in" / "gone.jpg"))
    with pytest.raises(StorageError, match="no such file or object"):
        read_bytes(LOCAL, str(tmp_path / "in" / "never.jpg"))


def test_named_pipes_and_sockets_are_listed_and_never_opened(tmp_path: Path) -> None:
    """pyarrow's listing leaves them out; opening a named pipe would wait for a writer forever.
    Listed like broken links (size 0), and reading one says what it is without opening it."""
    import socket

    make_files(tmp_path / "in", ["a.jpg"])
    os.mkfifo(tmp_path / "in" / "pipe.jpg")
    os.mkfifo(tmp_path / "in" / "pipe.txt")  # not an image name
    (tmp_path / "in" / "sub").mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "in" / "sub" / "sock.png"))
    (tmp_path / "in" / "link_to_pipe.jpg").symlink_to(tmp_path / "in" / "pipe.jpg")
    try:
        _, table = list_inputs_table(str(tmp_path / "in"), extensions=IMAGES)
        rows = dict(zip(table.column("relpath").to_pylist(), table.column("size").to_pylist()))
        assert rows == {"a.jpg": 5, "link_to_pipe.jpg": 0, "pipe.jpg": 0, "sub/sock.png": 0}
        for name, kind in [("pipe.jpg", "a named pipe"), ("link_to_pipe.jpg", "a named pipe"),
                           ("sub/sock.png", "a socket")]:
            with pytest.raises(StorageError, match=f"it is {kind}.*, not a regular file; move it out"):
                read_bytes(LOCAL, str(tmp_path / "in" / name))  # (a hang here is the failure)
    finally:
        server.close()


def test_list_inputs_table_odd_names_and_globs(tmp_path: Path) -> None:
    names = ["a b+(1).jpg", "a b+(2).jpg", "é/ü [x].png", "dots.in.name.JPG", "q?.jpg", "back\\slash.jpg",
             "ab.jpg", "a.b/c.jpg"]
    make_files(tmp_path / "in", names)
    _, table = list_inputs_table(str(tmp_path / "in"), extensions=IMAGES)
    assert table.column("relpath").to_pylist() == sorted(names)
    assert table.column("size").to_pylist() == [len(n.encode()) for n in sorted(names)]
    glob = lambda pattern: list_inputs_table(f"{tmp_path}/in/{pattern}", extensions=IMAGES)[1].column("relpath").to_pylist()
    assert glob("a b+(?).jpg") == ["a b+(1).jpg", "a b+(2).jpg"]  # regex characters are literals
    assert glob("*/ü [[]x].png") == ["é/ü [x].png"]
    assert glob("[!a]*.jpg") == ["back\\slash.jpg", "q?.jpg"]
    assert glob("**/c.jpg") == ["a.b/c.jpg"]


def test_list_inputs_table_large_text_list_file(tmp_path: Path) -> None:
    """A 200,000-line list file with comments, blank lines, CRLF, BOM, duplicates and relative,
    absolute and file:// entries, parsed column-wise."""
    n = 200_000
    lines = ["# generated"]
    for i in range(n):
        if i % 3 == 0:
            lines.append(f"photos/day{i % 7}/img{i:06d}.jpg")  # relative to the list file
        elif i % 3 == 1:
            lines.append(f"  {tmp_path}/photos/day{i % 7}/img{i:06d}.jpg  ")
        else:
            lines.append(f"file://{tmp_path}/photos/./day{i % 7}/img{i:06d}.jpg")
        if i % 1000 == 0:
            lines += ["", "# comment", f"photos/day{i % 7}/img{i:06d}.jpg"]  # a duplicate
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    fs, table = list_inputs_table(str(listing), extensions=IMAGES)
    assert isinstance(fs, pafs.LocalFileSystem)
    assert table.num_rows == n
    assert table.column("relpath")[0].as_py() == "photos/day0/img000000.jpg"  # below the list's folder
    paths = table.column("path").to_pylist()
    assert len(set(paths)) == n and all(p.startswith(f"{tmp_path}/photos/day") for p in paths)
    assert table.column("uri").to_pylist() == paths  # local inputs: the URI is the path
    for column in ("size", "mtime", "etag", "listing_error"):
        assert table.column(column).null_count == n, column  # a text list file carries no fingerprints


def test_list_file_errors_name_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a.jpg\n\xff\xfe not utf-8\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        list_inputs_table(str(bad), extensions=IMAGES)
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("uri\n/data/a.jpg\ngs://bucket/b.jpg\n")
    with pytest.raises(ConfigError, match=r"mixes filesystems \(local: /data/a.jpg; gs: gs://bucket/b.jpg\)"):
        list_inputs_table(str(mixed), extensions=IMAGES)


@pytest.mark.slow
@pytest.mark.s3
def test_s3_prefix_listing_pages_through_keys(s3_server, s3_bucket: str) -> None:
    """More keys than one ListObjectsV2 page (1,000), with folder markers and hidden keys."""
    client = s3_server.client()
    sizes = {f"big/p{i % 4}/k{i:05d}.jpg": i % 50 for i in range(1_150)}
    expected = [key.removeprefix("big/") for key in sizes]
    sizes.update(dict.fromkeys(["big/p0/", "big/.hidden/x.jpg", "big/_manifest/part.jpg", "big/notes.txt"], 0))
    # Uploaded over a few connections at once: one by one, the 1,154 requests took most of the test.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * sizes[key]), sizes))
    _, table = list_inputs_table(f"s3://{s3_bucket}/big", s3_server.s3_options(), extensions=IMAGES)
    assert table.column("relpath").to_pylist() == sorted(expected)
    assert table.column("size").to_pylist()[:3] == [0, 4, 8]  # k00000, k00004, k00008 in p0
    assert table.column("uri")[0].as_py() == f"s3://{s3_bucket}/big/p0/k00000.jpg"
    _, one_level = list_inputs_table(f"s3://{s3_bucket}/big/p1/*.jpg", s3_server.s3_options(), extensions=IMAGES)
    assert one_level.num_rows == len([k for k in expected if k.startswith("p1/")])


def test_an_s3_prefix_with_a_trailing_slash_is_the_prefix_even_beside_an_object_of_its_name(
        s3_server, s3_bucket: str) -> None:
    """S3 holds an object "photos" and keys under "photos/" at once: "photos/" asks for the
    prefix, whose images would otherwise get no row; without the slash the object is meant."""
    client = s3_server.client()
    for key in ("photos", "photos/a.png", "photos/b.png"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    _, prefix = list_inputs_table(f"s3://{s3_bucket}/photos/", s3_server.s3_options(), extensions=IMAGES)
    assert prefix.column("relpath").to_pylist() == ["a.png", "b.png"]
    _, single = list_inputs_table(f"s3://{s3_bucket}/photos", s3_server.s3_options(), extensions=IMAGES)
    assert single.column("uri").to_pylist() == [f"s3://{s3_bucket}/photos"]
    # The check that keeps OUTPUT out of INPUT reads INPUT the same way.
    from dce_batch.job import EnhanceConfig
    from dce_batch.job.driver import check_output_location

    inside = Location.parse(f"s3://{s3_bucket}/photos/enhanced", s3_server.s3_options())
    config = EnhanceConfig(input=f"s3://{s3_bucket}/photos/", output=inside.uri, s3=s3_server.s3_options())
    with pytest.raises(ConfigError, match="inside INPUT"):
        check_output_location(config, inside)
    check_output_location(EnhanceConfig(input=f"s3://{s3_bucket}/photos", output=inside.uri,
                                        s3=s3_server.s3_options()), inside)  # one object: nothing to keep out of




# --- fingerprints: what each input was when listed -------------------------------------------


def _ns(table: pa.Table, column: str = "mtime") -> dict[str, int | None]:
    """relpath -> the column's value (times as integer nanoseconds since the epoch)."""
    values = table.column(column)
    if column == "mtime":
        values = values.cast(pa.int64())
    return dict(zip(table.column("relpath").to_pylist(), values.to_pylist()))


def test_a_local_listing_records_each_files_size_and_modification_time(tmp_path: Path) -> None:
    make_files(tmp_path / "in", ["a.jpg", "sub/b.png"])
    os.utime(tmp_path / "in/a.jpg", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    (tmp_path / "in/link.jpg").symlink_to(tmp_path / "in/sub/b.png")
    _, table = list_inputs_table(str(tmp_path / "in"), extensions=IMAGES)
    b_png = os.stat(tmp_path / "in/sub/b.png")
    assert _ns(table) == {"a.jpg": 1_700_000_000_123_456_789, "link.jpg": b_png.st_mtime_ns,
                          "sub/b.png": b_png.st_mtime_ns}  # a link: its target's
    assert _ns(table, "size") == {"a.jpg": 5, "link.jpg": 9, "sub/b.png": 9}
    assert table.column("etag").null_count == table.num_rows  # local files have no ETag
    assert table.schema == INPUT_TABLE_SCHEMA


@pytest.mark.s3
def test_an_s3_listing_records_size_etag_and_last_modified_from_its_pages_alone(
    s3_server, s3_bucket: str, fault_proxy
) -> None:
    """The fingerprint comes with ListObjectsV2's pages: no request per object (counted by a
    proxy). An overwritten object shows a new ETag and size."""
    from dce_batch.storage import S3Options

    for i in range(5):
        s3_server.put_object(s3_bucket, f"in/k{i}.jpg", f"content {i}".encode())
    options = S3Options(endpoint_url=fault_proxy.url, region="us-east-1", access_key="testing",
                        secret_key="testing")
    fault_proxy.reset_stats()
    _, table = list_inputs_table(f"s3://{s3_bucket}/in/", options, extensions=IMAGES)
    requests = fault_proxy.stats().requests
    assert requests["GET"] == 0 and requests["HEAD"] <= 2, requests  # the prefix itself, not the objects

    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="in/")["Contents"]
    assert dict(zip(table.column("relpath").to_pylist(), table.column("etag").to_pylist())) == {
        o["Key"].removeprefix("in/"): o["ETag"].strip('"') for o in listed}  # S3 quotes it; stored without
    assert {o["Key"].removeprefix("in/"): o["LastModified"] for o in listed} == dict(zip(
        table.column("relpath").to_pylist(), table.column("mtime").cast(pa.timestamp("us", tz="UTC")).to_pylist()))

    before = dict(zip(table.column("relpath").to_pylist(), table.column("etag").to_pylist()))
    s3_server.put_object(s3_bucket, "in/k0.jpg", b"retouched, longer content")
    _, again = list_inputs_table(f"s3://{s3_bucket}/in/", options, extensions=IMAGES)
    after = dict(zip(again.column("relpath").to_pylist(), again.column("etag").to_pylist()))
    assert after["k0.jpg"] != before["k0.jpg"] and _ns(again, "size")["k0.jpg"] == len(b"retouched, longer content")
    assert {k: v for k, v in after.items() if k != "k0.jpg"} == {k: v for k, v in before.items() if k != "k0.jpg"}


@pytest.mark.s3
def test_an_s3_inventory_report_is_a_list_file_that_carries_fingerprints(s3_server, tmp_path: Path) -> None:
    """An S3 Inventory report in Parquet, as S3 writes it (bucket, key, size,
    last_modified_date, e_tag, is_latest, is_delete_marker): each current object once, with its
    fingerprint; no request made."""
    modified = datetime(2024, 5, 1, 12, 0, 0, 500_000, tzinfo=timezone.utc)
    report = pa.table({
        "bucket": ["photos"] * 6,
        "key": ["2024/a.jpg", "2024/b.jpg", "2024/b.jpg", "2024/gone.jpg", "2024/a.jpg", "2024/c d.jpg"],
        "is_latest": [True, True, False, True, True, True],
        "is_delete_marker": [False, False, False, True, False, False],
        "size": pa.array([10, 20, 19, 0, 11, 30], pa.int64()),
        "last_modified_date": pa.array([modified] * 6, pa.timestamp("ms", tz="UTC")),
        "e_tag": ["aaa", '"bbb"', "old", None, "duplicate", "ccc"],
    })
    listing = tmp_path / "inventory.parquet"
    pq.write_table(report, listing)
    fs, table = list_inputs_table(str(listing), s3_server.s3_options(), extensions=IMAGES)
    assert isinstance(fs, pafs.S3FileSystem)
    rows = {r["relpath"]: (r["uri"], r["size"], r["etag"]) for r in table.select(["relpath", "uri", "size", "etag"]).to_pylist()}
    # Not below the report's folder (another storage): named bucket/key. Old versions and delete
    # markers are not inputs; a key listed twice keeps its first line.
    assert rows == {"photos/2024/a.jpg": ("s3://photos/2024/a.jpg", 10, "aaa"),
                    "photos/2024/b.jpg": ("s3://photos/2024/b.jpg", 20, "bbb"),
                    "photos/2024/c d.jpg": ("s3://photos/2024/c d.jpg", 30, "ccc")}
    assert set(table.column("mtime").cast(pa.timestamp("us", tz="UTC")).to_pylist()) == {modified}

    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"uri": ["s3://photos/x.jpg"]}), plain)
    _, table = list_inputs_table(str(plain), s3_server.s3_options(), extensions=IMAGES)
    assert [table.column(c).null_count for c in ("size", "mtime", "etag")] == [1, 1, 1]


def test_a_csv_list_file_may_carry_fingerprints_in_any_case_of_their_names(tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text('uri,Size,ETag,Last_Modified\n'
                       'a.jpg,12,0123,2024-05-01T12:00:00.5Z\n'
                       'b.jpg,,"""q""",2024-05-01 12:00:00\n')
    _, table = list_inputs_table(str(listing), extensions=IMAGES)
    assert _ns(table, "size") == {"a.jpg": 12, "b.jpg": None}
    assert _ns(table, "etag") == {"a.jpg": "0123", "b.jpg": "q"}  # digits stay text; quotes go
    noon = int(datetime(2024, 5, 1, 12, tzinfo=timezone.utc).timestamp()) * 10**9
    assert _ns(table) == {"a.jpg": noon + 500_000_000, "b.jpg": noon}  # no zone: UTC, as S3 writes times

    listing.write_text("uri,mtime\na.jpg,1714564800\n")
    with pytest.raises(ConfigError, match="column 'mtime' holds int64 values; write the times as"):
        list_inputs_table(str(listing), extensions=IMAGES)
    listing.write_text("uri,size\na.jpg,big\n")
    with pytest.raises(ConfigError, match="column 'size' must hold sizes in bytes"):
        list_inputs_table(str(listing), extensions=IMAGES)


# --- names that stay the same when a list file changes ---------------------------------------


def _names(listing: Path, **kwargs) -> dict[str, str]:
    _, table = list_inputs_table(str(listing), extensions=IMAGES, **kwargs)
    return dict(zip(table.column("uri").to_pylist(), table.column("relpath").to_pylist()))


def test_adding_an_entry_to_a_list_file_renames_no_other_input(tmp_path: Path) -> None:
    """Names come from each entry alone: below the list file's folder, relative to it; elsewhere,
    the absolute path. So adding entries anywhere (which moved the common folder of all
    entries) renames nothing, and no output is made twice under two names."""
    listing = tmp_path / "lists" / "batch.txt"
    listing.parent.mkdir()
    entries = ["a/1.jpg", f"{tmp_path}/lists/b/2.jpg", "../elsewhere/3.jpg"]
    listing.write_text("\n".join(entries) + "\n")
    before = _names(listing)
    root = str(tmp_path)[1:]
    assert before == {f"{tmp_path}/lists/a/1.jpg": "a/1.jpg", f"{tmp_path}/lists/b/2.jpg": "b/2.jpg",
                      f"{tmp_path}/elsewhere/3.jpg": f"{root}/elsewhere/3.jpg"}
    listing.write_text("\n".join(["/srv/other/4.jpg", *entries, "c/5.jpg"]) + "\n")
    after = _names(listing)
    assert {uri: after[uri] for uri in before} == before
    assert after["/srv/other/4.jpg"] == "srv/other/4.jpg" and after[f"{tmp_path}/lists/c/5.jpg"] == "c/5.jpg"


@pytest.mark.s3
def test_s3_list_file_entries_are_named_from_themselves(s3_server, s3_bucket: str) -> None:
    other = s3_server.make_bucket(f"{s3_bucket}-other")
    s3_server.put_object(s3_bucket, "lists/batch.txt",
                         f"../in/a.jpg\nsub/c.jpg\ns3://{other}/k.jpg\n".encode())
    _, table = list_inputs_table(f"s3://{s3_bucket}/lists/batch.txt", s3_server.s3_options(), extensions=IMAGES)
    names = dict(zip(table.column("uri").to_pylist(), table.column("relpath").to_pylist()))
    assert names == {f"s3://{s3_bucket}/in/a.jpg": f"{s3_bucket}/in/a.jpg",
                     f"s3://{s3_bucket}/lists/sub/c.jpg": "sub/c.jpg",
                     f"s3://{other}/k.jpg": f"{other}/k.jpg"}


def test_a_base_names_every_input_relative_to_it(tmp_path: Path) -> None:
    listing = tmp_path / "lists" / "batch.txt"
    listing.parent.mkdir()
    listing.write_text("a/1.jpg\n../elsewhere/3.jpg\n")
    assert sorted(_names(listing, base=str(tmp_path)).values()) == ["elsewhere/3.jpg", "lists/a/1.jpg"]
    assert sorted(_names(listing, base=f"file://{tmp_path}/").values()) == ["elsewhere/3.jpg", "lists/a/1.jpg"]
    make_files(tmp_path / "photos", ["day1/x.jpg"])  # a folder too
    _, table = list_inputs_table(str(tmp_path / "photos"), extensions=IMAGES, base=str(tmp_path))
    assert table.column("relpath").to_pylist() == ["photos/day1/x.jpg"]

    with pytest.raises(ConfigError, match=rf"input {tmp_path}/elsewhere/3.jpg is not inside the base "
                                          rf"{tmp_path}/lists; .*choose a base folder"):
        _names(listing, base=str(tmp_path / "lists"))
    with pytest.raises(ConfigError, match="not on the storage of the inputs"):
        _names(listing, base="s3://bucket/lists")


# --- hostile trees ---------------------------------------------------------------------------

# Lists a tree in a child process with a memory limit: a listing that loops must fail the test,
# not exhaust the machine or hang the suite.
_LIST_IN_A_CHILD = """
import json, logging, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from dce_batch.storage import list_inputs_table
warned = []
_, table = list_inputs_table(sys.argv[1], extensions=[".jpg"], warn=warned.append)
logged = []
handler = logging.Handler()
handler.emit = lambda record: logged.append(record.getMessage())
logging.getLogger("dce_batch.storage.listing").addHandler(handler)
list_inputs_table(sys.argv[1], extensions=[".jpg"])
print(json.dumps({"relpaths": table.column("relpath").to_pylist(), "warned": warned, "logged": logged}))
"""


def _list_in_a_child(root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", _LIST_IN_A_CHILD, str(root)], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_symbolic_link_loops_are_listed_once_and_reported(tmp_path: Path) -> None:
    """Links back up the tree (ln -s . in/loop; ln -s .. in/sub/back; a link from outside back
    in) and a second link to a folder already listed: each folder is listed once, each skipped
    link is reported, and a link to a folder outside INPUT is followed."""
    make_files(tmp_path, ["in/a.jpg", "in/sub/b.jpg", "outside/c.jpg"])
    (tmp_path / "in/loop").symlink_to(".")
    (tmp_path / "in/sub/back").symlink_to("..")
    (tmp_path / "in/ext1").symlink_to("../outside")
    (tmp_path / "in/ext2").symlink_to(tmp_path / "outside")
    (tmp_path / "outside/up").symlink_to("../in")
    listed = _list_in_a_child(tmp_path / "in")
    assert listed["relpaths"] == ["a.jpg", "ext1/c.jpg", "sub/b.jpg"]
    root = tmp_path / "in"
    loop = "a folder above it, and following it would list the same files again without end"
    assert sorted(listed["warned"]) == sorted([
        f"skipped the symbolic link {root}/ext1/up -> ../in: it leads back to {root}, {loop}",
        (f"skipped the symbolic link {root}/ext2 -> {tmp_path}/outside: it leads to {root}/ext1, which is "
         "already listed (its files would otherwise be enhanced twice)"),
        f"skipped the symbolic link {root}/loop -> .: it leads back to {root}, {loop}",
        f"skipped the symbolic link {root}/sub/back -> ..: it leads back to {root}, {loop}",
    ])
    assert sorted(listed["logged"]) == sorted(listed["warned"])  # without a callback: logged as warnings


def test_a_file_name_that_is_not_utf8_is_listed_escaped_with_an_error_and_nothing_else_fails(tmp_path: Path) -> None:
    """A Latin-1 name (byte 0xe9) and a folder named with byte 0xff: each such input is listed
    once, its name escaped as \\xNN, with the error its manifest row will carry; every other
    input is listed as usual. No file has the escaped name, so it can never be read instead."""
    root = tmp_path / "in"
    make_files(root, ["a.jpg"])
    raw_root = os.fsencode(root)
    with open(raw_root + b"/caf\xe9.jpg", "wb") as handle:
        handle.write(b"latin-1 name")
    os.mkdir(raw_root + b"/d\xff")
    with open(raw_root + b"/d\xff/x.jpg", "wb") as handle:
        handle.write(b"in a folder named with 0xff")
    _, table = list_inputs_table(str(root), extensions=IMAGES)
    rows = {r["relpath"]: (r["uri"], r["size"], r["listing_error"])
            for r in table.select(["relpath", "uri", "size", "listing_error"]).to_pylist()}
    assert set(rows) == {"a.jpg", "caf\\xe9.jpg", "d\\xff/x.jpg"}
    assert rows["a.jpg"] == (str(root / "a.jpg"), 5, None)
    for name in ("caf\\xe9.jpg", "d\\xff/x.jpg"):
        uri, size, error = rows[name]
        assert uri == f"{root}/{name}" and size > 0 and not os.path.lexists(uri)
        assert error.startswith("UnsupportedNameError: the file name is not valid UTF-8") and "rename it" in error

    # The walk the job uses for OUTPUT never fails on such names either.
    assert sorted(walk_local_files(str(root)).to_pylist()) == [
        str(root / "a.jpg"), f"{root}/caf\\xe9.jpg", f"{root}/d\\xff/x.jpg"]
    assert list_files(LOCAL, str(root)) == set(walk_local_files(str(root)).to_pylist())
    with pytest.raises(ConfigError, match=r"is not valid UTF-8 .*rename it"):
        list_inputs_table(os.fsdecode(raw_root + b"/d\xff"), extensions=IMAGES)


def test_undecodable_photo_formats_are_listed_with_their_error_and_unread_images_are_counted(tmp_path: Path) -> None:
    """A folder of iPhone photos (HEIC) gets a row per photo saying what to do, not silence; the
    image files of formats that are not read (raw, PSD, icons) are reported once, by extension,
    through ``warn``; documents and files without an extension pass unmentioned."""
    from dce_batch.imaging import UNDECODABLE_EXTENSIONS, UNREAD_IMAGE_EXTENSIONS

    root = tmp_path / "in"
    make_files(root, ["a.jpg", "IMG_1.HEIC", "sub/IMG_2.heif", "notes.txt", "b.txt", "icon.ico", "README",
                      ".hidden.heic", "raw/x.DNG", "y.dng", "layers.psd", "sub/notes.md"])
    warnings: list[str] = []
    options = dict(extensions=IMAGES, refused_extensions=UNDECODABLE_EXTENSIONS,
                   reported_extensions=UNREAD_IMAGE_EXTENSIONS, warn=warnings.append)
    _, table = list_inputs_table(str(root), **options)
    rows = {r["relpath"]: r["listing_error"] for r in table.select(["relpath", "listing_error"]).to_pylist()}
    assert set(rows) == {"a.jpg", "IMG_1.HEIC", "sub/IMG_2.heif"} and rows["a.jpg"] is None
    assert rows["IMG_1.HEIC"] == rows["sub/IMG_2.heif"] == UNDECODABLE_EXTENSIONS[".heic"]
    assert rows["IMG_1.HEIC"].startswith("UnsupportedImageError: HEIC/HEIF photos cannot be decoded; convert")
    assert warnings == ["4 image file(s) skipped: dce-batch does not read their format (.dng 2, .ico 1, .psd 1); "
                        "convert them to JPEG, PNG or TIFF to enhance them"]
    # The order is the counts' and the names', not the order the folder listed them in.
    from collections import Counter

    from dce_batch.storage.listing import _skipped_line

    assert _skipped_line(Counter({".psd": 1, ".ico": 1, ".dng": 2})) == _skipped_line(Counter({".dng": 2, ".ico": 1, ".psd": 1})) \
        == warnings[0]
    # A glob lists them as the folder does; without refused_extensions and reported_extensions
    # (training data) they are skipped without a word.
    _, globbed = list_inputs_table(str(root / "*"), **options)
    assert globbed["relpath"].to_pylist() == ["IMG_1.HEIC", "a.jpg"] and len(warnings) == 2
    _, plain = list_inputs_table(str(root), extensions=IMAGES, warn=warnings.append)
    assert plain["relpath"].to_pylist() == ["a.jpg"] and len(warnings) == 2
    # A folder of images beside documents only (the bundled samples and their README) says nothing.
    _, quiet = list_inputs_table(str(root / "sub"), **options)
    assert quiet.num_rows == 1 and len(warnings) == 2


def test_walk_local_files_lists_links_without_following_them(tmp_path: Path) -> None:
    make_files(tmp_path / "out", ["a.jpg", "sub/b.jpg"])
    (tmp_path / "out/loop").symlink_to(".")
    (tmp_path / "out/gone.jpg").symlink_to(tmp_path / "nowhere")
    assert sorted(walk_local_files(str(tmp_path / "out")).to_pylist()) == sorted(
        str(tmp_path / "out" / name) for name in ("a.jpg", "sub/b.jpg", "loop", "gone.jpg"))
    assert walk_local_files(str(tmp_path / "missing")).to_pylist() == []


@pytest.mark.s3
def test_s3_keys_with_dot_segments_are_listed_and_refused_by_the_planner(s3_server, s3_bucket: str,
                                                                         tmp_path: Path) -> None:
    """Keys such as odd/sub/../up.jpg are listed (a part "." or ".." is not a hidden name), so
    the planner gives each a refused row instead of the input vanishing from the run."""
    from dce_batch.job.output_settings import output_settings
    from dce_batch.job.plan import plan_run
    from dce_batch.storage import Location

    for key in ["odd/sub/../up.jpg", "odd/./dot.jpg", "odd/ok.jpg", "odd/..hidden.jpg", "odd/.h.jpg"]:
        s3_server.put_object(s3_bucket, key, b"x")
    fs, table = list_inputs_table(f"s3://{s3_bucket}/odd/", s3_server.s3_options(), extensions=IMAGES)
    assert table.column("relpath").to_pylist() == ["./dot.jpg", "ok.jpg", "sub/../up.jpg"]  # hidden ones not

    def settings_for(output_format):
        return output_settings(model_sha256="m" * 64, variant="full", scale=12, strength=1.0, precision="auto",
                               format="same", quality=95, output_format=output_format)

    plan = plan_run(listing=table, output=Location.parse(str(tmp_path / "out")), run_id="run",
                    settings_for=settings_for, requested_format="same",
                    row_constants={"model_name": "m", "model_sha256": "m" * 64, "strength": 1.0,
                                   "variant": "full", "precision": "auto"},
                    done=None, existing_outputs=None)
    assert plan.todo.column("input_uri").to_pylist() == [f"s3://{s3_bucket}/odd/ok.jpg"]
    refused = dict(zip(plan.refused.column("input_uri").to_pylist(), plan.refused.column("error").to_pylist()))
    assert set(refused) == {f"s3://{s3_bucket}/odd/./dot.jpg", f"s3://{s3_bucket}/odd/sub/../up.jpg"}
    assert all(e.startswith("StorageError: invalid relative path") and "'.' or '..' parts" in e
               for e in refused.values())


def test_finding_no_images_names_only_options_the_command_line_has(tmp_path: Path, capsys) -> None:
    import re

    from dce_batch.cli import enhance_parser, main

    make_files(tmp_path / "notes", ["readme.md", "data.bin"])
    (tmp_path / "empty").mkdir()
    options = {o for action in enhance_parser()._actions for o in action.option_strings}  # noqa: SLF001
    for source in ("notes", "empty"):
        code = main(["enhance", str(tmp_path / source), str(tmp_path / "out"), "--engine", "local"])
        err = capsys.readouterr().err
        assert code == 2 and "no input images" in err, err
        assert set(re.findall(r"--[a-z][a-z-]*", err)) <= options, err
