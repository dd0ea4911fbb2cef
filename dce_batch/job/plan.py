"""Planning a run on the driver: every input's output name, what is refused, what is already done.

Everything here is columnar (pyarrow arrays and compute functions, no Python object per input),
so a run over a million inputs is planned in seconds (benchmarks/bench_planning.py). No Ray, no
torch: plain functions tested with pytest.

An input is **done** (skipped, with a row that repeats what the earlier run recorded) only when
all of this holds for the latest ``ok`` row of its output:

* the output file exists under OUTPUT (its path relative to OUTPUT, so a moved OUTPUT resumes);
* the row was made from this input (its path relative to INPUT);
* with the same output settings (:mod:`dce_batch.job.output_settings`); outputs made with other
  settings refuse the run instead, naming the differences;
* from the same input content, as far as the listing can tell: its size, and its modification
  time (local disks) or ETag (object stores). An input whose fingerprint changed is redone and
  counted (``changed``). A file touched without changing its bytes counts as changed too: the
  listing cannot tell, and redoing it rewrites the same output. Rows from before fingerprints
  were recorded (and inputs whose listing has none, e.g. list files without such columns) are
  taken as unchanged.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.errors import ConfigError, DceBatchError, StorageError, describe_error
from dce_batch.imaging import DEFAULT_MAX_PIXELS, extension_for, format_of_extension, max_file_bytes, output_format_for_path
from dce_batch.job.manifest.schema import MANIFEST_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, conform
from dce_batch.job.output_settings import describe_settings_change, settings_digest
from dce_batch.storage import MANIFEST_DIR, TEMP_NAME_PATTERN, Location, walk_local_files
from dce_batch.storage.arrow_paths import has_duplicates, one_array

__all__ = ["RESERVED_NAMES", "TODO_COLUMNS", "OutputFiles", "Plan", "input_table", "list_output_files",
           "output_relpath", "plan_run"]

#: Top-level names under OUTPUT that belong to dce_batch; no input may be written there.
RESERVED_NAMES = frozenset({MANIFEST_DIR, "_report"})

#: Columns of :attr:`Plan.todo`, one row per input to enhance.
TODO_COLUMNS = ("input_uri", "input_path", "input_relpath", "output_relpath", "output_path", "output_format",
                "settings", "settings_sha256", "input_size", "input_mtime", "input_etag")

# A relative path that could escape OUTPUT or is not a plain relative path (mirrors
# storage.Location.child, which gives the exact message for the few rows that match).
_UNSAFE_RELPATH = r"(^$)|(^/)|(//)|(/$)|((^|/)\.\.?(/|$))|\\|\x00|(^[A-Za-z][A-Za-z0-9+.\-]*://)"

_FINGERPRINT = (("size", "input_size", pa.int64()), ("mtime", "input_mtime", pa.timestamp("ns", tz="UTC")),
                ("etag", "input_etag", pa.string()))


def output_relpath(relpath: str, fmt: str) -> str:
    """The input's relative path, with the extension changed only if the format changes."""
    stem, _ = posixpath.splitext(relpath)
    written_as = {"MPO": "JPEG"}.get(format_of_extension(relpath), format_of_extension(relpath))
    if written_as == fmt:
        return relpath
    return stem + extension_for(fmt)


def input_table(inputs) -> pa.Table:
    """A list of :class:`~dce_batch.storage.InputFile` as the columnar listing the planner takes."""
    return pa.table({
        "uri": pa.array([f.uri for f in inputs], pa.string()),
        "path": pa.array([f.path for f in inputs], pa.string()),
        "relpath": pa.array([f.relpath for f in inputs], pa.string()),
        "size": pa.array([f.size for f in inputs], pa.int64()),
        "mtime": pa.array([getattr(f, "mtime", None) for f in inputs], pa.timestamp("ns", tz="UTC")),
        "etag": pa.array([getattr(f, "etag", None) for f in inputs], pa.string()),
        "listing_error": pa.array([getattr(f, "listing_error", None) for f in inputs], pa.string()),
    })


