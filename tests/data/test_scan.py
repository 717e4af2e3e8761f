"""Scanning: caption strategies, every kind of bad input skipped with its reason while the
good files still load, the empty-dataset error, image-to-video conditioning, eval split."""

from __future__ import annotations

import io
import json
import logging
import os
import re

import numpy as np
import pytest
from rich.console import Console

from frametuner.config import load_config
from frametuner.data import BucketBatchSampler, EmptyDatasetError, load_clip, load_conditioning_image, scan_datasets
from frametuner.data.report import skip_table

from .factory import dataset, indices_from_pixels, write_caption, write_clip, write_configs, write_image


def scan(tmp_path, datasets, **kwargs):
    return scan_datasets(load_config(write_configs(tmp_path, datasets)), summary=False, **kwargs)


def reasons(result) -> dict[str, str]:
    return {skipped.path.name: skipped.reason for skipped in result.skipped}


def test_caption_strategies(tmp_path):
    clips = tmp_path / "clips"
    write_caption(write_clip(clips / "sub" / "a_red-fox.mp4", 17), "  A red fox\n runs.  ")
    write_clip(clips / "b.mp4", 17)
    (clips / "metadata.jsonl").write_text(
        json.dumps({"file_name": "sub/a_red-fox.mp4", "caption": "fox from jsonl"}) + "\n\n" + json.dumps({"file_name": "b.mp4", "caption": "b"}) + "\n"
    )
    (tmp_path / "list.csv").write_text('video,text\nclips/b.mp4,"b from csv, with a comma"\n')
    result = scan(
        tmp_path,
        [
            dataset("text", "clips"),
            dataset("name", "clips", caption_strategy="filename"),
            dataset("jsonl", "clips", caption_strategy="jsonl"),
            dataset("csv", ".", caption_strategy="csv", manifest="list.csv", path_column="video", caption_column="text", split="eval"),
        ],
        require_samples=False,
    )
    captions = {d: sorted(s.caption for s in result.dataset_samples(d)) for d in result.datasets}
    assert captions == {
        "text": ["A red fox runs."],  # b.mp4 has no caption file
        "name": ["a red fox", "b"],
        "jsonl": ["b", "fox from jsonl"],
        "csv": ["b from csv, with a comma"],
    }
    assert reasons(result) == {"b.mp4": "missing_caption"}
    # the eval split is scanned (for validation prompts) but never trained on
    assert {s.dataset_id for s in result.samples} == {"text", "name", "jsonl"}


