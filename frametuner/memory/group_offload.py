"""Group offload through diffusers' group-offloading hooks, for training and sampling.

The groups are built here from diffusers' own ``ModuleGroup`` and ``GroupOffloadingHook``
(``apply_group_offloading`` would build them over whole modules), because:

* only frozen weights may be offloaded. A diffusers group moves every parameter of its
  modules, and with streams restores them from a pinned snapshot taken when the hook
  was applied, which would silently undo every LoRA update; here each group lists its
  frozen parameters explicitly and trainable ones stay on the device;
* the backward must reload groups. Checkpointed blocks are recomputed by calling the
  block's inner function, not its (hooked) ``forward``, so block-level groups are
  onloaded, prefetched (one group ahead, in reverse) and offloaded again by a
  :class:`BlockHook`. Leaf-level groups hook the Linear/norm layers themselves, which the
  recomputation calls, so they reload on their own;
* everything outside ``model.blocks`` (embedders, final layer; ~0.1 GB) stays on the
  device: the non-checkpointed backward of those layers reads their weights. So do
  inference LoRA branches attached under a leaf layer (they run in a forward hook, after
  a leaf group has been offloaded again).

The prefetch chain (with ``use_stream``) is set explicitly in block order instead of
diffusers' lazy first-pass tracing; the first group is onloaded synchronously by
diffusers' own fallback.
"""

from __future__ import annotations

import itertools
import logging

import torch
import torch.nn as nn

from .blocks import BlockHook, BlockRunner, frozen_parameters, place_outside_blocks, placement_device
from .errors import MemoryOptionError

log = logging.getLogger(__name__)

OFFLOAD_TYPES = ("block_level", "leaf_level")


class GroupOffload(BlockHook):
    """Frozen-weight groups over ``model.blocks``. See the module docstring."""

    def __init__(self, model: nn.Module, device: torch.device, offload_type: str, blocks_per_group: int, use_stream: bool):
        from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
        from diffusers.hooks.group_offloading import GroupOffloadingConfig, GroupOffloadingType

        self.device = device
        self.offload_type = offload_type
        self.stream = torch.cuda.Stream(device) if use_stream else None
        self.config = GroupOffloadingConfig(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type=GroupOffloadingType(offload_type),
            non_blocking=use_stream,
            record_stream=use_stream,
            low_cpu_mem_usage=False,
            num_blocks_per_group=blocks_per_group,
            stream=self.stream,
        )
        blocks = model.blocks
        self.groups = []  # in forward order
        self.group_of_block: dict[int, object] = {}
        self.first_block: dict[int, int] = {}  # id(group) -> index of its first block
        self.last_block: dict[int, int] = {}
        if offload_type == "block_level":
            for start in range(0, len(blocks), blocks_per_group):
                members = list(blocks[start : start + blocks_per_group])
                end = start + len(members) - 1
                params = [p for block in members for p in frozen_parameters(block)]
                buffers = [b for block in members for b in block.buffers()]
                group = self._group(params, buffers, members[0], members[-1], f"blocks_{start}_{end}")
                for offset, block in enumerate(members):
                    self._hook(block, group)
                    self.group_of_block[start + offset] = group
                self.first_block[id(group)], self.last_block[id(group)] = start, end
            if self.stream is not None:
                # Prefetch chain in forward order: group g's first block onloads group g+1.
                # A group not prefetched in time (group 0) is onloaded synchronously by
                # diffusers' fallback in pre_forward.
                for group, following in zip(self.groups, self.groups[1:] + [None]):
                    group.onload_self = False
                    hook = self._registry(group.onload_leader).get_hook("group_offloading")
                    hook.next_group = following
        else:
            for block in blocks:
                for module in block.modules():
                    params = [p for p in module.parameters(recurse=False) if not p.requires_grad]
                    if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS) and params:
                        group = self._group(params, list(module.buffers(recurse=False)), module, module, f"leaf_{id(module)}")
                        self._hook(module, group)

    def _group(self, params, buffers, onload_leader, offload_leader, group_id):
        from diffusers.hooks.group_offloading import ModuleGroup

        group = ModuleGroup(
            modules=[],
            offload_device=torch.device("cpu"),
            onload_device=self.device,
            offload_leader=offload_leader,
            onload_leader=onload_leader,
            parameters=params,
            buffers=buffers,
            non_blocking=self.stream is not None,
            stream=self.stream,
            record_stream=self.stream is not None,
            low_cpu_mem_usage=False,
            onload_self=True,
            group_id=group_id,
        )
        self.groups.append(group)
        return group

    @staticmethod
    def _registry(module):
        from diffusers.hooks.hooks import HookRegistry

        return HookRegistry.check_if_exists_or_initialize(module)

    def _hook(self, module: nn.Module, group) -> None:
        from diffusers.hooks.group_offloading import GroupOffloadingHook

        # Registering on the offload leader offloads the group (diffusers' initialize_hook).
        self._registry(module).register_hook(GroupOffloadingHook(group, config=self.config), "group_offloading")

    # ------------------------------------------------------------------ state
    def _onloaded(self, group) -> bool:
        first = next(itertools.chain(group.parameters, group.buffers), None)
        return first is not None and first.device.type == self.device.type

    # ------------------------------------------------------------------ backward (block level)
    def backward_pre(self, index: int) -> None:
        group = self.group_of_block.get(index)
        if group is None or self.last_block[id(group)] != index:
            return
        if not self._onloaded(group):
            group.onload_()
        if self.stream is not None:
            self.stream.synchronize()  # this group's copy (maybe a prefetch) has landed
            position = self.groups.index(group)
            if position > 0 and not self._onloaded(self.groups[position - 1]):
                self.groups[position - 1].onload_()  # overlaps this group's backward

    def backward_post(self, index: int) -> None:
        group = self.group_of_block.get(index)
        if group is not None and self.first_block[id(group)] == index and self._onloaded(group):
            group.offload_()

    def backward_end(self) -> None:
        if self.offload_type != "block_level":
            return  # leaf groups offload themselves after each call
        for group in self.groups:
            if self._onloaded(group):
                group.offload_()


