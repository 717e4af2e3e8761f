"""New-job API: schema, families, Check (per-field errors) and Save (a config the CLI accepts)."""

from __future__ import annotations

from pathlib import Path

from frametuner.config import TrainConfig, load_config
from frametuner.server.configform import form_fields, problems_from_messages


def test_families_list_longcat_with_tiny_flavour(client):
    families = {f["name"]: f for f in client.get("/api/families").json()}
    flavours = {f["name"] for f in families["longcat_video"]["flavours"]}
    assert {"final", "tiny"} <= flavours
    assert families["longcat_video"]["default_flavour"] == "final"


def test_families_carry_their_sampling_defaults_from_the_registry(client):
    """Preview's form starts from each family's own defaults (its info.py), not numbers in the page."""
    from frametuner.models.registry import families as registered

    listed = {f["name"]: f for f in client.get("/api/families").json()}
    assert set(listed) == set(registered())
    for name, info in registered().items():
        d = info.defaults
        assert listed[name]["defaults"] == {"resolution": f"{d.height}x{d.width}", "frames": d.frames, "steps": d.steps, "guidance": d.guidance}


def test_schema_has_every_config_key_with_group_default_and_widget(client):
    schema = client.get("/api/schema").json()
    fields = {f["name"]: f for f in schema["fields"]}
    assert list(fields) == list(TrainConfig.model_fields)
    assert fields["lora_rank"] == fields["lora_rank"] | {"group": "lora", "widget": "int", "default": 16, "nullable": False}
    assert fields["model_type"]["widget"] == "select" and fields["model_type"]["choices"] == ["lora", "full"]
    assert fields["lora_export_formats"]["widget"] == "multi"
    assert fields["lora_alpha"]["nullable"] is True and fields["lora_alpha"]["widget"] == "float"
    assert fields["distributed"]["widget"] == "json" and fields["distributed"]["default"]["strategy"] == "ddp"
    assert {f["group"] for f in schema["fields"]} <= set(schema["groups"])


def test_new_job_page_renders_one_input_per_field(client):
    html = client.get("/jobs/new").text
    for name in TrainConfig.model_fields:
        if name not in ("model_family", "model_flavour"):
            assert f'data-field="{name}"' in html, name


def test_check_returns_errors_per_field(client):
    bad = {
        "model_family": "longcat_video",
        "model_flavour": "tinyy",
        "lora_rank": 0,
        "validation_resolution": "480x830",
        "validation_num_video_frames": 92,
        "lora_rnak": 4,
    }
    result = client.post("/api/config/check", json={"config": bad}).json()
    assert result["ok"] is False
    errors = result["field_errors"]
    assert "greater than or equal to 1" in errors["lora_rank"][0]
    assert "multiples of 16" in errors["validation_resolution"][0] and "480x832" in errors["validation_resolution"][0]
    assert "4k+1" in errors["validation_num_video_frames"][0]
    unknown = [e for e in result["errors"] if e["field"] is None]
    assert len(unknown) == 1 and "did you mean 'lora_rank'" in unknown[0]["message"]


def test_whole_config_checks_land_on_the_field_they_name(client, demo_config):
    result = client.post("/api/config/check", json={"config": demo_config | {"model_flavour": "huge"}}).json()
    assert list(result["field_errors"]) == ["model_flavour"]
    assert "available: final, tiny" in result["field_errors"]["model_flavour"][0]


def test_check_flags_bad_dataset_json_on_the_dataset_field(client, demo_config):
    result = client.post("/api/config/check", json={"config": demo_config, "dataset_config": "[{oops"}).json()
    assert result["ok"] is False
    assert result["field_errors"]["data_backend_config"][0].startswith("datasets.json:1: not valid JSON")
    result = client.post("/api/config/check", json={"config": demo_config, "dataset_config": '{"id": 1}'}).json()
    assert "expected a non-empty JSON list of datasets" in result["field_errors"]["data_backend_config"][0]


