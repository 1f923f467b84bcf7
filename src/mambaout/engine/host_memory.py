"""Keep freed host memory in the process's heap while training on a CPU.

glibc's malloc serves each block above its mmap threshold (128 KiB to 32 MiB) with a fresh mmap and unmaps it on
free, and returns the top of the heap to the system once more than the trim threshold is free. A CPU training step
allocates and frees gigabytes of activations and gradients, so every step faults in and zeroes those pages again:
about a third of a MambaOut-T train step on a 2-core AMD EPYC (benchmarks/training_cpu.py). With mmap off for large
blocks and trimming off, which is what `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1` sets before a process starts,
the second step onward reuses the first step's pages. The cost: the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger("mambaout")

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no mmap for large blocks, no trimming) for the rest of the
    process; False where the C library is not glibc, which is left as it is."""
    global _kept
    if _kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 disables trimming altogether (mallopt(3)); 0 mmapped blocks: large blocks come from the heap too
    _kept = bool(mallopt(_M_TRIM_THRESHOLD, -1)) and bool(mallopt(_M_MMAP_MAX, 0))
    if _kept:
        log.info("host memory: freed blocks stay in the heap for reuse (--no-keep-freed-memory to return them)")
    return _kept
