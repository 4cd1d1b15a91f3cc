"""Benchmarks: convlayer side by side with PyTorch (and JAX when installed) in one process."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def steady_allocator() -> bool:
    """Keep freed memory in the process, so that no timed call gets fresh pages from the OS (glibc only).

    Both frameworks allocate their results, and PyTorch its temporaries, on
    every call. With glibc's defaults a block above the mmap threshold
    (dynamic, 128 KB to 32 MB) comes straight from the OS and every first
    touch of its pages faults (about 1 GB/s on the development VM), and
    freed memory at the top of the heap is handed back. A timing then
    depends on which problems ran before it: PyTorch's depthwise stride-2
    forward took 9 ms inside the suite and 26 ms run alone. With both
    thresholds raised every call runs in steady state, for every framework
    alike. Returns False (and changes nothing) where this is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mapped = mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # older glibc: 32 MB cap
    return bool(mapped) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
