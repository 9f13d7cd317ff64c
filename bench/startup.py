"""Start-up time of the everyday command: `python generate.py --prefix 春`, wall clock, warm machine.

    python bench/startup.py [--runs 5] [--no-cache] [--repo DIR] [-- extra generate.py flags]

One untimed run first (it fills the OS file cache and JAX's persistent compilation cache, as any
earlier use would), then `--runs` timed runs, each a fresh process as a user would start it; prints
every time, the median and whether it is within the target (2.0 s, issue 15), and the CPU time
(user + system) the runs took: on a machine shared with other work the wall time grows with the
load, the CPU time much less. `--no-cache` runs with
RNNJAX_CACHE_DIR="" (no persistent compilation cache), to show what the cache saves. `--repo DIR`
times another checkout, e.g. an earlier commit unpacked with `git archive <commit> | tar -x -C DIR`,
for a before / after on the same machine and load.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import describe  # bench/machine.py: the script's own folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 2.0


def _children_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def run_once(repo: Path, args: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s, result) of one fresh `python generate.py ARGS` in `repo`."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    r = subprocess.run([sys.executable, "generate.py", *args], cwd=repo, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, _children_cpu() - cpu0, r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    p.add_argument("--no-cache", action="store_true", help="without the persistent compilation cache")
    p.add_argument("--repo", type=Path, default=REPO, help="checkout to time (default: this one)")
    p.add_argument("extra", nargs="*", help="generate.py flags (default: --prefix 春)")
    a = p.parse_args(argv)
    args = a.extra or ["--prefix", "春"]
    env = {**os.environ, "PYTHONPATH": str(a.repo.resolve())}
    if a.no_cache:
        env["RNNJAX_CACHE_DIR"] = ""
    _, _, r = run_once(a.repo, args, env)  # warm-up, not timed
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return 1
    times, cpus = [], []
    for _ in range(a.runs):
        t, cpu, r = run_once(a.repo, args, env)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        times.append(t)
        cpus.append(cpu)
    median = statistics.median(times)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"python generate.py {' '.join(args)}   ({a.repo}{', no compilation cache' if a.no_cache else ''})")
    print("wall: " + ", ".join(f"{t:.2f}" for t in times) + " s;  CPU: " + ", ".join(f"{c:.2f}" for c in cpus)
          + f" s;  load average {load:.1f} on {os.cpu_count()} cores")
    print(f"machine: {describe()}")
    print(f"median of {len(times)}: {median:.2f} s wall, {statistics.median(cpus):.2f} s CPU "
          f"(target <= {TARGET_S:.1f} s wall: {'met' if median <= TARGET_S else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
