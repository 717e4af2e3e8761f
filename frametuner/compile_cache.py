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
    log.info("torch.compile caches in %s (inductor: %s)", folder, os.environ["TORCHINDUCTOR_CACHE_DIR"])
    return folder
