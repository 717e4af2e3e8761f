"""Activation offload: checkpointed block inputs wait in pinned host memory for the backward.

With gradient checkpointing the only activation a block keeps between forward and
backward is its input hidden states (B x N x C; 0.3 GB per block at 480p, 15 GB over 48
blocks). ``torch.utils.checkpoint`` saves its inputs as autograd saved tensors *outside*
its own recomputation hooks, so a ``saved_tensors_hooks`` context around the block call
sees exactly those, and nothing computed inside the block. The pack hook moves the
hidden states (and only them: text, timestep embedding and RoPE tables are small or
shared by every block) to pinned host memory on a side stream; the unpack hook brings
them back, and already starts the copy of the previous block's input, so the transfer
overlaps the current block's recomputation and backward.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass

import torch

from ..models.family import BlockModel
from .blocks import BlockHook, BlockRunner
from .errors import MemoryOptionError
from .streams import PinnedPool, TransferStream

log = logging.getLogger(__name__)


@dataclass
class _Offloaded:
    """One block input in host memory (``host``), possibly already on its way back."""

    order: int
    host: torch.Tensor
    device: torch.device
    to_host: torch.cuda.Event | None = None
    back: torch.Tensor | None = None  # device copy started by a prefetch
    back_event: torch.cuda.Event | None = None
    stride: tuple[int, ...] | None = None


class ActivationOffload(BlockHook):
    """See the module docstring. Create with :func:`enable_activation_offload`."""

    def __init__(self, device: torch.device, num_blocks: int = 0, check_host_ram: bool = False):
        self.transfer = TransferStream(device)
        self.pool = PinnedPool()
        self._entries: list[_Offloaded | None] = []  # this forward's inputs, in block order
        self.packed = 0  # counters for tests and logs
        self.prefetched = 0
        # The default (auto) setting checks, at each new input shape, that the host has the
        # pinned RAM for every block's input; a shape that does not fit trains without offload.
        self.num_blocks = num_blocks
        self.check_host_ram = check_host_ram
        self.host_ram_ok: dict[tuple, bool] = {}
        self._active = True

    def forward_pre(self, index: int) -> None:
        if index == 0 and torch.is_grad_enabled():
            self._entries = []  # a new forward: the previous one's entries were consumed

    def _fits_host(self, hidden_states: torch.Tensor) -> bool:
        from .auto import host_available_bytes, host_ram_allows, host_total_bytes, local_processes

        key = (tuple(hidden_states.shape), hidden_states.dtype)
        if key not in self.host_ram_ok:
            needed = self.num_blocks * hidden_states.numel() * hidden_states.element_size()
            available, total = host_available_bytes(), host_total_bytes()
            ok = host_ram_allows(needed, available, total, local_processes())
            self.host_ram_ok[key] = ok
            log.info(
                "activation offload (auto) at input %s: %s (needs %.1f GB pinned host memory, %.1f GB available)",
                "x".join(map(str, key[0])), "on" if ok else "off, not enough host RAM", needed / 2**30, available / 2**30,
            )
        return self.host_ram_ok[key]

    def call_context(self, index: int, hidden_states: torch.Tensor):
        if not torch.is_grad_enabled():
            return contextlib.nullcontext()
        if index == 0:
            self._active = not self.check_host_ram or self._fits_host(hidden_states)
        if not self._active:
            return contextlib.nullcontext()

        # Autograd keeps a saved tensor's pack hook alive until the backward releases it, so
        # the hook must not hold the block input itself: that kept every offloaded input on
        # the device too (15 GB at 480p). It holds a description of the input instead.
        target = _identity(hidden_states)

        def pack(tensor: torch.Tensor):
            if _identity(tensor) != target:
                return tensor
            return self._offload(tensor)

        return torch.autograd.graph.saved_tensors_hooks(pack, self._restore)

    def _offload(self, tensor: torch.Tensor) -> _Offloaded:
        host, buffer = self.pool.take(tensor.shape, tensor.dtype)
        event = self.transfer.copy([(host, tensor.detach())])
        entry = _Offloaded(order=len(self._entries), host=host, device=tensor.device, to_host=event, stride=tensor.stride())
        # Back to the pool when autograd drops the saved tensor: every copy from the buffer
        # was issued on the side stream by then, so the next copy into it waits for them.
        weakref.finalize(entry, self.pool.give_back, buffer)
        self._entries.append(entry)
        self.packed += 1
        return entry

    def _restore(self, packed):
        if not isinstance(packed, _Offloaded):
            return packed
        self._bring_back(packed)
        if packed.order > 0:
            previous = self._entries[packed.order - 1] if packed.order - 1 < len(self._entries) else None
            if previous is not None and previous.back is None:
                self._bring_back(previous)
                self.prefetched += 1
        self.transfer.wait(packed.back_event)
        tensor = packed.back
        packed.back, packed.back_event = None, None
        if packed.order < len(self._entries) and self._entries[packed.order] is packed:
            self._entries[packed.order] = None  # its host copy can go once autograd drops it
        return tensor

    def _bring_back(self, entry: _Offloaded) -> None:
        if entry.back is not None:
            return
        # The same strides as the saved tensor: compiled backward graphs assert them.
        entry.back = torch.empty_strided(entry.host.shape, entry.stride, dtype=entry.host.dtype, device=entry.device)
        entry.back_event = self.transfer.copy([(entry.back, entry.host)])


def _identity(tensor: torch.Tensor) -> tuple:
    """What makes two tensors the same memory: ``tensor`` itself or a view of all of it (a
    compiled block may save a reshaped alias) has the same key."""
    return (tensor.device, tensor.dtype, tensor.numel(), tensor.data_ptr())


def enable_activation_offload(model: BlockModel, device: torch.device | str, *, check_host_ram: bool = False) -> ActivationOffload:
    """Offload each checkpointed block's input hidden states to host memory (training).

    ``check_host_ram`` (the auto default): at each new input shape, offload only if the host
    has the pinned RAM for every block's input (:func:`frametuner.memory.auto.host_ram_allows`)."""
    if not getattr(model, "gradient_checkpointing", False):
        raise MemoryOptionError(
            "gradient_checkpointing_cpu_offload needs gradient_checkpointing: true "
            "(it offloads the block inputs that checkpointing keeps)"
        )
    hook = ActivationOffload(torch.device(device), num_blocks=len(model.blocks), check_host_ram=check_host_ram)
    BlockRunner.of(model).add(hook)
    log.info("activation offload: checkpointed block inputs go to %s host memory", "pinned" if hook.transfer.asynchronous else "plain")
    return hook
