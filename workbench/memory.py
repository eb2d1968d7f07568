"""Memory for activation caches: how much is free where (:func:`available_bytes`, used by
``memory_budget="auto"``), and the CPU memory policy (glibc only; a no-op elsewhere).

A CPU activation cache keeps every tensor the model made, so each ``run_with_cache`` needs as
much new memory as its cache holds. By default glibc hands large freed blocks (above 128 KiB to
32 MiB, adjusted as it goes) back to the kernel at once and trims the top of its heap, so after
the previous cache is dropped, the next one is written into pages the kernel must map and zero
again: one page fault per 4 KiB. On a laptop that costs a few tenths of a second per GB; on some
virtual machines it costs more than the forward pass itself (see ``benchmarks/README.md``).

So the first CPU cache turns on :func:`keep_freed_memory`: glibc keeps freed memory for reuse,
as PyTorch's CUDA allocator does on the GPU. The cost is the same as there: the process keeps
its peak memory after caches are dropped, until :func:`release_memory` hands the free part back
(like ``torch.cuda.empty_cache()``). Set ``WORKBENCH_KEEP_FREED_MEMORY=0`` in the environment,
or call ``keep_freed_memory(False)``, to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import platform
import threading

import torch

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_KEEP = {_M_TRIM_THRESHOLD: -1, _M_MMAP_MAX: 0}  # -1: never trim (mallopt(3))

_log = logging.getLogger("workbench.memory")
_lock = threading.Lock()
_state = {"on": False, "decided": False}


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def supported() -> bool:
    """Whether this process's C library can be told to keep freed memory (glibc on Linux)."""
    return _LIBC is not None and hasattr(_LIBC, "mallopt")


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` is on in this process."""
    return _state["on"]


def keep_freed_memory(on: bool = True) -> bool:
    """Tell glibc to keep freed memory for reuse (``on``) or to return it as by default.

    On: no block is served by its own memory map, and the heap is never trimmed on free, so a
    new activation cache reuses the pages of the caches dropped before it. Off, after on:
    glibc's initial thresholds, fixed (glibc cannot go back to adapting them in a running
    process); off, never on: nothing changes. Returns whether the setting took effect (False
    where glibc is absent)."""
    with _lock:
        _state["decided"] = True
        if not supported():
            return False
        if not on and not _state["on"]:
            return True  # never changed: glibc's own (adaptive) defaults stay
        for param, value in (_KEEP if on else _DEFAULTS).items():
            if not _LIBC.mallopt(ctypes.c_int(param), ctypes.c_int(value)):
                return False
        _state["on"] = bool(on)
        return True


def release_memory() -> int | None:
    """Hand freed memory back to the operating system: collects garbage, trims glibc's heap
    (``malloc_trim(0)``) and empties PyTorch's CUDA cache when CUDA is in use. Call it after
    dropping large caches. Returns the process's resident bytes afterwards (None if unknown)."""
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(ctypes.c_size_t(0))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: "512 B", "97.7 KiB", "84.1 GiB"."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def available_bytes(device: str | torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: for a CUDA device, its free memory plus
    what PyTorch's allocator has reserved but not handed out; for "cpu", the host's
    ``MemAvailable`` (Linux); None where unknown (other devices or systems)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        return free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def available_on(devices) -> int | None:
    """:func:`available_bytes` summed over ``devices`` (the devices a cache is spread over);
    None when one of them is unknown."""
    free = [available_bytes(d) for d in devices]
    return None if any(f is None for f in free) else sum(free)


def before_cpu_cache() -> None:
    """Called before a cache is kept on the CPU: turns :func:`keep_freed_memory` on once per
    process, unless the user decided otherwise (a call, or WORKBENCH_KEEP_FREED_MEMORY=0)."""
    if _state["decided"]:
        return
    if os.environ.get("WORKBENCH_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        _state["decided"] = True
        return
    if keep_freed_memory(True):
        _log.info("glibc now keeps freed memory for the next activation cache; "
                  "workbench.release_memory() hands it back (WORKBENCH_KEEP_FREED_MEMORY=0: never)")
