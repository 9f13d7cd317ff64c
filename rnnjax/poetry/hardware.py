"""Which training precision a machine runs fastest: `train.py --precision auto` (the default).

bfloat16 mixed precision halves the bytes every matmul reads, and where the hardware multiplies
bfloat16 natively it is the faster step at the same quality: 2.05-2.13x float32's real tokens/s on
an Intel Xeon with AVX512-BF16 and AMX, 1.53-1.63x on an AMD EPYC with AVX512-BF16, and validation
perplexity after 400 steps within 2% of float32's over six seeds (README, Performance). Without
native bfloat16 every product widens its operands in software first; no such machine could be
measured here, so `auto` keeps float32 there, the default before `auto`. nanoGPT chooses its dtype
the same way.

    >>> from rnnjax.poetry.hardware import auto_precision
    >>> auto_precision(["cpu"], cpu_flags_text="fpu avx2 avx512f avx512_bf16")
    'bfloat16'
    >>> auto_precision(["cpu"], cpu_flags_text="fpu avx2")
    'float32'
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["auto_precision", "cpu_flags", "native_bfloat16", "BF16_CPU_FLAGS"]

# x86 flags (as /proc/cpuinfo spells them) of a native bfloat16 dot product: AVX512-BF16's
# `vdpbf16ps` (Intel Cooper Lake and later, AMD Zen 4 and later) or AMX's tile multiply.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# CUDA compute capability from which tensor cores multiply bfloat16 (Ampere).
BF16_GPU_CAPABILITY = 8.0


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags from `cpuinfo` (Linux); empty where it cannot be read (macOS,
    Windows), which `native_bfloat16` takes as no native bfloat16."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def native_bfloat16(platform: str, *, compute_capability: str | None = None,
                    flags: frozenset[str] | None = None) -> bool:
    """Whether a device of `platform` ("cpu", "gpu"/"cuda", "tpu", ...) multiplies bfloat16 in
    hardware: a TPU always, a GPU from compute capability 8.0, a CPU with one of `BF16_CPU_FLAGS`
    (`flags`: default this machine's `cpu_flags()`)."""
    if platform == "tpu":
        return True
    if platform in ("gpu", "cuda"):
        try:
            return float(compute_capability) >= BF16_GPU_CAPABILITY
        except (TypeError, ValueError):
            return False
    if platform == "cpu":
        return bool((cpu_flags() if flags is None else flags) & BF16_CPU_FLAGS)
    return False


def auto_precision(devices: Sequence, *, cpu_flags_text: str | None = None) -> str:
    """"bfloat16" if every one of `devices` (jax devices, or platform names) multiplies bfloat16
    natively, else "float32". `cpu_flags_text` stands in for /proc/cpuinfo's flags (tests)."""
    flags = None if cpu_flags_text is None else frozenset(cpu_flags_text.split())
    for d in devices:
        platform = d if isinstance(d, str) else d.platform
        capability = None if isinstance(d, str) else getattr(d, "compute_capability", None)
        if not native_bfloat16(platform, compute_capability=capability, flags=flags):
            return "float32"
    return "bfloat16" if len(devices) else "float32"
