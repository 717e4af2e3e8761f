"""What a user sees of the CLI (issue 19 point 11): a first line before the heavy imports,
summary tables that keep whole paths in logs, a stop summary with the exact resume command,
``--help`` with choices and defaults, and a demo folder git ignores."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from frametuner.cli import main
from frametuner.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")

# Runs a frametuner command with stdout/stderr replaced by a probe that reports, at the first
# non-empty write, which heavy modules were already imported, then ends the process.
PROBE = """
import os, sys
class Probe:
    def __init__(self, stream):
        self.stream = stream
    def write(self, text):
        if text.strip():
            heavy = sorted(name for name in {heavy!r} if name in sys.modules)
            self.stream.write("PROBE " + repr((heavy, text.strip())) + "\\n")
            self.stream.flush()
            os._exit(0)
        return len(text)
    def flush(self):
        pass
    def isatty(self):
        return False
    def __getattr__(self, name):
        return getattr(self.stream, name)
real = sys.__stdout__
sys.stdout, sys.stderr = Probe(real), Probe(real)
from frametuner.cli import main
main({argv!r})
"""


def first_line(argv: list[str]) -> tuple[list[str], str]:
    code = PROBE.format(heavy=HEAVY, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, (done.stdout, done.stderr)
    import ast

    return ast.literal_eval(lines[0][len("PROBE ") :])


def demo_config(tmp_path) -> Path:
    (tmp_path / "clips").mkdir()
    (tmp_path / "datasets.json").write_text('[{"id": "clips", "instance_data_dir": "clips", "video": {"num_frames": 9}}]')
    config = {"model_flavour": "tiny", "data_backend_config": "datasets.json", "output_dir": str(tmp_path / "out")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path / "config.json"


@pytest.mark.parametrize("command", ["train", "sample"])
def test_train_and_sample_print_a_first_line_before_importing_torch(tmp_path, command):
    """(Measured on the CPU demo: the first line comes about 0.9 s after start, against 6-10 s before.)"""
    if command == "train":
        argv = ["train", "--config", str(demo_config(tmp_path))]
    else:
        argv = ["sample", "--prompt", "a red fox", "--model_flavour", "tiny", "--output", str(tmp_path / "fox.mp4")]
    heavy, line = first_line(argv)
    assert heavy == [], f"{heavy} imported before the first line {line!r}"
    assert line.split()[-1] != "" and f"{command}:" in line
    assert ("config.json" in line) if command == "train" else ("'a red fox'" in line and "fox.mp4" in line)


def long_path(tmp_path, name: str) -> str:
    return str(tmp_path / ("a-rather-long-folder-name-for-a-training-run-" * 3) / "checkpoints" / "checkpoint-000010" / "lora" / name)


def summary(capsys, monkeypatch, config, result) -> str:
    from frametuner.training.pipeline import print_summary

    monkeypatch.setenv("COLUMNS", "80")  # what rich assumes for a file or a pipe
    print_summary(config, result)
    return capsys.readouterr().err


def test_summary_keeps_whole_paths_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    config = TrainConfig(output_dir=str(tmp_path / "out"))
    lora = {"peft": long_path(tmp_path, "peft"), "upstream": long_path(tmp_path, "lora_upstream.safetensors")}
    result = {"step": 10, "seconds": 12.5, "checkpoint": Path(long_path(tmp_path, "x")).parent.parent, "lora": lora}
    printed = summary(capsys, monkeypatch, config, result)
    lines = printed.splitlines()
    for path in [*lora.values(), str(result["checkpoint"])]:
        assert len(path) > 80 and any(path in line for line in lines), f"{path} is cut:\n{printed}"
    assert max(len(line) for line in lines) < 400  # natural width, not padded to the unbounded one


def parse_train(argv: list[str], monkeypatch) -> TrainConfig:
    import frametuner.training as training

    seen = {}
    monkeypatch.setattr(training, "train", lambda config: seen.setdefault("config", config) and 0)
    assert main(argv) == 0
    return seen["config"]


def test_the_stop_summary_prints_the_exact_resume_command(tmp_path, capsys, monkeypatch):
    config_path = demo_config(tmp_path)
    argv = ["train", "--config", str(config_path), "--lora_rank", "8", "--learning_rate", "2e-4", "--resume_from_checkpoint", "checkpoint-000002"]
    config = parse_train(argv, monkeypatch)
    capsys.readouterr()
    printed = summary(capsys, monkeypatch, config, {"stopped": "SIGINT", "step": 3, "checkpoint": tmp_path / "out" / "checkpoints" / "checkpoint-000003"})
    assert "stopped" in printed
    [line] = [line for line in printed.splitlines() if "resume with" in line]
    command = line.split("resume with", 1)[1].strip().strip("│|").strip()
    tokens = shlex.split(command)
    assert tokens[:2] == ["frametuner", "train"] and tokens[-2:] == ["--resume_from_checkpoint", "latest"]
    assert tokens.count("--resume_from_checkpoint") == 1
    # Run back through the CLI, the command gives the same config, resuming from the latest checkpoint.
    resumed = parse_train(tokens[1:], monkeypatch)
    assert resumed.resume_from_checkpoint == "latest"
    assert resumed.model_dump(exclude={"resume_from_checkpoint"}) == config.model_dump(exclude={"resume_from_checkpoint"})
    assert resumed.lora_rank == 8 and resumed.learning_rate == 2e-4


def test_a_finished_run_has_no_resume_line(tmp_path, capsys, monkeypatch):
    printed = summary(capsys, monkeypatch, TrainConfig(output_dir=str(tmp_path)), {"step": 3, "checkpoint": tmp_path / "c"})
    assert "training finished" in printed and "resume with" not in printed


def test_help_lists_choices_and_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # one line per flag's help
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    entries = flag_entries(text)
    for name, info in TrainConfig.model_fields.items():
        entry = entries[f"--{name}"]
        assert "default: " in entry, entry
        annotation = info.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]
        if typing.get_origin(annotation) is typing.Literal:
            choices = typing.get_args(annotation)
            assert f"--{name} {{{','.join(map(str, choices))}}}" in entry, entry
            assert "choices: " + ", ".join(map(str, choices)) in entry, entry
    assert "--model_type {lora,full}" in text and "choices: lora, full; default: lora" in text
    assert "default: 42" in entries["--seed"] and "default: true" in entries["--gradient_checkpointing"]


def flag_entries(text: str) -> dict[str, str]:
    """``--flag`` -> its usage and help in one string (argparse puts long flags' help on the next line)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("  -") and stripped.startswith("--"):
            current = stripped.split()[0].rstrip(",")
            entries[current] = stripped
        elif current is not None and line.startswith("    ") and stripped:
            entries[current] += " " + stripped
        else:
            current = None
    return entries


def test_sample_help_names_every_lora_form_training_writes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    entry = flag_entries(capsys.readouterr().out)["--lora"]
    for form in ("lora/peft", "adapter_model.safetensors", "lora_upstream.safetensors", "lora_comfyui.safetensors"):
        assert form in entry


def test_gitignore_covers_the_demo_folder():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("frametuner-demo/config.json", "frametuner-demo/output/checkpoints/x", "some/dir/frametuner-demo/clips/a.mp4"):
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert done.returncode == 0, f"{path} is not ignored"


def _parsers(parser, path=("frametuner",)):
    import argparse

    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


def test_every_subcommand_option_with_a_default_shows_it(monkeypatch):
    import argparse

    from frametuner.cli import build_parser

    monkeypatch.setenv("COLUMNS", "2000")
    checked = 0
    for name, parser in _parsers(build_parser()):
        if name == "frametuner bench":
            continue  # passes its flags through to the benchmark's own parser
        entries = flag_entries(parser.format_help())
        for action in parser._actions:
            if not action.option_strings or not action.option_strings[0].startswith("--") or action.required:
                continue
            if action.default in (None, False, [], argparse.SUPPRESS):
                continue
            entry = entries[action.option_strings[0]]
            assert "default" in entry, f"{name} {action.option_strings[0]}: {entry}"
            checked += 1
    assert checked > 10
