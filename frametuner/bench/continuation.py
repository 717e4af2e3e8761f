"""Benchmark of video continuation on the full-size (13.6B) LongCat-Video DiT, random bf16 weights.

1. One continuation sampling step at 480x832x93 with 13 conditioning frames (4 of the 24
   latent frames clean): the condition's KV cache (the DiT sees the 20 noisy latent frames,
   the 4 condition frames' keys/values are reused) vs no cache (the DiT sees all 24 frames
   every step). Reported: s/step (one CFG step: DiT on [negative, positive], CFG-Zero*,
   Euler), peak GPU memory, the cache's build time and size, and the cache's saving over a
   whole 50-step (56 DiT calls with enhance_hf) continuation.
2. ``--long-video``: a one-minute long video (11 segments: text-to-video, then 10
   continuations of 93 frames conditioned on 13; 893 frames at 15 fps) through
   ``frametuner.sampling.long_video`` with the distilled setting (16 steps, guidance 1,
   KV cache on, enhance_hf off as the distilled schedule requires), random-weight DiT and
   Wan VAE, a stub text encoder (random 120-token prompts). One row per segment as it
   finishes (a run cut off by a time limit keeps them), then the total.

Rows go to ``bench/results.jsonl`` and ``bench/RESULTS.md``; every result is also printed
as a JSON line.

    python bench/continuation.py                          # the step comparison (eager), ~2 min on an H100
    python bench/continuation.py --compile                # regional compile (adds ~1 min per shape)
    python bench/continuation.py --offload                # also the KV cache in host memory
    python bench/continuation.py --long-video --skip-step # the one-minute video alone (~15 min eager)
    python bench/continuation.py --long-video --long-segments 3  # a shorter long video
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from .results import REPO, append_row, git_commit, start_section, timed

TEXT_LENGTH, VALID_TOKENS = 512, 120
CASE = (480, 832, 93)
COND_FRAMES = 13
COLUMNS = ("case", "kind", "mode", "s/step", "peak GB", "notes")
# The CPU smoke test (tests/bench) runs this module on the tiny model: it sets these.
DEVICE = "cuda"
FLAVOUR = "final"


def _on_cuda() -> bool:
    return torch.device(DEVICE).type == "cuda"


def _sync() -> None:
    if _on_cuda():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if _on_cuda():
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if _on_cuda() else float("nan")


def _timed(fn, warmup: int, iters: int) -> list[float]:
    return timed(fn, warmup, iters, _on_cuda())


def _device_name() -> str:
    return torch.cuda.get_device_name() if _on_cuda() else str(DEVICE)


def emit(row: dict, results_dir: Path) -> None:
    print(json.dumps(row), flush=True)
    cells = [row["case"], row["kind"], row["mode"], f"{row['s_per_step']:.3f}" if row.get("s_per_step") is not None else "", f"{row.get('peak_gb', float('nan')):.1f}", row.get("notes", "")]
    append_row(row, cells, results_dir)


def base_row(kind: str, mode: str) -> dict:
    return dict(
        case="x".join(map(str, CASE)) + f"+cond{COND_FRAMES}", kind=kind, mode=mode, device=_device_name(),
        torch=torch.__version__, date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), git_commit=git_commit(),
    )


def build(compile_blocks: bool):
    from ..models.registry import load_spec

    spec = load_spec("longcat_video")
    model = spec.build_transformer(flavour=FLAVOUR, device=DEVICE, dtype=torch.bfloat16 if _on_cuda() else torch.float32).eval()
    model.text_virtual_length = TEXT_LENGTH  # prompts passed as 121 rows standing for 512 (exact)
    if compile_blocks:
        model.compile_blocks()
    return spec, model


def text_inputs(batch: int, channels: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    text = torch.randn(batch, VALID_TOKENS + 1, channels, device=DEVICE, dtype=dtype)
    mask = torch.zeros(batch, VALID_TOKENS + 1, dtype=torch.int64, device=DEVICE)
    mask[:, :VALID_TOKENS] = 1
    return text * mask[..., None], mask


# ---------------------------------------------------------------------- 1. one step
def bench_step(spec, model, use_kv_cache: bool, warmup: int, iters: int, offload: bool = False) -> dict:
    from ..models.family import DenoiseSettings, TextConditioning

    height, width, frames = CASE
    latent_shape = spec.geometry.latent_shape(frames, height, width)
    k = spec.geometry.latent_frames(COND_FRAMES)
    text, mask = text_inputs(2, model.config.caption_channels, next(model.parameters()).dtype)
    conditioning = TextConditioning(text[1:].unsqueeze(1), mask[1:], text[:1].unsqueeze(1), mask[:1])
    latents = torch.randn(1, *latent_shape, device=DEVICE)
    settings = DenoiseSettings(steps=50, guidance=4.0, shift=12.0, num_cond_latents=k, options={"use_kv_cache": use_kv_cache, "offload_kv_cache": offload})
    _reset_peak()
    with torch.no_grad():
        _sync()
        started = time.perf_counter()
        loop = spec.sampling_loop(model, latents, conditioning, settings)  # builds the cache (kv)
        _sync()
        setup = time.perf_counter() - started
        cache_gb = loop.cache.nbytes / 2**30 if loop.cache is not None else 0.0

        def step():
            loop.step(latents, loop.predict(latents, 1), 1)  # a mid-schedule step (index 1 of 50)

        started = time.perf_counter()
        step()
        _sync()
        first = time.perf_counter() - started
        times = _timed(step, warmup, iters)
        peak = _peak_gb()  # before the build timing below, which holds a second cache
        build_times = []
        if use_kv_cache:  # the cache build alone, timed like a step
            loop.cache = None
            build_times = _timed(lambda: model.build_condition_cache(latents[:, :, :k]), 1, 2)
    loop.close()
    del loop, latents, text, mask
    t, h, w = latent_shape[1:]
    return dict(
        times=times, s_per_step=statistics.median(times), peak_gb=peak, first_step_s=first, setup_s=setup,
        cache_build_s=statistics.median(build_times) if build_times else None, cache_gb=cache_gb,
        num_cond_latents=k, noisy_tokens=(t - k) * (h // 2) * (w // 2), tokens=t * (h // 2) * (w // 2),
    )


# ---------------------------------------------------------------------- 2. one minute
class _StubTextEncoder:
    """Random 120-token prompts in umT5-XXL's shape (the 5.7B encoder runs once per video)."""

    def __init__(self, channels: int, dtype: torch.dtype):
        self.channels, self.dtype = channels, dtype

    def encode(self, prompts):
        generator = torch.Generator().manual_seed(0)
        embeds = torch.zeros(len(prompts), TEXT_LENGTH, self.channels)
        mask = torch.zeros(len(prompts), TEXT_LENGTH, dtype=torch.int64)
        embeds[:, :VALID_TOKENS] = torch.randn(len(prompts), VALID_TOKENS, self.channels, generator=generator)
        mask[:, :VALID_TOKENS] = 1
        return embeds.to(DEVICE, self.dtype), mask.to(DEVICE)


