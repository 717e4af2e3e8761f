"""Config loading: JSONC as users write it, CLI overrides, and one-line errors naming key and fix."""

from __future__ import annotations

import json

import pytest

from frametuner.cli import main
from frametuner.config import ConfigError, load_config, loads_jsonc, parse_resolution

QUICKSTART = """{
  "model_type": "lora",
  "model_family": "longcat_video",
  "model_flavour": "final",
  "pretrained_model_name_or_path": null,      // auto-selected from flavour
  "base_model_precision": "bf16",             // int8-quanto/fp8-torchao also work for LoRA
  "train_batch_size": 1,
  "gradient_checkpointing": true,
  "lora_rank": 8,
  "learning_rate": 1e-4,
  "validation_resolution": "480x832",
  "validation_num_video_frames": 93,
  "validation_num_inference_steps": 40,
  "validation_guidance": 4.0
}
"""


def write(tmp_path, text, name="config.json"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_quickstart_jsonc_parses(tmp_path):
    config = load_config(write(tmp_path, QUICKSTART))
    assert config.model_family == "longcat_video" and config.model_flavour == "final"
    assert config.lora_rank == 8 and config.effective_lora_alpha == 8.0
    assert config.validation_size == (480, 832)
    assert config.flow_schedule_shift == 12.0
    assert config.aspect_bucket_alignment == 64


def test_jsonc_comments_strings_and_trailing_commas():
    data = loads_jsonc('{"a": "http://x//y", /* block\n comment */ "b": [1, 2,], // tail\n "c": "/*no*/",}')
    assert data == {"a": "http://x//y", "b": [1, 2], "c": "/*no*/"}


def test_invalid_json_names_line(tmp_path):
    path = write(tmp_path, '{\n  "lora_rank": 8\n  "learning_rate": 1e-4\n}')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{path}:3:" in str(error.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"lora_rnak": 8}, ["'lora_rnak': unknown key; did you mean 'lora_rank'?"]),
        ({"lora_rank": "eight"}, ["'lora_rank'", "valid integer", "'eight'"]),
        ({"validation_num_video_frames": 92}, ["'validation_num_video_frames'", "92 frames is not 4k+1", "use 89 or 93"]),
        ({"validation_resolution": "480x830"}, ["'validation_resolution'", "multiples of 16", "try '480x832'"]),
        ({"model_family": "longcat_vidoe"}, ["'model_family'", "unknown model family", "did you mean 'longcat_video'?"]),
        ({"model_flavour": "finale"}, ["model_flavour 'finale' is not a flavour", "did you mean 'final'?"]),
        ({"model_type": "full", "base_model_precision": "int8-quanto"}, ["cannot train a quantised base", "use base_model_precision 'bf16'"]),
        ({"mixed_precision": "bf32"}, ["'mixed_precision'", "'bf32' is not allowed", "'bf16'"]),
    ],
)
def test_bad_config_gives_one_line_error(tmp_path, content, expected):
    path = write(tmp_path, json.dumps(content))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert len(error.value.messages) == 1, error.value.messages
    message = error.value.messages[0]
    assert "\n" not in message and message.startswith(str(path))
    for fragment in expected:
        assert fragment in message, message


def test_cli_flags_override_file(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    write(tmp_path, '[{"id": "clips", "instance_data_dir": "clips"}]', "datasets.json")
    path = write(tmp_path, QUICKSTART.replace('"lora_rank": 8,', '"lora_rank": 8, "data_backend_config": "datasets.json",'))
    assert main(["config", "check", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lora_rank"] == 8 and printed["lora_dropout"] == 0.0  # defaults resolved


def test_train_cli_override_and_unknown_flag(tmp_path, capsys, monkeypatch):
    import frametuner.training as training

    import frametuner.config.schema as schema

    seen = {}
    monkeypatch.setattr(training, "train", lambda config: seen.setdefault("config", config) and 0)
    # Every key is implemented today: the loud warning is exercised with a stand-in entry.
    monkeypatch.setitem(schema.NOT_YET_IMPLEMENTED, "lora_dropout", (lambda c: c.lora_dropout > 0, "LoRA dropout"))
    path = write(tmp_path, QUICKSTART)
    flags = ["--lora_rank", "32", "--enable_group_offload", "--bsa_chunk_3d_shape", "[4,4,4]", "--seed", "7", "--lora_dropout", "0.1"]
    assert main(["train", "--config", str(path), *flags]) == 0
    config = seen["config"]
    assert config.lora_rank == 32 and config.enable_group_offload is True and config.bsa_chunk_3d_shape == [4, 4, 4]
    assert config.seed == 7
    warnings = " ".join(capsys.readouterr().err.split())
    assert "'lora_dropout' = 0.1: LoRA dropout is NOT IMPLEMENTED" in warnings
    assert "group offload" not in warnings and "multi-GPU" not in warnings

    assert main(["train", "--config", str(path), "--lora_rnk", "4"]) == 2
    assert "--lora_rnk: unknown option; did you mean '--lora_rank'?" in capsys.readouterr().err


def test_resolution_parser():
    assert parse_resolution("704x1280") == (704, 1280)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_resolution("720p")
