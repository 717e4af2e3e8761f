"""A full (or read-only) disk while writing a video, a contact sheet, the validation index,
a long video's segment or the event log is one StorageError line naming the folder; other
errors pass unchanged, and nothing half-written is left behind."""

from __future__ import annotations

import builtins
import errno
import io
import os

import numpy as np
import pytest

from frametuner.sampling import gallery, video
from frametuner.sampling.long_video import _atomic_write_bytes
from frametuner.storage import StorageError, disk_errors
from frametuner.training.events import EventLog


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_disk_errors_become_one_storage_line(tmp_path, code):
    with pytest.raises(StorageError) as caught:
        with disk_errors(tmp_path, "writing the thing"):
            raise OSError(code, os.strerror(code))
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message and "writing the thing" in message
    assert caught.value.errno == code


def test_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError):
        with disk_errors(tmp_path, "writing"):
            raise FileNotFoundError(errno.ENOENT, "gone")


def test_a_full_disk_while_writing_a_video_or_sheet(tmp_path, monkeypatch):
    pytest.importorskip("av")
    import av

    frames = np.zeros((5, 16, 16, 3), np.uint8)
    monkeypatch.setattr(av, "open", _full_disk)
    with pytest.raises(StorageError, match="disk full while writing the video clip.mp4"):
        video.write_video(frames, tmp_path / "clip.mp4")
    monkeypatch.setattr(video, "contact_sheet", lambda *a, **k: type("S", (), {"save": _full_disk})())
    with pytest.raises(StorageError, match="disk full while writing the contact sheet sheet.png"):
        video.write_contact_sheet(frames, tmp_path / "sheet.png")
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_a_full_disk_while_writing_the_index_a_segment_or_an_event(tmp_path, monkeypatch):
    real_open = builtins.open

    def full_for_writes(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wa"):
            _full_disk()
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_for_writes)
    monkeypatch.setattr(io, "open", full_for_writes)  # pathlib's
    with pytest.raises(StorageError, match="writing index.html"):
        gallery.write_text_atomic(tmp_path / "index.html", "<html>")
    with pytest.raises(StorageError, match="writing the segment file segment_001.npy"):
        _atomic_write_bytes(tmp_path / "segment_001.npy", lambda handle: handle.write(b"x"))
    with pytest.raises(StorageError, match="appending to the run's event log"):
        EventLog(tmp_path).emit("step", step=1)
    assert [p.name for p in tmp_path.iterdir()] == []
