"""List files: an INPUT that names its images (``.parquet``, ``.csv``, ``.txt``, ``.lst``), for
buckets too large to list on every run.

Parsed by Arrow (Parquet and CSV readers; text files split by Arrow compute), never a Python
object per entry, so a million entries are planned in seconds. Entries are never stat-ed (a
request per entry on S3); a Parquet or CSV list file may carry each entry's fingerprint itself,
as an S3 Inventory report does (columns ``size``, ``etag`` / ``e_tag`` and ``mtime`` /
``last_modified`` / ``last_modified_date``, any case).

Names (``relpath``) depend on the entry alone, never on the other entries, so adding or removing
entries renames nothing: an entry below the list file's own folder is named by its path relative
to that folder; any other entry by itself (``bucket/key`` for objects, the absolute path without
its leading ``/`` for local files).
"""

from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.errors import ConfigError, NoInputsFoundError
from dce_batch.storage.arrow_paths import (
    NEEDS_NORMPATH,
    SCHEME_PATTERN,
    first_where,
    has_duplicates,
    normpath_where_needed,
    one_array,
    strings,
    with_prefix,
)
from dce_batch.storage.aws import S3Options
from dce_batch.storage.input_table import (
    MTIME_TYPE,
    has_extension,
    make_input_table,
    unquoted_etags,
)
from dce_batch.storage.io import read_bytes
from dce_batch.storage.uris import (
    LOCAL_SCHEMES,
    S3_SCHEMES,
    filesystem_for,
    local_path,
    split_scheme,
    uri_prefix,
)

__all__ = ["LIST_FILE_SUFFIXES", "list_from_list_file", "read_list_file"]

#: Suffixes that make an INPUT a *list file* of image URIs rather than an image.
LIST_FILE_SUFFIXES = (".parquet", ".csv", ".txt", ".lst")

# Column names (lower case) of each entry's fingerprint, first found wins; S3 Inventory's names
# included so that an inventory report is a list file as it is.
_FINGERPRINT_COLUMNS = {
    "size": ("size",),
    "etag": ("etag", "e_tag"),
    "mtime": ("mtime", "last_modified", "last_modified_date"),
}
# Columns always read as text from a CSV file: an ETag or key of digits only is still text.
_TEXT_COLUMNS = frozenset({"uri", "path", "bucket", "key", "etag", "e_tag"})

# A time of day followed by a zone: 12:00:00Z, 12:00:00.5+02:00 (a date alone has no zone).
_ZONED_TIME = r"(?i)\d\d:\d\d(:\d\d(\.\d+)?)?(z|[+-]\d\d(:?\d\d)?)$"

#: Columns of :func:`read_list_file`.
LIST_FILE_SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("mtime", MTIME_TYPE),
                              ("etag", pa.string())])


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


def _decoded(column):
    """A column without dictionary encoding; a plain column as it is (chunks kept, no copy)."""
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


def _plain(column) -> pa.Array:
    """A column as one array, dictionary-decoded."""
    if isinstance(column, pa.ChunkedArray):
        column = one_array(column)
    return _decoded(column)


def _by_lower_name(table: pa.Table) -> dict[str, str]:
    return {name.strip().lower(): name for name in reversed(table.column_names)}


def _entry_column(table: pa.Table, source: str) -> pa.Array:
    """The URI of each row: column ``uri`` or ``path`` (any case); else ``s3://bucket/key`` from
    ``bucket`` and ``key`` columns (an S3 Inventory report); else the first string column."""
    by_name = _by_lower_name(table)
    name = by_name.get("uri") or by_name.get("path")
    if name is None and "bucket" in by_name and "key" in by_name:
        bucket, key = _plain(table.column(by_name["bucket"])), _plain(table.column(by_name["key"]))
        if _is_text(bucket.type) and _is_text(key.type):
            # Keys are taken as they are (never trimmed): spaces may be part of a key.
            joined = pc.binary_join_element_wise(pa.scalar("s3://"), strings(pc.utf8_trim_whitespace(bucket)),
                                                 pa.scalar("/"), strings(key), "")
            return pc.if_else(pc.equal(strings(key), ""), pa.scalar(None, pa.string()), joined)
    if name is None:
        for candidate, column_type in zip(table.column_names, table.schema.types):
            if _is_text(column_type):
                name = candidate
                break
    if name is None:
        raise ConfigError(
            f"list file {source} has no 'uri' or 'path' column and no text column; "
            "put the image URIs in a column named 'uri' (or 'bucket' and 'key', as S3 Inventory does)"
        )
    return pc.utf8_trim_whitespace(strings(_plain(table.column(name))))


