"""Benchmark of a full-size DiT's training step and CFG sampling step (LongCat-Video's 13.6B by
default; ``--family wan --flavour t2v-14b`` for Wan 2.1 T2V-14B, any registered family).

Builds the DiT with random bf16 weights directly on the GPU (meta-device init, no CPU
copy), adds LoRA rank 16 on the default targets, and times the trainer's own
``Trainer.step`` (forward, loss, backward, optimizer step) and one classifier-free-
guidance sampling step, for each latent shape asked for. Each row is compared with the
*floor*: analytic FLOPs over ceilings measured in the same run (a large bf16 GEMM and
SDPA at the case's sequence length). Appends to ``bench/RESULTS.md`` and
``bench/results.jsonl``.

    python bench/train_step.py                       # default cases, eager and optimized
    python bench/train_step.py --case 480x832x29 --mode optimized --policy save_attention
    python bench/train_step.py --family wan --flavour t2v-14b --case 480x832x81 --kind train
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from .flops import DiTShape, floor_seconds, sampling_step_flops, training_step_flops
from .results import append_row, cuda_time, git_commit, start_section

from .results import REPO
TEXT_LENGTH, VALID_TOKENS = 512, 120
TEXT_CHANNELS = 4096  # umT5-XXL's width: the text input of every full-size family benchmarked here


# ---------------------------------------------------------------------- timing
def measure_gemm_flops_per_s(size: int = 8192, iters: int = 20) -> float:
    """bf16 GEMM ceiling on random data (several input sets so the cache does not flatter it)."""
    mats = [torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    index = [0]

    def run():
        a, b = mats[index[0] % 4], mats[(index[0] + 1) % 4]
        index[0] += 1
        return a @ b

    seconds = statistics.median(cuda_time(run, 3, iters))
    del mats
    return 2 * size**3 / seconds


def measure_sdpa_flops_per_s(tokens: int, heads: int = 32, head_dim: int = 128, iters: int = 10, kernel: str = "flash") -> tuple[float, float]:
    """SDPA forward and forward+backward ceilings at this sequence length (flash by default)."""
    from torch.nn.attention import sdpa_kernel

    from ..models.sdpa import sdpa_backends

    shape = (1, heads, tokens, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    fwd_flops = 4 * tokens * tokens * head_dim * heads
    F = torch.nn.functional
    with torch.no_grad(), sdpa_kernel(sdpa_backends(kernel)[:1]):
        fwd = statistics.median(cuda_time(lambda: F.scaled_dot_product_attention(q, k, v), 2, iters))

    def fwd_bwd():
        with sdpa_kernel(sdpa_backends(kernel)[:1]):
            out = F.scaled_dot_product_attention(q, k, v)
        out.backward(grad)

    both = statistics.median(cuda_time(fwd_bwd, 2, iters))
    del q, k, v, grad
    return fwd_flops / fwd, 3.5 * fwd_flops / both


# ---------------------------------------------------------------------- cases
def parse_case(text: str) -> tuple[int, int, int]:
    height, width, frames = (int(v) for v in text.lower().split("x"))
    return height, width, frames


def latent_grid(height: int, width: int, frames: int) -> tuple[int, int, int]:
    return 1 + (frames - 1) // 4, height // 8, width // 8


def text_inputs(batch: int, compact: bool, channels: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """512-token prompts with 120 real tokens; ``compact`` passes only 121 rows (the model
    stands one row in for the 392 identical padding rows)."""
    length = VALID_TOKENS + 1 if compact else TEXT_LENGTH
    text = torch.randn(batch, length, channels, device=device, dtype=torch.bfloat16)
    mask = torch.zeros(batch, length, dtype=torch.int64, device=device)
    mask[:, :VALID_TOKENS] = 1
    return text * mask[..., None], mask


def default_family() -> str:
    from ..config import TrainConfig

    return TrainConfig.model_fields["model_family"].default


def resolve_family(family: str | None, flavour: str | None) -> tuple[str, str]:
    """``(family, flavour)``: the config's default family and the family's default flavour when unset."""
    from ..models.registry import family_info

    family = family or default_family()
    return family, flavour or family_info(family).default_flavour


def build_model(device: str = "cuda", family: str | None = None, flavour: str | None = None):
    from ..models.registry import load_spec

    family, flavour = resolve_family(family, flavour)
    spec = load_spec(family)
    model = spec.build_transformer(flavour=flavour, device=device, dtype=torch.bfloat16)
    return spec, model


class OneBatch:
    """TrainingData with one fixed batch (the benchmark repeats the same shapes)."""

    def __init__(self, batch):
        self.batch = batch

    def batches_per_epoch(self):
        return 1

    def epoch(self, epoch):
        yield self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def empty_text(self):
        return self.batch["text"][0] * 0, self.batch["text_mask"][0] * 0


def bench_config(output_dir, family: str | None = None, flavour: str | None = None, **overrides):
    """The benchmarked training setup: the full model, LoRA rank 16 on the default targets,
    bf16, gradient checkpointing, batch 1; ``overrides`` pick the variant."""
    from ..config import TrainConfig

    family, flavour = resolve_family(family, flavour)
    values = dict(
        model_family=family, model_flavour=flavour, model_type="lora", lora_rank=16, mixed_precision="bf16", report_to="none",
        max_train_steps=10**6, output_dir=str(output_dir), gradient_checkpointing=True, max_grad_norm=1.0,
    )
    return TrainConfig(**{**values, **overrides})


def bench_train(
    case: str, mode: str, policy: str, warmup: int, iters: int, output_dir: Path, sdpa_kernel: str = "auto",
    budget_gb: float | None = None, family: str | None = None, flavour: str | None = None,
) -> dict:
    from ..training.trainer import Trainer

    _, model = build_model(family=family, flavour=flavour)  # fresh: the trainer wraps it with LoRA
    height, width, frames = parse_case(case)
    t, h, w = latent_grid(height, width, frames)
    optimized = mode == "optimized"
    text, mask = text_inputs(1, compact=optimized, channels=TEXT_CHANNELS, device="cuda")
    batch = {
        "latents": torch.randn(1, 16, t, h, w, device="cuda"),
        "text": text,
        "text_mask": mask,
        "num_cond_latents": 0,
    }
    config = bench_config(
        output_dir,
        family,
        flavour,
        gradient_checkpointing_policy=policy if optimized else "full",
        compile_transformer=optimized,
        activation_memory_budget_gb=budget_gb,
    )
    if optimized and hasattr(model, "attention_settings"):  # a DiT with its own attention dispatch
        model.attention_settings.sdpa_kernel = sdpa_kernel
    trainer = Trainer(config, OneBatch(batch), model=model)
    if not optimized and hasattr(model, "text_virtual_length"):
        trainer.accelerator.unwrap_model(trainer.model).text_virtual_length = None
    torch.cuda.reset_peak_memory_stats()
    compile_started = time.perf_counter()
    trainer.step(batch)
    torch.cuda.synchronize()
    first_step = time.perf_counter() - compile_started
    times = cuda_time(lambda: trainer.step(batch), warmup, iters)
    saved_blocks = sum(getattr(b, "checkpoint_policy", None) == "save_attention" for b in trainer.accelerator.unwrap_model(trainer.model).blocks)
    return {"times": times, "peak_gb": torch.cuda.max_memory_allocated() / 2**30, "first_step_s": first_step, "saved_attention_blocks": saved_blocks, "trainer": trainer}


def bench_sample(case: str, mode: str, warmup: int, iters: int, sdpa_kernel: str = "auto", family: str | None = None, flavour: str | None = None) -> dict:
    from ..sampling import denoise

    _, model = build_model(family=family, flavour=flavour)
    if mode == "optimized":
        if hasattr(model, "attention_settings"):
            model.attention_settings.sdpa_kernel = sdpa_kernel
        model.compile_blocks()
    height, width, frames = parse_case(case)
    t, h, w = latent_grid(height, width, frames)
    optimized = mode == "optimized"
    model.eval()
    if hasattr(model, "text_virtual_length"):
        model.text_virtual_length = TEXT_LENGTH if optimized else None
    text, mask = text_inputs(2, compact=optimized, channels=TEXT_CHANNELS, device="cuda")
    latents = torch.randn(1, 16, t, h, w, device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step():  # exactly one step of the family's sampler: DiT on [negative, positive], guidance, step
        return denoise(model, latents, text[1:], mask[1:], text[:1], mask[:1], steps=1, guidance=4.0)

    started = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - started
    times = cuda_time(step, warmup, iters)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, latents, text, mask
    return {"times": times, "peak_gb": peak, "first_step_s": first}


def release_compiled() -> None:
    """Drop compiled graphs (they hold the previous variant's model alive) and cached memory."""
    import torch._dynamo

    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------- output
COLUMNS = ("case", "kind", "mode", "s/step", "tokens/s", "peak GB", "floor s", "s/floor", "notes")


def row_cells(row: dict) -> list[str]:
    return [
        row["case"], row["kind"], row["mode"], f"{row['s_per_step']:.3f}", f"{row['tokens_per_s']:.0f}",
        f"{row['peak_gb']:.1f}", f"{row['floor_s']:.3f}", f"{row['s_per_step'] / row['floor_s']:.2f}", row.get("notes", ""),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default=None, help="model family (default: the config's default); see `frametuner models`")
    parser.add_argument("--flavour", default=None, help="flavour of the family, built with random weights (default: the family's)")
    parser.add_argument("--case", action="append", help="HxWxF pixel shape (default: 480x832x93 and 480x832x29; another family: its default shape)")
    parser.add_argument("--kind", action="append", choices=["train", "sample_cfg"], help="default: both")
    parser.add_argument("--mode", action="append", choices=["eager", "optimized"], help="default: both (eager first)")
    parser.add_argument("--no-compile", action="store_true", help="only the eager baseline (full recomputation, no compile)")
    parser.add_argument("--policy", action="append", choices=["auto", "full", "save_attention"], help="checkpointing of the optimized training path (repeatable; default auto)")
    parser.add_argument("--budget-gb", type=float, default=None, help="activation_memory_budget_gb for the auto policy (default: the trainer's)")
    parser.add_argument("--sdpa-kernel", default="auto", choices=["auto", "flash", "cudnn", "efficient"], help="dense attention kernel of the optimized path")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--results-dir", default=str(REPO / "bench"))
    args = parser.parse_args(argv)
    import os

    # Video shapes vary: expandable segments avoid stranding memory between sizes (must be
    # set before CUDA initialises).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if not torch.cuda.is_available():
        print("frametuner bench needs a CUDA GPU", file=sys.stderr)
        return 2
    family, flavour = resolve_family(args.family, args.flavour)
    if args.case:
        cases = args.case
    elif family == default_family():
        cases = ["480x832x93", "480x832x29"]
    else:
        from ..models.registry import family_defaults

        defaults = family_defaults(family)
        cases = [f"{defaults.height}x{defaults.width}x{defaults.frames}"]
    kinds = args.kind or ["train", "sample_cfg"]
    modes = ["eager"] if args.no_compile else (args.mode or ["eager", "optimized"])
    device_name = torch.cuda.get_device_name()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])

    print(f"device {device_name}, torch {torch.__version__}; {family} {flavour}")
    gemm = measure_gemm_flops_per_s()
    print(f"bf16 GEMM ceiling: {gemm / 1e12:.0f} TFLOP/s")
    _, meta_model = build_model(device="meta", family=family, flavour=flavour)
    shape = DiTShape.from_model_config(meta_model.config)
    del meta_model

    rows = []
    output_dir = Path("/tmp/frametuner-bench")
    start_section(Path(args.results_dir), date, device_name, command, COLUMNS)
    for case in cases:
        height, width, frames = parse_case(case)
        t, h, w = latent_grid(height, width, frames)
        tokens = t * (h // 2) * (w // 2)
        head_dim = shape.hidden // shape.heads
        sdpa_fwd, sdpa_both = measure_sdpa_flops_per_s(tokens, heads=shape.heads, head_dim=head_dim)
        print(f"{case}: {tokens} tokens; SDPA flash ceilings fwd {sdpa_fwd / 1e12:.0f}, fwd+bwd {sdpa_both / 1e12:.0f} TFLOP/s")
        try:
            cudnn_fwd, cudnn_both = measure_sdpa_flops_per_s(tokens, heads=shape.heads, head_dim=head_dim, kernel="cudnn")
            print(f"{case}: SDPA cuDNN fwd {cudnn_fwd / 1e12:.0f}, fwd+bwd {cudnn_both / 1e12:.0f} TFLOP/s (for reference)")
        except Exception as error:
            cudnn_fwd = cudnn_both = float("nan")
            print(f"{case}: cuDNN attention unavailable: {error}")
        # The floor uses the fastest attention kernel measured (cuDNN beats flash on Hopper).
        best_fwd = max(sdpa_fwd, cudnn_fwd if cudnn_fwd == cudnn_fwd else 0.0)
        best_both = max(sdpa_both, cudnn_both if cudnn_both == cudnn_both else 0.0)
        rates = dict(gemm_flops_per_s=gemm, sdpa_fwd_flops_per_s=best_fwd, sdpa_fwd_bwd_flops_per_s=best_both)
        variants = [
            (kind, mode, policy)
            for kind in kinds
            for mode in modes
            for policy in ((args.policy or ["auto"]) if (kind == "train" and mode == "optimized") else [None])
        ]
        for kind, mode, policy in variants:
                label = mode if mode == "eager" else "optimized" + (f"-{policy}" if policy else "") + ("" if args.sdpa_kernel == "auto" else f"-{args.sdpa_kernel}")
                if policy == "auto" and args.budget_gb:
                    label += f"{args.budget_gb:g}GB"
                try:
                    if kind == "train":
                        result = bench_train(case, mode, policy or "full", args.warmup, args.iters, output_dir, args.sdpa_kernel, args.budget_gb, family, flavour)
                        saved = result["saved_attention_blocks"]
                        recompute_flops = training_step_flops(shape, batch=1, frames=t, tokens=tokens, text_len=TEXT_LENGTH, lora_rank=16, recompute="full")
                        saved_flops = training_step_flops(shape, batch=1, frames=t, tokens=tokens, text_len=TEXT_LENGTH, lora_rank=16, recompute="save_attention")
                        fraction = saved / shape.depth
                        flops = {key: (1 - fraction) * recompute_flops[key] + fraction * saved_flops[key] for key in recompute_flops}
                        notes = f"{family} {flavour}; attention saved in {saved}/{shape.depth} blocks; first step {result['first_step_s']:.0f} s"
                        trainer = result.pop("trainer")
                        trainer.accelerator.free_memory()
                        del trainer.model, trainer.optimizer, trainer

                    else:
                        result = bench_sample(case, mode, args.warmup, args.iters, args.sdpa_kernel, family, flavour)
                        flops = sampling_step_flops(shape, batch=2, frames=t, tokens=tokens, text_len=TEXT_LENGTH)
                        notes = f"{family} {flavour}; batch 2 (CFG); first step {result['first_step_s']:.0f} s"
                except Exception as error:  # report and go on with the next case
                    traceback.print_exc()
                    print(f"!! {case} {kind} {mode} failed: {error}")
                    release_compiled()
                    continue
                seconds = statistics.median(result["times"])
                floor = floor_seconds(flops, **rates)
                row = {
                    "date": date, "device": device_name, "torch": torch.__version__, "family": family, "flavour": flavour,
                    "case": case, "kind": kind, "mode": label,
                    "s_per_step": seconds, "tokens_per_s": tokens * (2 if kind == "sample_cfg" else 1) / seconds,
                    "peak_gb": result["peak_gb"], "floor_s": floor, "git_commit": git_commit(),
                    "times": result["times"], "gemm_tflops": gemm / 1e12, "sdpa_fwd_tflops": sdpa_fwd / 1e12,
                    "sdpa_fwd_bwd_tflops": sdpa_both / 1e12, "cudnn_fwd_tflops": cudnn_fwd / 1e12,
                    "cudnn_fwd_bwd_tflops": cudnn_both / 1e12, "sdpa_kernel": args.sdpa_kernel if mode == "optimized" else "auto", "notes": notes,
                }
                rows.append(row)
                append_row(row, row_cells(row), Path(args.results_dir))
                print(f"{case} {kind:10s} {label:28s} {seconds:7.3f} s/step  floor {floor:6.3f}  ratio {seconds / floor:5.2f}  peak {result['peak_gb']:5.1f} GB  ({notes})", flush=True)
                release_compiled()
    print("\n| case | kind | mode | s/step | floor | ratio | peak GB |")
    for row in rows:
        print(f"| {row['case']} | {row['kind']} | {row['mode']} | {row['s_per_step']:.3f} | {row['floor_s']:.3f} | {row['s_per_step'] / row['floor_s']:.2f} | {row['peak_gb']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
