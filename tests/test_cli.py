"""The command line as a user meets it: one subparser per command, and bad arguments never
reach a worker (exit 2, one line saying what is wrong, no traceback)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dce_batch import __version__
from dce_batch.cli import COMMANDS, build_parser, main

# Beside what test_every_numeric_and_path_option_refuses_bad_values_with_one_line tries on every
# option (from the parsers): a negative infinity and text.
BAD_NUMBERS = ["-inf", "x"]


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower()]


def test_every_command_is_a_subparser_and_version_is_printed(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal's width, hyphenated words too
    listing = " ".join(build_parser().format_help().split())
    assert all(f" {name} {command.help} " in listing for name, command in COMMANDS.items()), listing
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"dce-batch {__version__}"
    code, err = _run([], capsys)
    assert code == 2 and "COMMAND" in err
    code, err = _run(["enhanse"], capsys)
    assert code == 2 and "invalid choice: 'enhanse'" in err


# Arguments each command parses without error, and what they parse to.
MINIMAL_ARGV = {
    "enhance": ([], {"input": None, "output": "./enhanced"}), "train": ([], {"data": None, "epochs": 200}),
    "evaluate": ([], {"paired": [], "configs": []}), "report": (["X"], {"output": "X"}),
    "manifest": (["repair", "X"], {"action": "repair", "output": "X"}), "show-weights": ([], {"weights": None}),
    "convert-weights": (["a.pth", "b"], {"source": "a.pth", "target": "b"}),
    "export-onnx": (["x.onnx"], {"args": ["x.onnx"], "scale": 12.0}),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_argparse_dispatches_each_command_to_its_run_function(name, monkeypatch):
    argv, expected = MINIMAL_ARGV[name]
    args = build_parser().parse_args([name, *argv])
    assert args.run is COMMANDS[name].run and args.command == name
    assert {key: getattr(args, key) for key in expected} == expected
    # The subparser is the command's own parser, filled once: the same defaults as the command alone.
    alone = vars(COMMANDS[name].parser().parse_args(argv))
    assert {k: v for k, v in vars(args).items() if k not in ("run", "command")} == alone
    # main() parses once and returns what the picked run function returns, given the command's words.
    seen = []
    monkeypatch.setitem(COMMANDS, name, COMMANDS[name]._replace(run=lambda a: seen.append(a) or 7))
    assert main([name, *argv]) == 7 and len(seen) == 1 and seen[0].argv == argv and seen[0].command == name


def test_report_is_dispatched_to_report_run():
    from dce_batch import cli

    assert build_parser().parse_args(["report", "X"]).run is cli.report_run


def test_enhance_with_no_arguments_enhances_the_bundled_samples():
    args = build_parser().parse_args(["enhance"])
    assert args.run is COMMANDS["enhance"].run and args.input is None and args.output == "./enhanced"


# option -> values out of its own range it must refuse (and -inf, text)
ENHANCE_REFUSES = {
    "--scale": BAD_NUMBERS + ["0.5", "-1"],
    "--strength": BAD_NUMBERS + ["-0.1", "1.5"],
    "--denoise-strength": BAD_NUMBERS + ["-1", "5"],
    "--highlight-stretch": BAD_NUMBERS + ["-0.1", "2"],
    "--exposure": BAD_NUMBERS + ["0", "1", "-0.2"],
    "--quality": BAD_NUMBERS + ["0", "101", "-5", "9" * 40],
    "--gpus-per-actor": BAD_NUMBERS + ["-1"],
    "--cpus-per-actor": BAD_NUMBERS + ["0", "-1"],
    "--batch-size": BAD_NUMBERS + ["0", "-2", "1.5"],
    "--max-pixels": BAD_NUMBERS + ["0", "-1"],
    "--tile-size": BAD_NUMBERS + ["0", "8"],
    "--actor-memory": BAD_NUMBERS + ["0", "-4G", "1e400G", "1T" * 3],
    "--num-actors": ["", "0", "3:2", "a:b", "1:2:3"],
    "--manifest-flush-seconds": BAD_NUMBERS + ["-1"],
    "--weights": [""],
    "--base": [""],
    "--s3-endpoint": [""],
    "--s3-outage-wait": BAD_NUMBERS + ["-1", "86401"],
}


@pytest.mark.parametrize("option,value", [(o, v) for o, values in ENHANCE_REFUSES.items() for v in values])
def test_enhance_refuses_bad_values_with_one_line(option, value, capsys, tmp_path):
    code, err = _run(["enhance", str(tmp_path / "in"), str(tmp_path / "out"), option, value], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert len(_error_lines(err)) == 1, err
    assert not (tmp_path / "out").exists(), "nothing written for an invalid argument"


TRAIN_REFUSES = {
    "--workers": BAD_NUMBERS + ["0", "-1", "1.5"],
    "--gpus-per-worker": BAD_NUMBERS + ["-1"],
    "--cpus-per-worker": BAD_NUMBERS + ["0"],
    "--epochs": BAD_NUMBERS + ["0"],
    "--image-size": BAD_NUMBERS + ["8"],
    "--min-crop": BAD_NUMBERS + ["1.5"],
    "--batch-size": BAD_NUMBERS + ["0"],
    "--lr": BAD_NUMBERS + ["0", "-1"],
    "--exposure-target": BAD_NUMBERS + ["2"],
    "--val-fraction": BAD_NUMBERS + ["-0.1"],
    "--max-images": BAD_NUMBERS + ["1"],
    "--data": [""],
    "--export": [""],
    "--storage": [""],
    "--s3-outage-wait": ["-1"],
}
EVALUATE_REFUSES = {"--threads": BAD_NUMBERS + ["0"], "--target": BAD_NUMBERS + ["1.5"],
                    "--max-side": BAD_NUMBERS + ["0"], "--seed": BAD_NUMBERS + ["-1"]}


@pytest.mark.parametrize("command,option,value", [("train", o, v) for o, values in TRAIN_REFUSES.items() for v in values]
                         + [("evaluate", o, v) for o, values in EVALUATE_REFUSES.items() for v in values])
def test_train_and_evaluate_refuse_bad_values_with_one_line(command, option, value, capsys):
    code, err = _run([command, option, value], capsys)
    assert code == 2 and "Traceback" not in err and len(_error_lines(err)) == 1, err


@pytest.mark.parametrize("argv,expected", [
    (["enhance", "", "OUT"], "expected a path"),
    (["enhance", "IN", ""], "expected a path"),
    (["report", "OUT", "--link-expiry-hours", "nan"], "finite"),
    (["report", "OUT", "--link-expiry-hours", "inf"], "finite"),
    (["report", "OUT", "--link-expiry-hours", "-1"], "from 0 to 168"),
    (["report", "OUT", "--link-expiry-hours", "1000"], "from 0 to 168"),
    (["report", "OUT", "--max-pairs", "-1"], "from 0 to 100,000"),
    (["export-onnx", "x.onnx", "--scale", "nan"], "finite"),
    (["export-onnx", "x.onnx", "--opset", "1e400"], "whole number"),
    (["manifest", "repair", ""], "expected a path"),
    (["manifest", "fix", "OUT"], "invalid choice"),
])
def test_other_commands_refuse_bad_values_with_one_line(argv, expected, capsys):
    code, err = _run(argv, capsys)
    assert code == 2 and expected in err and "Traceback" not in err, err


def test_settings_a_worker_would_only_discover_are_refused_before_anything_starts(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for argv, expected in [
        (["--precision", "fp16"], "fp16 needs a CUDA GPU"),
        (["--precision", "int8", "--gpus-per-actor", "1"], "int8 runs on CPUs"),
        (["--precision", "int8", "--model-variant", "fast"], "int8 quantizes DCE-Net"),
        (["--engine", "local", "--gpus-per-actor", "1"], "--engine local"),
        (["--weights", "no_such_model"], "not found"),
    ]:
        code, err = _run(["enhance", str(tmp_path / "in"), str(tmp_path / "out"), *argv], capsys)
        assert code == 2 and expected in err and "Traceback" not in err, (argv, err)
        assert not (tmp_path / "out").exists(), f"{argv}: OUTPUT touched"


def test_a_non_utf8_path_argument_is_an_error_line_not_a_traceback(tmp_path):
    name = os.fsdecode(b"in\xff")
    result = subprocess.run([sys.executable, "-m", "dce_batch.cli", "enhance", str(tmp_path / name),
                             str(tmp_path / "out")], capture_output=True, timeout=120)
    assert result.returncode == 2 and b"Traceback" not in result.stderr and b"not valid UTF-8" in result.stderr


def test_an_output_in_ray_s_temporary_working_folder_is_refused(tmp_path, capsys, monkeypatch):
    working = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    (working / "in").mkdir(parents=True)
    monkeypatch.chdir(working)
    code, err = _run(["enhance", "in", "enhanced"], capsys)
    assert code == 2 and "Ray's temporary working folder" in err and "s3://" in err
    assert not (working / "enhanced").exists()


@pytest.fixture
def one_image(tmp_path):
    """INPUT with one tiny PNG: a value wrongly accepted starts a real run (and fails the test)."""
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), (20, 20, 20)).save(tmp_path / "in" / "a.png")
    return tmp_path / "in"


# Values above each option's upper bound (dce_batch.limits): refused by the parser, never reaching
# a worker, a C integer or the memory allocator.
HUGE = {
    "enhance": {"--batch-size": ["4097", "99999999999"], "--max-pixels": [str(2**40 + 1), "1" + "0" * 21],
                "--tile-size": ["65537"], "--num-actors": ["1:99999999999", "4097"], "--scale": ["1025", "1e300"],
                "--cpus-per-actor": ["1025", "1e300"], "--gpus-per-actor": ["1e300"], "--actor-memory": ["2000T"],
                "--manifest-flush-seconds": ["86401", "1e300"], "--denoise-strength": ["5"]},
    "evaluate": {"--threads": ["1025", "100000000000000000000"], "--max-side": ["65537"], "--seed": [str(2**32)],
                 "--max-images": [str(2**31)], "--simulate-max-side": ["65537"]},
    "train": {"--workers": ["4097"], "--batch-size": ["4097"], "--epochs": [str(2**31)], "--lr": ["11"],
              "--seed": [str(2**32)], "--image-size": ["65537"], "--cpus-per-worker": ["1e300"],
              "--tv-weight": ["1e300"], "--max-failures": [str(2**31)]},
    "export-onnx": {"--opset": ["99999"], "--scale": ["1e300", "1025"]},
    "report": {"--max-pairs": ["100001"]},
}


@pytest.mark.parametrize("command,option,value", [(c, o, v) for c, options in HUGE.items()
                                                  for o, values in options.items() for v in values])
def test_values_above_an_option_s_bound_are_refused_with_one_line(command, option, value, capsys, tmp_path, one_image):
    out = tmp_path / "out"
    positionals = {"enhance": [str(one_image), str(out)], "evaluate": ["--unpaired", str(one_image), "--out", str(out)],
                   "train": ["--data", str(one_image), "--storage", str(out), "--epochs", "1"],
                   "export-onnx": [str(out / "x.onnx")], "report": [str(out)]}[command]
    code, err = _run([command, *positionals, option, value], capsys)
    assert code == 2 and "Traceback" not in err, err
    lines = _error_lines(err)
    assert len(lines) == 1 and option in lines[0], err
    assert not out.exists(), "nothing written for an invalid argument"


def test_the_python_api_refuses_what_the_command_line_refuses(one_image, tmp_path):
    from dce_batch.errors import ConfigError
    from dce_batch.job import EnhanceConfig
    from dce_batch.training.config import TrainConfig

    base = dict(input=str(one_image), output=str(tmp_path / "out"))
    for settings in [{"batch_size": 4097}, {"max_pixels": 2**40 + 1}, {"tile_size": 65537}, {"num_actors": (1, 4097)},
                     {"scale": 1e300}, {"cpus_per_actor": 1e300}, {"gpus_per_actor": 1025.0},
                     {"actor_memory": 2**60}, {"part_flush_s": 1e300}, {"part_rows": 10**30},
                     {"max_full_frame_pixels": 10**30}, {"progress_interval_s": float("inf")}]:
        with pytest.raises(ConfigError):
            EnhanceConfig(**base, **settings)
    for settings in [{"workers": 4097}, {"batch_size": 4097}, {"epochs": 2**31}, {"lr": float("inf")},
                     {"lr": float("nan")}, {"seed": 2**32}, {"image_size": 65537}, {"cpus_per_worker": 1e300},
                     {"gpus_per_worker": float("inf")}, {"max_failures": 2**31}, {"weight_decay": float("nan")},
                     {"grad_clip": float("inf")}, {"keep_checkpoints": 2**31}, {"epochs": 1.5}]:
        with pytest.raises(ConfigError):
            TrainConfig(data="samples", **settings)


@pytest.mark.parametrize("argv", [
    ["enhance", "IN", "OUT", "--scale", "nan"], ["enhance", "--no-such-option"], ["enhance", "A", "B", "C"],
    ["train", "--epochs", "0"], ["evaluate", "--threads", "x"], ["report"], ["report", "OUT", "--max-pairs", "-1"],
    ["manifest", "fix", "OUT"], ["show-weights", ""], ["convert-weights", "a.pth"], ["export-onnx", "--opset", "9"],
    ["enhanse"], [], ["--no-such-option"],
])
def test_a_usage_error_is_one_line_naming_the_help(argv, capsys):
    code, err = _run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    command = "dce-batch" + (f" {argv[0]}" if argv and argv[0] in COMMANDS else "")
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"{command}: error: ") and lines[0].endswith(f"({command} --help shows the options)"), err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_still_shows_usage_and_every_option(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith(f"usage: dce-batch {command}") and "--help" in out
    # The subparser is filled by the command's own parser function: the same text as the command alone.
    assert out == COMMANDS[command].parser().format_help()


# The program as the dce-batch script runs it; "ready" is printed inside program(), so the signal
# always lands in the program's own code, wherever that is (imports, listing, the run, its exit).
_PROGRAM_SCRIPT = r"""
import sys
from dce_batch.cli import main, program

