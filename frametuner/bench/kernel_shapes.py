"""The kernels of the DiT's step at the model's own shapes and memory layouts (issue 23).

The step's floor uses ceilings measured on ideal inputs (a square 8192 GEMM, SDPA on
contiguous ``[B, heads, N, D]`` tensors). The step's kernels see other shapes and strides:
q and k leave RoPE in the projection's ``[B, N, heads, D]`` order, v is a strided view of
the fused qkv output, the output gradient arrives ``[B, N, heads, D]``. This measures each
kernel at the step's shapes, in the layouts the step hands it and in the ideal one, so a
gap between the profile and the floor can be pinned on a layout (fixable) or on the kernel
at that shape (not).

    python bench/kernel_shapes.py [--tokens 37440] [--iters 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .results import cuda_time, git_commit

HEADS, HEAD_DIM, HIDDEN, FFN = 32, 128, 4096, 11008


def _qkv(batch: int, tokens: int, layout: str, requires_grad: bool):
    """q, k, v ``[B, heads, N, D]`` views in one of the step's layouts."""
    opts = dict(device="cuda", dtype=torch.bfloat16, requires_grad=requires_grad)
    if layout == "bhnd":  # contiguous per head: the ceiling's layout
        return [torch.randn(batch, HEADS, tokens, HEAD_DIM, **opts) for _ in range(3)]
    if layout == "bnhd":  # each tensor [B, N, heads, D], transposed to [B, heads, N, D]
        return [torch.randn(batch, tokens, HEADS, HEAD_DIM, **opts).transpose(1, 2) for _ in range(3)]
    if layout == "qkv_view":  # the step's own: q, k [B, N, heads, D] (RoPE's output), v a view of qkv
        q, k = (torch.randn(batch, tokens, HEADS, HEAD_DIM, **opts).transpose(1, 2) for _ in range(2))
        qkv = torch.randn(batch, tokens, 3, HEADS, HEAD_DIM, **opts)
        return [q, k, qkv[:, :, 2].transpose(1, 2)]
    if layout == "v_view":  # q, k contiguous per head (a compiled RoPE's output), v a view of qkv
        q, k = (torch.randn(batch, HEADS, tokens, HEAD_DIM, **opts) for _ in range(2))
        qkv = torch.randn(batch, tokens, 3, HEADS, HEAD_DIM, **opts)
        return [q, k, qkv[:, :, 2].transpose(1, 2)]
    raise ValueError(layout)


def attention_rows(tokens: int, iters: int, kernel: str) -> list[dict]:
    from torch.nn.attention import sdpa_kernel

    from ..models.sdpa import sdpa_backends

    rows = []
    backends = sdpa_backends(kernel)[:1]
    for batch in (1, 2):
        flops = 4 * batch * tokens * tokens * HEAD_DIM * HEADS
        for layout in ("bhnd", "bnhd", "qkv_view", "v_view"):
            q, k, v = _qkv(batch, tokens, layout, requires_grad=False)
            with torch.no_grad(), sdpa_kernel(backends):
                s = statistics.median(cuda_time(lambda: F.scaled_dot_product_attention(q, k, v), 2, iters))
            rows.append({"kernel": f"sdpa_{kernel}_fwd", "batch": batch, "layout": layout, "s": s, "tflops": flops / s / 1e12})
            if batch != 1:
                continue
            for grad_layout in ("bhnd", "bnhd"):
                q, k, v = _qkv(batch, tokens, layout, requires_grad=True)
                if grad_layout == "bhnd":
                    grad = torch.randn(batch, HEADS, tokens, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
                else:
                    grad = torch.randn(batch, tokens, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16).transpose(1, 2)

                def both():
                    with sdpa_kernel(backends):
                        out = F.scaled_dot_product_attention(q, k, v)
                    out.backward(grad)

                s = statistics.median(cuda_time(both, 2, iters))
                rows.append({"kernel": f"sdpa_{kernel}_fwd_bwd", "batch": batch, "layout": f"{layout}+grad_{grad_layout}", "s": s, "tflops": 3.5 * flops / s / 1e12})
            torch.cuda.empty_cache()
    # cross-attention: every token to 512 text tokens, with the padding bias the model passes
    q = torch.randn(1, HEADS, tokens, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    kv = [torch.randn(1, HEADS, 512, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    bias = torch.zeros(1, 1, 1, 512, device="cuda", dtype=torch.bfloat16)
    bias[..., 120:] = float("-inf")
    flops = 4 * tokens * 512 * HEAD_DIM * HEADS
    for name, mask in (("none", None), ("bias", bias)):
        with torch.no_grad():
            s = statistics.median(cuda_time(lambda: F.scaled_dot_product_attention(q, *kv, attn_mask=mask), 2, iters))
        rows.append({"kernel": "sdpa_default_cross_fwd", "batch": 1, "layout": f"mask_{name}", "s": s, "tflops": flops / s / 1e12})
    return rows


def gemm_rows(tokens: int, iters: int) -> list[dict]:
    """``x @ W.T`` (forward) and ``g @ W`` (input gradient) at the block's Linear shapes."""
    rows = []
    shapes = {"qkv": (HIDDEN, 3 * HIDDEN), "proj": (HIDDEN, HIDDEN), "w1": (HIDDEN, FFN), "w2": (FFN, HIDDEN), "w13": (HIDDEN, 2 * FFN)}
    for name, (fan_in, fan_out) in shapes.items():
        weight = torch.randn(fan_out, fan_in, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(tokens, fan_in, device="cuda", dtype=torch.bfloat16)
        g = torch.randn(tokens, fan_out, device="cuda", dtype=torch.bfloat16)
        flops = 2 * tokens * fan_in * fan_out
        for direction, fn in (("fwd", lambda: x @ weight.t()), ("dgrad", lambda: g @ weight)):
            s = statistics.median(cuda_time(fn, 3, iters))
            rows.append({"kernel": f"gemm_{name}_{direction}", "batch": 1, "layout": f"{tokens}x{fan_in}x{fan_out}", "s": s, "tflops": flops / s / 1e12})
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    s = statistics.median(cuda_time(lambda: a @ b, 3, iters))
    rows.append({"kernel": "gemm_square_8192", "batch": 1, "layout": "8192^3", "s": s, "tflops": 2 * 8192**3 / s / 1e12})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=37440, help="sequence length (480x832x93: 24 x 30 x 52)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--kernels", default="cudnn,flash", help="SDPA kernels to time (comma-separated)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernel_shapes needs a CUDA GPU", file=sys.stderr)
        return 2
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "git_commit": git_commit(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "tokens": args.tokens}
    rows = gemm_rows(args.tokens, args.iters)
    for kernel in args.kernels.split(","):
        rows += attention_rows(args.tokens, args.iters, kernel)
    print(json.dumps(meta))
    for row in rows:
        print(f"{row['kernel']:<28} b{row['batch']} {row['layout']:<26} {row['s'] * 1e3:9.2f} ms {row['tflops']:7.1f} TFLOP/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            for row in rows:
                handle.write(json.dumps({**meta, **row}) + "\n")
    return 0
