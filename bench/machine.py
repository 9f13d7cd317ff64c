"""One line naming the machine a benchmark ran on: figures differ by CPU far more than by run.

    >>> from machine import describe
    >>> describe()  # doctest: +SKIP
    'Intel(R) Xeon(R) Processor, 2 cores, L2 2 MiB a core, L3 480 MiB, flags avx512f avx512_bf16 amx_bf16'

The project's sessions have run on AMD EPYC and Intel Xeon machines of 2 cores, and a ratio against
the tutorial can move 2x between them (the README's Performance section has a column for each).
"""
from __future__ import annotations

import os
from pathlib import Path

from rnnjax.poetry.hardware import cpu_flags

__all__ = ["describe"]

# The instruction-set extensions that decide which of XLA:CPU's and oneDNN's kernels run.
FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "avx2")


def _cache(index: int) -> str | None:
    size = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
    try:
        text = size.read_text().strip()
    except OSError:
        return None
    return f"{int(text[:-1]) // 1024} MiB" if text.endswith("K") and int(text[:-1]) >= 1024 else text


def describe() -> str:
    """CPU model, cores, L2 and L3 sizes and the relevant flags, from /proc and /sys (Linux); the
    core count alone elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{os.cpu_count()} cores"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    flags = cpu_flags()
    parts = [model, f"{os.cpu_count()} cores"]
    if (l2 := _cache(2)) is not None:
        parts.append(f"L2 {l2} a core")
    if (l3 := _cache(3)) is not None:
        parts.append(f"L3 {l3}")
    have = [f for f in FLAGS if f in flags]
    if "avx512f" in have and "avx2" in have:
        have.remove("avx2")  # implied
    return ", ".join(parts + [f"flags {' '.join(have)}"] if have else parts)


if __name__ == "__main__":
    print(describe())
