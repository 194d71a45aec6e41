"""Slowdown of snnconv's CPU work when another process shares the cores (issue 13), old vs new thread defaults.

Each configuration runs in its own subprocess (OpenMP reads its environment once, when torch loads), once on
the machine as it is ("idle") and once while competitors run: one busy-looping Python process per core
("busy") and, with ``--twin``, a second torch process running the same workloads under the same settings
("twin": two snnconv jobs sharing the machine). Competitors inherit this process's niceness, so run the whole
benchmark under ``nice`` on a shared machine. Per workload it prints the mean time of one call and the
slowdown loaded/idle; compare ratios measured in one run, not seconds across runs.

Workloads: ``if`` = one IF neuron step (``neuron.step_``) on a [128, 32, 24, 24] current (one time step of a
[T=32, 128, 32, 24, 24] window), ``snm`` = one signed neuron step with SNM memory, ``conv`` = a 3x3 conv
forward (32 -> 32 channels, batch 32, 24x24).

Usage: nice -n 10 python benchmarks/contention.py [--budget 1.5] [--configs old,new] [--twin]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

WORKLOADS = ("if", "snm", "conv")
_OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_BLOCKTIME")
# name -> (environment set before torch loads, torch.set_num_threads value or None, import snnconv_ext first)
CONFIGS = {
    "old": ({}, None, False),  # before issue 13: nothing set, torch's default of one thread per core
    "new": ({}, None, True),  # whatever `import snnconv_ext` (before torch) sets
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, None, False),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None, False),
    "spin10k": ({"GOMP_SPINCOUNT": "10000"}, None, False),
    "1thread": ({}, 1, False),
    "passive-1thread": ({"OMP_WAIT_POLICY": "PASSIVE"}, 1, False),
}


def _worker(budget: float, first: bool, threads: Optional[int], forever: bool) -> None:
    """Time each workload for about ``budget`` seconds; print one JSON line {workload: median seconds}."""
    if first:
        import snnconv_ext  # noqa: F401  (its thread defaults, before torch loads)
    import torch
    from snnconv_ext import neuron
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.rand(128, 32, 24, 24)
    conv, img = torch.nn.Conv2d(32, 32, 3, padding=1), torch.rand(32, 32, 24, 24)
    out, work = torch.empty_like(x), [torch.empty_like(x), torch.empty_like(x)]
    p_if = neuron.NeuronParams(theta=0.9).to(x)
    p_snm = neuron.NeuronParams(theta=0.9, theta_neg=0.9, memory=True).to(x)
    s_if, s_snm = neuron.init_state(x, p_if), neuron.init_state(x, p_snm)
    pts_if, pts_snm = neuron._points(p_if), neuron._points(p_snm)
    calls = {"if": lambda: neuron.step_(x, s_if, p_if, out=out, points=pts_if),
             "snm": lambda: neuron.step_(x - 0.5, s_snm, p_snm, out=out, points=pts_snm, work=work),
             "conv": lambda: conv(img)}
    with torch.no_grad():
        while True:
            result: Dict[str, float] = {"threads": torch.get_num_threads(),
                                        "wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}
            for name in WORKLOADS:
                fn = calls[name]
                fn(); fn()  # warm-up
                times: List[float] = []
                t_end = time.perf_counter() + budget
                while time.perf_counter() < t_end or len(times) < 3:
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                result[name] = statistics.fmean(times)  # mean: stalls count as often as they happen
            if not forever:
                print(json.dumps(result), flush=True)
                return


def _env(config: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OMP_VARS}
    env.update(CONFIGS[config][0])
    return env


def _args(config: str, budget: float, forever: bool = False) -> List[str]:
    _, threads, first = CONFIGS[config]
    a = [sys.executable, os.path.abspath(__file__), "--worker", "--budget", str(budget)]
    return a + (["--threads", str(threads)] if threads else []) + (["--first"] if first else []) \
        + (["--forever"] if forever else [])


def _measure(config: str, budget: float, load: str) -> Dict[str, float]:
    """Run one worker for ``config`` with the given competitors ("idle", "busy", "twin")."""
    comps = []
    if load == "busy":
        comps = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                 for _ in range(len(os.sched_getaffinity(0)))]
    elif load == "twin":
        comps = [subprocess.Popen(_args(config, budget, forever=True), env=_env(config), stdout=subprocess.DEVNULL)]
    try:
        if comps:
            time.sleep(1.0)  # let the competitors start (the twin loads torch)
        r = subprocess.run(_args(config, budget), env=_env(config), capture_output=True, text=True, check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        for c in comps:
            c.kill()
            c.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of timing per workload and configuration")
    ap.add_argument("--configs", default="old,new", help=f"comma-separated, from: {', '.join(CONFIGS)}")
    ap.add_argument("--twin", action="store_true", help="also measure against a second torch process")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return _worker(a.budget, a.first, a.threads, a.forever)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"--configs: unknown configuration {c!r}; known: {', '.join(CONFIGS)}")
    loads = ["idle", "busy"] + (["twin"] if a.twin else [])
    res = {(c, ld): _measure(c, a.budget, ld) for c in configs for ld in loads}
    print(f"{len(os.sched_getaffinity(0))} cores, niceness {os.nice(0)}, load average {os.getloadavg()[0]:.2f} at "
          f"the end; mean ms per call, (x) = slowdown against the same configuration's idle run")
    for c in configs:
        r = res[(c, "idle")]
        print(f"  {c}: {int(r['threads'])} torch threads, OMP_WAIT_POLICY {r['wait_policy']}")
    head = f"{'workload':<8} {'load':<5}" + "".join(f" {c:>18}" for c in configs) + \
        (f" {configs[0] + '/' + configs[-1]:>10}" if len(configs) > 1 else "")
    print(head)
    print("-" * len(head))
    for w in WORKLOADS:
        for ld in loads:
            row = f"{w:<8} {ld:<5}"
            for c in configs:
                t = res[(c, ld)][w]
                row += f" {1e3 * t:>9.2f} ({t / res[(c, 'idle')][w]:>5.1f}x)"
            if len(configs) > 1:
                row += f" {res[(configs[0], ld)][w] / res[(configs[-1], ld)][w]:>9.1f}x"
            print(row)

if __name__ == "__main__":
    main()
