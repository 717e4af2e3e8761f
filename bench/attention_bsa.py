"""One LongCat-Video self-attention layer at 720p, forward + backward: block-sparse (FlexAttention) vs SDPA flash.

    python bench/attention_bsa.py [--sparsity 0.9375] [--iters 10] [--no-record]

Shape: 704x1280x93 -> latent 24x88x160 -> patch grid 24x44x80 = 84,480 tokens; q/k/v
[1, 32, 84480, 128] bf16. Each mode is timed as the median of >= 10 forward+backward
calls (CUDA events) after warm-up; the first call (compilation) is reported apart.
``bsa`` times the whole backend as the DiT calls it: regrouping, chunk selection,
BlockMask and the compiled kernel.

floor_s: attention FLOPs (forward 4 N^2 D heads, forward+backward 3.5x that, the
backward being 2.5x the forward) over the dense SDPA rate measured in this run; for
``bsa`` only the kept fraction of the FLOPs counts. Rows are appended to
``bench/results.jsonl`` and ``bench/RESULTS.md``. Each mode is caught and reported on
its own, so one failure still leaves the other's row. On the GPU machine, run
``source bench/install_wheels.sh`` first where diffusers is missing.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path


import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from frametuner.bench.results import append_row, cuda_time, git_commit, start_section  # noqa: E402

CASE = "720p-layer"
GRID = (24, 44, 80)  # 704x1280x93
HEADS, HEAD_DIM = 32, 128


def sdpa_flash(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v)


def run_mode(mode: str, sparsity: float, warmup: int, iters: int) -> dict:
    tokens = GRID[0] * GRID[1] * GRID[2]
    shape = (1, HEADS, tokens, HEAD_DIM)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    kept_fraction = 1.0
    if mode == "bsa":
        from frametuner.models.longcat_video.bsa import BSAParams, block_sparse_attention, select_key_chunks

        params = BSAParams(sparsity=sparsity)

        def attention(q, k, v):
            return block_sparse_attention(q, k, v, grid_q=GRID, grid_k=GRID, params=params)

        with torch.no_grad():
            selection = select_key_chunks(q, k, grid_q=GRID, grid_k=GRID, params=params)
            kept_fraction = selection.counts.float().mean().item() / selection.order.shape[-1]
    else:
        attention = sdpa_flash

    def step():
        out = attention(q, k, v)
        torch.autograd.grad(out, (q, k, v), grad)

    torch.cuda.synchronize()
    started = time.perf_counter()
    step()  # compiles the bsa kernels
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    times = cuda_time(step, warmup, iters)
    with torch.no_grad():
        forward_s = statistics.median(cuda_time(lambda: attention(q, k, v), 2, iters))
    return {
        "times": times,
        "forward_s": forward_s,
        "first_call_s": first_call_s,
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
        "kept_fraction": kept_fraction,
        "tokens": tokens,
    }


COLUMNS = ("case", "kind", "mode", "s/step", "tokens/s", "peak GB", "floor s", "s/floor", "notes")


def append_results(rows: list[dict], results_dir: Path, command: str) -> None:
    if not rows:
        return
    start_section(results_dir, rows[0]["date"], rows[0]["device"], command, COLUMNS)
    for row in rows:
        cells = [row["case"], row["kind"], row["mode"], f"{row['s_per_step']:.4f}", f"{row['tokens_per_s']:.0f}", f"{row['peak_gb']:.1f}",
                 f"{row['floor_s']:.4f}", f"{row['s_per_step'] / row['floor_s']:.2f}", row.get("notes", "")]
        append_row(row, cells, results_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsity", type=float, default=0.9375, help="BSA sparsity (the released config: 0.9375)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="timed calls per mode (>= 10)")
    parser.add_argument("--results-dir", default=str(REPO / "bench"))
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    args.iters = max(args.iters, 10)
    device = torch.cuda.get_device_name()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/attention_bsa.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{device}, torch {torch.__version__}; q/k/v [1, {HEADS}, {GRID[0] * GRID[1] * GRID[2]}, {HEAD_DIM}] bf16, grid {GRID}", flush=True)

    results: dict[str, dict] = {}
    for mode in ("sdpa", "bsa"):  # sdpa first: its rate is the ceiling of both floors
        try:
            result = results[mode] = run_mode(mode, args.sparsity, args.warmup, args.iters)
            print(
                f"{mode:5s} fwd+bwd {statistics.median(result['times']) * 1e3:8.2f} ms  fwd {result['forward_s'] * 1e3:7.2f} ms  "
                f"first call {result['first_call_s']:6.1f} s  peak {result['peak_gb']:5.1f} GB  kept {result['kept_fraction']:.4f}",
                flush=True,
            )
        except Exception as error:  # report and go on with the other mode
            traceback.print_exc()
            print(f"!! {CASE} {mode} failed: {error!r}", flush=True)
        gc.collect()
        torch.cuda.empty_cache()

    if "sdpa" not in results:
        print("!! no SDPA timing, so no ceiling: nothing recorded")
        return 1
    tokens = results["sdpa"]["tokens"]
    dense_flops = 3.5 * 4 * tokens**2 * HEAD_DIM * HEADS  # forward + backward (2.5x forward)
    sdpa_seconds = statistics.median(results["sdpa"]["times"])
    ceiling = dense_flops / sdpa_seconds
    rows = []
    for mode, result in results.items():
        seconds = statistics.median(result["times"])
        notes = f"fwd {result['forward_s'] * 1e3:.1f} ms; first call {result['first_call_s']:.1f} s"
        if mode == "bsa":
            notes += f"; sparsity {args.sparsity}, kept {result['kept_fraction']:.4f}; {sdpa_seconds / seconds:.2f}x SDPA"
        rows.append({
            "date": date, "device": device, "torch": torch.__version__, "case": CASE, "kind": "attention", "mode": mode,
            "s_per_step": seconds, "tokens_per_s": tokens / seconds, "peak_gb": result["peak_gb"],
            "floor_s": dense_flops * result["kept_fraction"] / ceiling, "git_commit": git_commit(),
            "times": result["times"], "forward_s": result["forward_s"], "first_call_s": result["first_call_s"],
            "kept_fraction": result["kept_fraction"], "sdpa_fwd_bwd_tflops": ceiling / 1e12, "notes": notes,
        })

    print("\n| case | kind | mode | s/step | floor s | s/floor | peak GB | notes |\n|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['kind']} | {row['mode']} | {row['s_per_step']:.4f} | {row['floor_s']:.4f} | "
              f"{row['s_per_step'] / row['floor_s']:.2f} | {row['peak_gb']:.1f} | {row['notes']} |")
    if "bsa" in results:
        ratio = statistics.median(results["bsa"]["times"]) / sdpa_seconds
        print(f"\nbsa / sdpa = {ratio:.3f} (target <= 0.125)")
    if not args.no_record:
        append_results(rows, Path(args.results_dir), command)
        print(f"appended {len(rows)} rows to {args.results_dir}/results.jsonl and RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
