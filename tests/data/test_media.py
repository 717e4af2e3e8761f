"""Decoding: exact frame selection (read back from the pixels), fps resampling, variable
frame rate, rotation and EXIF orientation, crops; images as 1-frame clips."""

from __future__ import annotations

import av
import numpy as np
import pytest

from frametuner.config import load_config
from frametuner.data import DecodeError, load_clip, probe_image, probe_video, scan_datasets, select_frames
from frametuner.data.media import decode_frames
from frametuner.data.sample import CropBox

from .factory import dataset, indices_from_pixels, write_caption, write_clip, write_configs, write_image


def scan(tmp_path, datasets, **config):
    return scan_datasets(load_config(write_configs(tmp_path, datasets, **config)), summary=False)


@pytest.fixture
def clip40(tmp_path):
    """One 40-frame 30 fps clip whose frame i has grey level 10 + 6 i."""
    write_caption(write_clip(tmp_path / "clips" / "walk.mp4", 40), "a walk")
    return tmp_path


def test_frame_windows_offsets_and_fps_read_back_from_pixels(clip40):
    result = scan(
        clip40,
        [
            dataset("start", "clips"),
            dataset("center", "clips", video={"window": "center"}),
            dataset("offset", "clips", video={"start_time": 0.5}),
            dataset("half_rate", "clips", video={"fps": 15}),
            dataset("long", "clips", video={"num_frames": 93, "min_frames": 5}),
            dataset("by_length", "clips", video={"bucket_strategy": "resolution_frames", "frame_interval": 8, "num_frames": 93}),
        ],
    )
    expected = {
        "start": list(range(17)),
        "center": list(range(11, 28)),  # (40 - 17) // 2 = 11
        "offset": list(range(15, 32)),  # 0.5 s at 30 fps
        "half_rate": list(range(0, 34, 2)),  # every other frame
        "long": list(range(37)),  # 40 frames -> 37, the largest 4k+1
        "by_length": list(range(33)),  # 40 -> 33 on the 8-frame grid
    }
    for dataset_id, indices in expected.items():
        [sample] = result.dataset_samples(dataset_id)
        assert list(sample.frame_indices) == indices, dataset_id
        clip = load_clip(sample)
        assert clip.dtype.__str__() == "torch.uint8" and clip.shape == (len(indices), 64, 96, 3)
        assert (sample.bucket.frames - 1) % 4 == 0
        assert indices_from_pixels(clip.numpy()) == indices, dataset_id


def test_seeking_into_a_clip_with_b_frames_returns_exactly_the_requested_frames(tmp_path):
    probe = probe_video(write_clip(tmp_path / "gop.mp4", 40, gop=8))
    with av.open(str(probe.info.path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.has_b_frames  # decode order differs from presentation order
        assert [i for i, entry in enumerate(stream.index_entries) if entry.is_keyframe] == [0, 8, 16, 24, 32]
    crop = CropBox((64, 96), 0, 0, (64, 96))
    for wanted in ([33, 34, 35], [17], [8, 9, 10], [39], [23, 24, 26]):
        assert indices_from_pixels(decode_frames(probe.info, wanted, crop)) == wanted


def test_variable_frame_rate_selects_frames_by_time(tmp_path):
    times_ms = [0, 33, 66, 150, 166, 300, 333, 366, 400, 500, 533, 566, 600, 633, 700, 733, 766]
    path = write_clip(tmp_path / "vfr.mp4", len(times_ms), timestamps_ms=times_ms)
    probe = probe_video(path)
    assert probe.info.frames == len(times_ms)
    seconds = [float(p * probe.time_base) for p in probe.pts]
    assert np.allclose(seconds, np.array(times_ms) / 1000, atol=1e-3)
    # oracle: output frame k shows the last source frame that started at or before k / 10 s
    expected = [max(i for i, t in enumerate(times_ms) if t <= k * 100) for k in range(8)]
    selected = select_frames(probe.pts, probe.time_base, fps=10)
    assert selected == expected == [0, 2, 4, 5, 8, 9, 12, 14]
    frames = decode_frames(probe.info, selected, CropBox((64, 96), 0, 0, (64, 96)))
    assert indices_from_pixels(frames) == expected


def test_rotation_metadata_gives_display_orientation(tmp_path):
    # coded 64x96 (landscape), left half white, display matrix: 90 degrees counter-clockwise
    write_caption(write_clip(tmp_path / "clips" / "phone.mp4", 9, rotation=90, pattern="left_half"), "portrait")
    [sample] = scan(tmp_path, [dataset("d", "clips", video={"num_frames": 9})]).samples
    assert (sample.source.height, sample.source.width, sample.source.rotation) == (96, 64, 90)
    assert (sample.bucket.height, sample.bucket.width) == (96, 64)  # portrait bucket
    frame = load_clip(sample)[0].float()
    # turning the coded frame a quarter counter-clockwise brings its left half to the bottom
    assert frame[:44].mean() < 5 and frame[52:].mean() > 250


def test_exif_orientation_and_image_crops(tmp_path):
    folder = tmp_path / "stills"
    write_caption(write_image(folder / "phone.jpg", 64, 96, pattern="left_half", exif_orientation=6), "rotated")
    write_caption(write_image(folder / "wide.png", 64, 112, pattern="gradient"), "wide")
    info = probe_image(folder / "phone.jpg")
    assert (info.height, info.width, info.frames) == (96, 64, 1)
    result = scan(tmp_path, [dataset("s", "stills", dataset_type="image"), dataset("r", "stills", dataset_type="image", crop="random")])
    by_name = {s.source.path.name: s for s in result.dataset_samples("s")}
    phone = load_clip(by_name["phone.jpg"]).float()
    assert phone.shape == (1, 96, 64, 3)
    # EXIF 6 = turn clockwise to display: the stored left half ends up on top (JPEG blurs the seam)
    assert phone[0, :40].mean() > 240 and phone[0, 56:].mean() < 15

    # 64x112 source -> bucket 64x96 (area 6144 on the 16 grid); covering it needs no scaling, only a 96-wide window
    wide = by_name["wide.png"]
    assert wide.crop == CropBox(resize=(64, 112), top=0, left=8, size=(64, 96))
    pixels = load_clip(wide)[0].int()
    red_source = np.linspace(0, 255, 112, dtype=np.float32).astype(np.uint8)
    assert pixels[0, :, 0].tolist() == red_source[8:104].tolist()
    [random_wide] = [s for s in result.dataset_samples("r") if s.source.path.name == "wide.png"]
    left = random_wide.crop.left
    assert 0 <= left <= 16
    assert load_clip(random_wide)[0, 0, :, 0].tolist() == red_source[left : left + 96].tolist()


def test_a_file_changed_since_the_scan_is_refused(clip40):
    [sample] = scan(clip40, [dataset("d", "clips")]).samples
    write_clip(sample.source.path, 30)  # rewritten: other frames, other size
    with pytest.raises(DecodeError, match="changed_since_scan"):
        load_clip(sample)


def test_decoding_a_scanned_clip_does_not_probe_it_again(clip40, monkeypatch):
    """The scan's timestamps travel with the sample (also to other ranks), so decoding for
    the cache does not demux every file a second time; the frames are the same."""
    [sample] = scan(clip40, [dataset("start", "clips")]).dataset_samples("start")

    def no_probe(path):
        raise AssertionError(f"{path} was demuxed again")

    monkeypatch.setattr("frametuner.data.media.probe_video", no_probe)
    assert indices_from_pixels(load_clip(sample).numpy()) == list(sample.frame_indices)
