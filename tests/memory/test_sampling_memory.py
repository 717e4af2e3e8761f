"""The sampler with the memory settings: the same video as without them (block swap, group
offload), and a LoRA on a quantised base."""

from __future__ import annotations

import pytest
import torch

from frametuner.config import TrainConfig
from frametuner.lora import add_lora, export_lora
from frametuner.models.longcat_video.spec import LongCatVideoSpec
from frametuner.models.registry import load_spec
from frametuner.sampling.pipeline import SampleRequest, generate

from ..sampling.fakes import FakeComponents
from .helpers import requires_quanto

SMALL = dict(height=32, width=48, num_frames=9, steps=2)


@pytest.fixture(scope="module")
def tiny_root():
    return load_spec("longcat_video").checkpoint_root("tiny", None)


@pytest.fixture(scope="module")
def lora_file(tiny_root, tmp_path_factory):
    """A rank-4 LoRA for the tiny DiT with non-zero up weights (PEFT format)."""
    model = load_spec("longcat_video").load_transformer(tiny_root, dtype=torch.float32)
    model.requires_grad_(False)
    add_lora(model, rank=4, alpha=4, target_modules=["attn.qkv", "ffn.w2"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return export_lora(model, tmp_path_factory.mktemp("lora"), formats=["peft"])["peft"]


def video(monkeypatch, tiny_root, lora=None, **memory):
    FakeComponents(monkeypatch, LongCatVideoSpec)
    config = TrainConfig(model_flavour="tiny", mixed_precision="no", **memory)
    request = SampleRequest(prompt="a red fox", seed=3, loras=[(lora, 1.0)] if lora else [], **SMALL)
    return generate(request, spec=load_spec("longcat_video"), root=tiny_root, dtype=torch.float32, progress=False, config=config)


@pytest.mark.parametrize("memory", [dict(musubi_blocks_to_swap=1), dict(enable_group_offload=True), dict(enable_group_offload=True, group_offload_type="leaf_level")])
def test_swap_and_offload_sample_the_same_video(monkeypatch, tiny_root, lora_file, memory):
    assert torch.equal(video(monkeypatch, tiny_root, lora_file, **memory), video(monkeypatch, tiny_root, lora_file))


@requires_quanto
def test_lora_on_a_quantised_base(monkeypatch, tiny_root, lora_file):
    plain = video(monkeypatch, tiny_root)
    with_lora = video(monkeypatch, tiny_root, lora_file)
    int8_with_lora = video(monkeypatch, tiny_root, lora_file, base_model_precision="int8-quanto")
    assert not torch.equal(with_lora, plain)  # the LoRA does something
    # the quantised base stays within a few grey levels of the float one, LoRA included
    assert (int8_with_lora.float() - with_lora.float()).abs().mean() < 0.1 * (with_lora.float() - plain.float()).abs().mean()
    swapped = video(monkeypatch, tiny_root, lora_file, base_model_precision="int8-quanto", musubi_blocks_to_swap=1)
    assert torch.equal(swapped, int8_with_lora)


@requires_quanto
def test_quantising_after_a_lora_was_applied_is_refused(tiny_root, lora_file):
    from frametuner.lora import apply_lora
    from frametuner.memory import MemoryOptionError, quantise_transformer

    model = load_spec("longcat_video").load_transformer(tiny_root, dtype=torch.float32).requires_grad_(False)
    apply_lora(model, lora_file)
    with pytest.raises(MemoryOptionError, match="apply LoRAs"):
        quantise_transformer(model, "int8-quanto")
