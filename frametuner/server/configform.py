"""The training config as the web form sees it: fields from the schema, checks as the CLI does them.

The form is generated from ``TrainConfig`` (types, defaults, help text, groups), so a
key added to the schema appears in the UI with no change here. Checking a config writes
it to a folder exactly as a job would and runs ``frametuner.config.load_config`` on it:
the same code path as ``frametuner train --config``, and its one-line messages are
mapped back to the form fields they name.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..config import GROUPS, ConfigError, TrainConfig, field_group, load_config, loads_jsonc, unimplemented_settings

CONFIG_FILE = "config.json"
DATASET_FILE = "datasets.json"
OUTPUT_SUBDIR = "output"

# Keys the server decides for a job (its output folder lives inside the job folder).
SERVER_OWNED_KEYS = ("output_dir",)
# Keys kept in config.json even at their default, so the file says what it trains.
ALWAYS_WRITTEN_KEYS = ("model_family", "model_flavour", "model_type")
# Input files named in the config: relative ones resolve against the server's folder.
INPUT_FILE_KEYS = ("data_backend_config", "init_lora", "validation_prompt_file")
# Dataset-config validator from the data room, used once it exists (module, function taking a path).
DATASET_VALIDATOR = ("frametuner.config.dataset", "load_dataset_config")

_MESSAGE = re.compile(r"^(?P<source>.*?): '(?P<key>[^']*)': (?P<message>.*)$", re.S)


# ---------------------------------------------------------------------- form fields
def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _widget(annotation: Any) -> tuple[str, list[Any]]:
    """(widget kind, choices) for one annotation."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool", []
    if origin is typing.Literal:
        return "select", list(typing.get_args(annotation))
    if annotation is int:
        return "int", []
    if annotation is float:
        return "float", []
    if annotation is str:
        return "text", []
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if typing.get_origin(item) is typing.Literal:
            return "multi", list(typing.get_args(item))
    return "json", []  # lists of free values, nested models: edited as JSON


def form_fields() -> list[dict[str, Any]]:
    """One entry per config key, in schema order: what the form renders and ``/api/schema`` returns."""
    entries = []
    for name, info in TrainConfig.model_fields.items():
        annotation, nullable = _unwrap_optional(info.annotation)
        widget, choices = _widget(annotation)
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        entries.append(
            {
                "name": name,
                "group": field_group(name),
                "widget": widget,
                "choices": choices,
                "nullable": nullable,
                "default": default,
                "description": info.description or "",
                "server_owned": name in SERVER_OWNED_KEYS,
            }
        )
    return entries


def grouped_form_fields() -> list[tuple[str, list[dict[str, Any]]]]:
    fields_ = form_fields()
    order = list(GROUPS) + sorted({f["group"] for f in fields_} - set(GROUPS))
    return [(group, [f for f in fields_ if f["group"] == group]) for group in order if any(f["group"] == group for f in fields_)]


def json_schema() -> dict[str, Any]:
    return TrainConfig.model_json_schema()


# ---------------------------------------------------------------------- checking
@dataclass
class Problem:
    field: str | None  # the config key (top-level) it concerns; None = the config as a whole
    message: str

    def public(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message}


@dataclass
class CheckResult:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # what config.json holds
    resolved: dict[str, Any] | None = None  # every key with defaults filled in, when valid

    @property
    def ok(self) -> bool:
        return not self.errors

    def public(self) -> dict[str, Any]:
        field_errors: dict[str, list[str]] = {}
        for problem in self.errors:
            if problem.field:
                field_errors.setdefault(problem.field, []).append(problem.message)
        return {
            "ok": self.ok,
            "errors": [p.public() for p in self.errors],
            "field_errors": field_errors,
            "warnings": [p.public() for p in self.warnings],
            "config": self.config,
            "resolved": self.resolved,
        }


def _field_of(key: str, message: str) -> str | None:
    """The form field a CLI message is about: its key, or for whole-config checks the first key it names."""
    known = TrainConfig.model_fields
    top = key.split(".")[0]
    if top in known:
        return top
    if key == "(top level)":  # a cross-field check: it names its key first
        return next((word for word in re.findall(r"[a-z][a-z0-9_]+", message) if word in known), None)
    return None  # an unknown key: about the JSON, not a form field


