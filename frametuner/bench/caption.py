"""Captioning throughput of Qwen2.5-VL-7B (random weights) on one GPU: clips/s, bf16 and int8.

The model has Qwen2.5-VL-7B-Instruct's documented architecture (its config.json: text
hidden 3584, 28 layers, 28 heads, 4 key/value heads, FFN 18944, vocabulary 152064, mRoPE
sections 16/24/24, rope theta 1e6; vision tower 32 blocks of width 1280, 16 heads, FFN 3420,
patch 14, merge 2, temporal patch 2, window 112, full attention in blocks 7/15/23/31, output
3584), built on the meta device and materialised on the GPU with random weights (no
download). Each clip is 16 frames of 480x832 video, which the captioner's pixel budget
resizes to 476x840 (8 x 34 x 60 patches: 4080 visual tokens), plus the default instruction;
random weights never stop talking, so every clip generates exactly ``--tokens`` tokens
(min_new_tokens = max_new_tokens). The measured call is the captioner's own
(``QwenVLCaptioner.caption``: processor, generate, decode); decoding the clips from disk
(PyAV, in a background thread one batch ahead) is not part of it.

Modes: ``bf16`` and ``int8`` (the language model's Linear weights in int8 through
optimum-quanto, as ``--quantize int8``). Each mode: one warm-up batch, then ``--batches``
timed batches; a JSON line per measurement on stdout, rows appended to
bench/results.jsonl and bench/RESULTS.md as soon as they are measured; ``--budget_s`` stops
starting new work past that many seconds so the whole run stays under 4 minutes.

    python bench/caption.py [--batch_size 8] [--frames 16] [--tokens 200] [--modes bf16,int8]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .results import REPO, append_row, git_commit, start_section

TEXT_7B = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)
VISION_7B = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
)
# --smoke: the same code on a CPU in seconds (CI), with a tiny model of the same architecture
TEXT_SMOKE = dict(TEXT_7B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})
VISION_SMOKE = dict(VISION_7B, depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1])
COLUMNS = ("mode", "batch", "frames", "size", "new tokens", "s/batch", "clips/s", "peak GB", "setup s")


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def build_processor_folder(folder: Path) -> None:
    """Tokenizer (the tiny captioner's word-level one: prompt lengths like the real tokenizer's
    word count), chat template and the 7B's preprocessor config, for ``build_processor``."""
    from frametuner.caption.tiny import QWEN_VL_CHAT_TEMPLATE, build_tiny_tokenizer

    build_tiny_tokenizer().save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN_VL_CHAT_TEMPLATE, encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }))


