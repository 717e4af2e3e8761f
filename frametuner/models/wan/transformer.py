"""Wan 2.1's DiT: diffusers' ``WanTransformer3DModel`` with frametuner's block protocol.

Every layer, parameter name and config key is diffusers' (a ``transformer/`` folder of a
``Wan-AI/Wan2.1-*-Diffusers`` checkpoint loads as is, and ``save_pretrained`` writes one
diffusers reads back). Only the block loop of the forward is frametuner's: it runs each
block through :meth:`WanTransformer._run_block`, the seam memory tools hook into (block
swap, activation offload; see ``memory/blocks.py``), and checkpointing is chosen per call
of that seam. The maths of the forward is diffusers' own, line for line, so the model
computes exactly what ``WanTransformer3DModel`` computes (asserted against
``WanPipeline`` in ``tests/models/wan``). The block loop, and a checkpointed block's
recomputation, run under the GPU's preferred SDPA kernel (``models/sdpa.py``: cuDNN on
Hopper, where torch would pick flash).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from diffusers import WanTransformer3DModel

from ..sdpa import eager_kernel_priority, kernel_priority, preferred_sdpa_kernel

CHECKPOINT_POLICIES = ("none", "full")


class WanTransformer(WanTransformer3DModel):
    """``WanTransformer3DModel`` whose blocks run through ``_run_block`` (see the module docstring)."""

    _checkpoint_policy = "none"

    # ------------------------------------------------------------------ block protocol
    def _run_block(self, index: int, block: nn.Module, *args: Any) -> torch.Tensor:
        """The seam memory tools hook into; recomputes the block in the backward when checkpointing."""
        if self._checkpoint_policy == "full" and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            # The recomputation runs in the backward, outside the forward's block loop: it
            # enters the same kernel priority, so it picks the forward's kernel.
            return checkpoint(_in_kernel_priority, block, *args, use_reentrant=False, preserve_rng_state=False)
        return block(*args)

    def enable_gradient_checkpointing(self, policy: str = "full", budget_bytes: int | None = None) -> None:  # type: ignore[override]
        """``full`` recomputes every block in the backward; ``auto`` is ``full`` here (Wan's
        blocks keep nothing selectively); ``none`` turns it off. ``budget_bytes`` is accepted
        for the common interface and unused."""
        if policy not in CHECKPOINT_POLICIES + ("auto", "save_attention"):
            raise ValueError(f"checkpointing policy {policy!r} is not one of {CHECKPOINT_POLICIES + ('auto',)}")
        self._checkpoint_policy = "none" if policy == "none" else "full"
        self.gradient_checkpointing = policy != "none"

    def disable_gradient_checkpointing(self) -> None:
        self.enable_gradient_checkpointing("none")

    def compile_blocks(self, **compile_kwargs: Any) -> None:
        """Regional compilation: every block compiles to the same code (once per shape)."""
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for block in self.blocks:
            block.compile(**compile_kwargs)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ):
        """diffusers' ``WanTransformer3DModel.forward`` with the block loop through ``_run_block``.

        LoRA scales in ``attention_kwargs`` (diffusers' ``scale``) are not supported here:
        frametuner applies LoRA multipliers to the weights' branches instead.
        """
        if attention_kwargs and attention_kwargs.get("scale", 1.0) != 1.0:
            raise ValueError("WanTransformer does not take a LoRA scale in attention_kwargs; set the LoRA's multiplier")
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        post_t, post_h, post_w = num_frames // p_t, height // p_h, width // p_w

        rotary_emb = self.rope(hidden_states)
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        if timestep.ndim == 2:  # per token (Wan 2.2 TI2V); Wan 2.1 passes [B]
            ts_seq_len = timestep.shape[1]
            timestep = timestep.flatten()
        else:
            ts_seq_len = None
        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=ts_seq_len
        )
        timestep_proj = timestep_proj.unflatten(2 if ts_seq_len is not None else 1, (6, -1))
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        with kernel_priority(preferred_sdpa_kernel("auto", hidden_states.device)):
            for index, block in enumerate(self.blocks):
                hidden_states = self._run_block(index, block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)

        if temb.ndim == 3:
            shift, scale = (self.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(hidden_states.device), scale.to(hidden_states.device)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)

        hidden_states = hidden_states.reshape(batch_size, post_t, post_h, post_w, p_t, p_h, p_w, -1)
        output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (output,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=output)


def _in_kernel_priority(block: nn.Module, hidden_states: torch.Tensor, *args: Any) -> torch.Tensor:
    """``block(hidden_states, *args)`` under the preferred SDPA kernel's priority (a checkpointed
    block's forward and its recomputation alike)."""
    with eager_kernel_priority(preferred_sdpa_kernel("auto", hidden_states.device)):
        return block(hidden_states, *args)
