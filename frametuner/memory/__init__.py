"""Fit the DiT on small GPUs: functions that take the model and return it modified.

* :func:`quantise_transformer` / :func:`load_transformer`: int8/int4 (optimum-quanto) or
  float8 (torchao) frozen base weights, quantised block by block;
* :func:`enable_group_offload`: diffusers' group offloading hooks (block or leaf level);
* :func:`enable_block_swap`: the last N blocks' frozen weights in pinned host memory,
  streamed in one block ahead, forward and backward;
* :func:`enable_activation_offload`: checkpointed block inputs in pinned host memory.

:func:`apply_memory_options` applies a config's settings in the right order; the trainer
and the sampler both call it after loading the model and adding LoRA. Every tool that
moves weights moves only frozen ones (LoRA stays on the GPU) and gives bit-identical
results; the block-boundary machinery they share is in :mod:`.blocks`.
"""

from .activation_offload import ActivationOffload, enable_activation_offload
from .block_swap import BlockSwap, enable_block_swap
from .blocks import BlockHook, BlockRunner
from .errors import MemoryOptionError
from .group_offload import GroupOffload, enable_group_offload
from .options import MemoryPlan, apply_memory_options, load_transformer, memory_mode, offloads_weights
from .quantise import QUANTISED_PRECISIONS, check_quantisation_supported, is_quantised, quantise_transformer, staging_device

__all__ = [
    "ActivationOffload",
    "BlockHook",
    "BlockRunner",
    "BlockSwap",
    "GroupOffload",
    "MemoryOptionError",
    "MemoryPlan",
    "QUANTISED_PRECISIONS",
    "apply_memory_options",
    "check_quantisation_supported",
    "enable_activation_offload",
    "enable_block_swap",
    "enable_group_offload",
    "is_quantised",
    "load_transformer",
    "memory_mode",
    "offloads_weights",
    "quantise_transformer",
    "staging_device",
]