def random_model(tokenizer, device: torch.device, text: dict = TEXT_7B, vision: dict = VISION_7B,
                 dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """Qwen2.5-VL (the 7B's architecture by default) built on the meta device, then materialised
    on ``device`` with random weights (std 0.02, norms 1) and its rotary tables rebuilt."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    config = Qwen2_5_VLConfig(
        text_config=dict(text, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"]),
        vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("weight"):  # RMSNorm / LayerNorm scales
                param.fill_(1.0)
            else:
                param.zero_()
        for module in model.modules():  # rotary tables are buffers computed at construction: meta until rebuilt
            if hasattr(module, "inv_freq") and hasattr(module, "config"):
                fresh = type(module)(module.config)
                module.register_buffer("inv_freq", fresh.inv_freq.to(device), persistent=False)
                module.register_buffer("original_inv_freq", fresh.original_inv_freq.to(device), persistent=False)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    return model.eval()


def clips(count: int, frames: int, height: int, width: int, settings) -> list:
    """Random clips as the captioner's decoder returns them (resized to the processor's size)."""
    from frametuner.caption.frames import Media, uniform_indices

    total = 5 * frames + 1  # a 5 s clip at 16 fps... any length: only the picked indices and fps matter
    size = settings.video_size(height, width, frames)
    rng = np.random.default_rng(0)
    return [Media(path=Path(f"clip{i}.mp4"), kind="video", frames=rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8),
                  indices=uniform_indices(total, frames), total_frames=total, fps=16.0) for i in range(count)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--tokens", type=int, default=200, help="generated per clip, exactly")
    parser.add_argument("--batches", type=int, default=2, help="timed batches per mode (after one warm-up)")
    parser.add_argument("--modes", default="bf16,int8", help="comma-separated: bf16, int8")
    parser.add_argument("--budget_s", type=float, default=200.0, help="start no new batch after this many seconds")
    parser.add_argument("--results-dir", default=str(REPO / "bench"))
    parser.add_argument("--smoke", action="store_true", help="a tiny model of the same architecture on the CPU (CI): checks the script, measures nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if not torch.cuda.is_available() and not args.smoke:
        print("bench/caption.py needs a CUDA GPU (--smoke runs a tiny model on the CPU)", file=sys.stderr)
        return 2
    import transformers

    from frametuner.caption.prompts import DEFAULT_VIDEO_PROMPT
    from frametuner.caption.qwen_vl import QwenVLCaptioner, build_processor, processor_inputs, quantise_language_model

    device = torch.device("cpu" if args.smoke else "cuda")
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "CPU (smoke)"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    emit({"event": "start", "device": name, "torch": torch.__version__, "transformers": transformers.__version__, "date": date})
    folder = Path(tempfile.mkdtemp(prefix="frametuner-caption-bench-"))
    build_processor_folder(folder)
    processor, settings = build_processor(str(folder))
    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    batch = clips(args.batch_size, args.frames, args.height, args.width, settings)
    instructions = [DEFAULT_VIDEO_PROMPT] * len(batch)
    results_dir = Path(args.results_dir)
    command = "python bench/caption.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start_section(results_dir, date, f"{name}, transformers {transformers.__version__}", command.strip(), COLUMNS,
                  intro="Qwen2.5-VL-7B architecture, random weights; clips/s of `frametuner caption` (processor + generate + decode), "
                        "clips already decoded; every clip generates exactly the listed number of tokens.")
    model = None
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if time.perf_counter() - started > args.budget_s:
            emit({"event": "skipped", "mode": mode, "reason": f"past the {args.budget_s:.0f} s budget"})
            continue
        row = {"bench": "caption", "mode": "bf16" if mode == "bf16" else f"{mode}-quanto", "model": "Qwen2.5-VL-7B (random weights)",
               "batch_size": args.batch_size, "frames": args.frames, "height": args.height, "width": args.width,
               "frame_size": list(batch[0].frames.shape[1:3]), "new_tokens": args.tokens, "device": name, "torch": torch.__version__,
               "transformers": transformers.__version__, "date": date, "git_commit": git_commit()}
        try:
            setup = time.perf_counter()
            if model is None:
                model = (random_model(processor.tokenizer, device, TEXT_SMOKE, VISION_SMOKE, torch.float32) if args.smoke
                         else random_model(processor.tokenizer, device))
            if mode in ("int8", "int4"):
                quantise_language_model(model, mode)
            elif mode != "bf16":
                raise ValueError(f"unknown mode {mode!r}")
            synchronize()
            row["setup_s"] = time.perf_counter() - setup
            captioner = QwenVLCaptioner(model, processor, settings, name="random-7b", max_new_tokens=args.tokens,
                                        generate_kwargs={"min_new_tokens": args.tokens})
            inputs = processor_inputs(processor, batch, instructions)
            row["prompt_tokens"] = int(inputs["input_ids"].shape[1])
            row["visual_tokens_per_clip"] = int(inputs["video_grid_thw"][0].prod()) // 4
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            warm = time.perf_counter()
            answers = captioner.caption(batch, instructions)
            synchronize()
            row["warmup_s"] = time.perf_counter() - warm
            emit({"event": "warmup", "mode": row["mode"], "seconds": row["warmup_s"], "answers": len(answers)})
            times = []
            for _ in range(args.batches):
                if time.perf_counter() - started > args.budget_s and times:
                    row["note"] = "fewer timed batches: time budget"
                    break
                tick = time.perf_counter()
                captioner.caption(batch, instructions)
                synchronize()
                times.append(time.perf_counter() - tick)
            row.update(times=times, s_per_batch=sum(times) / len(times), clips_per_s=args.batch_size * len(times) / sum(times),
                       peak_gb=torch.cuda.max_memory_allocated(device) / 1e9 if cuda else 0.0)
        except Exception as error:  # noqa: BLE001 - a failed mode is a row too
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            emit({"event": "error", "mode": row["mode"], "error": row["error"]})
            if "out of memory" in row["error"].lower():
                model = None
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
        emit(row)
        cells = (row["mode"], str(args.batch_size), str(args.frames), f"{args.height}x{args.width}", str(args.tokens),
                 f"{row['s_per_batch']:.2f}" if "s_per_batch" in row else "-",
                 f"{row['clips_per_s']:.3f}" if "clips_per_s" in row else row.get("error", "-")[:60],
                 f"{row['peak_gb']:.1f}" if "peak_gb" in row else "-", f"{row.get('setup_s', 0):.1f}")
        append_row(row, cells, results_dir)
    emit({"event": "done", "seconds": time.perf_counter() - started})
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
