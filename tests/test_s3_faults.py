"""Object storage under injected faults (issue 9, item 2).

Every storage operation, and the whole enhancement job (in-process and as the CLI), runs through
tests/fault_proxy.py in front of moto_server, which answers a seeded 20 % of the requests with
503 SlowDown, 500 InternalError, a connection reset before or after the server acted, or a
response cut off mid-body. Everything must still succeed, exactly once, and the proxy's counts
prove that faults were injected (and retried) on reads, writes and listings.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dce_batch.errors import StorageError
from dce_batch.imaging import decode_image
from dce_batch.job.manifest import ManifestRow, ManifestStore, read_manifest, rows_to_table
from dce_batch.job.manifest.lease import acquire_lease
from dce_batch.job.manifest.store import part_name
from dce_batch.storage import (
    Location,
    S3Options,
    delete_tree_contents,
    exists,
    filesystem_for,
    list_files,
    list_inputs_table,
    read_bytes,
    write_bytes_atomic,
)
from tests.fault_proxy import FaultProxy, fault_proxy  # noqa: F401 - fault_proxy is a fixture
from tests.ray_cluster import alive

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parents[1]
RATE = 0.2
#: Every fault the proxy knows except stalls (which cost a timeout each; tested on their own).
ALL_KINDS = ("slow_down", "internal_error", "drop", "drop_after", "truncate")
IMAGES = (".jpg", ".png")


def _options(proxy: FaultProxy, **overrides) -> S3Options:
    settings = dict(endpoint_url=proxy.url, region="us-east-1", access_key="testing", secret_key="testing")
    settings.update(overrides)
    return S3Options(**settings)


def _image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (48, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((*size, 3)) * 80).astype(np.uint8)  # dark
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


# --- the proxy itself -----------------------------------------------------------------------


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_proxy_answers_expect_continue_and_passes_chunked_bodies(fault_proxy, s3_server, s3_bucket) -> None:
    body = os.urandom(70_000)
    host, port = fault_proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"PUT /{s3_bucket}/raw/chunked.bin HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert _read_head(sock).startswith(b"HTTP/1.1 100")  # the body is sent only after this
        for start in range(0, len(body), 30_000):
            part = body[start : start + 30_000]
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        assert _read_head(sock).startswith(b"HTTP/1.1 200")
    assert s3_server.get_object(s3_bucket, "raw/chunked.bin") == body
    assert fault_proxy.stats().requests == {"PUT": 1}


def _outcomes(proxy: FaultProxy, bucket: str, n: int) -> list[str]:
    """What a real S3 client (botocore, retries off) gets for ``n`` GETs of distinct keys."""
    import boto3
    import botocore.config
    import botocore.exceptions

    client = boto3.client("s3", endpoint_url=proxy.url, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1",
                          config=botocore.config.Config(retries={"total_max_attempts": 1}))
    outcome = []
    for i in range(n):
        try:
            client.get_object(Bucket=bucket, Key=f"k{i}")["Body"].read()
            outcome.append("ok")
        except botocore.exceptions.ClientError as exc:
            outcome.append(exc.response["Error"]["Code"])
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError):
            outcome.append("reset")
    return outcome


def test_proxy_faults_are_seeded_counted_and_s3_shaped(s3_server, s3_bucket) -> None:
    for i in range(40):
        s3_server.put_object(s3_bucket, f"k{i}", b"x" * 100)
    runs = []
    for _ in range(2):
        with FaultProxy(s3_server.endpoint_url, fault_rate=0.5, kinds=("slow_down", "internal_error", "drop"),
                        seed=7) as proxy:
            runs.append((_outcomes(proxy, s3_bucket, 40), proxy.stats()))
    (first, stats), (second, _) = runs
    assert first == second  # the same requests fail in every run
    assert stats.requests == {"GET": 40}
    assert stats.faults_of("slow_down") == first.count("SlowDown") > 0
    assert stats.faults_of("internal_error") == first.count("InternalError") > 0
    assert stats.faults_of("drop") == first.count("reset") > 0
    assert first.count("ok") == 40 - stats.total_faults


# --- every storage operation at 20 % ---------------------------------------------------------


def test_every_storage_operation_survives_20_percent_faults(fault_proxy, s3_server, s3_bucket) -> None:
    originals = {f"in/d{i % 3}/img{i:02d}.jpg": _image_bytes(i) for i in range(24)}
    for key, data in originals.items():
        s3_server.put_object(s3_bucket, key, data)
    s3_server.put_object(s3_bucket, "lists/some.txt", b"".join(f"../{k}\n".encode() for k in list(originals)[:10]))
    options = _options(fault_proxy)
    fs, _ = filesystem_for(f"s3://{s3_bucket}", options)
    fault_proxy.configure(fault_rate=RATE, kinds=ALL_KINDS)

    # Listings: a prefix (paged by botocore), a glob, a list file, and pyarrow's own listing.
    _, table = list_inputs_table(f"s3://{s3_bucket}/in/", options, extensions=IMAGES)
    assert table.column("relpath").to_pylist() == sorted(k.removeprefix("in/") for k in originals)
    _, globbed = list_inputs_table(f"s3://{s3_bucket}/in/d1/*.jpg", options, extensions=IMAGES)
    assert globbed.num_rows == 8
    _, listed = list_inputs_table(f"s3://{s3_bucket}/lists/some.txt", options, extensions=IMAGES)
    assert listed.num_rows == 10
    assert list_files(fs, f"{s3_bucket}/in") == {f"{s3_bucket}/{k}" for k in originals}

    # Reads and checks.
    for key, data in originals.items():
        assert read_bytes(fs, f"{s3_bucket}/{key}") == data
        assert exists(fs, f"{s3_bucket}/{key}")
    assert not exists(fs, f"{s3_bucket}/in/missing.jpg")

    # Writes: single PUTs and a multipart upload (parts, then completion), byte-exact.
    written = {f"out/img{i:02d}.jpg": _image_bytes(100 + i) for i in range(24)}
    for key, data in written.items():
        write_bytes_atomic(fs, f"{s3_bucket}/{key}", data)
    large = {f"out/large{i}.bin": os.urandom(12 * 1024 * 1024) for i in range(2)}  # 2 parts each
    for key, data in large.items():
        write_bytes_atomic(fs, f"{s3_bucket}/{key}", data)

    # Manifest parts: written and read back through the same filesystem.
    manifest = f"{s3_bucket}/out/_manifest"
    store = ManifestStore(fs, manifest)
    for index in range(4):
        rows = rows_to_table([ManifestRow(run_id="r", input_relpath=f"{index}{name}", input_uri=f"s3://b/{name}",
                                          status="ok") for name in "abc"])
        store.write_part(part_name("r", "w", index), rows)
    assert store.state().rows.num_rows == 12

    # Deletes (DeleteObjects batches).
    delete_tree_contents(fs, manifest)
    for i in range(2):
        write_bytes_atomic(fs, f"{s3_bucket}/scratch{i}/a.jpg", b"a")
        delete_tree_contents(fs, f"{s3_bucket}/scratch{i}")

    stats = fault_proxy.stats()
    fault_proxy.configure(fault_rate=0.0)
    for key, data in written.items():
        assert s3_server.get_object(s3_bucket, key) == data
    for key, data in large.items():
        assert s3_server.get_object(s3_bucket, key) == data
    # (pyarrow keeps an emptied folder as a "name/" marker object)
    assert not [k for k in s3_server.list_keys(s3_bucket)
                if k.endswith(".parquet") or (k.startswith("scratch") and not k.endswith("/"))]
    print(stats.summary())
    for operation in ("GET", "PUT", "LIST", "HEAD", "POST"):
        assert stats.faults_on(operation) > 0, f"no fault was injected on {operation}: {stats.summary()}"
    for kind in ALL_KINDS:
        assert stats.faults_of(kind) > 0, f"no {kind} fault was injected: {stats.summary()}"
    assert stats.total_retries == stats.total_faults  # every fault was retried


def test_retries_do_not_run_out_over_a_long_job(fault_proxy, s3_server, s3_bucket) -> None:
    """Every request's first attempt fails; 150 of them need 150 retries from one filesystem.

    The AWS SDK's "standard" strategy, as pyarrow wraps it, would stop retrying for good after
    100 (benchmarks/bench_s3_faults.py shows it); the filesystem's strategy must not.
    """
    for i in range(150):
        s3_server.put_object(s3_bucket, f"k{i}.jpg", b"x")
    fs, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy))
    fault_proxy.fail_first = 1
    fault_proxy.configure(kinds=("slow_down", "drop"))
    for i in range(150):
        assert exists(fs, f"{s3_bucket}/k{i}.jpg")
    stats = fault_proxy.stats()
    assert stats.requests["HEAD"] == 300 and stats.total_faults == 150 and stats.total_retries == 150


@pytest.mark.parametrize("kind", ["slow_down", "internal_error"])
def test_error_answers_to_reads_of_tiny_objects_are_retried(fault_proxy, s3_server, s3_bucket, kind) -> None:
    """The AWS SDK does not retry an error answer whose XML body is longer than the object it
    was reading ("Failed to flush response stream"); read_bytes does."""
    sizes = (1, 2, 100, 250, 1_000)
    for size in sizes:
        s3_server.put_object(s3_bucket, f"tiny/{size}.txt", b"x" * size)
    fs, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy))
    fault_proxy.fail_first = 1
    fault_proxy.configure(kinds=(kind,))
    for size in sizes:
        assert read_bytes(fs, f"{s3_bucket}/tiny/{size}.txt") == b"x" * size
    stats = fault_proxy.stats()
    # Every HEAD and GET failed once and was retried (a retry of ours opens the object again,
    # hence a few more HEADs).
    assert stats.requests["GET"] == 2 * len(sizes) and stats.requests["HEAD"] >= 2 * len(sizes)
    assert stats.total_retries == stats.total_faults == 2 * len(sizes)


def test_a_stalled_request_times_out_and_is_retried(fault_proxy, s3_server, s3_bucket) -> None:
    s3_server.put_object(s3_bucket, "x.jpg", b"data")
    fs, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy, request_timeout_s=1.0))
    fault_proxy.fail_first = 1
    fault_proxy.configure(kinds=("stall",))  # no answer for 30 s unless the client gives up
    assert read_bytes(fs, f"{s3_bucket}/x.jpg") == b"data"
    stats = fault_proxy.stats()
    assert stats.faults_of("stall") == stats.total_retries == 2  # the HEAD and the GET


def test_retries_give_up_with_an_actionable_error(fault_proxy, s3_server, s3_bucket) -> None:
    s3_server.put_object(s3_bucket, "x.jpg", b"data")
    fs, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy, max_attempts=3, outage_wait_s=0))
    fault_proxy.configure(fault_rate=1.0, kinds=("slow_down",))
    with pytest.raises(StorageError, match=r"kept asking to slow down .* after 3 attempts.*AWS_MAX_ATTEMPTS"):
        read_bytes(fs, f"{s3_bucket}/x.jpg")
    assert fault_proxy.stats().requests["HEAD"] == 3


# --- outages longer than the SDK's attempts ---------------------------------------------------


@pytest.mark.parametrize("kind", ["drop", "slow_down", "internal_error"])
def test_reads_and_writes_wait_out_an_outage_longer_than_their_attempts(fault_proxy, s3_server, s3_bucket,
                                                                        kind) -> None:
    """The store fails 3 requests in a row, one more than the SDK's 2 attempts: the read and the
    write that meet the outage are tried again until it ends."""
    s3_server.put_object(s3_bucket, "x.jpg", b"data")
    fs, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy, max_attempts=2, outage_wait_s=120))
    fault_proxy.outage_after("HEAD", r"/x\.jpg$", requests=3, kind=kind)
    assert read_bytes(fs, f"{s3_bucket}/x.jpg") == b"data"
    assert fault_proxy.outage_started.is_set() and fault_proxy.outage_faults >= 3  # two attempts, then again
    assert fault_proxy.outage_faults == 3
    fault_proxy.outage_after("PUT", r"/out\.jpg$", requests=3, kind=kind)
    write_bytes_atomic(fs, f"{s3_bucket}/out.jpg", b"written")
    assert s3_server.get_object(s3_bucket, "out.jpg") == b"written"
    assert fault_proxy.outage_faults == 6


def test_without_an_outage_wait_the_first_request_in_an_outage_fails(fault_proxy, s3_server, s3_bucket) -> None:
    s3_server.put_object(s3_bucket, "x.jpg", b"data")
    fs, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy, max_attempts=2, outage_wait_s=0))
    fault_proxy.outage_after("HEAD", r"/x\.jpg$", requests=3)
    with pytest.raises(StorageError, match=r"cannot connect .* tried 2 attempts \(AWS_MAX_ATTEMPTS\)\)$"):
        read_bytes(fs, f"{s3_bucket}/x.jpg")
    assert fault_proxy.outage_faults == 2


def test_an_outage_longer_than_the_wait_fails_with_an_error_that_says_so(fault_proxy, s3_server, s3_bucket) -> None:
    fs, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy, max_attempts=2, outage_wait_s=2))
    fault_proxy.outage_after("PUT", r"/out\.jpg$", 60.0, kind="slow_down")
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"kept asking to slow down .* after 2 attempts \(AWS_MAX_ATTEMPTS\), "
                                           r"tried again for 2 s \(--s3-outage-wait\);.*--s3-outage-wait"):
        write_bytes_atomic(fs, f"{s3_bucket}/out.jpg", b"written")
    assert 2.0 <= time.monotonic() - started < 30.0
    assert fault_proxy.outage_faults >= 4


def test_a_heartbeat_the_store_did_not_take_is_said_once_and_so_is_its_return(fault_proxy, s3_bucket,
                                                                              caplog) -> None:
    """On Ray the workers' warnings stay on the workers: the driver's lease heartbeat is what tells
    the user that the store went down, once however many beats fail, and that it came back. The
    store throttles 4 heartbeat PUTs in a row, two beats' worth of the SDK's 2 attempts."""
    output = Location.parse(f"s3://{s3_bucket}/out", _options(fault_proxy, max_attempts=2, outage_wait_s=120))
    lease = acquire_lease(ManifestStore.of(output), "run-a", heartbeat_s=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="dce_batch.job.manifest.lease"):
            fault_proxy.outage_after("PUT", r"/out/_manifest/_lease\.json$", requests=4, kind="slow_down")
            deadline = time.monotonic() + 60
            while "answers again" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        lease.release()
    messages = [record.getMessage() for record in caplog.records]
    assert fault_proxy.outage_faults == 4
    down = [m for m in messages if "did not take the lease's heartbeat" in m]
    assert down == ["the store holding OUTPUT did not take the lease's heartbeat (the store: throttled); the run "
                    "goes on, and its reads and writes wait up to 120 s for the store (--s3-outage-wait)"]
    assert len([m for m in messages if "answers again" in m]) == 1
    assert lease.lost is None


def test_a_request_the_store_refuses_for_its_own_reason_is_not_waited_on(fault_proxy, s3_server, s3_bucket) -> None:
    """No such key, access denied, rejected keys: final at once, whatever the outage wait."""
    fs, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy, outage_wait_s=600))
    started = time.monotonic()
    with pytest.raises(StorageError, match="missing.jpg: no such object: it was deleted or renamed after it was listed"):
        read_bytes(fs, f"{s3_bucket}/missing.jpg")
    assert time.monotonic() - started < 10.0


def test_a_refused_connection_is_told_apart_from_a_reset_one(fault_proxy, s3_server, s3_bucket) -> None:
    """What the start of a run fails fast on (no connection made), from real errors of both clients."""
    import botocore.exceptions

    from dce_batch.storage.aws import s3_client
    from dce_batch.storage.outages import never_connected

    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{held.getsockname()[1]}"
        refused, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy, endpoint_url=closed, max_attempts=1))
        with pytest.raises(OSError) as pyarrow_refused:
            refused.get_file_info(f"{s3_bucket}/x.jpg")
        with pytest.raises(botocore.exceptions.BotoCoreError) as botocore_refused:
            s3_client(_options(fault_proxy, endpoint_url=closed, max_attempts=1)).head_object(Bucket=s3_bucket, Key="x")
    fault_proxy.configure(fault_rate=1.0, kinds=("drop",))
    reset, _ = filesystem_for(f"s3://{s3_bucket}", _options(fault_proxy, max_attempts=1))
    with pytest.raises(OSError) as pyarrow_reset:
        reset.get_file_info(f"{s3_bucket}/x.jpg")
    with pytest.raises(botocore.exceptions.BotoCoreError) as botocore_reset:
        s3_client(_options(fault_proxy, max_attempts=1)).head_object(Bucket=s3_bucket, Key="x")
    assert never_connected(pyarrow_refused.value) and never_connected(botocore_refused.value)
    assert not never_connected(pyarrow_reset.value) and not never_connected(botocore_reset.value)
    wrapped = StorageError("cannot list")
    wrapped.__cause__ = botocore_refused.value
    assert never_connected(wrapped)


# --- the whole job at 20 % --------------------------------------------------------------------

N_IMAGES = 17
# A job makes only a handful of LIST requests: their first is always faulted, the rest drawn.
JOB_OPERATIONS = frozenset({"GET", "PUT", "LIST"})


def _put_inputs(s3_server, bucket: str) -> set[str]:
    uris = set()
    for i in range(N_IMAGES):
        fmt, ext = ("PNG", "png") if i % 3 == 0 else ("JPEG", "jpg")
        key = f"raw/day{i % 2}/img{i:02d}.{ext}"
        s3_server.put_object(bucket, key, _image_bytes(i, fmt, (40 + i, 56)))
        uris.add(f"s3://{bucket}/{key}")
    return uris


def _check_job_output(s3_server, bucket: str, inputs: set[str], options: S3Options) -> None:
    rows = read_manifest(f"s3://{bucket}/enhanced", s3=options).to_pylist()
    assert sorted(r["input_uri"] for r in rows) == sorted(inputs)  # every input exactly once
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows if r["status"] != "ok"]
    for row in rows:
        key = f"enhanced/{row['output_relpath']}"
        image = decode_image(s3_server.get_object(bucket, key))
        assert (image.width, image.height) == (row["width"], row["height"])


def _assert_faults_on_reads_writes_listings(proxy: FaultProxy) -> None:
    stats = proxy.stats()
    print(stats.summary())
    for operation in JOB_OPERATIONS:
        assert stats.faults_on(operation) > 0, f"no fault was injected on {operation}: {stats.summary()}"


@pytest.mark.ray
@pytest.mark.slow
def test_job_prefix_to_prefix_through_20_percent_faults(ray_local, fault_proxy, s3_server, s3_bucket) -> None:
    from dce_batch.job import EnhanceConfig, run_enhance

    inputs = _put_inputs(s3_server, s3_bucket)
    options = _options(fault_proxy)
    fault_proxy.configure(fault_rate=RATE, kinds=ALL_KINDS)
    fault_proxy.first_fault_on = JOB_OPERATIONS
    summary = run_enhance(EnhanceConfig(
        input=f"s3://{s3_bucket}/raw/", output=f"s3://{s3_bucket}/enhanced/", s3=options, batch_size=2,
        run_id="20250101T000000-faults", progress_interval_s=5.0, num_actors=(1, 1),  # one actor, as the CLI's below
    ))
    _assert_faults_on_reads_writes_listings(fault_proxy)
    fault_proxy.configure(fault_rate=0.0)
    assert (summary.ok, summary.error, summary.skipped) == (N_IMAGES, 0, 0)
    _check_job_output(s3_server, s3_bucket, inputs, options)


@pytest.mark.ray
@pytest.mark.slow
def test_cli_prefix_to_prefix_through_20_percent_faults(fault_proxy, s3_server, s3_bucket) -> None:
    inputs = _put_inputs(s3_server, s3_bucket)
    fault_proxy.configure(fault_rate=RATE, kinds=ALL_KINDS)
    fault_proxy.first_fault_on = JOB_OPERATIONS
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(s3_server.env())
    env["AWS_ENDPOINT_URL"] = fault_proxy.url
    # A Ray of its own: never attach to another cluster on this machine.
    with tempfile.TemporaryDirectory(prefix="dce-ray-", dir="/tmp") as ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
        result = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "enhance.py"), f"s3://{s3_bucket}/raw/",
             f"s3://{s3_bucket}/enhanced/", "--num-actors", "1", "--batch-size", "2"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_faults_on_reads_writes_listings(fault_proxy)
    fault_proxy.configure(fault_rate=0.0)
    _check_job_output(s3_server, s3_bucket, inputs, s3_server.s3_options())


def _run_cli_job(s3_server, bucket: str, endpoint: str, *options: str,
                 timeout: int = 600) -> subprocess.CompletedProcess:
    """``jobs/enhance.py s3://B/raw/ s3://B/enhanced/`` on the local engine, through ``endpoint``,
    with AWS_MAX_ATTEMPTS=2: a request in an outage fails its attempts within a second or two."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(s3_server.env())
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_MAX_ATTEMPTS="2")
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "enhance.py"), f"s3://{bucket}/raw/", f"s3://{bucket}/enhanced/",
         "--engine", "local", "--no-report", *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.slow
