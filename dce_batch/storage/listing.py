"""Finding the input images of a run: folders, globs, S3 prefixes, single files and list files.

The result is built column-wise as an Arrow table (:func:`list_inputs_table`), never as a Python
object per file, so that a million inputs are planned in seconds and a few hundred MB:

* S3 prefixes are listed page by page (1,000 keys per ListObjectsV2 call, through botocore with
  the same endpoint, region, retries and timeouts as the filesystem), each page filtered into
  Arrow arrays before the next is fetched;
* list files are parsed by Arrow (CSV and Parquet readers; text files split by Arrow compute);
* filters (extensions, hidden files, ``_manifest`` folders, glob patterns) are Arrow compute
  kernels (RE2 regular expressions) over whole columns.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.errors import ConfigError, StorageError
from dce_batch.storage.aws import PortableS3FileSystem, S3Options, botocore_session
from dce_batch.storage.io import read_bytes, special_file_kind
from dce_batch.storage.uris import (
    LOCAL_SCHEMES,
    S3_SCHEMES,
    display,
    filesystem_for,
    get_info,
    local_path,
    require_uri,
    s3_endpoint,
    split_scheme,
    storage_error,
    uri_prefix,
)

__all__ = [
    "INPUT_TABLE_SCHEMA",
    "LIST_FILE_SUFFIXES",
    "MANIFEST_DIR",
    "InputFile",
    "list_inputs",
    "list_inputs_table",
]

#: Suffixes that make an INPUT a *list file* of image URIs rather than an image.
LIST_FILE_SUFFIXES = (".parquet", ".csv", ".txt", ".lst")

#: Folder that holds run manifests under OUTPUT; never treated as input.
MANIFEST_DIR = "_manifest"

#: Columns of :func:`list_inputs_table`.
INPUT_TABLE_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # path in the returned filesystem
        pa.field("relpath", pa.string(), nullable=False),  # "/"-separated, under the input root
        pa.field("size", pa.int64()),  # bytes; null when unknown (list files are not stat-ed)
    ]
)

GLOB_CHARS = frozenset("*?[")
_SCHEME_PATTERN = r"^[A-Za-z][A-Za-z0-9+.\-]*://"
# Hidden files/folders, and anything inside a _manifest folder, are never inputs.
_SKIPPED_PATTERN = rf"(^|/)\.|(^|/){MANIFEST_DIR}/"
# Paths that os/posixpath.normpath would change: '.'/'..' segments, doubled or trailing '/'.
_NEEDS_NORMPATH = r"(^|/)\.\.?(/|$)|//|/$"


@dataclass(frozen=True)
class InputFile:
    """One input image.

    ``relpath`` is ``"/"``-separated and relative to the input root; it is what gets mirrored
    under OUTPUT. ``size`` is None when unknown (list files are not stat-ed, to stay fast).
    """

    uri: str
    path: str
    relpath: str
    size: int | None

    @property
    def root(self) -> str:
        """Filesystem path of the input root this file's ``relpath`` is relative to."""
        return self.path[: len(self.path) - len(self.relpath)].rstrip("/") or "/"


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """``["JPG", ".png"]`` -> ``{".jpg", ".png"}``."""
    if isinstance(extensions, str):
        extensions = [extensions]
    result = frozenset(
        ("." + ext.strip().lstrip(".")).lower() for ext in extensions if ext.strip().lstrip(".")
    )
    if not result:
        raise ConfigError("no image extensions given; pass e.g. .jpg, .jpeg, .png")
    return result


def has_extension(name: str, extensions: frozenset[str]) -> bool:
    return posixpath.splitext(name)[1].lower() in extensions