@dataclass
class Plan:
    """What a run will do. ``todo`` has one row per input to enhance; the others are manifest rows."""

    todo: pa.Table  # TODO_COLUMNS
    skipped: pa.Table  # manifest rows, already done by an earlier run
    refused: pa.Table  # manifest rows, refused before any work (unsafe or colliding names, too large)
    changed: int = 0  # inputs in ``todo`` whose earlier output was made from other content

    @property
    def total(self) -> int:
        return self.todo.num_rows + self.skipped.num_rows + self.refused.num_rows


def _per_extension(relpaths: pa.Array, requested_format: str) -> tuple[pa.Array, pa.Array]:
    """Each relpath's output format and output relpath, computed once per distinct extension."""
    extensions = pc.utf8_lower(pc.fill_null(pc.struct_field(pc.extract_regex(relpaths, r"(?P<ext>\.[^./]*)$"), "ext"), ""))
    distinct = pc.unique(extensions)
    formats, renames, new_exts = [], [], []
    for ext in distinct.to_pylist():
        probe = "x" + ext
        fmt = output_format_for_path(probe, requested_format)
        new = output_relpath(probe, fmt)
        formats.append(fmt)
        renames.append(new != probe)
        new_exts.append(posixpath.splitext(new)[1])
    index = pc.index_in(extensions, value_set=distinct)
    fmt_column = pc.take(pa.array(formats, pa.string()), index)
    if not any(renames):  # every output keeps its input's name (the usual case): no regex pass
        return fmt_column, relpaths
    rename = pc.take(pa.array(renames, pa.bool_()), index)
    stems = pc.replace_substring_regex(relpaths, r"\.[^./]*$", "")
    renamed = pc.binary_join_element_wise(stems, pc.take(pa.array(new_exts, pa.string()), index), "")
    return fmt_column, pc.if_else(rename, renamed, relpaths)


def _keep(values, mask):
    """``values`` filtered by ``mask``, without a copy when every row is kept (the usual case)."""
    if pc.all(mask).as_py():
        return values
    return values.filter(mask) if isinstance(values, pa.Table) else pc.filter(values, mask)


def _join_path(base: str, rel: pa.Array) -> pa.Array:
    prefix = base if base in ("", "/") else base.rstrip("/") + "/"
    return pc.binary_join_element_wise(pa.scalar(prefix), rel, "")


def _column(listing: pa.Table, name: str, kind: pa.DataType, *, chunked: bool = False) -> pa.Array | pa.ChunkedArray:
    """A listing's column as ``kind`` (nulls where the listing has none): one array, or with
    ``chunked`` the listing's chunks as they are (a list file's million ETags not copied)."""
    if name not in listing.column_names:
        return pa.nulls(listing.num_rows, kind)
    column = listing[name] if chunked else one_array(listing[name])
    return column if column.type == kind else column.cast(kind)


def _refused_rows(table: pa.Table, errors: list[str], common: Mapping[str, Any]) -> pa.Table:
    now = datetime.now(timezone.utc)
    n = table.num_rows
    columns = {
        "run_id": pa.array([common["run_id"]] * n, pa.string()),
        "input_relpath": table["relpath"],
        "input_uri": table["uri"],
        "status": pa.array([STATUS_ERROR] * n, pa.string()),
        "error": pa.array(errors, pa.string()),
        "finished_at": pa.array([now] * n, MANIFEST_SCHEMA.field("finished_at").type),
        **{k: pa.array([v] * n) for k, v in common.items() if k != "run_id"},
    }
    for source, target, kind in _FINGERPRINT:
        columns[target] = _column(table, source, kind)
    return conform(pa.table(columns))


