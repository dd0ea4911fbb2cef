"""Planning a run on the driver: every input's output name, what is refused, and what is already done.

Everything here is columnar (pyarrow arrays and compute functions, no Python object per input),
so a run over a million inputs is planned in seconds and holds each URI about once in memory
(benchmarks/bench_planning.py). No Ray, no torch: plain functions tested with pytest.

Resume is settings-aware. Each output is made under a set of *output settings*: everything that
changes its pixels or bytes (model sha256 and variant, the curves' scale, strength,
requested precision, format and, for lossy formats, quality, plus finishing options). Their
canonical JSON and its sha256 go into every manifest row. An input is skipped only when its latest
``ok`` row has the same settings sha256 as this run would use and its output still exists; when
finished outputs were made with other settings the run is refused with a message naming the
differences, because the manifest would otherwise describe outputs that were never made.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.errors import ConfigError, DceBatchError, StorageError, describe_error
from dce_batch.imaging import DEFAULT_MAX_PIXELS, extension_for, format_of_extension, max_file_bytes, output_format_for_path
from dce_batch.job.manifest import MANIFEST_SCHEMA, STATUS_ERROR, STATUS_SKIPPED, conform, latest_ok_rows
from dce_batch.storage import MANIFEST_DIR, TEMP_NAME_PATTERN, InputFile, Location

__all__ = [
    "OUTPUT_SETTINGS_VERSION",
    "RESERVED_NAMES",
    "Plan",
    "describe_settings_change",
    "input_table",
    "output_relpath",
    "output_settings",
    "plan_run",
    "settings_digest",
]

#: Bumped when the meaning of the output settings changes (old rows then never match).
OUTPUT_SETTINGS_VERSION = 1

#: Top-level names under OUTPUT that belong to dce_batch; no input may be written there.
RESERVED_NAMES = frozenset({MANIFEST_DIR, "_report"})

_LOSSY_FORMATS = frozenset({"JPEG", "WEBP"})

# A relative path that could escape OUTPUT or is not a plain relative path (mirrors
# storage.Location.child, which gives the exact message for the few rows that match).
_UNSAFE_RELPATH = r"(^$)|(^/)|(//)|(/$)|((^|/)\.\.?(/|$))|\\|\x00|(^[A-Za-z][A-Za-z0-9+.\-]*://)"


def output_relpath(relpath: str, fmt: str) -> str:
    """The input's relative path, with the extension changed only if the format changes."""
    stem, _ = posixpath.splitext(relpath)
    written_as = {"MPO": "JPEG"}.get(format_of_extension(relpath), format_of_extension(relpath))
    if written_as == fmt:
        return relpath
    return stem + extension_for(fmt)


def output_settings(*, model_sha256: str, variant: str, scale: float, strength: float, precision: str,
                    format: str, quality: int, output_format: str,
                    finishing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings that determine an output's pixels and bytes (see the module docstring).

    ``precision`` is the *requested* one: ``auto`` may resolve to bf16 on one node and fp32 on
    another (within one 8-bit step of each other), and the row's ``precision`` column records
    what each node used.
    """
    return {
        "version": OUTPUT_SETTINGS_VERSION,
        "model_sha256": model_sha256,
        "variant": variant,
        # DCE-Net at scale 1 records None, as every version before the scale applied to it did:
        # outputs made at full resolution then, or with --scale 1 now, are the same pixels.
        "scale": None if variant == "full" and float(scale) == 1.0 else float(scale),
        "strength": round(float(strength), 6),
        "precision": precision,
        "format": format,
        "output_format": output_format,
        "quality": int(quality) if output_format in _LOSSY_FORMATS else None,
        "finishing": dict(finishing) if finishing else None,
    }


def settings_digest(settings: Mapping[str, Any]) -> tuple[str, str]:
    """Canonical JSON of ``settings`` and its sha256."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def describe_settings_change(before: str | None, after: str) -> str:
    """``strength 1.0 -> 0.3, quality 95 -> 80`` from two settings JSON texts."""
    if not before:
        return "settings not recorded (made by dce_batch 0.1, before settings-aware resume)"
    old, new = json.loads(before), json.loads(after)

    def shown(key: str, value: Any) -> str:
        # DCE-Net at full resolution records scale None (see output_settings): say what it means.
        return "1.0 (full resolution)" if key == "scale" and value is None else repr(value)

    changes = [f"{key} {shown(key, old.get(key))} -> {shown(key, new.get(key))}" for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key)]
    return ", ".join(changes) or "identical settings with a different digest"


