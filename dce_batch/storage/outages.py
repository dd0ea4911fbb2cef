"""Riding out an object store that is down for minutes, not only for one request's retries.

The AWS SDK retries each S3 request a few times within seconds (``AWS_MAX_ATTEMPTS``, see
:mod:`.aws`). A store that restarts, fails over or loses its network for longer makes every
request of that window fail all its attempts: without more, each input read in it becomes an
error row and the first output write in it stops the run. :func:`call_through_outages` runs such
a request again, with pauses growing from 1 s to 30 s, for up to the filesystem's
:attr:`~dce_batch.storage.aws.S3Options.outage_wait_s` (``--s3-outage-wait``), counted from its
first failure. Only failures that say the store could not be reached or could not serve
(connections refused, reset or timing out, 5xx answers, throttling) are tried again; an answer
about the request itself (no such key, access denied, rejected credentials) is final at once.

Reads and writes of objects and the manifest's listing are wrapped in :mod:`.io` and
:class:`~dce_batch.job.manifest.store.ManifestStore`. The driver's first requests (checking and
listing INPUT, taking the lease) are wrapped with ``final_if_never_connected``: a store that
never accepted a connection (refused, timed out, or a host name that does not resolve) is most
often a wrong endpoint, which should fail in seconds, while one that answers with errors or drops
connections is waited on as mid-run.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import pyarrow.fs as pafs

from dce_batch.errors import StorageError
from dce_batch.storage.aws import PortableS3FileSystem
from dce_batch.storage.s3_errors import S3Failure, s3_failure

__all__ = ["OUTAGE_FAILURES", "OutageOutlasted", "call_through_outages", "never_connected", "outage_kind",
           "outage_wait_s"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Failures that say the store was down or overloaded, not that the request was wrong.
OUTAGE_FAILURES = frozenset({
    S3Failure.UNREACHABLE, S3Failure.TIMEOUT, S3Failure.SERVER_ERROR, S3Failure.THROTTLED,
    S3Failure.OVERFLOWED_ERROR_BODY,
})
#: The first pause after a request failed all its SDK attempts, and the longest one.
FIRST_PAUSE_S, LONGEST_PAUSE_S = 1.0, 30.0
#: curl's "could not resolve host" and "could not connect", and its wording of a timeout while
#: resolving or connecting (pyarrow's S3 client quotes curl): no connection was ever made.
_NEVER_CONNECTED_CURL = ("curlCode: 6,", "curlCode: 7,", "Connection timed out after", "Resolving timed out after")


class OutageOutlasted(OSError):
    """The last error of a request that kept failing for the whole outage wait; its text is that
    error's, so it is classified like it (:func:`~dce_batch.storage.s3_errors.pyarrow_failure`)."""

    def __init__(self, last: OSError, waited_s: float) -> None:
        super().__init__(str(last))
        self.waited_s = waited_s


def outage_wait_s(fs: pafs.FileSystem) -> float:
    """How long requests on ``fs`` are tried again through an outage (0 for local disks)."""
    return fs.options.outage_wait_s if isinstance(fs, PortableS3FileSystem) else 0.0


def _low_level(exc: BaseException) -> BaseException | None:
    """The SDK's error behind ``exc``: itself for pyarrow's OSError, the cause of a StorageError."""
    return exc.__cause__ if isinstance(exc, StorageError) else exc


def outage_kind(exc: BaseException) -> S3Failure | None:
    """What kind of outage ``exc`` says the store is in, or None when it says something else
    (an answer about the request itself, or an error that is not the store's)."""
    low = _low_level(exc)
    kind = s3_failure(low) if low is not None else None
    return kind if kind in OUTAGE_FAILURES else None


def never_connected(exc: BaseException) -> bool:
    """Whether ``exc`` says that no connection to the store could be made at all."""
    import botocore.exceptions as bce

    low = _low_level(exc)
    if isinstance(low, bce.EndpointConnectionError):  # refused, unresolvable, connect timeout
        return True
    return isinstance(low, OSError) and any(code in str(low) for code in _NEVER_CONNECTED_CURL)


def call_through_outages(call: Callable[[], T], *, wait_s: float, what: str, final_if_never_connected: bool = False,
                         sleep: Callable[[float], None] = time.sleep,
                         clock: Callable[[], float] = time.monotonic) -> T:
    """``call()``, run again while it fails with an outage of the store, for up to ``wait_s``
    from its first failure; then its last error is raised, saying how long it was tried.

    ``call`` raises pyarrow's OSError, or a StorageError whose cause is pyarrow's or botocore's
    error. ``what`` names the request for the warning logged at its first failure. With
    ``final_if_never_connected`` a failure to connect at all is raised at once (see above).
    """
    deadline: float | None = None
    pause = FIRST_PAUSE_S
    while True:
        try:
            return call()
        except (OSError, StorageError) as exc:
            if wait_s <= 0:  # local disks, or the wait turned off: nothing to classify
                raise
            kind = outage_kind(exc)
            if kind is None or (final_if_never_connected and never_connected(exc)):
                raise
            now = clock()
            if deadline is None:
                deadline = now + wait_s
                logger.warning("%s failed (the store: %s); trying again for up to %.0f s (--s3-outage-wait)",
                               what, kind.value, wait_s)
            if now >= deadline:
                if isinstance(exc, StorageError):
                    raise StorageError(f"{exc}; tried again for {wait_s:.0f} s (--s3-outage-wait)") from _low_level(exc)
                raise OutageOutlasted(exc, wait_s) from exc
            # Full jitter keeps workers that failed together from returning together.
            sleep(min(random.uniform(pause / 2, pause), deadline - now))
            pause = min(pause * 2, LONGEST_PAUSE_S)
