"""The condition KV cache of the DiT against upstream (tests/fixtures/longcat_reference_vc, ``kvdit.*``).

Upstream caches keys before RoPE; frametuner caches them after (RoPE is per token, so
rotating the fixture's keys with the condition grid's tables must give ours). The
conditioning-frame semantics (timestep 0, no cross-attention, attention only among
themselves) are asserted on the forward without cache, which the cache reproduces.
"""

from __future__ import annotations

import pytest
import torch

from frametuner.models.longcat_video.rope import apply_rope

from ..conftest import assert_close


def _text(vc):
    return dict(encoder_hidden_states=vc["kvdit.encoder_hidden_states"], encoder_attention_mask=vc["kvdit.encoder_attention_mask"])


def test_cache_build_matches_reference(reference_dit, vc_cases):
    cache, output = reference_dit.build_condition_cache(vc_cases["kvdit.cond_latents"], return_output=True)
    assert cache.num_latents == int(vc_cases["kvdit.num_cond_latents"]) == 2
    assert cache.grid == (2, 2, 3)
    assert_close(output, vc_cases["kvdit.cache_output"], atol=1e-5, rtol=1e-5)
    cos, sin = reference_dit.rope.tables(cache.grid, torch.device("cpu"))
    for block in range(len(reference_dit.blocks)):
        keys, values = cache.layer(block)
        expected_keys = vc_cases[f"kvdit.cache.block{block}.k"]  # [1, heads, 12, head_dim], before RoPE
        assert keys.shape == values.shape == expected_keys.shape
        assert_close(keys, apply_rope(expected_keys, cos, sin), atol=1e-5, rtol=1e-5)
        assert_close(values, vc_cases[f"kvdit.cache.block{block}.v"], atol=1e-5, rtol=1e-5)
        for tensor in (keys, values):  # compact: no view keeping a larger buffer (the fused qkv) alive
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_cached_forward_matches_reference_and_the_full_forward(reference_dit, vc_cases):
    """A batch-1 cache serves the CFG batch of 2; output on the noisy frames only."""
    cache = reference_dit.build_condition_cache(vc_cases["kvdit.cond_latents"])
    with torch.no_grad():
        cached = reference_dit(
            hidden_states=vc_cases["kvdit.noisy_latents"], timestep=vc_cases["kvdit.timestep"],
            num_cond_latents=2, condition_cache=cache, **_text(vc_cases),
        )
        full = reference_dit(
            hidden_states=vc_cases["kvdit.full_hidden_states"], timestep=vc_cases["kvdit.full_timestep"],
            num_cond_latents=2, **_text(vc_cases),
        )
    assert cached.shape == (2, 16, 2, 4, 6)
    assert_close(cached, vc_cases["kvdit.output_kv"], atol=1e-5, rtol=1e-5)
    assert_close(full, vc_cases["kvdit.output_full"], atol=1e-5, rtol=1e-5)
    # The cache is an exact optimisation at the DiT level (rounding only).
    assert_close(cached, full[:, :, 2:], atol=1e-5, rtol=1e-5)
    # num_cond_latents may be left out: the cache knows it.
    with torch.no_grad():
        inferred = reference_dit(hidden_states=vc_cases["kvdit.noisy_latents"], timestep=vc_cases["kvdit.timestep"], condition_cache=cache, **_text(vc_cases))
    assert torch.equal(inferred, cached)


def test_batch_one_cache_equals_a_cache_per_sample(reference_dit, vc_cases):
    cond = vc_cases["kvdit.cond_latents"]
    shared = reference_dit.build_condition_cache(cond)
    repeated = reference_dit.build_condition_cache(cond.repeat(2, 1, 1, 1, 1))
    kwargs = dict(hidden_states=vc_cases["kvdit.noisy_latents"], timestep=vc_cases["kvdit.timestep"], **_text(vc_cases))
    with torch.no_grad():
        a = reference_dit(condition_cache=shared, **kwargs)
        b = reference_dit(condition_cache=repeated, **kwargs)
    assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cache_rejects_mismatched_latents(reference_dit, vc_cases):
    cache = reference_dit.build_condition_cache(vc_cases["kvdit.cond_latents"])
    with pytest.raises(ValueError, match="holds 2 frames"):
        reference_dit(hidden_states=vc_cases["kvdit.noisy_latents"], timestep=vc_cases["kvdit.timestep"], num_cond_latents=1, condition_cache=cache, **_text(vc_cases))
    with pytest.raises(ValueError, match="patch grid"):
        reference_dit(hidden_states=vc_cases["kvdit.noisy_latents"][..., :4], timestep=vc_cases["kvdit.timestep"], condition_cache=cache, **_text(vc_cases))


# ---------------------------------------------------------------------- condition-frame semantics
def _full_forward(model, vc, **overrides):
    kwargs = dict(
        hidden_states=vc["kvdit.full_hidden_states"], timestep=vc["kvdit.full_timestep"], num_cond_latents=2, **_text(vc)
    )
    kwargs.update(overrides)
    with torch.no_grad():
        return model(**kwargs)


def test_condition_tokens_get_no_cross_attention(reference_dit, vc_cases):
    """Changing the text changes the noisy frames' output but not the condition frames' (bit-equal)."""
    base = _full_forward(reference_dit, vc_cases)
    other = _full_forward(reference_dit, vc_cases, encoder_hidden_states=torch.randn_like(vc_cases["kvdit.encoder_hidden_states"]))
    assert torch.equal(base[:, :, :2], other[:, :, :2])
    assert (base[:, :, 2:] - other[:, :, 2:]).abs().max() > 1e-2
    # Both CFG branches see the same condition frames: their outputs there are identical.
    assert torch.equal(base[0, :, :2], base[1, :, :2])


