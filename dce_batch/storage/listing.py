"""Finding the input images of a run: folders, globs, S3 prefixes, single files and list files.

The entry point is :func:`list_inputs_table`. The result is built column-wise as an Arrow table,
never as a Python object per file, so that a million inputs are planned in seconds and a few
hundred MB:

* S3 prefixes are listed page by page (1,000 keys per ListObjectsV2 call, through botocore with
  the same endpoint, region, retries and timeouts as the filesystem), each page filtered into
  Arrow arrays before the next is fetched; each page carries every object's size, ETag and
  LastModified, so fingerprints cost no request;
* local folders are walked by :mod:`.local_tree` (symbolic-link loops, special files and names
  that are not UTF-8 handled there); other stores (fsspec) by pyarrow's listing;
* list files are parsed by :mod:`.list_file`; globs by :mod:`.globs`;
* filters (extensions, hidden files, ``_manifest`` folders, glob patterns) are Arrow compute
  kernels (RE2 regular expressions) over whole columns.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.errors import (
    ConfigError,
    NoInputsFoundError,
    StorageError,
    UnsupportedNameError,
    describe_error,
)
from dce_batch.storage.arrow_paths import relative_to, with_prefix
from dce_batch.storage.aws import PortableS3FileSystem, S3Options, s3_client
from dce_batch.storage.globs import GLOB_CHARS, glob_regex_source, split_glob
from dce_batch.storage.input_table import (
    INPUT_TABLE_SCHEMA,
    MTIME_TYPE,
    InputFile,
    make_input_table,
    normalise_extensions,
    unquoted_etags,
)
from dce_batch.storage.list_file import LIST_FILE_SUFFIXES, list_from_list_file
from dce_batch.storage.local_tree import walk_input_folder
from dce_batch.storage.uris import (
    LOCAL_SCHEMES,
    display,
    filesystem_for,
    fs_kind,
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

#: Folder that holds run manifests under OUTPUT; never treated as input.
MANIFEST_DIR = "_manifest"

# Hidden files and folders (a part starting with "."), and anything inside a _manifest folder,
# are never inputs. The parts "." and ".." are not hidden names: an object key may contain them
# (odd/sub/../up.jpg), and such an input is listed so that the planner refuses it with a row.
_SKIPPED_PATTERN = rf"(^|/)\.([^./]|\.[^/])|(^|/){MANIFEST_DIR}/"

_NOT_UTF8_ERROR = describe_error(UnsupportedNameError(
    "the file name is not valid UTF-8 (its URI shows each byte that is not as \\xNN); rename it, for "
    "example with `convmv -f latin1 -t utf-8 -r --notest INPUT`, and run again"
))

#: What :func:`list_inputs_table` does with a warning when the caller gives no ``warn``.
logger = logging.getLogger(__name__)


def _skips_folder(name: str) -> bool:
    """Folders whose files :data:`_SKIPPED_PATTERN` would drop anyway: never entered."""
    return name.startswith(".") or name == MANIFEST_DIR


class _Page(NamedTuple):
    """Columns of the files one listing request (or walk) found."""

    paths: pa.Array
    sizes: pa.Array
    mtimes: pa.Array | None = None
    etags: pa.Array | None = None
    not_utf8: pa.Array | None = None


# --------------------------------------------------------------------------------------------
# Folders and prefixes
# --------------------------------------------------------------------------------------------


def _s3_pages(fs: PortableS3FileSystem, base: str, recursive: bool) -> Iterator[_Page]:
    """The objects under ``base``, one ListObjectsV2 page at a time."""
    import botocore.exceptions

    options = fs.options
    bucket, _, key = base.partition("/")
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    try:
        client = s3_client(options)
        request = {"Bucket": bucket, "Prefix": prefix}
        if not recursive:
            request["Delimiter"] = "/"
        for page in client.get_paginator("list_objects_v2").paginate(**request):
            # Keys ending in "/" are folder markers, not files.
            objects = [c for c in page.get("Contents") or () if not c["Key"].endswith("/")]
            keys = pa.array([c["Key"] for c in objects], pa.string())
            yield _Page(
                paths=pc.binary_join_element_wise(pa.scalar(bucket + "/"), keys, ""),
                sizes=pa.array([c["Size"] for c in objects], pa.int64()),
                mtimes=pa.array([c.get("LastModified") for c in objects], MTIME_TYPE),
                etags=unquoted_etags(pa.array([c.get("ETag") for c in objects], pa.string())),
            )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise storage_error(exc, "list", fs, base) from exc


def _pyarrow_pages(fs: pafs.FileSystem, base: str, recursive: bool) -> Iterator[_Page]:
    """The files under ``base`` from one pyarrow listing (fsspec filesystems)."""
    infos = get_info(fs, pafs.FileSelector(base, recursive=recursive), "list", base)
    files = [info for info in infos if info.type == pafs.FileType.File]
    del infos
    yield _Page(paths=pa.array([f.path for f in files], pa.string()),
                sizes=pa.array([f.size for f in files], pa.int64()),
                mtimes=pa.array([f.mtime_ns for f in files], MTIME_TYPE))


def _local_pages(base: str, recursive: bool, warn: Callable[[str], None]) -> Iterator[_Page]:
    files = walk_input_folder(base, recursive=recursive, skip_folder=_skips_folder, warn=warn)
    yield _Page(paths=files.paths, sizes=files.sizes, mtimes=files.mtimes, not_utf8=files.not_utf8)


def _list_tree(
    fs: pafs.FileSystem,
    base: str,
    extensions: frozenset[str],
    warn: Callable[[str], None],
    *,
    recursive: bool = True,
    pattern: str | None = None,
    refused: Mapping[str, str] | None = None,
    reported: Iterable[str] = (),
) -> tuple[pa.Table, int]:
    """Files under ``base`` with an image extension (and whose relpath matches the regex
    ``pattern``), as a table; and how many candidate files were seen (for "nothing found").

    Files with an extension in ``refused`` (extension -> manifest error) are listed too, with
    that error as their ``listing_error``. Other files are skipped; when some images were found
    and some skipped files have an extension in ``reported`` (image formats not read: camera raw,
    PSD, ...), ``warn`` is called once with how many, by extension."""
    refused = {ext.lower(): error for ext, error in (refused or {}).items()}
    reported = pa.array(sorted({ext.lower() for ext in reported}), pa.string())
    if isinstance(fs, PortableS3FileSystem):
        pages = _s3_pages(fs, base, recursive)
    elif isinstance(fs, pafs.LocalFileSystem):
        pages = _local_pages(base, recursive, warn)
    else:
        pages = _pyarrow_pages(fs, base, recursive)
    prefix = uri_prefix(fs)
    lowered_exts = sorted(extensions)
    chunks: list[pa.Table] = []
    seen = 0
    skipped: Counter[str] = Counter()
    for page in pages:
        if len(page.paths) == 0:
            continue
        relpaths = relative_to(base, page.paths)
        candidate = pc.invert(pc.match_substring_regex(relpaths, _SKIPPED_PATTERN))
        if pattern is not None:
            candidate = pc.and_(candidate, pc.match_substring_regex(relpaths, f"^(?:{pattern})$"))
        seen += pc.sum(candidate).as_py() or 0
        lower = pc.utf8_lower(relpaths)
        is_image = pc.ends_with(lower, lowered_exts[0])
        for ext in lowered_exts[1:]:
            is_image = pc.or_(is_image, pc.ends_with(lower, ext))
        errors = None
        for ext, error in refused.items():
            hit = pc.and_(pc.ends_with(lower, ext), pc.invert(is_image))
            if pc.any(hit).as_py():
                is_image = pc.or_(is_image, hit)
                errors = _with_error(errors, hit, error)
        keep = pc.and_(candidate, is_image)
        other = pc.and_(candidate, pc.invert(is_image))
        if len(reported) and pc.any(other).as_py():
            names = pc.filter(lower, other)
            exts = pc.struct_field(pc.extract_regex(names, r"(?P<e>\.[^./]*)$"), "e")
            exts = pc.filter(exts, pc.fill_null(pc.is_in(exts, value_set=reported), False))
            for item in pc.value_counts(exts).to_pylist():
                skipped[item["values"]] += item["counts"]
        if page.not_utf8 is not None and pc.any(page.not_utf8).as_py():
            # A name that cannot be shown as it is says so first, whatever its extension.
            errors = _with_error(errors, page.not_utf8, _NOT_UTF8_ERROR)
        columns = [page.paths, relpaths, page.sizes, page.mtimes, page.etags, errors]
        paths, relpaths, sizes, mtimes, etags, errors = (
            None if c is None else pc.filter(c, keep) for c in columns
        )
        chunks.append(make_input_table(with_prefix(prefix, paths), paths, relpaths, sizes=sizes, mtimes=mtimes,
                                       etags=etags, listing_errors=errors))
    if not chunks:
        return INPUT_TABLE_SCHEMA.empty_table(), seen
    table = pa.concat_tables(chunks).combine_chunks()
    if skipped and table.num_rows:  # none found: _nothing_found says it all
        warn(_skipped_line(skipped))
    return table, seen


def _with_error(errors: pa.Array | None, where: pa.Array, message: str) -> pa.Array:
    """``errors`` (None: no error yet) with ``message`` where ``where`` is true."""
    return pc.if_else(where, pa.scalar(message), errors if errors is not None else pa.nulls(len(where), pa.string()))


def _skipped_line(skipped: Counter[str]) -> str:
    """One line on the image files a folder listing left out, by extension: most common first, ties
    in name order, whatever order the listing found them in."""
    total = sum(skipped.values())
    ordered = sorted(skipped.items(), key=lambda item: (-item[1], item[0]))
    shown = [f"{ext} {count:,}" for ext, count in ordered[:6]]
    if len(skipped) > 6:
        shown.append(f"{len(skipped) - 6} more extensions")
    return (f"{total:,} image file(s) skipped: dce-batch does not read their format ({', '.join(shown)}); "
            "convert them to JPEG, PNG or TIFF to enhance them")


def _missing_error(fs: pafs.FileSystem, path: str, uri: str) -> StorageError:
    """Explain why nothing exists at ``path``, naming the thing to check."""
    if isinstance(fs, pafs.S3FileSystem):
        bucket = path.split("/", 1)[0]
        endpoint = s3_endpoint(fs)
        endpoint_text = f"endpoint {endpoint}" if endpoint else "the AWS endpoint"
        bucket_info = get_info(fs, bucket, "list", bucket)
        if bucket_info.type == pafs.FileType.NotFound:
            return NoInputsFoundError(
                f"cannot list {uri}: bucket {bucket!r} does not exist ({endpoint_text}; check the "
                "bucket name and AWS_ENDPOINT_URL / --s3-endpoint, and that the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_PROFILE) belong to that endpoint)"
            )
        return NoInputsFoundError(f"cannot list {uri}: no objects under this prefix in bucket {bucket!r}")
    if isinstance(fs, pafs.LocalFileSystem):
        return NoInputsFoundError(
            f"cannot list {uri}: no such file or folder (relative paths are taken from the "
            f"current folder {os.getcwd()})"
        )
    return NoInputsFoundError(f"cannot list {uri}: no such file, folder or prefix")


def _nothing_found(uri: str, what: str, extensions: frozenset[str], seen: int) -> StorageError:
    exts = ", ".join(sorted(extensions))
    detail = (
        f"{seen} file(s) found but none ends in {exts}" if seen else f"no files ending in {exts}"
    )
    return NoInputsFoundError(
        f"no input images in {uri}: {detail} ({what}; hidden files and {MANIFEST_DIR} folders "
        "are skipped); check the path: a folder, glob, s3:// prefix or list file of images with these extensions"
    )


def _list_glob(fs: pafs.FileSystem, path: str, uri: str, extensions: frozenset[str],
               warn: Callable[[str], None], refused: Mapping[str, str] | None = None,
               reported: Iterable[str] = ()) -> pa.Table:
    base, pattern = split_glob(path)
    if isinstance(fs, pafs.S3FileSystem) and not base:
        raise StorageError(f"cannot list {uri}: the bucket name cannot be a pattern")
    info = get_info(fs, base, "list", base)
    if info.type != pafs.FileType.Directory:
        raise _missing_error(fs, base, display(fs, base))
    # A single-segment pattern ("a/*.png") needs one level only: avoids listing a whole bucket.
    recursive = "/" in pattern or "**" in pattern
    table, seen = _list_tree(
        fs, base, extensions, warn, recursive=recursive, pattern=glob_regex_source(pattern), refused=refused,
        reported=reported,
    )
    if table.num_rows == 0:
        what = f"files matching {pattern!r} under {display(fs, base)}"
        raise _nothing_found(uri, what, extensions, seen)
    return table


# --------------------------------------------------------------------------------------------
# Names relative to a chosen base
# --------------------------------------------------------------------------------------------


def _base_path(fs: pafs.FileSystem, base: str, s3: S3Options | None) -> str:
    """The path of folder ``base`` in ``fs``; ConfigError if it is on another storage."""
    scheme, rest = split_scheme(require_uri(base))
    local_inputs = isinstance(fs, pafs.LocalFileSystem)
    if local_inputs != (scheme in LOCAL_SCHEMES):
        raise ConfigError(f"the base {base} is not on the storage of the inputs "
                          f"({uri_prefix(fs) or 'a local disk'}); give a base folder that holds the inputs")
    if local_inputs:
        return local_path(scheme, rest)
    base_fs, path = filesystem_for(base, s3)
    if fs_kind(base_fs) != fs_kind(fs):
        raise ConfigError(f"the base {base} is not on the storage of the inputs ({display(fs, '')}...); "
                          "give a base folder that holds the inputs")
    return path


def _rebased(table: pa.Table, fs: pafs.FileSystem, base: str, s3: S3Options | None) -> pa.Table:
    """``table`` with every relpath relative to folder ``base``; ConfigError naming an input that
    is not below it."""
    base_path = _base_path(fs, base, s3)
    prefix = base_path.rstrip("/") + "/"
    paths = table.column("path").combine_chunks()
    below = pc.starts_with(paths, prefix)
    outside = pc.invert(below)
    if pc.any(outside).as_py():
        count = pc.sum(outside).as_py()
        first = table.column("uri")[pc.index(outside, True).as_py()].as_py()
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise ConfigError(
            f"input {first}{more} is not inside the base {display(fs, base_path)}; outputs are named by "
            "their path below the base, so choose a base folder that holds every input, or leave it out"
        )
    relpaths = pc.utf8_slice_codeunits(paths, start=len(prefix)) if prefix != "/" else pc.utf8_ltrim(paths, characters="/")
    return table.set_column(table.schema.get_field_index("relpath"), "relpath", relpaths)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def input_info(fs: pafs.FileSystem, path: str, input_uri: str, info: pafs.FileInfo) -> pafs.FileInfo:
    """What INPUT names, from ``info`` (its path's): a folder where an object-store URI ending in
    "/" names a prefix beside an object of the same name ("s3://b/photos/" beside the object
    "photos"; without the slash the object is meant). The listing and the checks that keep
    OUTPUT out of INPUT read INPUT through this, so that they agree."""
    if input_uri.endswith("/") and info.type == pafs.FileType.File and not isinstance(fs, pafs.LocalFileSystem):
        return pafs.FileInfo(path, pafs.FileType.Directory)
    return info


def list_inputs_table(
    input_uri: str,
    s3: S3Options | None = None,
    *,
    extensions: Iterable[str],
    base: str | None = None,
    warn: Callable[[str], None] | None = None,
    sort: bool = True,
    refused_extensions: Mapping[str, str] | None = None,
    reported_extensions: Iterable[str] = (),
) -> tuple[pafs.FileSystem, pa.Table]:
    """Find the input images of a run, as a table (see :data:`INPUT_TABLE_SCHEMA`).

    ``input_uri`` may be a local folder (searched recursively), a glob (``photos/**/*.jpg``,
    ``s3://b/a/*.png``), an object-store prefix, a single image, or a list file
    (``.parquet``/``.csv``/``.txt``/``.lst``) naming images, for buckets too large to list on
    every run. Folders, prefixes and globs yield only files with one of ``extensions`` (any
    case) and skip hidden files and ``_manifest`` folders; list files are taken as given.

    ``relpath`` (what an output is named after) is relative to the folder, prefix or glob's
    fixed part; a single file's is its name; a list file's entries are named from themselves
    (see :mod:`.list_file`). With ``base`` (a folder URI on the inputs' storage) every input is
    named relative to it instead, and an input outside it is a ConfigError.

    ``size``, ``mtime`` and ``etag`` record what each input was when listed, from what the
    listing already returns (no extra request): local files their size and modification time,
    S3 objects their size, LastModified and ETag, list-file entries what the list file carries.
    Null where unknown (a single S3 object named directly has no ETag here).

    Local folders: each folder is listed once, whatever symbolic links lead back to it; every
    link skipped for that reason is reported by calling ``warn`` with one line (default: a
    warning on this module's logger). Named pipes, sockets, devices and broken links are listed
    (size 0) so that reading them gives a row saying what they are. A file whose name is not
    UTF-8 is listed with ``\\xNN`` escapes and ``listing_error`` set (UnsupportedNameError).

    Folders, prefixes and globs also list files with an extension in ``refused_extensions``
    (extension -> the manifest error, e.g. HEIC photos, which cannot be decoded) with that error
    as their ``listing_error``, so that they get a row that says why rather than no row; other
    files are skipped, and ``warn`` is called once with how many of them have an extension in
    ``reported_extensions`` (image formats that are not read), by extension.

    Returns the filesystem of the images and the table, sorted by ``relpath`` (``sort=False``:
    in the order found, for a caller that sorts only the rows it keeps).
    NoInputsFoundError (an InputNotFoundError and a StorageError) if nothing is found;
    StorageError if the location is unreachable (CredentialsError when S3 rejects the
    credentials); ConfigError for an unusable list file or settings.
    """
    warn = warn if warn is not None else logger.warning
    exts = normalise_extensions(extensions)
    input_uri = require_uri(input_uri)
    fs, path = filesystem_for(input_uri, s3)
    uri = display(fs, path)

    has_glob = bool(GLOB_CHARS & set(path))
    info = input_info(fs, path, input_uri, get_info(fs, path, "list", path))
    if has_glob and info.type == pafs.FileType.NotFound:
        table = _list_glob(fs, path, uri, exts, warn, refused_extensions, reported_extensions)
    elif info.type == pafs.FileType.File:
        if posixpath.splitext(path)[1].lower() in LIST_FILE_SUFFIXES:
            fs, table = list_from_list_file(fs, path, uri, s3, exts)
        else:
            # A single file named explicitly is taken as given, like list-file entries.
            single = pa.array([path], pa.string())
            table = make_input_table(pa.array([uri]), single, pa.array([posixpath.basename(path)]),
                                     sizes=pa.array([info.size], pa.int64()),
                                     mtimes=pa.array([info.mtime_ns], MTIME_TYPE))
    elif info.type == pafs.FileType.Directory:
        table, seen = _list_tree(fs, path, exts, warn, refused=refused_extensions, reported=reported_extensions)
        if table.num_rows == 0:
            raise _nothing_found(uri, "searched recursively", exts, seen)
    else:
        raise _missing_error(fs, path, uri)
    if base is not None:
        table = _rebased(table, fs, base, s3)
    # Paths are unique by construction (listings) or deduplicated (list files).
    return fs, table.sort_by("relpath") if sort else table


def list_inputs(
    input_uri: str,
    s3: S3Options | None = None,
    *,
    extensions: Iterable[str],
    base: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[pafs.FileSystem, list[InputFile]]:
    """:func:`list_inputs_table` as a list of :class:`InputFile`, for small callers (``mtime`` to
    the microsecond, as a ``datetime``)."""
    fs, table = list_inputs_table(input_uri, s3, extensions=extensions, base=base, warn=warn)
    # Python's datetime holds microseconds; nanoseconds would need pandas' Timestamp.
    mtimes = table.column("mtime").cast(pa.timestamp("us", tz="UTC"), safe=False)
    table = table.set_column(table.schema.get_field_index("mtime"), "mtime", mtimes)
    return fs, [InputFile(**row) for row in table.to_pylist()]
