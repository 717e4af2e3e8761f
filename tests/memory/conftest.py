"""Fixtures shared by the memory-tool tests."""

import pytest

from .helpers import add_test_lora, small_dit

DEPTH = 4


@pytest.fixture(scope="module")
def lora_model():
    """A 4-block tiny-width DiT with LoRA, fully checkpointed: the plain model the tools must match."""
    model = small_dit(depth=DEPTH)
    add_test_lora(model)
    model.enable_gradient_checkpointing("full")
    return model
