"""Block-sparse attention (BSA) for the LongCat-Video DiT, on torch FlexAttention.

Semantics (those of upstream's ``flash_attn_bsa_3d``):
tokens of a ``T x H x W`` patch grid are regrouped into 3D chunks of ``chunk_3d_shape``
(default 4x4x4 = 64 tokens); per head, q and k are mean-pooled per chunk; the chunk
score matrix is ``q_pool @ k_pool^T``; every query chunk keeps the
``int((1 - sparsity) * num_key_chunks)`` best key chunks (and/or the smallest set whose
``softmax(score * head_dim**-0.5)`` mass reaches ``cdf_threshold``); exact softmax
attention then runs over the tokens of the kept key chunks only.

Deliberate choices, each where upstream leaves something undefined:

* Selection is computed in float32 (upstream pools and scores in bf16, where many
  scores tie and the kept set depends on rounding).
* Ties are broken towards the lower key-chunk index (stable descending sort), so the
  selection is the same on every device and in every recomputation.
* At least one key chunk is kept: with fewer than ``1 / (1 - sparsity)`` key chunks
  upstream would keep none and return garbage.
* ``cdf_threshold`` keeps the *smallest* set whose mass reaches the threshold (upstream's
  ``searchsorted(right=True)`` keeps one chunk fewer, whose mass stays below it).
* ``sparsity == 0`` keeps every chunk, so it runs dense SDPA (exactly dense attention).

The kernel is ``flex_attention`` with a ``BlockMask`` built per call from the selected
chunk indices (the tensors of ``BlockMask.from_kv_blocks``, block-level only, never an
N x N mask). After regrouping, chunk ``i`` is the contiguous token range
``[i*V, (i+1)*V)``, so FlexAttention's sparse block size is the chunk volume. Selection
runs without host syncs; dynamo compiles FlexAttention once per shape (``dynamic=False``).

Importing this module registers the ``bsa`` self-attention backend.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention, noop_mask

from .attention import AttentionSettings, register_self_attention_backend

Grid = tuple[int, int, int]

DEFAULT_SPARSITY = 0.9375
DEFAULT_CHUNK_3D_SHAPE: Grid = (4, 4, 4)


# ---------------------------------------------------------------------------- parameters
def _chunk_shape(value: Any, key: str) -> Grid:
    shape = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise ValueError(f"bsa_params {key}={value!r} must be three positive integers [t, h, w], e.g. [4, 4, 4]")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class BSAParams:
    """Validated block-sparse settings; ``from_dict`` reads upstream's ``bsa_params`` layout."""

    sparsity: float | None = DEFAULT_SPARSITY
    cdf_threshold: float | None = None
    chunk_3d_shape_q: Grid = DEFAULT_CHUNK_3D_SHAPE
    chunk_3d_shape_k: Grid = DEFAULT_CHUNK_3D_SHAPE

    def __post_init__(self) -> None:
        if self.sparsity is None and self.cdf_threshold is None:
            raise ValueError("bsa_params need a sparsity, a cdf_threshold or both (sparsity 0.9375 keeps 1/16)")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"bsa_params sparsity={self.sparsity} must be in [0, 1) (0.9375 keeps 1/16 of key chunks)")
        if self.cdf_threshold is not None and not 0.0 < self.cdf_threshold <= 1.0:
            raise ValueError(f"bsa_params cdf_threshold={self.cdf_threshold} must be in (0, 1]")
        object.__setattr__(self, "chunk_3d_shape_q", _chunk_shape(self.chunk_3d_shape_q, "chunk_3d_shape_q"))
        object.__setattr__(self, "chunk_3d_shape_k", _chunk_shape(self.chunk_3d_shape_k, "chunk_3d_shape_k"))

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> "BSAParams":
        """Upstream keys (``sparsity``, ``cdf_threshold``, ``chunk_3d_shape_q/k``) plus ``chunk_3d_shape`` for both."""
        if params is None:
            return cls()
        if isinstance(params, BSAParams):
            return params
        known = {"sparsity", "cdf_threshold", "chunk_3d_shape_q", "chunk_3d_shape_k", "chunk_3d_shape"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"bsa_params has unknown keys {unknown}; known: {sorted(known)}")
        fields: dict[str, Any] = {}
        if "sparsity" in params:
            fields["sparsity"] = None if params["sparsity"] is None else float(params["sparsity"])
        if params.get("cdf_threshold") is not None:
            fields["cdf_threshold"] = float(params["cdf_threshold"])
        both = params.get("chunk_3d_shape")
        for side in ("q", "k"):
            value = params.get(f"chunk_3d_shape_{side}", both)
            if value is not None:
                fields[f"chunk_3d_shape_{side}"] = value
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """Upstream's ``bsa_params`` layout (what ``dit/config.json`` holds)."""
        return {
            "sparsity": self.sparsity,
            "cdf_threshold": self.cdf_threshold,
            "chunk_3d_shape_q": list(self.chunk_3d_shape_q),
            "chunk_3d_shape_k": list(self.chunk_3d_shape_k),
        }

    def num_top_k(self, num_key_chunks: int) -> int:
        """Key chunks every query chunk keeps at least (the top-k count, never below 1)."""
        if self.sparsity is None:
            return 1
        return max(1, min(num_key_chunks, int((1.0 - self.sparsity) * num_key_chunks)))


