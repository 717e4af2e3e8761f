"""A config submitted over HTTP touches files only under the roots the server was given.

Every path-bearing key (declared once, by the schema's ``path`` markers) must resolve,
symlinks included, inside the job's folder, the data dir, the examples or an
``--allow-path`` root; outputs inside the job's folder. A refusal names the allowed roots
and reads the same whether the path exists or not. The CLI is not confined.
"""

from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from frametuner.config import TrainConfig, load_config
from frametuner.config.dataset import DatasetConfig
from frametuner.config.schema import PATH_INPUT, PATH_MODEL, PATH_NAME, PATH_OUTPUT, path_fields
from frametuner.server.app import create_app

from .conftest import LOCAL_URL

SECRET = "root:x:0:0:the server's private file"
ROOTS_NAMED = "outside the folders this server may use"

# Path keys a request cannot set at all: the server writes them (output_dir is the job's folder).
SERVER_OWNED = {"output_dir"}
INPUT_KEYS = [k for k, p in path_fields(TrainConfig).items() if p.kind in (PATH_INPUT, PATH_MODEL) and k not in SERVER_OWNED]
OUTPUT_KEYS = [k for k, p in path_fields(TrainConfig).items() if p.kind == PATH_OUTPUT and k not in SERVER_OWNED]
DATASET_KEYS = list(path_fields(DatasetConfig))


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder no root covers, holding a secret file (and a folder, for folder-valued keys)."""
    folder = tmp_path / "outside"
    (folder / "secret-folder").mkdir(parents=True)
    (folder / "secret.txt").write_text(SECRET + "\n")
    return folder


def _check(client, config: dict, dataset: str | None = None) -> dict:
    response = client.post("/api/config/check", json={"config": config, "dataset_config": dataset})
    assert response.status_code == 200, response.text
    return response.json()


def _scrub(value, *paths: str):
    """The response with the submitted paths replaced, to compare two refusals."""
    text = json.dumps(value)
    for path in paths:
        text = text.replace(path, "<PATH>")
    return json.loads(text)


# ---------------------------------------------------------------------- the one declaration
PATH_NAME_WORDS = re.compile(r"(^|_)(dir|path|paths|file|files|folder|root|data|manifest|checkpoint|lora|continuation|video|image|cache|config)($|_)")
PATH_DESCRIPTION_WORDS = re.compile(r"\b(file|files|folder|folders|path|directory|hub id)\b", re.I)
# Keys that read like paths but hold something else.
NOT_PATHS = {
    "TrainConfig.eval_dataset_id",  # a dataset id from the dataset list
    "TrainConfig.validation_prompt",  # text
    "TrainConfig.validation_negative_prompt",  # text
    "TrainConfig.lora_target_modules",  # module names of the model
    "DatasetConfig.path_column",  # a column name of the manifest; its values resolve inside instance_data_dir
    "DatasetConfig.caption_column",  # a column name
    "DatasetConfig.id",  # letters, digits, '.', '_', '-' only (checked by the schema)
}


def _holds_text(annotation) -> bool:
    if annotation is str:
        return True
    return any(_holds_text(arg) for arg in typing.get_args(annotation))


def _models(root: type[BaseModel]):
    yield root
    for info in root.model_fields.values():
        for candidate in (info.annotation, *typing.get_args(info.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                yield from _models(candidate)


@pytest.mark.parametrize("root", [TrainConfig, DatasetConfig], ids=lambda m: m.__name__)
def test_every_key_that_looks_like_a_path_is_declared_as_one(root):
    """A new key holding a file or folder must carry ``path=`` in the schema, or the server would not confine it."""
    undeclared = []
    for model in _models(root):
        declared = path_fields(model)
        for name, info in model.model_fields.items():
            if not _holds_text(info.annotation) or name in declared or f"{model.__name__}.{name}" in NOT_PATHS:
                continue
            if PATH_NAME_WORDS.search(name) or PATH_DESCRIPTION_WORDS.search(info.description or ""):
                undeclared.append(f"{model.__name__}.{name}")
    assert not undeclared, f"declare these with path=... in the schema (or list them in NOT_PATHS with why): {undeclared}"


def test_the_declared_keys_include_the_known_ones():
    keys = path_fields(TrainConfig)
    assert {"validation_prompt_file", "init_lora", "data_backend_config", "resume_from_checkpoint", "pretrained_model_name_or_path"} <= set(INPUT_KEYS)
    assert keys["cache_dir"].kind == keys["output_dir"].kind == PATH_OUTPUT
    assert keys["tracker_project_name"].kind == PATH_NAME
    assert "latest" in keys["resume_from_checkpoint"].keywords
    assert {"instance_data_dir", "manifest", "conditioning_data"} <= set(DATASET_KEYS)


# ---------------------------------------------------------------------- every path-bearing key
@pytest.mark.parametrize("key", INPUT_KEYS)
def test_every_input_key_outside_the_roots_is_a_field_error_that_reveals_nothing(client, demo_config, outside, settings, key):
    existing = str(outside / ("secret-folder" if key in ("pretrained_model_name_or_path", "resume_from_checkpoint") else "secret.txt"))
    missing = str(outside / "no-such-file")
    results = []
    for value in (existing, missing):
        result = _check(client, demo_config | {key: value})
        assert result["ok"] is False
        (message,) = result["field_errors"][key]
        assert ROOTS_NAMED in message and str(settings.data_dir) in message and "--allow-path" in message
        assert "root:x" not in json.dumps(result)
        assert not any(w["field"] == key for w in result["warnings"])  # no "not found" for an outside path
        results.append(_scrub(result, existing, missing))
    assert results[0] == results[1]  # whether it exists changes nothing in the answer
    response = client.post("/api/jobs", json={"config": demo_config | {key: existing}})
    assert response.status_code == 422 and key in response.json()["field_errors"]
    assert client.get("/api/jobs").json() == [] and list(settings.jobs_dir.iterdir()) == []


@pytest.mark.parametrize("key", INPUT_KEYS)
@pytest.mark.parametrize("escape", ["relative", "dotdot"])
def test_relative_paths_cannot_climb_out(client, demo_config, key, escape, settings):
    # Relative paths resolve against the server's folder (base_dir), itself outside every root here.
    value = "secret.txt" if escape == "relative" else str(settings.data_dir / ".." / ".." / "outside" / "secret.txt")
    result = _check(client, demo_config | {key: value})
    assert ROOTS_NAMED in result["field_errors"][key][0]


def test_an_input_inside_an_allowed_root_is_accepted_and_written_resolved(client, settings, demo_config, demo_dataset):
    prompts = demo_dataset.parent / "prompts.txt"
    prompts.write_text("a red ball\n")
    response = client.post("/api/jobs", json={"config": demo_config | {"validation_prompt_file": str(prompts), "resume_from_checkpoint": "latest"}})
    assert response.status_code == 201, response.text
    config = load_config(settings.jobs_dir / response.json()["job"]["id"] / "config.json")
    assert config.validation_prompt_file == str(prompts.resolve()) and config.resume_from_checkpoint == "latest"


def test_hub_ids_are_not_paths(client, demo_config):
    result = _check(client, demo_config | {"pretrained_model_name_or_path": "meituan-longcat/LongCat-Video"})
    assert "pretrained_model_name_or_path" not in result["field_errors"]
    result = _check(client, demo_config | {"pretrained_model_name_or_path": "meituan-longcat/../../../etc"})
    assert ROOTS_NAMED in result["field_errors"]["pretrained_model_name_or_path"][0]


@pytest.mark.parametrize("key", OUTPUT_KEYS)
def test_outputs_go_only_inside_the_job_folder(client, settings, demo_config, demo_dataset, key):
    for value in ("/tmp/elsewhere", str(demo_dataset.parent / "cache"), str(settings.data_dir / "cache"), "../escape"):
        result = _check(client, demo_config | {key: value})
        assert "must be inside the job's folder" in result["field_errors"][key][0], value
    response = client.post("/api/jobs", json={"config": demo_config | {key: "my-cache"}})
    assert response.status_code == 201, response.text
    folder = settings.jobs_dir / response.json()["job"]["id"]
    assert load_config(folder / "config.json").model_dump()[key] == str(folder / "my-cache")


def test_output_dir_is_replaced_by_the_job_folder(client, settings, demo_config):
    job = client.post("/api/jobs", json={"config": demo_config | {"output_dir": "/tmp/elsewhere"}}).json()["job"]
    assert load_config(settings.jobs_dir / job["id"] / "config.json").output_dir == str(settings.jobs_dir / job["id"] / "output")


def test_names_that_become_folders_are_plain_names(client, demo_config):
    for value in ("../../../tmp/x", "a/b", "..", "a\\b"):
        result = _check(client, demo_config | {"tracker_project_name": value})
        assert "plain name" in result["field_errors"]["tracker_project_name"][0], value
    assert "tracker_project_name" not in _check(client, demo_config | {"tracker_project_name": "my-run"})["field_errors"]


@pytest.mark.parametrize("key", DATASET_KEYS)
def test_every_dataset_path_outside_the_roots_is_a_field_error(client, demo_config, demo_dataset, outside, key):
    clips = str(demo_dataset.parent / "clips")
    results = []
    for value in (str(outside / "secret-folder"), str(outside / "missing"), "../../../../outside/secret-folder"):
        entry = {"id": "clips", "instance_data_dir": clips, "caption_strategy": "jsonl", "video": {"num_frames": 9}} | {key: value}
        result = _check(client, demo_config, json.dumps([entry]))
        messages = result["field_errors"]["data_backend_config"]
        assert len(messages) == 1 and ROOTS_NAMED in messages[0] and f"'{key}'" in messages[0] and "dataset 'clips'" in messages[0]
        results.append(_scrub(result, value))
    assert results[0] == results[1]


def test_a_dataset_list_file_outside_the_roots_is_never_read(client, demo_config, outside):
    listing = outside / "datasets.json"
    listing.write_text(json.dumps([{"id": "x", "instance_data_dir": str(outside / "secret-folder")}]))
    result = _check(client, demo_config | {"data_backend_config": str(listing)})
    assert list(result["field_errors"]) == ["data_backend_config"] and ROOTS_NAMED in result["field_errors"]["data_backend_config"][0]
    assert "secret-folder" not in json.dumps(result)


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_manifest_rows_outside_the_roots_are_refused(client, demo_config, demo_dataset, outside, settings, kind):
    """A manifest names media by path: a row leading out is refused like a key (a request can upload
    bytes into the data dir, e.g. a preview's "image", and name that file as a manifest)."""
    clips = demo_dataset.parent / "clips"
    manifest = settings.data_dir / f"manifest.{kind}"
    manifest.parent.mkdir(parents=True, exist_ok=True)

    def write(paths):
        if kind == "csv":
            manifest.write_text("file_name,caption\n" + "".join(f"{p},a clip\n" for p in paths))
        else:
            manifest.write_text("".join(json.dumps({"file_name": p, "caption": "a clip"}) + "\n" for p in paths))

    entry = {"id": "clips", "instance_data_dir": str(clips), "caption_strategy": kind, "manifest": str(manifest), "video": {"num_frames": 9}}
    answers = []
    for escape in (str(outside / "secret.txt"), "../../outside/secret.txt", str(outside / "missing.mp4")):
        write(["red_ball.mp4", escape])
        (message,) = _check(client, demo_config, json.dumps([entry]))["field_errors"]["data_backend_config"]
        assert message.startswith(f"dataset 'clips': manifest.{kind}:") and ROOTS_NAMED in message, message
        answers.append(message.replace(escape, "<PATH>"))
    assert answers[0] == answers[2]  # existing or not: the same answer
    write(["red_ball.mp4", "blue_square.mp4"])
    assert "data_backend_config" not in _check(client, demo_config, json.dumps([entry]))["field_errors"]


# ---------------------------------------------------------------------- symlinks
def test_symlinks_that_lead_out_are_refused(client, settings, demo_config, demo_dataset, outside):
    allowed = demo_dataset.parent
    (allowed / "link-out.txt").unlink(missing_ok=True)
    os.symlink(outside / "secret.txt", allowed / "link-out.txt")
    (allowed / "link-out-dir").unlink(missing_ok=True)
    os.symlink(outside / "secret-folder", allowed / "link-out-dir")
    for key in INPUT_KEYS:
        result = _check(client, demo_config | {key: str(allowed / "link-out.txt")})
        assert ROOTS_NAMED in result["field_errors"][key][0], key
    entry = {"id": "clips", "instance_data_dir": str(allowed / "link-out-dir"), "video": {"num_frames": 9}}
    result = _check(client, demo_config, json.dumps([entry]))
    assert ROOTS_NAMED in result["field_errors"]["data_backend_config"][0]
    # A symlink from one root into another is fine; the job's config holds where it leads.
    (settings.data_dir / "clips-link").unlink(missing_ok=True)
    os.symlink(allowed / "clips", settings.data_dir / "clips-link")
    entry["instance_data_dir"] = str(settings.data_dir / "clips-link")
    assert _check(client, demo_config, json.dumps([entry]))["ok"] is True


def test_an_output_through_a_symlink_is_refused(tmp_path, outside):
    from frametuner.server.paths import Roots, confine_path

    job = tmp_path / "job"
    job.mkdir()
    os.symlink(outside, job / "out-link")
    roots = Roots(job=job, read=(tmp_path,))
    path, problem = confine_path("out-link/cache", job, roots, write=True)
    assert path is None and "must be inside the job's folder" in problem and str(outside) not in problem
    path, problem = confine_path("cache", job, roots, write=True)
    assert problem is None and path == job.resolve() / "cache"


# ---------------------------------------------------------------------- roots
def test_allow_path_adds_a_root(make_settings, demo_config, outside):
    config = demo_config | {"validation_prompt_file": str(outside / "secret.txt")}
    with TestClient(create_app(make_settings(allow_paths=[outside])), base_url=LOCAL_URL) as client:
        result = _check(client, config)
    assert "validation_prompt_file" not in result["field_errors"], result


def test_server_allow_path_flag_reaches_the_settings(monkeypatch, tmp_path):
    from frametuner import cli
    from frametuner.server import ServerSettings

    seen: list[ServerSettings] = []
    monkeypatch.setattr("frametuner.server.serve", lambda settings, token_generated=False: seen.append(settings))
    code = cli.main(["server", "--data-dir", str(tmp_path / "d"), "--allow-path", str(tmp_path / "a"), "--allow-path", str(tmp_path / "b")])
    assert code == 0 and seen[0].allow_paths == [tmp_path / "a", tmp_path / "b"]
    assert seen[0].read_roots[-2:] == (tmp_path / "a", tmp_path / "b")


def test_the_cli_is_not_confined(tmp_path, demo_dataset, outside, capsys):
    """A user's own config on the command line may name any path."""
    from frametuner import cli

    config = tmp_path / "mine.json"
    config.write_text(json.dumps({
        "model_flavour": "tiny", "data_backend_config": str(demo_dataset), "validation_prompt_file": str(outside / "secret.txt"),
        "cache_dir": str(outside / "cache"), "output_dir": str(outside / "run"),
    }))
    # The demo dataset list asks 9 frames: the tiny model packs 4k+1, so it is valid.
    assert cli.main(["config", "check", str(config)]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------------- previews
def test_sample_lora_paths_stay_inside_their_job(client, settings, demo_config, outside):
    job = client.post("/api/jobs", json={"config": demo_config}).json()["job"]
    folder = settings.jobs_dir / job["id"]
    os.symlink(outside / "secret.txt", folder / "lora-link.safetensors")
    for path in ("/etc/passwd", str(outside / "secret.txt"), "../../../outside/secret.txt", "lora-link.safetensors", "~/.bashrc"):
        response = client.post("/api/samples", json={"prompt": "x", "lora": {"job_id": job["id"], "path": path}})
        assert response.status_code == 422, path
        assert "root:x" not in response.text


def test_a_preview_from_a_training_job_is_confined_again(make_settings, demo_config, demo_dataset, tmp_path):
    """A job saved while a root was allowed cannot be used to read it once the root is gone."""
    model = demo_dataset.parent / "my-model"
    model.mkdir(exist_ok=True)
    with TestClient(create_app(make_settings()), base_url=LOCAL_URL) as client:
        job = client.post("/api/jobs", json={"config": demo_config | {"pretrained_model_name_or_path": str(model)}}).json()["job"]
    with TestClient(create_app(make_settings(allow_paths=[])), base_url=LOCAL_URL) as client:
        response = client.post("/api/samples", json={"prompt": "x", "base_job_id": job["id"], "num_frames": 9, "resolution": "64x96"})
    assert response.status_code == 422
    assert ROOTS_NAMED in response.json()["field_errors"]["pretrained_model_name_or_path"][0]


def test_a_saved_job_does_not_start_once_its_root_is_no_longer_allowed(make_settings, demo_config, demo_dataset):
    prompts = demo_dataset.parent / "prompts.txt"
    prompts.write_text("a red ball\n")
    with TestClient(create_app(make_settings()), base_url=LOCAL_URL) as client:
        job = client.post("/api/jobs", json={"config": demo_config | {"validation_prompt_file": str(prompts)}}).json()["job"]
    with TestClient(create_app(make_settings(allow_paths=[])), base_url=LOCAL_URL) as client:
        refused = client.post(f"/api/jobs/{job['id']}/start")
        assert refused.status_code == 409 and ROOTS_NAMED in refused.json()["detail"]
        assert "'data_backend_config'" in refused.json()["detail"] or "'validation_prompt_file'" in refused.json()["detail"]
        assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "created"


# ---------------------------------------------------------------------- origins
@pytest.mark.parametrize(
    "headers",
    [{"Origin": "null"}, {"Origin": "http://evil.example"}, {"Origin": "http://127.0.0.1:9999"}, {"Origin": "file://"},
     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}],
    ids=["null", "foreign", "other-port", "file", "fetch-cross-site", "fetch-same-site"],
)
def test_state_changing_requests_from_elsewhere_are_refused(client, demo_config, headers):
    job = client.post("/api/jobs", json={"config": demo_config}).json()["job"]
    for path, body in (("/api/jobs", {"config": demo_config}), ("/api/config/check", {"config": {}}),
                       (f"/api/jobs/{job['id']}/start", None), ("/api/samples", {"prompt": "x"})):
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 403, (path, headers)
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "created"
    assert len(client.get("/api/jobs").json()) == 1


def test_same_origin_and_script_requests_pass(client, demo_config):
    assert client.post("/api/config/check", json={"config": demo_config}, headers={"Origin": LOCAL_URL, "Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert client.post("/api/config/check", json={"config": demo_config}).status_code == 200  # curl, scripts: no Origin


def test_the_new_job_page_names_the_allowed_folders(client, settings, demo_dataset):
    html = client.get("/jobs/new").text
    assert f"inside the job&#39;s folder, {settings.data_dir}, {settings.examples_dir}, {demo_dataset.parent}" in html
    assert "--allow-path DIR" in html
