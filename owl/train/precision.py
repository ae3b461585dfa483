"""``train.precision: auto``: bf16 autocast where it is faster, fp32 where it is not.

CPUs differ from one machine to the next: one with AMX runs bf16 GEMMs ~6x faster than fp32 (a bf16-autocast
training step ~2-3x faster), one without runs them 10-400x slower. A fixed choice is wrong on one of them, so
``auto`` on a CPU measures both once per process (two GEMM timings, well under a second) and takes bf16 only
when it is at least :data:`MIN_SPEEDUP` times faster. Several processes on one machine must agree (a gradient all-reduce
between a bf16 and an fp32 replica would still run, but the replicas would drift apart), so there the decision
comes from the CPU's flags alone, which every process reads the same. On a GPU ``auto`` is bf16 autocast.
``OWL_CPU_BF16=1`` or ``=0`` skips the measurement (the test suite sets 0 so that its numeric comparisons do not
depend on the machine).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

MIN_SPEEDUP = 2.0  # bf16 GEMMs this much faster than fp32 before autocast pays (casts and fp32 ops remain)


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup(n: int = 512) -> float:
    """bf16 / fp32 GEMM throughput on this CPU with the current threads (measured once per process)."""
    from owl.bench.peak import gemm_tflops

    fp32 = gemm_tflops(n, torch.float32, seconds=0.2)["tflops"]
    bf16 = gemm_tflops(n, torch.bfloat16, seconds=0.2)["tflops"]
    return bf16 / fp32


def resolve_precision(requested: str) -> tuple[str, str]:
    """(accelerate's mixed_precision value, "no" or "bf16"; why) for ``train.precision``."""
    if requested == "fp32":
        return "no", "fp32 as configured"
    if requested == "bf16":
        if torch.cuda.is_available() or cpu_bf16_speedup() >= 1.0:
            return "bf16", "bf16 autocast as configured"
        return "bf16", f"bf16 autocast as configured (warning: bf16 GEMMs run {cpu_bf16_speedup():.2g}x fp32 here)"
    if torch.cuda.is_available():
        return "bf16", "auto: bf16 autocast on GPU"
    forced = os.environ.get("OWL_CPU_BF16")
    if forced in ("0", "1"):
        name = "bf16" if forced == "1" else "fp32"
        return ("bf16" if forced == "1" else "no"), f"auto: {name} (OWL_CPU_BF16={forced})"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        amx = "amx_bf16" in _cpu_flags()
        return ("bf16" if amx else "no"), f"auto: {'AMX' if amx else 'no AMX'} on this CPU (several processes)"
    speedup = cpu_bf16_speedup()
    choice = "bf16" if speedup >= MIN_SPEEDUP else "no"
    name = "bf16 autocast" if choice == "bf16" else "fp32"
    return choice, f"auto: {name} (bf16 GEMMs measured {speedup:.2g}x fp32 on this CPU)"


def resolve_llm_attention(requested: str, precision: str, device_type: str) -> tuple[str | None, str]:
    """(the LLM's attention implementation to set, or None to keep what it was loaded with; why).

    ``auto`` picks eager attention for bf16 autocast on a CPU: there torch's SDPA takes its flash kernel, whose
    bf16 backward took 16% of the Owl-World stage-1 step on short (~50-token) rows (AMD EPYC Zen 4, AVX512-BF16,
    torch 2.13), and the plain matmul-softmax path made the whole step 1.2x faster (benchmarks/NOTES.md §21). In
    fp32 the two ran alike, and GPUs keep SDPA.
    """
    if requested in ("sdpa", "eager"):
        return requested, f"{requested} as configured"
    if device_type == "cpu" and precision == "bf16":
        return "eager", "auto: eager (SDPA's flash kernel is slow in bf16 on CPUs)"
    return None, "auto: as loaded"