def command(argv):
    print("ready", flush=True)
    return main(argv)

program(sys.argv[1:], command=command)
"""


@pytest.mark.parametrize("delay_s", [0.0, 0.1, 0.3, 0.6, 1.5])
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(delay_s, one_image, tmp_path):
    process = subprocess.Popen([sys.executable, "-c", _PROGRAM_SCRIPT, "enhance", str(one_image), str(tmp_path / "out"),
                                "--engine", "local", "--quiet", "--no-report"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(delay_s)
    exited_before = process.poll() is not None
    if not exited_before:
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    # A run that has started says at once that it stops after the batches in flight; the outcome
    # is one line.
    lines = [line for line in err.splitlines() if line.strip() and "stopping after the batches in flight" not in line]
    assert "Traceback" not in err, err
    if process.returncode == 0:
        # Only a run that had finished: gone before the signal, or past its summary when it came.
        assert exited_before or "images" in out, (out, err)
    else:
        assert process.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], (process.returncode, err)


# A main thread held in C code that neither returns nor runs signal handlers for a long time, as a
# storage request does while its retries run out against a store that does not answer.
_BLOCKED_SCRIPT = r"""
import hashlib
from dce_batch.job.signals import StopRequest

StopRequest().install()
print("ready", flush=True)
# OpenSSL's most iterations: many minutes of work, so that without the watchdog the test's 30 s run
# out long before the handlers could run.
hashlib.pbkdf2_hmac("sha256", b"x", b"y", 2**31 - 1)
print("returned", flush=True)
"""


# A run that stopped on its first signal and is on its way out (StopRequest.restore() done, the
# CLI printing its last line and Python tearing down) when the second arrives.
_LEAVING_SCRIPT = r"""
import os, signal, sys, time
from dce_batch.job.signals import StopRequest

