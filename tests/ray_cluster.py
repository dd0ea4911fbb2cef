"""Real Ray clusters for tests: an in-process local cluster, and a `ray start --head` node.

* ``ray_local`` (session): ``ray.init(address="local")`` with 2 CPUs, shared by the tests that
  run the Ray layers in-process. ``address="local"`` never attaches to another cluster that
  happens to be running on the machine.
* ``ray_head`` (module): a separate head node started with ``ray start --head`` in its own
  temp dir on free ports outside Ray's worker port range (10002-19999), for
  ``ray job submit`` tests. Token authentication is switched on explicitly, with a token of its
  own in a file (``RAY_AUTH_TOKEN_PATH``), as a user sets up a cluster: whether Ray turns it on
  by default, and whether ``~/.ray/auth_token`` exists, differ between machines. It is stopped
  by killing exactly the processes that belong to its temp dir (a bare ``ray stop`` would kill
  every Ray process on the host), once the module that uses it is done: idle, its 18 processes
  take about 2 CPU-seconds every 30 s from the tests after it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY_BIN = str(Path(sys.executable).with_name("ray"))
# Test-only Ray Train settings. Its controller checks on its workers every 2 s by default, so each
# tiny training run in the tests ends up to 2 s after its workers do: poll faster. And no
# preemption watcher: an actor of its own for every start of a worker group (a process importing
# Ray, about 3 CPU-seconds a run, measured) to watch for node drains, which a test cluster never has.
FAST_RAY_TRAIN = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                  "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@pytest.fixture(scope="session")
def ray_local():
    import ray

    for name, value in FAST_RAY_TRAIN.items():
        os.environ.setdefault(name, value)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


_ISSUED_PORTS: set[int] = set()
_PORT_RANGE = range(20000, 32768)
_PORT_SLICES = 8  # pytest-xdist workers gw0 .. gw7 draw from slices of their own


def _free_port() -> int:
    """A port free now, from 20000-32767, never one this process gave out before. Outside Ray's
    worker range (10002-19999), and below the range the system hands to sockets bound to port 0
    (32768-60999 on Linux): Ray's own processes open such sockets as a head starts, and one of
    them can take a port of that range before the component it was chosen for binds it. Each
    xdist worker draws from a slice of its own (two heads starting at once in two workers could
    otherwise pick one port, both free when checked), with the system's randomness (a test that
    seeds ``random`` would make both workers draw the same ports)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) % _PORT_SLICES if worker[2:].isdigit() else 0
    size = len(_PORT_RANGE) // _PORT_SLICES
    while True:
        port = _PORT_RANGE.start + index * size + secrets.randbelow(size)
        if port in _ISSUED_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _ISSUED_PORTS.add(port)
        return port


@dataclass
class RayHead:
    address: str  # http://127.0.0.1:<dashboard port>, what `ray job submit --address` takes
    temp_dir: str
    token_path: str  # the cluster's auth token, as `ray get-auth-token --generate` would keep it

    def env(self) -> dict[str, str]:
        """Environment for `ray job submit` as a user of this cluster sets it: token auth, its token."""
        env = dict(os.environ)
        env.pop("RAY_AUTH_TOKEN", None)  # the token comes from the cluster's file, not the caller's
        env.update(_auth_env(self.token_path))
        env["RAY_ADDRESS"] = self.address
        return env


def _auth_env(token_path: str) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path}


