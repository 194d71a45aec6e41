"""glibc malloc defaults for simulation on CPU: keep freed memory for reuse instead of handing it back.

glibc serves allocations above 32 MiB (its largest mmap threshold) with a fresh ``mmap`` and unmaps them on free,
so every chunk of a simulation page-faults its spike and current buffers (``[chunk * B, C, H, W]``) in again:
measured on Net4 (batch 128, 4 steps per chunk, 1 thread), a quarter of the simulation time. With mmap off and a
1 GiB trim threshold, freed blocks are reused. Skipped where the user tunes malloc (``MALLOC_*`` variables) or
sets ``SNNCONV_MALLOC=system``, and off glibc (``mallopt`` missing or refusing).
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
TRIM_BYTES = 1 << 30


def apply() -> bool:
    """Set the defaults above; True if glibc took them."""
    if os.environ.get("SNNCONV_MALLOC") == "system" or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1