def _params(bsa_params: BSAParams | Mapping[str, Any] | None) -> BSAParams:
    return BSAParams.from_dict(bsa_params)


# ---------------------------------------------------------------------------- eligibility
def _grid_fits(grid: Grid, chunk: Grid) -> bool:
    return grid[0] > 1 and all(size % part == 0 for size, part in zip(grid, chunk))


def bsa_eligible(grid_q: Grid, grid_k: Grid, bsa_params: BSAParams | Mapping[str, Any] | None) -> bool:
    """True where BSA applies: both grids divisible by their chunk shape and T > 1."""
    params = _params(bsa_params)
    return _grid_fits(tuple(grid_q), params.chunk_3d_shape_q) and _grid_fits(tuple(grid_k), params.chunk_3d_shape_k)


def require_bsa_eligible(grid_q: Grid, grid_k: Grid, bsa_params: BSAParams | Mapping[str, Any] | None) -> None:
    """Raise a clear error where BSA cannot run (a forced ``bsa`` on such a shape)."""
    params = _params(bsa_params)
    if not bsa_eligible(grid_q, grid_k, params):
        raise ValueError(
            f"block-sparse attention cannot run on patch grid q={tuple(grid_q)} k={tuple(grid_k)}: T, H and W must be "
            f"divisible by the chunk shape q={params.chunk_3d_shape_q} k={params.chunk_3d_shape_k} and T > 1. "
            "Use attention_implementation 'auto' (dense SDPA on such shapes), or sizes on the 64-px bucket grid "
            "with a latent frame count divisible by the chunk's t (e.g. 93 frames -> 24 latent frames)"
        )


