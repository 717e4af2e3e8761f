"""``frametuner data inspect``: the tables a user reads before a long training."""

from __future__ import annotations

import re

from frametuner.cli import main

from .factory import dataset, write_caption, write_clip, write_configs


def test_data_inspect_prints_counts_buckets_skips_and_frames(tmp_path, capsys):
    clips = tmp_path / "clips"
    for name, (height, width) in {"a": (64, 96), "b": (64, 96), "c": (96, 64)}.items():
        write_caption(write_clip(clips / f"{name}.mp4", 21, height=height, width=width), f"clip {name}")
    write_clip(clips / "uncaptioned.mp4", 21)
    config = write_configs(tmp_path, [dataset("clips", "clips", repeats=1)])
    assert main(["data", "inspect", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    row = lambda *cells: re.search(r"\s*│\s*".join(re.escape(c) for c in cells), out)  # noqa: E731
    assert row("clips", "video", "train", "no", "3", "1", "51", "6")  # 3 samples, 1 skipped, 3 x 17 frames, seen twice
    assert row("clips", "64x96@17", "no", "2") and row("clips", "96x64@17", "no", "1")
    assert row("clips", "missing_caption", "1")


def test_data_inspect_reports_an_empty_dataset(tmp_path, capsys):
    write_caption(write_clip(tmp_path / "clips" / "short.mp4", 5), "short")
    config = write_configs(tmp_path, [dataset("clips", "clips")])
    assert main(["data", "inspect", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert "too_short" in captured.out
    assert "dataset 'clips'" in captured.err and "no usable samples" in captured.err
