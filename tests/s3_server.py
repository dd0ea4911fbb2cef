"""A real S3 endpoint for tests: ``moto_server`` on 127.0.0.1, never an in-process mock.

Using a real HTTP server exercises what production does — pyarrow's C++ S3 client, request
signing, path-style addressing against a custom endpoint, credentials carried inside a pickled
filesystem — which an in-process mock of boto3 would not.

Fixtures:

* ``s3_server`` (session): the running server; see :class:`S3Server`.
* ``s3_bucket`` (function): a fresh, uniquely named, empty bucket on it.
* ``s3_auth_server`` (session): a second moto_server that *checks* credentials (IAM users,
  signatures, policies), for tests that must prove which credentials a node used.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_STARTUP_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0


@dataclass
class S3Server:
    """Connection details of the running moto_server, plus small helpers."""

    endpoint_url: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    _client: object | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """AWS_* variables pointing a subprocess (e.g. the CLI) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            # Never wait for the EC2 instance-metadata service on a laptop or CI runner.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def s3_options(self):
        """:class:`dce_batch.storage.S3Options` for this server."""
        from dce_batch.storage import S3Options

        return S3Options(
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
        )

    def client(self):
        """A boto3 S3 client for this server (cached)."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name=self.region,
            )
        return self._client

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` and return its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        """Upload ``data`` as ``s3://bucket/key``."""
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def get_object(self, bucket: str, key: str) -> bytes:
        """Download ``s3://bucket/key``."""
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def create_user(self, name: str) -> tuple[str, str]:
        """A new IAM user allowed everything; returns its (access key, secret key)."""
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                           aws_secret_access_key=self.secret_key, region_name=self.region)
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """All keys under ``prefix``, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)


def _free_port() -> int:
    """A port that was free a moment ago (the server is retried if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(port: int) -> list[str]:
    """The moto_server console script of this interpreter's environment, else ``-m moto.server``."""
    script = Path(sys.executable).with_name("moto_server")
    if not script.exists():
        found = shutil.which("moto_server")
        script = Path(found) if found else None
    if script is not None:
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:  # any HTTP answer means it is up
        return exc.code < 500
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    """Terminate, then kill if it does not go within a few seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_STOP_TIMEOUT_S)


def _start(log_path: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start moto_server on a free port and wait until it answers HTTP."""
    last_log = ""
    for _attempt in range(3):  # the free port may be grabbed between probing and binding
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(extra_env or {})
        with open(log_path, "wb") as log:
            # Output goes to a file: a pipe nobody reads would eventually block the server.
            process = subprocess.Popen(
                _server_command(port), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(url + "/moto-api/"):
                return process, url
            time.sleep(0.1)
        _stop(process)
        last_log = log_path.read_text(errors="replace")[-2000:]
    pytest.fail(f"moto_server did not start on 127.0.0.1 (log {log_path}):\n{last_log}")


def _require_moto() -> None:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        # Not a skip: the test extra installs it, so its absence is a broken install that
        # would otherwise silently hide every S3 test.
        pytest.fail(
            "moto[server] is not installed, so the S3 tests cannot run; "
            "install the test extra: pip install -e '.[test]'"
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 endpoint (moto_server) for the whole test session."""
    _require_moto()
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    process, url = _start(log_path)
    try:
        yield S3Server(endpoint_url=url)
    finally:
        _stop(process)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket with a unique name on ``s3_server``."""
    return s3_server.make_bucket(f"test-{uuid.uuid4().hex[:16]}")


# Requests moto serves before it starts checking credentials: the three that create the admin.
_BOOTSTRAP_REQUESTS = 3


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto_server that rejects unknown keys, bad signatures and missing credentials.

    Its ``access_key`` / ``secret_key`` are an admin IAM user's (any other keys are refused);
    :meth:`S3Server.create_user` makes more.
    """
    _require_moto()
    log_path = tmp_path_factory.mktemp("moto_auth") / "moto_server.log"
    process, url = _start(log_path, {"INITIAL_NO_AUTH_ACTION_COUNT": str(_BOOTSTRAP_REQUESTS)})
    try:
        admin = S3Server(endpoint_url=url)
        access_key, secret_key = admin.create_user("admin")  # the bootstrap requests
        yield S3Server(endpoint_url=url, access_key=access_key, secret_key=secret_key)
    finally:
        _stop(process)
