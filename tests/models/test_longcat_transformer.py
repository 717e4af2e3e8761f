"""The DiT against the upstream reference outputs (tests/fixtures/longcat_reference)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from frametuner.models.longcat_video import LongCatVideoTransformer3DModel
from frametuner.models.longcat_video.rope import rope_angles
from frametuner.models.longcat_video.transformer import swiglu_hidden_size

from ..conftest import REFERENCE, assert_close

FORWARD_CASES = {
    "t2v": lambda c: dict(timestep=c["t2v.timestep"]),
    "tframe": lambda c: dict(timestep=c["tframe.timestep"]),
    "i2v": lambda c: dict(timestep=c["i2v.timestep"], num_cond_latents=int(c["i2v.num_cond_latents"])),
    "vc": lambda c: dict(timestep=c["vc.timestep"], num_cond_latents=int(c["vc.num_cond_latents"])),
}


def run_case(model, cases, name):
    with torch.no_grad():
        return model(
            hidden_states=cases["t2v.hidden_states"],
            encoder_hidden_states=cases["t2v.encoder_hidden_states"],
            encoder_attention_mask=cases["t2v.encoder_attention_mask"],
            **FORWARD_CASES[name](cases),
        )


@pytest.mark.parametrize("name", sorted(FORWARD_CASES))
def test_forward_matches_reference(reference_dit, cases, name):
    out = run_case(reference_dit, cases, name)
    assert out.dtype == torch.float32
    assert_close(out, cases[f"{name}.output"], atol=1e-5, rtol=1e-5)


def test_intermediates_match_reference(reference_dit, cases):
    """Hooks on the same module names upstream used: embedders, both blocks, final layer."""
    seen = {}
    hooks = [
        getattr(reference_dit, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
        for name in ("x_embedder", "t_embedder", "y_embedder", "final_layer")
    ]
    hooks += [
        block.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(f"block{k}", o))
        for k, block in enumerate(reference_dit.blocks)
    ]
    run_case(reference_dit, cases, "t2v")
    for hook in hooks:
        hook.remove()
    for name in ("x_embedder", "t_embedder", "y_embedder", "block0", "block1", "final_layer"):
        expected = cases[f"t2v.debug.{name}"]
        assert_close(seen[name].reshape(expected.shape), expected, atol=1e-5, rtol=1e-5)


def test_rope_angle_table(cases):
    assert_close(rope_angles((3, 2, 3), 128), cases["t2v.debug.rope_freqs"], atol=1e-6, rtol=0)


def test_condition_tokens_ignore_noise_tokens(reference_dit, cases):
    """i2v: changing the noisy frames must not change the condition frame's output."""
    x = cases["t2v.hidden_states"].clone()
    kwargs = dict(
        timestep=cases["i2v.timestep"],
        encoder_hidden_states=cases["t2v.encoder_hidden_states"],
        encoder_attention_mask=cases["t2v.encoder_attention_mask"],
        num_cond_latents=1,
    )
    with torch.no_grad():
        a = reference_dit(x, **kwargs)
        x[:, :, 1:] = torch.randn_like(x[:, :, 1:])
        b = reference_dit(x, **kwargs)
    assert torch.equal(a[:, :, 0], b[:, :, 0])
    assert not torch.allclose(a[:, :, 1:], b[:, :, 1:])


def test_sharded_checkpoint_loads_identically(tmp_path, reference_dit, cases):
    state = load_file(REFERENCE / "dit" / "diffusion_pytorch_model.safetensors")
    names = sorted(state)
    shards = [names[: len(names) // 3], names[len(names) // 3 : 2 * len(names) // 3], names[2 * len(names) // 3 :]]
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        file = f"diffusion_pytorch_model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k] for k in shard}, tmp_path / file)
        weight_map.update({k: file for k in shard})
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    config = json.loads((REFERENCE / "dit" / "config.json").read_text())
    config["some_future_key"] = "ignored"
    (tmp_path / "config.json").write_text(json.dumps(config))

    sharded = LongCatVideoTransformer3DModel.from_pretrained(tmp_path).eval()
    for name in FORWARD_CASES:
        assert torch.equal(run_case(sharded, cases, name), run_case(reference_dit, cases, name))


def test_bf16_loading_within_bf16_tolerance(reference_dit, cases):
    model = LongCatVideoTransformer3DModel.from_pretrained(REFERENCE / "dit", torch_dtype=torch.bfloat16).eval()
    assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    for name in FORWARD_CASES:
        out = run_case(model, cases, name)
        ref = cases[f"{name}.output"]
        assert out.dtype == torch.float32
        relative = (out - ref).norm() / ref.norm()
        assert relative < 2e-2, f"{name}: relative L2 error {relative:.3e} is beyond bf16 rounding"


def test_full_size_parameter_count_on_meta():
    with torch.device("meta"):
        model = LongCatVideoTransformer3DModel()
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 13.6e9) <= 0.1e9, count
    assert all(p.device.type == "meta" for p in model.parameters())
    assert swiglu_hidden_size(4096, 4) == 11008
    assert model.blocks[0].ffn.w1.out_features == 11008


@pytest.mark.parametrize("policy", ["full", "save_attention"])
def test_gradient_checkpointing_gives_same_gradients(cases, policy):
    model = LongCatVideoTransformer3DModel.from_pretrained(REFERENCE / "dit")
    inputs = dict(
        hidden_states=cases["t2v.hidden_states"],
        timestep=cases["i2v.timestep"],
        encoder_hidden_states=cases["t2v.encoder_hidden_states"],
        encoder_attention_mask=cases["t2v.encoder_attention_mask"],
        num_cond_latents=1,
    )

    def grads():
        model.zero_grad()
        model(**inputs).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing(policy)
    assert all(block.checkpoint_policy == policy for block in model.blocks)
    checkpointed = grads()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5), name


