"""Probe and decode media: PyAV for video, Pillow for images, one resize/crop for both.

Frames are addressed by their index in *presentation order* (sorted packet
timestamps), so variable-frame-rate files, B-frames and seeking all agree on which
frame "index 40" is. Target frame rates are reached by selecting frames by timestamp,
never by interpolating. Rotation metadata (display matrix) and EXIF orientation are
applied, so sizes are always display sizes.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import statistics
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .buckets import crop_box
from .sample import Bucket, CropBox, Sample, SourceInfo

log = logging.getLogger("frametuner.data")


class DecodeError(RuntimeError):
    """A file that cannot be used; ``reason`` is a short code shown in skip tables."""

    def __init__(self, path: Path | str, reason: str, detail: str = ""):
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class VideoProbe:
    """A video's :class:`SourceInfo` plus its frame timestamps (``pts`` in ``time_base`` units)."""

    info: SourceInfo
    pts: tuple[int, ...]
    time_base: Fraction


def _stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DecodeError(path, "missing_file", "the file does not exist (moved or deleted since the scan?)") from None
    if stat.st_size == 0:
        raise DecodeError(path, "empty_file", "0 bytes")
    return stat.st_size, stat.st_mtime_ns


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise DecodeError(path, "unreadable", f"not a media file PyAV can open: {error}") from None


def _rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise degrees (0/90/180/270) that turn the coded frame into the displayed one."""
    try:
        degrees = float(frame.rotation or 0)
    except Exception:  # noqa: BLE001 - malformed side data: treat as unrotated
        return 0
    return int(round(degrees / 90.0)) % 4 * 90


NOT_A_VIDEO = "not a video"
STILL_IMAGE_DETAIL = "image, use it as a conditioning image or convert it"
_STILL_CODECS = {"png", "mjpeg", "jpeg2000", "webp", "bmp", "tiff", "gif", "apng", "jpegls", "qoi"}


def _is_still_image(container: av.container.InputContainer, stream, frames: int | None = None) -> bool:
    """A still image opened as a video: an image demuxer (``png_pipe``, ``jpeg_pipe``, ``image2``...),
    or an image codec with a single frame (a one-frame GIF)."""
    name = container.format.name or ""
    if name.endswith("_pipe") or name == "image2":
        return True
    return frames is not None and frames <= 1 and stream.codec_context.name in _STILL_CODECS


def probe_video(path: Path | str) -> VideoProbe:
    """Timestamps of every frame, display size and rotation; raises :class:`DecodeError`.

    Reads every packet (cheap: no decoding) so frame counts are exact and truncated
    files (the demuxer stops early or flags a corrupt packet) are caught, and decodes
    the first frame so an unusable codec is caught here rather than mid-training.
    """
    path = Path(path)
    size_bytes, mtime_ns = _stat(path)
    container = _open(path)
    with container:
        if not container.streams.video:
            raise DecodeError(path, "no_video_stream", "the file has no video track")
        stream = container.streams.video[0]
        if _is_still_image(container, stream):
            raise DecodeError(path, NOT_A_VIDEO, STILL_IMAGE_DETAIL)
        pts: list[int] = []
        first: av.VideoFrame | None = None
        corrupt = False
        try:
            for packet in container.demux(stream):
                if packet.size == 0 and packet.pts is None:
                    continue  # end-of-stream flush packet
                corrupt |= packet.is_corrupt
                if packet.is_discard:
                    continue  # cut away by an edit list: never presented
                timestamp = packet.pts if packet.pts is not None else packet.dts
                if timestamp is not None:
                    pts.append(int(timestamp))
                if first is None:
                    first = next(iter(packet.decode()), None)
            if first is None:
                first = next(iter(stream.decode(None)), None)  # flush a decoder that buffers frames
        except av.error.FFmpegError as error:
            reason = "truncated" if pts else "decode_error"
            raise DecodeError(path, reason, f"{type(error).__name__}: {error}") from None
        declared = stream.frames or 0
        if corrupt or (declared and len(pts) < declared):
            raise DecodeError(path, "truncated", f"{len(pts)} of {declared or '?'} frames readable")
        if not pts or first is None:
            raise DecodeError(path, "decode_error", "no decodable frame")
        if _is_still_image(container, stream, len(pts)):
            raise DecodeError(path, NOT_A_VIDEO, STILL_IMAGE_DETAIL)
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1000)
        width, height = first.width, first.height
        sar = stream.sample_aspect_ratio
        if sar and sar > 0 and sar != 1:
            width = max(1, round(width * sar))
        rotation = _rotation(first)
        if rotation in (90, 270):
            width, height = height, width
        pts.sort()
        if len(pts) > 1 and pts[-1] > pts[0]:
            fps = float((len(pts) - 1) / ((pts[-1] - pts[0]) * time_base))
        else:
            fps = float(stream.average_rate or 0)
    info = SourceInfo(
        path=path, size_bytes=size_bytes, mtime_ns=mtime_ns, frames=len(pts), fps=fps,
        height=height, width=width, rotation=rotation,
    )
    return VideoProbe(info=info, pts=tuple(pts), time_base=time_base)


def _check_unchanged(source: SourceInfo) -> None:
    if _stat(Path(source.path)) != (source.size_bytes, source.mtime_ns):
        raise DecodeError(source.path, "changed_since_scan", "size or modification time differs from the scan; scan again")


def _open_image(path: Path) -> Image.Image:
    """RGB image with EXIF orientation applied (phones store portraits sideways)."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode != "RGB":
                image = image.convert("RGB")
            return image
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise DecodeError(path, "unreadable", f"image does not decode: {error}") from None


