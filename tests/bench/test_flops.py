"""The analytic FLOP model against a hand count and against torch's FlopCounterMode."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from frametuner.bench.flops import DiTShape, floor_seconds, forward_flops, training_step_flops
from frametuner.models.longcat_video.tiny import TINY_DIT_CONFIG, build_tiny_transformer


def test_forward_hand_count_tiny():
    # hidden 8, depth 1, ffn 16, caption 4, adaln 2, freq 2, 1 sample, 2 frames, 6 tokens, 3 text tokens.
    shape = DiTShape(hidden=8, depth=1, heads=2, ffn=16, caption_channels=4, adaln=2, frequency=2)
    count = forward_flops(shape, batch=1, frames=2, tokens=6, text_len=3)
    hand = (
        2 * 6 * 8 * 64  # patch embed: 16 channels x 1x2x2 inputs per token
        + 2 * 2 * (2 * 2 + 2 * 2)  # timestep MLP per frame
        + 2 * 3 * (4 * 8 + 8 * 8)  # caption MLP
        + 2 * 2 * 2 * 48  # adaLN per frame
        + 2 * 6 * 8 * 24 + 2 * 6 * 8 * 8  # qkv, proj
        + 2 * 6 * 8 * 8 + 2 * 3 * 8 * 16 + 2 * 6 * 8 * 8  # cross q, kv, proj
        + 3 * 2 * 6 * 8 * 16  # SwiGLU
        + 2 * 2 * 2 * 16  # final adaLN
        + 2 * 6 * 8 * 64  # final linear
    )
    assert count.gemm == hand
    assert count.attention == 4 * 6 * 6 * 8 + 4 * 6 * 3 * 8


def math_attention(q, k, v, attn_mask=None, **_):
    """Attention as two explicit products, so FlopCounterMode sees them on the CPU too."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(-1) @ v


def test_forward_count_equals_flop_counter_on_tiny_model(monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", math_attention)
    model = build_tiny_transformer().eval()
    batch, frames, height, width, text_len = 2, 3, 8, 12, 10
    x = torch.randn(batch, 16, frames, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.tensor([500.0, 20.0]), torch.randn(batch, text_len, TINY_DIT_CONFIG["caption_channels"]), torch.ones(batch, text_len))
    tokens = frames * (height // 2) * (width // 2)
    predicted = forward_flops(DiTShape.from_model_config(model.config), batch=batch, frames=frames, tokens=tokens, text_len=text_len)
    assert predicted.total == counter.get_total_flops()
    assert predicted.attention == counter.get_flop_counts()["Global"][torch.ops.aten.bmm]


def test_full_size_floor_matches_issue_figures():
    """At the issue's ceilings (GEMM 740, SDPA 590 TFLOP/s) the 480x832x93 LoRA step floors at ~11.9 s
    with full recomputation, ~10 s saving attention, and the CFG sampling step at ~6.1 s."""
    shape = DiTShape()
    kwargs = dict(batch=1, frames=24, tokens=24 * 30 * 52, text_len=512)
    rates = dict(gemm_flops_per_s=740e12, sdpa_fwd_flops_per_s=590e12, sdpa_fwd_bwd_flops_per_s=590e12)
    full = floor_seconds(training_step_flops(shape, **kwargs, recompute="full"), **rates)
    saved = floor_seconds(training_step_flops(shape, **kwargs, recompute="save_attention"), **rates)
    from frametuner.bench.flops import sampling_step_flops

    sample = floor_seconds(sampling_step_flops(shape, **{**kwargs, "batch": 2}), **rates)
    assert 11.5 < full < 12.3 and 9.6 < saved < 10.4 and 5.8 < sample < 6.4, (full, saved, sample)
