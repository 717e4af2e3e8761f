"""The sampler on CUDA: the reference loops in float32, and determinism of a bf16 run."""

from __future__ import annotations

import copy

import pytest
import torch

from frametuner.sampling import denoise

from ..conftest import assert_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def exact_float32():
    """TF32 would change float32 matmuls/convolutions by ~1e-3; the reference tolerances assume real float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _text(cases, device):
    return dict(
        prompt_embeds=cases["sample_t2v.prompt_embeds"].to(device),
        prompt_mask=cases["sample_t2v.prompt_attention_mask"].to(device),
        negative_embeds=cases["sample_t2v.negative_prompt_embeds"].to(device),
        negative_mask=cases["sample_t2v.negative_prompt_attention_mask"].to(device),
    )


@pytest.mark.parametrize("case", ["sample_t2v", "sample_i2v"])
def test_reference_loops_on_cuda(reference_dit, cases, exact_float32, case):
    model = copy.deepcopy(reference_dit).to("cuda")
    latents = cases[f"{case}.latents_init"].clone()
    num_cond = 0
    if case == "sample_i2v":
        latents[:, :, :1] = cases["sample_i2v.cond_latent_normalized"]
        num_cond = 1
    final = denoise(model, latents.cuda(), **_text(cases, "cuda"), steps=4, guidance=4.0, num_cond_latents=num_cond)
    assert final.device.type == "cuda" and final.dtype == torch.float32
    assert_close(final.cpu(), cases[f"{case}.latents_final"], atol=5e-5, rtol=1e-5)


def test_bf16_sampling_is_deterministic(reference_dit, cases):
    model = copy.deepcopy(reference_dit).to("cuda", torch.bfloat16)
    latents = cases["sample_t2v.latents_init"].cuda()
    first = denoise(model, latents, **_text(cases, "cuda"), steps=4)
    second = denoise(model, latents, **_text(cases, "cuda"), steps=4)
    assert first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, second)
    # bf16 weights/activations stay close to the float32 reference (loose: bf16 has 8 bits of mantissa).
    assert (first.cpu() - cases["sample_t2v.latents_final"]).abs().max() < 0.15


@pytest.mark.parametrize("use_kv_cache", [False, True], ids=["nokv", "kv"])
def test_continuation_reference_on_cuda_with_compiled_blocks(reference_dit, vc_cases, exact_float32, use_kv_cache):
    """generate_vc's reference (both cache modes) on CUDA through regionally compiled blocks: the
    cache-building and cached forwards compile like the plain one."""
    import torch._dynamo

    model = copy.deepcopy(reference_dit).to("cuda")
    torch._dynamo.reset()
    model.compile_blocks()
    latents = vc_cases["sample_vc.latents_init"].clone()
    latents[:, :, :2] = vc_cases["sample_vc.cond_latent_normalized"]
    text = dict(
        prompt_embeds=vc_cases["sample_vc.prompt_embeds"].cuda(), prompt_mask=vc_cases["sample_vc.prompt_attention_mask"].cuda(),
        negative_embeds=vc_cases["sample_vc.negative_prompt_embeds"].cuda(), negative_mask=vc_cases["sample_vc.negative_prompt_attention_mask"].cuda(),
    )
    final = denoise(model, latents.cuda(), **text, steps=4, guidance=4.0, num_cond_latents=2, use_kv_cache=use_kv_cache)
    torch._dynamo.reset()
    assert_close(final.cpu(), vc_cases[f"sample_vc.{'kv' if use_kv_cache else 'nokv'}.latents_final"], atol=5e-5, rtol=1e-5)