def probe_image(path: Path | str) -> SourceInfo:
    path = Path(path)
    size_bytes, mtime_ns = _stat(path)
    image = _open_image(path)
    return SourceInfo(path=path, size_bytes=size_bytes, mtime_ns=mtime_ns, frames=1, fps=0.0, height=image.height, width=image.width)


# ------------------------------------------------------------------ frame selection
def select_frames(pts: tuple[int, ...] | list[int], time_base: Fraction, *, fps: float | None = None, start_time: float = 0.0) -> list[int]:
    """Source frame indices for every output frame available after ``start_time``.

    Without ``fps`` every frame is used. With ``fps`` output frame k is the source frame
    on screen at ``t0 + k / fps`` (the latest frame that started by then), so a 30 fps
    clip at 15 fps uses every other frame and a variable-rate clip comes out evenly
    timed. Above the source rate frames repeat (nothing is interpolated).
    """
    if not pts:
        return []
    durations = [b - a for a, b in zip(pts, pts[1:]) if b > a]
    frame_duration = Fraction(statistics.median(durations)) if durations else Fraction(1, 1) / time_base / 30
    tolerance = frame_duration / 8  # container timestamps are rounded to their time base
    first = bisect.bisect_left(pts, pts[0] + Fraction(str(start_time)) / time_base - tolerance)
    if first >= len(pts):
        return []
    if fps is None:
        return list(range(first, len(pts)))
    step = 1 / (Fraction(str(fps)) * time_base)
    end = pts[-1] + frame_duration  # the last frame stays on screen one frame duration
    indices = []
    k = 0
    while True:
        when = pts[first] + k * step
        if when >= end - tolerance:
            return indices
        indices.append(bisect.bisect_right(pts, when + tolerance) - 1)
        k += 1