def _size_column(values: pa.Array | pa.ChunkedArray, name: str, source: str) -> pa.Array | pa.ChunkedArray:
    try:
        return values.cast(pa.int64())  # text or whole floats; "12.5" or "big" fail
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigError(f"list file {source}: column {name!r} must hold sizes in bytes (whole numbers); "
                          f"{exc}") from exc


def _mtime_column(values: pa.Array | pa.ChunkedArray, name: str, source: str) -> pa.Array | pa.ChunkedArray:
    """Times as ``timestamp[ns, UTC]``; times without a zone are taken as UTC (as S3 reports them)."""
    kind = values.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_null(kind):
        return values.cast(MTIME_TYPE)
    if _is_text(kind):
        values = pc.utf8_trim_whitespace(strings(values))
        # Each value with a zone (Z, +02:00) is taken in it, one without in UTC.
        zoned = pc.fill_null(pc.match_substring_regex(values, _ZONED_TIME), False)
        none = pa.scalar(None, pa.string())
        try:
            return pc.coalesce(pc.if_else(zoned, values, none).cast(MTIME_TYPE),
                               pc.if_else(zoned, none, values).cast(pa.timestamp("ns")).cast(MTIME_TYPE))
        except pa.ArrowInvalid as exc:
            raise ConfigError(f"list file {source}: column {name!r} must hold times as ISO 8601 text, e.g. "
                              f"2024-05-01T12:00:00Z; {exc}") from exc
    # A number could be seconds, milliseconds or nanoseconds: guessing would make fingerprints
    # that never match.
    raise ConfigError(f"list file {source}: column {name!r} holds {kind} values; write the times as a "
                      "timestamp column or as ISO 8601 text (2024-05-01T12:00:00Z)")


def _fingerprints(table: pa.Table, source: str) -> dict[str, pa.Array | pa.ChunkedArray | None]:
    by_name = _by_lower_name(table)
    found: dict[str, pa.Array | None] = {}
    for field, candidates in _FINGERPRINT_COLUMNS.items():
        name = next((by_name[c] for c in candidates if c in by_name), None)
        if name is None:
            found[field] = None
            continue
        # Chunks kept: a million 32-character ETags are not copied into one array.
        values = _decoded(table.column(name))
        if field == "size":
            found[field] = _size_column(values, name, source)
        elif field == "mtime":
            found[field] = _mtime_column(values, name, source)
        else:
            found[field] = unquoted_etags(values)
    return found


def _current_versions(table: pa.Table) -> pa.Table:
    """Without the rows of an S3 Inventory report of all versions that are not images: older
    versions (``is_latest`` false) and delete markers."""
    by_name = _by_lower_name(table)
    keep = None
    for name, wanted in (("is_latest", True), ("is_delete_marker", False)):
        column = by_name.get(name)
        if column is not None and pa.types.is_boolean(table.schema.field(column).type):
            matches = pc.fill_null(pc.equal(table.column(column), wanted), True)
            keep = matches if keep is None else pc.and_(keep, matches)
    return table if keep is None else table.filter(keep)


def _entries_table(table: pa.Table, source: str) -> pa.Table:
    table = _current_versions(table)
    uris = _entry_column(table, source)
    prints = _fingerprints(table, source)
    rows = len(uris)
    entries = pa.Table.from_arrays(
        [uris] + [prints[f] if prints[f] is not None else pa.nulls(rows, LIST_FILE_SCHEMA.field(f).type)
                  for f in ("size", "mtime", "etag")],
        schema=LIST_FILE_SCHEMA,
    )
    listed = pc.and_(pc.is_valid(uris), pc.not_equal(uris, ""))
    # Blank lines are rare: filter (a copy of every column) only when there are some.
    return entries if pc.all(listed).as_py() else entries.filter(listed)


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


def _read_csv(data: bytes, source: str, extensions: frozenset[str]) -> pa.Table:
    import pyarrow.csv as pacsv

    header = pacsv.open_csv(pa.BufferReader(data)).schema.names
    text_columns = {name: pa.string() for name in header if name.strip().lower() in _TEXT_COLUMNS}
    table = pacsv.read_csv(pa.BufferReader(data),
                           convert_options=pacsv.ConvertOptions(column_types=text_columns))
    by_name = _by_lower_name(table)
    named = "uri" in by_name or "path" in by_name or ("bucket" in by_name and "key" in by_name)
    if not named and header and _looks_like_reference(header[0], extensions):
        # No header row: the "column name" is the first URI. Re-read without a header.
        table = pacsv.read_csv(pa.BufferReader(data),
                               read_options=pacsv.ReadOptions(autogenerate_column_names=True))
        return _entries_table(table.select([0]), source)
    return _entries_table(table, source)


