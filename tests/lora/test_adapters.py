"""PEFT training adapters: exact targets, FP32 layers, checkpoint state, continuing from a file."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

from frametuner.lora import (
    FP32LoraLinear,
    LoraError,
    add_lora,
    add_lora_from_file,
    apply_lora,
    convert,
    export_lora,
    lora_state_dict,
    resolve_lora_targets,
    set_lora_state_dict,
)
from frametuner.models.longcat_video.spec import DEFAULT_LORA_TARGETS
from frametuner.models.longcat_video.tiny import build_tiny_transformer

from ..conftest import assert_close
from .conftest import UPSTREAM_LORA, randomise_lora, run_t2v

TOL = dict(atol=1e-5, rtol=1e-5)


def _lora_layers(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def test_default_targets_resolve_to_exactly_the_expected_modules(dit):
    expected = [f"blocks.{b}.{layer}" for layer in DEFAULT_LORA_TARGETS for b in range(2)]
    assert resolve_lora_targets(dit, DEFAULT_LORA_TARGETS) == expected
    # 'attn.proj' is the self-attention output only, never cross_attn.proj
    assert resolve_lora_targets(dit, ["attn.proj"]) == ["blocks.0.attn.proj", "blocks.1.attn.proj"]
    # block-level adaLN only; the final layer's is its own opt-in target
    assert resolve_lora_targets(dit, ["adaLN_modulation.1"]) == ["blocks.0.adaLN_modulation.1", "blocks.1.adaLN_modulation.1"]
    assert resolve_lora_targets(dit, ["final_layer.adaLN_modulation.1", "final_layer.linear", "blocks.1.ffn.w2"]) == [
        "final_layer.adaLN_modulation.1", "final_layer.linear", "blocks.1.ffn.w2",
    ]


def test_patch_embedding_and_unknown_targets_are_refused(dit):
    with pytest.raises(LoraError, match="'x_embedder.proj' is a Conv3d, not a Linear"):
        resolve_lora_targets(dit, ["x_embedder.proj"])
    with pytest.raises(LoraError, match="'attn.qvk' matches no layer; did you mean 'attn.qkv'"):
        resolve_lora_targets(dit, ["attn.qvk"])


def test_add_lora_wraps_the_targets_and_only_lora_trains(dit, cases):
    before = run_t2v(dit, cases)
    config = add_lora(dit, rank=4, dropout=0.0)
    assert sorted(_lora_layers(dit)) == sorted(resolve_lora_targets(dit, DEFAULT_LORA_TARGETS))
    assert config.lora_alpha == 4.0  # alpha defaults to the rank
    trainable = [name for name, p in dit.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 16 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in dit.named_parameters() if p.requires_grad)
    assert isinstance(dit.x_embedder.proj, torch.nn.Conv3d)
    assert torch.equal(run_t2v(dit, cases), before)  # lora_B starts at zero


def test_fp32_linear_layers_get_a_float32_lora_path():
    model = build_tiny_transformer().to(torch.bfloat16)
    add_lora(model, rank=4, alpha=2.0, target_modules=["adaLN_modulation.1", "final_layer.linear", "attn.proj"])
    layer = model.blocks[0].adaLN_modulation[1]
    assert isinstance(layer, FP32LoraLinear) and isinstance(model.final_layer.linear, FP32LoraLinear)
    assert not isinstance(model.blocks[0].attn.proj, FP32LoraLinear)
    randomise_lora(model, seed=2, std=1.0)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        base = layer.base_layer(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out - base.float(), 0.5 * F.linear(F.linear(x, a), b), atol=1e-4, rtol=1e-5)


def test_lora_state_dict_round_trip(dit):
    add_lora(dit, rank=4)
    randomise_lora(dit, seed=3)
    state = {key: value.clone() for key, value in lora_state_dict(dit).items()}
    assert sorted(state) == sorted(f"{m}.lora_{ab}.weight" for m in _lora_layers(dit) for ab in "AB")
    randomise_lora(dit, seed=4)
    set_lora_state_dict(dit, state)
    assert all(torch.equal(lora_state_dict(dit)[key], value) for key, value in state.items())
    with pytest.raises(LoraError, match="does not match"):
        set_lora_state_dict(dit, {**state, "blocks.0.ffn.w9.lora_A.weight": torch.zeros(1)})


def test_continue_training_from_an_upstream_file(dit, reference_dit, cases, tmp_path):
    """Exact import; after training steps the fused layers keep upstream's structure and rank."""
    add_lora_from_file(dit, UPSTREAM_LORA, dropout=0.0)
    assert_close(run_t2v(dit, cases), cases["lora.output"], **TOL)
    qkv = dit.blocks[0].attn.qkv
    assert qkv.lora_A["default"].weight.shape == (12, 256)  # 3 parts x rank 4, via rank_pattern
    assert qkv.scaling["default"] == 0.5

    optimizer = torch.optim.AdamW([p for p in dit.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        out = dit(
            hidden_states=cases["t2v.hidden_states"], timestep=cases["t2v.timestep"],
            encoder_hidden_states=cases["t2v.encoder_hidden_states"], encoder_attention_mask=cases["t2v.encoder_attention_mask"],
        )
        out.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    up = qkv.lora_B["default"].weight.detach().view(3, 256, 3, 4)
    off_diagonal = up.abs().amax(dim=(1, 3)) * (1 - torch.eye(3))
    assert off_diagonal.max() == 0 and up.abs().amax() > 0

    trained = run_t2v(dit, cases)
    assert not torch.allclose(trained, cases["lora.output"], atol=1e-4)
    path = export_lora(dit, tmp_path, ["upstream"])["upstream"]
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["lora_network_dim"] == "4"
    fresh = copy.deepcopy(reference_dit)
    apply_lora(fresh, path)  # applies the fused parts apart, PEFT multiplies the zeros: not bitwise
    assert_close(run_t2v(fresh, cases), trained, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fmt", ["comfyui", "peft"])
def test_continue_training_from_other_formats(dit, cases, tmp_path, fmt):
    path = convert(UPSTREAM_LORA, tmp_path / ("lora.safetensors" if fmt == "comfyui" else "peft"), to=fmt)
    add_lora_from_file(dit, path)
    assert_close(run_t2v(dit, cases), cases["lora.output"], **TOL)


def test_exported_checkpoint_of_a_fresh_lora_keeps_its_rank(dit, tmp_path):
    """lora_B = 0 at step 0 must not be mistaken for block-diagonal (rank 4 stays rank 4)."""
    add_lora(dit, rank=6, target_modules=["attn.qkv"])
    with safe_open(str(export_lora(dit, tmp_path, ["upstream"])["upstream"]), framework="pt") as handle:
        assert handle.metadata()["lora_network_dim"] == "6"
        key = "lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___qkv.lora_down.weight"
        assert handle.get_slice(key).get_shape() == [18, 256]


def test_export_requires_an_adapter(dit, tmp_path):
    with pytest.raises(LoraError, match="no LoRA adapter"):
        export_lora(dit, tmp_path)
