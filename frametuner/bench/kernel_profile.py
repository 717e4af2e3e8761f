"""Where the time of one call goes on the GPU: kernel time by kind, and the GPU's idle time.

``profile_call(fn)`` runs ``fn`` once under ``torch.profiler`` (CUDA activity only, so the
host-side overhead of recording stays small) and sums the device time of every kernel and
copy by category: GEMM, attention, fused (Triton, i.e. inductor's elementwise/norm
kernels), fp8 casts, memory copies, other. ``busy_s`` is the union of the compute
kernels' intervals (copies on a side stream overlap them, so they are left out of it);
``wall_s - busy_s`` is time the compute stream waited: host launches, syncs, a copy that
was not hidden. The issue's rule: a speed goal not reached is reported with this summary.

The summary functions take plain ``(name, start_us, duration_us)`` triples, so they are
tested without a GPU (tests/bench/test_kernel_profile.py).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

CATEGORIES = ("gemm", "attention", "fused", "fp8_cast", "copy", "other")

_ATTENTION = ("flash", "fmha", "sdpa", "attention", "attn")
_GEMM = ("gemm", "xmma", "nvjet", "cutlass", "gemv", "matmul", "dot_kernel", "splitk", "scaled_mm")
_COPY = ("memcpy", "memset")
_FP8 = ("float8", "fp8", "amax", "to_fp8", "scale_")


def categorise(name: str) -> str:
    """The category of one kernel (or copy) by its name."""
    lowered = name.lower()
    if any(key in lowered for key in _COPY):
        return "copy"
    if any(key in lowered for key in _ATTENTION):
        return "attention"
    if any(key in lowered for key in _GEMM):
        return "gemm"
    if lowered.startswith("triton") and any(key in lowered for key in _FP8):
        return "fp8_cast"
    if lowered.startswith("triton"):
        return "fused"
    if any(key in lowered for key in _FP8):
        return "fp8_cast"
    return "other"


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length (seconds) of the union of ``(start_us, end_us)`` intervals."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total / 1e6


def summarise(kernels: list[tuple[str, float, float]], wall_s: float, top: int = 12) -> dict[str, Any]:
    """Kernel seconds per category, the busy (union of compute kernels) and idle seconds, and
    the ``top`` kernels by total time (name shortened, calls, seconds)."""
    by_category = {category: 0.0 for category in CATEGORIES}
    by_name: dict[str, list[float]] = {}
    compute_intervals = []
    for name, start, duration in kernels:
        category = categorise(name)
        by_category[category] += duration / 1e6
        entry = by_name.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += duration / 1e6
        if category != "copy":
            compute_intervals.append((start, start + duration))
    busy = union_seconds(compute_intervals)
    ranked = sorted(by_name.items(), key=lambda item: -item[1][1])[:top]
    return {
        "wall_s": wall_s,
        "busy_s": busy,
        "idle_s": max(0.0, wall_s - busy),
        "kernels": len(kernels),
        "seconds": {key: round(value, 4) for key, value in by_category.items()},
        "top": [{"name": name[:120], "calls": int(calls), "s": round(seconds, 4), "category": categorise(name)} for name, (calls, seconds) in ranked],
    }


def one_line(summary: dict[str, Any]) -> str:
    """The summary in a RESULTS.md cell: wall, busy, then each non-empty category."""
    parts = [f"{key} {value:.2f}" for key, value in summary["seconds"].items() if value >= 0.005]
    return (f"profile of one call: wall {summary['wall_s']:.2f} s, GPU busy {summary['busy_s']:.2f} s "
            f"(idle {summary['idle_s']:.2f}); kernel s: " + ", ".join(parts))


def profile_call(fn: Callable[[], Any], top: int = 12) -> dict[str, Any]:
    """Run ``fn`` once under the CUDA profiler and :func:`summarise` its kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    kernels = []
    for event in prof.events():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            span = event.time_range
            kernels.append((event.name, float(span.start), float(span.end - span.start)))
    return summarise(kernels, wall, top)
