"""Host <-> device copies on a side CUDA stream, ordered against the compute stream.

Both block swap and activation offload follow one rule: memory is allocated and freed
on the compute stream (so the caching allocator's stream ordering keeps it safe), and
only the copy runs on the side stream, after the side stream has waited for the
compute stream's work so far (the destination may reuse memory that compute freed).
Consumers make the compute stream wait for the copy's event before use. Without CUDA
every copy is synchronous, which keeps the same bookkeeping testable on a CPU.
"""

from __future__ import annotations

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


def host_buffer_like(tensor: torch.Tensor) -> torch.Tensor:
    """An empty host tensor shaped like ``tensor``, pinned when CUDA is there to copy from it."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=torch.cuda.is_available())