def processes_of(temp_dir: str, *, with_environment: bool = False) -> list[int]:
    """PIDs of the live processes of the cluster in ``temp_dir``: those whose command line names it
    (``--temp-dir``) and their descendants; ``with_environment``, also those whose environment sets
    ``RAY_TMPDIR`` to it. Ray's dashboard and runtime-env agents rename themselves, and outlive a
    raylet killed with its driver: only their environment still names the cluster."""
    marker, env_marker = temp_dir.encode(), f"RAY_TMPDIR={temp_dir}".encode()
    found: set[int] = set()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes()
            parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        environ = b""
        if with_environment:
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                pass
        if marker in cmdline or (with_environment and env_marker in environ.split(b"\0")):
            found.add(pid)
    found.discard(os.getpid())  # a test process that exported the variable is not the cluster's
    grew = True
    while grew:  # descendants of what was found
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found and pid != os.getpid():
                found.add(pid)
                grew = True
    return sorted(found)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def ray_tmp():
    """A short private Ray temp dir for a CLI subprocess (its own local cluster), cleaned after.

    Short: Ray's socket paths must fit in 107 bytes. The processes of that cluster are found by
    their temp dir and stopped exactly, never by name.
    """
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    stop_processes_of(path)
    shutil.rmtree(path, ignore_errors=True)


def cli_env(ray_tmp: str) -> dict[str, str]:
    """Environment for a CLI subprocess: its own local cluster in ``ray_tmp`` (not one the
    environment names), and this checkout's dce_batch first on the path."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_TMPDIR"] = ray_tmp
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def alive(pids) -> set[int]:
    """Those of ``pids`` still running (a zombie, killed and not yet reaped by its parent, is not)."""
    running = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


def descendants(pid: int, *, generation: int | None = None) -> set[int]:
    """Live processes below ``pid`` (a local pool's fork server and workers, or Ray's); with
    ``generation``, only those that many levels below (1: children, 2: grandchildren)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    level, depth = [pid], 0
    while level and (generation is None or depth < generation):
        level = [child for parent in level for child in children.get(parent, [])]
        depth += 1
        if generation is None or depth == generation:
            found.update(level)
    return found


_AGENTS = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")


def writers_of(temp_dir: str) -> list[int]:
    """The cluster's processes that could still write into a job's OUTPUT: all of them but Ray's
    agents, which serve the dashboard and runtime environments and outlive a killed raylet. Ray's
    workers rename themselves (``ray::...``) and are re-parented when their raylet dies: only
    their environment names the cluster."""
    writers = []
    for pid in processes_of(temp_dir, with_environment=True):
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(_AGENTS):
                writers.append(pid)
        except OSError:
            continue
    return writers


def stop_processes_of(temp_dir: str, wait_s: float = 1.0) -> None:
    """Stop exactly the processes of the cluster in ``temp_dir``: SIGTERM, then SIGKILL for what is
    left after ``wait_s`` (a test's cluster has nothing to save). Some of Ray's processes never end
    on SIGTERM (the workers of a raylet that is gone, busy reconnecting): waiting longer for them
    only made every teardown that found them 2 s longer."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_of(temp_dir, with_environment=True):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while processes_of(temp_dir, with_environment=True) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    token_dir = tempfile.mkdtemp(prefix="rayhead-token-")
    token_path = os.path.join(token_dir, "auth_token")
    with open(os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secrets.token_hex(32))
    dashboard_port = _free_port()
    command = [
        RAY_BIN, "start", "--head", f"--temp-dir={temp_dir}", f"--port={_free_port()}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}", f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}", "--num-cpus=2", "--disable-usage-stats",
    ]
    # A job's entrypoint (`python jobs/...`) runs with the head's PATH: put this interpreter's
    # folder first, as an activated virtual environment does, so that it also works when the
    # suite runs as `.venv/bin/python -m pytest` without activating.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    environment = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_TOKEN"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**FAST_RAY_TRAIN, **environment, "PATH": path, **_auth_env(token_path)})
    head = RayHead(address=f"http://127.0.0.1:{dashboard_port}", temp_dir=temp_dir, token_path=token_path)
    try:
        assert result.returncode == 0, f"ray start failed:\n{result.stdout}\n{result.stderr}"
        deadline = time.monotonic() + 60
        while True:  # the job API answers once the dashboard is up
            try:
                urllib.request.urlopen(f"{head.address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # 401 without the token: it is up and guarded
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield head
    finally:
        stop_processes_of(temp_dir)
        shutil.rmtree(token_dir, ignore_errors=True)
