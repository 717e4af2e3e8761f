"""Multi-GPU scaling of the 13.6B training step: DDP and FSDP2 on 1..N GPUs of one host.

Every measurement is a fresh launch (``accelerate launch`` for N > 1, NVLink multicast
off): N ranks build the random-weight bf16 DiT on their GPU, wrap it with the trainer
(LoRA rank 16, or full fine-tuning) under the strategy, and time ``Trainer.step`` with
batch 1 per GPU (weak scaling: the global batch is N). Reported per run: s/step (the
slowest rank's median), samples/s, scaling efficiency against one GPU (``s/step(1) /
s/step(N)``; full fine-tuning does not fit one GPU, so against its smallest N), and the
peak memory of every GPU. Rows go to ``bench/RESULTS.md`` and ``bench/results.jsonl`` as
soon as measured; a run that fails (out of memory) is reported and the next one starts.

    python bench/multi_gpu.py                                  # LoRA, 480p and 720p, DDP and FSDP, 1 and all GPUs
    python bench/multi_gpu.py --gpus 1,2,4,8 --model-type full --strategy fsdp --case 480x832x93
    python bench/multi_gpu.py --flavour tiny --gpus 1,2 --case 32x48x5   # CPU smoke run (gloo)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .results import REPO, append_row, git_commit, start_section, timed
from .train_step import OneBatch, bench_config, latent_grid, parse_case, text_inputs

DEFAULT_CASES = ["480x832x93", "704x1280x93"]
BATCH_PER_GPU = 1


@dataclass(frozen=True)
class Run:
    case: str
    model_type: str  # lora | full
    strategy: str  # ddp | fsdp | none (one GPU)
    processes: int


def plan(cases: list[str], model_types: list[str], strategies: list[str], gpus: list[int]) -> tuple[list[Run], list[str]]:
    """The runs in measuring order (each baseline before what is compared with it), and notes on what is left out."""
    runs, skipped = [], []
    for case in cases:
        for model_type in model_types:
            usable = [s for s in strategies if s != "none" and not (model_type == "full" and s == "ddp")]
            if model_type == "full" and "ddp" in strategies:
                skipped.append(f"{case} full/ddp: every GPU would hold 13.6B float32 weights, gradients and AdamW states (~220 GB); use fsdp")
            for processes in gpus:
                if processes == 1 and model_type == "full":
                    skipped.append(f"{case} full on 1 GPU: does not fit (~220 GB); scaling is against the smallest N")
                elif processes == 1:
                    runs.append(Run(case, model_type, "none", 1))
                else:
                    runs += [Run(case, model_type, strategy, processes) for strategy in usable]
    return runs, skipped


def scaling_efficiency(run: Run, seconds: float, measured: dict[tuple[str, str], tuple[int, float]]) -> tuple[float | None, str]:
    """Weak-scaling efficiency against the fewest GPUs measured for this case and model: (value, against what)."""
    baseline = measured.get((run.case, run.model_type))
    if baseline is None:
        return None, "no baseline"
    processes, base_seconds = baseline
    return base_seconds / seconds, f"vs {processes} GPU" + ("s" if processes > 1 else "")


# ---------------------------------------------------------------------- one rank
def worker(args) -> int:
    """One rank of one run: build, wrap, time; rank 0 writes the result file."""
    from accelerate.utils import gather_object

    from ..models.registry import load_spec
    from ..training.distributed import end_run, process_state
    from ..training.trainer import Trainer

    state = process_state()  # before any CUDA work: it picks this rank's GPU
    cuda = state.device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    spec = load_spec("longcat_video")
    model = spec.build_transformer(flavour=args.flavour, device=state.device, dtype=dtype)
    height, width, frames = parse_case(args.case[0])
    t, h, w = latent_grid(height, width, frames)
    optimized = args.mode == "optimized"
    text, mask = text_inputs(BATCH_PER_GPU, compact=optimized, channels=model.config.caption_channels, device=state.device)
    batch = {"latents": torch.randn(BATCH_PER_GPU, 16, t, h, w, device=state.device), "text": text.to(dtype), "text_mask": mask, "num_cond_latents": 0}
    config = bench_config(
        args.output_dir,
        model_flavour=args.flavour,
        model_type=args.model_type[0],
        mixed_precision="bf16" if cuda else "no",
        gradient_checkpointing_policy=args.policy if optimized else "full",
        compile_transformer=optimized and cuda,
        activation_memory_budget_gb=args.budget_gb,
        optimizer_state_dtype=args.optimizer_states,
        num_processes=state.num_processes,
        distributed={"strategy": args.strategy[0] if args.strategy[0] != "none" else "ddp"},
    )
    trainer = Trainer(config, OneBatch(batch), model=model)
    if not optimized:
        trainer.accelerator.unwrap_model(trainer.model).text_virtual_length = None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.step(batch)
    synchronize(cuda)
    first_step = time.perf_counter() - started
    times = timed(lambda: trainer.step(batch), args.warmup, args.iters, cuda)
    mine = {
        "rank": state.process_index,
        "median_s": statistics.median(times),
        "times": times,
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "first_step_s": first_step,
        "device": torch.cuda.get_device_name() if cuda else "CPU",
    }
    ranks = gather_object([mine]) if state.num_processes > 1 else [mine]
    if state.is_main_process:
        ranks = sorted(ranks, key=lambda r: r["rank"])
        result = {
            "device": mine["device"],
            "s_per_step": max(r["median_s"] for r in ranks),  # the slowest rank sets the pace
            "times": mine["times"],
            "peak_gb_per_gpu": [r["peak_gb"] for r in ranks],
            "first_step_s": max(r["first_step_s"] for r in ranks),
            "tokens": t * (h // 2) * (w // 2),
        }
        temporary = Path(args.result_file).with_suffix(".tmp")
        temporary.write_text(json.dumps(result))
        os.replace(temporary, args.result_file)
    end_run(trainer.accelerator)  # all ranks close the process group together
    return 0


def synchronize(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


# ---------------------------------------------------------------------- orchestration
def run_command(run: Run, args, result_file: Path) -> tuple[list[str], dict[str, str]]:
    from ..training.distributed import MULTICAST_OFF, launch_command

    argv = [
        "--worker", "--case", run.case, "--model-type", run.model_type, "--strategy", run.strategy,
        "--mode", args.mode, "--policy", args.policy, "--optimizer-states", args.optimizer_states,
        "--warmup", str(args.warmup), "--iters", str(args.iters), "--flavour", args.flavour,
        "--result-file", str(result_file), "--output-dir", str(Path(args.output_dir) / f"{run.strategy}-{run.processes}"),
    ]
    if args.budget_gb is not None:
        argv += ["--budget-gb", str(args.budget_gb)]
    if run.processes == 1:
        return [sys.executable, "-m", "frametuner.bench.multi_gpu", *argv], {**os.environ, **MULTICAST_OFF}
    return launch_command(run.processes, argv, module="frametuner.bench.multi_gpu", mixed_precision="no")


def execute(command: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> tuple[int, str]:
    """Run one measurement in its own session (a timeout kills every rank); (exit code, last error line)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return -1, f"timed out after {timeout_s:.0f} s"
    return code, last_error(log_path.read_text(errors="replace"), code)


