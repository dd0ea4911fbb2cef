"""Driver progress: a live bar on a real pseudo-terminal, plain lines on a pipe, quiet mode,
and Ray's own output kept away unless verbose (checked on a real local Ray in a subprocess)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import threading

import pyarrow as pa
import pytest

from dce_batch.job.manifest.summary import RunSummary
from dce_batch.job.progress import Progress, format_duration
from dce_batch.ray_logging import quiet_ray


class FakeClock:
    """Monotonic seconds that tests advance by hand: no sleeps, no timing races."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _batch(statuses: list[str]) -> pa.Table:
    return pa.table({
        "input_uri": [f"in/{i}.jpg" for i in range(len(statuses))],
        "status": statuses,
        "error": [("CorruptImageError: damaged" if s == "error" else None) for s in statuses],
    })


def test_pipe_gets_periodic_plain_lines_with_rate_errors_and_eta():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(100, interval_s=10, stream=stream, clock=clock)
    assert not progress.interactive  # a StringIO is no terminal
    progress.update(10)
    clock.now += 5
    progress.update(10, errors=1)
    assert stream.getvalue() == ""  # less than interval_s since the start: no line yet
    clock.now += 5
    progress.update(20, errors=1)  # 40 done after 10 s
    lines = stream.getvalue().splitlines()
    assert lines == ["40/100 images (40%), 2 errors, 4.00 images/s, elapsed 10s, ETA 15s"]
    clock.now += 3
    progress.update(10)
    assert len(stream.getvalue().splitlines()) == 1  # next line only after another interval
    clock.now += 7
    progress.update_batch(_batch(["ok"] * 49 + ["error"]))
    clock.now += 1
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "error: in/49.jpg: CorruptImageError: damaged" in lines
    assert lines[-1] == "100/100 images (100%), 3 errors, 4.76 images/s, elapsed 21s, ETA 0s"
    progress.close()  # idempotent
    assert stream.getvalue().splitlines()[-1] == lines[-1]


def _manifest_batch(statuses: list[str]) -> pa.Table:
    """Rows as the workers return them, with what the run summary counts."""
    return _batch(statuses).append_column("bytes_in", pa.array([100] * len(statuses))) \
        .append_column("bytes_out", pa.array([200] * len(statuses))) \
        .append_column("width", pa.array([640] * len(statuses), pa.int32())) \
        .append_column("height", pa.array([480] * len(statuses), pa.int32())) \
        .append_column("precision", pa.array(["int8"] * len(statuses)))


def _summary_rate(summary: RunSummary) -> str:
    line = next(line for line in summary.table().splitlines() if line.strip().startswith("throughput"))
    return line.split()[1]


@pytest.mark.parametrize("interactive", [False, True], ids=["plain", "terminal"])
def test_the_closing_line_and_the_summary_say_the_same_images_per_second(interactive):
    """One interval for both: from the run's start (before the bar existed) to the last image; the
    summary counts what the workers did, not what planning skipped or refused."""
    clock = FakeClock()
    started = clock.now
    clock.now += 4  # planning and starting the workers, before the progress exists
    summary = RunSummary(run_id="r", input="in", output="out", started_at="")
    refused = _manifest_batch(["error"] * 2)  # written at planning: counted as errors, not as work
    summary.add(refused)
    summary.refused = 2
    summary.add(_manifest_batch(["skipped"] * 5))
    master, slave = pty.openpty()
    received = bytearray()
    reader = threading.Thread(target=_read_all, args=(master, received), daemon=True)
    reader.start()
    with os.fdopen(slave, "w", buffering=1) as terminal:
        stream = terminal if interactive else io.StringIO()
        progress = Progress(30, stream=stream, clock=clock, started=started, interval_s=1000, refresh_s=0)
        assert progress.interactive is interactive
        for statuses in (["ok"] * 10, ["ok"] * 9 + ["error"], ["ok"] * 10):
            clock.now += 2.3
            batch = _manifest_batch(statuses)
            summary.add(batch)
            progress.update_batch(batch)
        clock.now += 0.5
        progress.close()
        clock.now += 3  # committing: after the last image, in neither figure
        summary.finish(progress.elapsed_s)
        plain = stream.getvalue() if not interactive else ""
    reader.join(timeout=10)
    os.close(master)
    assert summary.elapsed_s == pytest.approx(4 + 3 * 2.3 + 0.5) and _summary_rate(summary) == "2.63"
    if interactive:
        final = received.decode(errors="replace").replace("\r\n", "\n").split("\r")[-1]
        assert re.search(r"30/30 \[[^\]]*, *" + re.escape(_summary_rate(summary)) + r"img/s", final), final
    else:
        assert f", {_summary_rate(summary)} images/s," in plain.splitlines()[-1], plain


