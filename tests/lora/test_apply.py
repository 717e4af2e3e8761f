"""apply_lora against the upstream reference: the fixture LoRA, multipliers, stacking, removal, errors."""

from __future__ import annotations

import pytest
import torch

from frametuner.lora import LoraMismatchError, LoraWeights, LowRankDelta, apply_lora, read_lora, remove_loras
from frametuner.lora.apply import CONTAINER
from frametuner.models.longcat_video.tiny import build_tiny_transformer
from frametuner.models.longcat_video.transformer import FP32Linear

from ..conftest import assert_close
from .conftest import UPSTREAM_LORA, run_t2v

TOL = dict(atol=1e-5, rtol=1e-5)


def test_upstream_lora_reproduces_reference(dit, cases):
    apply_lora(dit, UPSTREAM_LORA)
    assert_close(run_t2v(dit, cases), cases["lora.output"], **TOL)


def test_multiplier_scales_the_lora(dit, cases):
    apply_lora(dit, UPSTREAM_LORA, multiplier=0.5)
    assert_close(run_t2v(dit, cases), cases["lora.output_m05"], **TOL)


def test_two_loras_stack(dit, cases):
    apply_lora(dit, UPSTREAM_LORA, multiplier=1.0)
    apply_lora(dit, UPSTREAM_LORA, multiplier=0.5)
    assert_close(run_t2v(dit, cases), cases["lora.output_stacked_m15"], **TOL)


def test_remove_restores_the_model_exactly(dit, cases):
    before = run_t2v(dit, cases)
    apply_lora(dit, UPSTREAM_LORA)
    apply_lora(dit, UPSTREAM_LORA, multiplier=0.5)
    assert remove_loras(dit) == 2
    after = run_t2v(dit, cases)
    assert torch.equal(after, before)
    assert_close(after, cases["t2v.output"], **TOL)
    assert not any(hasattr(module, CONTAINER) for module in dit.modules())
    assert list(dit.state_dict()) == list(type(dit).from_config(dit.config).state_dict())


def test_handle_removes_only_its_own_lora(dit, cases):
    first = apply_lora(dit, UPSTREAM_LORA, multiplier=1.0)
    apply_lora(dit, UPSTREAM_LORA, multiplier=0.5)
    first.remove()
    assert_close(run_t2v(dit, cases), cases["lora.output_m05"], **TOL)


def test_multiplier_can_change_after_applying(dit, cases):
    handle = apply_lora(dit, UPSTREAM_LORA)
    handle.multiplier = 0.5
    assert_close(run_t2v(dit, cases), cases["lora.output_m05"], **TOL)


def test_apply_on_a_model_under_training_adds_to_its_peft_adapters(dit, cases):
    """Sampling a validation video with an extra LoRA on the model being trained."""
    from frametuner.lora import add_lora

    add_lora(dit, rank=4)  # fresh adapters: lora_B = 0, no effect yet
    apply_lora(dit, UPSTREAM_LORA)
    assert_close(run_t2v(dit, cases), cases["lora.output"], **TOL)


def test_lora_follows_a_later_dtype_cast(dit, cases):
    apply_lora(dit, UPSTREAM_LORA)
    dit.to(torch.bfloat16)
    error = (run_t2v(dit, cases) - cases["lora.output"]).norm()
    effect = (cases["t2v.output"] - cases["lora.output"]).norm()
    assert error < 0.25 * effect  # the LoRA still acts, at bf16 accuracy (measured: 0.13)


def test_lora_for_another_architecture_names_the_first_bad_key():
    tiny = build_tiny_transformer()  # hidden 128 where the fixture LoRA expects 256
    with pytest.raises(LoraMismatchError) as error:
        apply_lora(tiny, UPSTREAM_LORA)
    message = str(error.value)
    assert message.startswith("LoRA for another architecture")
    key = "lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___adaLN_modulation___lorahyphen___1.lora_up.blocks.0.weight"
    assert f"key '{key}' has shape [256, 4], expected [128, 4]" in message
    assert not any(hasattr(module, CONTAINER) for module in tiny.modules()), "nothing may be applied on error"


def test_lora_for_a_missing_layer_is_refused(dit):
    delta = LowRankDelta(torch.zeros(4, 256), torch.zeros(256, 4), 1.0)
    with pytest.raises(LoraMismatchError, match="'blocks.7.attn.proj', which this model does not have"):
        apply_lora(dit, LoraWeights({"blocks.7.attn.proj": delta}))


def test_fp32_layers_keep_their_lora_in_float32_in_a_bf16_model():
    """adaLN / final layers compute in float32 upstream, LoRA included; other layers use the model dtype."""
    model = build_tiny_transformer().to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    delta = LowRankDelta(torch.randn(4, 64, generator=generator), torch.randn(768, 4, generator=generator), 0.5)
    plain = LowRankDelta(torch.randn(4, 128, generator=generator), torch.randn(128, 4, generator=generator), 0.5)
    apply_lora(model, LoraWeights({"blocks.0.adaLN_modulation.1": delta, "blocks.0.attn.proj": plain}))
    layer = model.blocks[0].adaLN_modulation[1]
    assert isinstance(layer, FP32Linear)
    assert next(iter(getattr(layer, CONTAINER).values())).down.dtype == torch.float32
    assert next(iter(getattr(model.blocks[0].attn.proj, CONTAINER).values())).down.dtype == torch.bfloat16

    x = torch.randn(3, 64, generator=generator)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        base = FP32Linear.forward(layer, x)  # the layer alone, under the same autocast
    # the LoRA part is float32-exact even under bf16 autocast (bf16 would be off by ~1e-2 relative)
    torch.testing.assert_close(out.float() - base.float(), x @ delta.weight().T, atol=1e-4, rtol=1e-5)


def test_fixture_lora_reads_as_documented():
    """The fixture README: rank 4, alpha_scale 0.5, 20 layers; fused layers keep their own down chunks."""
    weights = read_lora(UPSTREAM_LORA)
    assert weights.format == "upstream"
    assert len(weights.deltas) == 20
    assert {delta.scale for delta in weights.deltas.values()} == {0.5}
    qkv = weights.deltas["blocks.0.attn.qkv"]
    assert (qkv.rank, qkv.in_features, qkv.out_features) == (12, 256, 768)
    assert qkv.block_diagonal(3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_lora_whose_weights_are_on_the_gpu_applies():
    """speed2's distilled validation stacks a LoRA made on the GPU: the per-part layout check
    (block_diagonal) built its mask on the CPU and failed there."""
    weights = read_lora(UPSTREAM_LORA)
    qkv = weights.deltas["blocks.0.attn.qkv"]
    on_gpu = LowRankDelta(qkv.down.cuda(), qkv.up.cuda(), qkv.scale)
    assert on_gpu.block_diagonal(3)
