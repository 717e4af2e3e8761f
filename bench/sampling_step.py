"""Time one denoising step of the full 13.6B LongCat-Video DiT (random weights) on a GPU.

Measures what users wait for: seconds per step with CFG (batch [negative, positive]) and
without (distilled, guidance 1), and the peak GPU memory, at upstream's default 480x832,
93 frames (24 x 60 x 104 latents, 37,440 tokens) with 512 text tokens.
Prints one JSON line; append it to bench/results/sampling_step.jsonl.

    python bench/sampling_step.py [--resolution 480x832] [--frames 93] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from frametuner.models.registry import load_spec
from frametuner.sampling import denoise


def timed_steps(model, latents, text, mask, steps, guidance):
    kwargs = dict(negative_embeds=text, negative_mask=mask) if guidance > 1 else {}
    denoise(model, latents, text, mask, steps=1, guidance=guidance, **kwargs)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    start = time.perf_counter()
    denoise(model, latents, text, mask, steps=steps, guidance=guidance, **kwargs)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="480x832")
    parser.add_argument("--frames", type=int, default=93)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attention", default="auto")
    args = parser.parse_args()
    height, width = (int(v) for v in args.resolution.split("x"))

    spec = load_spec("longcat_video")
    torch.manual_seed(0)
    # Build straight in bf16: a float32 build would need 54 GB before the cast.
    torch.set_default_dtype(torch.bfloat16)
    model = spec.build_transformer(flavour="final", device="cuda", dtype=torch.bfloat16).eval()
    torch.set_default_dtype(torch.float32)
    model.set_attention_implementation(args.attention)
    shape = (1, *spec.geometry.latent_shape(args.frames, height, width))
    latents = torch.randn(shape, device="cuda")
    text = torch.randn(1, spec.text_max_length, model.config.caption_channels, device="cuda", dtype=torch.bfloat16)
    mask = torch.zeros(1, spec.text_max_length, dtype=torch.int64, device="cuda")
    mask[:, :120] = 1

    torch.cuda.reset_peak_memory_stats()
    weights_gib = torch.cuda.memory_allocated() / 2**30
    cfg = timed_steps(model, latents, text, mask, args.steps, guidance=4.0)
    peak_cfg = torch.cuda.max_memory_allocated() / 2**30
    no_cfg = timed_steps(model, latents, text, mask, args.steps, guidance=1.0)
    print(json.dumps({
        "bench": "sampling_step",
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": "bf16",
        "attention": args.attention,
        "resolution": args.resolution,
        "frames": args.frames,
        "latent_shape": list(shape),
        "tokens": spec.geometry.num_tokens(args.frames, height, width),
        "weights_gib": round(weights_gib, 2),
        "s_per_step_cfg": round(cfg, 3),
        "s_per_step_no_cfg": round(no_cfg, 3),
        "peak_gib_cfg": round(peak_cfg, 2),
        "steps_timed": args.steps,
    }))


if __name__ == "__main__":
    main()