def problems_from_messages(messages: list[str], source_label: str = CONFIG_FILE) -> list[Problem]:
    """``SOURCE: 'key': message`` lines (``ConfigError.messages``) -> per-field problems."""
    problems = []
    for line in messages:
        match = _MESSAGE.match(line)
        if match is None:
            problems.append(Problem(None, line))
            continue
        key, message = match["key"], match["message"]
        field_name = _field_of(key, message)
        text = message if field_name == key else f"'{key}': {message}"
        problems.append(Problem(field_name, text))
    return problems


def _absolute_input_paths(config: dict[str, Any], base_dir: Path) -> None:
    for key in INPUT_FILE_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value.strip():
            path = Path(value.strip()).expanduser()
            config[key] = str(path if path.is_absolute() else (base_dir / path).resolve())


def _write_json_atomic(path: Path, data: Any) -> None:
    _write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _check_dataset(path: Path, result: CheckResult) -> None:
    """The dataset list: valid JSON(C) list of objects; then the data room's validator, when present."""
    try:
        data = loads_jsonc(path.read_text(encoding="utf-8"))
    except (ValueError, ConfigError) as error:
        text = "; ".join(error.messages) if isinstance(error, ConfigError) else str(error)
        result.errors.append(Problem("data_backend_config", f"dataset config is not valid JSON: {text}"))
        return
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        result.errors.append(Problem("data_backend_config", "dataset config must be a JSON list of dataset objects [{...}, ...]"))
        return
    module_name, function_name = DATASET_VALIDATOR
    try:
        validate = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError):
        return  # not built yet: the syntax check above is all there is
    try:
        validate(path)
    except ConfigError as error:
        for problem in problems_from_messages(error.messages):
            result.errors.append(Problem("data_backend_config", problem.message if problem.field else str(problem.message)))


def write_job_config(
    folder: Path, raw: dict[str, Any], dataset_text: str | None, base_dir: Path
) -> CheckResult:
    """Write ``config.json`` (and ``datasets.json``) into ``folder`` as a job runs them, then check them.

    The config is the user's keys plus what the server owns: ``output_dir`` inside the
    folder, absolute input paths, and the dataset list when it was edited in the page.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = {key: value for key, value in raw.items() if key not in SERVER_OWNED_KEYS}
    config["output_dir"] = str(folder / OUTPUT_SUBDIR)
    if dataset_text is not None and dataset_text.strip():
        _write_text_atomic(folder / DATASET_FILE, dataset_text.rstrip() + "\n")
        config["data_backend_config"] = str(folder / DATASET_FILE)
    _absolute_input_paths(config, base_dir)
    config_path = folder / CONFIG_FILE
    _write_json_atomic(config_path, config)

    result = CheckResult(config=config)
    try:
        loaded = load_config(config_path)
    except ConfigError as error:
        result.errors.extend(problems_from_messages(error.messages))
    else:
        result.resolved = loaded.model_dump(mode="json")
        for line in unimplemented_settings(loaded):
            key = line.split("'")[1] if line.startswith("'") else None
            result.warnings.append(Problem(key, line))
    for key in INPUT_FILE_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value and not Path(value).is_file():
            result.warnings.append(Problem(key, f"file not found on the server: {value}"))
    if not config.get("data_backend_config"):
        result.warnings.append(Problem("data_backend_config", "no dataset config: training needs one (edit it below or give a path)"))
    elif Path(config["data_backend_config"]).is_file():
        _check_dataset(Path(config["data_backend_config"]), result)
    return result


def check_config(raw: dict[str, Any], dataset_text: str | None, scratch_root: Path, base_dir: Path) -> CheckResult:
    """Check without keeping anything: the same write-and-load as a job, in a throwaway folder."""
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root, prefix="check-") as folder:
        result = write_job_config(Path(folder), raw, dataset_text, base_dir)
        # Paths inside the throwaway folder mean nothing to the caller.
        result.config = {k: v for k, v in result.config.items() if k not in SERVER_OWNED_KEYS}
        if dataset_text and dataset_text.strip():
            result.config["data_backend_config"] = DATASET_FILE
        if result.resolved is not None:
            result.resolved.pop("output_dir", None)
        return result


def load_example(path: Path) -> dict[str, Any]:
    """An example config for the form, its relative input paths made absolute against its folder."""
    config = loads_jsonc(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ConfigError([f"{path}: the top level must be a JSON object"])
    _absolute_input_paths(config, path.parent.resolve())
    for key in SERVER_OWNED_KEYS:
        config.pop(key, None)
    return config
