"""The config's memory settings, applied to a DiT for training or sampling.

Order matters and is the same everywhere:

1. load (:func:`load_transformer`): a quantised base is quantised block by block while
   it streams in; with block swap or group offload the blocks stay in host memory;
2. add LoRA (training) or load LoRAs (sampling), on top of the quantised layers;
3. :func:`apply_memory_options`: group offload or block swap place the model (only
   frozen weights move), activation offload hooks the checkpointed blocks (training);
4. regional compilation of the blocks, then training or sampling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .activation_offload import ActivationOffload, enable_activation_offload
from .block_swap import BlockSwap, enable_block_swap
from .group_offload import GroupOffload, enable_group_offload
from .quantise import QUANTISED_PRECISIONS, block_quantiser, check_quantisation_supported, staging_device

log = logging.getLogger(__name__)


@dataclass
class MemoryPlan:
    """What :func:`apply_memory_options` did to a model."""

    mode: str
    block_swap: BlockSwap | None = None
    group_offload: GroupOffload | None = None
    activation_offload: ActivationOffload | None = None

    @property
    def places_model(self) -> bool:
        """The model is already where it must be: callers must not ``.to(device)`` it."""
        return self.block_swap is not None or self.group_offload is not None


def memory_mode(config, activation_offload: bool | None = None) -> str:
    """A short name of the precision and memory options, e.g. ``int8-quanto+swap24+actoffload``
    (``activation_offload``: the resolved setting where the config leaves it to auto)."""
    precision = config.base_model_precision
    parts = [config.mixed_precision if precision == "no_change" else precision]
    if config.enable_group_offload:
        stream = "-stream" if config.group_offload_use_stream else ""
        level = "block" if config.group_offload_type == "block_level" else "leaf"
        parts.append(f"groupoffload-{level}{config.group_offload_blocks_per_group if level == 'block' else ''}{stream}")
    if config.musubi_blocks_to_swap:
        parts.append(f"swap{config.musubi_blocks_to_swap}")
    if activation_offload is None:
        activation_offload = bool(config.gradient_checkpointing_cpu_offload)
    if activation_offload:
        parts.append("actoffload")
    if getattr(config, "fp8_compute", False):
        parts.append("fp8compute")
    return "+".join(parts)


def offloads_weights(config) -> bool:
    """Whether block swap or group offload will keep (part of) the base in host memory."""
    return bool(config.enable_group_offload or config.musubi_blocks_to_swap)


def _check(config, device: torch.device) -> None:
    """What the config schema cannot know: whether this device and installation can run
    the precision (the schema already rejects swap + group offload and other swap devices)."""
    if config.base_model_precision in QUANTISED_PRECISIONS:
        check_quantisation_supported(config.base_model_precision, device)


def load_transformer(spec, root: str | Path, config, *, device: torch.device | str, dtype: torch.dtype, training: bool = True) -> nn.Module:
    """The DiT of ``root`` as the config's memory settings want it.

    ``dtype``: the storage dtype (for a quantised base: of the layers that stay
    unquantised, normally the compute dtype). Quantised bases stream in block by block,
    each block quantised on ``device`` so host RAM stays near the quantised size; with
    block swap or group offload the blocks then wait in host memory for
    :func:`apply_memory_options` to place them, otherwise they stay on ``device``.
    Unquantised bases load on the CPU (the caller or :func:`apply_memory_options` places them).
    """
    device = torch.device(device)
    _check(config, device)
    precision = config.base_model_precision
    if precision not in QUANTISED_PRECISIONS:
        return spec.load_transformer(root, dtype=dtype, device="cpu")
    quantise = block_quantiser(precision, training=training, device=device)
    home = staging_device(precision, device, offloads_weights(config))

    def prepare(block: nn.Module) -> None:
        block.to(device)
        quantise(block)
        block.to(home)

    log.info("loading %s block by block, quantising to %s on %s", root, precision, device)
    return spec.load_transformer(root, dtype=dtype, device=home, prepare_block=prepare)


def apply_memory_options(
    model: nn.Module, config, device: torch.device | str, *, training: bool, activation_offload: bool | None = None, check_host_ram: bool = False
) -> MemoryPlan:
    """Apply the config's memory settings to ``model`` (LoRA already added); see the module docstring.

    ``activation_offload``: the resolved setting (:func:`frametuner.memory.auto.decide_activation_offload`);
    None reads the config key. ``check_host_ram``: offload only at shapes whose pinned memory fits the host.

    A quantised base is quantised before this, while loading (:func:`load_transformer`) or,
    for a model handed to the trainer, before LoRA wraps it. Activation offload only applies
    to training.
    """
    device = torch.device(device)
    _check(config, device)
    if not training:
        model.requires_grad_(False)  # sampling: every weight is frozen, so every weight may move
    if activation_offload is None:
        activation_offload = bool(config.gradient_checkpointing_cpu_offload)
    plan = MemoryPlan(mode=memory_mode(config, activation_offload and training))
    if config.enable_group_offload:
        plan.group_offload = enable_group_offload(
            model,
            device,
            offload_type=config.group_offload_type,
            blocks_per_group=config.group_offload_blocks_per_group,
            use_stream=config.group_offload_use_stream,
            training=training,
        )
    elif config.musubi_blocks_to_swap:
        plan.block_swap = enable_block_swap(model, config.musubi_blocks_to_swap, device, training=training)
    if activation_offload and training:
        plan.activation_offload = enable_activation_offload(model, device, check_host_ram=check_host_ram)
    if plan.mode not in ("bf16", "fp16", "no", "fp32"):
        log.info("memory options: %s", plan.mode)
    return plan