def read_list_file(data: bytes, source: str, extensions: frozenset[str]) -> pa.Table:
    """The entries of a .parquet / .csv / .txt / .lst list file, in file order, as a table of
    :data:`LIST_FILE_SCHEMA`: ``uri`` (as written) and the fingerprint columns the file carries
    (null where it carries none)."""
    suffix = posixpath.splitext(source)[1].lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return _entries_table(pq.read_table(pa.BufferReader(data)), source)
        if suffix == ".csv":
            return _read_csv(data, source, extensions)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise ConfigError(f"cannot parse list file {source}: {exc}") from exc
    # .txt / .lst: one URI per line; full-line '#' comments and blank lines ignored.
    lines = pc.utf8_trim_whitespace(strings(_text_lines(data, source)))
    keep = pc.and_(pc.not_equal(lines, ""), pc.invert(pc.starts_with(lines, "#")))
    uris = pc.filter(lines, keep)
    rows = len(uris)
    return pa.Table.from_arrays([uris, pa.nulls(rows, pa.int64()), pa.nulls(rows, MTIME_TYPE),
                                 pa.nulls(rows, pa.string())], schema=LIST_FILE_SCHEMA)


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


def names_from_entries(paths: pa.Array, own_folder: str | None) -> pa.Array:
    """Each entry's ``relpath``, from the entry alone.

    ``own_folder`` is the list file's folder when the entries are on the list file's storage
    (else None): entries below it are named relative to it. Every other entry is named by its
    own path without a leading ``/``: ``bucket/key`` on object stores, the absolute path on a
    local disk.
    """
    prefix = None if own_folder is None else own_folder.rstrip("/") + "/"
    if prefix is None or prefix == "/":  # another storage, or a list file at a local root
        return pc.utf8_ltrim(paths, characters="/")
    below = pc.starts_with(paths, prefix)
    # Only the arrays needed: usually every entry is below the list file's folder, or none is.
    if pc.all(below).as_py():
        return pc.utf8_slice_codeunits(paths, start=len(prefix))
    if not pc.any(below).as_py():
        return pc.utf8_ltrim(paths, characters="/")
    return pc.if_else(below, pc.utf8_slice_codeunits(paths, start=len(prefix)),
                      pc.utf8_ltrim(paths, characters="/"))


def list_from_list_file(
    list_fs: pafs.FileSystem,
    list_path: str,
    uri: str,
    s3: S3Options | None,
    extensions: frozenset[str],
) -> tuple[pafs.FileSystem, pa.Table]:
    """The inputs a list file names, as a table of
    :data:`~dce_batch.storage.input_table.INPUT_TABLE_SCHEMA` (unsorted), and their filesystem.

    Entries are taken as given (no extension filter, no stat); a path listed twice is listed
    once, with the fingerprint of its first line.
    """
    entries = read_list_file(read_bytes(list_fs, list_path), uri, extensions)
    if entries.num_rows == 0:
        raise NoInputsFoundError(f"list file {uri} lists no image URIs (it is empty or all comments)")
    own_folder = posixpath.dirname(list_path)
    resolved = _resolve_entries(one_array(entries.column("uri")), list_fs, own_folder)

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
    same_storage = kind == _storage_kind(uri_prefix(list_fs) + list_path)
    # Same storage as the list file: reuse its filesystem and settings.
    fs = list_fs if same_storage else filesystem_for(resolved[0].as_py(), s3)[0]
    paths = _entry_paths(resolved, kind, fs)
    fingerprinted = any(entries.column(name).null_count < entries.num_rows for name in ("size", "mtime", "etag"))
    if fingerprinted and has_duplicates(paths):  # grouping only then
        # Each path once, from its first line and so with that line's fingerprint.
        numbered = pa.table({"path": paths, "row": pa.array(range(len(paths)), pa.int64())})
        first_rows = numbered.group_by("path").aggregate([("row", "min")])["row_min"].combine_chunks()
        first_rows = first_rows.take(pc.sort_indices(first_rows))
        entries, paths = entries.take(first_rows), paths.take(first_rows)
    elif not fingerprinted:
        paths = pc.unique(paths)  # no fingerprint to keep: each path once
    relpaths = names_from_entries(paths, own_folder if same_storage else None)
    prints = {"sizes": entries.column("size"), "mtimes": entries.column("mtime"),
              "etags": entries.column("etag")} if fingerprinted else {}
    return fs, make_input_table(with_prefix(uri_prefix(fs), paths), paths, relpaths, **prints)