stop = StopRequest().install()
os.kill(os.getpid(), signal.SIGINT)
while not stop.requested:
    time.sleep(0.01)
stop.restore()
print("left", flush=True)
time.sleep(30)
"""


def test_a_second_signal_after_the_run_let_go_of_the_signals_still_stops_quietly():
    """The second Ctrl-C can land after the run gave the signals back, while the process prints
    its last line and Python tears down (Python's own handler would raise KeyboardInterrupt
    there, with a traceback from wherever it lands): still one line and exit 130."""
    process = subprocess.Popen([sys.executable, "-c", _LEAVING_SCRIPT], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "left"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.splitlines()[-1] == "dce-batch: stopping now; the next run adopts what was written and redoes the rest"


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_stops_at_once_while_the_main_thread_is_held_in_a_call(second):
    """Python runs signal handlers only between the main thread's bytecodes; the watchdog reads
    the signals as they arrive, says the first one is heard and ends the process on the second."""
    process = subprocess.Popen([sys.executable, "-c", _BLOCKED_SCRIPT], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # inside the call by now (the test passes either way; this lets it fail without the watchdog)
    try:
        process.send_signal(signal.SIGINT)
        # The second is sent once the first is acknowledged: two SIGINTs pending at once are one.
        acknowledged, _, _ = select.select([process.stderr], [], [], 30)
        assert acknowledged, "the first signal was not acknowledged within 30 s"
        first = process.stderr.readline()
        process.send_signal(second)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 128 + second and "returned" not in out
    assert [first.rstrip("\n"), *err.splitlines()] == [
        "dce-batch: stopping after the batches in flight (again to stop at once)",
        "dce-batch: stopping now; the next run adopts what was written and redoes the rest"]


def test_ctrl_c_while_a_class_is_created_is_one_line_and_exit_130(capsys):
    """Python 3.11 wraps a KeyboardInterrupt raised in __set_name__ (a dataclass field, while a
    module imports) in a RuntimeError; it is still a Ctrl-C. Any other error is not swallowed."""
    from dce_batch.cli import EXIT_INTERRUPTED, program

    def interrupted_import(argv):
        class Field:
            def __set_name__(self, owner, name):
                raise KeyboardInterrupt

        class Record:  # noqa: F841 - creating it is the point
            committed_at = Field()
        return 0

    def broken(argv):
        raise RuntimeError("a bug")

    try:
        with pytest.raises(SystemExit) as info:
            program(["train"], command=interrupted_import)
        assert info.value.code == EXIT_INTERRUPTED
        assert capsys.readouterr().err.splitlines() == ["dce-batch: interrupted"]
        with pytest.raises(RuntimeError, match="a bug"):
            program(["train"], command=broken)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # program() ignores Ctrl-C on its way out


@pytest.mark.parametrize("argv", [
    ["evaluate", "--unpaired", "IN", "--out", ""], ["evaluate", "--paired", "", "IN"], ["evaluate", "--unpaired", ""],
    ["evaluate", "--unpaired", "IN", "--simulate", "dim", "--simulate-from", ""],
    ["evaluate", "--unpaired", "IN", "--out", "OUT", "--device", ""],
    ["evaluate", "--unpaired", "IN", "--out", "OUT", "--device", "bogus"],
    ["evaluate", "--unpaired", "IN", "--out", "OUT", "--device", "meta"],
    ["evaluate", "--unpaired", "IN", "--out", "OUT", "--device", "cuda:99"],
    ["export-onnx", ""], ["export-onnx", "zerodce_sice_v1", ""], ["export-onnx", "IN"],
    ["train", "--config", "", "--data", "samples"],
])
def test_evaluate_export_and_train_refuse_empty_paths_and_unknown_devices(argv, one_image, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run([{"IN": str(one_image), "OUT": str(tmp_path / "out")}.get(a, a) for a in argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"], "nothing written, in the cwd or elsewhere"


def test_evaluate_on_cuda_without_a_gpu_is_refused_with_one_line(one_image, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = _run(["evaluate", "--unpaired", str(one_image), "--out", str(tmp_path / "out"), "--device", "cuda"],
                     capsys)
    assert code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Every numeric and path option of every command, from the parsers themselves
# --------------------------------------------------------------------------------------------

NUMERIC_VALUES = ["nan", "inf", "-1", "0", "9" * 30, "1e400", "", os.fsdecode(b"\xff")]
PATH_VALUES = ["", os.fsdecode(b"\xff")]
#: (command, option, value) -> why the value is a real setting, not a mistake.
ACCEPTED = {
    ("enhance", "--strength", "0"): "0 leaves images unchanged",
    ("enhance", "--denoise-strength", "0"): "0 switches denoising off",
    ("enhance", "--highlight-stretch", "0"): "0 leaves the highlights as the curves made them",
    ("enhance", "--gpus-per-actor", "0"): "0 is CPU actors, the default",
    ("enhance", "--manifest-flush-seconds", "0"): "0 writes each row as its image finishes",
    ("train", "--gpus-per-worker", "0"): "0 is CPU workers, the default",
    ("train", "--weight-decay", "0"): "0 is no weight decay",
    ("train", "--tv-weight", "0"): "0 switches that loss term off",
    ("train", "--spatial-weight", "0"): "0 switches that loss term off",
    ("train", "--color-weight", "0"): "0 switches that loss term off",
    ("train", "--exposure-weight", "0"): "0 switches that loss term off",
    ("train", "--val-fraction", "0"): "0 is no validation split",
    ("train", "--seed", "0"): "a seed, the default",
    ("train", "--max-failures", "0"): "0 is no restart",
    ("train", "--max-failures", "-1"): "-1 is restarts without limit",
    ("evaluate", "--seed", "0"): "a seed, the default",
    ("report", "--max-pairs", "0"): "0 shows no before/after pair",
    ("report", "--link-expiry-hours", "0"): "0 shows s3:// URIs as text instead of links",
    **{(command, "--s3-outage-wait", "0"): "0 fails a request once its AWS_MAX_ATTEMPTS ran out"
       for command in ("enhance", "train", "report", "manifest")},
}


def _command_parsers() -> dict:
    # Each command's parser, as its parser function fills the subparser of `dce-batch` with it.
    return {name: command.parser() for name, command in COMMANDS.items()}


def _fuzz_cases() -> list[tuple[str, str, str]]:
    from dce_batch import cli

    cases = []
    for command, parser in sorted(_command_parsers().items()):
        for action in parser._actions:  # noqa: SLF001
            if getattr(action.type, "__module__", None) != cli.__name__:
                continue  # choices, flags and free text: not numbers or paths
            name = action.option_strings[0] if action.option_strings else action.dest
            values = PATH_VALUES if action.type is cli._path else NUMERIC_VALUES  # noqa: SLF001
            cases += [(command, name, v) for v in values if (command, name, v) not in ACCEPTED]
    return cases


def test_the_fuzz_covers_every_command_and_its_accepted_values_exist():
    cases = _fuzz_cases()
    assert {c for c, _, _ in cases} == set(COMMANDS)
    options = {(c, o) for c, o, _ in cases}
    assert {(c, o) for c, o, _ in ACCEPTED} <= options, "an exception for an option the parsers do not have"
    assert len(options) > 60


def _valid_argv(command: str, image_dir: Path, out: Path) -> tuple[list[str], dict[str, int]]:
    """Arguments that run (so a value wrongly accepted starts real work and fails the test), and
    where each positional sits in them."""
    weights = str(Path(__file__).resolve().parents[1] / "dce_batch" / "weights" / "zerodce_sice_v1.safetensors")
    return {
        "enhance": ([str(image_dir), str(out), "--engine", "local", "--no-report"], {"input": 0, "output": 1}),
        "train": (["--data", "samples", "--storage", str(out), "--epochs", "1", "--workers", "1"], {}),
        "evaluate": (["--unpaired", str(image_dir), "--out", str(out), "--max-images", "1"], {}),
        "report": ([str(out)], {"output": 0}),
        "manifest": (["repair", str(out)], {"output": 1}),
        "show-weights": ([weights], {"weights": 0}),
        "convert-weights": ([weights, str(out / "w.safetensors")], {"source": 0, "target": 1}),
        "export-onnx": ([str(out / "x.onnx")], {"args": 0}),
    }[command]


@pytest.mark.parametrize("command,option,value", _fuzz_cases())
def test_every_numeric_and_path_option_refuses_bad_values_with_one_line(command, option, value, one_image, tmp_path,
                                                                        capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv, positionals = _valid_argv(command, one_image, out)
    if option in positionals:
        argv[positionals[option]] = value
    elif option == "--paired":
        argv += [option, value, str(one_image)]
    else:
        argv += [option, value]
    code, err = _run([command, *argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, (code, err)
    parser = _command_parsers()[command]
    action = next(a for a in parser._actions if option in a.option_strings or a.dest == option)  # noqa: SLF001
    named = option if action.option_strings else (action.metavar or action.dest)
    assert named in lines[0], f"the error is not about {named}: {lines[0]}"
    assert not out.exists(), "nothing written for a refused value"


def test_parsing_a_command_line_imports_neither_torch_nor_ray():
    """``main`` builds every command's parser to dispatch: none may import torch or Ray. The driver
    never needs them (the workers load torch), they cost seconds at start-up, and a Ctrl-C inside
    torch's import aborts the process (its C++ cannot unwind a KeyboardInterrupt)."""
    probe = ("import sys; from dce_batch.cli import build_parser; build_parser().parse_args(['enhance', 'in', 'out']); "
             "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_ray_worker_s_own_error_is_named_under_ray_s_wrappers_and_ray_s_failures_keep_theirs(capsys):
    """What the code in a worker raised is the line the user reads, under Ray's RayTaskError and
    UserCodeException and without Ray's terminal colours; a failure of Ray itself is named as such."""
    import traceback

    from ray.exceptions import ActorDiedError, RayTaskError, UserCodeException

    from dce_batch.cli import EXIT_FAILED, _report_failure

    try:
        try:
            raise ValueError("torch.cat(): expected a non-empty list of Tensors")
        except ValueError as inner:
            raise UserCodeException("\x1b[36mray::MapBatches(FusedActor)\x1b[39m failed") from inner
    except UserCodeException as user:
        wrapped = RayTaskError("ray::MapBatches(FusedActor)", traceback.format_exc(), user).as_instanceof_cause()
    assert _report_failure("dce-batch enhance", wrapped) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("dce-batch enhance: a Ray worker failed: ValueError: torch.cat(): expected a non-empty "
                          "list of Tensors (a bug: please report it")
    assert err.count("\n") == 1 and "\x1b" not in err

    assert _report_failure("dce-batch enhance", ActorDiedError()) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("dce-batch enhance: the Ray cluster failed: ActorDiedError: ") and "\x1b" not in err
    assert err.count("\n") == 1


def test_s3_outage_wait_reaches_the_s3_settings_of_enhance_and_train(monkeypatch):
    from dce_batch.cli import _s3_options, train_config_from_args
    from dce_batch.storage.aws import DEFAULT_OUTAGE_WAIT_S

    monkeypatch.delenv("AWS_PROFILE", raising=False)
    parser = build_parser()
    assert _s3_options(parser.parse_args(["enhance", "in", "out"])).outage_wait_s == DEFAULT_OUTAGE_WAIT_S
    assert _s3_options(parser.parse_args(["enhance", "in", "out", "--s3-outage-wait", "0"])).outage_wait_s == 0
    train = train_config_from_args(parser.parse_args(["train", "--data", "samples", "--s3-outage-wait", "45"]))
    assert train.s3.outage_wait_s == 45
