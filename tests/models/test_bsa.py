"""Block-sparse attention: regrouping, chunk selection, FlexAttention kernel vs the dense-masked oracle.

CPU FlexAttention is compiled once per shape (seconds on 2 cores), so every kernel test
uses one of three shapes, the ones the tiny DiT's i2v and t2v calls produce: batch 2,
2 heads, head_dim 64, patch grid (8, 8, 8) with 4-frame condition/noise halves.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from frametuner.config.schema import TrainConfig
from frametuner.models.longcat_video import attention as attention_module
from frametuner.models.longcat_video.attention import AttentionSettings, resolve_backend
from frametuner.models.longcat_video.bsa import (
    BSAParams,
    block_sparse_attention,
    block_sparse_attention_reference,
    bsa_eligible,
    configure_attention,
    from_chunk_order,
    merge_bsa_params,
    pool_chunks,
    select_from_pooled,
    select_key_chunks,
    to_chunk_order,
    token_chunk_index,
)
from frametuner.models.longcat_video.spec import LongCatVideoSpec
from frametuner.models.longcat_video.tiny import build_tiny_transformer

from ..conftest import assert_close

BATCH, HEADS, HEAD_DIM = 2, 2, 64
FULL, HALF = (8, 8, 8), (4, 8, 8)
# (grid_q, grid_k): t2v, i2v noise queries over all keys, i2v condition queries over condition keys.
SHAPES = {"t2v": (FULL, FULL), "i2v-noise": (HALF, FULL), "i2v-cond": (HALF, HALF)}


def random_qkv(grid_q, grid_k, seed=0):
    """q/k with a per-chunk offset, so pooled scores are spread out and the selection matters."""
    generator = torch.Generator().manual_seed(seed)

    def make(grid):
        tokens = math.prod(grid)
        x = torch.randn(BATCH, HEADS, tokens, HEAD_DIM, generator=generator)
        offsets = 2 * torch.randn(BATCH, HEADS, 64, HEAD_DIM, generator=generator)
        return x + offsets[:, :, token_chunk_index(grid, (4, 4, 4))]

    return make(grid_q), make(grid_k), torch.randn(BATCH, HEADS, math.prod(grid_k), HEAD_DIM, generator=generator)


# ---------------------------------------------------------------------------- params
def test_params_read_upstream_layout_and_reject_bad_values():
    params = BSAParams.from_dict(
        {"sparsity": 0.9375, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [2, 4, 4]}
    )
    assert params == BSAParams(0.9375, None, (4, 4, 4), (2, 4, 4))
    assert BSAParams.from_dict({"chunk_3d_shape": [1, 2, 2]}).chunk_3d_shape_k == (1, 2, 2)
    assert params.num_top_k(1320) == 82  # int(0.0625 * 1320), the 720p layer
    assert params.num_top_k(8) == 1  # int(0.5) == 0 would attend to nothing
    with pytest.raises(ValueError, match="sparsity"):
        BSAParams.from_dict({"sparsity": 1.0})
    with pytest.raises(ValueError, match="unknown keys"):
        BSAParams.from_dict({"sparsty": 0.5})
    with pytest.raises(ValueError, match="chunk_3d_shape_q"):
        BSAParams.from_dict({"chunk_3d_shape_q": [4, 4]})
    with pytest.raises(ValueError, match="sparsity, a cdf_threshold"):
        BSAParams.from_dict({"sparsity": None})


# ---------------------------------------------------------------------------- regrouping
def test_regrouping_matches_explicit_chunk_walk_and_round_trips():
    grid, chunk = (4, 8, 12), (2, 4, 4)
    x = torch.randn(2, 3, math.prod(grid), 5)
    chunked = to_chunk_order(x, grid, chunk)

    x5 = x.view(2, 3, *grid, 5)
    expected = [
        x5[:, :, a * chunk[0] + i, b * chunk[1] + j, c * chunk[2] + l]
        for a in range(grid[0] // chunk[0])
        for b in range(grid[1] // chunk[1])
        for c in range(grid[2] // chunk[2])
        for i in range(chunk[0])
        for j in range(chunk[1])
        for l in range(chunk[2])
    ]
    assert torch.equal(chunked, torch.stack(expected, dim=2))
    assert torch.equal(from_chunk_order(chunked, grid, chunk), x)

    ids = token_chunk_index(grid, chunk).to(torch.float32)[None, None, :, None]
    chunk_ids = to_chunk_order(ids, grid, chunk).flatten().long()
    assert torch.equal(chunk_ids, torch.arange(12).repeat_interleave(32))  # 2x2x3 chunks of 32 tokens


def test_pooling_is_the_mean_of_each_chunk():
    grid, chunk = (4, 8, 8), (4, 4, 4)
    x = torch.randn(2, 3, math.prod(grid), 7, dtype=torch.bfloat16)
    ids = token_chunk_index(grid, chunk)
    sums = torch.zeros(2, 3, 4, 7).index_add_(2, ids, x.float())
    pooled = pool_chunks(x, grid, chunk)
    assert pooled.dtype == torch.float32
    assert_close(pooled, sums / 64, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- selection
def brute_force_selection(q_pool, k_pool, params):
    """Row by row in Python: sort (score desc, index asc), then the top-k / cdf rule of the issue."""
    scale = q_pool.shape[-1] ** -0.5
    scores = (q_pool.double() @ k_pool.double().transpose(-1, -2)).tolist()
    kept = torch.zeros(q_pool.shape[0], q_pool.shape[1], q_pool.shape[2], k_pool.shape[2], dtype=torch.bool)
    for b, per_batch in enumerate(scores):
        for h, per_head in enumerate(per_batch):
            for m, row in enumerate(per_head):
                ranked = sorted(range(len(row)), key=lambda n: (-row[n], n))
                count = params.num_top_k(len(row))
                if params.cdf_threshold is not None:
                    weights = torch.softmax(torch.tensor(row, dtype=torch.float64) * scale, 0).tolist()
                    mass, reach = 0.0, 0
                    while reach < len(row) and mass < params.cdf_threshold:
                        mass += weights[ranked[reach]]
                        reach += 1
                    count = max(count, reach)
                kept[b, h, m, ranked[:count]] = True
    return kept


@pytest.mark.parametrize(
    "sparsity, cdf_threshold",
    [(0.5, None), (0.9375, None), (0.75, None), (None, 0.6), (0.5, 0.9), (0.875, 0.3)],
)
def test_selection_matches_brute_force(sparsity, cdf_threshold):
    params = BSAParams(sparsity=sparsity, cdf_threshold=cdf_threshold)
    generator = torch.Generator().manual_seed(1)
    q_pool = 3 * torch.randn(2, 3, 5, 16, generator=generator)
    k_pool = torch.randn(2, 3, 12, 16, generator=generator)
    selection = select_from_pooled(q_pool, k_pool, params)
    assert selection.order.dtype == selection.counts.dtype == torch.int32
    assert torch.equal(selection.mask(), brute_force_selection(q_pool, k_pool, params))
    if cdf_threshold is None:
        assert (selection.counts == params.num_top_k(12)).all()


def test_ties_keep_the_lower_key_chunk_index():
    q_pool = torch.zeros(1, 1, 3, 8)  # every score 0
    selection = select_from_pooled(q_pool, torch.randn(1, 1, 16, 8), BSAParams(sparsity=0.75))
    assert torch.equal(selection.order[0, 0], torch.arange(16, dtype=torch.int32).expand(3, 16))
    assert torch.equal(selection.mask()[0, 0].nonzero()[:, 1], torch.tensor([0, 1, 2, 3] * 3))


@pytest.mark.parametrize("threshold, count", [(0.45, 1), (0.79, 2), (0.81, 3), (1.0, 3)])
def test_cdf_keeps_the_smallest_set_reaching_the_threshold(threshold, count):
    # head_dim 1 -> scale 1, so softmax(scores) == weights.
    weights = torch.tensor([0.3, 0.5, 0.2])
    selection = select_from_pooled(
        torch.ones(1, 1, 1, 1), weights.log().view(1, 1, 3, 1), BSAParams(sparsity=None, cdf_threshold=threshold)
    )
    assert selection.counts.item() == count
    assert selection.order[0, 0, 0, :count].tolist() == [1, 0, 2][:count]


# ---------------------------------------------------------------------------- kernel
PARAMS = {
    "top-k 1/2": dict(sparsity=0.5),
    "top-k floor of 1": dict(sparsity=0.9375),
    "cdf over top-k": dict(sparsity=0.75, cdf_threshold=0.5),
    "cdf only": dict(sparsity=None, cdf_threshold=0.9),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_flex_attention_matches_dense_masked_reference(shape):
    grid_q, grid_k = SHAPES[shape]
    q, k, v = random_qkv(grid_q, grid_k)
    dense = F.scaled_dot_product_attention(q, k, v)
    for name, params in PARAMS.items():
        out = block_sparse_attention(q, k, v, grid_q=grid_q, grid_k=grid_k, params=params)
        expected = block_sparse_attention_reference(q, k, v, grid_q=grid_q, grid_k=grid_k, params=params)
        assert_close(out, expected, atol=2e-5, rtol=1e-5)
        assert (out - dense).abs().max() > 1e-2, f"{name}: the selection should change the result"
    counts = select_key_chunks(q, k, grid_q=grid_q, grid_k=grid_k, params=PARAMS["cdf only"]).counts
    assert counts.min() < counts.max(), "cdf selection should vary per query chunk on these inputs"


def test_sparsity_zero_is_exact_dense_sdpa():
    q, k, v = random_qkv(HALF, FULL)
    dense = F.scaled_dot_product_attention(q, k, v)
    for params in (dict(sparsity=0.0), dict(sparsity=0.0, cdf_threshold=0.5)):
        assert torch.equal(block_sparse_attention(q, k, v, grid_q=HALF, grid_k=FULL, params=params), dense)
        reference = block_sparse_attention_reference(q, k, v, grid_q=HALF, grid_k=FULL, params=params)
        assert_close(reference, dense, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- eligibility and dispatch
def test_eligibility():
    default = {"sparsity": 0.9375}
    assert bsa_eligible((24, 44, 80), (24, 44, 80), default)  # 704x1280x93
    assert bsa_eligible((20, 44, 80), (24, 44, 80), default)  # i2v with 4 condition frames
    assert not bsa_eligible((23, 44, 80), (24, 44, 80), default)  # i2v with 1 condition frame
    assert not bsa_eligible((24, 30, 52), (24, 30, 52), default)  # 480x832: 30 and 52 not multiples of 4
    assert not bsa_eligible((1, 44, 80), (1, 44, 80), {"chunk_3d_shape": [1, 4, 4]})  # a single frame
    assert bsa_eligible((2, 44, 80), (2, 44, 80), {"chunk_3d_shape": [1, 4, 4]})


def test_backend_choice_and_fallback():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    auto = AttentionSettings("auto", {"sparsity": 0.9375})
    assert resolve_backend(auto, cuda, (24, 44, 80), (24, 44, 80)) == "bsa"
    assert resolve_backend(auto, cuda, (23, 44, 80), (24, 44, 80)) == "sdpa"  # ineligible -> dense
    assert resolve_backend(auto, cpu, (24, 44, 80), (24, 44, 80)) == "sdpa"  # auto is BSA on CUDA only
    assert resolve_backend(AttentionSettings("auto"), cuda, (24, 44, 80), (24, 44, 80)) == "sdpa"  # no params

    forced = AttentionSettings("bsa")  # no params: the defaults
    assert resolve_backend(forced, cpu, (8, 8, 8), (8, 8, 8)) == "bsa"
    with pytest.raises(ValueError, match=r"q=\(23, 44, 80\).*divisible by the chunk shape"):
        resolve_backend(forced, cuda, (23, 44, 80), (24, 44, 80))
    with pytest.raises(ValueError, match="divisible"):
        block_sparse_attention(*random_qkv(HALF, HALF), grid_q=HALF, grid_k=HALF, params={"chunk_3d_shape": [3, 4, 4]})


# ---------------------------------------------------------------------------- through the DiT
@pytest.fixture(scope="module")
def tiny_dit():
    return build_tiny_transformer().eval()


def dit_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(BATCH, 16, 8, 16, 16, generator=generator),  # patch grid (8, 8, 8)
        timestep=torch.tensor([700.0, 300.0]),
        encoder_hidden_states=torch.randn(BATCH, 7, 64, generator=generator),
        encoder_attention_mask=torch.ones(BATCH, 7, dtype=torch.long),
    )


@pytest.mark.parametrize("num_cond_latents", [0, 4])
def test_dit_with_bsa_forced_matches_reference_and_honours_i2v_split(tiny_dit, monkeypatch, num_cond_latents):
    backends = attention_module.SELF_ATTENTION_BACKENDS
    kernel = backends["bsa"]
    calls = []

    def recording(q, k, v, *, grid_q, grid_k, settings):
        calls.append((grid_q, grid_k))
        return kernel(q, k, v, grid_q=grid_q, grid_k=grid_k, settings=settings)

    def reference(q, k, v, *, grid_q, grid_k, settings):
        return block_sparse_attention_reference(q, k, v, grid_q=grid_q, grid_k=grid_k, params=settings.bsa_params)

    inputs = dit_inputs()
    tiny_dit.set_attention_implementation("bsa", {"sparsity": 0.5})
    try:
        with torch.no_grad():
            monkeypatch.setitem(backends, "bsa", recording)
            out = tiny_dit(**inputs, num_cond_latents=num_cond_latents)
            monkeypatch.setitem(backends, "bsa", reference)
            expected = tiny_dit(**inputs, num_cond_latents=num_cond_latents)
            monkeypatch.setitem(backends, "bsa", kernel)
            perturbed = dict(inputs, hidden_states=inputs["hidden_states"].clone())
            perturbed["hidden_states"][:, :, num_cond_latents:] += 1.0
            out_perturbed = tiny_dit(**perturbed, num_cond_latents=num_cond_latents)
            tiny_dit.set_attention_implementation("sdpa")
            dense = tiny_dit(**inputs, num_cond_latents=num_cond_latents)
    finally:
        tiny_dit.set_attention_implementation("auto", {})
        tiny_dit.attention_settings.bsa_params = None

    per_block = [(HALF, HALF), (HALF, FULL)] if num_cond_latents else [(FULL, FULL)]
    assert calls == per_block * len(tiny_dit.blocks)
    assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - dense).abs().max() > 1e-3
    if num_cond_latents:  # condition frames see only condition frames, in every block
        assert torch.equal(out[:, :, :num_cond_latents], out_perturbed[:, :, :num_cond_latents])
        assert not torch.allclose(out[:, :, num_cond_latents:], out_perturbed[:, :, num_cond_latents:])


def test_compiled_blocks_trace_bsa_without_graph_breaks_and_match_reference(monkeypatch):
    """Training and sampling compile each block; BSA must trace into that graph. A graph
    break inside a checkpointed compiled block runs the whole block eagerly (the 720p BSA
    step was 2x slower than it should have been). No grad: FlexAttention has no CPU backward."""
    import torch._dynamo

    dit = build_tiny_transformer().eval()
    dit.set_attention_implementation("bsa", {"sparsity": 0.5})
    inputs = dit_inputs()
    backends = attention_module.SELF_ATTENTION_BACKENDS

    def reference(q, k, v, *, grid_q, grid_k, settings):
        return block_sparse_attention_reference(q, k, v, grid_q=grid_q, grid_k=grid_k, params=settings.bsa_params)

    with torch.no_grad():
        monkeypatch.setitem(backends, "bsa", reference)
        expected = dit(**inputs)
        monkeypatch.setitem(backends, "bsa", attention_module.SELF_ATTENTION_BACKENDS["bsa"])
        monkeypatch.undo()
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        dit.compile_blocks()
        out = dit(**inputs)
    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    torch._dynamo.reset()
    assert breaks == {}, breaks
    assert_close(out, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- configuration
def test_merge_bsa_params():
    released = {
        "enable_bsa": False,
        "bsa_params": {"sparsity": 0.9375, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]},
    }
    assert merge_bsa_params(released) is None  # disabled in the checkpoint, no frametuner key
    assert merge_bsa_params(dict(released, enable_bsa=True)) == {
        "sparsity": 0.9375, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]
    }
    assert merge_bsa_params(released, cdf_threshold=0.8) == {
        "sparsity": 0.9375, "cdf_threshold": 0.8, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]
    }
    assert merge_bsa_params(None, sparsity=0.5, chunk_3d_shape=[2, 4, 4]) == {
        "sparsity": 0.5, "cdf_threshold": None, "chunk_3d_shape_q": [2, 4, 4], "chunk_3d_shape_k": [2, 4, 4]
    }
    with pytest.raises(ValueError, match="bsa_chunk_3d_shape"):
        merge_bsa_params(None, chunk_3d_shape=[4, 4])


def test_configure_attention_from_train_config(tiny_dit):
    try:
        LongCatVideoSpec().configure_attention(tiny_dit, TrainConfig(bsa_sparsity=0.875, attention_implementation="bsa"))
        settings = tiny_dit.attention_settings
        assert all(block.attn.settings is settings for block in tiny_dit.blocks)
        assert settings.implementation == "bsa"
        assert settings.bsa_params == {
            "sparsity": 0.875, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]
        }
        settings = configure_attention(tiny_dit, TrainConfig())
        assert (settings.implementation, settings.bsa_params) == ("auto", None)
    finally:
        tiny_dit.set_attention_implementation("auto")
        tiny_dit.attention_settings.bsa_params = None


@pytest.mark.parametrize("params", [BSAParams(sparsity=0.75), BSAParams(sparsity=0.5, cdf_threshold=0.9)])
def test_transposed_selection_equals_flex_attentions_own(params):
    """Our O(kept) transposition against ``BlockMask.from_kv_blocks`` (dense argsort) on the same selection."""
    generator = torch.Generator().manual_seed(2)
    selection = select_from_pooled(
        3 * torch.randn(2, 3, 6, 8, generator=generator), torch.randn(2, 3, 10, 8, generator=generator), params
    )
    q_num_blocks, q_indices = selection.query_chunks_per_key_chunk()
    theirs = BlockMask.from_kv_blocks(selection.counts, selection.order, BLOCK_SIZE=(64, 64), seq_lengths=(6 * 64, 10 * 64))
    assert torch.equal(q_num_blocks, theirs.q_num_blocks)
    assert q_num_blocks.sum() == selection.counts.sum()
    used = torch.arange(6) < q_num_blocks[..., None]
    assert torch.equal(q_indices[used], theirs.q_indices[used])
    assert (q_indices[~used] == 0).all()


def test_compiled_regrouping_used_on_cuda_equals_eager():
    from frametuner.models.longcat_video.bsa import _regroupers

    grid, chunk = (4, 8, 8), (4, 4, 4)
    x = torch.randn(1, 2, math.prod(grid), 16)
    regroup, ungroup = _regroupers(cuda=True)  # the compiled pair; device-agnostic
    chunked = regroup(x, grid, chunk)
    assert torch.equal(chunked, to_chunk_order(x, grid, chunk))
    assert torch.equal(ungroup(chunked, grid, chunk), x)
