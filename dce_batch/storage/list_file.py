"""List files: an INPUT that names its images (``.parquet``, ``.csv``, ``.txt``, ``.lst``), for
buckets too large to list on every run.

Parsed by Arrow (Parquet and CSV readers; text files split by Arrow compute), never a Python
object per entry, so a million entries are planned in seconds.
"""

from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.errors import ConfigError, StorageError
from dce_batch.storage.arrow_paths import (
    NEEDS_NORMPATH,
    SCHEME_PATTERN,
    first_where,
    normpath_where_needed,
    relative_to,
    strings,
    with_prefix,
)
from dce_batch.storage.aws import S3Options
from dce_batch.storage.input_table import has_extension, make_input_table
from dce_batch.storage.io import read_bytes
from dce_batch.storage.uris import (
    LOCAL_SCHEMES,
    S3_SCHEMES,
    filesystem_for,
    local_path,
    split_scheme,
    uri_prefix,
)

__all__ = ["LIST_FILE_SUFFIXES", "list_from_list_file", "parse_list_file"]

#: Suffixes that make an INPUT a *list file* of image URIs rather than an image.
LIST_FILE_SUFFIXES = (".parquet", ".csv", ".txt", ".lst")


def _is_text(column_type: pa.DataType) -> bool:
    """Whether an Arrow column type holds strings (plain, large, view or dictionary-encoded)."""
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    is_view = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    return (
        pa.types.is_string(column_type)
        or pa.types.is_large_string(column_type)
        or bool(is_view and is_view(column_type))
    )


def _clean_entries(values: pa.Array) -> pa.Array:
    """Trimmed, non-null, non-empty strings."""
    values = pc.utf8_trim_whitespace(strings(values))
    return pc.filter(values, pc.and_(pc.is_valid(values), pc.not_equal(values, "")))


def _pick_column(table: pa.Table, source: str) -> tuple[str, pa.Array]:
    """The URI column of a list-file table: ``uri`` or ``path`` (any case), else the first
    string column. Returns its name and non-empty values."""
    by_name = {name.strip().lower(): name for name in table.column_names}
    name = by_name.get("uri") or by_name.get("path")
    if name is None:
        for candidate, column_type in zip(table.column_names, table.schema.types):
            if _is_text(column_type):
                name = candidate
                break
    if name is None:
        raise ConfigError(
            f"list file {source} has no 'uri' or 'path' column and no text column; "
            "put the image URIs in a column named 'uri'"
        )
    column = table.column(name)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return name, _clean_entries(column)


def _looks_like_reference(text: str, extensions: frozenset[str]) -> bool:
    """Whether a CSV header cell is really a first URI (a header-less file)."""
    return "/" in text or has_extension(text.strip(), extensions)


def _text_lines(data: bytes, source: str) -> pa.Array:
    """Lines of a UTF-8 text file as an Arrow array, without a Python string per line."""
    buffer = pa.py_buffer(data)
    if data[:3] == b"\xef\xbb\xbf":
        buffer = buffer.slice(3)  # byte-order mark
    offsets = pa.array([0, buffer.size], pa.int64()).buffers()[1]
    text = pa.LargeStringArray.from_buffers(1, offsets, buffer)
    try:
        text.validate(full=True)  # checks UTF-8
    except pa.ArrowInvalid as exc:
        raise ConfigError(f"cannot parse list file {source}: it is not UTF-8 text") from exc
    return pc.split_pattern_regex(text, r"\r\n|\n|\r").flatten()


def parse_list_file(data: bytes, source: str, extensions: frozenset[str]) -> pa.Array:
    """URIs listed in a .parquet / .csv / .txt / .lst file, in file order (string array)."""
    suffix = posixpath.splitext(source)[1].lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return _pick_column(pq.read_table(pa.BufferReader(data)), source)[1]
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(pa.BufferReader(data))
            name, values = _pick_column(table, source)
            by_name = {n.strip().lower() for n in table.column_names}
            if "uri" not in by_name and "path" not in by_name and _looks_like_reference(
                name, extensions
            ):
                # No header row: the "column name" is the first URI. Re-read without a header.
                table = pacsv.read_csv(
                    pa.BufferReader(data),
                    read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                )
                values = _pick_column(table, source)[1]
            return values
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise ConfigError(f"cannot parse list file {source}: {exc}") from exc
    # .txt / .lst: one URI per line; full-line '#' comments and blank lines ignored.
    lines = _clean_entries(_text_lines(data, source))
    return pc.filter(lines, pc.invert(pc.starts_with(lines, "#")))