def test_check_ok_reports_resolved_defaults_and_warnings(client, demo_config, monkeypatch):
    import frametuner.config.schema as schema

    # Every key is implemented today: the warning path is exercised with a stand-in entry.
    monkeypatch.setitem(schema.NOT_YET_IMPLEMENTED, "lora_dropout", (lambda c: c.lora_dropout > 0, "LoRA dropout"))
    result = client.post("/api/config/check", json={"config": demo_config | {"lora_dropout": 0.1}}).json()
    assert result["ok"] is True, result["errors"]
    assert result["resolved"]["lora_rank"] == 8 and result["resolved"]["adam_beta2"] == 0.999
    assert any(w["field"] == "lora_dropout" and "NOT IMPLEMENTED" in w["message"] for w in result["warnings"])


def test_save_writes_config_that_load_config_accepts_unchanged(client, settings, demo_config, demo_dataset):
    dataset = '[{"id": "clips", "type": "local", "instance_data_dir": "%s", "video": {"num_frames": 9}}]' % (demo_dataset.parent / "clips")
    response = client.post("/api/jobs", json={"config": demo_config, "dataset_config": dataset, "name": "demo"})
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    folder = settings.jobs_dir / job["id"]
    config = load_config(folder / "config.json")  # exactly what `frametuner train --config` does
    assert config.model_flavour == "tiny" and config.lora_rank == 8 and config.max_train_steps == 6
    assert Path(config.output_dir) == folder / "output"
    assert Path(config.data_backend_config) == folder / "datasets.json"
    assert (folder / "datasets.json").read_text().strip() == dataset
    assert job["status"] == "created" and job["actions"] == ["start"] and job["name"] == "demo"
    # The job's own config view returns what was saved.
    saved = client.get(f"/api/jobs/{job['id']}/config").json()
    assert saved["config"]["lora_rank"] == 8 and saved["dataset_config"].strip() == dataset


def test_output_dir_is_always_the_job_folder(client, settings, demo_config):
    job = client.post("/api/jobs", json={"config": demo_config | {"output_dir": "/tmp/elsewhere"}}).json()["job"]
    assert load_config(settings.jobs_dir / job["id"] / "config.json").output_dir == str(settings.jobs_dir / job["id"] / "output")


def test_save_refuses_invalid_config_and_creates_nothing(client, settings, demo_config):
    response = client.post("/api/jobs", json={"config": demo_config | {"learning_rate": -1}})
    assert response.status_code == 422
    assert "greater than 0" in response.json()["field_errors"]["learning_rate"][0]
    assert client.get("/api/jobs").json() == []
    assert list(settings.jobs_dir.iterdir()) == []


def test_request_bodies_are_validated(client):
    assert client.post("/api/jobs", json={"config": {}, "shell": "rm -rf /"}).status_code == 422  # unknown field
    assert client.post("/api/jobs", json={"config": "lora_rank=4"}).status_code == 422
    assert client.post("/api/config/check", content=b"not json", headers={"content-type": "application/json"}).status_code == 422


def test_new_job_page_can_start_from_an_earlier_job(client, demo_config, demo_dataset):
    dataset = '[{"id": "from-job", "instance_data_dir": "%s", "video": {"num_frames": 9}}]' % (demo_dataset.parent / "clips")
    job = client.post("/api/jobs", json={"config": demo_config, "dataset_config": dataset}).json()["job"]
    html = client.get(f"/jobs/new?source={job['id']}").text
    assert '"dataset_config": "[{\\"id\\": \\"from-job\\", ' in html
    assert '"lora_rank": 8' in html and "output_dir" not in html.split('id="page-data"')[1]


def test_cli_messages_map_to_fields():
    lines = [
        "/x/config.json: 'lora_rank': input should be greater than or equal to 1, got 0",
        "/x/config.json: 'distributed.strategy': 'zero' is not allowed; use one of 'ddp' or 'fsdp'",
        "/x/config.json: '(top level)': validation_using_datasets is true but eval_dataset_id is not set",
        "something without a key",
    ]
    problems = problems_from_messages(lines)
    assert [p.field for p in problems] == ["lora_rank", "distributed", "validation_using_datasets", None]
    assert problems[0].message == "input should be greater than or equal to 1, got 0"
    assert problems[1].message.startswith("'distributed.strategy': ")


def test_every_form_field_round_trips_its_default_through_the_schema():
    defaults = {f["name"]: f["default"] for f in form_fields()}
    assert TrainConfig.model_validate(defaults).model_dump(mode="json") | {"model_flavour": None} == defaults


