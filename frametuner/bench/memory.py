"""Memory presets of the full 13.6B LoRA training step: peak GPU memory and step time.

Each preset is a set of config keys (base precision, block swap, group offload,
activation offload, activation budget) measured with the trainer's own ``Trainer.step``
on the full-size DiT (random bf16 weights built on the GPU, quantised in place), LoRA
rank 16, batch 1. Every preset runs in its own process (a fresh CUDA context: one that
runs out of memory or crashes costs only its row); rows are appended to
``bench/RESULTS.md`` and ``bench/results.jsonl`` as they finish, and a summary table
(with the step time relative to the ``bf16`` row) is printed at the end. Presets that
would not finish within ``--budget-s`` are skipped and listed.

    python bench/memory.py                                  # bf16, int8, fp8, the 24 GB combination
    python bench/memory.py --preset int4 --preset 24gb-int8 --case 720x1280x93
    python bench/memory.py --list
    python bench/memory.py --family wan --flavour t2v-14b     # Wan 2.1 T2V-14B: bf16 and its 24 GB preset
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .results import REPO, append_row, git_commit, start_section

DEFAULT_CASE = "480x832x93"

# name -> TrainConfig keys. The activation budget lets the auto checkpointing policy keep
# attention outputs up to the preset's memory target, as it does up to 50 GB for bf16.
PRESETS: dict[str, dict] = {
    "bf16": dict(base_model_precision="bf16"),
    "int8": dict(base_model_precision="int8-quanto", gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=34),
    "fp8": dict(base_model_precision="fp8-torchao", gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=34),
    "int4": dict(base_model_precision="int4-quanto", gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=34),
    "int8-resident": dict(base_model_precision="int8-quanto", activation_memory_budget_gb=34),
    # Swapping is nearly free once compute hides it (an int8 block: 0.28 GB, ~15 ms over PCIe
    # against ~290 ms of compute), so the 24 GB presets swap most blocks.
    "24gb-int8": dict(base_model_precision="int8-quanto", musubi_blocks_to_swap=40, gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=21),
    "24gb-fp8": dict(base_model_precision="fp8-torchao", musubi_blocks_to_swap=40, gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=21),
    "int8-swap24": dict(base_model_precision="int8-quanto", musubi_blocks_to_swap=24, gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=21),
    "24gb-int4": dict(base_model_precision="int4-quanto", gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=21),
    "32gb-int8": dict(base_model_precision="int8-quanto", gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=29),
    "48gb-bf16": dict(base_model_precision="bf16", gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=44),
    "bf16-swap24": dict(base_model_precision="bf16", musubi_blocks_to_swap=24, gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=21),
    # 720p (704x1280x93, 84,480 tokens) dense vs block-sparse attention (issue 9), bf16 base with
    # activation offload so that both fit the 80 GB H100; full recomputation in both (budget 1 GB).
    "720p-dense": dict(base_model_precision="bf16", gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=1, attention_implementation="sdpa"),
    "720p-bsa": dict(base_model_precision="bf16", gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=1, attention_implementation="bsa", bsa_sparsity=0.9375),
    "bf16-groupoffload": dict(base_model_precision="bf16", enable_group_offload=True, group_offload_use_stream=True, gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=21),
    # Wan 2.1 14B (40 blocks of 0.35 GB in int8): 24gb-int8's combination, 34 of the 40 blocks swapped.
    "24gb-int8-wan14b": dict(base_model_precision="int8-quanto", musubi_blocks_to_swap=34, gradient_checkpointing_cpu_offload=True, activation_memory_budget_gb=21),
}
DEFAULT_PRESETS = ["bf16", "int8", "fp8", "24gb-int8"]
# Another family's default presets (its plain bf16 step and its 24 GB preset).
FAMILY_PRESETS = {"wan": ["bf16", "24gb-int8-wan14b"]}


# ---------------------------------------------------------------------- one preset (worker process)
def preset_trainer(name: str, case: str, compile_blocks: bool, family: str | None = None, flavour: str | None = None):
    """The full-size model (random bf16 weights on the GPU, quantised or placed by the
    trainer), one fixed batch of ``case`` and the trainer for preset ``name``."""
    import torch

    from ..training.trainer import Trainer
    from .train_step import OneBatch, bench_config, build_model, latent_grid, parse_case, text_inputs

    t, h, w = latent_grid(*parse_case(case))
    _, model = build_model(family=family, flavour=flavour)
    text, mask = text_inputs(1, compact=True, channels=4096, device="cuda")
    batch = {"latents": torch.randn(1, 16, t, h, w, device="cuda"), "text": text, "text_mask": mask, "num_cond_latents": 0}
    config = bench_config(
        "/tmp/frametuner-bench-memory",
        family,
        flavour,
        gradient_checkpointing_policy="auto",
        compile_transformer=None if compile_blocks else False,  # None: the trainer's default (as users get it)
        **PRESETS[name],
    )
    return Trainer(config, OneBatch(batch), model=model), batch


def run_preset(name: str, case: str, warmup: int, iters: int, compile_blocks: bool, family: str | None = None, flavour: str | None = None) -> dict:
    import torch

    from ..memory import memory_mode
    from .results import cuda_time

    started = time.perf_counter()
    trainer, batch = preset_trainer(name, case, compile_blocks, family, flavour)
    config = trainer.config
    setup_s = time.perf_counter() - started
    _progress(setup_s=setup_s)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    first = time.perf_counter()
    loss, _ = trainer.step(batch)  # compiles; the auto policy measures the full-recompute peak
    torch.cuda.synchronize()
    first_step_s = time.perf_counter() - first
    _progress(setup_s=setup_s, first_step_s=first_step_s, first_step_peak_gb=torch.cuda.max_memory_allocated() / 2**30, loss=float(loss))
    for _ in range(max(1, warmup)):  # the auto policy decides in the second step: no reset before it
        trainer.step(batch)
    torch.cuda.synchronize()
    warm_peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = cuda_time(lambda: trainer.step(batch), 0, iters)
    steady_peak = torch.cuda.max_memory_allocated()
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    saved = sum(getattr(block, "checkpoint_policy", None) == "save_attention" for block in unwrapped.blocks)
    plan = trainer.memory
    return {
        "preset": name,
        "mode": memory_mode(config) + (f"+{config.attention_implementation}" if config.attention_implementation != "auto" else ""),
        "times": times,
        "s_per_step": statistics.median(times),
        "peak_gb": max(warm_peak, steady_peak) / 2**30,
        "steady_peak_gb": steady_peak / 2**30,
        "first_step_s": first_step_s,
        "setup_s": setup_s,
        "loss": float(loss),
        "saved_attention_blocks": saved,
        "depth": len(unwrapped.blocks),
        "family": config.model_family,
        "flavour": config.model_flavour,
        "swap_loads": plan.block_swap.loads if plan and plan.block_swap else None,
        "activations_offloaded": plan.activation_offload.packed if plan and plan.activation_offload else None,
        "host_rss_gb": _rss_gb(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "tokens": batch["latents"][0, 0, :, ::2, ::2].numel(),  # patch (1, 2, 2)
        "config": {k: v for k, v in PRESETS[name].items()},
    }


def _progress(**measured) -> None:
    """What a preset measured so far, for the parent to keep if the preset runs out of time."""
    print("PROGRESS " + json.dumps(measured), flush=True)


def _rss_gb() -> float:
    try:
        line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**20
    except (OSError, StopIteration):
        return float("nan")


def worker(args) -> int:
    try:
        result = run_preset(args.worker, args.case[0], args.warmup, args.iters, not args.no_compile, args.family, args.flavour)
    except BaseException as error:  # noqa: BLE001 - reported to the parent as a row
        traceback.print_exc()
        result = {"preset": args.worker, "error": f"{type(error).__name__}: {str(error)[:300]}"}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------- output
PARTIAL_NOTES = (("first_step_s", "first step", " s"), ("first_step_peak_gb", "peak in it", " GB"), ("setup_s", "setup", " s"))
COLUMNS = ("case", "kind", "mode", "s/step", "x bf16", "peak GB", "steady peak GB", "host peak GB", "notes")


def append_rows(rows: list[dict], results_dir: Path, command: str, *, header: bool) -> None:
    """Append rows to results.jsonl and RESULTS.md (with the section header on the first call)."""
    if header and rows:
        start_section(results_dir, rows[0]["date"], rows[0].get("device", "?"), command + "  (memory presets)", COLUMNS)
    for row in rows:
        if "error" in row:
            partial = row.get("partial", {})
            notes = row["error"] + "".join(
                f"; {label} {partial[key]:.1f}{unit}" for key, label, unit in PARTIAL_NOTES if key in partial
            )
            cells = [row["case"], "train", row["mode"], "failed", "", "", "", "", notes]
        else:
            ratio = f"{row['x_bf16']:.2f}" if row.get("x_bf16") else ""
            cells = [row["case"], "train", row["mode"], f"{row['s_per_step']:.3f}", ratio, f"{row['peak_gb']:.1f}",
                     f"{row['steady_peak_gb']:.1f}", f"{row['host_rss_gb']:.1f}", row["notes"]]
        append_row(row, cells, results_dir)


def bf16_reference(rows: list[dict], results_dir: Path, case: str, device: str | None, family: str | None = None) -> float | None:
    """s/step of the bf16 preset: from this run, else the latest recorded one on the same device
    (of the same family and flavour: rows before families were recorded are the default's)."""
    for row in reversed(rows):
        if row.get("preset") == "bf16" and row["case"] == case and "error" not in row:
            return row["s_per_step"]
    path = results_dir / "results.jsonl"
    if device is None or not path.exists():
        return None
    best = None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        same_model = family is None or row.get("family", _default_family_and_flavour()) == family
        if row.get("preset") == "bf16" and row.get("case") == case and row.get("device") == device and same_model and "s_per_step" in row:
            best = row["s_per_step"]
    return best


def _default_family_and_flavour() -> str:
    from .train_step import default_family

    return default_family()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), help=f"default: {' '.join(DEFAULT_PRESETS)}")
    parser.add_argument("--family", default=None, help="model family (default: the config's default)")
    parser.add_argument("--flavour", default=None, help="flavour of the family, built with random weights (default: the family's)")
    parser.add_argument("--case", action="append", help=f"HxWxF pixel shape (default {DEFAULT_CASE}; another family: its default shape)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="eager blocks (default: regional compile, as training on CUDA)")
    parser.add_argument("--budget-s", type=float, default=570, help="skip presets that would start after this many seconds")
    parser.add_argument("--timeout-s", type=float, default=420, help="kill one preset after this long")
    parser.add_argument("--results-dir", default=str(REPO / "bench"))
    parser.add_argument("--list", action="store_true", help="print the presets and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from .train_step import default_family, resolve_family

    family, flavour = resolve_family(args.family, args.flavour)
    if not args.case:
        if family == default_family():
            args.case = [DEFAULT_CASE]
        else:
            from ..models.registry import family_defaults

            defaults = family_defaults(family)
            args.case = [f"{defaults.height}x{defaults.width}x{defaults.frames}"]
    if args.list:
        for name, keys in PRESETS.items():
            print(f"{name:18s} {json.dumps(keys)}")
        return 0
    if args.worker:
        return worker(args)

    presets = args.preset or (DEFAULT_PRESETS if family == default_family() else FAMILY_PRESETS.get(family, ["bf16"]))
    command = "python bench/memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    started = time.perf_counter()
    rows, skipped = [], []
    longest = 0.0
    env = dict(os.environ)
    for case in args.case:
        for name in presets:
            elapsed = time.perf_counter() - started
            if elapsed + max(longest, 60) > args.budget_s:
                skipped.append(f"{case} {name}")
                continue
            timeout = max(60.0, min(args.timeout_s, args.budget_s - elapsed))
            worker_argv = [
                sys.executable, "-m", "frametuner.bench.memory", "--worker", name, "--case", case, "--warmup", str(args.warmup),
                "--iters", str(args.iters), "--family", family, "--flavour", flavour,
            ]
            if args.no_compile:
                worker_argv.append("--no-compile")
            print(f"== {case} {name}: {json.dumps(PRESETS[name])}", flush=True)
            preset_started = time.perf_counter()
            result = run_worker(worker_argv, env, timeout, name)
            if args.no_compile and "mode" in result:
                result["mode"] += "+eager"
            if "error" in result and not args.no_compile and args.budget_s - (time.perf_counter() - started) > 120:
                # Compilation is the likeliest casualty of a new tensor subclass: measure eager instead.
                print(f"   compiled run failed ({result['error'][:200]}); retrying with eager blocks", flush=True)
                compiled_error = result["error"]
                result = run_worker(worker_argv + ["--no-compile"], env, max(60.0, args.budget_s - (time.perf_counter() - started)), name)
                result["compile_error"] = compiled_error
                if "mode" in result:
                    result["mode"] += "+eager"
            longest = max(longest, time.perf_counter() - preset_started)
            result.update(date=date, case=case, kind="train", git_commit=git_commit(), family=family, flavour=flavour)
            result.setdefault("mode", name)
            if "error" not in result:
                result["tokens_per_s"] = result["tokens"] / result["s_per_step"]
                result["notes"] = (
                    f"{family} {flavour}; preset {name}; attention saved in {result['saved_attention_blocks']}/{result['depth']} blocks; "
                    f"first step {result['first_step_s']:.0f} s; setup {result['setup_s']:.0f} s"
                    + ("; compiled run failed" if "compile_error" in result else "")
                )
                print(f"   {result['s_per_step']:.2f} s/step, peak {result['peak_gb']:.1f} GB (steady {result['steady_peak_gb']:.1f}), host {result['host_rss_gb']:.1f} GB", flush=True)
            else:
                print(f"   FAILED: {result['error']} {json.dumps(result.get('partial', {}))}", flush=True)
            reference = bf16_reference(rows, Path(args.results_dir), case, result.get("device"), family)
            if reference and "error" not in result:
                result["x_bf16"] = result["s_per_step"] / reference
            append_rows([result], Path(args.results_dir), command, header=not rows)
            rows.append(result)

    print("\n| case | mode | s/step | x bf16 | peak GB | steady GB | host GB |\n|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['case']} | {row['mode']} | FAILED: {row['error'][:80]} | | | | |")
        else:
            ratio = f"{row['x_bf16']:.2f}" if row.get("x_bf16") else "-"
            print(f"| {row['case']} | {row['mode']} | {row['s_per_step']:.2f} | {ratio} | {row['peak_gb']:.1f} | {row['steady_peak_gb']:.1f} | {row['host_rss_gb']:.1f} |")
    if skipped:
        print(f"skipped (time budget): {', '.join(skipped)}")
    return 0


def partial_measurements(stdout: str) -> dict:
    """The last PROGRESS line of a worker's output (``{}`` if none): a preset that timed out
    after its first step still reports that step's time and peak memory."""
    lines = [line for line in stdout.splitlines() if line.startswith("PROGRESS ")]
    return {"partial": json.loads(lines[-1][len("PROGRESS ") :])} if lines else {}


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_worker(worker_argv: list[str], env: dict, timeout: float, name: str) -> dict:
    try:
        out = subprocess.run(worker_argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:  # its captured output is bytes even with text=True
        print(_text(expired.stderr)[-3000:], flush=True)
        return {"preset": name, "error": f"timed out after {timeout:.0f} s", **partial_measurements(_text(expired.stdout))}
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1][len("RESULT ") :]) if lines else {"preset": name, "error": f"exit {out.returncode}: {out.stderr.strip()[-300:]}"}
    if "error" in result:
        print(out.stderr[-3000:], flush=True)
    return result



if __name__ == "__main__":
    sys.exit(main())