@pytest.fixture
def messy(tmp_path):
    """A folder with two good clips and one of each bad input; an image folder and a manifest likewise."""
    clips = tmp_path / "clips"
    write_caption(write_clip(clips / "good1.mp4", 21), "good one")
    write_caption(write_clip(clips / "good2.mp4", 17, height=96, width=64), "good two")
    write_caption(write_clip(clips / "utf16.mp4", 17), "caf\u00e9 cr\u00e8me".encode("utf-16"))  # BOM: decoded
    (clips / "corrupt.mp4").write_bytes(os.urandom(3000))
    write_caption(clips / "corrupt.mp4", "corrupt")
    whole = write_clip(tmp_path / "whole.mp4", 30, faststart=True).read_bytes()
    (clips / "truncated.mp4").write_bytes(whole[: int(len(whole) * 0.6)])
    write_caption(clips / "truncated.mp4", "truncated")
    (clips / "empty.mp4").write_bytes(b"")
    write_caption(clips / "empty.mp4", "empty")
    write_caption(write_clip(clips / "short.mp4", 7), "too short")
    write_clip(clips / "nocaption.mp4", 17)
    write_caption(write_clip(clips / "latin1.mp4", 17), "caf\u00e9".encode("latin-1"))
    write_caption(write_clip(clips / "utf16_nobom.mp4", 17), "cafe".encode("utf-16-le"))
    write_caption(write_clip(clips / "blank.mp4", 17), " \n ")

    stills = tmp_path / "stills"
    write_caption(write_image(stills / "fine.png"), "fine")
    (stills / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    write_caption(stills / "broken.png", "broken")
    half = (stills / "fine.png").read_bytes()
    (stills / "cut.png").write_bytes(half[: len(half) // 2])
    write_caption(stills / "cut.png", "cut")
    (stills / "metadata.jsonl").write_text(
        "\n".join(
            [json.dumps({"file_name": "fine.png", "caption": "from manifest"}), json.dumps({"file_name": "gone.png", "caption": "x"}), "{not json"]
        )
    )
    return tmp_path


def test_every_bad_input_is_skipped_with_its_reason_and_good_files_load(messy, caplog):
    datasets = [
        dataset("clips", "clips", video={"num_frames": 17, "min_frames": 9}),
        dataset("stills", "stills", dataset_type="image"),
        dataset("manifest", "stills", dataset_type="image", caption_strategy="jsonl"),
    ]
    with caplog.at_level(logging.WARNING, logger="frametuner.data"):
        result = scan(messy, datasets)
    assert reasons(result) == {
        "corrupt.mp4": "unreadable",
        "truncated.mp4": "truncated",
        "empty.mp4": "empty_file",
        "short.mp4": "too_short",
        "nocaption.mp4": "missing_caption",
        "latin1.mp4": "caption_encoding",
        "utf16_nobom.mp4": "caption_encoding",
        "blank.mp4": "empty_caption",
        "broken.png": "unreadable",
        "cut.png": "unreadable",
        "gone.png": "missing_file",
        "metadata.jsonl": "bad_manifest_row",
    }
    short = next(s for s in result.skipped if s.path.name == "short.mp4")
    assert short.detail == "7 usable frames -> 5 on the 4k+1 grid < min_frames 9"
    # one warning line per skipped file, naming the file and the reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(result.skipped)
    assert any(str(messy / "clips" / "latin1.mp4") in w and "caption_encoding" in w and "not UTF-8" in w for w in warnings)

    good = {s.source.path.name: s for s in result.dataset_samples("clips")}
    assert sorted(good) == ["good1.mp4", "good2.mp4", "utf16.mp4"]
    assert good["utf16.mp4"].caption == "caf\u00e9 cr\u00e8me"
    assert good["good1.mp4"].bucket.key == "64x96@17" and good["good2.mp4"].bucket.key == "96x64@17"
    assert indices_from_pixels(load_clip(good["good1.mp4"]).numpy()) == list(range(17))
    assert [s.caption for s in result.dataset_samples("manifest")] == ["from manifest"]
    assert load_clip(result.dataset_samples("stills")[0]).shape == (1, 64, 96, 3)

    buffer = io.StringIO()
    Console(file=buffer, width=120).print(skip_table(result))
    table = buffer.getvalue()
    assert re.search(r"clips\s*│\s*caption_encoding\s*│\s*2\s*│", table)
    assert re.search(r"stills\s*│\s*unreadable\s*│\s*2\s*│", table)


def test_a_dataset_left_empty_is_an_error_before_any_model_work(tmp_path):
    write_caption(write_clip(tmp_path / "clips" / "short.mp4", 5), "short")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(EmptyDatasetError) as error:
        scan(tmp_path, [dataset("clips", "clips"), dataset("nothing", "nothing")])
    lines = error.value.messages
    assert len(lines) == 2
    assert "dataset 'clips'" in lines[0] and "all 1 files were skipped (too_short: 1)" in lines[0]
    assert "dataset 'nothing'" in lines[1] and "no video files found" in lines[1]


def test_i2v_conditioning_image_rule(tmp_path):
    clips = tmp_path / "clips"
    write_caption(write_clip(clips / "with_image.mp4", 17), "explicit image")
    write_image(clips / "with_image.png", 64, 96, level=200)
    write_caption(write_clip(clips / "no_image.mp4", 17), "first frame")
    write_image(tmp_path / "conds" / "no_image.jpg", 128, 192, level=50)  # only seen through conditioning_data
    result = scan(
        tmp_path,
        [
            dataset("auto", "clips", is_i2v=True),
            dataset("first", "clips", is_i2v=True, conditioning_image="first_frame"),
            dataset("required", "clips", is_i2v=True, conditioning_image="required"),
            dataset("folder", "clips", is_i2v=True, conditioning_data="conds"),
            dataset("t2v", "clips"),
        ],
    )
    auto = {s.source.path.name: s for s in result.dataset_samples("auto")}
    explicit = auto["with_image.mp4"]
    assert explicit.conditioning_image.path.name == "with_image.png"
    image = load_conditioning_image(explicit)
    assert image.shape == (1, 64, 96, 3) and abs(image.float().mean().item() - 200) < 1

    fallback = auto["no_image.mp4"]
    assert fallback.conditioning_image is None
    assert np.array_equal(load_conditioning_image(fallback).numpy(), load_clip(fallback)[:1].numpy())  # the clip's own frame 0

    assert all(s.conditioning_image is None for s in result.dataset_samples("first"))
    assert [s.source.path.name for s in result.dataset_samples("required")] == ["with_image.mp4"]
    assert reasons(result) == {"no_image.mp4": "missing_conditioning_image"}
    [from_folder] = [s for s in result.dataset_samples("folder") if s.source.path.name == "no_image.mp4"]
    resized = load_conditioning_image(from_folder)  # 128x192 -> the clip's 64x96 bucket
    assert resized.shape == (1, 64, 96, 3) and abs(resized.float().mean().item() - 50) < 1
    assert all(load_conditioning_image(s) is None for s in result.dataset_samples("t2v"))

    sampler = BucketBatchSampler.from_scan(result, load_config(tmp_path / "config.json"))
    batches = [[result.samples[i] for i in batch] for batch in sampler]
    assert len(batches) == len(result.samples)  # train_batch_size 1, no repeats
    assert all(len({(s.dataset_id, s.bucket.key, s.is_i2v) for s in batch}) == 1 for batch in batches)