# ------------------------------------------------------------------ resize and crop
def _resize_crop(frame: av.VideoFrame, crop: CropBox, rotation: int = 0) -> np.ndarray:
    """Scale with swscale to ``crop.resize`` (display orientation), rotate, then crop.

    Clips and images go through this one function so an i2v conditioning image is
    resized exactly like its clip. AREA filtering when shrinking (no aliasing),
    bicubic when enlarging.
    """
    resize_h, resize_w = crop.resize
    coded_h, coded_w = (resize_w, resize_h) if rotation in (90, 270) else (resize_h, resize_w)
    shrinking = coded_w <= frame.width and coded_h <= frame.height
    options: dict = {"interpolation": "AREA" if shrinking else "BICUBIC"}
    if frame.format.name != "rgb24":
        if frame.color_range:
            options["src_color_range"] = frame.color_range
        if frame.colorspace == 2 and frame.height >= 720:  # unspecified: HD content is BT.709 by convention
            options["src_colorspace"] = "ITU709"
    array = frame.to_ndarray(width=coded_w, height=coded_h, format="rgb24", **options)
    if rotation:
        array = np.rot90(array, k=rotation // 90)
    top, left = crop.top, crop.left
    height, width = crop.size
    return np.ascontiguousarray(array[top : top + height, left : left + width])


def _image_frame(image: Image.Image) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")


def _check_shape(path: Path, array: np.ndarray, crop: CropBox) -> None:
    if array.shape[:2] != tuple(crop.size):
        raise DecodeError(path, "bad_crop", f"crop {crop} gives {array.shape[:2]}, expected {crop.size}")


# ------------------------------------------------------------------ decoding
def decode_frames(source: SourceInfo, indices: tuple[int, ...] | list[int], crop: CropBox, pts: Sequence[int] | None = None) -> np.ndarray:
    """Frames ``indices`` (presentation order) of a video, resized and cropped: uint8 [F, H, W, 3].

    ``pts``: the sorted presentation timestamps the scan's probe found (the sample keeps
    them), so decoding does not demux the file a second time; probed here when absent.
    A file changed since the scan is refused, not decoded (its frame indices and cache
    key would no longer describe its pixels).
    """
    path = Path(source.path)
    if not indices:
        raise ValueError(f"{path}: no frames requested")
    _check_unchanged(source)
    if pts is None:
        pts = probe_video(path).pts
    if max(indices) >= len(pts) or min(indices) < 0:
        raise DecodeError(path, "decode_error", f"frame {max(indices)} requested, the file has {len(pts)} (did it change since the scan?)")
    index_of = {value: i for i, value in enumerate(pts)}
    wanted = set(indices)
    first, last = min(wanted), max(wanted)
    decoded: dict[int, np.ndarray] = {}

    def decode_from(seek_pts: int | None) -> bool:
        """Decode from a seek point; False if the seek landed after the first wanted frame."""
        container = _open(path)
        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if seek_pts is not None:
                container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
            started = False
            try:
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    index = index_of.get(frame.pts)
                    if index is None:
                        index = max(0, bisect.bisect_right(pts, frame.pts) - 1)
                    if not started:
                        started = True
                        if index > first:
                            return False
                    if index in wanted and index not in decoded:
                        array = _resize_crop(frame, crop, source.rotation)
                        _check_shape(path, array, crop)
                        decoded[index] = array
                    if index >= last:
                        break
            except av.error.FFmpegError as error:
                raise DecodeError(path, "decode_error", f"{type(error).__name__} while decoding: {error}") from None
        return True

    # Seek a little before the wanted frame: containers index by decode time, and a
    # B-frame clip's keyframe may be presented after frames that precede it in the index.
    margin = 8 * (pts[1] - pts[0]) if len(pts) > 1 else 0
    if first == 0 or not decode_from(max(pts[0], pts[first] - margin)):
        decoded.clear()
        decode_from(None)
    missing = sorted(wanted - decoded.keys())
    if missing:
        raise DecodeError(path, "decode_error", f"{len(missing)} frame(s) did not decode (first: {missing[0]}); the file may be corrupt")
    return np.stack([decoded[i] for i in indices])


def decode_image(path: Path | str, crop: CropBox) -> np.ndarray:
    """An image resized and cropped like a clip frame: uint8 [1, H, W, 3]."""
    path = Path(path)
    array = _resize_crop(_image_frame(_open_image(path)), crop)
    _check_shape(path, array, crop)
    return array[None]


def load_clip(sample: Sample) -> torch.Tensor:
    """The sample's pixels: uint8 ``[F, H, W, 3]`` with ``(F, H, W) == (bucket.frames, bucket.height, bucket.width)``.

    Raises :class:`DecodeError` (file + reason) for a file that fails now although it
    passed the scan (changed on disk, or corrupt past the first frame).
    """
    if sample.media_type == "image":
        _check_unchanged(sample.source)
        array = decode_image(sample.source.path, sample.crop)
    else:
        array = decode_frames(sample.source, sample.frame_indices, sample.crop, sample.extra.get("pts"))
    expected = (sample.bucket.frames, sample.bucket.height, sample.bucket.width)
    if tuple(array.shape[:3]) != expected:
        raise DecodeError(sample.source.path, "decode_error", f"decoded {tuple(array.shape[:3])}, bucket is {expected}")
    return torch.from_numpy(array)


def conditioning_crop(crop: CropBox, source: SourceInfo, image: SourceInfo, mode: str = "center") -> CropBox:
    """Crop of a conditioning image: the clip's own crop when sizes match, else the same
    bucket filled the same way (``mode`` as the clip; a random crop keeps its relative position)."""
    if (image.height, image.width) == (source.height, source.width):
        return crop
    out_h, out_w = crop.size
    filled = crop_box(image.height, image.width, Bucket(out_h, out_w, 1), "none" if mode == "none" else "center")
    if mode == "none":
        return filled

    def place(offset: int, spare_clip: int, spare_image: int) -> int:
        return round(spare_image * offset / spare_clip) if spare_clip > 0 else spare_image // 2

    top = place(crop.top, crop.resize[0] - out_h, filled.resize[0] - out_h)
    left = place(crop.left, crop.resize[1] - out_w, filled.resize[1] - out_w)
    return dataclasses.replace(filled, top=top, left=left)


def load_conditioning_image(sample: Sample) -> torch.Tensor | None:
    """The i2v condition: uint8 ``[1, H, W, 3]`` in the bucket size, or None for text-to-video.

    An explicit same-stem image (found by the scan) is resized/cropped like the clip;
    otherwise it is the clip's first frame, identical to ``load_clip(sample)[0]``.
    """
    if not sample.is_i2v:
        return None
    if sample.conditioning_image is None:
        if sample.media_type == "image":
            _check_unchanged(sample.source)
            return torch.from_numpy(decode_image(sample.source.path, sample.crop))
        return torch.from_numpy(decode_frames(sample.source, sample.frame_indices[:1], sample.crop, sample.extra.get("pts")))
    _check_unchanged(sample.conditioning_image)
    crop = conditioning_crop(sample.crop, sample.source, sample.conditioning_image, sample.extra.get("crop_mode", "center"))
    return torch.from_numpy(decode_image(sample.conditioning_image.path, crop))
