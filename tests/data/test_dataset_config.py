"""Dataset list: defaults, resolved paths, and one-line errors naming file, dataset id and key."""

from __future__ import annotations

import json

import pytest

from frametuner.config import ConfigError, load_config
from frametuner.config.dataset import load_dataset_configs

from .factory import dataset, write_configs


def load(tmp_path, datasets, **config):
    (tmp_path / "clips").mkdir(exist_ok=True)
    return load_dataset_configs(load_config(write_configs(tmp_path, datasets, **config)))


def errors(tmp_path, datasets, **config) -> str:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, datasets, **config)
    return str(error.value)


def test_defaults_and_paths_resolve_beside_the_dataset_file(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "datasets.json").write_text(
        '// comments are fine\n[{"id": "clips", "instance_data_dir": "../clips", "caption_strategy": "jsonl",}]'
    )
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "metadata.jsonl").write_text("")
    (tmp_path / "config.json").write_text(json.dumps({"data_backend_config": "nested/datasets.json"}))
    [config] = load_dataset_configs(load_config(tmp_path / "config.json"))
    assert config.root == (tmp_path / "clips").resolve()
    assert config.manifest_path == (tmp_path / "clips" / "metadata.jsonl").resolve()
    assert (config.video.num_frames, config.video.bucket_strategy, config.crop) == (93, "aspect_ratio", "center")
    assert config.min_frames == 93  # defaults to num_frames, as SimpleTuner
    assert config.target_area() == 480 * 832 and config.trains


def test_resolution_frames_min_frames_default_and_disabled_datasets(tmp_path):
    datasets = [
        dataset("a", "clips", video={"bucket_strategy": "resolution_frames", "frame_interval": 8, "num_frames": 33}),
        dataset("off", "does-not-exist", disabled=True),
    ]
    [config] = load(tmp_path, datasets)
    assert config.min_frames == 9
    assert config.target_area() == 64 * 96
    [edge] = load(tmp_path, [dataset("e", "clips", resolution="512")])
    assert edge.target_area() == 512 * 512


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"video": {"num_frames": 92}}, "dataset 'x': 'video.num_frames': 92 frames is not 4k+1"),
        ({"video": {"num_frames": 17, "frame_interval": 6}}, "dataset 'x': 'video.frame_interval': 6 is not a multiple of the model's temporal stride 4"),
        ({"video": {"num_frmes": 17}}, "dataset 'x': 'video.num_frmes': unknown key; did you mean 'num_frames'?"),
        ({"crop": "middle"}, "dataset 'x': 'crop': 'middle' is not allowed; use one of 'center', 'random' or 'none'"),
        ({"resolution": "480by832"}, "dataset 'x': resolution '480by832' is not a number or 'HxW'"),
        ({"resolution": "480x832", "resolution_type": "pixel"}, "resolution_type 'pixel' takes the shorter edge as a number"),
        ({"video": {"num_frames": 17, "min_frames": 21}}, "video.min_frames 21 is above video.num_frames 17"),
        ({"probability": 0}, "dataset 'x': 'probability': input should be greater than 0"),
        ({"instance_data_dir": "nowhere"}, "dataset 'x': 'instance_data_dir':"),
        ({"caption_strategy": "csv"}, "dataset 'x': 'manifest':"),
    ],
)
def test_errors_name_file_dataset_and_key(tmp_path, entry, expected):
    message = errors(tmp_path, [{**dataset("x", "clips"), **entry}])
    assert str(tmp_path / "datasets.json") in message
    assert expected in message
    assert "\n" not in message  # one line per problem


def test_image_dataset_rules(tmp_path):
    message = errors(tmp_path, [dataset("stills", "clips", dataset_type="image", is_i2v=True)])
    assert "dataset 'stills'" in message and "is_i2v needs dataset_type 'video'" in message
    message = errors(tmp_path, [{**dataset("stills", "clips", dataset_type="image"), "video": {"num_frames": 5}}])
    assert "'video' section applies to dataset_type 'video' only" in message


def test_cross_dataset_checks(tmp_path):
    assert "'id': 'a' is used by two datasets" in errors(tmp_path, [dataset("a", "clips"), dataset("a", "clips")])
    message = errors(tmp_path, [dataset("train", "clips"), dataset("eval", "clips", split="eval")], eval_dataset_id="evl")
    assert "'eval_dataset_id': 'evl' is not an enabled dataset" in message and "did you mean 'eval'?" in message
    assert "no dataset to train on" in errors(tmp_path, [dataset("eval", "clips", split="eval")])
    message = errors(tmp_path, [dataset("a", "clips"), 3])
    assert "dataset #2: each dataset is a JSON object" in message


def test_missing_dataset_file_is_clear(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"data_backend_config": "missing.json"}))
    with pytest.raises(ConfigError, match="'data_backend_config': .*missing.json not found"):
        load_dataset_configs(load_config(tmp_path / "config.json"))
