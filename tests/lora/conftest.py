"""Helpers for the LoRA tests: a fresh fixture DiT per test (apply_lora and add_lora mutate it)."""

from __future__ import annotations

import copy

import pytest
import torch

from ..conftest import REFERENCE

UPSTREAM_LORA = REFERENCE / "lora" / "upstream_format_lora.safetensors"


@pytest.fixture
def dit(reference_dit):
    return copy.deepcopy(reference_dit)


def run_t2v(model, cases) -> torch.Tensor:
    """The fixture's t2v forward case (the inputs every ``lora.*`` output was made with)."""
    with torch.no_grad():
        return model(
            hidden_states=cases["t2v.hidden_states"],
            timestep=cases["t2v.timestep"],
            encoder_hidden_states=cases["t2v.encoder_hidden_states"],
            encoder_attention_mask=cases["t2v.encoder_attention_mask"],
        )


def randomise_lora(model, seed: int = 0, std: float = 0.05) -> None:
    """Give every PEFT LoRA weight random values (new adapters start with lora_B = 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(std * torch.randn(param.shape, generator=generator))
