"""Where and in which precision the network runs, and the settings of a CPU process that runs it.

:func:`resolve_precision` turns a requested precision into the one the network really runs in on
a device. ``auto`` picks int8 for DCE-Net on x86 CPUs (:mod:`dce_batch.enhance.quantization`),
bf16 on CUDA GPUs that have it (fp16 on others), and elsewhere bf16 where the CPU computes it
natively, else fp32. bf16 runs with bf16 weights in channels-last layout; the curve iterations
always run in float32. Asking for bf16 on a CPU that would emulate it is refused, not obeyed, and
so are fp16 on a CPU and int8 on a GPU. The speed and accuracy of each choice are measured by
``benchmarks/bench_throughput.py`` (figures in ``benchmarks/README.md``).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Literal

import torch

from dce_batch.errors import ConfigError
from dce_batch.enhance.quantization import int8_available, int8_refusal

__all__ = [
    "NETWORK_DTYPES",
    "Precision",
    "cpu_has_native_bf16",
    "flush_denormals",
    "keep_freed_memory",
    "prepare_cpu_process",
    "resolve_device",
    "resolve_precision",
]

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
# int8 quantizes inside the network (dce_batch.enhance.quantization): it takes float32 like fp32.
NETWORK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); else torch emulates it.

    The hardware flag is not enough: torch must also dispatch its AVX-512 kernels (it does not
    when ``ATEN_CPU_CAPABILITY`` caps it, e.g. at ``avx2``), or bf16 is emulated all the same.
    """
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    try:
        capabilities = torch.cpu.get_capabilities()  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        capabilities = {}
    if capabilities:
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16") or capabilities.get("amx_tile"))
    try:  # older torch: read the flags ourselves (Linux)
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = handle.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(requested: str, device: torch.device, variant: str = "full") -> str:
    """The precision a request means on ``device`` for a model of ``variant``; ConfigError for one
    that would be unusable."""
    if device.type == "cuda":
        if requested == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if requested == "int8":
            raise ConfigError("int8 runs on CPUs; on a GPU use --precision auto (bf16 or fp16)")
        return requested
    if requested == "auto":
        # int8 is the fastest on every x86 CPU measured, where bf16 is native and with AVX2
        # kernels alike, and stays within 3 8-bit steps of fp32 (benchmarks/bench_throughput.py;
        # benchmarks/README.md, "int8 against fp32 and bf16").
        if int8_available() and variant == "full":  # the fast variant is already cheap: not quantized
            return "int8"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "fp16":
        raise ConfigError("fp16 needs a CUDA GPU; use --precision auto, fp32, bf16 or int8 on CPUs")
    if requested == "int8" and int8_refusal(variant):
        raise ConfigError(int8_refusal(variant))
    if requested == "bf16" and not cpu_has_native_bf16():
        raise ConfigError(
            f"bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, no native bf16) is emulated and "
            "far slower than fp32; use --precision auto (fp32 here) or fp32"
        )
    return requested


def keep_freed_memory() -> None:
    """Let glibc keep freed activation memory in the heap instead of unmapping it.

    DCE-Net allocates and frees tens of MB per layer; by default glibc serves each such block
    with a fresh mmap, faults it in page by page and unmaps it again, which costs more CPU
    time than the convolutions (with this the same pixels come several times faster:
    benchmarks/README.md, "Findings from the earlier results").
    Memory stays bounded by the window size. A no-op where glibc's mallopt is not available.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 512 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def flush_denormals() -> None:
    """Treat subnormal floats as zero in this thread's CPU arithmetic (and threads it starts).

    Activations can decay into the subnormal range too (the authors' published Zero-DCE
    checkpoint does on dark photos), and on Intel CPUs each such multiply takes a slow microcode
    path that can make a photo many times slower (benchmarks/README.md, "Subnormal weights and
    denormal arithmetic (Intel)", and "Figures behind design choices in the code"). Values that small
    are far below an 8-bit or 16-bit step, so the outputs do not change. A no-op on CPUs without
    the flags (torch returns False).
    """
    torch.set_flush_denormal(True)


def prepare_cpu_process() -> None:
    """Process settings of a CPU worker that runs the network: freed memory kept, denormals flushed."""
    keep_freed_memory()
    flush_denormals()


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cpu``, ``cuda`` and ``cuda:N`` name a device. An
    unknown name, or CUDA (or a GPU index) this process cannot see, is a :class:`ConfigError`."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {requested!r}: use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but no CUDA GPU is visible to this process")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {requested!r} requested but this process sees {torch.cuda.device_count()} CUDA "
                          "GPU(s), numbered from 0")
    return device