def plan_run(*, listing: pa.Table, output: Location, run_id: str,
             settings_for: Callable[[str], Mapping[str, Any]], requested_format: str,
             row_constants: Mapping[str, Any], done: pa.Table | None,
             existing_outputs: pa.Array | None, max_pixels: int = DEFAULT_MAX_PIXELS,
             input_root: Location | None = None) -> Plan:
    """Decide each input's output, refuse unsafe ones, and skip what is truly done.

    Args:
        listing: ``uri, path, relpath, size`` and, when known, ``mtime`` and ``etag`` of the inputs,
            in any order (the rows to do and the refused rows come back sorted by ``relpath``;
            a listing in the order of an earlier run's manifest resumes without gathering).
        settings_for: ``output_format -> settings dict`` (see :mod:`dce_batch.job.output_settings`).
        row_constants: columns every refused row carries (model name, sha, variant, ...).
        done: the manifest's rows (any schema with the manifest's columns), or None (no resume).
        existing_outputs: relative paths of the files under OUTPUT (needed when ``done`` has rows).
        max_pixels: inputs listed as larger than any file of one such image can be are refused
            without being read.
        input_root: INPUT, when it is a folder inside OUTPUT: no output may be written into it.
    Raises:
        ConfigError: an output would overwrite an input, or finished outputs were made with other
            settings (the message names the differences and the choices).
    """
    if done is None or done.num_rows == 0:
        listing = _sorted_by(listing, "relpath")  # every row is to do: sort the listing's fewer columns
    listing = listing.combine_chunks()
    relpaths = listing["relpath"].chunk(0) if listing.num_rows else pa.array([], pa.string())
    fmt, out_rel = _per_extension(relpaths, requested_format)
    first_part = pc.fill_null(pc.struct_field(pc.extract_regex(out_rel, r"^(?P<p>[^/]*)"), "p"), "")
    unsafe = pc.match_substring_regex(relpaths, _UNSAFE_RELPATH)
    reserved = pc.is_in(first_part, value_set=pa.array(sorted(RESERVED_NAMES)))
    oversized = pc.fill_null(pc.greater(_column(listing, "size", pa.int64()), max_file_bytes(max_pixels)), False)
    output_path = _join_path(output.path, out_rel)
    into_input = pa.array(np.zeros(len(out_rel), dtype=bool))
    if input_root is not None and output.contains(input_root):
        into_input = pc.starts_with(output_path, input_root.path.rstrip("/") + "/")
    listing_error = _column(listing, "listing_error", pa.string())  # e.g. a file name that is not UTF-8
    refused_mask = pc.or_(pc.or_(pc.or_(pc.or_(unsafe, reserved), oversized), into_input), pc.is_valid(listing_error))

    # Two inputs may not share an output (a.png and a.jpg with --format jpeg): one claims it, the
    # input whose own name it is (a.png over a.gif, whose output is a PNG too), else the first
    # in name order (a.jpg before a.png), whatever order the listing came in.
    candidates = pc.indices_nonzero(pc.invert(refused_mask))
    claimer: dict[int, int] = {}  # colliding row -> the row that claimed the output first
    if has_duplicates(_keep(out_rel, pc.invert(refused_mask))):  # rare: sort only then
        names, outputs = pc.take(relpaths, candidates), pc.take(out_rel, candidates)
        order = pc.take(candidates, pc.sort_indices(
            pa.table({"o": outputs, "renamed": pc.not_equal(names, outputs), "r": names}),
            sort_keys=[("o", "ascending"), ("renamed", "ascending"), ("r", "ascending")]))
        sorted_rel = pc.take(out_rel, order)
        same = pc.equal(sorted_rel.slice(1), sorted_rel.slice(0, len(sorted_rel) - 1))
        for pos in pc.indices_nonzero(same).to_pylist():
            row, previous = order[pos + 1].as_py(), order[pos].as_py()
            claimer[row] = claimer.get(previous, previous)
    if claimer:
        collided = np.zeros(len(out_rel), dtype=bool)
        collided[list(claimer)] = True
        refused_mask = pc.or_(refused_mask, pa.array(collided))

    # An output must never replace an input (OUTPUT == INPUT with a list file, say); only inputs
    # inside OUTPUT could be hit, so the full lookup runs only when there are some.
    inside = pc.starts_with(listing["path"], output.path.rstrip("/") + "/")
    if pc.any(inside).as_py():
        clash = pc.and_(pc.invert(refused_mask), pc.is_in(output_path, value_set=listing["path"].combine_chunks()))
        if pc.any(clash).as_py():
            row = pc.indices_nonzero(clash)[0].as_py()
            raise ConfigError(f"the output for {listing['uri'][row].as_py()} would overwrite the input "
                              f"{output_path[row].as_py()}: choose another OUTPUT")

    refused_rows = pc.indices_nonzero(refused_mask)
    refused = listing.take(refused_rows)
    errors: list[str] = []
    for row in refused_rows.to_pylist():
        rel, new_rel = relpaths[row].as_py(), out_rel[row].as_py()
        errors.append(_refusal(listing, listing_error, row, rel, new_rel, output, oversized, claimer, into_input,
                               max_pixels, requested_format))
    refused_table = _refused_rows(refused, errors, {"run_id": run_id, **row_constants})

    keep = pc.invert(refused_mask)
    formats = _keep(fmt, keep)
    settings_by_format = {f: settings_digest(settings_for(f)) for f in pc.unique(formats).to_pylist()}
    distinct = pa.array(list(settings_by_format), pa.string())
    # One settings JSON per output format, referenced by every row (dictionary-encoded).
    index = pc.index_in(formats, value_set=distinct).cast(pa.int32())
    input_uri = _keep(listing["uri"], keep)
    # Local inputs: the path is the URI, so one array serves as both.
    input_path = input_uri if listing["uri"].equals(listing["path"]) else _keep(listing["path"], keep)
    todo = pa.table({
        "input_uri": input_uri,
        "input_path": input_path,
        "input_relpath": _keep(relpaths, keep),
        "output_relpath": _keep(out_rel, keep),
        "output_path": _keep(output_path, keep),
        "output_format": formats,
        "settings": pa.DictionaryArray.from_arrays(index, pa.array([v[0] for v in settings_by_format.values()])),
        "settings_sha256": pa.DictionaryArray.from_arrays(index, pa.array([v[1] for v in settings_by_format.values()])),
        **{target: _keep(_column(listing, source, kind, chunked=True), keep) for source, target, kind in _FINGERPRINT},
    })
    skipped, changed = MANIFEST_SCHEMA.empty_table(), 0
    if done is not None and done.num_rows:
        todo, skipped, changed = _resume(todo, done, existing_outputs, run_id)
    # What runs first and what the manifest lists first, in name order; sorted after resume has
    # taken out what is done (a million skipped rows are never sorted).
    return Plan(todo=_sorted_by(todo, "input_relpath"), skipped=skipped,
                refused=_sorted_by(refused_table, "input_relpath"), changed=changed)


