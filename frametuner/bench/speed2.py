"""Speed II (issue 23) on the full-size (13.6B) LongCat-Video DiT with random bf16 weights.

One script, six parts, each in its own try/except and time budget; every result is printed
as a JSON line as soon as it is measured and appended to ``bench/results.jsonl`` and a
section of ``bench/RESULTS.md``:

f. compile once: two consecutive subprocess runs of the same training config (same
   compile-cache folder, empty at first), time from process start to the end of step 1.
   Small case: a 2-block full-width DiT at 480x832x29; what compiles is one block graph that
   all 48 blocks share, so the compile work is the full model's, the step is not.
a. the default-config LoRA training step (rank 16, 480x832x93, no memory keys set: auto
   checkpointing budget from the card, activation offload auto, regional compile): s/step
   (median after the auto policy's two warm-up steps), peak GB, attention saved in N/48
   blocks, activation offload on/off, the floor of ``frametuner/bench/flops.py``.
b. the same trainer with ``fp8_compute`` (``enable_fp8_compute`` on its model, as the
   trainer does, with ``--fp8-layers`` as ``fp8_compute_layers``; torch.compile reset).
c. fp8 quality, eager at 480x832x29 (to save time): relative L2 error of the DiT output and
   cosine similarity (float64) of the LoRA gradients (random non-zero LoRA, rank 16) vs bf16
   over 5 random batches (noise, sigma, text), the same weights; every Linear in float8, then
   groups of them (``QUALITY_VARIANTS``) to show where the error comes from.
d. one CFG sampling step (batch 2) at 480x832x93, compiled, bf16 then fp8 compute.
e. a distilled validation video: ``render_validation`` with the family's distilled setting
   (16 steps, guidance 1, distilled schedule), a random rank-128 distillation LoRA stacked by
   ``apply_lora`` and the random-weight Wan 2.1 VAE decode, 480x832x93, on (d)'s model
   (fp8 compute if (d) got there); the compile warm-up is timed apart.

    python bench/speed2.py                       # all parts, ~9 minutes on an H100
    python bench/speed2.py --parts a,b,d --budget-s 400
    python bench/speed2.py --parts b,d --fp8-layers ffn   # fp8 for the feed-forward Linears only
    python bench/speed2.py --parts c --quality-variants all_but_qk,attn.qkv   # diagnostic groups
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from ..config.precision import FP8_COMPUTE_LAYERS
from .results import REPO, append_row, git_commit, start_section, timed

PARTS = "fabcde"
COLUMNS = ("part", "case", "kind", "mode", "s/step", "peak GB", "floor s", "s/floor", "notes")
TEXT_LENGTH, VALID_TOKENS = 512, 120
LORA_RANK = 16
DISTILL_RANK = 128
# The CPU smoke test (tests/bench) runs this module on the tiny model: it sets these.
DEVICE = "cuda"
FLAVOUR = "final"
CASE = (480, 832, 93)
QUALITY_CASE = (480, 832, 29)
COMPILE_ONCE_CASE = (480, 832, 29)
COMPILE_ONCE_DEPTH = 2
# Minimum seconds a part needs to be started (it is skipped, with a row, otherwise).
# Measured/estimated on an H100: build + compile + the auto policy's recompile + timed steps.
NEEDS = {"f": 70, "a": 160, "b": 85, "c": 55, "d": 85, "e": 90}
STARTED = time.perf_counter()


# ---------------------------------------------------------------------- helpers
def _on_cuda() -> bool:
    return torch.device(DEVICE).type == "cuda"


def _sync() -> None:
    if _on_cuda():
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if _on_cuda():
        torch.cuda.empty_cache()


def _reset_peak() -> None:
    if _on_cuda():
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if _on_cuda() else None


def _timed(fn, iters: int) -> list[float]:
    return timed(fn, 0, iters, _on_cuda())


def _timed_until(fn, iters: int, deadline: float) -> list[float]:
    """One timed call, then up to ``iters - 1`` more while they fit before ``deadline``."""
    times = _timed(fn, 1)
    more = min(iters - 1, int((deadline - time.perf_counter()) / max(times[0], 1e-3)))
    return times + (_timed(fn, more) if more > 0 else [])


def _wall(fn):
    _sync()
    started = time.perf_counter()
    result = fn()
    _sync()
    return result, time.perf_counter() - started


def _device_name() -> str:
    return torch.cuda.get_device_name() if _on_cuda() else str(DEVICE)


def _dtype() -> torch.dtype:
    return torch.bfloat16 if _on_cuda() else torch.float32


def _case_name(case) -> str:
    return "x".join(map(str, case))


def _grid(case) -> tuple[int, int, int, int]:
    """Latent (t, h, w) and the DiT's token count of a pixel case."""
    from ..models.registry import load_spec

    spec = load_spec("longcat_video")
    height, width, frames = case
    _, t, h, w = spec.geometry.latent_shape(frames, height, width)
    patch = spec.geometry.patch_size
    return t, h, w, (t // patch[0]) * (h // patch[1]) * (w // patch[2])


def _text(batch: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """120-token prompts passed as 121 rows (the model stands one row in for the padding)."""
    text = torch.randn(batch, VALID_TOKENS + 1, channels, device=DEVICE, dtype=_dtype())
    mask = torch.zeros(batch, VALID_TOKENS + 1, dtype=torch.int64, device=DEVICE)
    mask[:, :VALID_TOKENS] = 1
    return text * mask[..., None], mask


def _build(depth: int | None = None):
    """The family's DiT with random weights on DEVICE (``depth``: keep the first blocks only)."""
    from ..models.registry import load_spec

    spec = load_spec("longcat_video")
    if depth is None:
        return spec, spec.build_transformer(flavour=FLAVOUR, device=DEVICE, dtype=_dtype())
    model = spec.build_transformer(flavour=FLAVOUR, device="meta", dtype=_dtype())
    model.blocks = torch.nn.ModuleList(list(model.blocks)[:depth])
    return spec, spec.initialise_random(model.to_empty(device=DEVICE))


FP8_SCALING = "rowwise"  # --fp8-scaling (its first entry: b, c, e)
D_SCALINGS: list[str] = []  # --fp8-scaling's entries: (d) times each
PROFILE = False  # --profile


def _profiled(fn) -> dict:
    """With --profile on CUDA: one more call of ``fn`` under the profiler, summarised
    (``profile`` and its one-line form ``profile_line``) for the row; else nothing."""
    if not (PROFILE and _on_cuda()):
        return {}
    from .kernel_profile import one_line, profile_call

    try:
        summary = profile_call(fn)
    except Exception as error:  # a profile is a diagnostic: never lose the row for it
        return {"profile_error": repr(error)[:300]}
    print(json.dumps({"profile": summary}), flush=True)
    return {"profile": summary, "profile_line": one_line(summary)}


FP8_LAYERS = "all"  # --fp8-layers: fp8_compute_layers of b, d, e


def _default_fp8_layers() -> str:
    from ..config.schema import TrainConfig

    return TrainConfig.model_fields["fp8_compute_layers"].default


def _fp8(model, scaling: str | None = None, include=None) -> int:
    """fp8 compute on ``model``: the trainer's/sampler's own call on CUDA (with --fp8-layers'
    filter); emulated on a CPU (smoke test). ``include``: only these layers (c's breakdown),
    torchao's conversion directly."""
    scaling = scaling or FP8_SCALING
    from ..memory.fp8 import check_fp8_compute_supported, convert_to_fp8_compute, enable_fp8_compute, fp8_layer_filter
    from ..models.registry import load_spec

    if include is None:
        include = fp8_layer_filter(FP8_LAYERS, load_spec("longcat_video"))
        if _on_cuda():
            return enable_fp8_compute(model, DEVICE, scaling=scaling, include=include)
    if _on_cuda():
        check_fp8_compute_supported(DEVICE)
    return convert_to_fp8_compute(model, scaling, emulate=not _on_cuda(), include=include)


# (c): which layers run float8, by their names inside a LongCat block: each fp8_compute_layers
# choice (the family's own groups), then diagnostic groups that show where the error comes from
# (bench/RESULTS.md, 2026-12-06: the cross-attention's Linears carry most of it).
@functools.cache
def _config_layers(layers: str):
    """The name filter of ``fp8_compute_layers: layers`` (once per choice)."""
    from ..memory.fp8 import fp8_layer_filter
    from ..models.registry import load_spec

    return fp8_layer_filter(layers, load_spec("longcat_video"))


def _starts(*prefixes: str, keep: bool = True):
    return lambda name: name.startswith(prefixes) == keep


QUALITY_VARIANTS = {
    "all": None,
    "all_but_cross": lambda name: _config_layers("all_but_cross")(name),
    "ffn": lambda name: _config_layers("ffn")(name),
    "attention": _starts("attn.", "cross_attn."),
    "all_but_ffn.w2": _starts("ffn.w2", keep=False),
    "all_but_qk": _starts("attn.qkv", "cross_attn.q_linear", "cross_attn.kv_linear", keep=False),
    "all_but_out": _starts("attn.proj", "cross_attn.proj", keep=False),
    "attn.qkv": _starts("attn.qkv"),
    "attn.proj": _starts("attn.proj"),
    "cross_attn.proj": _starts("cross_attn.proj"),
}
DEFAULT_QUALITY_VARIANTS = ("all", *(layers for layers in FP8_COMPUTE_LAYERS if layers != "all"))


def _reset_compiled() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    _free()


class _Rates:
    """bf16 GEMM and attention ceilings measured once (for the floors)."""

    def __init__(self):
        self.values: dict[tuple, dict] = {}

    def at(self, tokens: int) -> dict | None:
        if not _on_cuda():
            return None
        if tokens not in self.values:
            from .train_step import measure_gemm_flops_per_s, measure_sdpa_flops_per_s

            gemm = self.values.get("gemm") or measure_gemm_flops_per_s(iters=10)
            self.values["gemm"] = gemm
            best = [0.0, 0.0]
            for kernel in ("flash", "cudnn"):
                try:
                    fwd, both = measure_sdpa_flops_per_s(tokens, iters=5, kernel=kernel)
                    best = [max(best[0], fwd), max(best[1], both)]
                except Exception as error:  # cuDNN attention may be unavailable
                    print(json.dumps({"note": f"{kernel} attention ceiling unavailable: {error!r}"}), flush=True)
            self.values[tokens] = dict(gemm_flops_per_s=gemm, sdpa_fwd_flops_per_s=best[0], sdpa_fwd_bwd_flops_per_s=best[1])
            print(json.dumps({"ceilings_tflops": {k: v / 1e12 for k, v in self.values[tokens].items()}, "tokens": tokens}), flush=True)
        return self.values[tokens]


def _floor(kind: str, rates: dict | None, case, saved_fraction: float = 0.0, batch: int = 1) -> float | None:
    if rates is None:
        return None
    from .flops import DiTShape, floor_seconds, sampling_step_flops, training_step_flops

    shape = DiTShape()
    t, _, _, tokens = _grid(case)
    if kind == "train":
        full = training_step_flops(shape, batch=1, frames=t, tokens=tokens, text_len=TEXT_LENGTH, lora_rank=LORA_RANK, recompute="full")
        kept = training_step_flops(shape, batch=1, frames=t, tokens=tokens, text_len=TEXT_LENGTH, lora_rank=LORA_RANK, recompute="save_attention")
        flops = {key: (1 - saved_fraction) * full[key] + saved_fraction * kept[key] for key in full}
    else:
        flops = sampling_step_flops(shape, batch=batch, frames=t, tokens=tokens, text_len=TEXT_LENGTH)
    return floor_seconds(flops, **rates)


class Report:
    qkv_layout = "as_is"  # --qkv-layout, recorded in every row

    def __init__(self, results_dir: Path, command: str):
        self.results_dir = results_dir
        self.date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.rows: list[dict] = []
        start_section(results_dir, self.date, _device_name(), command, COLUMNS, intro=(
            "Speed II (issue 23): full-size LongCat-Video DiT, random bf16 weights, LoRA rank 16; (a) default config, "
            "(b) + fp8_compute, (c) fp8 quality (eager, 480x832x29), (d) CFG sampling step, (e) distilled validation video, "
            "(f) compile once (2-block full-width DiT, 480x832x29). floor: frametuner/bench/flops.py at the ceilings measured in this run (bf16 GEMM)."
        ))

    def emit(self, part: str, kind: str, mode: str, case, **fields) -> dict:
        row = dict(part=part, case=_case_name(case) if not isinstance(case, str) else case, kind=kind, mode=mode, device=_device_name(),
                   torch=torch.__version__, date=self.date, git_commit=git_commit(), qkv_layout=self.qkv_layout, **fields)
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        s, peak, floor = row.get("s_per_step"), row.get("peak_gb"), row.get("floor_s")
        cells = [
            part, row["case"], kind, mode, f"{s:.3f}" if s is not None else "", f"{peak:.1f}" if peak is not None else "",
            f"{floor:.3f}" if floor else "", f"{s / floor:.2f}" if (s and floor) else "",
            row.get("notes", "") + (f"; {row['profile_line']}" if row.get("profile_line") else ""),
        ]
        append_row(row, cells, self.results_dir)
        return row


# ---------------------------------------------------------------------- a, b: training step
def _trainer(spec, model, output_dir: Path, case, **overrides):
    from ..training.trainer import Trainer
    from .train_step import OneBatch, bench_config

    t, h, w, _ = _grid(case)
    text, mask = _text(1, model.config.caption_channels)
    batch = {"latents": torch.randn(1, spec.geometry.channels, t, h, w, device=DEVICE), "text": text, "text_mask": mask, "num_cond_latents": 0}
    values = dict(family="longcat_video", flavour=FLAVOUR)
    if not _on_cuda():
        overrides.setdefault("mixed_precision", "no")
    config = bench_config(output_dir, values["family"], values["flavour"], **overrides)
    return Trainer(config, OneBatch(batch), model=model), batch


def _train_state(trainer) -> dict:
    model = trainer.accelerator.unwrap_model(trainer.model)
    saved = sum(getattr(block, "checkpoint_policy", None) == "save_attention" for block in model.blocks)
    hook = trainer.memory.activation_offload if trainer.memory is not None else None
    offload = hook is not None and (not hook.check_host_ram or all(hook.host_ram_ok.values()))
    return dict(saved_attention_blocks=saved, blocks=len(model.blocks), activation_offload=offload,
                activation_offload_auto=hook is not None and hook.check_host_ram, memory_mode=trainer.memory.mode if trainer.memory else "")


def bench_train_steps(trainer, batch, iters: int, deadline: float) -> dict:
    """Step 1 (compiles, auto policy measures), step 2 (keeps attention: recompiles), then timed steps."""
    _reset_peak()
    _, first = _wall(lambda: trainer.step(batch))
    _, second = _wall(lambda: trainer.step(batch))
    _reset_peak()
    times = _timed_until(lambda: trainer.step(batch), iters, deadline)
    return dict(times=times, s_per_step=statistics.median(times), peak_gb=_peak_gb(), first_step_s=first, second_step_s=second, **_train_state(trainer))


def part_ab(report: Report, rates: _Rates, parts: str, iters: int, deadline_a: float, budget_b: float, state: dict) -> None:
    spec, model = _build()
    (trainer, batch), setup = _wall(lambda: _trainer(spec, model, Path(tempfile.mkdtemp(prefix="speed2-")), CASE))
    _, _, _, tokens = _grid(CASE)
    ceilings = rates.at(tokens)
    try:
        if "a" in parts:
            result = bench_train_steps(trainer, batch, iters, deadline_a)
            result.update(_profiled(lambda: trainer.step(batch)))
            floor = _floor("train", ceilings, CASE, result["saved_attention_blocks"] / result["blocks"])
            notes = (f"default config ({result['memory_mode']}); attention saved in {result['saved_attention_blocks']}/{result['blocks']} blocks; "
                     f"activation offload {'on' if result['activation_offload'] else 'off'}{' (auto)' if result['activation_offload_auto'] else ''}; "
                     f"steps 1/2 {result['first_step_s']:.0f}/{result['second_step_s']:.0f} s (compile, auto policy); setup {setup:.0f} s")
            report.emit("a", "train", "default", CASE, floor_s=floor, notes=notes, setup_s=setup, **result)
        if "b" in parts and time.perf_counter() + NEEDS["b"] < state["deadline"]:
            model = trainer.accelerator.unwrap_model(trainer.model)
            converted, _ = _wall(lambda: _fp8(model))
            _reset_compiled()
            deadline = time.perf_counter() + budget_b
            _reset_peak()
            _, first = _wall(lambda: trainer.step(batch))
            if "a" not in parts:  # the auto policy's plan is made at the second step at a shape
                _wall(lambda: trainer.step(batch))
            _reset_peak()
            times = _timed_until(lambda: trainer.step(batch), iters, deadline)
            result = dict(times=times, s_per_step=statistics.median(times), peak_gb=_peak_gb(), first_step_s=first, fp8_layers=converted, **_train_state(trainer))
            result.update(_profiled(lambda: trainer.step(batch)))
            floor = _floor("train", ceilings, CASE, result["saved_attention_blocks"] / result["blocks"])
            notes = (f"default config + fp8_compute ({FP8_SCALING}, {converted} frozen Linears); attention saved in {result['saved_attention_blocks']}/{result['blocks']} blocks "
                     f"(the plan of a); first step {first:.0f} s (compile); floor = the bf16 floor")
            mode = "fp8_compute" + ("" if FP8_SCALING == "rowwise" else f"-{FP8_SCALING}") + ("" if FP8_LAYERS == "all" else f"-{FP8_LAYERS}")
            report.emit("b", "train", mode, CASE, floor_s=floor, notes=notes, fp8_compute_layers=FP8_LAYERS, **result)
        elif "b" in parts:
            report.emit("b", "train", "fp8_compute", CASE, skipped="not enough time left", notes="skipped: not enough time left")
    finally:
        trainer.accelerator.free_memory()
        del trainer.model, trainer.optimizer, trainer, model
        _reset_compiled()


# ---------------------------------------------------------------------- c: fp8 quality
def part_c(report: Report, batches: int = 5, variants: list[str] | None = None) -> None:
    from ..lora import add_lora
    from ..training.flow_matching import flow_matching_loss

    spec, model = _build()
    model.requires_grad_(False)
    torch.manual_seed(0)
    add_lora(model, rank=LORA_RANK, alpha=LORA_RANK, family=spec)
    generator = torch.Generator(device="cpu").manual_seed(1)
    lora = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            with torch.no_grad():
                param.data = (0.02 * torch.randn(param.shape, generator=generator)).to(device=DEVICE, dtype=torch.float32)
            param.requires_grad_(True)
            lora[name] = param
    model.enable_gradient_checkpointing("full")
    model.train()
    t, h, w, _ = _grid(QUALITY_CASE)
    inputs_list = []
    for index in range(batches):
        g = torch.Generator(device="cpu").manual_seed(100 + index)
        latents = torch.randn(1, spec.geometry.channels, t, h, w, generator=g).to(DEVICE)
        noise = torch.randn(latents.shape, generator=g).to(DEVICE)
        sigma = torch.rand(1, generator=g).to(DEVICE)
        text = torch.randn(1, VALID_TOKENS + 1, model.config.caption_channels, generator=g).to(DEVICE, _dtype())
        mask = torch.zeros(1, VALID_TOKENS + 1, dtype=torch.int64, device=DEVICE)
        mask[:, :VALID_TOKENS] = 1
        inputs_list.append((latents, noise, sigma, text * mask[..., None], mask))

    def run() -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for latents, noise, sigma, text, mask in inputs_list:
            inputs = spec.training_inputs(latents, noise, sigma)
            with torch.autocast(torch.device(DEVICE).type, dtype=_dtype(), enabled=_on_cuda()):
                prediction = spec.training_forward(model, inputs, text, mask)
                loss = flow_matching_loss(prediction, inputs)
            loss.backward()
            grads = torch.cat([p.grad.detach().float().flatten() for p in lora.values()]).cpu()
            for p in lora.values():
                p.grad = None
            out.append((prediction.detach().float().cpu(), grads))
        return out

    from torch import _dynamo

    from ..memory.fp8 import converts_to_fp8, revert_fp8_compute

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        # float64: torch's float32 cosine_similarity over tens of millions of entries drifts past 1
        a, b = a.double(), b.double()
        return (a @ b / (a.norm() * b.norm())).item()

    eligible = {name: module.in_features * module.out_features for name, module in model.blocks[0].named_modules() if converts_to_fp8(module, name)}
    with _dynamo.config.patch(disable=True):  # eager: both modes run the same kernels apart from the matmuls
        reference, bf16_s = _wall(run)
        for variant in variants or list(QUALITY_VARIANTS):
            include = QUALITY_VARIANTS[variant]
            converted = _fp8(model, include=include or (lambda name: True))  # "all" whatever --fp8-layers says
            fp8, fp8_s = _wall(run)
            share = sum(size for name, size in eligible.items() if include is None or include(name)) / sum(eligible.values())
            revert_fp8_compute(model)
            errors = [((p8 - p).norm() / p.norm()).item() for (p, _), (p8, _) in zip(reference, fp8)]
            cosines = [cosine(g8, g) for (_, g), (_, g8) in zip(reference, fp8)]
            mode = f"fp8_compute-{FP8_SCALING}-eager" + ("" if include is None else f"-{variant}")
            report.emit(
                "c", "fp8_quality", mode, QUALITY_CASE, output_rel_l2=errors, grad_cosine=cosines, layers=variant,
                output_rel_l2_mean=statistics.mean(errors), output_rel_l2_max=max(errors), grad_cosine_mean=statistics.mean(cosines),
                grad_cosine_min=min(cosines), fp8_layers=converted, fp8_gemm_share=share, bf16_s=bf16_s, fp8_s=fp8_s,
                notes=(f"{variant} ({converted} Linears, {share:.0%} of the block GEMM FLOPs in float8); {batches} random batches (noise, sigma, text), "
                       f"same weights, LoRA rank 16 random non-zero: DiT output rel. L2 error mean {statistics.mean(errors):.4f} max {max(errors):.4f}; "
                       f"LoRA gradient cosine (float64) mean {statistics.mean(cosines):.5f} min {min(cosines):.5f} (goal <= 0.03, >= 0.99); "
                       f"eager {QUALITY_CASE[2]} frames to save time"),
            )
            del fp8
    del model, lora, reference
    _reset_compiled()


# ---------------------------------------------------------------------- d, e: sampling
def _sample_step(spec, model, latents, text, mask):
    from ..sampling import denoise

    return lambda: denoise(model, latents, text[1:], mask[1:], text[:1], mask[:1], steps=1, guidance=4.0)


def part_de(report: Report, rates: _Rates, parts: str, iters: int, state: dict) -> None:
    from ..memory.fp8 import revert_fp8_compute

    spec, model = _build()
    model.eval().requires_grad_(False)
    if _on_cuda():
        model.compile_blocks()
    t, h, w, tokens = _grid(CASE)
    ceilings = rates.at(tokens)
    floor = _floor("sample", ceilings, CASE, batch=2)
    text, mask = _text(2, model.config.caption_channels)
    latents = torch.randn(1, spec.geometry.channels, t, h, w, device=DEVICE)
    mode, mode_scaling = "bf16", None
    with torch.no_grad():
        if "d" in parts:
            results = {}
            scalings = D_SCALINGS or [FP8_SCALING]
            for variant, scaling in [("bf16", None)] + [("fp8_compute", scaling) for scaling in scalings]:
                if time.perf_counter() + 30 > state["deadline"]:
                    report.emit("d", "sample_cfg", variant, CASE, skipped="not enough time left", notes="skipped: not enough time left")
                    break
                try:
                    extra = {}
                    if variant == "fp8_compute":
                        if mode == "fp8_compute":  # an earlier scaling: back to plain Linears first
                            revert_fp8_compute(model)
                        extra["fp8_layers"] = _fp8(model, scaling)
                        extra["fp8_scaling"] = scaling
                        _reset_compiled()
                    step = _sample_step(spec, model, latents, text, mask)
                    _reset_peak()
                    _, first = _wall(step)
                    times = _timed(step, iters)
                    mode, mode_scaling = variant, scaling
                    results[variant] = statistics.median(times)
                    notes = f"batch 2 (CFG), {'compiled' if _on_cuda() else 'eager'}; first step {first:.0f} s"
                    if variant == "fp8_compute":
                        notes += f"; {scaling} scales" + (f"; {results['bf16'] / results[variant]:.2f}x bf16" if "bf16" in results else "")
                    peak = _peak_gb()
                    extra.update(_profiled(step))
                    label = variant if scaling in (None, "rowwise") else f"{variant}-{scaling}"
                    if variant == "fp8_compute" and FP8_LAYERS != "all":
                        label += f"-{FP8_LAYERS}"
                    report.emit("d", "sample_cfg", label, CASE, s_per_step=results[variant], times=times, peak_gb=peak, floor_s=floor, first_step_s=first, notes=notes, **extra)
                except Exception as error:
                    traceback.print_exc()
                    report.emit("d", "sample_cfg", variant, CASE, error=repr(error)[:500], notes=f"failed: {repr(error)[:200]}")
                    if variant == "fp8_compute":  # (e) then renders in bf16
                        revert_fp8_compute(model)
                        _reset_compiled()
                        break
        if "e" in parts and time.perf_counter() + NEEDS["e"] < state["deadline"]:
            try:
                if "d" not in parts and state.get("e_mode", "fp8_compute") == "fp8_compute":
                    _fp8(model)  # (e) alone: the fast path, as a run with fp8_compute validates
                    mode, mode_scaling = "fp8_compute", FP8_SCALING
                bench_distilled_validation(report, spec, model, text, mask, mode, mode_scaling)
            except Exception as error:
                traceback.print_exc()
                report.emit("e", "validation_video", mode, CASE, error=repr(error)[:500], notes=f"failed: {repr(error)[:200]}")
        elif "e" in parts:
            report.emit("e", "validation_video", mode, CASE, skipped="not enough time left", notes="skipped: not enough time left")
    del model
    _reset_compiled()


def _random_distill_lora(spec, model, rank: int):
    from ..lora.adapters import resolve_lora_targets
    from ..lora.delta import LoraWeights, LowRankDelta

    generator = torch.Generator(device=DEVICE).manual_seed(5)
    deltas = {}
    for name in resolve_lora_targets(model, spec.default_lora_targets):
        layer = model.get_submodule(name)
        down = 0.01 * torch.randn(rank, layer.in_features, generator=generator, device=DEVICE, dtype=_dtype())
        up = 0.01 * torch.randn(layer.out_features, rank, generator=generator, device=DEVICE, dtype=_dtype())
        deltas[name] = LowRankDelta(down, up, 1.0)
    return LoraWeights(deltas, {"rank": str(rank)})


def _random_vae(dtype):
    from diffusers import AutoencoderKLWan

    try:
        from ..models.encoders.video_vae import VideoVAE
    except ImportError:
        from ..models.longcat_video.vae import VideoVAE
    torch.manual_seed(0)
    config = {} if FLAVOUR == "final" else dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    vae = AutoencoderKLWan(**config).to(device=DEVICE, dtype=dtype).eval().requires_grad_(False)  # default: the Wan 2.1 VAE
    return VideoVAE(vae, identity="random-wan-vae", dtype=dtype)


def bench_distilled_validation(report: Report, spec, model, text, mask, mode: str, scaling: str | None = None) -> None:
    from ..lora import apply_lora
    from ..models.family import TextConditioning
    from ..sampling import denoise, render_validation
    from ..sampling.pipeline import VideoSettings

    height, width, frames = CASE
    handle, lora_s = _wall(lambda: apply_lora(model, _random_distill_lora(spec, model, DISTILL_RANK)))
    vae, vae_load_s = _wall(lambda: _random_vae(_dtype()))
    conditioning = TextConditioning(text[1:], mask[1:], text[:1], mask[:1])
    video = VideoSettings(height=height, width=width, num_frames=frames, distill=True, seed=0)
    resolved = video.resolved(spec)
    t, h, w, _ = _grid(CASE)
    noise = torch.randn(1, spec.geometry.channels, t, h, w, device=DEVICE)
    # Warm-up: one distilled step at batch 1 (guidance 1) compiles the blocks for this shape.
    _, warmup_s = _wall(lambda: denoise(model, noise, text[1:], mask[1:], None, None, steps=1, guidance=resolved.guidance))
    _reset_peak()
    folder = Path(tempfile.mkdtemp(prefix="speed2-validation-"))
    decode_times = []
    decode = vae.decode

    def timed_decode(*args, **kwargs):  # the VAE's share of the video, timed inside render_validation
        result, seconds = _wall(lambda: decode(*args, **kwargs))
        decode_times.append(seconds)
        return result

    vae.decode = timed_decode
    outputs, total = _wall(lambda: render_validation(
        model, vae, spec=spec, validation_dir=folder, step=0, prompt_index=0, prompt="speed2", text=conditioning,
        video=video, device=torch.device(DEVICE),
    ))
    decode_s = sum(decode_times)
    handle.remove()
    report.emit(
        "e", "validation_video", mode, CASE, total_s=total, s_per_step=(total - decode_s) / resolved.steps, peak_gb=_peak_gb(),
        steps=resolved.steps, guidance=resolved.guidance, warmup_s=warmup_s, decode_s=decode_s, lora_apply_s=lora_s, vae_load_s=vae_load_s,
        video=str(outputs.video) if outputs is not None else None,
        notes=(f"{frames}-frame video: {total:.1f} s (denoise {resolved.steps} steps, guidance {resolved.guidance:g}, distilled schedule, + VAE decode "
               f"~{decode_s:.1f} s + mp4); random rank-{DISTILL_RANK} distill LoRA stacked; {mode}{f' ({scaling})' if scaling else ''}; compile warm-up {warmup_s:.0f} s apart (goal <= 75 s)"),
    )
    del vae


# ---------------------------------------------------------------------- f: compile once
def compile_once_child(case, depth: int) -> None:
    """Subprocess body: build, train one compiled step, print the time since the process started, exit."""
    import logging

    from torch._dynamo.utils import counters

    bypasses: list[str] = []  # why a compile cache was bypassed (inductor's and AOTAutograd's own log lines)

    class _Bypass(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "ypass" in message and message[:300] not in bypasses:
                bypasses.append(message[:300])

    for name in ("torch._inductor.codecache", "torch._functorch._aot_autograd.autograd_cache"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(_Bypass())
    phases: dict[str, float] = {}

    def phase_done(name: str) -> None:  # seconds since the previous phase ended
        phases[name] = time.perf_counter() - STARTED - sum(phases.values())

    phase_done("imports_s")
    spec, model = _build(depth=depth)
    _sync()
    phase_done("build_s")
    trainer, batch = _trainer(spec, model, Path(tempfile.mkdtemp(prefix="speed2-child-")), case, compile_transformer=_on_cuda())
    phase_done("trainer_s")
    trainer.step(batch)
    _sync()
    phase_done("step1_s")
    caches = {f"{group}.{key}": value for group in ("inductor", "aot_autograd") for key, value in counters[group].items() if "cache" in key}
    print("STEP1_DONE " + json.dumps({"child_s": time.perf_counter() - STARTED, **phases, "caches": caches, "bypasses": bypasses[:4]}), flush=True)
    os._exit(0)


def part_f(report: Report, timeout: float) -> None:
    cache = Path(tempfile.mkdtemp(prefix="speed2-compile-cache-"))
    env = {key: value for key, value in os.environ.items() if key not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["FRAMETUNER_COMPILE_CACHE"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = (
        "import sys, frametuner.bench.speed2 as s; "
        f"s.DEVICE={DEVICE!r}; s.FLAVOUR={FLAVOUR!r}; s.compile_once_child({tuple(COMPILE_ONCE_CASE)!r}, {COMPILE_ONCE_DEPTH})"
    )
    runs = []
    for run in (1, 2):
        started = time.perf_counter()
        process = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=max(10, timeout / 2))
        wall = time.perf_counter() - started
        line = [l for l in process.stdout.splitlines() if l.startswith("STEP1_DONE ")]
        if not line:
            raise RuntimeError(f"run {run} did not finish step 1 (rc {process.returncode}): {process.stderr[-1500:]}")
        runs.append(dict(wall_s=wall, **json.loads(line[0].split(" ", 1)[1])))
        print(json.dumps({"compile_once_run": run, **runs[-1]}), flush=True)
    files = sum(1 for _ in cache.rglob("*") if _.is_file())
    ratio = runs[0]["wall_s"] / runs[1]["wall_s"]
    report.emit(
        "f", "compile_once", "default", f"{_case_name(COMPILE_ONCE_CASE)}-{COMPILE_ONCE_DEPTH}blocks", first_s=runs[0]["wall_s"], second_s=runs[1]["wall_s"],
        ratio=ratio, runs=runs, cache_files=files,
        notes=(f"process start -> end of step 1: {runs[0]['wall_s']:.1f} s, then {runs[1]['wall_s']:.1f} s with the cache ({ratio:.2f}x; goal >= 2x); "
               f"{COMPILE_ONCE_DEPTH}-block full-width DiT (one block graph is what compiles), {files} cache files"),
    )


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of f,a,b,c,d,e, run in the order given (a with b, d with e)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="whole run; a part that cannot start in time is skipped with a row")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per measurement (after warm-up)")
    parser.add_argument("--quality-batches", type=int, default=5)
    parser.add_argument("--fp8-scaling", default="rowwise", help="fp8_compute_scaling of b, c, e (rowwise or tensorwise); a list (rowwise,tensorwise): d times each, b, c, e use the first")
    parser.add_argument("--e-mode", choices=["fp8_compute", "bf16"], default="fp8_compute", help="(e) without (d): the validation video's compute (with d: d's last mode)")
    parser.add_argument("--profile", action="store_true", help="a, b, d: profile one more step and add where its GPU time goes to the row (frametuner/bench/kernel_profile.py)")
    parser.add_argument("--quality-variants", default=",".join(DEFAULT_QUALITY_VARIANTS), help=f"(c): which layer groups, of {','.join(QUALITY_VARIANTS)}")
    parser.add_argument("--fp8-layers", choices=list(FP8_COMPUTE_LAYERS), default=_default_fp8_layers(),
                        help="fp8_compute_layers of b, d, e (default: the config's; c measures its groups itself)")
    parser.add_argument("--qkv-layout", choices=["as_is", "contiguous"], default=None,
                        help="hand SDPA q, k, v as the model makes them or contiguous per head (default: the model's default)")
    parser.add_argument("--results-dir", default=str(REPO / "bench"))
    args = parser.parse_args(argv)
    from ..models.longcat_video import attention as _attention

    if args.qkv_layout is not None:
        _attention.SDPA_CONTIGUOUS_INPUTS = args.qkv_layout == "contiguous"
    Report.qkv_layout = "contiguous" if _attention.SDPA_CONTIGUOUS_INPUTS else "as_is"
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if _on_cuda() and not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    parts = "".join(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    started = time.perf_counter()
    global FP8_SCALING, PROFILE, D_SCALINGS, FP8_LAYERS
    FP8_LAYERS = args.fp8_layers
    variants = [value.strip() for value in args.quality_variants.split(",") if value.strip()]
    if not variants or set(variants) - set(QUALITY_VARIANTS):
        parser.error(f"--quality-variants: a comma-separated subset of {','.join(QUALITY_VARIANTS)}")
    D_SCALINGS = [value.strip() for value in args.fp8_scaling.split(",") if value.strip()]
    if not D_SCALINGS or set(D_SCALINGS) - {"rowwise", "tensorwise"}:
        parser.error("--fp8-scaling: rowwise, tensorwise or both (comma-separated)")
    FP8_SCALING = D_SCALINGS[0]
    PROFILE = args.profile
    state = {"deadline": started + args.budget_s, "e_mode": args.e_mode}
    command = "python bench/speed2.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = Report(Path(args.results_dir), command)
    rates = _Rates()
    failures = 0

    def left() -> float:
        return state["deadline"] - time.perf_counter()

    def attempt(part: str, fn) -> None:
        nonlocal failures
        if left() < NEEDS[part]:
            report.emit(part, "skipped", "-", "-", skipped=f"{left():.0f} s left, needs {NEEDS[part]} s", notes=f"skipped: {left():.0f} s left")
            return
        part_started = time.perf_counter()
        try:
            fn()
        except Exception as error:
            failures += 1
            traceback.print_exc()
            report.emit(part, "failed", "-", "-", error=repr(error)[:800], notes=f"failed: {repr(error)[:200]}")
            _reset_compiled()
        print(json.dumps({"part": part, "seconds": time.perf_counter() - part_started, "elapsed": time.perf_counter() - started}), flush=True)

    def ab():
        rest = left()  # a: ~40% of what is left (its timed steps stop there), b: ~20%
        part_ab(report, rates, parts, args.iters, time.perf_counter() + max(NEEDS["a"], rest * 0.4),
                budget_b=max(NEEDS["b"], rest * 0.2), state=state)

    # Parts run in the order given; a and b share one trainer, d and e one model (run together
    # where the first of the pair comes).
    done = set()
    for part in parts:
        if part in done:
            continue
        if part == "f":
            attempt("f", lambda: part_f(report, timeout=min(240.0, left() - 5)))
        elif part in "ab":
            attempt(part, ab)
            done |= set("ab")
        elif part == "c":
            attempt("c", lambda: part_c(report, args.quality_batches, variants))
        elif part in "de":
            attempt(part, lambda: part_de(report, rates, parts, max(1, args.iters - 1), state))
            done |= set("de")
        done.add(part)
    print(json.dumps({"done_s": time.perf_counter() - started, "rows": len(report.rows), "failures": failures}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
