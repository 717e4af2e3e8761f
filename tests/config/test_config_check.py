"""``frametuner config check`` runs the one dataset validator: each dataset-list mistake is a
field error naming the file, the line, the key and the fix, never "OK" (issue 19 point 2)."""

from __future__ import annotations

import json

import pytest

from frametuner.cli import main
from frametuner.config import load_config
from frametuner.config.dataset import DatasetProblem, validate_dataset_list

DATASETS = """[
  // one clip folder
  {
    "id": "clips",
    "instance_data_dir": "clips",
    "video": {
      "num_frames": 93
    }
  }
]
"""


def write_setup(tmp_path, datasets: str | None = DATASETS, clips: bool = True, **config) -> str:
    if clips:
        (tmp_path / "clips").mkdir()
    settings = {"model_flavour": "tiny", **config}
    if datasets is not None:
        (tmp_path / "datasets.json").write_text(datasets)
        settings.setdefault("data_backend_config", "datasets.json")
    (tmp_path / "config.json").write_text(json.dumps(settings))
    return str(tmp_path / "config.json")


def check(path: str, capsys) -> tuple[int, str, str]:
    code = main(["config", "check", path])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_good_config_is_ok(tmp_path, capsys):
    path = write_setup(tmp_path)
    assert validate_dataset_list(load_config(path), frame_stride=4) == []
    code, out, err = check(path, capsys)
    assert code == 0 and f"{path}: OK" in err
    assert json.loads(out)["data_backend_config"] == "datasets.json"


def test_missing_data_backend_config(tmp_path, capsys):
    path = write_setup(tmp_path, datasets=None)
    [problem] = validate_dataset_list(load_config(path), frame_stride=4)
    assert (problem.field, problem.file, problem.key) == ("data_backend_config", path, None)
    assert "is not set" in problem.message and "datasets.json" in problem.fix
    code, out, err = check(path, capsys)
    assert code == 2 and "OK" not in err and out == ""
    assert f"error: {path}: 'data_backend_config': is not set; point it at a JSON list of datasets" in err


def test_dataset_list_file_not_found(tmp_path, capsys):
    path = write_setup(tmp_path, datasets=None, data_backend_config="nope.json")
    [problem] = validate_dataset_list(load_config(path), frame_stride=4)
    assert problem.field == "data_backend_config" and problem.file == path
    assert f"{tmp_path / 'nope.json'} not found" in problem.message and "check the path" in problem.fix
    code, _, err = check(path, capsys)
    assert code == 2 and "OK" not in err and "nope.json not found" in err


def test_dataset_folder_does_not_exist(tmp_path, capsys):
    path = write_setup(tmp_path, clips=False)
    [problem] = validate_dataset_list(load_config(path), frame_stride=4)
    dataset_file = str(tmp_path / "datasets.json")
    assert (problem.field, problem.file, problem.line, problem.key) == ("data_backend_config", dataset_file, 5, "instance_data_dir")
    assert problem.dataset == "dataset 'clips'"
    assert f"{tmp_path / 'clips'} does not exist" in problem.message and "create the folder" in problem.fix
    code, _, err = check(path, capsys)
    assert code == 2 and "OK" not in err
    assert f"error: {dataset_file}:5: dataset 'clips': 'instance_data_dir': {tmp_path / 'clips'} does not exist; fix the path" in err


def test_num_frames_not_4k_plus_1(tmp_path, capsys):
    path = write_setup(tmp_path, datasets=DATASETS.replace("93", "92"))
    [problem] = validate_dataset_list(load_config(path))  # the stride comes from the family's spec
    assert (problem.field, problem.line, problem.key) == ("data_backend_config", 7, "video.num_frames")
    assert problem.message.startswith("92 frames is not 4k+1") and problem.fix == "use 89 or 93"
    code, _, err = check(path, capsys)
    assert code == 2 and "OK" not in err
    assert f"{tmp_path / 'datasets.json'}:7: dataset 'clips': 'video.num_frames': 92 frames is not 4k+1" in err


def test_every_problem_is_reported_with_its_line(tmp_path):
    datasets = '[\n {"id": "a", "instance_data_dir": "clips",\n  "crop": "middle"},\n {"id": "b",\n  "instance_data_dir": "clips", "repeats": -1}\n]'
    path = write_setup(tmp_path, datasets=datasets)
    problems = validate_dataset_list(load_config(path), frame_stride=4)
    assert [(p.dataset, p.key, p.line) for p in problems] == [("dataset 'a'", "crop", 3), ("dataset 'b'", "repeats", 5)]
    assert problems[0].fix == "use one of 'center', 'random' or 'none'"


def test_broken_json_names_the_line(tmp_path):
    path = write_setup(tmp_path, datasets='[\n {"id": "a"\n  "instance_data_dir": "clips"}\n]')
    [problem] = validate_dataset_list(load_config(path), frame_stride=4)
    assert problem.line == 3 and problem.message.startswith("not valid JSON")


def test_eval_dataset_id_is_a_field_error_of_its_own(tmp_path):
    path = write_setup(tmp_path, eval_dataset_id="clps")
    [problem] = validate_dataset_list(load_config(path), frame_stride=4)
    assert problem.field == "eval_dataset_id" and "did you mean 'clips'?" in problem.message


@pytest.mark.parametrize("name", ["validate_dataset_list", "DatasetProblem"])
def test_the_server_finds_the_validator_by_its_name(name):
    """The web UI's Check imports the validator by name: a rename must break this test, not the UI."""
    import frametuner.config as config
    import frametuner.config.dataset as dataset

    assert getattr(dataset, name) is getattr(config, name)
    assert DatasetProblem.__dataclass_fields__.keys() >= {"field", "message", "fix", "file", "line", "key"}


def test_train_stops_on_the_same_problem_before_loading_anything(tmp_path, capsys, monkeypatch):
    """``train`` runs the same validator first: same line, exit 2, no model or cache touched."""
    import frametuner.training.pipeline as pipeline

    monkeypatch.setattr(pipeline, "scan_and_cache", lambda *a, **k: pytest.fail("scanned before the dataset list was checked"))
    path = write_setup(tmp_path, datasets=DATASETS.replace("93", "92"))
    assert main(["train", "--config", path]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'datasets.json'}:7: dataset 'clips': 'video.num_frames': 92 frames is not 4k+1" in err
    assert "use 89 or 93" in err
