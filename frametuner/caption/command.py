"""``frametuner caption`` arguments and entry point (the CLI registers these)."""

from __future__ import annotations

import argparse
import sys

from . import DEFAULT_MODEL, QUANTISATIONS


def add_caption_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="folders of clips/images, single files, or dataset lists (.json, or a training config naming one)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"vision-language model: a Hub id or local folder of a Qwen2.5-VL checkpoint, or 'tiny' "
                        f"(random, built locally, for tests and the demo); default {DEFAULT_MODEL}")
    parser.add_argument("--batch_size", type=int, default=1, help="clips captioned together (default 1)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames sampled evenly per clip, first and last included (default: the model's, 16 for Qwen2.5-VL)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, help="instruction to the model (default: a dense one-paragraph caption, as the video models were trained on)")
    prompt.add_argument("--prompt_file", default=None, help="read the instruction from this UTF-8 text file")
    parser.add_argument("--prefix", default="", help="put this before every caption (a trigger word), followed by a space")
    parser.add_argument("--overwrite", action="store_true", help="replace existing captions too")
    parser.add_argument("--dry_run", action="store_true", help="list what would be captioned; load no model")
    parser.add_argument("--review", nargs="?", const="caption_review", default=None, metavar="DIR",
                        help="write DIR/index.html (default ./caption_review): each clip's contact sheet beside its caption")
    parser.add_argument("--quantize", choices=QUANTISATIONS, default="none",
                        help="load the language model's weights as int8 or int4 (optimum-quanto) for small GPUs (default none)")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="weights and compute dtype (default auto: bf16 on a GPU, fp32 on a CPU)")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="longest caption in tokens (default: the model's generation config, else 512)")


def run_caption_command(args: argparse.Namespace) -> int:
    """Exit status: 0 when nothing failed, 1 when some files failed (listed), 2 for a usage error, 130 interrupted."""
    from ..config.errors import ConfigError
    from .qwen_vl import CaptionModelError
    from .run import CaptionOptions, print_report, run_caption

    if args.batch_size < 1 or (args.frames is not None and args.frames < 1):
        raise ConfigError(["--batch_size and --frames must be at least 1"])
    options = CaptionOptions(
        paths=list(args.paths), model=args.model, batch_size=args.batch_size, frames=args.frames, prompt=args.prompt,
        prompt_file=args.prompt_file, prefix=args.prefix, overwrite=args.overwrite, dry_run=args.dry_run,
        review=args.review, max_new_tokens=args.max_new_tokens, quantize=args.quantize, dtype=args.dtype, device=args.device,
    )
    try:
        report = run_caption(options)
    except (CaptionModelError, ValueError, OSError) as error:
        raise ConfigError([str(error)]) from None
    print_report(report, file=sys.stdout)
    if report.interrupted:
        return 130
    return 1 if report.failed else 0