class _BenchFamily:
    """The LongCat family with random-weight components (nothing is downloaded)."""

    def __init__(self, spec, model):
        self._spec, self._model = spec, model

    def __getattr__(self, name):
        return getattr(self._spec, name)

    def load_transformer(self, root, *, dtype, device="cpu", prepare_block=None):
        return self._model

    def load_text_encoder(self, root, *, device="cpu", dtype=torch.float32):
        return _StubTextEncoder(self._model.config.caption_channels, dtype)

    def load_vae(self, root, *, device="cpu", dtype=torch.float32):
        from diffusers import AutoencoderKLWan

        from ..models.longcat_video import VideoVAE

        torch.manual_seed(0)
        config = {} if FLAVOUR == "final" else dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
        vae = AutoencoderKLWan(**config).to(device=device, dtype=dtype).eval().requires_grad_(False)  # default: Wan 2.1 VAE
        return VideoVAE(vae, identity="random-wan-vae", dtype=dtype)


class _OutOfBudget(Exception):
    """Raised from the segment callback when the next segment would not fit this run's budget."""


def bench_long_video(spec, model, segments: int, steps: int, results_dir: Path, mode: str, *, resume: bool = False, budget_s: float | None = None) -> None:
    """Time a long video segment by segment. ``resume`` keeps the segment folder (and the
    times of the segments already made, in ``times.json``) so a video longer than one
    command's time limit is made over several runs; ``budget_s`` stops cleanly after a
    segment when another would not fit. The total row is written once every segment exists:
    the sum of the segments' own times (model setup excluded, each run's setup is not video work)."""
    from ..models.registry import family_info
    from ..sampling.long_video import continuation_options, long_video_frames, sample_long_video
    from ..sampling.pipeline import SampleRequest

    height, width, frames = CASE
    work = Path("/tmp/frametuner-bench/long-video")
    if not resume:
        shutil.rmtree(work, ignore_errors=True)  # a leftover segment folder would be resumed, not timed
    work.mkdir(parents=True, exist_ok=True)
    times_file = work / "times.json"
    recorded = json.loads(times_file.read_text()) if resume and times_file.exists() else {}
    options = continuation_options(family_info("longcat_video"), distill=True)
    request = SampleRequest(
        prompt="a red fox running through snow", height=height, width=width, num_frames=frames, steps=steps,
        guidance=1.0, distill=True, seed=0, output=work / "long.mp4", cond_frames=COND_FRAMES,
        segments=segments - 1, sampler_options=options,
    )
    seconds = []
    _reset_peak()

    run_started = time.perf_counter()

    def on_segment(index, total, elapsed):
        seconds.append(elapsed)
        recorded[str(index)] = elapsed
        times_file.write_text(json.dumps(recorded))
        row = base_row("long_video_segment", mode)
        row.update(segment=index + 1, segments=total, s_per_step=elapsed / steps, segment_s=elapsed, peak_gb=_peak_gb(),
                   steps=steps, sampler_options=options, notes=f"segment {index + 1}/{total}: {elapsed:.1f} s ({'text-to-video' if index == 0 else 'continuation'}, {steps} steps, guidance 1, incl. VAE encode/decode)")
        emit(row, results_dir)
        if budget_s is not None and index + 1 < total and time.perf_counter() - run_started + 1.2 * max(seconds) > budget_s:
            raise _OutOfBudget(f"stopping after segment {index + 1}/{total}: another would pass the {budget_s:.0f} s budget; rerun with --long-resume")

    started = time.perf_counter()
    dtype = next(model.parameters()).dtype
    try:
        sample_long_video(request, spec=_BenchFamily(spec, model), root="random", device=DEVICE, dtype=dtype, attention="sdpa", progress=False, on_segment=on_segment)
    except _OutOfBudget as stop:
        print(json.dumps({"kind": "long_video", "stopped": str(stop), "segments_done": sorted(int(i) + 1 for i in recorded)}), flush=True)
        return
    total = time.perf_counter() - started
    if resume and len(recorded) == segments:
        seconds = [recorded[str(i)] for i in range(segments)]
        total = sum(seconds)
    row = base_row("long_video", mode)
    total_frames = long_video_frames(frames, COND_FRAMES, segments - 1)
    row.update(
        segments=segments, frames=total_frames, video_s=total_frames / 15, total_s=total, s_per_step=None, segment_s=seconds,
        peak_gb=_peak_gb(), steps=steps, sampler_options=options,
        notes=f"{segments} segments, {total_frames} frames ({total_frames / 15:.1f} s at 15 fps) in {total:.0f} s incl. mp4 writing; distilled 16 steps, guidance 1, KV cache",
    )
    emit(row, results_dir)


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile", action="store_true", help="regionally compile the DiT blocks (first step at each shape compiles)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--skip-step", action="store_true", help="skip the KV-cache step comparison")
    parser.add_argument("--offload", action="store_true", help="also time the step with the KV cache in host memory (offload_kv_cache)")
    parser.add_argument("--long-video", action="store_true", help="also time a long video (default 11 segments = one minute)")
    parser.add_argument("--long-segments", type=int, default=11, help="segments of the long video, the first included (11 = one minute at 15 fps)")
    parser.add_argument("--long-steps", type=int, default=16, help="steps per segment (16 = the distilled setting)")
    parser.add_argument("--long-resume", action="store_true", help="continue the long video's segment folder of an earlier run (the total sums every segment's time)")
    parser.add_argument("--long-budget-s", type=float, default=None, help="stop cleanly after a segment when the next would pass this many seconds of the run")
    parser.add_argument("--results-dir", default=str(REPO / "bench"))
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if _on_cuda() and not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    results_dir = Path(args.results_dir)
    mode = "compiled" if args.compile else "eager"
    command = "python bench/continuation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start_section(results_dir, dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), _device_name(), command, COLUMNS,
                  intro="Video continuation (issue 21): one CFG sampling step with 13 conditioning frames, KV cache vs none; long video with the distilled setting.")
    started = time.perf_counter()
    spec, model = build(args.compile)
    print(json.dumps({"setup_s": time.perf_counter() - started, "device": _device_name()}), flush=True)
    failures = 0
    if not args.skip_step:
        results = {}
        variants = [(True, False), (False, False)] + ([(True, True)] if args.offload else [])
        for use_kv_cache, offload in variants:
            label = f"{'kv' if use_kv_cache else 'nokv'}{'-offload' if offload else ''}-{mode}"
            try:
                result = bench_step(spec, model, use_kv_cache, args.warmup, args.iters, offload)
            except Exception as error:  # keep going: the other variant is still worth having
                failures += 1
                traceback.print_exc()
                print(json.dumps({"kind": "sample_vc_step", "mode": label, "error": repr(error)}), flush=True)
                _reset_peak()
                continue
            if not offload:
                results[use_kv_cache] = result
            row = base_row("sample_vc_step", label)
            row.update({key: value for key, value in result.items()})
            notes = [f"{result['noisy_tokens'] if use_kv_cache else result['tokens']} tokens through the DiT", f"first step {result['first_step_s']:.1f} s"]
            if use_kv_cache:
                notes.append(f"cache {result['cache_gb']:.1f} GB built in {result['cache_build_s']:.2f} s")
            if offload and True in results:
                row["x_kv"] = result["s_per_step"] / results[True]["s_per_step"]
                notes.append(f"{row['x_kv']:.2f}x the cached step with the cache on the GPU")
            if not use_kv_cache and True in results:
                kv = results[True]
                row["x_kv"] = result["s_per_step"] / kv["s_per_step"]
                for calls in (50, 56):
                    saved = calls * (result["s_per_step"] - kv["s_per_step"]) - kv["cache_build_s"]
                    notes.append(f"{calls} calls: cache saves {saved:.0f} s")
                notes.append(f"{row['x_kv']:.2f}x the cached step")
            row["notes"] = "; ".join(notes)
            emit(row, results_dir)
    if args.long_video:
        try:
            bench_long_video(spec, model, args.long_segments, args.long_steps, results_dir, mode, resume=args.long_resume, budget_s=args.long_budget_s)
        except Exception as error:
            failures += 1
            traceback.print_exc()
            print(json.dumps({"kind": "long_video", "error": repr(error)}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
