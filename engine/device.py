"""Where training runs and with how many threads.

Thread policy (measured on a shared 2-core AMD EPYC; README, "Threads on a busy
machine"): one intra-op thread per training process is the default (``threads: 1``).
Two-thread OpenMP teams were up to 1.4x faster on an idle machine at CIFAR size, but
with another process holding a core they ran 1.9x (CIFAR size) to 4.0x (the default
audit) slower, as the team's barriers wait for a thread that is not running; one
thread lost nothing to the same load. Audits use the second core through ``workers``
(one process per run) instead.
"""
from __future__ import annotations

import ctypes
import functools
import mmap
import sys

import torch

from .config import AuditConfig
from .errors import ConfigError


def training_device(cfg: AuditConfig) -> torch.device:
    """The device an audit trains on, refused (ConfigError) before anything is written when
    the machine cannot train it: no CUDA for ``device: cuda``, no bfloat16 on the GPU."""
    device = resolve_device(cfg.device)
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision = 'bf16' but this GPU has no bfloat16 support",
                          "use --set precision=fp32 (bfloat16 needs an Ampere or newer GPU)")
    return device


def native_cpu_bf16() -> bool | None:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX, as oneDNN sees it);
    None when this torch build cannot say."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return None if probe is None else bool(probe())
    except RuntimeError:
        return None


def precision_warning(cfg: AuditConfig, device: torch.device) -> str | None:
    """Why ``precision: bf16`` will be slow here, or None. Without native bfloat16 a CPU
    emulates it: ``faeval-tui bench`` measured bf16 bp epochs 10× slower than float32 on an
    AVX2-only AMD EPYC (70 s against 6.7 s for two side by side). It trains correctly, so
    it is said, not refused."""
    if cfg.precision != "bf16" or device.type != "cpu" or native_cpu_bf16() is not False:
        return None
    return ("precision = 'bf16' but this CPU has no native bfloat16 (neither AVX512-BF16 nor AMX): its "
            "bfloat16 steps are emulated, about 10x slower than float32; --set precision=fp32 trains at full speed")


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device = 'cuda' but CUDA is not available on this machine",
                              "use --device cpu (or auto), or install a CUDA build of PyTorch")
        return torch.device("cuda")
    return torch.device("cpu")


def apply_threads(threads: int) -> None:
    """Set this process's intra-op thread count (the ``threads`` config key)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the OS (glibc's ``malloc_trim``). glibc keeps
    freed blocks for reuse, and a CPU tensor's memory is plain malloc: after the task is
    moved to shared memory the loading process kept its 150 MiB private copy as free heap,
    and a training process kept the ~90 MiB a diagnostics pass had used, so both counted
    in RSS for the rest of the audit. A few milliseconds (the pages it returns fault back
    in when next used), so once an epoch, not per step; a no-op without glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc; musl has none
        libc.malloc_trim(0)


_MADV_DONTNEED = 4  # Linux


def drop_shared_pages(t: torch.Tensor) -> None:
    """Unmap this process's resident pages of a CPU tensor in shared memory (Linux
    ``madvise(MADV_DONTNEED)``): the data stays in the shared-memory object, and a later
    read maps it again. The audit process hands the images to its training processes and
    never reads them itself, so its copy of CIFAR's 176 MiB no longer counts in its RSS
    beside theirs. Anything else (not shared, not on the CPU, not Linux) is left alone."""
    libc = _libc()
    if libc is None or t.device.type != "cpu" or not t.is_shared() or not hasattr(libc, "madvise"):
        return
    storage = t.untyped_storage()
    page = mmap.PAGESIZE
    start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    first, last = -(-start // page) * page, end // page * page  # whole pages inside the storage only
    if last > first:
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)

