"""Block swap: the last N blocks' frozen weights live in pinned host memory.

Each swapped block keeps its parameters as device tensors whose *storage* is released
(``untyped_storage().resize_(0)``) while the block is not needed, and re-allocated and
filled from the pinned host copy on a side CUDA stream one block ahead of use: block
``i + 1`` streams in while block ``i`` computes in the forward, block ``i - 1`` while
block ``i`` recomputes and differentiates in the backward. The parameter objects never
change (same tensors, same device, same shapes), so autograd, PEFT's wrappers, quantised
tensor subclasses (their inner tensors are swapped) and compiled blocks see nothing but
their values appearing in time; results are bit-identical to the unswapped model.

Only frozen weights move: trainable parameters (LoRA) stay on the device. Training
needs gradient checkpointing, which guarantees that nothing from the forward holds a
swapped weight (the recomputation re-reads it after it is streamed back in).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from ..models.family import BlockModel
from .blocks import BlockHook, BlockRunner, frozen_parameters, place_outside_blocks, place_trainable, placement_device
from .errors import MemoryOptionError
from .streams import TransferStream, pinned_bytes

log = logging.getLogger(__name__)


def storage_views(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Plain tensors that own ``tensor``'s bytes (the inner tensors of quantised subclasses)."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return [view for name in names for view in storage_views(getattr(tensor, name))]
    return [tensor]


def _byte_view(storage: torch.UntypedStorage, device: torch.device) -> torch.Tensor:
    """A uint8 tensor over the whole storage (dtype-agnostic copies: fp8, int4 packs, bf16)."""
    return torch.empty(0, dtype=torch.uint8, device=device).set_(storage)


@dataclass
class _SwappedBlock:
    device_bytes: list[torch.Tensor] = field(default_factory=list)  # uint8 views of device storages
    host_bytes: list[torch.Tensor] = field(default_factory=list)  # pinned copies (views of host_memory)
    host_memory: torch.Tensor | None = None
    resident: bool = True
    event: torch.cuda.Event | None = None  # copy in flight

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self.host_bytes)


class BlockSwap(BlockHook):
    """See the module docstring. Create with :func:`enable_block_swap`."""

    def __init__(self, model: nn.Module, blocks_to_swap: int, device: torch.device):
        self.device = torch.device(device)
        depth = len(model.blocks)
        self.first_swapped = depth - blocks_to_swap
        self.last_index = depth - 1
        self.transfer = TransferStream(self.device)
        self.swapped: dict[int, _SwappedBlock] = {}
        self.loads = 0  # host -> device block copies, for tests and logs
        for index in range(self.first_swapped, depth):  # one block on the device at a time
            self.swapped[index] = entry = self._stage(model.blocks[index])
            self._copy_to_host(entry)
            self._release(index)

    def _stage(self, block: nn.Module) -> _SwappedBlock:
        """Put ``block`` on the device (one block at a time) and find its frozen storages."""
        block.to(self.device)
        entry = _SwappedBlock()
        seen: set[int] = set()
        tensors = [view for p in frozen_parameters(block) for view in storage_views(p)]
        tensors += [view for b in block.buffers() for view in storage_views(b)]
        for tensor in tensors:
            if not tensor.untyped_storage().resizable():  # e.g. a memory-mapped checkpoint on a CPU
                with torch.no_grad():
                    tensor.set_(tensor.clone())
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen or storage.nbytes() == 0:
                continue
            seen.add(storage.data_ptr())
            entry.device_bytes.append(_byte_view(storage, self.device))
        return entry

    def _copy_to_host(self, entry: _SwappedBlock) -> None:
        """One exact-size pinned allocation per block, filled from the device."""
        entry.host_memory = pinned_bytes(sum(view.numel() for view in entry.device_bytes))
        offset = 0
        for view in entry.device_bytes:
            host = entry.host_memory[offset : offset + view.numel()]
            host.copy_(view)
            entry.host_bytes.append(host)
            offset += view.numel()

    # ------------------------------------------------------------------ residency
    def _load(self, index: int, *, wait: bool) -> None:
        entry = self.swapped.get(index)
        if entry is None:
            return
        if not entry.resident:
            for view in entry.device_bytes:
                view.untyped_storage().resize_(view.numel())  # allocated on the compute stream
            entry.event = self.transfer.copy(list(zip(entry.device_bytes, entry.host_bytes)))
            entry.resident = True
            self.loads += 1
        if wait and entry.event is not None:
            self.transfer.wait(entry.event)
            entry.event = None

    def _release(self, index: int) -> None:
        entry = self.swapped.get(index)
        if entry is None or not entry.resident:
            return
        if entry.event is not None:  # never free under a copy in flight
            self.transfer.wait(entry.event)
            entry.event = None
        for view in entry.device_bytes:
            view.untyped_storage().resize_(0)
        entry.resident = False

    def resident_blocks(self) -> list[int]:
        return [index for index, entry in self.swapped.items() if entry.resident]

    # ------------------------------------------------------------------ hooks
    def forward_pre(self, index: int) -> None:
        self._load(index, wait=True)
        self._load(index + 1, wait=False)

    def forward_post(self, index: int) -> None:
        if index == self.last_index and torch.is_grad_enabled():
            return  # the backward starts with this block
        self._release(index)
        if index == self.last_index:
            self._load(self.first_swapped, wait=False)  # the next call (sampling loop) starts there

    def backward_pre(self, index: int) -> None:
        self._load(index, wait=True)
        self._load(index - 1, wait=False)

    def backward_post(self, index: int) -> None:
        if index != self.first_swapped:  # the next forward starts with it: keep it
            self._release(index)

    def backward_end(self) -> None:
        for index in self.swapped:
            if index != self.first_swapped:
                self._release(index)
        self._load(self.first_swapped, wait=False)


def enable_block_swap(model: BlockModel, blocks_to_swap: int, device: torch.device | str, *, training: bool = True) -> BlockSwap | None:
    """Keep the last ``blocks_to_swap`` blocks' frozen weights in host memory; place the
    rest of the model on ``device``. Returns the hook (None for 0 blocks)."""
    depth = len(model.blocks)
    if not 0 <= blocks_to_swap < depth:
        raise MemoryOptionError(
            f"musubi_blocks_to_swap = {blocks_to_swap}: must be between 0 and {depth - 1} "
            f"(the model has {depth} blocks and at least one stays on the GPU); try 4-8 to start"
        )
    if blocks_to_swap == 0:
        return None
    if not training:
        model.requires_grad_(False)
    if training and any(p.requires_grad for p in model.parameters()) and not getattr(model, "gradient_checkpointing", False):
        raise MemoryOptionError(
            "musubi_blocks_to_swap needs gradient_checkpointing: true while training "
            "(without recomputation the forward would keep every swapped block's weights alive)"
        )
    device = placement_device(device)
    blocks = model.blocks
    if not any(frozen_parameters(blocks[i]) for i in range(depth - blocks_to_swap, depth)):
        raise MemoryOptionError(
            "musubi_blocks_to_swap moves frozen base weights, but every weight of the swapped blocks trains "
            "(model_type 'full'); use model_type 'lora', or gradient_checkpointing_cpu_offload to save memory"
        )
    place_outside_blocks(model, device)
    for index in range(depth - blocks_to_swap):
        blocks[index].to(device)
    place_trainable(model, device)
    swap = BlockSwap(model, blocks_to_swap, device)
    BlockRunner.of(model).add(swap)
    staged = sum(entry.nbytes for entry in swap.swapped.values())
    log.info("block swap: blocks %d-%d (%.2f GB of frozen weights) live in host memory", depth - blocks_to_swap, depth - 1, staged / 2**30)
    return swap