def test_condition_tokens_attend_only_among_themselves(reference_dit, vc_cases):
    """Changing the noisy latents (and their timesteps) leaves the condition frames' output unchanged."""
    base = _full_forward(reference_dit, vc_cases)
    hidden = vc_cases["kvdit.full_hidden_states"].clone()
    hidden[:, :, 2:] = torch.randn_like(hidden[:, :, 2:])
    timestep = vc_cases["kvdit.full_timestep"].clone()
    timestep[:, 2:] = 10.0
    other = _full_forward(reference_dit, vc_cases, hidden_states=hidden, timestep=timestep)
    assert torch.equal(base[:, :, :2], other[:, :, :2])
    assert (base[:, :, 2:] - other[:, :, 2:]).abs().max() > 1e-2


def test_cache_is_built_at_timestep_zero(reference_dit, vc_cases):
    """The cache-building output equals the full forward's condition frames, whose timestep is 0."""
    assert (vc_cases["kvdit.full_timestep"][:, :2] == 0).all()
    _, output = reference_dit.build_condition_cache(vc_cases["kvdit.cond_latents"], return_output=True)
    full = _full_forward(reference_dit, vc_cases)
    assert_close(output.expand(2, -1, -1, -1, -1), full[:, :, :2], atol=1e-6, rtol=0)
    # A different timestep for those frames would change them: the check above is not vacuous.
    timestep = vc_cases["kvdit.full_timestep"].clone()
    timestep[:, :2] = 500.0
    moved = _full_forward(reference_dit, vc_cases, timestep=timestep)
    assert (moved[:, :, :2] - full[:, :, :2]).abs().max() > 1e-2


# ---------------------------------------------------------------------- block protocol
def test_cache_goes_through_the_block_seam_with_block_swap(vc_cases):
    """Building and using the cache run every block through ``_run_block``, so block swap
    streams weights in for them too; results bit-identical to the plain model."""
    from frametuner.memory import enable_block_swap

    from ..memory.helpers import small_dit

    plain = small_dit(depth=3)
    swapped = small_dit(depth=3)
    swap = enable_block_swap(swapped, 2, "cpu", training=False)
    cond = vc_cases["kvdit.cond_latents"]
    kwargs = dict(hidden_states=vc_cases["kvdit.noisy_latents"], timestep=vc_cases["kvdit.timestep"], **_text(vc_cases))
    with torch.no_grad():
        expected = plain(condition_cache=plain.build_condition_cache(cond), **kwargs)
        loads = swap.loads
        cache = swapped.build_condition_cache(cond)
        assert swap.loads > loads, "the cache-building forward did not stream the swapped blocks in"
        actual = swapped(condition_cache=cache, **kwargs)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_cache_with_group_offload(vc_cases, offload_type):
    """diffusers' group-offload hooks on the blocks pass the cache arguments and the build pass's
    (x, k, v) output through unchanged."""
    from frametuner.memory import enable_group_offload

    from ..memory.helpers import small_dit

    plain = small_dit(depth=2)
    offloaded = small_dit(depth=2)
    enable_group_offload(offloaded, "cpu", offload_type=offload_type, training=False)
    cond = vc_cases["kvdit.cond_latents"]
    kwargs = dict(hidden_states=vc_cases["kvdit.noisy_latents"], timestep=vc_cases["kvdit.timestep"], **_text(vc_cases))
    with torch.no_grad():
        expected = plain(condition_cache=plain.build_condition_cache(cond), **kwargs)
        actual = offloaded(condition_cache=offloaded.build_condition_cache(cond), **kwargs)
    assert torch.equal(actual, expected)


@pytest.mark.slow
def test_compiled_blocks_trace_the_cached_paths_without_graph_breaks(vc_cases):
    import torch._dynamo

    from frametuner.models.longcat_video.tiny import build_tiny_transformer

    eager = build_tiny_transformer().eval()
    compiled = build_tiny_transformer().eval()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled.compile_blocks(backend="aot_eager")
    cond = vc_cases["kvdit.cond_latents"]
    text = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    kwargs = dict(hidden_states=vc_cases["kvdit.noisy_latents"], timestep=vc_cases["kvdit.timestep"], encoder_hidden_states=text)
    with torch.no_grad():
        expected = eager(condition_cache=eager.build_condition_cache(cond), **kwargs)
        actual = compiled(condition_cache=compiled.build_condition_cache(cond), **kwargs)
    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    torch._dynamo.reset()
    assert breaks == {}, breaks
    assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_offloaded_cache_gives_the_same_output(reference_dit, vc_cases):
    cache = reference_dit.build_condition_cache(vc_cases["kvdit.cond_latents"])
    offloaded = cache.offloaded()
    assert offloaded.device == torch.device("cpu") and all(k.device.type == "cpu" for k in offloaded.keys)
    assert offloaded.nbytes == cache.nbytes
    kwargs = dict(hidden_states=vc_cases["kvdit.noisy_latents"], timestep=vc_cases["kvdit.timestep"], **_text(vc_cases))
    with torch.no_grad():
        assert torch.equal(reference_dit(condition_cache=offloaded, **kwargs), reference_dit(condition_cache=cache, **kwargs))