def enable_group_offload(
    model: nn.Module,
    device: torch.device | str,
    *,
    offload_type: str = "block_level",
    blocks_per_group: int = 1,
    use_stream: bool = False,
    training: bool = True,
) -> GroupOffload:
    """Offload the DiT's frozen weights to host memory in groups, onloading each before use
    (``training=False``: every weight is frozen). Returns the hook."""
    device = placement_device(device)
    if offload_type not in OFFLOAD_TYPES:
        raise MemoryOptionError(f"group_offload_type {offload_type!r} is not one of {', '.join(OFFLOAD_TYPES)}")
    if blocks_per_group < 1:
        raise MemoryOptionError(f"group_offload_blocks_per_group = {blocks_per_group}: must be at least 1")
    if offload_type == "leaf_level" and use_stream:
        raise MemoryOptionError(
            "group_offload_type 'leaf_level' moves each layer on its own and cannot prefetch through the "
            "recomputed backward; use 'block_level' with group_offload_use_stream, or set it false"
        )
    if use_stream and device.type != "cuda":
        raise MemoryOptionError(f"group_offload_use_stream needs a CUDA device (the model runs on {device}); set it to false")
    if any(type(p).__module__.startswith("optimum.quanto") for p in model.blocks.parameters()):
        raise MemoryOptionError(
            "enable_group_offload cannot move optimum-quanto weights (diffusers' hooks reassign .data, which "
            "leaves a quanto tensor's int8 data behind); use musubi_blocks_to_swap with int8/int4-quanto, "
            "or fp8-torchao with group offload"
        )
    if not training:
        model.requires_grad_(False)  # sampling: every weight is frozen, so every weight may move
    trains = any(p.requires_grad for p in model.parameters())
    if trains and not getattr(model, "gradient_checkpointing", False):
        raise MemoryOptionError("enable_group_offload needs gradient_checkpointing: true while training")
    if trains and not any(frozen_parameters(block) for block in model.blocks):
        raise MemoryOptionError(
            "enable_group_offload moves frozen base weights, but every weight trains (model_type 'full'); "
            "use model_type 'lora', or gradient_checkpointing_cpu_offload to save memory"
        )
    offload = GroupOffload(model, device, offload_type, blocks_per_group, use_stream)
    # Everything not in a group lives on the device: trainable weights, the layers outside
    # the blocks and (leaf level) parameters of non-leaf modules such as RMSNorm scales.
    place_outside_blocks(model, device)
    grouped = {id(t) for group in offload.groups for t in [*group.parameters, *group.buffers]}
    for module in model.blocks.modules():
        for param in module.parameters(recurse=False):
            if id(param) not in grouped and param.device != device:
                param.data = param.data.to(device)
        for name, buffer in module.named_buffers(recurse=False):
            if id(buffer) not in grouped and buffer.device != device:
                module._buffers[name] = buffer.to(device)
    BlockRunner.of(model).add(offload)
    log.info("group offload (%s, %d per group, stream %s): %d groups of frozen weights in host memory", offload_type, blocks_per_group, use_stream, len(offload.groups))
    return offload