def _sorted_by(table: pa.Table, column: str) -> pa.Table:
    """``table`` in the order of its (unique) string ``column``; as it is when already in order."""
    if table.num_rows < 2:
        return table
    names = one_array(table[column])
    if pc.all(pc.less(names.slice(0, len(names) - 1), names.slice(1))).as_py():
        return table
    return table.take(pc.sort_indices(names))


def _collision_advice(rel: str, other: str, requested_format: str) -> str:
    """What separates two inputs that would write one output: ``--format same`` when it would
    give them different outputs (a.png and a.jpg under --format jpeg), else only a new name
    (a.gif and a.png: a GIF is written as PNG whatever the format)."""
    if requested_format != "same":
        _, apart = _per_extension(pa.array([rel, other], pa.string()), "same")
        if apart[0].as_py() != apart[1].as_py():
            return "rename one of them or use --format same"
    return "rename one of them"


def _refusal(listing, listing_error, row, rel, new_rel, output, oversized, claimer, into_input, max_pixels,
             requested_format) -> str:
    known = listing_error[row].as_py()
    if known:
        return known
    if oversized[row].as_py():
        size = listing["size"][row].as_py()
        return (f"ImageTooLargeError: the file is {size / 1e9:.2f} GB, more than any image of up to "
                f"{max_pixels / 1e6:g} MP takes ({max_file_bytes(max_pixels) / 1e9:.2f} GB), so it is not read; "
                "raise --max-pixels if it really is one image")
    if row in claimer:
        other = claimer[row]
        advice = _collision_advice(rel, listing["relpath"][other].as_py(), requested_format)
        return (f"OutputCollisionError: {listing['uri'][other].as_py()} already writes "
                f"{output.child_uri(new_rel)}; {advice}")
    try:
        output.child(rel)
    except (DceBatchError, ValueError) as exc:
        return describe_error(exc)
    if into_input[row].as_py():
        return (f"ReservedNameError: its output {output.child_uri(new_rel)} would be written inside INPUT, which lies "
                "in OUTPUT, and a later run would take it for an input; rename the folder or choose another OUTPUT")
    return (f"ReservedNameError: {rel} would be written into {output.uri}/{new_rel.split('/')[0]}, which dce_batch "
            "keeps for the run's manifest and report; rename or move the input")


