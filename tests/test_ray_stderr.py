"""Ray's C++ log lines on the driver's standard error: which are held back, and the fd 2 filter.

No Ray here: the lines are written to file descriptor 2 by a subprocess, as Ray's core worker
writes them. The end-to-end checks (a quiet Ray run prints no such line) are in test_cli.py's
Ray run and test_readme.py's training block.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dce_batch.ray_stderr import is_benign, is_core_log_line

REPO = Path(__file__).resolve().parents[1]
STAMP = "[2026-01-02 10:11:12,345 {level} 5220 5231] {where}: {text}"
CONSTRUCTOR_LINE = STAMP.format(
    level="E", where="core_worker.cc:2465",
    text="Actor with class name: 'MapWorker(MapBatches(EnhanceActor))' and ID: 'e5b7b65bf8093564e776f1ec01000000' "
         "has constructor arguments in the object store and max_restarts > 0. If the arguments in the object "
         "store go out of scope or are lost, the actor restart will fail. See "
         "https://github.com/ray-project/ray/issues/53727 for more details.")


@pytest.mark.parametrize("line, benign", [
    (CONSTRUCTOR_LINE, True),
    (STAMP.format(level="I", where="logging.cc:303",
                  text="Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL to 3"), True),
    (STAMP.format(level="W", where="core_worker_process.cc:12", text="a warning"), True),
    (STAMP.format(level="D", where="a/b_c.cc:1", text="debug"), True),
    (STAMP.format(level="E", where="raylet_client.cc:90", text="Failed to connect to the raylet"), False),
    (STAMP.format(level="C", where="task_manager.cc:77", text="Check failed: x"), False),  # FATAL
    ("*** StackTrace Information ***", False),  # what follows a fatal line
    # The same text outside Ray's C++ format (a user's print, a Python log record) is not Ray's line.
    ("has constructor arguments in the object store and max_restarts > 0", False),
    ("2026-01-02 10:11:12,345\tWARNING worker.py:1 -- a Python warning", False),
    ("[dce-batch enhance] started a local Ray with 2 CPUs", False),
    ("", False),
])
def test_which_lines_are_benign(line, benign):
    assert is_benign(line) is benign


def test_core_log_line_format():
    assert is_core_log_line(CONSTRUCTOR_LINE)
    assert is_core_log_line(STAMP.format(level="E", where="x.cc:1", text="y"))
    assert not is_core_log_line("[2026-01-02 10:11:12 E 1 2] x.cc:1: no milliseconds")
    assert not is_core_log_line("5/5 images (100%), 0 errors, 0.32 images/s, elapsed 15s, ETA 0s")


_SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, time
    from dce_batch.ray_stderr import FilteredStderr

    def line(level, text):
        return f"[2026-01-02 10:11:12,345 {level} 1 2] x.cc:1: {text}\\n".encode()

    f = FilteredStderr(drain_s=float(sys.argv[1])).start()
    os.write(2, line("I", "DROPPED-info"))
    os.write(2, sys.argv[2].encode() + b"\\n")  # the constructor-arguments line
    os.write(2, line("E", "KEPT-error") + line("C", "KEPT-fatal") + b"KEPT-stack\\n")
    os.write(2, b"KEPT-partial ")  # a line in pieces, neither a C++ line
    os.write(2, b"KEPT-rest\\n")
    os.write(2, line("W", "DROPPED-split")[:20])  # a C++ line in pieces
    os.write(2, line("W", "DROPPED-split")[20:])
    print("KEPT-python", file=sys.stderr)
    # Started while filtering: inherits the pipe. One child writes now, one after stop().
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'[2026-01-02 10:11:12,345 W 1 2] c.cc:1: "
                    "DROPPED-child\\\\nKEPT-child\\\\n')"], check=True)
    late = subprocess.Popen([sys.executable, "-c", "import os, time; time.sleep(5); os.write(2, b'KEPT-late\\\\n')"])
    forwarder = f._thread
    started = time.monotonic()
    f.stop()
    print(f"STOP-TOOK {time.monotonic() - started:.2f}", flush=True)
    os.write(2, line("I", "KEPT-after-stop"))  # the filter is off
    late.wait()
    forwarder.join(timeout=60)  # the pipe's last writer is gone: the thread passes on the rest and ends
""")


def test_the_filter_drops_benign_core_lines_and_passes_on_the_rest(tmp_path):
    script = tmp_path / "filter.py"
    script.write_text(_SCRIPT)
    done = subprocess.run([sys.executable, str(script), "0.5", CONSTRUCTOR_LINE], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert not [line for line in lines if "DROPPED" in line or "constructor arguments" in line], lines
    expected = {"KEPT-stack", "KEPT-partial KEPT-rest", "KEPT-python", "KEPT-child", "KEPT-late"}
    assert expected <= set(lines), lines
    assert [line for line in lines if "KEPT-error" in line or "KEPT-fatal" in line or "KEPT-after-stop" in line] == [
        f"[2026-01-02 10:11:12,345 {level} 1 2] x.cc:1: {text}"
        for level, text in (("E", "KEPT-error"), ("C", "KEPT-fatal"), ("I", "KEPT-after-stop"))], lines
    # stop() does not wait for the late child (5 s), which still holds the pipe: it waits drain_s.
    took = float(done.stdout.split("STOP-TOOK")[1].split()[0])
    assert took < 4, took


def test_python_stderr_stays_a_terminal_while_filtering(tmp_path):
    """Python's own writes bypass the pipe, so a live progress bar still sees a tty."""
    script = tmp_path / "tty.py"
    script.write_text(textwrap.dedent("""
        import sys
        from dce_batch.ray_stderr import FilteredStderr

        before = sys.stderr
        with FilteredStderr():
            print(sys.stderr.isatty(), sys.stderr is before, flush=True)
        print(sys.stderr is before, flush=True)
    """))
    master, slave = pty.openpty()
    try:
        done = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=slave, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == 0
    assert done.stdout.split() == ["True", "False", "True"]
