"""Compare-and-swap writes of small files: create only if absent, replace only if unchanged.

What a lease needs so that two drivers can never both believe they hold it:

* on S3 (and S3-compatibles that implement conditional writes) the server decides: a PUT with
  ``If-None-Match: *`` creates the object only if there is none, and ``If-Match: <etag>`` replaces
  or deletes it only if nobody changed it since it was read. pyarrow's filesystem cannot send those
  headers, so these requests go through botocore, with the filesystem's own endpoint, region,
  retries and timeouts;
* on a local disk an exclusive ``flock`` on a sibling ``.lock`` file makes read-compare-write one
  step for every process on this machine. (Network filesystems without working locks cannot give
  this guarantee; S3 can.)

A version *token* names what was read: the ETag on S3, the content's sha256 locally.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs

from dce_batch.errors import StorageError
from dce_batch.storage.aws import PortableS3FileSystem, s3_client

__all__ = ["ConditionFailed", "create_exclusive", "delete_if", "discard_local_lock", "read_versioned", "replace_if"]


class ConditionFailed(Exception):
    """The file exists (create) or changed since it was read (replace, delete)."""


def _bucket_key(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


def _s3_call(fs: PortableS3FileSystem, method: str, path: str, **params):
    import botocore.exceptions

    bucket, key = _bucket_key(path)
    try:
        return getattr(s3_client(fs.options), method)(Bucket=bucket, Key=key, **params)
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            raise ConditionFailed(f"s3://{path}: {code or status}") from exc
        if code in ("NoSuchKey", "404") or status == 404:
            raise FileNotFoundError(f"s3://{path}") from exc
        raise StorageError(f"cannot {method.replace('_', ' ')} s3://{path}: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"cannot {method.replace('_', ' ')} s3://{path}: {exc}") from exc


def _local_token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _local_lock(path: str) -> Iterator[None]:
    """Exclusive among this machine's processes: every conditional write to ``path`` takes it.

    The lock file may be removed (:func:`discard_local_lock`) while others wait on it: a process
    that gets the lock of a file no longer at that path locks the file at that path instead."""
    folder = os.path.dirname(path)
    lock = f"{path}.lock"
    while True:
        os.makedirs(folder, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder went away between the two calls
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def discard_local_lock(path: str) -> bool:
    """Remove the lock file of a local ``path`` that does not exist (a lease released by a run
    that is leaving no trace); whether it was removed. Processes waiting on it lock a new one."""
    with _local_lock(path):
        if os.path.lexists(path):
            return False
        os.unlink(f"{path}.lock")
        return True


def _local_replace(path: str, data: bytes) -> None:
    temp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _s3_read(fs: PortableS3FileSystem, path: str) -> tuple[bytes, str]:
    """GET and read the body. The SDK retries a request that fails, not a body cut off while it is
    read (a connection reset mid-stream): those are retried here, as many times."""
    import botocore.exceptions

    attempt = 1
    while True:
        answer = _s3_call(fs, "get_object", path)
        try:
            return answer["Body"].read(), answer["ETag"]
        except (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError,
                ConnectionError) as exc:
            if attempt >= fs.options.max_attempts:
                raise StorageError(f"cannot read s3://{path}: {exc}") from exc
            time.sleep(min(2.0, 0.05 * 2 ** (attempt - 1)))
            attempt += 1


def read_versioned(fs: pafs.FileSystem, path: str) -> tuple[bytes, str]:
    """The file's content and its version token; FileNotFoundError when there is none."""
    if isinstance(fs, PortableS3FileSystem):
        return _s3_read(fs, path)
    if isinstance(fs, pafs.LocalFileSystem):
        with open(path, "rb") as handle:
            data = handle.read()
        return data, _local_token(data)
    raise StorageError(f"{type(fs).__name__} offers no conditional writes; use a local folder or s3:// for OUTPUT")


def create_exclusive(fs: pafs.FileSystem, path: str, data: bytes) -> str:
    """Create ``path`` with ``data`` unless it exists (:class:`ConditionFailed`); the new token."""
    if isinstance(fs, PortableS3FileSystem):
        return _s3_call(fs, "put_object", path, Body=data, IfNoneMatch="*")["ETag"]
    if isinstance(fs, pafs.LocalFileSystem):
        with _local_lock(path):
            if os.path.lexists(path):
                raise ConditionFailed(path)
            _local_replace(path, data)
        return _local_token(data)
    raise StorageError(f"{type(fs).__name__} offers no conditional writes; use a local folder or s3:// for OUTPUT")


def replace_if(fs: pafs.FileSystem, path: str, data: bytes, token: str) -> str:
    """Replace ``path`` with ``data`` only if its token is still ``token``; the new token."""
    if isinstance(fs, PortableS3FileSystem):
        return _s3_call(fs, "put_object", path, Body=data, IfMatch=token)["ETag"]
    with _local_lock(path):
        try:
            _, current = read_versioned(fs, path)
        except FileNotFoundError:
            raise ConditionFailed(path) from None
        if current != token:
            raise ConditionFailed(path)
        _local_replace(path, data)
    return _local_token(data)


def delete_if(fs: pafs.FileSystem, path: str, token: str) -> None:
    """Delete ``path`` only if its token is still ``token`` (gone already: nothing to do)."""
    if isinstance(fs, PortableS3FileSystem):
        with contextlib.suppress(FileNotFoundError):
            _s3_call(fs, "delete_object", path, IfMatch=token)
        return
    with _local_lock(path):
        try:
            _, current = read_versioned(fs, path)
        except FileNotFoundError:
            return
        if current != token:
            raise ConditionFailed(path)
        os.unlink(path)