# ---------------------------------------------------------------------- the dataset list (issue 19 point 3)
def test_check_calls_the_one_dataset_validator_by_the_name_the_server_uses(client, demo_config, monkeypatch):
    """The server imports ``validate_dataset_list``: renaming it breaks this import, not the UI."""
    import frametuner.server.configform as configform
    from frametuner.config.dataset import DatasetProblem, validate_dataset_list

    assert configform.validate_dataset_list is validate_dataset_list
    seen = []

    def stand_in(config):
        seen.append(config.data_backend_config)
        return [DatasetProblem("data_backend_config", "stand-in problem", "stand-in fix", dataset="dataset 'x'", key="repeats")]

    monkeypatch.setattr(configform, "validate_dataset_list", stand_in)
    result = client.post("/api/config/check", json={"config": demo_config}).json()
    assert seen == [demo_config["data_backend_config"]]
    assert result["field_errors"]["data_backend_config"] == ["dataset 'x': 'repeats': stand-in problem; stand-in fix"]


def _dataset_errors(client, config: dict, dataset: str | None = None) -> list[str]:
    result = client.post("/api/config/check", json={"config": config, "dataset_config": dataset}).json()
    assert result["ok"] is False
    return result["field_errors"]["data_backend_config"]


def test_check_fails_without_a_dataset_list(client, demo_config, demo_dataset):
    config = {k: v for k, v in demo_config.items() if k != "data_backend_config"}
    (message,) = _dataset_errors(client, config)
    assert message.startswith("is not set; point it at a JSON list of datasets")
    (message,) = _dataset_errors(client, demo_config | {"data_backend_config": str(demo_dataset.parent / "nope.json")})
    assert "nope.json not found" in message and "check the path" in message


def test_check_fails_for_a_missing_dataset_folder(client, demo_config, demo_dataset):
    dataset = '[\n  {"id": "clips",\n   "instance_data_dir": "%s"}\n]' % (demo_dataset.parent / "no-clips")
    (message,) = _dataset_errors(client, demo_config, dataset)
    assert message.startswith("datasets.json:3: dataset 'clips': 'instance_data_dir': ")
    assert "no-clips does not exist; fix the path" in message
    # A relative folder in a list edited in the page sits beside its datasets.json, in the job's folder.
    (message,) = _dataset_errors(client, demo_config, '[{"id": "clips", "instance_data_dir": "clips"}]')
    assert message.endswith("the job's folder/clips does not exist; fix the path (relative to the job's folder) or create the folder")


def test_check_fails_for_frames_the_vae_cannot_pack(client, demo_config, demo_dataset):
    dataset = '[{"id": "clips", "instance_data_dir": "%s",\n  "video": {"num_frames": 92}}]' % (demo_dataset.parent / "clips")
    (message,) = _dataset_errors(client, demo_config, dataset)
    assert message.startswith("datasets.json:2: dataset 'clips': 'video.num_frames': 92 frames is not 4k+1")
    assert message.endswith("use 89 or 93")


def test_the_demo_example_fails_check_until_its_clips_are_made(make_settings, tmp_path, demo_dataset):
    """The shipped example's clips/ exists only after `frametuner demo --dir examples/demo`: Check says so."""
    import shutil

    from fastapi.testclient import TestClient

    from frametuner.server.app import create_app
    from frametuner.server.settings import package_root

    from .conftest import LOCAL_URL

    examples = tmp_path / "examples"
    shutil.copytree(package_root() / "examples" / "demo", examples / "demo", ignore=shutil.ignore_patterns("clips", "output"))
    with TestClient(create_app(make_settings(examples_dir=examples)), base_url=LOCAL_URL) as client:
        config = client.get("/api/examples/demo").json()["config"]
        assert config["data_backend_config"] == str(examples / "demo" / "datasets.json")
        (message,) = _dataset_errors(client, config)
        assert "dataset 'demo': 'instance_data_dir': " in message and "clips does not exist" in message
        assert message.endswith(f"this example's data is generated: run `frametuner demo --dir {examples / 'demo'}` first")
        assert client.post("/api/jobs", json={"config": config}).status_code == 422
        shutil.copytree(demo_dataset.parent / "clips", examples / "demo" / "clips")  # what `frametuner demo` writes
        result = client.post("/api/config/check", json={"config": config}).json()
        assert result["ok"] is True, result["errors"]
