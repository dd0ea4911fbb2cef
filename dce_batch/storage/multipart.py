"""Multipart uploads a killed writer left unfinished under an S3 prefix.

An upload larger than one part (pyarrow switches to multipart above a few MB) that is never
completed never becomes an object, so no half-written output is ever visible; but its parts stay
stored, and billed, until the upload is aborted. The job aborts those under OUTPUT that began
before it took OUTPUT's lease (so none is a live write of its own); a bucket lifecycle rule
(``AbortIncompleteMultipartUpload``) is the belt to these braces.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from dce_batch.errors import StorageError
from dce_batch.storage.aws import PortableS3FileSystem, s3_client

__all__ = ["abort_stale_uploads"]


def abort_stale_uploads(fs, prefix_path: str, *, started_before: datetime, leave: Iterable[str] = ()) -> int:
    """Abort the unfinished multipart uploads under ``bucket/prefix`` begun before
    ``started_before``, except those under the folders ``leave`` (relative to the prefix: another
    job's OUTPUT nested in this one, INPUT); how many. Not S3: nothing to do."""
    import botocore.exceptions

    if not isinstance(fs, PortableS3FileSystem):
        return 0
    bucket, _, key = prefix_path.strip("/").partition("/")
    prefix = key.rstrip("/") + "/" if key else ""
    spared = tuple(prefix + folder.strip("/") + "/" for folder in leave)
    client = s3_client(fs.options)
    aborted = 0
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for upload in page.get("Uploads") or ():
                if upload["Initiated"] < started_before and not upload["Key"].startswith(spared or ("\0",)):
                    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NotImplemented", "AccessDenied"):
            return aborted  # a store without the API, or no right to it: the lifecycle rule's job
        raise StorageError(f"cannot list the unfinished uploads under s3://{prefix_path}: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"cannot list the unfinished uploads under s3://{prefix_path}: {exc}") from exc
    return aborted
