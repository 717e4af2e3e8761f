"""The default memory decisions of a training run, from the machine it runs on.

Two levers decide the speed of the default step (bench/NOTES.md, issue 23):

* the **auto checkpointing policy's budget**: the peak GPU memory it fills with blocks
  that keep their attention outputs. It comes from the card's real capacity (what this
  process can have: free memory plus what it already holds, capped at the card's total)
  minus a safety margin for the allocator's fragmentation and the CUDA context;
* **activation offload** (``gradient_checkpointing_cpu_offload``): the checkpointed block
  inputs wait in pinned host memory, which frees ``blocks x one activation`` of GPU memory
  for saved attention. Unset (null), it is on where that room is used (CUDA, gradient
  checkpointing with the auto policy); the host RAM it pins is checked per training shape
  (:func:`host_ram_allows`) before any is taken, so a machine without the RAM trains as
  before instead of running out of memory. An explicit true/false always wins.

The decision functions take plain numbers, so they are tested without a GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

GiB = 2**30
# Kept free under the budget: fragmentation of the caching allocator (reserved above
# allocated), the CUDA context and cuBLAS/cuDNN workspaces. 6% of an 80 GB card is 4.8 GiB.
BUDGET_MARGIN_FRACTION = 0.06
BUDGET_MARGIN_MIN = 2 * GiB
# Host RAM left to everything else (data loading, the OS, the validation VAE) when pinning.
HOST_MARGIN_FRACTION = 0.10
HOST_MARGIN_MIN = 4 * GiB


def activation_budget_bytes(capacity: int, total: int) -> int:
    """The auto policy's peak-memory budget: ``capacity`` (bytes this process can use on the
    card) minus the safety margin (6% of the card's ``total``, at least 2 GiB)."""
    margin = max(BUDGET_MARGIN_MIN, int(BUDGET_MARGIN_FRACTION * total))
    return max(0, min(capacity, total) - margin)


def gpu_capacity(device) -> tuple[int, int]:
    """``(capacity, total)`` bytes of a CUDA ``device``: free memory plus what this process's
    allocator already reserved (its own model and tensors), and the card's total."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return min(total, free + torch.cuda.memory_reserved(device)), total


def auto_activation_budget(device) -> int:
    """:func:`activation_budget_bytes` of a CUDA ``device`` as it is now."""
    capacity, total = gpu_capacity(device)
    return activation_budget_bytes(capacity, total)


@dataclass(frozen=True)
class OffloadDecision:
    """Whether activation offload is on, why, and whether it still checks host RAM per shape."""

    enabled: bool
    reason: str
    check_host_ram: bool = False


def decide_activation_offload(
    explicit: bool | None, *, device_type: str, gradient_checkpointing: bool, policy: str, training: bool = True, processes: int = 1
) -> OffloadDecision:
    """``gradient_checkpointing_cpu_offload`` as the run will use it.

    ``explicit`` (the user's true/false) wins. Unset, it is on only where it buys speed:
    training on CUDA with gradient checkpointing under the ``auto`` policy, which turns the
    GPU memory it frees into blocks that keep their attention, in a single process; the host
    RAM is then checked at each new training shape (``check_host_ram``).
    """
    if explicit is not None:
        return OffloadDecision(bool(explicit) and training, "set in the config" if explicit else "off in the config")
    if not training:
        return OffloadDecision(False, "sampling")
    if device_type != "cuda":
        return OffloadDecision(False, f"auto: off on {device_type} (it frees GPU memory only)")
    if not gradient_checkpointing:
        return OffloadDecision(False, "auto: off without gradient checkpointing")
    if processes > 1:  # each rank would pin its own copy; measured on one GPU only so far
        return OffloadDecision(False, f"auto: off with {processes} processes (set gradient_checkpointing_cpu_offload: true to use it)")
    if policy != "auto":
        return OffloadDecision(False, f"auto: off with gradient_checkpointing_policy {policy!r} (nothing would use the room it frees)")
    return OffloadDecision(True, "auto: on, the auto checkpointing policy keeps attention in the room it frees", check_host_ram=True)


def host_available_bytes() -> int:
    """Host memory available to new allocations without swapping: ``MemAvailable`` of
    /proc/meminfo (Linux), else the free physical pages."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def host_total_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def local_processes() -> int:
    """Training processes on this host (each pins its own activations)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def host_ram_allows(needed: int, available: int, total: int, processes: int = 1) -> bool:
    """Whether ``needed`` bytes of pinned memory per process fit this host: every process's
    share of ``available`` must hold it plus a margin (10% of ``total`` RAM, at least 4 GiB)."""
    margin = max(HOST_MARGIN_MIN, int(HOST_MARGIN_FRACTION * total))
    return needed * processes + margin <= available
