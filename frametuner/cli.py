"""``frametuner`` command line: thin subcommands over the rooms of the package."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from .config import (
    ConfigError,
    add_config_arguments,
    config_to_json,
    load_config,
    overrides_from_args,
    reject_unknown_flags,
    unimplemented_settings,
)
from .storage import StorageError

log = logging.getLogger("frametuner")

Command = Callable[[argparse.Namespace, list[str]], int]
COMMANDS: dict[str, Command] = {}


def command(name: str):
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


def setup_logging(verbose: bool = False) -> None:
    import os

    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) > 0:
        level = logging.WARNING  # in a multi-GPU run, rank 0 reports; the others only warn
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False)],
        force=True,
    )
    for noisy in ("httpx", "urllib3", "PIL", "matplotlib", "torch._dynamo", "torch._inductor"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def config_from_args(args: argparse.Namespace, extra: list[str]):
    """Config file + command-line overrides (CLI wins), warning loudly about unimplemented settings."""
    reject_unknown_flags(extra)
    config = load_config(args.config, overrides_from_args(args))
    config._command = ["frametuner", *getattr(args, "argv", [])]  # what a stopped run's summary says to resume with
    for line in unimplemented_settings(config):
        log.warning("WARNING: %s", line)
    return config


def _add_config_flag(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="config.json (JSON or JSON with // comments)")


def _family_names() -> str:
    from .models.registry import families

    return ", ".join(info.display_name or name for name, info in families().items())


def build_parser() -> argparse.ArgumentParser:
    from .config.schema import DEFAULT_MODEL_FAMILY

    parser = argparse.ArgumentParser(
        prog="frametuner",
        description=f"Fine-tune video diffusion models ({_family_names()}) with LoRA or full fine-tuning, and sample from them.",
        epilog="Every config key is also a flag of train/cache/sample (e.g. --lora_rank 16); "
        "see `frametuner train --help`.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a LoRA or the full DiT from a config", allow_abbrev=False)
    _add_config_flag(train)
    add_config_arguments(train)

    cache = sub.add_parser("cache", help="encode captions, clips and validation prompts into the caches training reads", allow_abbrev=False)
    _add_config_flag(cache)
    add_config_arguments(cache)

    cfg = sub.add_parser("config", help="inspect configuration files")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    check = cfg_sub.add_parser("check", help="validate a config and print it with all defaults resolved")
    check.add_argument("file", help="config.json")
    docs = cfg_sub.add_parser("docs", help="print the config reference table (markdown)")
    docs.add_argument("--update", metavar="README", help="rewrite the generated table inside this file instead")

    sub.add_parser("models", help="list model families and flavours")
    demo = sub.add_parser("demo", help="train a LoRA on the tiny model with synthetic clips (CPU, a minute or two; --model_family picks the family)", allow_abbrev=False)
    demo.add_argument("--dir", default="frametuner-demo", help="folder for the demo's clips, config and outputs (default ./frametuner-demo)")
    add_config_arguments(demo, exclude=("output_dir",))
    sub.add_parser("bench", help="GPU benchmark of the 13.6B training/sampling step (bench/train_step.py; --help for options)", add_help=False)

    from .sampling.command import add_decode_arguments, add_sample_arguments

    sample = sub.add_parser("sample", help="generate a video (text- or image-to-video) from a prompt", allow_abbrev=False)
    add_sample_arguments(sample)
    decode = sub.add_parser("decode", help="decode validation latents saved without a VAE into videos", allow_abbrev=False)
    add_decode_arguments(decode)

    lora = sub.add_parser("lora", help="convert and inspect LoRA files (PEFT, a family's upstream format, ComfyUI)")
    lora_sub = lora.add_subparsers(dest="lora_command", metavar="ACTION")
    lora_convert = lora_sub.add_parser("convert", help="convert a LoRA to another format (exact)")
    lora_convert.add_argument("src", help="LoRA file, or a PEFT folder")
    lora_convert.add_argument("dst", help="output file (a folder for --to peft)")
    lora_convert.add_argument("--to", required=True, choices=["peft", "upstream", "comfyui"])
    lora_info = lora_sub.add_parser("info", help="print a LoRA's format, rank, scale and layers")
    lora_info.add_argument("path", help="LoRA file, or a PEFT folder")
    for lora_parser in (lora_convert, lora_info):
        lora_parser.add_argument(
            "--model_family", default=None,
            help=f"the family the LoRA is for (default: the one its metadata names, else {DEFAULT_MODEL_FAMILY})",
        )


    server = sub.add_parser("server", help="web UI: configure, launch, watch and preview jobs")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a token)")
    server.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    server.add_argument("--data-dir", default=None, help="jobs and the SQLite state (default $FRAMETUNER_DATA_DIR or ~/.local/share/frametuner)")
    server.add_argument("--token", default=None, help="access token (default: generated when --host is not loopback)")
    server.add_argument("--gpus", default=None, help="comma-separated GPU ids to run jobs on (default: all visible; CPU-only = one job at a time)")
    server.add_argument(
        "--allow-path", action="append", default=[], metavar="DIR",
        help="a folder that configs submitted in the web UI may read (datasets, LoRAs, prompt files); repeatable. "
        "Always allowed: the data dir and the examples. Outputs always go to the job's folder",
    )


    data = sub.add_parser("data", help="look at the datasets before training")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    inspect = data_sub.add_parser("inspect", help="scan the datasets: counts, buckets, skipped files by reason, total frames")
    _add_config_flag(inspect)
    inspect.add_argument("--workers", type=int, default=None, help="files probed in parallel (default: min(8, CPUs))")

    from .caption.command import add_caption_arguments

    caption = sub.add_parser("caption", help="write the missing caption files of clips and images with a vision-language model", allow_abbrev=False)
    add_caption_arguments(caption)
    _show_defaults(parser)
    return parser


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` says each option's default where its own text does not (config keys say theirs)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every parser and subparser formats its help with :class:`DefaultsHelpFormatter`."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


@command("train")
def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    config = config_from_args(args, extra)
    # A first line at once: torch, diffusers and the model code take seconds to import.
    log.info("train: %s %s of %s/%s -> %s (loading torch and the model code)", args.config, config.model_type, config.model_family, config.model_flavour, config.output_dir)
    from .training.distributed import needs_launch, relaunch

    if needs_launch(config):  # num_processes > 1: this same command on N ranks (accelerate launch)
        return relaunch(config, args.argv)
    from .training import train

    return train(config)


@command("cache")
def cmd_cache(args: argparse.Namespace, extra: list[str]) -> int:
    config = config_from_args(args, extra)
    from .cache.run import run_cache

    report = run_cache(config)
    for source, message in report.failed:
        print(f"error: {source}: {message}", file=sys.stderr)
    return 1 if report.failed else 0


@command("demo")
def cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    from pathlib import Path

    log.info("demo: writing synthetic clips, a config and a dataset list to %s (then training the tiny model)", args.dir)
    from .demo import prepare_demo

    config_path = prepare_demo(args.dir)
    reject_unknown_flags(extra)
    config = load_config(config_path, {"output_dir": str(Path(args.dir) / "output"), **overrides_from_args(args)})
    config._command = ["frametuner", *args.argv]
    log.info("demo: clips, config and datasets in %s", args.dir)
    from .training import train

    return train(config)


@command("config")
def cmd_config(args: argparse.Namespace, extra: list[str]) -> int:
    if args.config_command == "docs":
        from .config.docs import config_reference_markdown, update_readme

        if args.update:
            print(f"{args.update}: {'updated' if update_readme(args.update) else 'already current'}")
        else:
            print(config_reference_markdown())
        return 0
    if args.config_command != "check":
        raise ConfigError(["usage: frametuner config check FILE | frametuner config docs"])
    config = load_config(args.file)
    for line in unimplemented_settings(config):
        log.warning("WARNING: %s", line)
    from .config import validate_dataset_list

    problems = validate_dataset_list(config)  # the one dataset validator (also the web UI's Check and train)
    if problems:
        raise ConfigError([str(problem) for problem in problems])
    print(config_to_json(config))
    print(f"# {args.file}: OK", file=sys.stderr)
    return 0


@command("models")
def cmd_models(args: argparse.Namespace, extra: list[str]) -> int:
    from .models.registry import families

    for info in families().values():
        print(f"{info.name}: {info.description}")
        for flavour in info.flavours.values():
            where = flavour.hub_id or "built locally"
            print(f"  {flavour.name:8s} {flavour.description} [{where}]")
    return 0


@command("sample")
def cmd_sample(args: argparse.Namespace, extra: list[str]) -> int:
    prompt = args.prompt if len(args.prompt) <= 60 else args.prompt[:57] + "..."
    log.info("sample: %r -> %s (loading torch and the model code)", prompt, args.output)  # a first line at once
    from .sampling.command import run_sample

    return run_sample(args)


@command("decode")
def cmd_decode(args: argparse.Namespace, extra: list[str]) -> int:
    from .sampling.command import run_decode

    return run_decode(args)

@command("lora")
def cmd_lora(args: argparse.Namespace, extra: list[str]) -> int:
    from .config.schema import DEFAULT_MODEL_FAMILY
    from .lora import LoraError, convert, read_lora
    from .lora.formats import family_of_file

    source = args.src if args.lora_command == "convert" else getattr(args, "path", None)
    family = args.model_family or (family_of_file(source) if source else None) or DEFAULT_MODEL_FAMILY
    try:
        if args.lora_command == "convert":
            print(convert(args.src, args.dst, to=args.to, family=family))
            return 0
        if args.lora_command == "info":
            weights = read_lora(args.path, family=family)
            ranks = sorted(weights.ranks())
            scales = sorted({delta.scale for delta in weights.deltas.values()})
            print(f"{args.path}: {weights.format} format, {len(weights.deltas)} layers, rank {ranks}, scale {scales}")
            for name, delta in weights.deltas.items():
                print(f"  {name}: rank {delta.rank}, {delta.in_features} -> {delta.out_features}, scale {delta.scale:g}")
            return 0
    except LoraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("usage: frametuner lora convert SRC DST --to FORMAT | frametuner lora info PATH", file=sys.stderr)
    return 2


@command("bench")
def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from .bench.train_step import main as bench_main

    return bench_main(extra)



@command("server")
def cmd_server(args: argparse.Namespace, extra: list[str]) -> int:
    from .server import ServerSettings, default_data_dir, is_loopback, serve
    from .server.security import generate_token

    token, generated = args.token, False
    if token is None and not is_loopback(args.host):
        token, generated = generate_token(), True
    gpus = [part.strip() for part in args.gpus.split(",") if part.strip()] if args.gpus is not None else None
    settings = ServerSettings(
        data_dir=args.data_dir or default_data_dir(), host=args.host, port=args.port, token=token, gpus=gpus,
        allow_paths=args.allow_path,
    )
    serve(settings, token_generated=generated)
    return 0


@command("data")
def cmd_data(args: argparse.Namespace, extra: list[str]) -> int:
    if args.data_command != "inspect":
        raise ConfigError(["usage: frametuner data inspect --config CONFIG"])
    config = config_from_args(args, extra)
    from .data import scan_datasets
    from .data.report import print_inspection

    result = scan_datasets(config, require_samples=False, summary=False, workers=args.workers)
    print_inspection(result)
    problems = result.empty_dataset_messages()
    if problems:
        raise ConfigError(problems)
    return 0


@command("caption")
def cmd_caption(args: argparse.Namespace, extra: list[str]) -> int:
    from .caption.command import run_caption_command

    return run_caption_command(args)


# Subcommands whose extra flags are config keys (checked by the config loader, with
# did-you-mean) or passed through (bench).
CONFIG_COMMANDS: set[str] = {"train", "cache", "data", "demo", "bench"}


def main(argv: list[str] | None = None) -> int:
    import os

    # Before torch initialises CUDA: bucketed video shapes fragment the default allocator.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv  # `train --num_processes N` relaunches the very same command on N ranks
    setup_logging(args.verbose)
    if args.command is None:
        parser.print_help()
        return 0
    if extra and args.command not in CONFIG_COMMANDS:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args, extra)
    except ConfigError as error:
        for line in error.messages:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except StorageError as error:  # a full disk while caching or saving: one line, nothing lost
        _end_progress_bars()
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _end_progress_bars() -> None:
    """Close the progress bars an error cut short, so the error line starts a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    if tqdm is not None:
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
