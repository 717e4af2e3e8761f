"""`frametuner caption` with the tiny captioner: what gets captioned, what is left alone, resuming."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from frametuner.caption.files import caption_path, find_media, write_caption
from frametuner.caption.run import CaptionOptions, run_caption
from tests.data.factory import write_clip, write_image


def make_folder(root: Path) -> Path:
    """Four clips (one captioned), an image, a sub-folder clip, a conditioning image, a corrupt clip."""
    for index in range(4):
        write_clip(root / f"clip{index}.mp4", 12 + index, height=48, width=64)
    write_image(root / "still.png", 48, 64)
    write_clip(root / "sub" / "deep.mp4", 9, height=48, width=64)
    write_image(root / "clip2.png", 48, 64)  # clip2's i2v conditioning image: not a sample
    (root / "clip1.txt").write_text("a hand-written caption\n", encoding="utf-8")
    return root


class Counting:
    """The tiny captioner, counting captions per file; ``stop_after`` raises Ctrl-C on that call."""

    def __init__(self, inner, stop_after: int | None = None, answer: str | None = None):
        self.inner, self.stop_after, self.answer = inner, stop_after, answer
        self.name, self.calls, self.seen = inner.name, 0, Counter()

    def load(self, path, kind):
        return self.inner.load(path, kind)

    def caption(self, batch, instructions):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt
        self.seen.update(media.path for media in batch)
        answers = self.inner.caption(batch, instructions)
        return [self.answer] * len(batch) if self.answer is not None else answers


def test_captions_exactly_the_files_without_one(tmp_path, tiny_captioner):
    root = make_folder(tmp_path / "clips")
    before = (root / "clip1.txt").stat()
    captioner = Counting(tiny_captioner)
    report = run_caption(CaptionOptions(paths=[str(root)], batch_size=2, prefix="sks"), captioner)
    expected = {root / "clip0.mp4", root / "clip2.mp4", root / "clip3.mp4", root / "still.png", root / "sub" / "deep.mp4"}
    assert set(report.captioned) == expected and set(captioner.seen) == expected
    assert report.skipped == [root / "clip1.mp4"] and report.failed == []
    assert [item.path for item in report.ignored] == [root / "clip2.png"]
    for path in expected:
        text = caption_path(path).read_text(encoding="utf-8")
        assert text.endswith("\n") and text.count("\n") == 1 and text.startswith("sks ") and len(text.split()) > 1
        assert text.strip() == report.captions[path]
    # the existing caption is untouched: same bytes, same modification time
    assert (root / "clip1.txt").read_text(encoding="utf-8") == "a hand-written caption\n"
    assert (root / "clip1.txt").stat().st_mtime_ns == before.st_mtime_ns
    assert not list(root.rglob(".*.tmp"))


def test_written_captions_are_read_by_the_dataset_scanner(tmp_path, tiny_captioner):
    from frametuner.config.dataset import DatasetConfig
    from frametuner.data.scan import scan_dataset

    root = make_folder(tmp_path / "clips")
    report = run_caption(CaptionOptions(paths=[str(root)]), tiny_captioner)
    dataset = DatasetConfig.model_validate({"id": "clips", "instance_data_dir": str(root), "resolution": "48x64",
                                            "video": {"num_frames": 9, "min_frames": 1}})
    dataset._root = root
    scan = scan_dataset(dataset, alignment=16, stride=4)
    assert not scan.skipped
    captions = {sample.source.path: sample.caption for sample in scan.samples}
    assert captions[root / "clip1.mp4"] == "a hand-written caption"
    for path in report.captioned:
        if path.suffix == ".mp4":
            assert captions[path] == report.captions[path]


def test_overwrite_replaces_and_dry_run_writes_nothing(tmp_path, tiny_captioner):
    root = make_folder(tmp_path / "clips")
    dry = run_caption(CaptionOptions(paths=[str(root)], dry_run=True), tiny_captioner)
    assert len(dry.pending) == 5 and dry.captioned == [] and not list(root.rglob("*.txt"))[1:]
    report = run_caption(CaptionOptions(paths=[str(root / "clip1.mp4")], overwrite=True), tiny_captioner)
    assert report.captioned == [root / "clip1.mp4"]
    assert (root / "clip1.txt").read_text(encoding="utf-8") != "a hand-written caption\n"


def test_a_corrupt_clip_is_reported_and_the_run_goes_on(tmp_path, tiny_captioner):
    root = make_folder(tmp_path / "clips")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    good = write_clip(root / "truncated.mp4", 20, height=48, width=64)
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    report = run_caption(CaptionOptions(paths=[str(root)], batch_size=3), tiny_captioner)
    failed = dict(report.failed)
    assert set(failed) == {root / "broken.mp4", root / "truncated.mp4"}
    assert failed[root / "broken.mp4"].startswith("unreadable") and failed[root / "truncated.mp4"].split()[0] in ("truncated", "decode_error", "unreadable")
    assert not caption_path(root / "broken.mp4").exists() and not caption_path(root / "truncated.mp4").exists()
    assert len(report.captioned) == 5


def test_killed_run_then_rerun_captions_each_clip_once(tmp_path, tiny_captioner):
    root = make_folder(tmp_path / "clips")
    first = Counting(tiny_captioner, stop_after=2)
    report = run_caption(CaptionOptions(paths=[str(root)], batch_size=2), first)
    assert report.interrupted and len(report.captioned) == 4  # two batches finished before Ctrl-C
    written = {path: caption_path(path).read_bytes() for path in report.captioned}
    second = Counting(tiny_captioner)
    rerun = run_caption(CaptionOptions(paths=[str(root)], batch_size=2), second)
    assert not rerun.interrupted and len(rerun.captioned) == 1
    assert set(rerun.skipped) == set(written) | {root / "clip1.mp4"}
    seen = first.seen + second.seen
    assert set(seen) == {root / "clip0.mp4", root / "clip2.mp4", root / "clip3.mp4", root / "still.png", root / "sub" / "deep.mp4"}
    assert set(seen.values()) == {1}  # each file captioned exactly once over both runs
    assert all(caption_path(path).read_bytes() == data for path, data in written.items())


def test_empty_answer_is_a_failure_and_nothing_is_written(tmp_path, tiny_captioner):
    root = tmp_path / "clips"
    write_clip(root / "a.mp4", 9, height=48, width=64)
    report = run_caption(CaptionOptions(paths=[str(root)]), Counting(tiny_captioner, answer="  \n "))
    assert report.captioned == [] and report.failed[0][0] == root / "a.mp4"
    assert report.failed[0][1].startswith("empty_caption") and not (root / "a.txt").exists()


def test_write_caption_never_clobbers_and_replaces_only_empty_files(tmp_path):
    media = tmp_path / "a.mp4"
    assert write_caption(media, "first") and (tmp_path / "a.txt").read_text(encoding="utf-8") == "first\n"
    assert not write_caption(media, "second")  # a caption appeared meanwhile: kept
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "first\n"
    assert write_caption(media, "third", overwrite=True) and (tmp_path / "a.txt").read_text(encoding="utf-8") == "third\n"
    (tmp_path / "b.txt").write_text(" \n", encoding="utf-8")  # empty: the scanner skips it as empty_caption
    assert write_caption(tmp_path / "b.mp4", "ünïcode — caption")
    assert (tmp_path / "b.txt").read_bytes() == "ünïcode — caption\n".encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_dataset_lists_caption_their_textfile_folders(tmp_path):
    clips = make_folder(tmp_path / "clips")
    stills = tmp_path / "stills"
    write_image(stills / "s.jpg", 48, 64)
    write_clip(stills / "ignored.mp4", 9, height=48, width=64)
    (tmp_path / "manifest").mkdir()
    datasets = [
        {"id": "clips", "instance_data_dir": "clips"},
        {"id": "stills", "instance_data_dir": "stills", "dataset_type": "image"},
        {"id": "m", "instance_data_dir": "manifest", "caption_strategy": "jsonl"},
        {"id": "off", "instance_data_dir": "nowhere", "disabled": True},
    ]
    (tmp_path / "datasets.json").write_text(json.dumps(datasets))
    (tmp_path / "config.json").write_text(json.dumps({"data_backend_config": "datasets.json"}))
    for given in ("datasets.json", "config.json"):
        media, ignored = find_media([tmp_path / given])
        assert [(m.path, m.kind) for m in media] == [
            (clips / "clip0.mp4", "video"), (clips / "clip1.mp4", "video"), (clips / "clip2.mp4", "video"),
            (clips / "clip3.mp4", "video"), (clips / "sub" / "deep.mp4", "video"), (stills / "s.jpg", "image")]
        assert [i.path for i in ignored] == [tmp_path / "manifest"]  # a video dataset has no images to leave out


def test_review_page_shows_each_caption_beside_its_sheet(tmp_path, tiny_captioner):
    root = make_folder(tmp_path / "clips")
    (root / "broken.mp4").write_bytes(b"not a clip")
    report = run_caption(CaptionOptions(paths=[str(root)], review=str(tmp_path / "review")), tiny_captioner)
    page = (tmp_path / "review" / "index.html").read_text(encoding="utf-8")
    sheets = list((tmp_path / "review" / "sheets").glob("*.jpg"))
    assert page.count("<tr ") == 7 and len(sheets) == 6 and page.count('<img src="sheets/') == 6
    assert page.count('class="new"') == 5 and page.count('class="existing"') == 1 and page.count('class="failed"') == 1
    for path, caption in report.captions.items():
        assert caption.replace("'", "&#x27;") in page
    index = json.loads((tmp_path / "review" / "index.json").read_text(encoding="utf-8"))
    assert (index["captioned"], index["skipped"], index["failed"]) == (5, 1, 1)
    rows = {Path(row["path"]).name: row for row in index["rows"]}
    assert rows["broken.mp4"]["status"] == "failed" and rows["broken.mp4"]["sheet"] is None and rows["broken.mp4"]["reason"]
    assert rows["clip1.mp4"] == {"path": str(root / "clip1.mp4"), "status": "existing", "caption": "a hand-written caption",
                                 "sheet": rows["clip1.mp4"]["sheet"]}
    assert all((tmp_path / "review" / row["sheet"]).is_file() for row in index["rows"] if row["sheet"])
    # --dry_run --review: the existing captions, no model loaded (broken.mp4 still has none: left out)
    again = run_caption(CaptionOptions(paths=[str(root)], review=str(tmp_path / "again"), dry_run=True), captioner=None)
    assert again.pending == [root / "broken.mp4"] and len(json.loads((tmp_path / "again" / "index.json").read_text())["rows"]) == 6


def test_cli_caption_model_tiny(tmp_path, tiny_root, capsys):
    """`frametuner caption --model tiny PATH` exactly as the outside check runs it."""
    from frametuner.cli import main

    root = tmp_path / "clips"
    for index in range(2):
        write_clip(root / f"c{index}.mp4", 10, height=48, width=64)
    assert os.environ["FRAMETUNER_HOME"] == str(tiny_root.parent)
    assert main(["caption", "--model", "tiny", str(root)]) == 0
    assert all((root / f"c{index}.txt").read_text(encoding="utf-8").strip() for index in range(2))
    out = capsys.readouterr().out
    assert "captioned" in out and "2" in out
    assert main(["caption", "--model", "tiny", str(root)]) == 0  # nothing left: loads no model
    assert main(["caption", "--model", "tiny", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_without_recaptioning(tmp_path, tiny_root):
    """A real kill (SIGKILL, no clean-up) after the first captions, then the same command again."""
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "clips"
    for index in range(6):
        write_clip(root / f"c{index}.mp4", 9 + index, height=48, width=64)
    command = [sys.executable, "-m", "frametuner", "caption", "--model", "tiny", str(root)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.monotonic() + 120
    while not list(root.glob("*.txt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in root.glob("*.txt")}
    assert 1 <= len(first) and not list(root.glob(".*.tmp"))[1:]  # at most the one in flight
    for leftover in root.glob(".*.tmp"):
        leftover.unlink()  # a kill between write and rename leaves a hidden temporary, never a half caption
    assert all(data.strip() for data, _ in first.values())
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(root.glob("*.txt"))) == 6
    for path, (data, mtime) in first.items():  # written once: the rerun left them alone
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    import re

    counts = dict(re.findall(r"│ (captioned|skipped \(had one\)|failed)\s*│\s*(\d+) │", result.stdout))
    assert counts == {"captioned": str(6 - len(first)), "skipped (had one)": str(len(first)), "failed": "0"}


def test_a_failing_batch_is_retried_file_by_file(tmp_path, tiny_captioner):
    root = tmp_path / "clips"
    for name in ("a", "b", "c"):
        write_clip(root / f"{name}.mp4", 9, height=48, width=64)

    class Failing(Counting):
        def caption(self, batch, instructions):
            if any(media.path.name == "b.mp4" for media in batch):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().caption(batch, instructions)

    report = run_caption(CaptionOptions(paths=[str(root)], batch_size=3), Failing(tiny_captioner))
    assert sorted(p.name for p in report.captioned) == ["a.mp4", "c.mp4"]
    assert [(p.name, reason.split()[0]) for p, reason in report.failed] == [("b.mp4", "out_of_memory")]


def test_prompt_file_and_a_model_of_another_architecture(tmp_path, tiny_captioner):
    from frametuner.caption.prompts import instructions
    from frametuner.caption.qwen_vl import CaptionModelError, load_qwen_vl

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("\ufeffDescribe it briefly.\n", encoding="utf-8")
    assert instructions(prompt_file=prompt) == {"video": "Describe it briefly.", "image": "Describe it briefly."}
    other = tmp_path / "t5"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(CaptionModelError, match="'t5' model; the captioner runs Qwen2.5-VL"):
        load_qwen_vl(str(other), device="cpu")


@pytest.mark.slow
def test_real_clip_and_image(tmp_path, tiny_captioner):
    """The shared sample media (a real H.264 clip and a photo), captioned end to end."""
    import shutil

    from tests.conftest import media_file

    clip, image = media_file("motorcycle.mp4"), media_file("girl.png")
    root = tmp_path / "real"
    root.mkdir()
    shutil.copy(clip, root / clip.name)
    shutil.copy(image, root / image.name)
    report = run_caption(CaptionOptions(paths=[str(root)], batch_size=2), tiny_captioner)
    assert report.failed == [] and sorted(p.name for p in report.captioned) == ["girl.png", "motorcycle.mp4"]
    media = tiny_captioner.load(root / clip.name, "video")
    assert len(media.indices) == 8 and media.indices[0] == 0 and media.indices[-1] == media.total_frames - 1
