"""Thread defaults (issue 13): ``import snnconv_ext`` before torch makes libgomp sleep instead of spinning,
as libgomp itself reports (OMP_DISPLAY_ENV), and never overrides a user's own setting."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = "import {first}, {second}, os; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"


def _run(first: str, second: str, **env: str):
    """(OMP_WAIT_POLICY seen by Python, libgomp's GOMP_SPINCOUNT or None) in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    clean.update(env, OMP_DISPLAY_ENV="VERBOSE",
                 PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins"), clean.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", CODE.format(first=first, second=second)], env=clean,
                       capture_output=True, text=True, check=True, timeout=120)
    spin = [ln.split("=")[1].strip(" '") for ln in r.stderr.splitlines() if "GOMP_SPINCOUNT" in ln]
    return r.stdout.split()[-1], (int(spin[0]) if spin else None)


@pytest.mark.slow
def test_passive_by_default_and_libgomp_stops_spinning():
    policy, spin = _run("snnconv_ext", "torch")
    assert policy == "PASSIVE"
    if spin is None:
        pytest.skip("torch's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT report)")
    _, spin_unset = _run("torch", "snnconv_ext")  # torch first: nothing set, libgomp's own default
    assert spin == 0 and spin_unset > 0


@pytest.mark.slow
def test_user_setting_wins():
    policy, spin = _run("snnconv_ext", "torch", OMP_WAIT_POLICY="ACTIVE")
    assert policy == "ACTIVE"
    assert spin is None or spin > 0


@pytest.mark.slow
def test_plugin_first_applies_defaults():
    assert _run("snnconv_spikingjelly", "torch")[0] == "PASSIVE"


FAULTS = """
import resource, snnconv_ext, torch
faults = 0
for i in range(10):  # a simulation's pattern: 64 MiB buffers (above glibc's largest mmap threshold) made and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(1 << 24); y = x * 2; del x; z = y + 1; del y, z
    faults += (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) if i else 0
print(faults)
"""


def _faults(**env: str) -> int:
    """Minor page faults of nine rounds of three 64 MiB tensors after a first round, in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "SNNCONV_MALLOC"}
    clean.update(env, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins"), clean.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", FAULTS], env=clean, capture_output=True, text=True, check=True,
                       timeout=120)
    return int(r.stdout.split()[-1])


@pytest.mark.slow
def test_freed_buffers_are_reused_without_page_faults():
    # glibc mmaps every 64 MiB block afresh (16384 faults of 4 KiB each); after import snnconv_ext freed blocks
    # are mostly reused (posix_memalign's padding sometimes needs a new one)
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt only")
    system = _faults(SNNCONV_MALLOC="system")
    assert system > 9 * 3 * 16384 * 0.9 and _faults() < 0.25 * system


def test_malloc_left_alone_when_the_user_tunes_it(monkeypatch):
    from snnconv_ext import _malloc
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert _malloc.apply() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("SNNCONV_MALLOC", "system")
    assert _malloc.apply() is False
