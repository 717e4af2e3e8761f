"""Compile once: torch.compile's caches in a persistent folder.

Regional compilation of the DiT blocks costs about a minute per shape on the first step
(bench/NOTES.md). Inductor's FX graph cache and AOTAutograd's cache (forward + backward
graphs) and Triton's compiled kernels make a later run of the same config skip most of it,
but by default they live under /tmp (lost on reboot, not shared with containers). frametuner
keeps them in one documented folder:

    $FRAMETUNER_COMPILE_CACHE                 if set, else
    $FRAMETUNER_HOME/compile-cache            (FRAMETUNER_HOME defaults to ~/.cache/frametuner)

with ``inductor/`` (TORCHINDUCTOR_CACHE_DIR) and ``triton/`` (TRITON_CACHE_DIR) inside.
Variables the user already set win. Set before anything compiles; deleting the folder is
always safe (the next run compiles again).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "FRAMETUNER_COMPILE_CACHE"


def compile_cache_dir() -> Path:
    """The folder of torch's compile caches (see the module docstring)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    home = os.environ.get("FRAMETUNER_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "frametuner")
    return Path(home) / "compile-cache"


def enable_compile_cache(folder: str | Path | None = None) -> Path:
    """Point inductor's and Triton's caches at ``folder`` (default :func:`compile_cache_dir`)
    and turn on the FX graph and AOTAutograd caches; returns the folder."""
    folder = Path(folder) if folder is not None else compile_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    import torch._functorch.config
    import torch._inductor.config

    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    keep_rng_ops_cacheable()
    log.info("torch.compile caches in %s (inductor: %s)", folder, os.environ["TORCHINDUCTOR_CACHE_DIR"])
    return folder


def keep_rng_ops_cacheable() -> bool:
    """Turn off AOTAutograd's CUDA-graph-safe RNG wrapping where inductor cannot cache it.

    Every SDPA op is tagged random (it supports dropout), so in a checkpointed block graph the
    partitioner wraps the recomputed attention in an RNG-state HOP. On CUDA it picks the
    CUDA-graph-safe ``graphsafe_run_with_rng_state``, which torch 2.11's FX graph cache cannot
    key: the H100 logged "Can't cache HigherOrderOperator: graphsafe_run_with_rng_state" for
    every block graph, and a second run compiled from scratch (bench/RESULTS.md). frametuner does
    not capture CUDA graphs, so the plain ``run_with_rng_state`` wrapping (what a CPU gets, and
    caches) is equivalent. Only where that HOP is not cacheable (fixed in later torch releases).
    Returns whether it changed the setting."""
    import torch._functorch.config
    from torch._prims import rng_prims

    hop = getattr(rng_prims, "graphsafe_run_with_rng_state", None)
    if hop is None or hop.cacheable() or not torch._functorch.config.graphsafe_rng_functionalization:
        return False
    torch._functorch.config.graphsafe_rng_functionalization = False
    log.info("torch.compile: CUDA-graph-safe RNG wrapping off (this torch cannot cache it)")
    return True