def _strings(values) -> pa.Array:
    """A plain ``string`` array from a list, array or chunked array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    if not isinstance(values, pa.Array):
        values = pa.array(values, pa.string())
    return values if values.type == pa.string() else values.cast(pa.string())


def _with_prefix(prefix: str, paths: pa.Array) -> pa.Array:
    if not prefix:
        return paths
    return pc.binary_join_element_wise(pa.scalar(prefix), paths, "")


def _relative_to(base: str, paths: pa.Array) -> pa.Array:
    """Each path relative to folder ``base``; every path must be below it (or base be a root)."""
    base = base.rstrip("/")
    if not base:
        return pc.utf8_ltrim(paths, characters="/")
    return pc.utf8_slice_codeunits(paths, start=len(base) + 1)  # code points, like str slicing


def _table(uris: pa.Array, paths: pa.Array, relpaths: pa.Array, sizes: pa.Array | None) -> pa.Table:
    if sizes is None:
        sizes = pa.nulls(len(paths), pa.int64())
    return pa.Table.from_arrays(
        [_strings(uris), _strings(paths), _strings(relpaths), sizes.cast(pa.int64())],
        schema=INPUT_TABLE_SCHEMA,
    )


def _normpath_where_needed(paths: pa.Array, normpath) -> pa.Array:
    """``normpath`` of every path, calling Python only for the few that it would change."""
    mask = pc.match_substring_regex(paths, _NEEDS_NORMPATH)
    if not pc.any(mask).as_py():
        return paths
    indices = pc.indices_nonzero(mask)
    fixed = pa.array([normpath(p) for p in pc.take(paths, indices).to_pylist()], pa.string())
    return pc.replace_with_mask(paths, mask, fixed)


# --------------------------------------------------------------------------------------------
# Globs
# --------------------------------------------------------------------------------------------


def _literal(char: str) -> str:
    """A character as a regex literal valid in both Python's ``re`` and RE2 (Arrow)."""
    if char.isalnum() or char in "_/" or ord(char) > 127:
        return char
    return f"\\x{ord(char):02x}"


def glob_regex_source(pattern: str) -> str:
    """Regex (RE2 and Python syntax, to be matched whole) for a ``/``-separated glob.

    ``*``, ``?``, ``[...]`` stay in one segment; a ``**`` segment matches any number of
    segments (including none).
    """
    segments = pattern.split("/")
    out: list[str] = ["(?s)"]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        i = 0
        while i < len(segment):
            char = segment[i]
            if char == "*":
                out.append("[^/]*")
            elif char == "?":
                out.append("[^/]")
            elif char == "[" and _class_end(segment, i) > 0:
                end = _class_end(segment, i)
                body = segment[i + 1 : end]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                # Ranges (a-z) stay ranges; every other character is a literal.
                members = "".join(c if c == "-" else _literal(c) for c in body)
                out.append("[" + ("^" if negate else "") + members + "]")
                i = end
            else:
                out.append(_literal(char))
            i += 1
        if not last:
            out.append("/")
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """:func:`glob_regex_source` compiled with Python's ``re`` (use ``fullmatch``)."""
    return re.compile(glob_regex_source(pattern))


def _class_end(segment: str, start: int) -> int:
    """Index of the "]" closing the character class opened at ``start``, or -1."""
    j = start + 1
    if j < len(segment) and segment[j] == "!":
        j += 1
    if j < len(segment) and segment[j] == "]":
        j += 1  # a "]" first in the class is a literal, as in fnmatch
    return segment.find("]", j)


