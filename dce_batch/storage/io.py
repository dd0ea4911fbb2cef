"""Reading, writing, checking and deleting files on any :mod:`pyarrow.fs` filesystem.

Writes are atomic: a file appears under its final name only once it is complete, so a crash or
a pre-empted node never leaves a half-written image that a later run would mistake for done.

On S3, transient failures (throttling, 5xx answers, dropped connections, timeouts) are retried
inside the AWS SDK with the strategy the filesystem was built with (see :mod:`.aws`). The one
failure the SDK does not retry (an error answer to a GET of a tiny object, see
:func:`read_bytes`) is retried here. Reads and writes that fail all those attempts because the
store is down are tried again for minutes (:mod:`.outages`).
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import posixpath
import random
import stat
import time
import uuid

import pyarrow.fs as pafs

from dce_batch.errors import StorageError
from dce_batch.storage.aws import PortableS3FileSystem
from dce_batch.storage.local_tree import walk_local_files
from dce_batch.storage.outages import call_through_outages, outage_wait_s
from dce_batch.storage.s3_errors import S3Failure, pyarrow_failure
from dce_batch.storage.uris import display, fsspec_protocol, get_info, storage_error

__all__ = ["TEMP_NAME_PATTERN", "delete_tree_contents", "temp_tag", "exists", "list_files", "read_bytes", "remove_files",
           "write_bytes_atomic", "writes_via_temp_files"]

# fsspec protocols whose single upload is already atomic (the object appears only when complete).
# Other fsspec filesystems (sftp, smb, ...) get a temp file + rename like local disks.
_OBJECT_STORE_PROTOCOLS = frozenset(
    {"gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "hf", "memory", "r2", "b2", "wasb", "wasbs"}
)


def _backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter: up to 0.05 s, 0.1 s, 0.2 s ... (at most 20 s)."""
    return random.uniform(0.0, min(20.0, 0.05 * 2**attempt))


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole content of ``path``; StorageError saying why if it cannot be read."""
    if isinstance(fs, pafs.LocalFileSystem):
        _refuse_special_file(fs, path)
    try:
        return call_through_outages(lambda: _read_retrying_overflows(fs, path), wait_s=outage_wait_s(fs),
                                    what=f"reading {display(fs, path)}")
    except OSError as exc:
        raise storage_error(exc, "read", fs, path) from exc


def _read_retrying_overflows(fs: pafs.FileSystem, path: str) -> bytes:
    attempts = fs.options.max_attempts if isinstance(fs, PortableS3FileSystem) else 1
    for attempt in range(attempts):
        try:
            # compression=None: never transparently gunzip a file just because it ends in .gz.
            with fs.open_input_stream(path, compression=None) as stream:
                return stream.read()
        except OSError as exc:
            # pyarrow reads an S3 object into a buffer of exactly the object's size. When S3
            # answers that GET with an error (503 SlowDown, 500 InternalError), the AWS SDK writes
            # the XML error body into the same buffer; for objects smaller than that body (a few
            # hundred bytes) it overflows, and the SDK reports an internal failure that it does not
            # retry. Found with tests/fault_proxy.py; retried here, and nothing else is.
            if attempt + 1 < attempts and pyarrow_failure(exc) is S3Failure.OVERFLOWED_ERROR_BODY:
                time.sleep(_backoff_s(attempt))
                continue
            raise
    raise AssertionError("unreachable: the last attempt returns or raises")


_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def special_file_kind(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is when it is neither a regular file nor a folder."""
    return next((kind for is_kind, kind in _SPECIAL_FILES if is_kind(mode)), None)


def _refuse_special_file(fs: pafs.FileSystem, path: str) -> None:
    # Opening a named pipe waits for a writer forever, and a device never ends: a stat first.
    try:
        kind = special_file_kind(os.stat(path).st_mode)
    except OSError:
        return  # reading it says why
    if kind is not None:
        raise StorageError(f"cannot read {display(fs, path)}: it is {kind}, not a regular file; "
                           "move it out of the input folder")


