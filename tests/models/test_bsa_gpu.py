"""Block-sparse attention on CUDA: bf16 forward and gradients against the dense-masked reference.

The 720p case is one LongCat-Video attention layer at 704x1280x93 (latent 24x88x160,
patch grid 24x44x80 = 84,480 tokens, 32 heads of 128). Its reference never holds the
84,480^2 mask: softmax rows are independent, so it runs per head and per latent frame
of queries (float32, ``[3520, 84480]`` masks) and sums the key/value gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from frametuner.models.longcat_video.bsa import (
    BSAParams,
    block_sparse_attention,
    select_key_chunks,
    token_chunk_index,
    token_mask,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GRID_720P = (24, 44, 80)  # 704x1280x93 after the VAE (4, 8, 8) and the patch (1, 2, 2)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def qkv(grid_q, grid_k, heads, head_dim=128, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)

    def make(tokens):
        return torch.randn(1, heads, tokens, head_dim, device="cuda", dtype=torch.bfloat16, generator=generator)

    q, k, v = make(math.prod(grid_q)), make(math.prod(grid_k)), make(math.prod(grid_k))
    return [x.requires_grad_() for x in (q, k, v)], make(math.prod(grid_q))


def bsa_with_grads(q, k, v, grad, **kwargs):
    out = block_sparse_attention(q, k, v, **kwargs)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


@pytest.mark.parametrize(
    "grid_q, grid_k, params",
    [
        ((8, 16, 16), (8, 16, 16), dict(sparsity=0.75)),
        ((4, 16, 16), (8, 16, 16), dict(sparsity=0.5, cdf_threshold=0.9)),  # i2v noise queries
        ((8, 16, 16), (8, 16, 16), dict(sparsity=None, cdf_threshold=0.5, chunk_3d_shape=[2, 4, 4])),
    ],
)
def test_small_grids_match_reference_with_gradients(grid_q, grid_k, params):
    (q, k, v), grad = qkv(grid_q, grid_k, heads=4)
    out, dq, dk, dv = bsa_with_grads(q, k, v, grad, grid_q=grid_q, grid_k=grid_k, params=params)
    # The selection comes from the bf16 q/k the kernel saw; the attention itself runs in float32.
    with torch.no_grad():
        kept = select_key_chunks(q, k, grid_q=grid_q, grid_k=grid_k, params=params).mask()
    mask = token_mask(kept, grid_q=grid_q, grid_k=grid_k, params=params)
    leaves = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref = F.scaled_dot_product_attention(*leaves, attn_mask=mask)
    ref_grads = torch.autograd.grad(ref, leaves, grad.float())
    for name, actual, expected in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), (ref, *ref_grads)):
        assert relative_error(actual, expected) < 2e-2, name


def test_sparsity_zero_is_dense_sdpa_on_cuda():
    (q, k, v), _ = qkv((4, 16, 16), (8, 16, 16), heads=2)
    with torch.no_grad():
        out = block_sparse_attention(q, k, v, grid_q=(4, 16, 16), grid_k=(8, 16, 16), params={"sparsity": 0.0})
        assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))


def test_720p_layer_matches_reference_in_bf16_with_gradients():
    params = BSAParams()  # the released bsa_params: sparsity 0.9375, 4x4x4 chunks
    (q, k, v), grad = qkv(GRID_720P, GRID_720P, heads=32)
    out, dq, dk, dv = bsa_with_grads(q, k, v, grad, grid_q=GRID_720P, grid_k=GRID_720P, params=params)

    with torch.no_grad():
        kept = select_key_chunks(q, k, grid_q=GRID_720P, grid_k=GRID_720P, params=params).mask()[0]  # [32, 1320, 1320]
        dense = F.scaled_dot_product_attention(q, k, v)
    chunk_of_token = token_chunk_index(GRID_720P, params.chunk_3d_shape_q, "cuda")
    frame = GRID_720P[1] * GRID_720P[2]
    ref, ref_dq, ref_dk, ref_dv = (torch.zeros(q.shape, device="cuda") for _ in range(4))
    for head in range(q.shape[1]):
        k32, v32 = (x[0, head].detach().float().requires_grad_() for x in (k, v))
        for start in range(0, q.shape[2], frame):
            rows = slice(start, start + frame)
            q32 = q[0, head, rows].detach().float().requires_grad_()
            mask = kept[head][chunk_of_token[rows]][:, chunk_of_token]
            part = F.scaled_dot_product_attention(q32[None], k32[None], v32[None], attn_mask=mask[None])[0]
            part.backward(grad[0, head, rows].float())
            ref[0, head, rows] = part.detach()
            ref_dq[0, head, rows] = q32.grad
        ref_dk[0, head], ref_dv[0, head] = k32.grad, v32.grad

    errors = {name: relative_error(a, b) for name, a, b in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), (ref, ref_dq, ref_dk, ref_dv))}
    assert all(error < 2e-2 for error in errors.values()), errors
    assert relative_error(dense, ref) > 0.1, "dense attention should differ from 1/16 block-sparse attention"


def test_bsa_inside_a_compiled_checkpointed_block_matches_eager_with_gradients():
    """The training path: BSA traced into a regionally compiled, checkpointed DiT block (one
    graph, the model's compile context for FlexAttention's tiles) gives the eager BSA output
    and LoRA-free input/weight gradients within bf16 tolerance."""
    import torch._dynamo

    from frametuner.models.longcat_video.tiny import TINY_DIT_CONFIG
    from frametuner.models.longcat_video.transformer import LongCatVideoTransformer3DModel

    def build():
        torch.manual_seed(0)
        config = {**TINY_DIT_CONFIG, "hidden_size": 256, "num_heads": 2, "depth": 2}
        model = torch.nn.Module.to(LongCatVideoTransformer3DModel(**config), device="cuda", dtype=torch.bfloat16)
        model.set_attention_implementation("bsa", {"sparsity": 0.75})
        model.enable_gradient_checkpointing("full")
        return model

    generator = torch.Generator(device="cuda").manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 8, 32, 32, device="cuda", generator=generator),  # grid (8, 16, 16)
        timestep=torch.tensor([600.0], device="cuda"),
        encoder_hidden_states=torch.randn(1, 7, TINY_DIT_CONFIG["caption_channels"], device="cuda", generator=generator),
        encoder_attention_mask=torch.ones(1, 7, dtype=torch.long, device="cuda"),
    )

    def run(model):
        out = model(**inputs)
        out.float().pow(2).mean().backward()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if "blocks.0.attn" in n}
        return out.float(), grads

    eager_out, eager_grads = run(build())
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = build()
    compiled.compile_blocks()
    out, grads = run(compiled)
    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    torch._dynamo.reset()
    assert breaks == {}, breaks
    assert relative_error(out, eager_out) < 2e-2
    for name, grad in eager_grads.items():
        assert relative_error(grads[name], grad) < 5e-2, name