def _latest_ok(manifest: pa.Table) -> pa.Table:
    """Row number and key columns of the latest ``ok`` row of each output (fingerprints are read
    later, for the matched rows only)."""
    status = manifest["status"].cast(pa.string())
    rows = pc.indices_nonzero(pc.and_(pc.equal(status, STATUS_OK), pc.is_valid(manifest["output_relpath"])))
    keys = manifest.select(["output_relpath", "input_relpath", "settings_sha256", "finished_at"])
    if len(rows) != manifest.num_rows:  # else every row is an ok one: no copy
        keys = keys.take(rows)
    keys = keys.append_column("_row", rows)
    if keys.num_rows and has_duplicates(keys["output_relpath"]):
        keys = keys.sort_by([("output_relpath", "ascending"), ("finished_at", "descending")])
        out = keys["output_relpath"].combine_chunks()
        first = pc.not_equal(out.slice(1), out.slice(0, len(out) - 1))
        keys = keys.filter(pa.concat_arrays([pa.array([True]), first.fill_null(True)]))
    return keys


def _is_identity(indices: pa.Array) -> bool:
    """Whether ``indices`` is 0, 1, ..., n-1."""
    values = indices.to_numpy(zero_copy_only=False)
    return bool(len(values) == 0 or (values[0] == 0 and values[-1] == len(values) - 1
                                     and np.all(np.diff(values) == 1)))


def _strings_differ(old: pa.ChunkedArray, new: pa.Array) -> pa.Array:
    """Where two string columns differ (null counts as different). Dictionary-encoded columns
    (settings digests: a few distinct values in a million rows) are compared by their indices,
    without spelling out a million 64-character strings."""
    if isinstance(new, pa.ChunkedArray):
        new = one_array(new)
    if isinstance(old, pa.Array):
        old = pa.chunked_array([old])
    if not (pa.types.is_dictionary(old.type) and isinstance(new, pa.DictionaryArray)):
        return pc.fill_null(pc.not_equal(old.cast(pa.string()), new.cast(pa.string())), True)
    new_values, new_indices = new.dictionary, new.indices
    pieces, start = [], 0
    for chunk in old.chunks:
        # Each old dictionary entry as the position of the same string in the new dictionary.
        as_new = pc.index_in(chunk.dictionary.cast(pa.string()), value_set=new_values.cast(pa.string()))
        old_codes = pc.take(as_new, chunk.indices)
        piece = pc.not_equal(old_codes, new_indices.slice(start, len(chunk)).cast(old_codes.type))
        pieces.append(pc.fill_null(piece, True))
        start += len(chunk)
    return pa.concat_arrays(pieces) if pieces else pa.array([], pa.bool_())


def _differs(old: pa.ChunkedArray, new: pa.Array) -> pa.Array:
    """Where both sides are known and different (an unknown side never counts as a change)."""
    return pc.fill_null(pc.not_equal(old, new), False)


