"""Thread defaults for busy machines (issue 13): idle OpenMP threads sleep instead of spinning.

torch's CPU kernels run on OpenMP (libgomp on Linux). With ``OMP_WAIT_POLICY`` unset, libgomp lets a thread
that waits for work or at a barrier spin for ``GOMP_SPINCOUNT`` = 300,000 iterations before it sleeps. When
another process shares the cores, those spinning threads take the CPU that the thread they wait for needs, and
elementwise steps and convolutions slow down by 10-100x (``benchmarks/contention.py``). ``PASSIVE`` makes them
sleep at once. OpenMP reads its environment once, when torch loads, so this must run before ``import torch``.
"""
from __future__ import annotations

import os
import sys

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply() -> bool:
    """Set :data:`DEFAULTS` in ``os.environ`` where the user has not; True if torch was not loaded yet (they
    take effect, also in subprocesses), False if it was (nothing is set: OpenMP has read its environment)."""
    if "torch" in sys.modules:
        return False
    for key, val in DEFAULTS.items():
        os.environ.setdefault(key, val)
    return True
