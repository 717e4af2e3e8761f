"""Stand-in for ``frametuner train`` / ``frametuner sample`` in the server tests.

It speaks the same contracts as the real commands, fast and without torch: reads the
job's config through ``frametuner.config.load_config``, writes ``events.jsonl``
(start/step/validation/checkpoint/done/stopped), a real tiny H.264 mp4 and contact
sheet per validation, LoRA files per checkpoint (``peft`` as a folder, the others as
single files), saves a checkpoint and exits 0 on SIGTERM, and continues from the
latest checkpoint with ``--resume_from_checkpoint latest``.

Environment: ``FAKE_TRAINER_STEP_SECONDS`` (default 0.01) paces the steps;
``FAKE_TRAINER_FAIL_AT_STEP`` makes it emit an ``error`` event there and exit 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from frametuner.config import ConfigError, load_config, validate_dataset_list
from frametuner.models.registry import family_info
from frametuner.training.events import EventLog

LORA_FORMATS = ("peft", "upstream", "comfyui")


def ball_frames(frames: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """A red ball bouncing on a wooden floor (what the demo's validation prompt asks for)."""
    rows, cols = np.mgrid[0:height, 0:width]
    floor = int(height * 0.72)
    background = np.zeros((height, width, 3), np.uint8)
    background[:floor] = np.linspace([150, 190, 235], [225, 235, 245], floor)[:, None, :].astype(np.uint8)
    background[floor:] = (150, 100, 55)
    background[floor:, (cols[0] % max(8, width // 6)) < 1] = (110, 70, 35)  # planks
    radius = max(3, height // 9)
    result = []
    for index in range(frames):
        phase = (index / max(1, frames - 1) + seed * 0.13) % 1.0
        x = radius + phase * (width - 2 * radius)
        y = floor - radius - abs(np.sin(phase * 2 * np.pi)) * (floor - 2 * radius) * 0.9
        pixels = background.copy()
        pixels[(rows - y) ** 2 + (cols - x) ** 2 <= radius**2] = (210, 30, 30)
        result.append(pixels)
    return result


def write_video(path: Path, frames: int = 9, height: int = 64, width: int = 96, fps: int = 15, seed: int = 0) -> None:
    """A real H.264 mp4 and, beside it, a contact sheet (first, middle, last frame) as .png."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = ball_frames(frames, height, width, seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for pixels in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    sheet = np.concatenate([images[0], images[len(images) // 2], images[-1]], axis=1)
    Image.fromarray(sheet).save(path.with_suffix(".png"))


def write_lora(folder: Path, formats: list[str], step: int) -> dict[str, str]:
    """One file (or folder, for peft) per format; returns {format: path relative to folder's output_dir parent}."""
    weights = {"blocks.0.attn.qkv.lora_A.weight": np.full((4, 8), step, np.float32)}
    written = {}
    for fmt in formats:
        if fmt == "peft":
            target = folder / "peft"
            target.mkdir(parents=True, exist_ok=True)
            save_file(weights, str(target / "adapter_model.safetensors"))
            (target / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{fmt}.safetensors"
            save_file(weights, str(target))
        written[fmt] = target
    return written


def train(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, {"resume_from_checkpoint": args.resume_from_checkpoint} if args.resume_from_checkpoint else None)
    except ConfigError as error:
        for line in error.messages:
            print(f"error: {line}", file=sys.stderr)
        return 2
    # Like `frametuner train`: the dataset list is checked before anything runs (exit 2, one line per problem).
    problems = validate_dataset_list(config, frame_stride=family_info(config.model_family).frame_stride)
    if problems:
        print("loading the dataset list", flush=True)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    output = Path(config.output_dir)
    events = EventLog(output)
    max_steps = config.max_train_steps or 10
    pause = float(os.environ.get("FAKE_TRAINER_STEP_SECONDS", "0.01"))
    fail_at = int(os.environ.get("FAKE_TRAINER_FAIL_AT_STEP", "0"))
    start_step = 0
    checkpoints = output / "checkpoints"
    if config.resume_from_checkpoint == "latest" and checkpoints.is_dir():
        steps = [int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")]
        start_step = max(steps, default=0)
        print(f"resuming from checkpoint-{start_step}", flush=True)

    stop = {"reason": None}
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(reason="SIGTERM"))

    def relative(path: Path) -> str:
        return path.relative_to(output).as_posix()

    def checkpoint(step: int) -> Path:
        folder = checkpoints / f"checkpoint-{step}"
        lora = write_lora(folder / "lora", config.lora_export_formats, step)
        (folder / "state.json").write_text(json.dumps({"step": step}))
        events.emit("checkpoint", step=step, path=relative(folder), lora={k: relative(v) for k, v in lora.items()})
        return folder

    def validate(step: int) -> None:
        video = output / "validation" / f"step-{step:06d}" / "prompt-0.mp4"
        write_video(video, seed=step)
        events.emit("validation", step=step, prompt_index=0, prompt=config.validation_prompt or "", video=relative(video), contact_sheet=relative(video.with_suffix(".png")))

    began = time.time()
    events.emit("start", max_steps=max_steps, step=start_step, config=config.model_dump(mode="json"), pid=os.getpid())
    print(f"training {max_steps} steps from step {start_step}", flush=True)
    if start_step == 0:
        validate(0)
    smoothed = None
    for step in range(start_step + 1, max_steps + 1):
        time.sleep(pause)
        loss = 1.0 / (1.0 + 0.1 * step) + 0.05 * math.sin(step)
        smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss
        events.emit("step", step=step, loss=loss, loss_smoothed=smoothed, lr=config.learning_rate, s_per_step=pause, eta_s=pause * (max_steps - step), grad_norm=0.5, peak_gb=1.25)
        print(f"step {step}/{max_steps} loss {loss:.4f}", flush=True)
        if step == fail_at:
            events.emit("error", message=f"out of memory at step {step} (fake)")
            print("Traceback: out of memory", file=sys.stderr, flush=True)
            return 1
        if step % config.validation_steps == 0 or step == max_steps:
            validate(step)
        if step % config.checkpointing_steps == 0:
            checkpoint(step)
        if stop["reason"]:
            folder = checkpoint(step)
            events.emit("stopped", step=step, reason=stop["reason"], checkpoint=relative(folder))
            print(f"stopped by {stop['reason']} at step {step}; checkpoint saved", flush=True)
            return 0
    final = write_lora(output / "lora", config.lora_export_formats, max_steps)
    events.emit("done", step=max_steps, seconds=time.time() - began, lora={k: relative(v) for k, v in final.items()})
    print("done", flush=True)
    return 0


def sample(args: argparse.Namespace) -> int:
    load_config(args.config)
    for path in filter(None, [args.image, args.lora and args.lora.rsplit(":", 1)[0]]):
        if not Path(path).exists():
            print(f"error: {path} not found", file=sys.stderr)
            return 2
    height, width = (int(v) for v in args.resolution.split("x"))
    write_video(Path(args.output), frames=args.num_frames, height=height, width=width, seed=args.seed)
    print(f"wrote {args.output} for prompt {args.prompt!r}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fake_trainer")
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train")
    train_parser.add_argument("--config", required=True)
    train_parser.add_argument("--resume_from_checkpoint")
    sample_parser = commands.add_parser("sample")
    for flag in ("--config", "--prompt", "--negative_prompt", "--image", "--lora", "--resolution", "--output"):
        sample_parser.add_argument(flag)
    for flag in ("--num_frames", "--steps", "--seed", "--fps"):
        sample_parser.add_argument(flag, type=int)
    sample_parser.add_argument("--guidance", type=float)
    args = parser.parse_args(argv)
    return train(args) if args.command == "train" else sample(args)


if __name__ == "__main__":
    sys.exit(main())
