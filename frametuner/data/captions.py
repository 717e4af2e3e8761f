"""Captions from text files, file names and jsonl/csv manifests.

Encoding rule for caption files (one rule, stated once): UTF-8 (with or without a
byte-order mark) and UTF-16 *with* a byte-order mark are decoded; anything else
(latin-1/cp1252 bytes, UTF-16 without a BOM, which shows up as NUL characters) is
skipped as ``caption_encoding`` rather than guessed, because a wrong guess would
silently train on mojibake.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config.errors import ConfigError


class CaptionError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def normalise_caption(text: str) -> str:
    """Collapse whitespace (line breaks included) to single spaces."""
    return re.sub(r"\s+", " ", text).strip()


def decode_caption_bytes(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise CaptionError("caption_encoding", f"UTF-16 byte-order mark but invalid UTF-16 ({error.reason})") from None
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise CaptionError(
                "caption_encoding", f"not UTF-8 (byte 0x{data[error.start]:02x} at {error.start}, latin-1/cp1252?); re-save the file as UTF-8"
            ) from None
    if "\x00" in text:
        raise CaptionError("caption_encoding", "contains NUL characters (UTF-16 without a byte-order mark?); re-save the file as UTF-8")
    return text


def read_caption_file(path: Path) -> str:
    """The caption in ``path`` (``clip.txt`` beside ``clip.mp4``); raises :class:`CaptionError`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaptionError("missing_caption", f"no {path.name} beside it (caption_strategy textfile)") from None
    except OSError as error:
        raise CaptionError("missing_caption", f"{path.name} cannot be read: {error.strerror}") from None
    caption = normalise_caption(decode_caption_bytes(data))
    if not caption:
        raise CaptionError("empty_caption", f"{path.name} is empty")
    return caption


def caption_from_filename(path: Path) -> str:
    """``a_cat-on_a_mat.mp4`` -> ``a cat on a mat``."""
    return normalise_caption(re.sub(r"[_-]+", " ", path.stem))


@dataclass(frozen=True)
class ManifestRow:
    """One manifest entry; ``problem`` set (a :class:`CaptionError`) when the row is unusable."""

    where: str  # "metadata.jsonl:12"
    path: str | None
    caption: str | None
    problem: CaptionError | None = None


def _row(where: str, record: dict, path_column: str, caption_column: str) -> ManifestRow:
    path = record.get(path_column)
    if not isinstance(path, str) or not path.strip():
        return ManifestRow(where, None, None, CaptionError("bad_manifest_row", f"no '{path_column}' path in the row"))
    caption = record.get(caption_column)
    if caption is None:
        return ManifestRow(where, path, None, CaptionError("missing_caption", f"no '{caption_column}' in the manifest row"))
    if not isinstance(caption, str):
        return ManifestRow(where, path, None, CaptionError("bad_manifest_row", f"'{caption_column}' is {type(caption).__name__}, not text"))
    caption = normalise_caption(caption)
    if not caption:
        return ManifestRow(where, path, None, CaptionError("empty_caption", "empty caption in the manifest row"))
    return ManifestRow(where, path, caption)


def read_manifest(path: Path, kind: str, path_column: str, caption_column: str) -> Iterator[ManifestRow]:
    """Rows of a jsonl or csv manifest. A manifest that is not UTF-8, or a csv whose header
    lacks the configured columns, is a :class:`ConfigError` (nothing could be read)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: manifest is not UTF-8 text; re-save it as UTF-8"]) from None
    if kind == "csv":
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in (path_column, caption_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(
                [f"{path}: csv header has no column {', '.join(repr(c) for c in missing)} (columns: {', '.join(reader.fieldnames or [])}); "
                 "set path_column/caption_column in the dataset"]
            )
        for number, record in enumerate(reader, start=2):
            yield _row(f"{path.name}:{number}", record, path_column, caption_column)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield ManifestRow(where, None, None, CaptionError("bad_manifest_row", f"not JSON: {error.msg}"))
            continue
        if not isinstance(record, dict):
            yield ManifestRow(where, None, None, CaptionError("bad_manifest_row", "not a JSON object"))
            continue
        yield _row(where, record, path_column, caption_column)