def split_glob(path: str) -> tuple[str, str]:
    """``"bucket/photos/**/*.jpg"`` -> ``("bucket/photos", "**/*.jpg")``."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if GLOB_CHARS & set(part):
            return "/".join(parts[:index]) or ("/" if path.startswith("/") else ""), "/".join(
                parts[index:]
            )
    return path, ""


# --------------------------------------------------------------------------------------------
# Folders and prefixes
# --------------------------------------------------------------------------------------------


def _listing_keys(options: S3Options) -> dict[str, str | None]:
    """Keys for the driver's listing client, in the precedence the filesystem's SDK uses.

    Keys given in code come first; then keys in the environment, which the AWS SDK inside
    pyarrow prefers to any profile (a botocore session with a profile set would skip them);
    else none, and botocore resolves the profile's credentials (SSO, credential_process ...).
    """
    if options.has_keys:
        return {"aws_access_key_id": options.access_key, "aws_secret_access_key": options.secret_key,
                "aws_session_token": options.session_token}
    access_key, secret_key = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        return {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key,
                "aws_session_token": os.environ.get("AWS_SESSION_TOKEN") or None}
    return {}


def _s3_pages(fs: PortableS3FileSystem, base: str, recursive: bool) -> Iterator[tuple[pa.Array, pa.Array]]:
    """(paths, sizes) of the objects under ``base``, one ListObjectsV2 page at a time."""
    import botocore
    import botocore.config
    import botocore.exceptions

    options = fs.options
    bucket, _, key = base.partition("/")
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    config = botocore.config.Config(
        region_name=options.region,
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.request_timeout_s,
        # botocore's standard retry mode (jittered backoff) for the same number of attempts.
        retries={"mode": "standard", "max_attempts": options.max_attempts},
        signature_version=botocore.UNSIGNED if options.anonymous else None,
        # Path-style addressing for custom endpoints, as pyarrow does (http://host/bucket/key).
        s3={"addressing_style": "path"} if options.endpoint_url else None,
        # The endpoint is exactly the filesystem's, never one from the environment.
        ignore_configured_endpoint_urls=True,
    )
    try:
        client = botocore_session(options.profile).create_client(
            "s3", endpoint_url=options.endpoint_url, config=config, **_listing_keys(options)
        )
        request = {"Bucket": bucket, "Prefix": prefix}
        if not recursive:
            request["Delimiter"] = "/"
        for page in client.get_paginator("list_objects_v2").paginate(**request):
            contents = page.get("Contents") or ()
            # Keys ending in "/" are folder markers, not files.
            objects = [(c["Key"], c["Size"]) for c in contents if not c["Key"].endswith("/")]
            keys = pa.array([k for k, _ in objects], pa.string())
            sizes = pa.array([s for _, s in objects], pa.int64())
            yield pc.binary_join_element_wise(pa.scalar(bucket + "/"), keys, ""), sizes
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise storage_error(exc, "list", fs, base) from exc


def _pyarrow_pages(fs: pafs.FileSystem, base: str, recursive: bool) -> Iterator[tuple[pa.Array, pa.Array]]:
    """(paths, sizes) of the files under ``base`` from one pyarrow listing (local, fsspec); on a
    local disk also what that listing leaves out (size 0): broken symbolic links, named pipes,
    sockets and devices (see :func:`_unlisted_entries`)."""
    infos = get_info(fs, pafs.FileSelector(base, recursive=recursive), "list", base)
    files = [info for info in infos if info.type == pafs.FileType.File]
    del infos
    yield pa.array([f.path for f in files], pa.string()), pa.array([f.size for f in files], pa.int64())
    if isinstance(fs, pafs.LocalFileSystem):
        unlisted = _unlisted_entries(base, recursive)
        if unlisted:
            yield pa.array(unlisted, pa.string()), pa.array([0] * len(unlisted), pa.int64())


def _unlisted_entries(base: str, recursive: bool) -> list[str]:
    """What pyarrow's listing leaves out under ``base`` but a user sees as files: symbolic links
    whose target does not exist, and named pipes, sockets and devices (or links to them). Each is
    listed and becomes a manifest row that says why it could not be read, instead of vanishing
    from the run. Folders are walked without following links (no cycles); only links and
    entries of other types need a ``stat``, so a large tree costs one directory read per folder."""
    unlisted: list[str] = []
    pending = [base]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        try:
                            target_mode = os.stat(entry.path).st_mode  # one stat: exists, and what
                        except OSError:
                            unlisted.append(entry.path)  # broken
                            continue
                        if special_file_kind(target_mode):
                            unlisted.append(entry.path)
                    elif entry.is_dir(follow_symlinks=False):
                        if recursive:
                            pending.append(entry.path)
                    elif not entry.is_file(follow_symlinks=False):
                        unlisted.append(entry.path)
        except OSError:
            continue  # pyarrow's listing above reported what it could not read
    return unlisted


def _list_tree(
    fs: pafs.FileSystem,
    base: str,
    extensions: frozenset[str],
    *,
    recursive: bool = True,
    pattern: str | None = None,
) -> tuple[pa.Table, int]:
    """Files under ``base`` with an image extension (and whose relpath matches the regex
    ``pattern``), as a table; and how many candidate files were seen (for "nothing found")."""
    pages = (
        _s3_pages(fs, base, recursive)
        if isinstance(fs, PortableS3FileSystem)
        else _pyarrow_pages(fs, base, recursive)
    )
    prefix = uri_prefix(fs)
    lowered_exts = sorted(extensions)
    chunks: list[pa.Table] = []
    seen = 0
    for paths, sizes in pages:
        if len(paths) == 0:
            continue
        relpaths = _relative_to(base, paths)
        candidate = pc.invert(pc.match_substring_regex(relpaths, _SKIPPED_PATTERN))
        if pattern is not None:
            candidate = pc.and_(candidate, pc.match_substring_regex(relpaths, f"^(?:{pattern})$"))
        seen += pc.sum(candidate).as_py() or 0
        lower = pc.utf8_lower(relpaths)
        is_image = pc.ends_with(lower, lowered_exts[0])
        for ext in lowered_exts[1:]:
            is_image = pc.or_(is_image, pc.ends_with(lower, ext))
        keep = pc.and_(candidate, is_image)
        paths, relpaths, sizes = (pc.filter(a, keep) for a in (paths, relpaths, sizes))
        chunks.append(_table(_with_prefix(prefix, paths), paths, relpaths, sizes))
    if not chunks:
        return INPUT_TABLE_SCHEMA.empty_table(), seen
    return pa.concat_tables(chunks).combine_chunks(), seen


def _missing_error(fs: pafs.FileSystem, path: str, uri: str) -> StorageError:
    """Explain why nothing exists at ``path``, naming the thing to check."""
    if isinstance(fs, pafs.S3FileSystem):
        bucket = path.split("/", 1)[0]
        endpoint = s3_endpoint(fs)
        endpoint_text = f"endpoint {endpoint}" if endpoint else "the AWS endpoint"
        bucket_info = get_info(fs, bucket, "list", bucket)
        if bucket_info.type == pafs.FileType.NotFound:
            return StorageError(
                f"cannot list {uri}: bucket {bucket!r} does not exist ({endpoint_text}; check the "
                "bucket name and AWS_ENDPOINT_URL / --s3-endpoint, and that the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_PROFILE) belong to that endpoint)"
            )
        return StorageError(f"cannot list {uri}: no objects under this prefix in bucket {bucket!r}")
    if isinstance(fs, pafs.LocalFileSystem):
        return StorageError(
            f"cannot list {uri}: no such file or folder (relative paths are taken from the "
            f"current folder {os.getcwd()})"
        )
    return StorageError(f"cannot list {uri}: no such file, folder or prefix")


def _nothing_found(uri: str, what: str, extensions: frozenset[str], seen: int) -> StorageError:
    exts = ", ".join(sorted(extensions))
    detail = (
        f"{seen} file(s) found but none ends in {exts}" if seen else f"no files ending in {exts}"
    )
    return StorageError(
        f"no input images in {uri}: {detail} ({what}; hidden files and {MANIFEST_DIR} folders "
        "are skipped); check the path and --extensions"
    )


def _list_glob(fs: pafs.FileSystem, path: str, uri: str, extensions: frozenset[str]) -> pa.Table:
    base, pattern = split_glob(path)
    if isinstance(fs, pafs.S3FileSystem) and not base:
        raise StorageError(f"cannot list {uri}: the bucket name cannot be a pattern")
    info = get_info(fs, base, "list", base)
    if info.type != pafs.FileType.Directory:
        raise _missing_error(fs, base, display(fs, base))
    # A single-segment pattern ("a/*.png") needs one level only: avoids listing a whole bucket.
    recursive = "/" in pattern or "**" in pattern
    table, seen = _list_tree(
        fs, base, extensions, recursive=recursive, pattern=glob_regex_source(pattern)
    )
    if table.num_rows == 0:
        what = f"files matching {pattern!r} under {display(fs, base)}"
        raise _nothing_found(uri, what, extensions, seen)
    return table


# --------------------------------------------------------------------------------------------
# List files
# --------------------------------------------------------------------------------------------


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
    values = pc.utf8_trim_whitespace(_strings(values))
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


def _first(values: pa.Array, mask: pa.Array) -> str:
    """The first value where ``mask`` holds (for error messages)."""
    return values[pc.index(mask, True).as_py()].as_py()


def _resolve_entries(entries: pa.Array, list_fs: pafs.FileSystem, list_dir: str) -> pa.Array:
    """Entries as absolute URIs (or local paths); relative ones are taken from the list file's
    folder and may not leave its bucket."""
    absolute = pc.or_(
        pc.match_substring_regex(entries, _SCHEME_PATTERN),
        pc.or_(pc.starts_with(entries, "/"), pc.starts_with(entries, "~")),
    )
    relative = pc.invert(absolute)
    if not pc.any(relative).as_py():
        return entries
    prefix = uri_prefix(list_fs)
    rel = pc.filter(entries, relative)
    if prefix == "":
        joined = _normpath_where_needed(pc.binary_join_element_wise(pa.scalar(list_dir), rel, "/"), os.path.normpath)
    else:
        backslash = pc.match_substring(rel, "\\")
        if pc.any(backslash).as_py():
            raise ConfigError(
                f"list entry {_first(rel, backslash)!r} contains a backslash; write it with '/'"
            )
        joined = pc.binary_join_element_wise(pa.scalar(list_dir), rel, "/")
        normalised = _normpath_where_needed(joined, posixpath.normpath)
        # On object stores the first path part is the bucket: '..' may move between prefixes
        # but not out of the list file's bucket.
        bucket = list_dir.split("/", 1)[0]
        inside = pc.starts_with(normalised, bucket + "/")
        if not pc.all(inside).as_py():
            entry = _first(rel, pc.invert(inside))
            raise ConfigError(
                f"list entry {entry!r} leaves the bucket of the list file {prefix}{list_dir}; "
                "write it as a full URI"
            )
        joined = _with_prefix(prefix, normalised)
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
            pc.invert(pc.match_substring_regex(uris, _NEEDS_NORMPATH)),
        )
        if pc.all(plain).as_py():
            return uris  # already absolute and normalised: what local_path would return
        fixed = [local_path(*split_scheme(u)) for u in pc.filter(uris, pc.invert(plain)).to_pylist()]
        return pc.replace_with_mask(uris, pc.invert(plain), pa.array(fixed, pa.string()))
    if kind == "s3":
        return pc.utf8_trim(pc.replace_substring_regex(uris, _SCHEME_PATTERN, ""), characters="/")
    strip = type(fs.handler.fs)._strip_protocol  # fsspec's own rule for its URIs
    return pa.array([strip(u) for u in uris.to_pylist()], pa.string())


def _common_dir(paths: pa.Array) -> str:
    """Longest common folder of ``"/"``-separated paths: that of the first and last in order."""
    bounds = pc.min_max(paths)
    common = os.path.commonprefix([bounds["min"].as_py(), bounds["max"].as_py()])
    return common[: common.rfind("/")] if "/" in common else ""


def _list_from_list_file(
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
            f"{kind}: {_first(resolved, pc.equal(kinds, kind))}" for kind in distinct
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
    relpaths = _relative_to(_common_dir(paths), paths)
    return fs, _table(_with_prefix(uri_prefix(fs), paths), paths, relpaths, None)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def list_inputs_table(
    input_uri: str, s3: S3Options | None = None, *, extensions: Iterable[str]
) -> tuple[pafs.FileSystem, pa.Table]:
    """Find the input images of a run, as a table (see :data:`INPUT_TABLE_SCHEMA`).

    ``input_uri`` may be a local folder (searched recursively), a glob (``photos/**/*.jpg``,
    ``s3://b/a/*.png``), an object-store prefix, a single image, or a list file
    (``.parquet``/``.csv``/``.txt``/``.lst``) naming images, for buckets too large to list on
    every run. Folders, prefixes and globs yield only files with one of ``extensions`` (any
    case) and skip hidden files and ``_manifest`` folders; list files are taken as given.

    Returns the filesystem of the images and a table with columns ``uri``, ``path`` (in that
    filesystem), ``relpath`` and ``size``, sorted by ``relpath`` and unique by ``path``.
    StorageError if nothing is found or the location is missing or unreachable; ConfigError
    for an unusable list file or settings.
    """
    exts = normalise_extensions(extensions)
    input_uri = require_uri(input_uri)
    fs, path = filesystem_for(input_uri, s3)
    uri = display(fs, path)

    has_glob = bool(GLOB_CHARS & set(path))
    info = get_info(fs, path, "list", path)
    if has_glob and info.type == pafs.FileType.NotFound:
        table = _list_glob(fs, path, uri, exts)
    elif info.type == pafs.FileType.File:
        if posixpath.splitext(path)[1].lower() in LIST_FILE_SUFFIXES:
            fs, table = _list_from_list_file(fs, path, uri, s3, exts)
        else:
            # A single file named explicitly is taken as given, like list-file entries.
            single = pa.array([path], pa.string())
            table = _table(pa.array([uri]), single, pa.array([posixpath.basename(path)]),
                           pa.array([info.size], pa.int64()))
    elif info.type == pafs.FileType.Directory:
        table, seen = _list_tree(fs, path, exts)
        if table.num_rows == 0:
            raise _nothing_found(uri, "searched recursively", exts, seen)
    else:
        raise _missing_error(fs, path, uri)
    # Paths are unique by construction (listings) or deduplicated (list files).
    return fs, table.sort_by("relpath")


def list_inputs(
    input_uri: str, s3: S3Options | None = None, *, extensions: Iterable[str]
) -> tuple[pafs.FileSystem, list[InputFile]]:
    """:func:`list_inputs_table` as a list of :class:`InputFile`, for small callers."""
    fs, table = list_inputs_table(input_uri, s3, extensions=extensions)
    columns = [table.column(name).to_pylist() for name in ("uri", "path", "relpath", "size")]
    return fs, [InputFile(*row) for row in zip(*columns)]
