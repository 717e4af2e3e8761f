"""Where the peak of one training step goes: live GPU allocations at the peak, by source line.

A diagnostic companion of ``bench/memory.py``: it builds the same full-size model and
trainer for one preset, runs a step (the auto checkpointing policy decides in it), then
records the caching allocator's trace of a later step, replays it to the moment of the
highest allocated total, and groups the allocations live at that moment by the innermost
frametuner / optimum-quanto / torchao / peft / torch frame that made them.

    python bench/memory_profile.py --preset int8 [--no-compile] [--case 480x832x29]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

PACKAGES = ("frametuner/", "optimum/quanto", "torchao/", "peft/", "accelerate/")


def source_of(frames: list[dict]) -> str:
    """The innermost frame in one of our dependencies, with its caller in the model code."""
    ours = [f for f in frames if any(p in f["filename"] for p in PACKAGES)]
    if not ours:
        frame = frames[0] if frames else {"filename": "?", "line": 0, "name": "?"}
        return f"{frame['filename'].split('/')[-1]}:{frame['line']} {frame['name']}"
    parts = [f"{f['filename'].split('site-packages/')[-1].split('frametuner/')[-1]}:{f['line']} {f['name']}" for f in ours[:2]]
    return " <- ".join(parts)


def live_at_peak(trace: list[dict]) -> tuple[int, dict[str, list[int]]]:
    """Replay alloc / free_completed events: the peak bytes allocated during the trace (over
    what was live before it) and the allocations live at that moment, grouped by source."""
    live, total, peak, peak_index = {}, 0, 0, -1
    for index, event in enumerate(trace):
        if event["action"] == "alloc":
            live[event["addr"]] = event["size"]
            total += event["size"]
            if total > peak:
                peak, peak_index = total, index
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])
    groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    live = {}
    for event in trace[: peak_index + 1]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
        elif event["action"] == "free_completed":
            live.pop(event["addr"], None)
    for event in live.values():
        group = groups[source_of(event.get("frames", []))]
        group[0] += event["size"]
        group[1] += 1
    return peak, groups


def main(argv: list[str] | None = None) -> int:
    import torch

    from .memory import PRESETS, preset_trainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="int8", choices=sorted(PRESETS))
    parser.add_argument("--case", default="480x832x93")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    trainer, batch = preset_trainer(args.preset, args.case, compile_blocks=not args.no_compile)
    torch.cuda.synchronize()
    gib = 2**30
    params = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.device.type == "cuda")
    print(f"{args.preset} {args.case}: after setup {torch.cuda.memory_allocated() / gib:.2f} GB allocated "
          f"({params / gib:.2f} GB of parameters on the GPU as reported by numel)", flush=True)
    started = time.perf_counter()
    trainer.step(batch)
    torch.cuda.synchronize()
    print(f"first step {time.perf_counter() - started:.1f} s, peak {torch.cuda.max_memory_allocated() / gib:.2f} GB, "
          f"after {torch.cuda.memory_allocated() / gib:.2f} GB", flush=True)
    # The auto checkpointing policy reads the first step's peak at the start of the second:
    # run that one as it is, and record the third.
    trainer.step(batch)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(context="alloc", stacks="python", max_entries=2_000_000)
    trainer.step(batch)
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak = torch.cuda.max_memory_allocated()
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    extra, groups = live_at_peak(trace)
    print(f"third step: peak {peak / gib:.2f} GB = {before / gib:.2f} GB live before the step "
          f"+ {extra / gib:.2f} GB allocated in it ({len(trace)} trace events)")
    print(f"{'GB':>7} {'count':>6}  source")
    for source, (size, count) in sorted(groups.items(), key=lambda item: -item[1][0])[: args.top]:
        print(f"{size / gib:7.3f} {count:6d}  {source}")
    print("live before the step, by size class (segments snapshot):")
    sizes = collections.Counter()
    for segment in snapshot["segments"]:
        for block in segment["blocks"]:
            if block["state"] == "active_allocated":
                sizes[block["size"] // 2**20] += 1
    for size_mb, count in sorted(sizes.items(), key=lambda item: -item[0] * item[1])[:12]:
        print(f"   {size_mb:6d} MB x {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
