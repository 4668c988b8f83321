"""Device selection: `auto` picks cuda, then mps, then cpu; an absent device is a clear error."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import cast

import torch

from vit_lab.errors import ConfigError, DeviceError

DEVICES = ("auto", "cpu", "cuda", "mps")
MALLOC_TUNED = False  # set by tune_malloc(); benchmarks record it
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
PRECISION_NAMES = (*PRECISIONS, "fp16", "auto")  # auto: bf16 where it is measured to win, else fp32
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPUs with native bf16 dot products
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """Map a config name (auto, cpu, cuda, cuda:N, mps) to an available torch.device."""
    base = str(name).split(":")[0]
    if base not in DEVICES:
        raise ConfigError(f"device={name!r} is unknown; use one of {', '.join(DEVICES)}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if base == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={name} was requested but no CUDA GPU is available here; use device=cpu or device=auto"
            )
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device={name} was requested but only {torch.cuda.device_count()} CUDA device(s) exist; "
                "use device=cuda:0"
            )
    if base == "mps" and not _mps_available():
        raise DeviceError(
            f"device={name} was requested but Apple MPS is not available here; use device=cpu or device=auto"
        )
    return torch.device(name)


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists a native bf16 instruction set (AVX512-BF16 or AMX-BF16) in its flags."""
    flags = {
        f
        for line in cpuinfo.splitlines()
        if line.split(":", 1)[0].strip() == "flags"
        for f in line.split(":", 1)[-1].split()
    }
    return any(f in flags for f in CPU_BF16_FLAGS)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """This machine's answer to ``cpuinfo_has_bf16`` (False where there is no /proc/cpuinfo)."""
    try:
        return cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def resolve_precision(device: torch.device, precision: str) -> str:
    """The precision a run computes in: ``auto`` becomes bf16 on CPUs with native bf16 (where a whole run is 1.5x
    faster than fp32 at the same accuracy, benchmarks/README.md), else fp32 (bf16 was not faster on the GPU measured
    at these model sizes); other names are checked."""
    if precision == "fp16":  # refused rather than trained badly: fp16 gradients underflow without loss scaling
        raise ConfigError(
            "device.precision=fp16 is not supported: fp16 training needs a gradient scaler, which this "
            "trainer does not have; use device.precision=bf16 (fp32's range, no scaler needed) or fp32"
        )
    if precision not in PRECISION_NAMES:
        raise ConfigError(f"device.precision={precision!r} is unknown; use one of {', '.join(PRECISION_NAMES)}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward pass; a no-op in fp32 (``auto`` as ``resolve_precision`` says)."""
    dtype = PRECISIONS[resolve_precision(device, precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ConfigError(f"device.compile_mode={mode!r} is unknown; use one of {', '.join(COMPILE_MODES)}")
    return mode


def compile_model(model: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """torch.compile with a checked mode name; "reduce-overhead" records CUDA graphs, which take the per-step
    launch cost off the host (what bounds a GPU step at these model sizes, benchmarks/README.md)."""
    compiled = torch.compile(model, mode=None if check_compile_mode(mode) == "default" else mode)
    return cast(torch.nn.Module, compiled)  # an OptimizedModule, which torch's stubs type as the callable it wraps


def configure_process(device: torch.device, threads: int | None = None, malloc: bool = False) -> None:
    """A run's process-wide settings, shared by the trainer and the benchmarks that time its step: torch's
    intra-op threads (None = torch's default) and, for CPU runs, glibc's malloc (``tune_malloc``)."""
    if threads:
        torch.set_num_threads(int(threads))
    if malloc and device.type == "cpu":
        tune_malloc()


def tune_malloc() -> bool:
    """Keep freed activation buffers in glibc's heap instead of unmapping them after every step.

    Process-wide and idempotent; ``configure_process`` calls it for CPU runs (``device.tune_malloc``); its effect on
    the step is measured in benchmarks/README.md.

    By default glibc serves big blocks (>= 128 KiB, adaptively more) with mmap and gives them back on free,
    so every training step page-faults its activations in again. Raising the mmap and trim thresholds (the runtime
    equivalent of MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_) keeps them. Returns False where this is not glibc (nothing changed).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = mallopt(m_mmap_threshold, 32 * 2**20)  # the largest value glibc accepts (64-bit)
    ok &= mallopt(m_trim_threshold, 2**30)
    ok &= mallopt(m_top_pad, 64 * 2**20)
    global MALLOC_TUNED
    MALLOC_TUNED = MALLOC_TUNED or bool(ok)
    return bool(ok)