def _resume(todo: pa.Table, manifest: pa.Table, existing_outputs: pa.Array | None,
            run_id: str) -> tuple[pa.Table, pa.Table, int]:
    """Split ``todo`` into what remains, the skipped rows (copied from the runs that made the
    outputs) and the number of inputs that changed since. Only row numbers and key columns are
    handled until the end, so a million-row manifest is copied once."""
    keys = _latest_ok(manifest)
    if existing_outputs is not None and keys.num_rows:
        keys = _keep(keys, pc.is_in(keys["output_relpath"], value_set=existing_outputs))
    if keys.num_rows == 0:
        return todo, MANIFEST_SCHEMA.empty_table(), 0
    position = pc.index_in(todo["output_relpath"], value_set=keys["output_relpath"].combine_chunks())
    at = pc.fill_null(position, 0)
    # The same output from another input (a.png, then a.jpg with --format png) is not this input's.
    same_input = pc.equal(pc.take(keys["input_relpath"], at), todo["input_relpath"])
    matched = pc.and_(pc.is_valid(position), pc.fill_null(same_input, False))
    if not pc.any(matched).as_py():
        return todo, MANIFEST_SCHEMA.empty_table(), 0
    position = _keep(position, matched)
    matched_rows = pc.indices_nonzero(matched)
    wanted = todo.select(["settings", "settings_sha256"]).take(matched_rows)
    differs = _strings_differ(pc.take(keys["settings_sha256"], position), wanted["settings_sha256"])
    earlier_rows = pc.take(keys["_row"], position)
    if pc.any(differs).as_py():
        conflicts = pc.indices_nonzero(differs)
        examples: dict[tuple, str] = {}
        for row in conflicts.to_pylist():
            old = manifest["settings"][earlier_rows[row].as_py()].as_py()
            new = wanted["settings"][row].as_py()
            examples.setdefault((old, new), describe_settings_change(old, new))
            if len(examples) >= 3:
                break
        raise ConfigError(
            f"{len(conflicts)} of the outputs already in OUTPUT were made with other settings "
            f"({'; '.join(examples.values())}). Resuming would mix them with new ones and the manifest "
            "would describe outputs that were never made. Choose a new OUTPUT, run again with the "
            "earlier settings, or pass --overwrite to redo everything")
    # A fingerprint column that is null on either side everywhere (nothing recorded, or a source
    # that does not say) cannot differ: skip it rather than copy a million nulls.
    # Both sides are usually in the same order (listing and manifest sorted by name, one run
    # having done everything): then the columns are compared as they are, without gathering.
    every_row = len(matched_rows) == todo.num_rows  # matched_rows is 0..n-1
    in_order = len(earlier_rows) == manifest.num_rows and _is_identity(earlier_rows)
    # The matched rows are gathered once, for the comparison and for the skipped rows alike.
    matched_earlier = manifest if in_order else manifest.take(earlier_rows)
    changed_mask = pa.array(np.zeros(len(position), dtype=bool))
    for _, target, _ in _FINGERPRINT:
        if manifest[target].null_count == manifest.num_rows or todo[target].null_count == todo.num_rows:
            continue
        now = todo[target] if every_row else pc.take(todo[target], matched_rows)
        changed_mask = pc.or_(changed_mask, _differs(matched_earlier[target], now))  # chunk by chunk: no copies
    changed = int(pc.sum(changed_mask.cast(pa.int64())).as_py() or 0)
    unchanged = pc.invert(changed_mask).to_numpy(zero_copy_only=False)
    skip_positions = matched_rows.to_numpy()[unchanged]
    skip_mask = np.zeros(todo.num_rows, dtype=bool)
    skip_mask[skip_positions] = True
    earlier = matched_earlier if changed == 0 else matched_earlier.filter(pa.array(unchanged))
    # An unchanged input's recorded fingerprint is what the listing says now wherever both are
    # known: only columns with rows recorded before fingerprints were need the listing's values.
    renewed = ["input_uri"] + [target for _, target, _ in _FINGERPRINT if earlier[target].null_count]
    now_seen = todo.select(renewed) if len(skip_positions) == todo.num_rows else \
        todo.select(renewed).take(pa.array(skip_positions, pa.int64()))
    n = earlier.num_rows
    replacements = {
        "run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
        "status": pa.repeat(pa.scalar(STATUS_SKIPPED, pa.string()), n),
        "made_by_run_id": pc.coalesce(earlier["made_by_run_id"].cast(pa.string()), earlier["run_id"].cast(pa.string())),
        "finished_at": pa.repeat(pa.scalar(datetime.now(timezone.utc), MANIFEST_SCHEMA.field("finished_at").type), n),
        "duration_ms": pa.nulls(n, pa.float32()),
        "worker": pa.nulls(n, pa.string()),
        # Where and what the input is now (INPUT may have moved; rows made before fingerprints
        # were recorded gain them here).
        **{name: now_seen[name] for name in renewed},
    }
    # Kept in the manifest's compact form (repetitive columns dictionary-encoded): a million
    # skipped rows' settings JSON would otherwise take hundreds of MB; parts are written in the
    # manifest's schema, slice by slice.
    skipped = earlier
    for name, column in replacements.items():
        index = skipped.schema.get_field_index(name)
        skipped = skipped.set_column(index, skipped.schema.field(name), column.cast(skipped.schema.field(name).type))
    return todo.filter(pa.array(~skip_mask)), skipped, changed