def test_quiet_prints_only_errors_and_caps_them():
    clock, stream = FakeClock(), io.StringIO()
    with Progress(50, quiet=True, interval_s=1, stream=stream, clock=clock, max_error_lines=3) as progress:
        for _ in range(5):
            clock.now += 10
            progress.update_batch(_batch(["ok", "error"]))
    lines = stream.getvalue().splitlines()
    assert lines[:3] == ["error: in/1.jpg: CorruptImageError: damaged"] * 3
    assert len(lines) == 4 and "the manifest lists every one" in lines[3]
    assert progress.done == 10 and progress.errors == 5


def test_quiet_wins_over_a_terminal():
    progress = Progress(3, quiet=True, interactive=True, stream=io.StringIO())
    assert not progress.interactive
    progress.close()


def test_bad_counts_are_refused():
    progress = Progress(3, stream=io.StringIO())
    with pytest.raises(ValueError):
        progress.update(1, errors=2)
    with pytest.raises(ValueError):
        Progress(-1)


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 75, 3700, float("nan"), -1)] == \
        ["0s", "59s", "1m15s", "1h01m", "?", "?"]


def _read_all(fd: int, sink: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the slave side is closed
            return
        if not chunk:
            return
        sink.extend(chunk)


@pytest.mark.parametrize("columns", [100, 0], ids=["sized", "zero-width"])
def test_terminal_gets_a_live_tqdm_bar(columns):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    received = bytearray()
    reader = threading.Thread(target=_read_all, args=(master, received), daemon=True)
    reader.start()
    with os.fdopen(slave, "w", buffering=1) as terminal:
        assert terminal.isatty()
        progress = Progress(8, stream=terminal, refresh_s=0)  # interactive decided from isatty()
        assert progress.interactive
        progress.update_batch(_batch(["ok", "ok", "error", "ok"]))
        progress.update(4)
        progress.close()
    reader.join(timeout=10)
    os.close(master)
    text = received.decode(errors="replace")
    # tqdm redraws the line in place with carriage returns: a live bar, not a log of lines.
    assert "\r" in text
    assert "error: in/2.jpg: CorruptImageError: damaged" in text
    final = text.replace("\r\n", "\n").split("\r")[-1]
    assert re.search(r"8/8 \[", final), final  # done/total
    assert "img/s" in final and "1 error" in final  # rate and errors
    assert re.search(r"4/8 \[[^\]]*<", text), text  # an ETA while running: elapsed<remaining


def test_quiet_ray_settings():
    quiet, verbose = quiet_ray(False), quiet_ray(True)
    assert quiet.init_kwargs["log_to_driver"] is False and quiet.data_context["enable_progress_bars"] is False
    assert verbose.init_kwargs["log_to_driver"] is True and not verbose.data_context


_RAY_SCRIPT = textwrap.dedent("""
    import sys
    from dce_batch.ray_logging import quiet_ray

    settings = quiet_ray(sys.argv[1] == "verbose")
    settings.apply()
    import ray
    ray.init(address="local", num_cpus=1, include_dashboard=False, **settings.init_kwargs)

    def shout(batch):
        print("WORKER-SAYS-HELLO", flush=True)
        return batch

    rows = ray.data.range(8, override_num_blocks=2).map_batches(shout).take_all()
    ray.shutdown()
    print(f"ROWS {len(rows)}", file=sys.stderr)
""")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_ray_output_is_kept_away_unless_verbose(mode, tmp_path):
    """A real local Ray and Ray Data job: quiet leaves no INFO lines, worker prints or progress bars."""
    script = tmp_path / "job.py"
    script.write_text(_RAY_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "ROWS 8" in output
    noise = [line for line in output.splitlines()
             if re.search(r"\sINFO\s", line) or "WORKER-SAYS-HELLO" in line or "Running Dataset" in line]
    if mode == "quiet":
        assert noise == [], "\n".join(noise)
    else:
        # (Worker prints reach the driver asynchronously, so only the driver's own lines are
        # certain to be there before shutdown.)
        assert any("Started a local Ray instance" in line for line in noise), output[-3000:]
        assert any(re.search(r"\sINFO\s", line) for line in noise), output[-3000:]


def test_quiet_then_verbose_in_one_process_restores_ray_data_logging(monkeypatch):
    """Settings are process-wide: a verbose run after a quiet one gets Ray Data's console back."""
    import logging

    import ray.data  # noqa: F401 - importing Ray sets up its loggers; measure after that

    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    quiet_ray(True).apply()  # undo what earlier tests in this process (jobs run quietly) applied
    ray_level = logging.getLogger("ray").level
    quiet_ray(False).apply()
    assert logging.getLogger("ray").level == logging.WARNING
    assert "dce-batch-ray-data-logging" in os.environ["RAY_DATA_LOGGING_CONFIG"]
    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ == "PlainRayHandler"]
    assert console and all(h.level == logging.WARNING for h in console)
    quiet_ray(True).apply()
    assert "RAY_DATA_LOGGING_CONFIG" not in os.environ
    assert logging.getLogger("ray").level == ray_level
    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ == "PlainRayHandler"]
    assert console and all(h.level == logging.INFO for h in console)
    monkeypatch.setenv("RAY_DATA_LOGGING_CONFIG", "/somewhere/mine.yaml")
    quiet_ray(False).apply()  # a user's own config is left alone
    assert os.environ["RAY_DATA_LOGGING_CONFIG"] == "/somewhere/mine.yaml"
    quiet_ray(True).apply()  # leave the process as it was for the other tests