def input_table(inputs: list[InputFile]) -> pa.Table:
    """A listing as the columnar table the planner takes (uri, path, relpath, size)."""
    return pa.table({
        "uri": pa.array([f.uri for f in inputs], pa.string()),
        "path": pa.array([f.path for f in inputs], pa.string()),
        "relpath": pa.array([f.relpath for f in inputs], pa.string()),
        "size": pa.array([f.size for f in inputs], pa.int64()),
    })


@dataclass
class Plan:
    """What a run will do. ``todo`` has one row per input to enhance; the others are manifest rows."""

    todo: pa.Table  # input_uri, input_path, output_uri, output_path, output_format, settings, settings_sha256
    skipped: pa.Table  # manifest rows, already done by an earlier run
    refused: pa.Table  # manifest rows, refused before any work (unsafe or colliding names)

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
    rename = pc.take(pa.array(renames, pa.bool_()), index)
    stems = pc.replace_substring_regex(relpaths, r"\.[^./]*$", "")
    renamed = pc.binary_join_element_wise(stems, pc.take(pa.array(new_exts, pa.string()), index), "")
    out_rel = pc.if_else(rename, renamed, relpaths)
    return fmt_column, out_rel


def _keep(values, mask):
    """``values`` filtered by ``mask``, without a copy when every row is kept (the usual case)."""
    return values if pc.all(mask).as_py() else pc.filter(values, mask) if not isinstance(values, pa.Table) \
        else values.filter(mask)


def _join_path(base: str, rel: pa.Array) -> pa.Array:
    prefix = base if base in ("", "/") else base.rstrip("/") + "/"
    return pc.binary_join_element_wise(pa.scalar(prefix), rel, "")


def _row_errors(table: pa.Table, errors: list[str], common: Mapping[str, Any]) -> pa.Table:
    now = datetime.now(timezone.utc)
    return conform(pa.table({
        "run_id": pa.array([common["run_id"]] * table.num_rows, pa.string()),
        "input_uri": table["uri"],
        "status": pa.array([STATUS_ERROR] * table.num_rows, pa.string()),
        "error": pa.array(errors, pa.string()),
        "finished_at": pa.array([now] * table.num_rows, MANIFEST_SCHEMA.field("finished_at").type),
        **{k: pa.array([v] * table.num_rows) for k, v in common.items() if k != "run_id"},
    }))


