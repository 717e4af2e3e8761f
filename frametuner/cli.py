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

log = logging.getLogger("frametuner")

Command = Callable[[argparse.Namespace, list[str]], int]
COMMANDS: dict[str, Command] = {}


def command(name: str):
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


def setup_logging(verbose: bool = False) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
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
    for line in unimplemented_settings(config):
        log.warning("WARNING: %s", line)
    return config


def _add_config_flag(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="config.json (JSON or JSON with // comments)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frametuner",
        description="Fine-tune LongCat-Video with LoRA or full fine-tuning, and sample from it.",
        epilog="Every config key is also a flag of train/cache/sample (e.g. --lora_rank 16); "
        "see `frametuner train --help`.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a LoRA or the full DiT from a config", allow_abbrev=False)
    _add_config_flag(train)
    add_config_arguments(train)

    cfg = sub.add_parser("config", help="inspect configuration files")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    check = cfg_sub.add_parser("check", help="validate a config and print it with all defaults resolved")
    check.add_argument("file", help="config.json")
    cfg_sub.add_parser("docs", help="print the config reference table (markdown)")

    sub.add_parser("models", help="list model families and flavours")

    data = sub.add_parser("data", help="look at the datasets before training")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    inspect = data_sub.add_parser("inspect", help="scan the datasets: counts, buckets, skipped files by reason, total frames")
    _add_config_flag(inspect)
    inspect.add_argument("--workers", type=int, default=None, help="files probed in parallel (default: min(8, CPUs))")
    return parser


@command("train")
def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    config = config_from_args(args, extra)
    from .training import train

    return train(config)


@command("config")
def cmd_config(args: argparse.Namespace, extra: list[str]) -> int:
    if args.config_command == "docs":
        from .config.docs import config_reference_markdown

        print(config_reference_markdown())
        return 0
    if args.config_command != "check":
        raise ConfigError(["usage: frametuner config check FILE | frametuner config docs"])
    config = load_config(args.file)
    for line in unimplemented_settings(config):
        log.warning("WARNING: %s", line)
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


# Subcommands whose unknown flags are reported by the config loader (with did-you-mean).
CONFIG_COMMANDS: set[str] = {"train"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
