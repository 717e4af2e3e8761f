"""The training config as the web form sees it: fields from the schema, checks as the CLI does them.

The form is generated from ``TrainConfig`` (types, defaults, help text, groups), so a
key added to the schema appears in the UI with no change here. Checking a config writes
it to a folder exactly as a job would and runs ``frametuner.config.load_config`` on it:
the same code path as ``frametuner train --config``, and its one-line messages are
mapped back to the form fields they name. Before anything is read, every path the config
names (the schema's ``path`` markers, in the config and in each dataset) is confined to
the server's roots (:mod:`frametuner.server.paths`); the dataset list is then checked by
the one dataset validator, ``frametuner.config.dataset.validate_dataset_list``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..config import GROUPS, ConfigError, TrainConfig, field_group, load_config, loads_jsonc, unimplemented_settings
from ..config.dataset import DatasetConfig, DatasetProblem, validate_dataset_list
from ..config.schema import PATH_INPUT, path_fields
from .paths import Roots, confine_keys, confine_path
from .settings import ServerSettings

CONFIG_FILE = "config.json"
DATASET_FILE = "datasets.json"
OUTPUT_SUBDIR = "output"

# Keys the server decides for a job (its output folder lives inside the job folder).
SERVER_OWNED_KEYS = ("output_dir",)
# Keys kept in config.json even at their default, so the file says what it trains.
ALWAYS_WRITTEN_KEYS = ("model_family", "model_flavour", "model_type")
# A shipped example whose data is generated names the command in this file ("{dir}" = its folder).
EXAMPLE_SETUP_FILE = "setup.txt"

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
                "path": (path_fields(TrainConfig).get(name) or (None,))[0],  # a file/folder key: confined to the server's roots
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
    """Relative input paths of ``config`` made absolute against ``base_dir`` (an example's folder)."""
    for key, (kind, keywords) in path_fields(TrainConfig).items():
        value = config.get(key)
        if kind != PATH_INPUT or value in keywords or not isinstance(value, str) or not value.strip():
            continue
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


def _example_setup_hint(dataset_file: Path, settings: ServerSettings) -> str:
    """For a shipped example whose data is generated (``<example>/setup.txt``): the command that makes it."""
    examples = Path(settings.examples_dir).resolve()
    if not dataset_file.is_relative_to(examples) or dataset_file.parent == examples:
        return ""
    folder = examples / dataset_file.relative_to(examples).parts[0]
    setup = folder / EXAMPLE_SETUP_FILE
    if not setup.is_file():
        return ""
    command = setup.read_text(encoding="utf-8").strip().replace("{dir}", str(folder))
    return f"; this example's data is generated: run `{command}` first"


def _dataset_problem_text(problem: DatasetProblem, folder: Path, hint: str) -> str:
    """One dataset problem as a form message: where (file:line, dataset, key), what, and the fix.

    Files the server wrote into the job's folder (the page's dataset list, config.json) go by their names.
    """
    where = []
    if problem.file:
        inside = Path(problem.file).parent.resolve() == folder.resolve()
        shown = Path(problem.file).name if inside else problem.file
        if problem.line or shown != CONFIG_FILE:
            where.append(f"{shown}:{problem.line}" if problem.line else shown)
    if problem.dataset:
        where.append(problem.dataset)
    if problem.key and not problem.message.startswith(problem.key):
        where.append(f"'{problem.key}'")
    text = ": ".join(where + [problem.message])
    if problem.fix:
        text += f"; {problem.fix}"
    text = text.replace(str(folder.resolve()), "the job's folder")  # a Check's throwaway folder means nothing to the user
    if problem.key in path_fields(DatasetConfig) and "not exist" in problem.message:
        text += hint
    return text


def _confine_datasets(path: Path, roots: Roots) -> list[Problem]:
    """Every path-bearing key of every dataset entry inside ``roots`` (relative ones beside the list)."""
    try:
        entries = loads_jsonc(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ConfigError):
        return []  # unreadable or not JSON: the dataset validator says so
    if not isinstance(entries, list):
        return []
    kinds = path_fields(DatasetConfig)
    problems = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            continue
        label = f"dataset '{entry['id']}'" if isinstance(entry.get("id"), str) and entry["id"] else f"dataset #{number}"
        accepted, refused = confine_keys(entry, kinds, path.parent, roots)
        problems += [Problem("data_backend_config", f"{label}: '{key}': {message}") for key, message in refused.items()]
        if not refused:
            problems += [Problem("data_backend_config", f"{label}: {message}") for message in _manifest_outside(entry, accepted, roots)]
    return problems


def _manifest_outside(entry: dict[str, Any], accepted: dict[str, str], roots: Roots) -> list[str]:
    """A jsonl/csv manifest names its media by path (relative to instance_data_dir): each must lie inside
    ``roots`` too, or a manifest (even one a request uploaded as an "image") could point anywhere.

    Reads only the path column, as ``frametuner.data.captions.read_manifest`` does (which the
    server does not import: the data package loads torch); rows it cannot read are left to the scan.
    """
    kind = entry.get("caption_strategy")
    if kind not in ("jsonl", "csv") or "instance_data_dir" not in accepted:
        return []
    root = Path(accepted["instance_data_dir"])
    manifest = Path(accepted["manifest"]) if "manifest" in accepted else root / f"metadata.{kind}"
    column = entry.get("path_column", DatasetConfig.model_fields["path_column"].default)
    try:
        text = manifest.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return []  # missing or unreadable (inside the roots): the validator and the scan say so
    if kind == "csv":
        rows = [(f"{manifest.name}:{n}", row.get(column)) for n, row in enumerate(csv.DictReader(text.splitlines()), start=2)]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(record, dict):
                rows.append((f"{manifest.name}:{n}", record.get(column)))
    for where, value in rows:
        if isinstance(value, str) and value.strip():
            _, problem = confine_path(value, root, roots)
            if problem:
                return [f"{where}: '{column}' {problem}"]  # the first one is enough to fix the list
    return []


def _dataset_config_for_check(config: dict[str, Any], loaded: TrainConfig | None) -> TrainConfig | None:
    """The config the dataset validator needs, even when other keys are invalid (the form shows both)."""
    if loaded is not None:
        return loaded
    for keys in (("data_backend_config", "model_family", "model_flavour"), ("data_backend_config",)):
        try:
            return TrainConfig.model_validate({key: config[key] for key in keys if key in config})
        except ValidationError:
            continue
    return None


def _check_datasets(config: TrainConfig, roots: Roots, settings: ServerSettings) -> list[Problem]:
    """The dataset list: its paths confined first (nothing about a refused path is looked at), then
    THE dataset validator (``frametuner.config.dataset.validate_dataset_list``), one field error per problem."""
    path = Path(config.data_backend_config) if config.data_backend_config else None
    refused = _confine_datasets(path, roots) if path is not None and path.is_file() else []
    if refused:
        return refused
    hint = _example_setup_hint(path, settings) if path is not None else ""
    return [Problem(p.field, _dataset_problem_text(p, roots.job, hint)) for p in validate_dataset_list(config)]


def confinement_problems(folder: Path, settings: ServerSettings) -> list[Problem]:
    """A saved job's config against the server's roots as they are now (a restart may have dropped an
    ``--allow-path`` root since it was saved): refused keys and dataset paths, empty when it may run."""
    roots = Roots(job=folder, read=settings.read_roots)
    if not (folder / CONFIG_FILE).exists():
        return []  # a job kind that runs without a config
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [Problem(None, f"the job's {CONFIG_FILE} cannot be read")]
    accepted, refused = confine_keys(config, path_fields(TrainConfig), folder, roots, write_base=folder)
    problems = [Problem(key, message) for key, message in refused.items()]
    dataset_list = Path(accepted.get("data_backend_config", ""))
    if "data_backend_config" in accepted and dataset_list.is_file():
        problems += _confine_datasets(dataset_list, roots)
    return problems


def write_job_config(
    folder: Path, raw: dict[str, Any], dataset_text: str | None, settings: ServerSettings, *, drop: tuple[str, ...] = ()
) -> CheckResult:
    """Write ``config.json`` (and ``datasets.json``) into ``folder`` as a job runs them, then check them.

    The config is the user's keys plus what the server owns: ``output_dir`` inside the
    folder, and the dataset list when it was edited in the page. Every path-bearing key
    (the schema's ``path`` markers, in the config and in each dataset) must lie inside the
    job's folder or a root the server was given (:class:`~frametuner.server.paths.Roots`);
    accepted ones are written resolved, refused ones are field errors that reveal nothing
    about the path. ``drop``: keys left out (a preview takes only a training job's model keys).
    """
    folder.mkdir(parents=True, exist_ok=True)
    roots = Roots(job=folder, read=settings.read_roots)
    config = {key: value for key, value in raw.items() if key not in SERVER_OWNED_KEYS and key not in drop}
    config["output_dir"] = str(folder / OUTPUT_SUBDIR)
    page_file = None
    if dataset_text is not None and dataset_text.strip():
        page_file = folder / DATASET_FILE
        _write_text_atomic(page_file, dataset_text.rstrip() + "\n")
        config["data_backend_config"] = str(page_file)
    kinds = {key: kind for key, kind in path_fields(TrainConfig).items() if key not in SERVER_OWNED_KEYS}
    accepted, refused = confine_keys(config, kinds, settings.base_dir, roots, write_base=folder)
    config.update(accepted)
    config_path = folder / CONFIG_FILE
    _write_json_atomic(config_path, config)

    result = CheckResult(config=config)
    result.errors.extend(Problem(key, message) for key, message in refused.items())
    loaded = None
    try:
        loaded = load_config(config_path)
    except ConfigError as error:
        result.errors.extend(problem for problem in problems_from_messages(error.messages) if problem.field not in refused)
    else:
        result.resolved = loaded.model_dump(mode="json")
        for line in unimplemented_settings(loaded):
            key = line.split("'")[1] if line.startswith("'") else None
            result.warnings.append(Problem(key, line))
    for key, path in accepted.items():  # inside the roots: saying what is missing there is fine
        if kinds[key].kind == PATH_INPUT and key != "data_backend_config" and not Path(path).exists():
            result.warnings.append(Problem(key, f"not found on the server: {path}"))
    if "data_backend_config" not in refused and "data_backend_config" not in drop:
        dataset_config = _dataset_config_for_check(config, loaded)
        if dataset_config is not None:
            result.errors.extend(_check_datasets(dataset_config, roots, settings))
    return result


def check_config(raw: dict[str, Any], dataset_text: str | None, settings: ServerSettings) -> CheckResult:
    """Check without keeping anything: the same write-and-load as a job, in a throwaway folder."""
    scratch_root = settings.data_dir / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root, prefix="check-") as folder:
        result = write_job_config(Path(folder), raw, dataset_text, settings)
        # Paths inside the throwaway folder mean nothing to the caller.
        result.config = {k: v for k, v in result.config.items() if k not in SERVER_OWNED_KEYS}
        if dataset_text and dataset_text.strip():
            result.config["data_backend_config"] = DATASET_FILE
        if result.resolved is not None:
            result.resolved.pop("output_dir", None)
            if dataset_text and dataset_text.strip():
                result.resolved["data_backend_config"] = DATASET_FILE
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
