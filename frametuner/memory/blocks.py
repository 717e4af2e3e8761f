"""Per-block hooks around the DiT's block loop, in the forward AND the backward.

Memory tools need to act at block boundaries: load a block's weights before it runs,
free them after, and do the same in reverse order in the backward, where checkpointed
blocks are recomputed. Module forward hooks cannot see the backward, so the model's
block seam (``model._run_block`` of the block protocol every family's denoiser
implements, :class:`frametuner.models.family.BlockModel`) is replaced by a
:class:`BlockRunner` that wraps each block call between two identity autograd
functions. Their backward methods fire exactly when autograd reaches the block's
output gradient (before the block's recomputation and backward) and when it leaves
the block's input (after its backward). Hooks compose: swap, offload and activation
offload each register one :class:`BlockHook`.

The runner sits outside the blocks, so it works with regionally compiled blocks
(``model.compile_blocks()``) unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
import torch.nn as nn

from ..models.family import BlockModel


class BlockHook:
    """Callbacks at the boundaries of block ``index``; all optional."""

    def forward_pre(self, index: int) -> None:
        """Before block ``index`` runs in the forward (grad or no grad)."""

    def forward_post(self, index: int) -> None:
        """After block ``index`` ran in the forward."""

    def backward_pre(self, index: int) -> None:
        """Before block ``index`` is recomputed and differentiated."""

    def backward_post(self, index: int) -> None:
        """After the gradient left block ``index`` (its weights are no longer needed)."""

    def backward_end(self) -> None:
        """At the end of a backward pass that went through the blocks."""

    def call_context(self, index: int, hidden_states: torch.Tensor) -> ContextManager:
        """A context the block call runs in (e.g. saved-tensor hooks)."""
        return contextlib.nullcontext()


class _BackwardBoundary(torch.autograd.Function):
    """Identity whose backward calls ``callback`` before passing the gradient on."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, callback: Callable[[], None]) -> torch.Tensor:
        ctx.callback = callback
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.callback()
        return grad, None


BLOCK_PROTOCOL = ("blocks", "_run_block", "enable_gradient_checkpointing", "disable_gradient_checkpointing", "compile_blocks")


def require_block_model(model) -> BlockModel:
    """``model`` if it implements the block protocol, else TypeError naming what is missing."""
    # hasattr, not isinstance(model, BlockModel): from Python 3.12 a runtime-checkable
    # Protocol looks members up with inspect.getattr_static, which misses an nn.Module's
    # submodules (``blocks`` lives in ``_modules``), so isinstance is False for every model.
    missing = [name for name in BLOCK_PROTOCOL if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} does not implement the block protocol memory tools need "
            f"(frametuner.models.family.BlockModel); missing: {', '.join(missing)}"
        )
    return model


class BlockRunner:
    """Replaces ``model._run_block`` and dispatches to the registered hooks.

    The model's own ``_run_block`` is kept and still called (it is where checkpointing
    policies live), so removing the runner restores the model exactly.
    """

    def __init__(self, model: BlockModel):
        self.model = model
        self.hooks: list[BlockHook] = []
        self._inner = model._run_block  # the class's seam, bound to the model
        self._end_queued = False

    # ------------------------------------------------------------------ install
    @classmethod
    def of(cls, model: BlockModel) -> "BlockRunner":
        """The model's runner, installed on first use."""
        require_block_model(model)
        runner = model.__dict__.get("_run_block")
        if isinstance(runner, BlockRunner):
            return runner
        runner = cls(model)
        model._run_block = runner  # instance attribute shadows the method
        return runner

    def add(self, hook: BlockHook) -> BlockHook:
        self.hooks.append(hook)
        return hook

    def remove(self, hook: BlockHook) -> None:
        self.hooks.remove(hook)
        if not self.hooks:
            self.model.__dict__.pop("_run_block", None)

    # ------------------------------------------------------------------ running
    def __call__(self, index: int, block: nn.Module, x: torch.Tensor, *args: Any) -> torch.Tensor:
        hooks = self.hooks
        track_backward = torch.is_grad_enabled()
        if track_backward and x.requires_grad:
            x = _BackwardBoundary.apply(x, lambda: self._backward_post(index))
        for hook in hooks:
            hook.forward_pre(index)
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                stack.enter_context(hook.call_context(index, x))
            out = self._inner(index, block, x, *args)
        for hook in reversed(hooks):
            hook.forward_post(index)
        if track_backward and out.requires_grad:
            out = _BackwardBoundary.apply(out, lambda: self._backward_pre(index))
        return out

    def _backward_pre(self, index: int) -> None:
        if not self._end_queued:
            # Blocks whose input needs no gradient (block 0 in LoRA training) never see
            # backward_post; backward_end tidies up after the whole backward.
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_end)
            self._end_queued = True
        for hook in self.hooks:
            hook.backward_pre(index)

    def _backward_post(self, index: int) -> None:
        for hook in reversed(self.hooks):
            hook.backward_post(index)

    def _backward_end(self) -> None:
        self._end_queued = False
        for hook in self.hooks:
            hook.backward_end()


def placement_device(device: torch.device | str) -> torch.device:
    """``device`` with an explicit index (``cuda`` -> ``cuda:<current>``): the tools compare
    where tensors are against it."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def frozen_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters that do not train (the base weights under LoRA)."""
    return [p for p in module.parameters() if not p.requires_grad]


def place_outside_blocks(model: nn.Module, device: torch.device) -> None:
    """Move everything except ``model.blocks`` to ``device`` (embedders, final layer, ...)."""
    for name, child in model.named_children():
        if child is not model.blocks:
            child.to(device)
    for name, param in model.named_parameters(recurse=False):
        param.data = param.data.to(device)
    for name, buffer in model.named_buffers(recurse=False):
        setattr(model, name, buffer.to(device))


def place_trainable(module: nn.Module, device: torch.device) -> None:
    """Move trainable parameters (LoRA) to ``device``; they never leave it."""
    for param in module.parameters():
        if param.requires_grad and param.device != device:
            param.data = param.data.to(device)
