"""Path operations over whole Arrow string columns, so that a listing never needs a Python object
per file: prefixes, relative paths, normalisation and the first value that breaks a rule."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

#: A URI scheme at the start of a string (``s3://``, ``file://`` ...), as an RE2 pattern.
SCHEME_PATTERN = r"^[A-Za-z][A-Za-z0-9+.\-]*://"
# Paths that os/posixpath.normpath would change: '.'/'..' segments, doubled or trailing '/'.
NEEDS_NORMPATH = r"(^|/)\.\.?(/|$)|//|/$"


def has_duplicates(values) -> bool:
    """Whether any value occurs twice. ``unique`` (a hash pass) rather than ``count_distinct``,
    an aggregation, several times slower on a million strings (benchmarks/README.md, "Planning at
    1,000,000 inputs, again")."""
    return len(pc.unique(values)) < len(values)


def one_array(values: pa.ChunkedArray) -> pa.Array:
    """A chunked array as one array: its only chunk as it is (``combine_chunks`` copies even
    that), else the chunks concatenated."""
    if values.num_chunks == 1:
        return values.chunk(0)
    return values.combine_chunks() if values.num_chunks else pa.array([], values.type)


def strings(values) -> pa.Array:
    """A plain ``string`` array from a list, array or chunked array."""
    if isinstance(values, pa.ChunkedArray):
        values = one_array(values)
    if not isinstance(values, pa.Array):
        values = pa.array(values, pa.string())
    return values if values.type == pa.string() else values.cast(pa.string())


def with_prefix(prefix: str, paths: pa.Array) -> pa.Array:
    """``prefix + path`` for every path."""
    if not prefix:
        return paths
    return pc.binary_join_element_wise(pa.scalar(prefix), paths, "")


def relative_to(base: str, paths: pa.Array) -> pa.Array:
    """Each path relative to folder ``base``; every path must be below it (or base be a root)."""
    base = base.rstrip("/")
    if not base:
        return pc.utf8_ltrim(paths, characters="/")
    return pc.utf8_slice_codeunits(paths, start=len(base) + 1)  # code points, like str slicing


def normpath_where_needed(paths: pa.Array, normpath) -> pa.Array:
    """``normpath`` of every path, calling Python only for the few that it would change."""
    mask = pc.match_substring_regex(paths, NEEDS_NORMPATH)
    if not pc.any(mask).as_py():
        return paths
    indices = pc.indices_nonzero(mask)
    fixed = pa.array([normpath(p) for p in pc.take(paths, indices).to_pylist()], pa.string())
    return pc.replace_with_mask(paths, mask, fixed)


def first_where(values: pa.Array, mask: pa.Array) -> str:
    """The first value where ``mask`` holds (for error messages)."""
    return values[pc.index(mask, True).as_py()].as_py()
