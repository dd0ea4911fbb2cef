"""One run per OUTPUT: a lease file, ``OUTPUT/_manifest/_lease.json``.

Two runs on one OUTPUT would overwrite each other's outputs, adopt each other's live parts and
commit each other's rows. So a run takes the lease before it reads the manifest and gives it back
last. The lease says who holds it (run id, host, pid, start) and when it last showed it was
alive (a heartbeat, rewritten every :data:`HEARTBEAT_S` seconds by a thread of the driver).

* Taking it is a conditional create (``If-None-Match: *`` on S3, an exclusive lock locally), so
  of two drivers starting together exactly one wins; the other is refused (exit 2) with the
  holder's name and how to break a lease whose holder is gone.
* A lease whose holder is gone is taken over: a process on this host that no longer exists, or a
  heartbeat older than :data:`STALE_AFTER_S` (a driver on another host that died: four missed
  heartbeats). The takeover is a conditional replace of exactly the stale version, so of two
  runs taking over the same stale lease, one wins.
* Every heartbeat is a conditional replace of the version this run wrote last: if another run
  took the lease (this driver was frozen for longer than the bound), the heartbeat fails and the
  run stops (:class:`~dce_batch.errors.LeaseLostError`) instead of writing on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable

import pyarrow.fs as pafs

from dce_batch.errors import LeaseLostError, OutputInUseError, StorageError
from dce_batch.job.manifest.store import ManifestStore
from dce_batch.storage.conditional import ConditionFailed, create_exclusive, delete_if, read_versioned, replace_if
from dce_batch.storage.outages import outage_kind, outage_wait_s

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "Lease", "LeaseHolder", "acquire_lease", "break_lease", "read_lease"]

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of the lease holder.
HEARTBEAT_S = 30.0
#: A lease whose last heartbeat is older than this is taken over (four missed heartbeats).
STALE_AFTER_S = 120.0


@dataclass(frozen=True)
class LeaseHolder:
    """What the lease file says."""

    run_id: str
    host: str
    pid: int
    started_at: float  # time.time()
    heartbeat_at: float
    command: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LeaseHolder | None":
        try:
            raw = json.loads(data)
            return cls(run_id=str(raw["run_id"]), host=str(raw["host"]), pid=int(raw["pid"]),
                       started_at=float(raw["started_at"]), heartbeat_at=float(raw["heartbeat_at"]),
                       command=str(raw.get("command", "")))
        except (ValueError, KeyError, TypeError):
            return None  # a damaged lease file holds nobody

    def same_run(self, other: "LeaseHolder | None") -> bool:
        """Whether ``other`` was written by the same run (whatever its heartbeat)."""
        return other is not None and (other.run_id, other.host, other.pid, other.started_at) == (
            self.run_id, self.host, self.pid, self.started_at)

    def gone_reason(self, now: float) -> str | None:
        """Why the holder is gone, or None while it may be alive."""
        if self.host == socket.gethostname() and not _process_exists(self.pid):
            return f"process {self.pid} no longer exists on this host"
        if now - self.heartbeat_at > STALE_AFTER_S:
            return f"its last heartbeat was {now - self.heartbeat_at:.0f} s ago (more than {STALE_AFTER_S:.0f} s)"
        return None

    def describe(self, now: float) -> str:
        started = datetime.fromtimestamp(self.started_at, timezone.utc).isoformat(timespec="seconds")
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}, started {started}, last heartbeat "
                f"{max(0.0, now - self.heartbeat_at):.0f} s ago)")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def read_lease(store: ManifestStore) -> tuple[LeaseHolder | None, str | None]:
    """The lease's holder and version token, or (None, None) when nobody holds OUTPUT."""
    try:
        data, token = read_versioned(store.filesystem, store.lease_path)
    except FileNotFoundError:
        return None, None
    return LeaseHolder.from_bytes(data), token