@dataclass(frozen=True)
class OutputFiles:
    """What one listing of OUTPUT found."""

    relpaths: pa.Array
    """Paths of the finished files, relative to OUTPUT (what resume checks outputs against)."""
    unfinished: list[str]
    """Paths of temp files (``.<name>.<hex>.tmp``) of runs of this OUTPUT that a killed writer
    never renamed (see :func:`list_output_files`)."""

    @property
    def nested_outputs(self) -> list[str]:
        """Folders (relative to OUTPUT) that hold another job's manifest: another OUTPUT nested here."""
        nested = self.relpaths.filter(pc.match_substring(self.relpaths, f"/{MANIFEST_DIR}/"))
        return sorted({r.split(f"/{MANIFEST_DIR}/")[0] for r in nested.to_pylist()})


def list_output_files(output: Location, *, temp_tags: frozenset[str] = frozenset(),
                      input_root: Location | None = None) -> OutputFiles:
    """Every file under OUTPUT, in one listing instead of a request per output.

    Temp files are reported as unfinished only when they are this OUTPUT's own: their tag (the
    first six hex digits, see :func:`dce_batch.storage.io.temp_name`) is one of ``temp_tags`` (the
    runs of this OUTPUT), and they lie neither inside INPUT nor inside another job's OUTPUT
    nested here (a folder with its own ``_manifest``), whose writes may be in flight.
    """
    base = output.path.rstrip("/")
    if isinstance(output.filesystem, pafs.LocalFileSystem):
        paths = walk_local_files(base)
    else:
        selector = pafs.FileSelector(output.path, allow_not_found=True, recursive=True)
        try:
            infos = output.filesystem.get_file_info(selector)
        except OSError as exc:
            raise StorageError(f"cannot list {output.uri} to check which outputs exist: {exc}") from exc
        paths = pa.array([info.path for info in infos if info.type == pafs.FileType.File], pa.string())
        del infos
    relative = pc.utf8_slice_codeunits(paths, start=len(base) + 1)
    is_temp = pc.match_substring_regex(relative, TEMP_NAME_PATTERN)
    ours = pa.array([], pa.string())
    if temp_tags and pc.any(is_temp).as_py():
        candidates = relative.filter(is_temp).to_pylist()
        foreign_roots = set(OutputFiles(relative, []).nested_outputs)
        inside_input = input_root.path.rstrip("/") + "/" if input_root is not None and output.contains(input_root) else None
        kept = []
        for rel in candidates:
            tag = rel.rsplit(".", 2)[-2][:6]
            if tag not in temp_tags:
                continue
            if any(rel.startswith(root + "/") for root in foreign_roots):
                continue
            if inside_input and f"{base}/{rel}".startswith(inside_input):
                continue
            kept.append(f"{base}/{rel}")
        ours = pa.array(kept, pa.string())
    finished = relative.filter(pc.invert(is_temp))
    return OutputFiles(finished, ours.to_pylist())
