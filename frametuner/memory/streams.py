"""Host <-> device copies on a side CUDA stream, ordered against the compute stream.

Both block swap and activation offload follow one rule: memory is allocated and freed
on the compute stream (so the caching allocator's stream ordering keeps it safe), and
only the copy runs on the side stream, after the side stream has waited for the
compute stream's work so far (the destination may reuse memory that compute freed).
Consumers make the compute stream wait for the copy's event before use. Without CUDA
every copy is synchronous, which keeps the same bookkeeping testable on a CPU.
"""

from __future__ import annotations

import math
import weakref
from collections import defaultdict

import torch


class TransferStream:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def asynchronous(self) -> bool:
        return self.stream is not None

    def copy(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.cuda.Event | None:
        """``dst.copy_(src)`` for each pair, on the side stream; returns the completion event.

        Sources on the device (device-to-host copies) are kept alive until the copy is done
        with ``record_stream``.
        """
        if self.stream is None:
            for dst, src in pairs:
                dst.copy_(src)
            return None
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            for dst, src in pairs:
                dst.copy_(src, non_blocking=True)
                for tensor in (dst, src):
                    if tensor.device.type == "cuda":
                        tensor.record_stream(self.stream)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def wait(self, event: torch.cuda.Event | None) -> None:
        """Make the current (compute) stream wait for ``event``."""
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)


def pinned_bytes(nbytes: int) -> torch.Tensor:
    """``nbytes`` of page-locked host memory as a uint8 tensor (plain memory without CUDA).

    PyTorch's pinned allocator rounds every allocation up to a power of two (a 0.3 GB block
    would take 0.5 GB); registering an exact-size allocation with CUDA does not. Views of
    the returned tensor must not outlive it: it is unregistered when it is collected.
    """
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    if not torch.cuda.is_available() or nbytes == 0:
        return buffer
    cudart = torch.cuda.cudart()
    if int(cudart.cudaHostRegister(buffer.data_ptr(), nbytes, 0)) != 0:
        return buffer.pin_memory()  # registration refused (limits): the rounding allocator
    weakref.finalize(buffer, cudart.cudaHostUnregister, buffer.data_ptr())
    return buffer


class PinnedPool:
    """Reusable exact-size pinned buffers (activation offload: the same shapes every step)."""

    def __init__(self):
        self._free: dict[int, list[torch.Tensor]] = defaultdict(list)

    def take(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        free = self._free[nbytes]
        buffer = free.pop() if free else pinned_bytes(nbytes)
        return buffer.view(dtype).view(shape), buffer

    def give_back(self, buffer: torch.Tensor) -> None:
        """Return ``buffer``; reuse is safe once every copy from it was issued on the side stream."""
        self._free[buffer.numel()].append(buffer)