def test_text_padding_compaction_is_exact(reference_dit, cases):
    """Padded text rows are identical, so one row with bias log(count) equals attending all of them."""
    mask12 = cases["t2v.encoder_attention_mask"]  # valid [7, 12]
    text12 = cases["t2v.encoder_hidden_states"].squeeze(1)
    padded_length = 40
    text = torch.cat([text12, torch.randn(2, padded_length - 12, text12.shape[-1])], dim=1)
    mask = torch.cat([mask12, torch.zeros(2, padded_length - 12, dtype=mask12.dtype)], dim=1)
    args = (cases["t2v.hidden_states"], cases["t2v.timestep"])
    with torch.no_grad():
        full = reference_dit(*args, text, mask)  # all 40 tokens attended, as upstream
        reference_dit.text_virtual_length = padded_length
        try:
            compact = reference_dit(*args, text[:, :12], mask[:, :12])  # sample 1 has no padding slot left
            same_length = reference_dit(*args, text, mask)
        finally:
            reference_dit.text_virtual_length = None
    assert_close(compact, full, atol=1e-5, rtol=1e-5)
    assert_close(same_length, full, atol=1e-5, rtol=1e-5)
    assert (full - reference_dit(*args, text12, mask12)).abs().max() > 1e-3  # padding length matters


def test_no_float64_anywhere(reference_dit, cases):
    """Apple MPS has no float64: no op of a forward may produce one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Float64Detector(TorchDispatchMode):
        found = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64:
                    self.found.append(str(func))
            return out

    with Float64Detector() as detector:
        run_case(reference_dit, cases, "i2v")
    assert detector.found == []


def test_unmasked_text_equals_all_ones_mask(reference_dit, cases):
    full = torch.ones_like(cases["t2v.encoder_attention_mask"])
    with torch.no_grad():
        a = reference_dit(cases["t2v.hidden_states"], cases["t2v.timestep"], cases["t2v.encoder_hidden_states"], full)
        b = reference_dit(cases["t2v.hidden_states"], cases["t2v.timestep"], cases["t2v.encoder_hidden_states"], None)
    assert torch.equal(a, b)


def test_text_without_zero_pad_drops_padding(cases):
    """text_tokens_zero_pad=False: padded tokens are dropped, so their values do not matter."""
    config = json.loads((REFERENCE / "dit" / "config.json").read_text())
    config.pop("_class_name"), config.pop("_diffusers_version")
    model = LongCatVideoTransformer3DModel(**{**config, "text_tokens_zero_pad": False})
    model.load_state_dict(load_file(REFERENCE / "dit" / "diffusion_pytorch_model.safetensors"))
    mask = cases["t2v.encoder_attention_mask"]
    text = cases["t2v.encoder_hidden_states"].clone()
    with torch.no_grad():
        a = model(cases["t2v.hidden_states"], cases["t2v.timestep"], text, mask)
        text[0, :, 7:] = 100.0  # sample 0 has 7 valid tokens
        b = model(cases["t2v.hidden_states"], cases["t2v.timestep"], text, mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert not math.isnan(a.sum().item())


def test_compiled_checkpointed_blocks_have_no_graph_breaks_in_training():
    """Regional compile + checkpointing as the trainer runs them (grad on): any Python side
    effect inside a block (logging the kernel choice once updated a set) is a graph break
    under checkpointing, which splits the block's graph. The compiled loss and gradients
    equal eager ones."""
    import torch._dynamo

    from frametuner.models.longcat_video.tiny import build_tiny_transformer

    def loss_and_grads(model):
        generator = torch.Generator().manual_seed(0)
        out = model(
            hidden_states=torch.randn(1, 16, 3, 8, 8, generator=generator),
            timestep=torch.tensor([500.0]),
            encoder_hidden_states=torch.randn(1, 5, 64, generator=generator),
            encoder_attention_mask=torch.ones(1, 5, dtype=torch.long),
        )
        loss = out.pow(2).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager = build_tiny_transformer().train()
    eager.enable_gradient_checkpointing("full")
    expected_loss, expected_grads = loss_and_grads(eager)
    compiled = build_tiny_transformer().train()
    compiled.enable_gradient_checkpointing("full")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled.compile_blocks()
    loss, grads = loss_and_grads(compiled)
    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    torch._dynamo.reset()
    assert breaks == {}, breaks
    assert_close(loss, expected_loss, atol=1e-5, rtol=1e-4)
    for name, grad in expected_grads.items():
        assert_close(grads[name], grad, atol=1e-5, rtol=1e-3)