def plan_run(*, listing: pa.Table, input_fs: pafs.FileSystem, output: Location, run_id: str,
             settings_for: Mapping[str, Mapping[str, Any]] | Any, requested_format: str,
             row_constants: Mapping[str, Any], done: pa.Table | None,
             existing_outputs: pa.Array | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Plan:
    """Decide each input's output, refuse unsafe ones, and skip what is truly done.

    Args:
        listing: ``uri, path, relpath, size`` of the inputs (sorted by relpath).
        settings_for: a callable ``output_format -> settings dict`` (see :func:`output_settings`).
        row_constants: columns every refused row carries (model name, sha, variant, ...).
        done: the manifest's rows (all columns), or None when resuming is off.
        existing_outputs: URIs of the files under OUTPUT (needed only when ``done`` has ok rows).
        max_pixels: inputs listed as larger than any file of one such image can be
            (:func:`~dce_batch.imaging.max_file_bytes`) are refused without being read.
    Raises:
        ConfigError: an output would overwrite an input, or finished outputs were made with other
            settings (the message names the differences and the choices).
    """
    listing = listing.combine_chunks()
    relpaths = listing["relpath"].chunk(0) if listing.num_rows else pa.array([], pa.string())
    fmt, out_rel = _per_extension(relpaths, requested_format)
    first_part = pc.fill_null(pc.struct_field(pc.extract_regex(out_rel, r"^(?P<p>[^/]*)"), "p"), "")
    unsafe = pc.match_substring_regex(relpaths, _UNSAFE_RELPATH)
    reserved = pc.is_in(first_part, value_set=pa.array(sorted(RESERVED_NAMES)))
    oversized = pc.fill_null(pc.greater(listing["size"].combine_chunks(), max_file_bytes(max_pixels)), False)
    refused_mask = pc.or_(pc.or_(unsafe, reserved), oversized)

    output_path = _join_path(output.path, out_rel)
    # Local paths are their own URIs: one array serves as both.
    output_uri = output_path if output.uri == output.path else _join_path(output.uri, out_rel)

    # Two inputs may not share an output (a.png and a.jpg with --format jpeg): the first claims it.
    candidates = pc.indices_nonzero(pc.invert(refused_mask))
    claimer: dict[int, int] = {}  # colliding row -> the row that claimed the output first
    if pc.count_distinct(_keep(out_rel, pc.invert(refused_mask))).as_py() < len(candidates):  # rare: sort only then
        order = pc.take(candidates, pc.sort_indices(
            pa.table({"o": pc.take(out_rel, candidates), "i": candidates}),
            sort_keys=[("o", "ascending"), ("i", "ascending")]))
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
    if type(input_fs) is type(output.filesystem) and pc.any(inside).as_py():
        clash = pc.and_(pc.invert(refused_mask), pc.is_in(output_path, value_set=listing["path"].combine_chunks()))
        if pc.any(clash).as_py():
            row = pc.indices_nonzero(clash)[0].as_py()
            raise ConfigError(f"the output for {listing['uri'][row].as_py()} would overwrite the input "
                              f"{output_path[row].as_py()}: choose another OUTPUT")

    # Refused rows with messages (computed per row: they are few).
    refused_rows = pc.indices_nonzero(refused_mask)
    refused = pa.table({"uri": pa.array([], pa.string())})
    errors: list[str] = []
    if len(refused_rows):
        refused = listing.take(refused_rows)
        for row in refused_rows.to_pylist():
            rel, new_rel = relpaths[row].as_py(), out_rel[row].as_py()
            if oversized[row].as_py():
                size = listing["size"][row].as_py()
                errors.append(f"ImageTooLargeError: the file is {size / 1e9:.2f} GB, more than any image of up to "
                              f"{max_pixels / 1e6:g} MP takes ({max_file_bytes(max_pixels) / 1e9:.2f} GB), so it "
                              "is not read; raise --max-pixels if it really is one image")
                continue
            if row in claimer:
                errors.append(f"OutputCollisionError: {listing['uri'][claimer[row]].as_py()} already writes "
                              f"{output_uri[row].as_py()}; rename one of them or use --format same")
                continue
            try:
                output.child(rel)
            except (DceBatchError, ValueError) as exc:
                errors.append(describe_error(exc))
                continue
            errors.append(f"ReservedNameError: {rel} would be written into {output.uri}/{new_rel.split('/')[0]}, "
                          "which dce_batch keeps for the run's manifest and report; rename or move the input")
    refused_table = _row_errors(refused, errors, {"run_id": run_id, **row_constants})

    keep = pc.invert(refused_mask)
    formats = _keep(fmt, keep)
    settings_by_format = {f: settings_digest(settings_for(f)) for f in pc.unique(formats).to_pylist()}
    distinct = pa.array(list(settings_by_format), pa.string())
    # One settings JSON per output format, referenced by every row (dictionary-encoded).
    index = pc.index_in(formats, value_set=distinct).cast(pa.int32())
    input_uri = _keep(listing["uri"], keep)
    # Local inputs: the path is the URI, so one array serves as both.
    input_path = input_uri if listing["uri"].equals(listing["path"]) else _keep(listing["path"], keep)
    kept_output_path = _keep(output_path, keep)
    todo = pa.table({
        "input_uri": input_uri,
        "input_path": input_path,
        "output_uri": kept_output_path if output_uri is output_path else _keep(output_uri, keep),
        "output_path": kept_output_path,
        "output_format": formats,
        "settings": pa.DictionaryArray.from_arrays(index, pa.array([v[0] for v in settings_by_format.values()])),
        "settings_sha256": pa.DictionaryArray.from_arrays(index, pa.array([v[1] for v in settings_by_format.values()])),
    })

    skipped = MANIFEST_SCHEMA.empty_table()
    if done is not None and done.num_rows:
        todo, skipped = _resume(todo, done, existing_outputs, run_id)
    return Plan(todo=todo, skipped=skipped, refused=refused_table)


def _resume(todo: pa.Table, manifest: pa.Table, existing_outputs: pa.Array | None, run_id: str) -> tuple[pa.Table, pa.Table]:
    """Split ``todo`` into what remains and skipped rows copied from the runs that made the outputs.

    A hash lookup of each planned output among the outputs the manifest says were made (``index_in``,
    linear in the manifest's size), then the same input and the same settings are required. Only
    row numbers and key columns are handled until the end, so a million-row manifest is copied once.
    """
    rows = pc.indices_nonzero(pc.equal(manifest["status"].cast(pa.string()), "ok"))
    keys = manifest.select(["output_uri", "input_uri", "settings_sha256", "finished_at"]).take(rows)
    keys = keys.append_column("_row", rows)
    if keys.num_rows and pc.count_distinct(keys["output_uri"]).as_py() < keys.num_rows:
        keys = latest_ok_rows(keys.append_column("status", pa.array(["ok"] * keys.num_rows)))
    if existing_outputs is not None and keys.num_rows:
        keys = _keep(keys, pc.is_in(keys["output_uri"], value_set=existing_outputs))
    if keys.num_rows == 0:
        return todo, MANIFEST_SCHEMA.empty_table()
    position = pc.index_in(todo["output_uri"], value_set=keys["output_uri"].combine_chunks())
    found = pc.is_valid(position)
    at = pc.fill_null(position, 0)
    # The same output from another input (a.png, then a.jpg with --format png) is not this input's.
    same_input = pc.equal(pc.take(keys["input_uri"], at), todo["input_uri"])
    matched = pc.and_(found, pc.fill_null(same_input, False))
    if not pc.any(matched).as_py():
        return todo, MANIFEST_SCHEMA.empty_table()
    position = _keep(position, matched)
    wanted = todo.select(["settings", "settings_sha256"])
    wanted = _keep(wanted, matched)
    differs = pc.fill_null(pc.not_equal(pc.take(keys["settings_sha256"], position).cast(pa.string()),
                                        wanted["settings_sha256"].cast(pa.string())), True)
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
            "earlier settings, or pass --overwrite to redo everything"
        )
    earlier = manifest.take(earlier_rows)
    n = earlier.num_rows
    replacements = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "status": pa.array([STATUS_SKIPPED] * n, pa.string()),
        "made_by_run_id": pc.coalesce(earlier["made_by_run_id"], earlier["run_id"]),
        "finished_at": pa.array([datetime.now(timezone.utc)] * n, MANIFEST_SCHEMA.field("finished_at").type),
        "duration_ms": pa.nulls(n, pa.float32()),
        "worker": pa.nulls(n, pa.string()),
    }
    skipped = earlier
    for name, column in replacements.items():
        index = skipped.schema.get_field_index(name)
        skipped = skipped.set_column(index, pa.field(name, column.type), column)
    return todo.filter(pc.invert(matched)), skipped