# ---------------------------------------------------------------------------- regrouping
def _chunk_counts(grid: Grid, chunk: Grid) -> Grid:
    return (grid[0] // chunk[0], grid[1] // chunk[1], grid[2] // chunk[2])


def to_chunk_order(x: torch.Tensor, grid: Grid, chunk: Grid) -> torch.Tensor:
    """``[B, heads, T*H*W, D]`` in (t, h, w) order -> chunks contiguous, chunks in (t, h, w) order.

    Token ``j`` of chunk ``i`` lands at ``i * volume + j``, ``j`` in (t, h, w) order inside the chunk.
    """
    batch, heads, tokens, dim = x.shape
    (nt, nh, nw), (ct, ch, cw) = _chunk_counts(grid, chunk), chunk
    x = x.reshape(batch, heads, nt, ct, nh, ch, nw, cw, dim).permute(0, 1, 2, 4, 6, 3, 5, 7, 8)
    return x.reshape(batch, heads, tokens, dim)


def from_chunk_order(x: torch.Tensor, grid: Grid, chunk: Grid) -> torch.Tensor:
    """Inverse of :func:`to_chunk_order`."""
    batch, heads, tokens, dim = x.shape
    (nt, nh, nw), (ct, ch, cw) = _chunk_counts(grid, chunk), chunk
    x = x.reshape(batch, heads, nt, nh, nw, ct, ch, cw, dim).permute(0, 1, 2, 5, 3, 6, 4, 7, 8)
    return x.reshape(batch, heads, tokens, dim)


def _chunk_permutation(grid: Grid, chunk: Grid, device: torch.device, *, inverse: bool) -> torch.Tensor:
    """Token indices that put a ``[.., T*H*W, ..]`` tensor in chunk order (``inverse``: back)."""
    tokens = torch.arange(math.prod(grid), device=device).view(1, 1, -1, 1)
    return (from_chunk_order if inverse else to_chunk_order)(tokens, grid, chunk).flatten()


def _gather_to_chunks(x: torch.Tensor, grid: Grid, chunk: Grid) -> torch.Tensor:
    """:func:`to_chunk_order` as one gather, for compiled graphs: inductor's FlexAttention
    lowering takes only 4-d buffers, and a reshaped 9-d permute reaches it as a view."""
    return x.index_select(2, _chunk_permutation(grid, chunk, x.device, inverse=False))


def _gather_from_chunks(x: torch.Tensor, grid: Grid, chunk: Grid) -> torch.Tensor:
    """:func:`from_chunk_order` as one gather (see :func:`_gather_to_chunks`)."""
    return x.index_select(2, _chunk_permutation(grid, chunk, x.device, inverse=True))


def token_chunk_index(grid: Grid, chunk: Grid, device: torch.device | str | None = None) -> torch.Tensor:
    """Chunk number of every token in (t, h, w) order: ``[T*H*W]`` int64 (the tests' oracle map)."""
    nt, nh, nw = _chunk_counts(grid, chunk)
    t = torch.arange(grid[0], device=device) // chunk[0]
    h = torch.arange(grid[1], device=device) // chunk[1]
    w = torch.arange(grid[2], device=device) // chunk[2]
    return ((t[:, None, None] * nh + h[None, :, None]) * nw + w[None, None, :]).flatten()


def pool_chunks(x: torch.Tensor, grid: Grid, chunk: Grid) -> torch.Tensor:
    """Per-chunk mean of (t, h, w)-ordered tokens, in float32: ``[B, heads, S, D] -> [B, heads, chunks, D]``.

    Reads the token order directly (no regrouped copy); ``mean(dtype=)`` accumulates in
    float32 without a float32 copy of the input.
    """
    batch, heads, _, dim = x.shape
    (nt, nh, nw), (ct, ch, cw) = _chunk_counts(grid, chunk), chunk
    x = x.reshape(batch, heads, nt, ct, nh, ch, nw, cw, dim)
    return x.mean(dim=(3, 5, 7), dtype=torch.float32).reshape(batch, heads, nt * nh * nw, dim)


# ---------------------------------------------------------------------------- selection
class ChunkSelection(NamedTuple):
    """Kept key chunks per (batch, head, query chunk).

    ``order [B, heads, Mq, Nk]`` (int32) lists all key chunks best first; the first
    ``counts [B, heads, Mq]`` (int32) of each row are kept, never more than the static
    ``max_count`` (the top-k count without ``cdf_threshold``). This is FlexAttention's
    ``kv_indices`` / ``kv_num_blocks`` layout.
    """

    order: torch.Tensor
    counts: torch.Tensor
    max_count: int

    def mask(self) -> torch.Tensor:
        """``[B, heads, Mq, Nk]`` bool, True where the key chunk is kept (dense; for references and tests)."""
        rank = torch.arange(self.order.shape[-1], device=self.order.device)
        kept = rank < self.counts[..., None]
        return torch.zeros(self.order.shape, dtype=torch.bool, device=self.order.device).scatter_(
            -1, self.order.long(), kept
        )

    def query_chunks_per_key_chunk(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The transposed selection, FlexAttention's ``q_num_blocks [B, h, Nk]`` / ``q_indices [B, h, Nk, Mq]``.

        The backward pass walks it (which query chunks read key chunk n). Built from the
        kept pairs only: a stable sort of their key-chunk ids groups them by key chunk
        with query chunks ascending, the order ``BlockMask.from_kv_blocks`` produces,
        without its dense ``[Mq, Nk]`` argsort (6 ms vs about 1 ms at 720p on an H100).
        Entries past ``q_num_blocks`` are 0.
        """
        batch, heads, num_q, num_k = self.order.shape
        width = self.max_count
        device = self.order.device
        kept = torch.arange(width, device=device) < self.counts[..., None]  # [B, h, Mq, W]
        key_chunk = torch.where(kept, self.order[..., :width].long(), num_k).flatten(-2)  # dropped pairs -> num_k
        query_chunk = torch.arange(num_q, device=device).repeat_interleave(width)
        key_sorted, permutation = torch.sort(key_chunk, dim=-1, stable=True)
        q_num_blocks = torch.zeros(batch, heads, num_k + 1, dtype=torch.long, device=device)
        q_num_blocks.scatter_add_(-1, key_chunk, torch.ones_like(key_chunk))
        starts = q_num_blocks.cumsum(-1) - q_num_blocks  # first slot of each key chunk in key_sorted
        rank = torch.arange(key_sorted.shape[-1], device=device) - starts.gather(-1, key_sorted)
        dump = num_k * num_q  # one slot past the table takes every dropped pair
        target = torch.where(key_sorted < num_k, key_sorted * num_q + rank, dump)
        q_indices = torch.zeros(batch, heads, dump + 1, dtype=torch.int32, device=device)
        q_indices.scatter_(-1, target, query_chunk[permutation].to(torch.int32))
        return q_num_blocks[..., :num_k].to(torch.int32), q_indices[..., :dump].view(batch, heads, num_k, num_q)


@torch.no_grad()
def select_from_pooled(q_pool: torch.Tensor, k_pool: torch.Tensor, params: BSAParams) -> ChunkSelection:
    """Choose key chunks from pooled ``[B, heads, M, D]`` q and k; no host syncs."""
    scores = q_pool.float() @ k_pool.float().transpose(-1, -2)  # [B, heads, Mq, Nk]
    num_key_chunks = scores.shape[-1]
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    top_k = params.num_top_k(num_key_chunks)
    if params.cdf_threshold is None:
        counts = torch.full(scores.shape[:-1], top_k, dtype=torch.int32, device=scores.device)
        return ChunkSelection(order.to(torch.int32), counts, top_k)
    scale = q_pool.shape[-1] ** -0.5
    mass = torch.softmax(sorted_scores * scale, dim=-1).cumsum(dim=-1)
    # The smallest prefix whose mass reaches the threshold: all entries still below it, plus one.
    reach = (mass < params.cdf_threshold).sum(dim=-1) + 1
    counts = reach.clamp(min=top_k, max=num_key_chunks).to(torch.int32)
    return ChunkSelection(order.to(torch.int32), counts, num_key_chunks)


def selection_block_mask(selection: ChunkSelection, *, seq_lengths: tuple[int, int], block_size: tuple[int, int]) -> BlockMask:
    """The FlexAttention ``BlockMask`` of a selection over chunk-ordered tokens (block = chunk)."""
    q_num_blocks, q_indices = selection.query_chunks_per_key_chunk()
    return BlockMask(
        seq_lengths=seq_lengths,
        kv_num_blocks=selection.counts,
        kv_indices=selection.order,
        full_kv_num_blocks=None,
        full_kv_indices=None,
        q_num_blocks=q_num_blocks,
        q_indices=q_indices,
        full_q_num_blocks=None,
        full_q_indices=None,
        BLOCK_SIZE=block_size,
        mask_mod=noop_mask,
    )


@torch.no_grad()
def select_key_chunks(
    q: torch.Tensor, k: torch.Tensor, *, grid_q: Grid, grid_k: Grid, params: BSAParams | Mapping[str, Any] | None
) -> ChunkSelection:
    """Key chunks kept for every query chunk, from q/k in (t, h, w) token order."""
    params = _params(params)
    require_bsa_eligible(grid_q, grid_k, params)
    q_pool = pool_chunks(q, grid_q, params.chunk_3d_shape_q)
    k_pool = pool_chunks(k, grid_k, params.chunk_3d_shape_k)
    return select_from_pooled(q_pool, k_pool, params)


# ---------------------------------------------------------------------------- reference
def token_mask(
    chunk_mask: torch.Tensor, *, grid_q: Grid, grid_k: Grid, params: BSAParams | Mapping[str, Any] | None
) -> torch.Tensor:
    """Expand a ``[..., Mq, Nk]`` chunk mask to the ``[..., Sq, Sk]`` token mask in (t, h, w) order."""
    params = _params(params)
    rows = token_chunk_index(grid_q, params.chunk_3d_shape_q, chunk_mask.device)
    cols = token_chunk_index(grid_k, params.chunk_3d_shape_k, chunk_mask.device)
    return chunk_mask[..., rows, :][..., cols]


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid_q: Grid,
    grid_k: Grid,
    params: BSAParams | Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Dense masked SDPA with the BSA selection: the oracle (materialises ``[B, heads, Sq, Sk]``)."""
    params = _params(params)
    selection = select_key_chunks(q, k, grid_q=grid_q, grid_k=grid_k, params=params)
    mask = token_mask(selection.mask(), grid_q=grid_q, grid_k=grid_k, params=params)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---------------------------------------------------------------------------- FlexAttention
_COMPILED_FLEX: Callable[..., torch.Tensor] | None = None
_COMPILED_REGROUP: tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] | None = None
# Each distinct shape compiles once; video buckets x (t2v, i2v cond, i2v noise) exceed dynamo's default of 8.
_RECOMPILE_LIMIT = 256
_CHOICES: dict[tuple, Any] = {}


def _tile(chunk_volume: int) -> int:
    """Largest power-of-two Triton tile (<= 64) dividing the chunk volume; FlexAttention needs it to divide."""
    tile = math.gcd(chunk_volume, 64)
    if tile < 16:
        raise ValueError(
            f"block-sparse attention on CUDA needs chunk volumes that are multiples of 16; got {chunk_volume} "
            "(set bsa_chunk_3d_shape to e.g. [4, 4, 4])"
        )
    return tile


def _cuda_kernel_options(volume_q: int, volume_k: int) -> dict[str, Any]:
    """Triton tiles that divide the chunk blocks (stock H100 defaults use 128 and fail on 64-token chunks).

    Forward 64x64, backward M1=32/N1=64/M2=64/N2=32 (3 stages, 4 warps): the best of
    inductor's autotuning on an H100 for the 720p layer, fixed here so no shape pays
    for autotuning again.
    """
    tile_q, tile_k = _tile(volume_q), _tile(volume_k)
    return {
        "fwd_BLOCK_M": tile_q,
        "fwd_BLOCK_N": tile_k,
        "fwd_num_stages": 3,
        "fwd_num_warps": 4,
        "bwd_BLOCK_M1": min(32, tile_q, tile_k),
        "bwd_BLOCK_N1": tile_k,
        "bwd_BLOCK_M2": tile_q,
        "bwd_BLOCK_N2": min(32, tile_q, tile_k),
        "bwd_num_stages": 3,
        "bwd_num_warps": 4,
    }


def _choices_for(kernel_options: Mapping[str, Any]):
    """An inductor choices handler that offers exactly our tiles.

    Inductor filters its stock configs by "tile divides the sparse block" before it
    applies ``kernel_options``; on an H100 the only stock backward config has 128-wide
    tiles, so 64-token chunks would leave no choice at all (NoValidChoicesError). The
    handler is installed only around our own calls (see :func:`_compile_context`).
    """
    key = tuple(sorted(kernel_options.items()))
    handler = _CHOICES.get(key)
    if handler is None:
        from torch._inductor.choices import InductorChoices
        from torch._inductor.template_heuristics.triton import FlexBwDConfig, FlexConfig

        o = kernel_options
        fwd = FlexConfig(o["fwd_BLOCK_M"], o["fwd_BLOCK_N"], o["fwd_num_stages"], o["fwd_num_warps"])
        bwd = FlexBwDConfig(
            o["bwd_BLOCK_M1"], o["bwd_BLOCK_N1"], o["bwd_BLOCK_M2"], o["bwd_BLOCK_N2"], o["bwd_num_stages"], o["bwd_num_warps"]
        )

        class BlockSparseChoices(InductorChoices):
            def get_flex_attention_fwd_configs(self, head_dim, dtype, device_type="cuda"):
                return [fwd]

            def get_flex_attention_bwd_configs(self, head_dim, dtype, device_type="cuda"):
                return [bwd]

        handler = _CHOICES[key] = BlockSparseChoices()
    return handler


def _compile_context(kernel_options: Mapping[str, Any] | None):
    """Around each call: our tiles for inductor (CUDA), the backward lowered with the forward, a larger recompile limit."""
    stack = contextlib.ExitStack()
    limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
    stack.enter_context(torch._dynamo.config.patch(recompile_limit=limit))
    if kernel_options is not None:
        from torch._functorch import config as functorch_config
        from torch._inductor.virtualized import V

        stack.enter_context(V.set_choices_handler(_choices_for(kernel_options)))
        if hasattr(functorch_config, "force_non_lazy_backward_lowering"):
            # The lazy backward would be lowered on autograd's worker thread, outside the handler.
            stack.enter_context(functorch_config.patch(force_non_lazy_backward_lowering=True))
    return stack


def _compiled_flex() -> Callable[..., torch.Tensor]:
    """One ``torch.compile(flex_attention)``; dynamo keeps one graph per shape behind it (``dynamic=False``)."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    return _COMPILED_FLEX


def _regroupers(cuda: bool) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """``to_chunk_order`` / ``from_chunk_order``, compiled on CUDA: inductor's copy kernels run at
    memory bandwidth (0.47 vs 1.16 ms per tensor at 720p on an H100, eager 9-d permutes)."""
    global _COMPILED_REGROUP
    if not cuda:
        return to_chunk_order, from_chunk_order
    if _COMPILED_REGROUP is None:
        _COMPILED_REGROUP = (
            torch.compile(to_chunk_order, dynamic=False, fullgraph=True),
            torch.compile(from_chunk_order, dynamic=False, fullgraph=True),
        )
    return _COMPILED_REGROUP


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid_q: Grid,
    grid_k: Grid,
    params: BSAParams | Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """BSA on ``[B, heads, S, D]`` q/k/v in (t, h, w) token order; returns the same layout."""
    params = _params(params)
    require_bsa_eligible(grid_q, grid_k, params)
    chunk_q, chunk_k = params.chunk_3d_shape_q, params.chunk_3d_shape_k
    volume_q, volume_k = math.prod(chunk_q), math.prod(chunk_k)
    num_key_chunks = k.shape[2] // volume_k
    if params.num_top_k(num_key_chunks) == num_key_chunks:  # sparsity 0: every chunk kept
        return F.scaled_dot_product_attention(q, k, v)

    selection = select_key_chunks(q, k, grid_q=grid_q, grid_k=grid_k, params=params)
    block_mask = selection_block_mask(selection, seq_lengths=(q.shape[2], k.shape[2]), block_size=(volume_q, volume_k))
    kernel_options = _cuda_kernel_options(volume_q, volume_k) if q.is_cuda else None
    if torch.compiler.is_compiling():
        # Inside a compiled block (the trainer's and sampler's default on CUDA): FlexAttention
        # is traced into the block's graph. The context of the eager path would break that
        # graph in seven places (config patches are not traceable), and a broken graph under
        # checkpointing splits the block: the 720p step took 27.8 s instead of 17. The block's
        # caller enters the same context around the compilation (:func:`block_compile_context`).
        flex, regroup, ungroup, context = flex_attention, _gather_to_chunks, _gather_from_chunks, contextlib.nullcontext()
    else:
        # Grad mode is part of dynamo's guards: without inputs that need grad, run (and compile) the inference graph.
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        flex, (regroup, ungroup) = _compiled_flex(), _regroupers(q.is_cuda)
        context = contextlib.ExitStack()
        context.enter_context(_compile_context(kernel_options))
        context.enter_context(torch.set_grad_enabled(needs_grad))
    with context:
        out = flex(
            regroup(q, tuple(grid_q), chunk_q),
            regroup(k, tuple(grid_k), chunk_k),
            regroup(v, tuple(grid_k), chunk_k),
            block_mask=block_mask,
            scale=q.shape[-1] ** -0.5,
            kernel_options=kernel_options,
        )
        return ungroup(out, tuple(grid_q), chunk_q)


def block_compile_context(bsa_params: BSAParams | Mapping[str, Any]):
    """The context that CUDA blocks which may run BSA are called (and so compiled) in: our
    Triton tiles for FlexAttention and the backward lowered with the forward (see
    :func:`_compile_context`). ``attention.block_compile_context`` decides when it applies."""
    params = _params(bsa_params)
    return _compile_context(_cuda_kernel_options(math.prod(params.chunk_3d_shape_q), math.prod(params.chunk_3d_shape_k)))


def bsa_self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid_q: Grid,
    grid_k: Grid,
    settings: AttentionSettings,
) -> torch.Tensor:
    """The ``bsa`` entry of ``SELF_ATTENTION_BACKENDS`` (defaults when the model has no ``bsa_params``)."""
    return block_sparse_attention(q, k, v, grid_q=grid_q, grid_k=grid_k, params=settings.bsa_params)


register_self_attention_backend("bsa", bsa_self_attention)


# ---------------------------------------------------------------------------- configuration
def merge_bsa_params(
    dit_config: Mapping[str, Any] | None,
    *,
    sparsity: float | None = None,
    chunk_3d_shape: list[int] | tuple[int, int, int] | None = None,
    cdf_threshold: float | None = None,
) -> dict[str, Any] | None:
    """The BSA parameters a run uses, in upstream's ``bsa_params`` layout, or None (no BSA).

    Each frametuner key that is set (``bsa_sparsity``, ``bsa_chunk_3d_shape`` for both q
    and k, ``bsa_cdf_threshold``) overrides one field and turns BSA on; fields left unset
    come from the checkpoint's ``bsa_params`` (even where its ``enable_bsa`` is false: they
    describe the chunking the model was tuned with), then the defaults. With no key set,
    BSA is on only where the checkpoint says ``enable_bsa: true``.
    """
    dit_config = dit_config or {}
    checkpoint = dit_config.get("bsa_params") or None
    overrides: dict[str, Any] = {}
    if sparsity is not None:
        overrides["sparsity"] = float(sparsity)
    if cdf_threshold is not None:
        overrides["cdf_threshold"] = float(cdf_threshold)
    if chunk_3d_shape is not None:
        shape = _chunk_shape(chunk_3d_shape, "bsa_chunk_3d_shape")
        overrides["chunk_3d_shape_q"] = overrides["chunk_3d_shape_k"] = shape
    if not overrides and not (dit_config.get("enable_bsa") and checkpoint):
        return None
    return replace(BSAParams.from_dict(checkpoint), **overrides).to_dict()


def configure_attention(model: Any, config: Any) -> AttentionSettings:
    """Apply a TrainConfig's ``attention_implementation`` and ``bsa_*`` keys to a loaded DiT.

    The trainer and the sampler call this once after loading; the DiT's blocks share
    the returned settings.
    """
    params = merge_bsa_params(
        model.config,
        sparsity=config.bsa_sparsity,
        chunk_3d_shape=config.bsa_chunk_3d_shape,
        cdf_threshold=config.bsa_cdf_threshold,
    )
    model.set_attention_implementation(config.attention_implementation, params)
    if params is None:
        model.attention_settings.bsa_params = None
    return model.attention_settings