def _resolve_entries(entries: pa.Array, list_fs: pafs.FileSystem, list_dir: str) -> pa.Array:
    """Entries as absolute URIs (or local paths); relative ones are taken from the list file's
    folder and may not leave its bucket."""
    absolute = pc.or_(
        pc.match_substring_regex(entries, SCHEME_PATTERN),
        pc.or_(pc.starts_with(entries, "/"), pc.starts_with(entries, "~")),
    )
    relative = pc.invert(absolute)
    if not pc.any(relative).as_py():
        return entries
    prefix = uri_prefix(list_fs)
    rel = pc.filter(entries, relative)
    if prefix == "":
        joined = normpath_where_needed(pc.binary_join_element_wise(pa.scalar(list_dir), rel, "/"), os.path.normpath)
    else:
        backslash = pc.match_substring(rel, "\\")
        if pc.any(backslash).as_py():
            raise ConfigError(
                f"list entry {first_where(rel, backslash)!r} contains a backslash; write it with '/'"
            )
        joined = pc.binary_join_element_wise(pa.scalar(list_dir), rel, "/")
        normalised = normpath_where_needed(joined, posixpath.normpath)
        # On object stores the first path part is the bucket: '..' may move between prefixes
        # but not out of the list file's bucket.
        bucket = list_dir.split("/", 1)[0]
        inside = pc.starts_with(normalised, bucket + "/")
        if not pc.all(inside).as_py():
            entry = first_where(rel, pc.invert(inside))
            raise ConfigError(
                f"list entry {entry!r} leaves the bucket of the list file {prefix}{list_dir}; "
                "write it as a full URI"
            )
        joined = with_prefix(prefix, normalised)
    return pc.replace_with_mask(entries, relative, joined)


def _storage_kinds(uris: pa.Array) -> pa.Array:
    """Which filesystem each entry lives on: ``local``, ``s3`` or its (fsspec) scheme."""
    schemes = pc.utf8_lower(
        pc.struct_field(pc.extract_regex(uris, r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://"), [0])
    )
    schemes = pc.fill_null(schemes, "")
    kinds = schemes
    for scheme in LOCAL_SCHEMES:
        kinds = pc.if_else(pc.equal(schemes, scheme), "local", kinds)
    for scheme in S3_SCHEMES:
        kinds = pc.if_else(pc.equal(schemes, scheme), "s3", kinds)
    return kinds


def _storage_kind(uri: str) -> str:
    scheme, _ = split_scheme(uri)
    if scheme in LOCAL_SCHEMES:
        return "local"
    if scheme in S3_SCHEMES:
        return "s3"
    return scheme


def _entry_paths(uris: pa.Array, kind: str, fs: pafs.FileSystem) -> pa.Array:
    """Filesystem paths of listed URIs, all of storage ``kind`` on ``fs``."""
    if kind == "local":
        # file:///abs/path (or file://localhost/...) without %-escapes is just its path.
        simple_file = pc.and_(pc.match_substring_regex(uris, "(?i)^file://(localhost)?/"),
                              pc.invert(pc.match_substring(uris, "%")))
        if pc.any(simple_file).as_py():
            uris = pc.if_else(simple_file, pc.replace_substring_regex(uris, "(?i)^file://(localhost)?", ""), uris)
        plain = pc.and_(
            pc.starts_with(uris, "/"),
            pc.invert(pc.match_substring_regex(uris, NEEDS_NORMPATH)),
        )
        if pc.all(plain).as_py():
            return uris  # already absolute and normalised: what local_path would return
        fixed = [local_path(*split_scheme(u)) for u in pc.filter(uris, pc.invert(plain)).to_pylist()]
        return pc.replace_with_mask(uris, pc.invert(plain), pa.array(fixed, pa.string()))
    if kind == "s3":
        return pc.utf8_trim(pc.replace_substring_regex(uris, SCHEME_PATTERN, ""), characters="/")
    strip = type(fs.handler.fs)._strip_protocol  # fsspec's own rule for its URIs
    return pa.array([strip(u) for u in uris.to_pylist()], pa.string())


def _common_dir(paths: pa.Array) -> str:
    """Longest common folder of ``"/"``-separated paths: that of the first and last in order."""
    bounds = pc.min_max(paths)
    common = os.path.commonprefix([bounds["min"].as_py(), bounds["max"].as_py()])
    return common[: common.rfind("/")] if "/" in common else ""


def list_from_list_file(
    list_fs: pafs.FileSystem,
    list_path: str,
    uri: str,
    s3: S3Options | None,
    extensions: frozenset[str],
) -> tuple[pafs.FileSystem, pa.Table]:
    entries = parse_list_file(read_bytes(list_fs, list_path), uri, extensions)
    if len(entries) == 0:
        raise StorageError(f"list file {uri} lists no image URIs (it is empty or all comments)")
    resolved = _resolve_entries(entries, list_fs, posixpath.dirname(list_path))

    kinds = _storage_kinds(resolved)
    distinct = pc.unique(kinds).to_pylist()
    if len(distinct) > 1:
        examples = "; ".join(
            f"{kind}: {first_where(resolved, pc.equal(kinds, kind))}" for kind in distinct
        )
        raise ConfigError(
            f"list file {uri} mixes filesystems ({examples}); all listed images must be on one "
            "filesystem — split it into one list file per storage"
        )

    (kind,) = distinct
    if kind == _storage_kind(uri_prefix(list_fs) + list_path):
        fs = list_fs  # same storage as the list file: reuse its filesystem and settings
    else:
        fs, _ = filesystem_for(resolved[0].as_py(), s3)
    paths = pc.unique(_entry_paths(resolved, kind, fs))  # first occurrence kept
    relpaths = relative_to(_common_dir(paths), paths)
    return fs, make_input_table(with_prefix(uri_prefix(fs), paths), paths, relpaths)
