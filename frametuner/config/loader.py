"""Load a config file, apply CLI overrides, validate; and build CLI flags from the schema."""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from .errors import ConfigError, did_you_mean, format_pydantic_errors
from .jsonc import load_jsonc
from .schema import TrainConfig, field_group


def _validate(data: Mapping[str, Any], source: str) -> TrainConfig:
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(format_pydantic_errors(error, source, TrainConfig.model_fields)) from None


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read ``path`` (JSON or JSONC), apply ``overrides`` (CLI wins), validate.

    The returned config remembers the file's folder in ``config_dir`` so relative input
    paths resolve against it (see :func:`resolve_input_path`).
    """
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        loaded = load_jsonc(path)
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: the top level must be a JSON object {{...}} of config keys"])
        data = loaded
        source = str(path)
    data.update(overrides or {})
    config = _validate(data, source)
    config._config_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    config._config_file = str(path) if path is not None else None
    return config


def resolve_input_path(config: TrainConfig, value: str | None) -> Path | None:
    """An input path from the config: absolute; else relative to the config file's folder;
    else relative to the working directory (SimpleTuner habit)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    beside_config = (config._config_dir or Path.cwd()) / path
    if beside_config.exists() or not path.exists():
        return beside_config
    return path.resolve()


def config_to_json(config: TrainConfig, *, only_set: bool = False) -> str:
    data = config.model_dump(mode="json", exclude_unset=only_set)
    return json.dumps(data, indent=2)


# ---------------------------------------------------------------------- CLI flags
def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _is_structured(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin in (list, dict, tuple) or (isinstance(annotation, type) and issubclass(annotation, BaseModel))


def add_config_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per config key (``--lora_rank 16``, ``--enable_group_offload``), grouped.

    Values are checked by the config schema, not argparse, so errors read the same as
    for the file. ``exclude`` leaves out keys a subcommand defines itself.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, info in TrainConfig.model_fields.items():
        if name in exclude:
            continue
        group = field_group(name)
        if group not in groups:
            groups[group] = parser.add_argument_group(f"config: {group}")
        annotation, optional = _unwrap_optional(info.annotation)
        choices = _literal_choices(annotation)
        help_text = f"{info.description or ''} ({_choices_and_default(info, choices)})".replace("%", "%%")
        if annotation is bool:
            groups[group].add_argument(
                f"--{name}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            if typing.get_origin(annotation) is typing.Literal:
                metavar = "{" + ",".join(str(choice) for choice in choices) + "}"
            else:
                metavar = "JSON" if _is_structured(annotation) else name.upper()
            groups[group].add_argument(f"--{name}", default=argparse.SUPPRESS, metavar=metavar, help=help_text)


def _literal_choices(annotation: Any) -> list[Any]:
    """The allowed values of a ``Literal`` key, or of the items of a ``list[Literal]`` key."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (Any,)
        item, _ = _unwrap_optional(item)
        if typing.get_origin(item) is typing.Literal:
            return list(typing.get_args(item))
    return []


def _choices_and_default(info, choices: list[Any]) -> str:
    """``choices: a, b; default: a`` for a flag's help (the schema is the one source of both)."""
    default = info.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = default.model_dump(mode="json")
    shown = default if isinstance(default, str) else json.dumps(default)
    text = f"default: {shown}"
    return f"choices: {', '.join(str(choice) for choice in choices)}; {text}" if choices else text


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Config keys given on the command line, converted to JSON-ish values for validation."""
    overrides: dict[str, Any] = {}
    problems = []
    for name, info in TrainConfig.model_fields.items():
        if name not in vars(args):
            continue
        raw = getattr(args, name)
        annotation, optional = _unwrap_optional(info.annotation)
        if isinstance(raw, str):
            if optional and raw.lower() in ("null", "none"):
                raw = None
            elif _is_structured(annotation):
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError as error:
                    problems.append(f"--{name}: not valid JSON ({error.msg}); quote it, e.g. --{name} '[4, 4, 4]'")
        overrides[name] = raw
    if problems:
        raise ConfigError(problems)
    return overrides


def reject_unknown_flags(unknown: list[str]) -> None:
    flags = [token for token in unknown if token.startswith("--")]
    if not unknown:
        return
    known = [f"--{name}" for name in TrainConfig.model_fields]
    messages = [f"{flag.split('=')[0]}: unknown option{did_you_mean(flag.split('=')[0], known)}" for flag in flags]
    if not messages:
        messages = [f"unexpected argument(s): {' '.join(unknown)}"]
    raise ConfigError(messages)
