"""Security: files only from inside job folders; token on non-loopback binds; no foreign hosts or origins."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from frametuner.server import ServerSettings
from frametuner.server.app import create_app

from .conftest import LOCAL_URL

SECRET = "the server's private file"


@pytest.fixture
def job_dir(client, settings, demo_config):
    job = client.post("/api/jobs", json={"config": demo_config}).json()["job"]
    (settings.data_dir / "secret.txt").write_text(SECRET)
    folder = settings.jobs_dir / job["id"]
    (folder / "output").mkdir(exist_ok=True)
    (folder / "output" / "note.txt").write_text("inside")
    return folder


def _get(client, job_dir, raw_path: str):
    return client.get(f"/api/jobs/{job_dir.name}/files/{raw_path}")


def test_files_inside_the_job_are_served(client, job_dir):
    response = _get(client, job_dir, "output/note.txt")
    assert response.status_code == 200 and response.text == "inside"
    assert "sandbox" in response.headers["content-security-policy"]
    assert _get(client, job_dir, "output/missing.txt").status_code == 404


@pytest.mark.parametrize(
    "raw_path",
    [
        "%2E%2E/%2E%2E/secret.txt",  # ../../ (percent-encoded so the client does not normalise it)
        "output/%2E%2E/%2E%2E/%2E%2E/secret.txt",
        "..%2F..%2Fsecret.txt",
        "%2Fetc%2Fpasswd",  # absolute
        "/etc/passwd",
        "~/.bashrc",
        "output%5C..%5C..%5Csecret.txt",  # backslashes
    ],
)
def test_path_traversal_is_refused(client, job_dir, raw_path):
    response = _get(client, job_dir, raw_path)
    assert response.status_code == 403, (raw_path, response.status_code)
    assert SECRET not in response.text and "root:" not in response.text


def test_symlinks_out_of_the_job_are_refused(client, settings, job_dir):
    os.symlink(settings.data_dir / "secret.txt", job_dir / "output" / "link.txt")
    os.symlink(settings.data_dir, job_dir / "output" / "escape")
    for path in ("output/link.txt", "output/escape/secret.txt", "output/escape"):
        response = _get(client, job_dir, path)
        assert response.status_code == 403, path
        assert SECRET not in response.text
    os.symlink(job_dir / "output" / "note.txt", job_dir / "inner-link.txt")  # inside: fine
    assert _get(client, job_dir, "inner-link.txt").text == "inside"


def test_zipped_folders_leave_out_symlinks_that_escape(client, settings, job_dir):
    import io
    import zipfile

    os.symlink(settings.data_dir / "secret.txt", job_dir / "output" / "link.txt")
    archive = zipfile.ZipFile(io.BytesIO(_get(client, job_dir, "output").content))
    assert archive.namelist() == ["note.txt"]


def test_job_ids_cannot_climb_either(client, job_dir):
    assert client.get("/api/jobs/..%2F..%2Fsecret.txt").status_code == 404
    assert client.get("/api/jobs/%2E%2E/files/secret.txt").status_code == 404


def test_non_loopback_bind_requires_a_token(settings):
    with pytest.raises(ValueError, match="needs an access token"):
        ServerSettings(data_dir=settings.data_dir, host="0.0.0.0")


@pytest.fixture
def token_client(make_settings):
    settings = make_settings(host="0.0.0.0", token="s3cret-token")
    with TestClient(create_app(settings), base_url="http://192.0.2.10:8001") as client:
        yield client


def test_every_request_needs_the_token(token_client):
    for path in ("/", "/api/jobs", "/api/schema", "/jobs/new", "/static/app.css"):
        assert token_client.get(path).status_code == 401, path
    assert token_client.post("/api/config/check", json={"config": {}}).status_code == 401
    assert token_client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert token_client.get("/api/jobs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert token_client.get("/api/jobs", headers={"X-Frametuner-Token": "s3cret-token"}).status_code == 200


def test_the_browser_link_with_token_sets_a_cookie(token_client):
    page = token_client.get("/?token=s3cret-token")
    assert page.status_code == 200 and "frametuner_token" in page.cookies
    assert "httponly" in page.headers["set-cookie"].lower() and "samesite=strict" in page.headers["set-cookie"].lower()
    assert token_client.get("/api/jobs").status_code == 200  # the cookie now does it
    token_client.cookies.clear()
    assert token_client.get("/api/jobs").status_code == 401


def test_loopback_server_refuses_foreign_host_names(client):
    assert client.get("/api/jobs").status_code == 200
    assert client.get("/api/jobs", headers={"Host": "localhost:8001"}).status_code == 200
    assert client.get("/api/jobs", headers={"Host": "evil.example:8001"}).status_code == 403  # DNS rebinding


def test_cross_origin_posts_are_refused(client):
    refused = client.post("/api/config/check", json={"config": {}}, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    allowed = client.post("/api/config/check", json={"config": {}}, headers={"Origin": LOCAL_URL})
    assert allowed.status_code == 200


def test_pages_carry_a_strict_content_security_policy(client):
    policy = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