def last_error(log: str, code: int) -> str:
    """The most telling line of a failed run's log: the rank's own exception (e.g.
    ``torch.OutOfMemoryError: ...``) or a C++ abort's ``what():``, before torchrun's summary."""
    # torchrun prefixes rank output with "[rank1]:"; C++ aborts print "terminate called ..." then "what(): ...".
    bare = [re.sub(r"^\[(default)?\d*\]:|^\[rank\d+\]:", "", line).strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in bare if re.match(r"^[\w.]*(Error|Exception)\b", line) and "ChildFailedError" not in line]
    errors = errors or [line for line in bare if line.startswith(("what():", "terminate called"))]
    errors = errors or [line for line in bare if line.startswith("traceback :") or "error:" in line]
    return (errors[-1] if errors else (bare[-1] if bare else f"exit code {code}"))[:300]


def _tail(log_path: Path, lines: int = 25) -> str:
    return "\n".join("    | " + line for line in log_path.read_text(errors="replace").splitlines()[-lines:])


COLUMNS = ("case", "model", "strategy", "GPUs", "device", "s/step", "samples/s", "scaling eff.", "peak GB/GPU", "notes")
INTRO = "Weak scaling: batch 1 per GPU. Efficiency = s/step of the baseline / s/step; peak GB = the fullest GPU."