def list_files(fs: pafs.FileSystem, path: str) -> set[str]:
    """Paths of every file under the folder ``path`` (recursive); empty if it does not exist.

    One listing instead of a request per file: how a resumed run checks which outputs exist.
    Local folders: see :func:`~dce_batch.storage.local_tree.walk_local_files` (links are not
    followed; names that are not UTF-8 are escaped).
    """
    if isinstance(fs, pafs.LocalFileSystem):
        return set(walk_local_files(path).to_pylist())
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=True)
    infos = get_info(fs, selector, "list", path)
    return {info.path for info in infos if info.type == pafs.FileType.File}


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file or folder (prefix) exists at ``path``."""
    return get_info(fs, path, "check", path).type != pafs.FileType.NotFound


# A path whose last part :func:`temp_name` made (``.<name>.<12 hex digits>.tmp``): a write still
# in progress, or the debris of a writer that was killed before its rename.
TEMP_NAME_PATTERN = r"(^|/)\.[^/]+\.[0-9a-f]{12}\.tmp$"


def temp_tag(owner: str) -> str:
    """Six hex digits naming who writes a temp file (a run), so that its debris can be told from
    the in-flight writes of anyone else."""
    return hashlib.sha256(owner.encode()).hexdigest()[:6]


def temp_name(path: str, tag: str | None = None) -> str:
    """Hidden temp name next to ``path`` (``.<name>.<tag><random>.tmp``, 12 hex digits in all):
    skipped by listings, recognisable as debris, and as whose debris when ``tag`` is given."""
    folder, name = posixpath.split(path)
    # Keep within the usual 255-byte name limit even for long names.
    stem = name.encode("utf-8")[:200].decode("utf-8", "ignore")
    random = uuid.uuid4().hex
    hex12 = (tag + random[: 12 - len(tag)]) if tag else random[:12]
    return posixpath.join(folder, f".{stem}.{hex12}.tmp")


def writes_via_temp_files(fs: pafs.FileSystem) -> bool:
    """Whether :func:`write_bytes_atomic` writes a temp file first on ``fs`` (and so a writer
    killed mid-write leaves one behind): local disks and fsspec filesystems that are not object
    stores. S3 and object stores publish an upload whole or not at all."""
    if isinstance(fs, pafs.LocalFileSystem):
        return True
    if isinstance(fs, pafs.S3FileSystem):
        return False
    return fsspec_protocol(fs) not in _OBJECT_STORE_PROTOCOLS


def remove_files(fs: pafs.FileSystem, paths: list[str]) -> int:
    """Delete ``paths``; ones already gone are fine. Returns how many were deleted."""
    removed = 0
    for path in paths:
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise storage_error(exc, "delete", fs, path) from exc
        removed += 1
    return removed


def _write_local_atomic(path: str, data: bytes, tag: str | None = None) -> None:
    """Temp file in the same folder, fsync, rename over the final name."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temp = temp_name(path, tag)
    # os.open with 0o666 lets the umask decide permissions, as for any normally created file
    # (tempfile.mkstemp would leave outputs readable by their owner only).
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            # Data on disk before the rename: after a crash the name holds old or new, never half.
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _write_stream(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """One streamed upload; on S3 the object appears only when ``close`` completes it."""
    # Check the payload *before* opening: a stream closed after a failed first write would
    # publish an empty object under the final name.
    payload = memoryview(data)
    content_type = mimetypes.guess_type(path)[0]
    metadata = None
    if content_type and isinstance(fs, pafs.S3FileSystem):
        metadata = {"Content-Type": content_type}  # so browsers/consoles preview outputs
    stream = fs.open_output_stream(path, compression=None, metadata=metadata)
    try:
        stream.write(payload)
    finally:
        # pyarrow does not complete a multipart upload whose parts failed, so closing after an
        # I/O error cannot publish a partial object; it only reports the error.
        stream.close()


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes, *, temp_tag: str | None = None) -> None:
    """Write ``data`` to ``path`` so that no half-written file is ever visible under its name.

    Local disks: temp file (``.<name>.<random>.tmp``) in the same folder, fsync, atomic rename.
    S3 and object stores: one PUT / multipart upload is already atomic, so write directly.
    Other fsspec filesystems: temp file then move. Parent folders are created as needed
    (but no folder-marker objects on S3). ``temp_tag`` (:func:`temp_tag`) marks the temp file as
    the writer's, so that only its own debris is ever cleaned up.
    """
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            _write_local_atomic(path, data, temp_tag)
        elif isinstance(fs, pafs.S3FileSystem):
            # One PUT (or multipart upload) is atomic and idempotent: sending it again is safe.
            call_through_outages(lambda: _write_stream(fs, path, data), wait_s=outage_wait_s(fs),
                                 what=f"writing {display(fs, path)}")
        else:
            parent = posixpath.dirname(path)
            if parent:
                fs.create_dir(parent, recursive=True)
            if fsspec_protocol(fs) in _OBJECT_STORE_PROTOCOLS:
                _write_stream(fs, path, data)
            else:
                temp = temp_name(path, temp_tag)
                try:
                    _write_stream(fs, temp, data)
                    fs.move(temp, path)
                except BaseException:
                    try:
                        fs.delete_file(temp)
                    except OSError:
                        pass
                    raise
    except OSError as exc:
        raise storage_error(exc, "write", fs, path) from exc


def delete_tree_contents(fs: pafs.FileSystem, path: str) -> None:
    """Delete everything inside folder/prefix ``path`` (for ``--overwrite``); missing is fine.

    Refuses filesystem roots and whole buckets: the folders this is meant for (manifests) are
    always below OUTPUT, so a root here is a bug or a typo, not an intent.
    """
    stripped = path.strip("/")
    if not stripped or (not isinstance(fs, pafs.LocalFileSystem) and "/" not in stripped):
        raise StorageError(
            f"refusing to delete the contents of {display(fs, path) or '/'}: it is a filesystem "
            "root or a whole bucket; point at a folder inside it"
        )
    info = get_info(fs, path, "delete", path)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type == pafs.FileType.File:
        raise StorageError(
            f"cannot delete the contents of {display(fs, path)}: it is a file, not a folder"
        )
    try:
        fs.delete_dir_contents(path, missing_dir_ok=True)
    except OSError as exc:
        raise storage_error(exc, "delete", fs, path) from exc
