"""Object storage under faults: the highest fault rate the job survives, and the retry strategies.

Part 1, the job: for each fault rate, the CLI (``jobs/enhance.py s3://B/raw/ s3://B/enhanced/``,
AWS_* variables pointing at the proxy, a Ray of its own) enhances a prefix of small dark images
through tests/fault_proxy.py in front of moto_server. The proxy answers a seeded share of the
requests with 503 SlowDown, 500 InternalError, a reset before or after the server acted, or a
response cut off mid-body. Printed per rate: ok/error rows, exit status, requests, injected
faults, retries the proxy saw, wall time; then the highest rate with zero errors. With
``--outage-waits 0,300`` each rate runs once per ``--s3-outage-wait`` value, side by side.

Part 2, the retry strategies side by side: the same reads (HEAD + GET of distinct objects, 8
threads, one filesystem, as a read task does) through the proxy with (a) dce_batch's filesystem
(the AWS SDK's "default" strategy, 10 attempts), (b) pyarrow's ``AwsStandardS3RetryStrategy``
with 10 attempts, (c) pyarrow's default (standard, 3 attempts). Printed: failed reads, requests,
retries, wall time. (b) and (c) stop retrying once a filesystem has used 100 retries (pyarrow
never returns the standard strategy's retry tokens), which decides the choice of (a).

Part 3 (``--outages 20,60``): no random faults; the store resets every connection for that many
seconds from the job's first output write, once per ``--s3-outage-wait`` value.

Needs the test extra (moto). Run from the repository root with the project's environment:
``python benchmarks/bench_s3_faults.py`` (about 6 min on 2 shared cores), ``--quick`` (20 and
40 %, fewer reads, about 2 min).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from _common import REPO, LoadMonitor, dark_image, foreign_load_now, hardware_line, table  # noqa: E402

KINDS = ("slow_down", "internal_error", "drop", "drop_after", "truncate")


def _start_moto(workdir: Path):
    from tests.s3_server import S3Server, _start

    process, url = _start(workdir / "moto_server.log")
    return process, S3Server(endpoint_url=url)


def _jpeg(seed: int, size: tuple[int, int] = (96, 128)) -> bytes:
    from PIL import Image

    pixels = (dark_image(*size, seed=seed) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def run_job(server, rate: float, images: int, seed: int, outage_wait: float | None = None,
            outage_s: float = 0.0) -> list[str]:
    """One CLI run through the proxy at ``rate`` (``--s3-outage-wait outage_wait`` unless None; the
    store down for ``outage_s`` seconds from the first output write); returns a table row."""
    from dce_batch.job.manifest import read_manifest
    from tests.fault_proxy import FaultProxy, normalise_names

    bucket = server.make_bucket(f"bench-{uuid.uuid4().hex[:12]}")
    for i in range(images):
        server.put_object(bucket, f"raw/day{i % 2}/img{i:03d}.jpg", _jpeg(i))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(server.env())
    with FaultProxy(server.endpoint_url, fault_rate=rate, kinds=KINDS, seed=seed,
                    normalise=normalise_names) as proxy, \
            tempfile.TemporaryDirectory(prefix="dce-ray-", dir="/tmp") as ray_tmp:
        env.update(AWS_ENDPOINT_URL=proxy.url, RAY_TMPDIR=ray_tmp)
        if outage_s > 0:
            proxy.outage_after("PUT", r"/enhanced/day\d/", outage_s)
        wait = [] if outage_wait is None else ["--s3-outage-wait", f"{outage_wait:g}"]
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "enhance.py"), f"s3://{bucket}/raw/", f"s3://{bucket}/enhanced/",
             "--num-actors", "1", "--batch-size", "2", *wait],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
        )
        wall = time.perf_counter() - started
        stats = proxy.stats()
    try:
        statuses = read_manifest(f"s3://{bucket}/enhanced", s3=server.s3_options()).column("status").to_pylist()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
        statuses = []
        print(f"  manifest unreadable at {rate:.0%}: {exc}", flush=True)
    ok, errors = statuses.count("ok"), statuses.count("error")
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        print(f"  exit {result.returncode} at {rate:.0%}: " + " | ".join(tail)[-600:], flush=True)
    return [f"{rate:.0%}", "default" if outage_wait is None else f"{outage_wait:g}", f"{outage_s:g}", str(ok),
            str(errors), str(images - ok - errors), str(result.returncode),
            str(stats.total_requests), str(stats.total_faults), str(stats.total_retries), f"{wall:.1f}"]


JOB_COLUMNS = ["fault rate", "--s3-outage-wait", "outage s", "ok", "error", "missing", "exit", "requests", "faults",
               "retries", "wall s"]

STRATEGIES = ("dce_batch (SDK default strategy, 10 attempts)", "pyarrow standard strategy, 10 attempts",
              "pyarrow default (standard, 3 attempts)")


def _filesystems(proxy_url: str):
    import pyarrow.fs as pafs

    from dce_batch.storage import S3Options, filesystem_for

    common = dict(endpoint_override=proxy_url.removeprefix("http://"), scheme="http", region="us-east-1",
                  access_key="testing", secret_key="testing", allow_delayed_open=True,
                  connect_timeout=10, request_timeout=30)
    # The SDK's strategies alone: no outage wait (:mod:`dce_batch.storage.outages`) on top of ours.
    ours, _ = filesystem_for("s3://x", S3Options(endpoint_url=proxy_url, region="us-east-1", access_key="testing",
                                                 secret_key="testing", outage_wait_s=0))
    return dict(zip(STRATEGIES, (
        ours,
        pafs.S3FileSystem(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=10), **common),
        pafs.S3FileSystem(**common),
    )))


def run_reads(server, rate: float, reads: int, seed: int) -> list[list[str]]:
    """The same reads through each retry strategy at ``rate``; one row each."""
    from dce_batch.storage import read_bytes
    from tests.fault_proxy import FaultProxy, normalise_names

    bucket = server.make_bucket(f"reads-{uuid.uuid4().hex[:12]}")
    payload = os.urandom(2048)  # larger than an S3 error body: see dce_batch/storage/io.py
    for i in range(reads):
        server.put_object(bucket, f"r/{i:04d}.jpg", payload + b"%d" % i)
    rows = []
    for name in STRATEGIES:
        # A new proxy per strategy: each sees the same requests fail (same seed, same keys).
        with FaultProxy(server.endpoint_url, fault_rate=rate, kinds=KINDS, seed=seed,
                        normalise=normalise_names) as proxy:
            fs = _filesystems(proxy.url)[name]

            def read(i: int) -> bool:
                try:
                    return read_bytes(fs, f"{bucket}/r/{i:04d}.jpg") == payload + b"%d" % i
                except Exception:  # noqa: BLE001 - counted as a failed read
                    return False

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                results = list(pool.map(read, range(reads)))
            wall = time.perf_counter() - started
            stats = proxy.stats()
        rows.append([f"{rate:.0%}", name, str(results.count(False)), str(stats.total_requests),
                     str(stats.total_faults), str(stats.total_retries), f"{wall:.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10,20,30,40,50", help="fault rates in %% (default: %(default)s)")
    parser.add_argument("--outage-waits", default="",
                        help="--s3-outage-wait values to run each job row with, side by side, e.g. 0,300 "
                             "(default: the job's default only)")
    parser.add_argument("--outages", default="",
                        help="part 3: outages of these many seconds from the first output write, no random faults, "
                             "e.g. 20,60 (default: none)")
    parser.add_argument("--images", type=int, default=17, help="images per job run (default: %(default)s)")
    parser.add_argument("--reads", type=int, default=200,
                        help="reads per strategy in part 2; 0 skips part 2 (default: %(default)s)")
    parser.add_argument("--read-rates", default="10,30,50", help="fault rates of part 2 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="job at 20 and 40 %%, 100 reads at 30 %%")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.read_rates, args.reads = "20,40", "30", 100
    rates = [float(r) / 100 for r in args.rates.split(",") if r.strip()]
    waits = [float(w) for w in args.outage_waits.split(",") if w.strip()] or [None]
    outages = [float(o) for o in args.outages.split(",") if o.strip()]
    read_rates = [float(r) / 100 for r in args.read_rates.split(",")]

    print(hardware_line("n/a (storage benchmark)"), flush=True)
    print(foreign_load_now(), flush=True)
    monitor = LoadMonitor()
    with tempfile.TemporaryDirectory() as workdir:
        process, server = _start_moto(Path(workdir))
        try:
            print(f"\nPart 1: the job ({args.images} images of 128x96, CLI, 1 actor) through the proxy; "
                  f"faults {', '.join(KINDS)}; seed {args.seed}", flush=True)
            job_rows = []
            for rate in rates:
                for wait in waits:
                    job_rows.append(run_job(server, rate, args.images, args.seed, wait))
                    print("  " + " ".join(job_rows[-1]), flush=True)
            print(table(JOB_COLUMNS, job_rows))
            for wait in waits:
                rows = [row for row in job_rows if row[1] == ("default" if wait is None else f"{wait:g}")]
                survived = [row[0] for row in rows if row[3] == str(args.images) and row[6] == "0"]
                print(f"--s3-outage-wait {rows[0][1]}: highest fault rate survived with every input ok and exit 0: "
                      f"{survived[-1] if survived else 'none'}"
                      + ("" if len(survived) == len(rows) or not survived
                         else f" (failed at: {', '.join(r[0] for r in rows if r[0] not in survived)})"))

            if outages:
                print("\nPart 3: the store down (connections reset) from the first output write, for each outage "
                      "and --s3-outage-wait; no other faults", flush=True)
                outage_rows = []
                for outage_s in outages:
                    for wait in waits:
                        outage_rows.append(run_job(server, 0.0, args.images, args.seed, wait, outage_s))
                        print("  " + " ".join(outage_rows[-1]), flush=True)
                print(table(JOB_COLUMNS, outage_rows))

            if args.reads <= 0:
                read_rates = []
            else:
                print(f"\nPart 2: {args.reads} reads (HEAD + GET) per strategy, 8 threads, one filesystem each",
                      flush=True)
            read_rows = []
            for rate in read_rates:
                read_rows.extend(run_reads(server, rate, args.reads, args.seed))
            if read_rows:
                print(table(["fault rate", "retry strategy", "failed reads", "requests", "faults", "retries",
                             "wall s"], read_rows))
            for rate in read_rates:
                rows = [r for r in read_rows if r[0] == f"{rate:.0%}"]
                ours = float(rows[0][6])
                print(f"at {rate:.0%}: failed reads " + " / ".join(r[2] for r in rows)
                      + "; wall time vs dce_batch " + " / ".join(f"{float(r[6]) / max(ours, 1e-9):.2f}x" for r in rows))
        finally:
            process.terminate()
            process.wait(timeout=10)
    monitor.stop()
    print(monitor.line())


if __name__ == "__main__":
    main()