class Lease:
    """A held lease: a heartbeat thread keeps it fresh until :meth:`release`."""

    def __init__(self, store: ManifestStore, holder: LeaseHolder, token: str, *, taken_over: str | None = None,
                 previous: LeaseHolder | None = None, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.store, self.holder, self._token = store, holder, token
        self.taken_over = taken_over  # the earlier holder's description and why it was stale
        self.previous = previous  # the earlier holder, when its lease was taken over
        self.lost: LeaseLostError | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True, name="dce-lease")
        self._thread.start()

    def _beat(self, every_s: float) -> None:
        failing_since: float | None = None
        while not self._stop.wait(every_s):
            try:
                self.heartbeat()
            except LeaseLostError as exc:
                self.lost = exc
                return
            except StorageError as exc:
                # A transient failure: the next beat tries again, well within the bound. Said once:
                # the driver's heartbeat is what a user of a Ray run, whose workers' own warnings
                # stay on the workers, hears of a store that went down.
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.warning("%s", self._failed_beat(exc, every_s))
                continue
            if failing_since is not None:
                logger.warning("the store holding OUTPUT answers again: the lease's heartbeat went through after "
                               "failing for %.0f s", time.monotonic() - failing_since)
                failing_since = None

    def _failed_beat(self, exc: StorageError, every_s: float) -> str:
        kind = outage_kind(exc)
        wait_s = outage_wait_s(self.store.filesystem)
        if kind is None or wait_s <= 0:
            return f"the lease's heartbeat failed ({exc}); the next one tries again in {every_s:.0f} s"
        return (f"the store holding OUTPUT did not take the lease's heartbeat (the store: {kind.value}); the run "
                f"goes on, and its reads and writes wait up to {wait_s:.0f} s for the store (--s3-outage-wait)")

    def heartbeat(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            fresh = LeaseHolder(**{**asdict(self.holder), "heartbeat_at": time.time()})
            try:
                self._token = replace_if(self.store.filesystem, self.store.lease_path, fresh.to_bytes(), self._token)
            except (ConditionFailed, FileNotFoundError) as exc:
                now_holder, token = read_lease(self.store)
                if fresh.same_run(now_holder) and now_holder.heartbeat_at == fresh.heartbeat_at:
                    # Our write landed but its answer was lost, and the SDK's retry found its own
                    # write in place: the lease is still ours.
                    self._token, self.holder = token, fresh
                    return
                who = now_holder.describe(time.time()) if now_holder else "nobody (the lease file was deleted)"
                raise LeaseLostError(
                    f"this run lost OUTPUT {self.store.uri.rsplit('/', 1)[0]} to {who}: its heartbeat stopped for "
                    f"more than {STALE_AFTER_S:.0f} s and another run took over. It stops writing; run again once the "
                    "other run has finished") from exc
            self.holder = fresh

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the heartbeat found the lease taken."""
        if self.lost is not None:
            raise self.lost

    def release(self) -> None:
        """Stop the heartbeat and delete the lease (only if it is still this run's)."""
        with self._lock:
            self._stop.set()
        self._thread.join(timeout=5)
        if self.lost is None:
            try:
                delete_if(self.store.filesystem, self.store.lease_path, self._token)
            except (ConditionFailed, StorageError, OSError):
                pass  # taken over meanwhile, or storage unreachable: a stale lease is taken over later


def acquire_lease(store: ManifestStore, run_id: str, *, command: str = "", heartbeat_s: float = HEARTBEAT_S,
                  now: Callable[[], float] = time.time, started_at: float | None = None) -> Lease:
    """Take OUTPUT's lease for ``run_id``, taking over a stale one; :class:`OutputInUseError` when
    a live run holds it.

    A caller that calls again after a StorageError passes the same ``started_at`` each time: the
    lease an earlier call created (its answer lost) is then recognised as this run's own."""
    started = now() if started_at is None else started_at
    holder = LeaseHolder(run_id=run_id, host=socket.gethostname(), pid=os.getpid(), started_at=started,
                         heartbeat_at=started, command=command[:500])
    for _ in range(5):  # a lease released or replaced between our read and our write: look again
        try:
            token = create_exclusive(store.filesystem, store.lease_path, holder.to_bytes())
            return Lease(store, holder, token, heartbeat_s=heartbeat_s)
        except ConditionFailed:
            pass
        current, token = read_lease(store)
        if token is None:
            continue  # released meanwhile
        if holder.same_run(current):
            # Our create landed but its answer was lost (a dropped connection), and the SDK's
            # retry was refused by our own lease: it is ours.
            return Lease(store, holder, token, heartbeat_s=heartbeat_s)
        reason = "the lease file is damaged" if current is None else current.gone_reason(now())
        if reason is None:
            output = store.uri.rsplit("/", 1)[0]
            raise OutputInUseError(
                f"OUTPUT {output} is in use by {current.describe(now())}. Two runs on one OUTPUT would overwrite "
                f"each other's work: wait for it to finish, or use another OUTPUT. If that run is gone (its machine "
                f"died), its lease is taken over automatically once its heartbeat is {STALE_AFTER_S:.0f} s old; "
                f"to take it now, run `dce-batch manifest unlock {output}`")
        try:
            new_token = replace_if(store.filesystem, store.lease_path, holder.to_bytes(), token)
        except (ConditionFailed, FileNotFoundError):
            continue  # another run took it over first: look again
        earlier = current.describe(now()) if current else "a damaged lease"
        return Lease(store, holder, new_token, taken_over=f"{earlier}: {reason}", previous=current,
                     heartbeat_s=heartbeat_s)
    raise OutputInUseError(f"could not take the lease of OUTPUT {store.uri.rsplit('/', 1)[0]}: other runs keep "
                           "taking it; run one job at a time per OUTPUT")


def break_lease(store: ManifestStore, *, force: bool = False) -> LeaseHolder | None:
    """Delete OUTPUT's lease (``dce-batch manifest unlock``). Refuses while its holder is a live
    process on this host unless ``force``. Returns who held it."""
    current, token = read_lease(store)
    if token is None:
        return None
    if current is not None and not force and current.host == socket.gethostname() and _process_exists(current.pid):
        raise OutputInUseError(f"{current.describe(time.time())} is alive on this host; stop it first, or pass "
                               "--force if that process is not a dce-batch run")
    try:
        delete_if(store.filesystem, store.lease_path, token)
    except ConditionFailed as exc:
        raise OutputInUseError("the lease changed while it was being removed: a run holds OUTPUT now") from exc
    return current


def lease_supported(fs: pafs.FileSystem) -> bool:
    from dce_batch.storage import PortableS3FileSystem

    return isinstance(fs, (pafs.LocalFileSystem, PortableS3FileSystem))
