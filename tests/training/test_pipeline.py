"""`frametuner train` end to end on the tiny model: scan, cache, train, validate, export."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from frametuner.config import load_config
from frametuner.demo import DEMO_DATASETS, write_demo_clips
from frametuner.training import train


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    write_demo_clips(folder / "clips", frames=9)
    (folder / "datasets.json").write_text(json.dumps([{**DEMO_DATASETS[0], "repeats": 0, "video": {"num_frames": 5}}]))
    return folder


def run(clips: Path, out: Path, **overrides):
    config_path = clips / f"config-{out.name}.json"
    config_path.write_text(json.dumps({
        "model_flavour": "tiny", "mixed_precision": "no", "report_to": "none", "seed": 3,
        "data_backend_config": "datasets.json", "output_dir": str(out), "cache_dir": str(clips / "cache"),
        "max_train_steps": 4, "checkpointing_steps": 100, "validation_steps": 2, "learning_rate": 1e-3,
        "validation_prompt": "a red ball bouncing on a wooden floor", "validation_resolution": "32x48",
        "validation_num_video_frames": 5, "validation_num_inference_steps": 2, **overrides,
    }))
    assert train(load_config(config_path)) == 0
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_train_validates_at_start_middle_and_end_without_disturbing_training(clips, tmp_path):
    with_validation = run(clips, tmp_path / "on")
    videos = [e for e in with_validation if e["event"] == "validation"]
    assert [e["step"] for e in videos] == [0, 2, 4]
    for event in videos:
        with av.open(str(tmp_path / "on" / event["video"])) as container:
            frames = list(container.decode(video=0))
        assert len(frames) == 5 and (frames[0].height, frames[0].width) == (32, 48)
        assert (tmp_path / "on" / event["contact_sheet"]).stat().st_size > 0
    assert (tmp_path / "on" / "validation" / "index.html").exists()
    done = [e for e in with_validation if e["event"] == "done"][0]
    assert set(done["lora"]) == {"peft", "upstream", "comfyui"}
    assert all((tmp_path / "on" / path).exists() for path in done["lora"].values())

    without = run(clips, tmp_path / "off", validation_prompt=None)
    assert not [e for e in without if e["event"] == "validation"]
    losses = lambda events: [e["loss"] for e in events if e["event"] == "step"]  # noqa: E731
    assert len(losses(with_validation)) == 4 and losses(with_validation) == losses(without)


def test_train_requires_a_dataset_list(tmp_path):
    from frametuner.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="data_backend_config"):
        train(TrainConfig(model_flavour="tiny", output_dir=str(tmp_path)))


def test_demo_command_accepts_config_flags(tmp_path, monkeypatch):
    """`frametuner demo --max_train_steps 2` overrides the demo config like `train` does."""
    import frametuner.training as training
    from frametuner.cli import main

    seen = {}
    monkeypatch.setattr(training, "train", lambda config: seen.setdefault("config", config) and 0)
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--max_train_steps", "2", "--lora_rank", "4"]) == 0
    config = seen["config"]
    assert config.max_train_steps == 2 and config.lora_rank == 4 and config.model_flavour == "tiny"
    assert config.output_dir == str(tmp_path / "demo" / "output")
    assert sorted(p.suffix for p in (tmp_path / "demo" / "clips").iterdir()) == [".mp4"] * 4 + [".txt"] * 4
