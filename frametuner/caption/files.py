"""What to caption and where captions go: the files the dataset reader reads.

A clip or image ``name.ext`` is captioned in ``name.txt`` beside it, UTF-8 (the reader's
``caption_strategy: textfile``, ``frametuner/data/captions.py``). Paths given to
``frametuner caption`` are folders (clips and images found like the scanner finds them:
recursively, hidden files and folders left out) or dataset lists (the JSON list of
``data_backend_config``, or a training config naming one): each enabled
``caption_strategy: textfile`` dataset contributes its folder, videos or images by its
``dataset_type``; datasets captioned by a manifest or by file names are reported, not touched.

In a folder, an image with the stem of a clip beside it is that clip's i2v conditioning
image, not a sample of its own, and two files sharing a stem share one caption file: both
are listed as skipped with the reason, never captioned twice.

A caption file counts as present when it holds text. An empty (or whitespace-only) one is
what the scanner skips as ``empty_caption``, so it is treated as missing and replaced;
anything with text is never replaced without ``--overwrite``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config.dataset import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, DatasetConfig
from ..config.errors import ConfigError
from ..config.jsonc import load_jsonc
from ..data.scan import _walk


@dataclass(frozen=True)
class MediaFile:
    path: Path
    kind: Literal["video", "image"]

    @property
    def caption_path(self) -> Path:
        return caption_path(self.path)


@dataclass(frozen=True)
class Ignored:
    """A file or dataset left out, with the reason (shown in the final table)."""

    path: Path
    reason: str


def caption_path(media: Path) -> Path:
    """``clip.mp4`` -> ``clip.txt``: where the scanner looks for the caption."""
    return Path(media).with_suffix(".txt")


def has_caption(media: Path) -> bool:
    """Whether the caption file beside ``media`` holds any text (an unreadable one counts as
    present: it is the user's file, never replaced without ``--overwrite``)."""
    path = caption_path(media)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        return bool(data.decode("utf-8-sig").strip())
    except UnicodeDecodeError:
        return True


def _kind(path: Path) -> Literal["video", "image"] | None:
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return None


def _folder_media(root: Path, kinds: tuple[str, ...], ignored: list[Ignored]) -> list[MediaFile]:
    extensions = tuple(ext for kind in kinds for ext in (VIDEO_EXTENSIONS if kind == "video" else IMAGE_EXTENSIONS))
    found = [MediaFile(path, _kind(path)) for path in _walk(root, extensions)]  # type: ignore[arg-type]
    clip_stems = {(m.path.parent, m.path.stem.lower()) for m in found if m.kind == "video"}
    media: list[MediaFile] = []
    for item in found:
        if item.kind == "image" and (item.path.parent, item.path.stem.lower()) in clip_stems:
            ignored.append(Ignored(item.path, "conditioning image of the clip with its name (shares its caption)"))
            continue
        media.append(item)
    return media


def _dataset_folders(path: Path, ignored: list[Ignored]) -> list[tuple[Path, tuple[str, ...]]]:
    """(folder, kinds) of each enabled textfile dataset in a dataset list or training config."""
    data = load_jsonc(path)
    if isinstance(data, dict):
        if "data_backend_config" not in data:
            raise ConfigError([f"{path}: a JSON object without 'data_backend_config'; give a dataset list, a training config or a folder"])
        listed = (path.parent / Path(str(data["data_backend_config"])).expanduser()).resolve()
        return _dataset_folders(listed, ignored)
    if not isinstance(data, list):
        raise ConfigError([f"{path}: expected a dataset list [{{\"id\": ..., \"instance_data_dir\": ...}}, ...]"])
    folders = []
    for number, entry in enumerate(data, start=1):
        try:
            dataset = DatasetConfig.model_validate(entry)
        except Exception as error:  # noqa: BLE001 - reported with the file, like the config loader does
            raise ConfigError([f"{path}: dataset #{number}: {str(error).splitlines()[0]}"]) from None
        root = (path.parent / Path(dataset.instance_data_dir).expanduser()).resolve()
        if dataset.disabled:
            continue
        if dataset.caption_strategy != "textfile":
            ignored.append(Ignored(root, f"dataset '{dataset.id}' uses caption_strategy {dataset.caption_strategy}: its captions are not text files"))
            continue
        if not root.is_dir():
            raise ConfigError([f"{path}: dataset '{dataset.id}': 'instance_data_dir' {root} is not a folder"])
        folders.append((root, (dataset.dataset_type,)))
    return folders


def find_media(paths: list[str | Path]) -> tuple[list[MediaFile], list[Ignored]]:
    """Every clip and image to consider, in a stable order, once each; and what was left out."""
    ignored: list[Ignored] = []
    sources: list[tuple[Path, tuple[str, ...]]] = []
    singles: list[MediaFile] = []
    for given in paths:
        path = Path(given).expanduser().resolve()
        if path.is_dir():
            sources.append((path, ("video", "image")))
        elif path.is_file() and path.suffix.lower() in (".json", ".jsonc"):
            sources += _dataset_folders(path, ignored)
        elif path.is_file() and _kind(path) is not None:
            singles.append(MediaFile(path, _kind(path)))  # type: ignore[arg-type]
        elif path.exists():
            raise ConfigError([f"{given}: not a folder, a clip/image or a dataset list (.json)"])
        else:
            raise ConfigError([f"{given}: no such file or folder"])
    media: list[MediaFile] = []
    for root, kinds in sources:
        media += _folder_media(root, kinds, ignored)
    media += singles
    unique: list[MediaFile] = []
    owners: dict[Path, Path] = {}
    for item in media:
        target = item.caption_path
        owner = owners.get(target)
        if owner == item.path:
            continue  # the same file reached twice (a folder and a dataset list)
        if owner is not None:
            ignored.append(Ignored(item.path, f"shares its caption file {target.name} with {owner.name}"))
            continue
        owners[target] = item.path
        unique.append(item)
    return unique, ignored


# ---------------------------------------------------------------------- writing
def write_caption(media: Path, text: str, *, overwrite: bool = False) -> bool:
    """Write ``text`` (UTF-8, one line, newline-terminated) to the caption file of ``media``.

    Atomic: the text goes to a hidden temporary file beside it (flushed to disk), which then
    takes the caption's name, so a reader never sees half a caption and a crash leaves
    either no caption or a whole one. Without ``overwrite`` the final step is a hard link,
    which fails if a caption appeared meanwhile (another run, the user): returns False and
    leaves that caption as it is. An empty caption file is replaced (it holds nothing).
    """
    target = caption_path(media)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text.strip() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, target)
            return True
        try:
            os.link(temporary, target)  # fails if the name exists: never replaces a caption
            return True
        except FileExistsError:
            if has_caption(media):
                return False
            os.replace(temporary, target)  # an empty caption file: nothing to lose
            return True
        except OSError:  # a filesystem without hard links (FAT, some network shares)
            if target.exists() and has_caption(media):
                return False
            os.replace(temporary, target)
            return True
    finally:
        temporary.unlink(missing_ok=True)
