"""Preview continues a video (uploaded, or one of a job's videos) and makes N-segment long videos:
the request becomes `frametuner sample --video ... --segments N ...`, and only videos inside job folders are read."""

from __future__ import annotations

import base64

BASE = {"model_family": "longcat_video", "model_flavour": "tiny", "prompt": "a red fox", "start": False}
MP4_BYTES = b"\x00\x00\x00\x18ftypmp42"  # the server stores the upload; the sampler decodes it


def _mp4_data_url() -> str:
    return "data:video/mp4;base64," + base64.b64encode(MP4_BYTES).decode()


def _sample(client, **body):
    return client.post("/api/samples", json=BASE | body)


def test_uploaded_video_becomes_a_long_video_continuation(client, settings):
    response = _sample(client, video=_mp4_data_url(), cond_frames=5, segments=2, no_kv_cache=True)
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    saved = settings.jobs_dir / job["id"] / "inputs" / "video.mp4"
    assert saved.read_bytes() == MP4_BYTES
    command = job["command"]
    assert f"--video={saved}" in command
    assert "--cond_frames=5" in command and "--segments=2" in command
    assert "--no_kv_cache" in command and "--no_enhance_hf" not in command
    plain = _sample(client).json()["job"]["command"]
    assert not any(arg.startswith(("--video", "--segments", "--cond_frames", "--no_")) for arg in plain)
    long_only = _sample(client, segments=3).json()["job"]["command"]  # text-to-video then 3 continuations
    assert "--segments=3" in long_only and not any(arg.startswith("--video") for arg in long_only)


def test_a_jobs_video_can_be_continued_and_nothing_outside_job_folders(client, settings):
    owner = _sample(client).json()["job"]
    folder = settings.jobs_dir / owner["id"]
    (folder / "output").mkdir(parents=True, exist_ok=True)
    (folder / "output" / "sample.mp4").write_bytes(MP4_BYTES)
    listed = client.get("/api/videos").json()
    assert {"job_id": owner["id"], "job_name": owner["name"], "label": "preview", "path": "output/sample.mp4"} in listed
    response = _sample(client, video_source={"job_id": owner["id"], "path": "output/sample.mp4"}, segments=1)
    assert response.status_code == 201, response.text
    assert f"--video={(folder / 'output' / 'sample.mp4').resolve()}" in response.json()["job"]["command"]
    for path, message in (("../../frametuner.sqlite3", "'..' is not allowed"), ("/etc/passwd", "absolute paths"),
                          ("config.json", "is not a video file"), ("output/missing.mp4", "missing.mp4")):
        refused = _sample(client, video_source={"job_id": owner["id"], "path": path})
        assert refused.status_code == 422, path
        assert message in refused.json()["detail"], refused.json()
    assert _sample(client, video_source={"job_id": "nosuchjob", "path": "output/sample.mp4"}).status_code == 404


def test_bad_continuation_requests_are_refused(client):
    assert _sample(client, video="data:text/html;base64,PGI+").status_code == 422
    both = _sample(client, video=_mp4_data_url(), video_source={"job_id": "x", "path": "output/sample.mp4"})
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    assert _sample(client, segments=-1).status_code == 422
    assert _sample(client, segments=31).status_code == 422
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()
    assert _sample(client, video=_mp4_data_url(), image=image).status_code == 422