def test_an_error_line_of_the_summary_stays_one_line_whatever_the_name_holds():
    """A name may hold a line break, an ANSI escape sequence or a right-to-left override: the
    summary shows them as escapes, one line per error, and nothing in it restyles the terminal."""
    names = ["in/bad\nname.jpg", "in/esc\x1b[31mred.png", "in/rtl\u202egnp.jpg", "in/caf\u00e9 \u65e5\u672c.jpg"]
    summary = RunSummary(run_id="r", input="in", output="out", started_at="")
    rows = _manifest_batch(["error"] * len(names)).set_column(0, "input_uri", pa.array(names))
    summary.add(rows.set_column(2, "error", pa.array([f"UnsupportedImageError: {name}\nsecond line" for name in names])))
    lines = [line for line in summary.table().splitlines() if line.startswith("    in/")]
    assert lines == [
        "    in/bad\\nname.jpg: UnsupportedImageError: in/bad\\nname.jpg\\nsecond line",
        "    in/esc\\x1b[31mred.png: UnsupportedImageError: in/esc\\x1b[31mred.png\\nsecond line",
        "    in/rtl\\u202egnp.jpg: UnsupportedImageError: in/rtl\\u202egnp.jpg\\nsecond line",
        "    in/caf\u00e9 \u65e5\u672c.jpg: UnsupportedImageError: in/caf\u00e9 \u65e5\u672c.jpg\\nsecond line",
    ]
    assert all(ch.isprintable() for ch in summary.table().replace("\n", ""))


def test_the_summary_lists_five_errors_and_says_how_many_more_there_are():
    summary = RunSummary(run_id="r", input="in", output="out", started_at="")
    summary.add(_manifest_batch(["ok"] + ["error"] * 7))
    lines = summary.table().splitlines()
    assert sum(line.startswith("    in/") for line in lines) == 5
    assert lines[-1] == ("    ... and 2 more (every error is a row of the manifest, OUTPUT/_manifest, "
                         "and in the run's report)")
    summary = RunSummary(run_id="r", input="in", output="out", started_at="")
    summary.add(_manifest_batch(["error"] * 5))
    assert "more" not in summary.table()