def test_cli_job_rides_out_a_storage_outage_that_outlasts_every_request_s_attempts(fault_proxy, s3_server,
                                                                                 s3_bucket) -> None:
    """The store goes down for 8 s at the job's first output write; with AWS_MAX_ATTEMPTS=2 every
    request in that window fails its attempts within a second. Without the outage wait that write
    stops the run (tests above show the request failing); with it the job finishes, exactly once."""
    inputs = _put_inputs(s3_server, s3_bucket)
    fault_proxy.outage_after("PUT", r"/enhanced/day\d/.*\.(jpg|png)$", 8.0)
    result = _run_cli_job(s3_server, s3_bucket, fault_proxy.url, "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert fault_proxy.outage_started.is_set() and fault_proxy.outage_faults > 0
    assert "trying again for up to 300 s (--s3-outage-wait)" in result.stderr
    _check_job_output(s3_server, s3_bucket, inputs, s3_server.s3_options())


@pytest.mark.slow
@pytest.mark.parametrize("method, pattern, request_name", [
    ("HEAD", r"/raw$", "checking INPUT"),  # the run's first request
    ("PUT", r"/enhanced/_manifest/_lease\.json$", "taking the lease of OUTPUT"),
])
def test_cli_job_waits_out_a_store_that_fails_as_the_run_starts(fault_proxy, s3_server, s3_bucket, method, pattern,
                                                                request_name) -> None:
    """503s for 3 requests in a row from the run's check of INPUT, or from the lease's create, on:
    one more than the SDK's 2 attempts. The store answers, so it is there: the request is tried
    again and the run finishes. The driver makes these requests one at a time, so the count is
    exact."""
    inputs = _put_inputs(s3_server, s3_bucket)
    fault_proxy.outage_after(method, pattern, requests=3, kind="slow_down")
    result = _run_cli_job(s3_server, s3_bucket, fault_proxy.url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert fault_proxy.outage_started.is_set() and fault_proxy.outage_faults > 2
    assert fault_proxy.outage_faults == 3
    assert request_name in result.stderr and "(the store: throttled)" in result.stderr
    _check_job_output(s3_server, s3_bucket, inputs, s3_server.s3_options())


@pytest.mark.slow
def test_cli_job_whose_lease_landed_but_every_answer_was_lost_takes_it_as_its_own(fault_proxy, s3_server,
                                                                                s3_bucket) -> None:
    """For 4 requests in a row from the lease's create on, the store carries out each request and
    then resets the connection: the create lands, its retries find the lease there (412) but never
    hear it, and the attempts run out (4: the 2 attempts, and the one resend botocore's HTTP
    client may make by itself after a reset of a reused connection, with a margin). Tried again
    after the wait, the run must know the lease for its own, not refuse OUTPUT as held by another
    run (itself)."""
    inputs = _put_inputs(s3_server, s3_bucket)
    fault_proxy.outage_after("PUT", r"/enhanced/_manifest/_lease\.json$", requests=4, kind="drop_after")
    result = _run_cli_job(s3_server, s3_bucket, fault_proxy.url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "taking the lease of OUTPUT" in result.stderr  # the create's attempts did run out
    _check_job_output(s3_server, s3_bucket, inputs, s3_server.s3_options())


def test_cli_job_against_an_endpoint_that_refuses_connections_fails_at_once(s3_server, s3_bucket) -> None:
    """A refused connection as the run starts is most often a wrong endpoint: exit 1 in seconds,
    not after the 300 s outage wait (the subprocess's own timeout would fail this test)."""
    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{held.getsockname()[1]}"
        result = _run_cli_job(s3_server, s3_bucket, endpoint, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"cannot connect to endpoint {endpoint}" in result.stderr.splitlines()[-1]
    assert "--s3-outage-wait" not in result.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_an_actor_killed_after_its_part_was_written_but_before_it_replied_leaves_no_row_twice(
        ray_local, fault_proxy, s3_server, s3_bucket) -> None:
    """The window between a worker's part landing in the bucket and the worker's reply: the proxy
    lets the first part PUT reach the server and holds its answer, the test kills that actor, and
    Ray runs the batch again on another one. The driver settles the dead actor's part before it
    commits (that part's only row was written again by the retry: the part goes), so every input
    has one row in the bucket's parts, once."""
    from dce_batch.job import EnhanceConfig, run_enhance

    inputs = _put_inputs(s3_server, s3_bucket)
    options = _options(fault_proxy)
    fault_proxy.hold("PUT", r"/enhanced/_manifest/part-[^/?]+-a\d+x[0-9a-f]{8}-\d{5}\.parquet")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = run_enhance(EnhanceConfig(
                input=f"s3://{s3_bucket}/raw/", output=f"s3://{s3_bucket}/enhanced/", s3=options, engine="ray",
                batch_size=1, part_flush_s=0.0, progress_interval_s=5.0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert fault_proxy.held.wait(300), outcome
        held_key = fault_proxy.held_path.split("?")[0].split(f"/{s3_bucket}/", 1)[1]
        pid = int(held_key.rsplit("-a", 1)[1].split("x")[0])
        os.kill(pid, signal.SIGKILL)  # exactly the actor whose PUT is held
        deadline = time.monotonic() + 60
        while alive({pid}) and time.monotonic() < deadline:  # dead before its PUT may be answered
            time.sleep(0.05)
        assert not alive({pid}), "the actor whose part upload is held did not die"
    finally:
        fault_proxy.release()
        thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in outcome, outcome
    summary = outcome["summary"]
    assert (summary.ok, summary.error) == (N_IMAGES, 0)
    parts = [k for k in s3_server.list_keys(s3_bucket, "enhanced/_manifest/") if k.rsplit("/", 1)[1].startswith("part-")]
    assert held_key not in parts, "the dead actor's part, whose one row the retry wrote again, was settled"
    rows = [r for key in parts for r in pq.read_table(pa.BufferReader(s3_server.get_object(s3_bucket, key)),
                                                      columns=["run_id", "input_uri"]).to_pylist()]
    assert sorted(r["input_uri"] for r in rows) == sorted(inputs), "every input once, in one part"
    _check_job_output(s3_server, s3_bucket, inputs, s3_server.s3_options())
