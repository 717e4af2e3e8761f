"""The web UI's family picker lists Wan from the registry, and its Check resolves Wan's own defaults."""

from __future__ import annotations

import pytest


@pytest.fixture
def client(tmp_path):
    from fastapi.testclient import TestClient

    from frametuner.server.app import create_app
    from frametuner.server.settings import ServerSettings

    settings = ServerSettings(data_dir=tmp_path / "data", cli_command=["true"], gpus=[], poll_seconds=0.05, base_dir=tmp_path)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8001") as test_client:
        yield test_client


def test_family_picker_lists_wan_with_its_flavours(client):
    families = {f["name"]: f for f in client.get("/api/families").json()}
    wan = families["wan"]
    assert {f["name"] for f in wan["flavours"]} == {"t2v-1.3b", "t2v-14b", "i2v-14b-480p", "tiny", "tiny-i2v"}
    hubs = {f["name"]: f["hub_id"] for f in wan["flavours"]}
    assert hubs["t2v-14b"] == "Wan-AI/Wan2.1-T2V-14B-Diffusers" and hubs["tiny"] is None
    assert wan["default_flavour"] == "t2v-1.3b"
    assert wan["suggested_flavour"] == "tiny"  # no GPU on this server: a locally built flavour
    assert "longcat_video" in families


def test_wan_config_takes_the_family_defaults_and_check_applies_its_rules(client):
    from frametuner.config import TrainConfig

    config = TrainConfig(model_family="wan", model_flavour="tiny")
    assert config.flow_schedule_shift == 3.0 and config.validation_num_video_frames == 81
    assert config.validation_fps == 16 and config.validation_guidance == 5.0
    assert config.validation_resolution == "480x832" and config.lora_export_formats == ["peft", "comfyui"]
    frames = client.post("/api/config/check", json={"config": {"model_family": "wan", "model_flavour": "tiny", "validation_num_video_frames": 80}}).json()
    assert "use 77 or 81" in frames["field_errors"]["validation_num_video_frames"][0]
    flavour = client.post("/api/config/check", json={"config": {"model_family": "wan", "model_flavour": "t2v-2b"}}).json()
    assert "t2v-14b" in flavour["field_errors"]["model_flavour"][0]
