"""Which fused SDPA kernel dense self-attention prefers (``sdpa_kernel``), and that the
preferred one computes the same attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from frametuner.models.longcat_video.attention import AttentionSettings, sdpa_attention
from frametuner.models.sdpa import auto_sdpa_kernel, sdpa_backends


def test_cudnn_is_first_and_falls_back_to_torchs_order():
    assert sdpa_backends("cudnn") == [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    assert sdpa_backends("flash") == [SDPBackend.FLASH_ATTENTION]


def test_auto_leaves_the_cpu_to_torch():
    assert auto_sdpa_kernel(torch.device("cpu")) is None
    q, k, v = (torch.randn(1, 2, 16, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    torch.testing.assert_close(sdpa_attention(q, k, v, settings=AttentionSettings()), F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["auto", "cudnn", "flash"])
def test_every_kernel_choice_is_the_same_attention_on_cuda(kernel):
    """bf16 forward and input gradients of each choice (auto: cuDNN on Hopper) against the
    float32 math kernel, at a LongCat head size (128) and an odd token count."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4, 1560, 128, device="cuda", generator=generator) for _ in range(3))
    grad = torch.randn(1, 4, 1560, 128, device="cuda", generator=generator)
    reference = [t.clone().requires_grad_() for t in (q, k, v)]
    with torch.nn.attention.sdpa_kernel(SDPBackend.MATH):
        F.scaled_dot_product_attention(*reference).backward(grad)
        expected = F.scaled_dot_product_attention(*reference).detach()
    inputs = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = sdpa_attention(*inputs, settings=AttentionSettings(sdpa_kernel=kernel))
    out.backward(grad.to(torch.bfloat16))
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    for got, want in zip(inputs, reference):
        torch.testing.assert_close(got.grad.float(), want.grad, atol=3e-2, rtol=3e-2)


def test_compiled_attention_with_a_preferred_kernel_stays_cacheable(monkeypatch, tmp_path):
    """The kernel preference is set around the block loop, outside compiled code: inside a
    compiled block, ``sdpa_kernel(...)`` became graph nodes (``_backend_from_string``) that made
    AOTAutograd's cache bypass every graph, so a second run compiled from scratch (issue 23's
    compile once, measured on the H100). Here the preference is the math kernel, which a CPU has."""
    import torch._functorch.config
    import torch._inductor.config
    from torch._dynamo.utils import counters

    from frametuner.models.longcat_video import attention

    monkeypatch.setattr(attention, "_preferred_kernel", lambda settings, device: "math")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    settings = AttentionSettings()
    q, k, v = (torch.randn(1, 2, 16, 8, generator=torch.Generator().manual_seed(i), requires_grad=True) for i in range(3))
    bias = torch.zeros(1, 16)

    def block(q, k, v):
        return attention.sdpa_attention(q, k, v, settings=settings) + attention.cross_attention(q, k, v, bias, settings=settings)

    torch._dynamo.reset()
    counters.clear()
    with torch._functorch.config.patch(enable_autograd_cache=True), torch._inductor.config.patch(fx_graph_cache=True):
        with attention.block_compile_context(settings, torch.device("cpu")):
            out = torch.compile(block)(q, k, v)
        out.sum().backward()
    assert counters["aot_autograd"]["autograd_cache_bypass"] == 0 and counters["inductor"]["fxgraph_cache_bypass"] == 0
    assert counters["aot_autograd"]["autograd_cache_miss"] + counters["aot_autograd"]["autograd_cache_hit"] >= 1  # it was cached
    expected = 2 * F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, expected)
    torch._dynamo.reset()


@pytest.mark.parametrize("family", ["longcat_video", "wan"])
def test_a_checkpointed_training_step_runs_every_attention_under_the_preferred_kernel(family, monkeypatch):
    """Every SDPA call of a checkpointed step, the forward's and the backward's recomputation,
    runs under the kernel the GPU prefers (cuDNN on Hopper; torch ranks it last). Wan's blocks
    are diffusers' code, and its recomputation runs outside the forward's block loop, so the
    loop's priority alone would leave it on torch's order. A CPU has the math kernel, so the
    preference here is math."""
    from frametuner.models.longcat_video import attention
    from frametuner.models.registry import load_spec
    from frametuner.models.wan import transformer as wan_transformer

    for module in (attention, wan_transformer):
        monkeypatch.setattr(module, "preferred_sdpa_kernel", lambda kernel, device: "math")
    firsts = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        firsts.append((torch.is_grad_enabled(), torch._C._get_sdp_priority_order()[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    spec = load_spec(family)
    model = spec.build_transformer(flavour="tiny", device="cpu", dtype=torch.float32)
    model.requires_grad_(True)
    model.enable_gradient_checkpointing("full")
    model.train()
    generator = torch.Generator().manual_seed(0)
    latents, noise = (torch.randn(1, spec.geometry.channels, 2, 4, 4, generator=generator) for _ in range(2))
    inputs = spec.training_inputs(latents, noise, torch.tensor([0.5]))
    text, mask = torch.randn(1, 8, 64, generator=generator), torch.ones(1, 8, dtype=torch.int64)
    assert torch._C._get_sdp_priority_order()[0] != int(SDPBackend.MATH)  # torch's own order out here
    spec.training_forward(model, inputs, text, mask).square().mean().backward()
    calls = 2 * len(model.blocks)  # self- and cross-attention per block
    assert len(firsts) == 2 * calls  # the forward's, then the recomputation's
    assert {first for _, first in firsts} == {int(SDPBackend.MATH)}, firsts
    assert torch._C._get_sdp_priority_order()[0] != int(SDPBackend.MATH)  # restored after the step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9, reason="cuDNN attention is preferred on Hopper (sm90) only")
def test_wan_training_step_runs_cudnn_attention_on_hopper():
    """Wan's blocks are diffusers' code: its forward and its checkpointed recomputation run
    cuDNN's fused attention on Hopper, not torch's first choice (flash). Head size 128, Wan's."""
    from torch.profiler import ProfilerActivity, profile

    from frametuner.models.wan.transformer import WanTransformer

    model = WanTransformer(
        num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=64, freq_dim=32, ffn_dim=256, num_layers=2
    ).to("cuda", torch.bfloat16)
    model.enable_gradient_checkpointing("full")
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, 16, 3, 16, 16, device="cuda", dtype=torch.bfloat16, generator=generator)
    text = torch.randn(1, 8, 64, device="cuda", dtype=torch.bfloat16, generator=generator)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = model(x, torch.tensor([500.0], device="cuda"), text, return_dict=False)[0]
        out.float().square().mean().backward()
        torch.cuda.synchronize()
    names = {event.key for event in prof.key_averages()}
    assert any("cudnn" in name and "fprop" in name for name in names), sorted(names)
    assert any("cudnn" in name and "bprop" in name for name in names), sorted(names)
    assert not any("pytorch_flash" in name for name in names), sorted(name for name in names if "flash" in name)
