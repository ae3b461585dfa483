"""`owl bench peak`: this machine's measured matrix-multiply throughput, the denominator of every MFU figure.

Machines differ from one session to the next (one CPU has AMX and runs bf16 GEMMs 6x faster than fp32, another
has none and runs them 10-400x slower), so a step time means little without the peak measured beside it, in the
same run, with the same threads. Each precision is timed on square GEMMs (``C = A @ B``, 2 n^3 FLOPs) after a
warm-up, repeated until ``seconds`` have passed; the figure is the median of the repeats.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gemm_tflops(n: int, dtype: torch.dtype, seconds: float = 1.0, device: str = "cpu") -> dict[str, float]:
    """Median TFLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` (and the spread), timed for about ``seconds``."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t = time.perf_counter()
    a @ b  # warm-up: thread pools, kernel selection, caches
    sync()
    # A precision with no fast kernels (bf16 without AMX: 10-400x slower) takes many seconds per GEMM at n=2048:
    # then one more warm-up and three repeats would take minutes, so it gets a single timed repeat.
    slow = time.perf_counter() - t > seconds / 3
    if not slow:
        a @ b
        sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < (1 if slow else 3) or (time.perf_counter() - start < seconds and len(times) < 1000):
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    flops = 2.0 * n**3
    rates = sorted(flops / t / 1e12 for t in times)
    return {"tflops": statistics.median(rates), "min": rates[0], "max": rates[-1], "repeats": len(rates)}


def machine() -> dict[str, Any]:
    """What the figures were measured on (they hold for this machine and thread count only)."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["amx"] = "amx_bf16" in flags
                info["avx512_bf16"] = "avx512_bf16" in flags
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def measure_peak(n: int = 2048, seconds: float = 2.0, dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, Any]:
    """Peak GEMM throughput per precision on this machine's default device, with the machine's description."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result: dict[str, Any] = {"machine": machine(), "device": device, "n": n, "peak": {}}
    for name in dtypes:
        result["peak"][name] = gemm_tflops(n, DTYPES[name], seconds, device)
    return result


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Peak GEMM throughput on {m['cpu']} ({result['device']}, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, n={result['n']}):",
        "",
        "| precision | TFLOP/s (median) | min | max | repeats |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in result["peak"].items():
        lines.append(f"| {name} | {r['tflops']:.3f} | {r['min']:.3f} | {r['max']:.3f} | {r['repeats']} |")
    return "\n".join(lines) + "\n"


def run_peak(out: str | Path = "runs/bench", n: int = 2048, seconds: float = 2.0) -> dict[str, Any]:
    """Measure, write ``peak.json`` and ``peak.md`` under ``out``, and return the result."""
    result = measure_peak(n, seconds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peak.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "peak.md").write_text(markdown(result))
    return result