def row_cells(row: dict) -> list[str]:
    """A measured row's table cells, or dashes and the reason for one that failed."""
    head = [row["case"], row["model_type"], row["strategy"], str(row["num_processes"])]
    if row.get("s_per_step") is None:
        return head + ["—"] * 5 + [row["notes"]]
    efficiency = f"{row['scaling_efficiency']:.2f} ({row['baseline']})" if row.get("scaling_efficiency") is not None else "—"
    return head + [row.get("device", "?"), f"{row['s_per_step']:.3f}", f"{row['samples_per_s']:.3f}", efficiency, f"{row['peak_gb']:.1f}", row["notes"]]


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", help=f"HxWxF pixel shape (repeatable; default {' and '.join(DEFAULT_CASES)})")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU counts (default: 1 and every visible GPU)")
    parser.add_argument("--strategy", action="append", choices=["ddp", "fsdp", "none"], help="repeatable; default ddp and fsdp (1 GPU runs as 'none')")
    parser.add_argument("--model-type", action="append", choices=["lora", "full"], help="repeatable; default lora")
    parser.add_argument("--mode", default="optimized", choices=["eager", "optimized"], help="optimized: compiled blocks, auto checkpointing policy")
    parser.add_argument("--policy", default="auto", choices=["auto", "full", "save_attention"], help="checkpointing policy of the optimized mode")
    parser.add_argument("--budget-gb", type=float, default=None, help="activation_memory_budget_gb of the auto policy")
    parser.add_argument("--optimizer-states", default="fp32", choices=["fp32", "bf16"], help="AdamW moments of full fine-tuning")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=1800, help="per run (model build, compile and timing)")
    parser.add_argument("--results-dir", default=str(REPO / "bench"))
    parser.add_argument("--flavour", default="final", choices=["final", "tiny"], help="tiny: a CPU smoke run of the whole harness")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their commands, measure nothing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=str(Path(tempfile.gettempdir()) / "frametuner-bench-multi"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if args.worker:
        return worker(args)
    if args.flavour == "final" and not torch.cuda.is_available() and not args.dry_run:
        print("bench/multi_gpu.py needs CUDA GPUs (or --flavour tiny for a CPU smoke run)", file=sys.stderr)
        return 2
    visible = torch.cuda.device_count()  # NVML: no CUDA context in this process
    gpus = [int(n) for n in args.gpus.split(",")] if args.gpus else sorted({1, max(visible, 1)})
    if args.flavour == "final" and visible and max(gpus) > visible:
        print(f"--gpus asks for {max(gpus)} GPUs; {visible} are visible", file=sys.stderr)
        return 2
    runs, skipped = plan(args.case or DEFAULT_CASES, args.model_type or ["lora"], args.strategy or ["ddp", "fsdp"], gpus)
    for note in skipped:
        print(f"skipped: {note}")
    results_dir = Path(args.results_dir)
    work = Path(tempfile.mkdtemp(prefix="frametuner-bench-multi-"))
    if args.dry_run:
        for run in runs:
            print(run, " ".join(run_command(run, args, work / "result.json")[0]))
        return 0

    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/multi_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start_section(results_dir, date, "multi-GPU training step", command, COLUMNS, intro=INTRO)
    measured: dict[tuple[str, str], tuple[int, float]] = {}  # (case, model) -> fewest GPUs and their s/step
    rows = []
    for index, run in enumerate(runs):
        result_file, log_path = work / f"run{index}.json", work / f"run{index}.log"
        command, env = run_command(run, args, result_file)
        print(f"[{index + 1}/{len(runs)}] {run.case} {run.model_type} {run.strategy} x{run.processes} (log {log_path})", flush=True)
        code, last_line = execute(command, env, log_path, args.timeout_s)
        row = {
            "date": date, "torch": torch.__version__, "git_commit": git_commit(), "case": run.case, "model_type": run.model_type,
            "strategy": run.strategy, "num_processes": run.processes, "mode": args.mode, "policy": args.policy,
            "batch_per_gpu": BATCH_PER_GPU, "flavour": args.flavour,
        }
        if not result_file.exists():  # written by rank 0 once every rank has measured
            row.update(s_per_step=None, notes=f"failed: {last_line}")
            print(f"    failed: {last_line}", flush=True)
            print(_tail(log_path), flush=True)
        else:
            result = json.loads(result_file.read_text())
            seconds = result["s_per_step"]
            key = (run.case, run.model_type)
            if key not in measured or run.processes < measured[key][0]:
                measured[key] = (run.processes, seconds)
            efficiency, baseline = scaling_efficiency(run, seconds, measured)
            row.update(
                device=result["device"], s_per_step=seconds, samples_per_s=run.processes * BATCH_PER_GPU / seconds,
                tokens_per_s=run.processes * BATCH_PER_GPU * result["tokens"] / seconds, scaling_efficiency=efficiency,
                baseline=baseline, peak_gb=max(result["peak_gb_per_gpu"]), peak_gb_per_gpu=result["peak_gb_per_gpu"],
                times=result["times"], first_step_s=result["first_step_s"],
                notes=f"first step {result['first_step_s']:.0f} s; peak per GPU " + ", ".join(f"{g:.1f}" for g in result["peak_gb_per_gpu"]),
            )
            if code != 0:  # the measurement stands; what broke came after it (process teardown)
                row["notes"] += f"; ranks exited with code {code} after measuring: {last_line}"
                print(f"    ranks exited with code {code} after measuring: {last_line}", flush=True)
            print(f"    {seconds:.3f} s/step, {row['samples_per_s']:.3f} samples/s, efficiency "
                  f"{'—' if efficiency is None else f'{efficiency:.2f}'} ({baseline}), peak {row['peak_gb']:.1f} GB", flush=True)
        rows.append(row)
        append_row(row, row_cells(row), results_dir)
    return 0 if all(row["s_per_step"] is not None for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
