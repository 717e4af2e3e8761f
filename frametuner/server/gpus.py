"""How many jobs may run at once: one per GPU, found without importing torch."""

from __future__ import annotations

import os
import shutil
import subprocess

CPU_SLOT = "cpu"


def detect_gpus() -> list[str]:
    """Device ids jobs may be pinned to: ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``.

    An empty list means a CPU-only machine (the scheduler then runs one job at a time).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        # "-1" (or any negative id) hides every device from CUDA.
        return [] if not ids or ids[0].startswith("-") else ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(index) for index, line in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def scheduling_slots(gpus: list[str] | None = None) -> list[str]:
    """One slot per GPU id, or a single CPU slot."""
    found = detect_gpus() if gpus is None else list(gpus)
    return found or [CPU_SLOT]