@dataclass(frozen=True)
class OutputFiles:
    """What one listing of OUTPUT found."""

    uris: pa.Array
    """URIs of the finished files (what resume checks outputs against)."""
    unfinished: list[str]
    """Paths of temp files (``.<name>.<hex>.tmp``): writes that a killed writer never renamed."""


def list_output_files(output: Location) -> OutputFiles:
    """Every file under OUTPUT, in one listing instead of a request per output."""
    base = output.path.rstrip("/")
    if isinstance(output.filesystem, pafs.LocalFileSystem):
        paths = _walk_local(base)
    else:
        selector = pafs.FileSelector(output.path, allow_not_found=True, recursive=True)
        try:
            infos = output.filesystem.get_file_info(selector)
        except OSError as exc:
            raise StorageError(f"cannot list {output.uri} to check which outputs exist: {exc}") from exc
        paths = pa.array([info.path for info in infos if info.type == pafs.FileType.File], pa.string())
        del infos
    is_temp = pc.match_substring_regex(paths, TEMP_NAME_PATTERN)
    unfinished = paths.filter(is_temp).to_pylist()
    relative = pc.utf8_slice_codeunits(paths.filter(pc.invert(is_temp)), start=len(base))
    return OutputFiles(pc.binary_join_element_wise(pa.scalar(output.uri.rstrip("/")), relative, ""), unfinished)


def _walk_local(base: str) -> pa.Array:
    """Every file under ``base`` as Arrow strings, folder by folder (no object per file kept)."""
    chunks: list[pa.Array] = []
    pending = [base]
    try:
        while pending:
            folder = pending.pop()
            names = []
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    else:
                        names.append(entry.path)
            if names:
                chunks.append(pa.array(names, pa.string()))
    except FileNotFoundError:
        if not chunks and not os.path.exists(base):
            return pa.array([], pa.string())
        raise
    except OSError as exc:
        raise StorageError(f"cannot list {base} to check which outputs exist: {exc}") from exc
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
