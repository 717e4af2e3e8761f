"""``--review DIR``: one HTML page, each clip's contact sheet beside its caption.

Every file of the run that has a caption at the end (written now or already there) gets
a row: its contact sheet (eight evenly spaced frames, ``sampling.video.contact_sheet``),
its path, the caption, and whether it is new; failures are listed with their reasons.
Sheets are JPEGs in ``DIR/sheets/``; the page is ``DIR/index.html`` and the same rows are
``DIR/index.json`` (``{"rows": [{"path", "status", "caption" or "reason", "sheet"}], ...}``, what the
web UI's caption job shows), both written atomically.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
from pathlib import Path

from ..data.captions import CaptionError, read_caption_file
from ..data.media import DecodeError
from ..sampling.video import contact_sheet, temporary_beside
from .files import MediaFile, caption_path
from .frames import load_image, load_video

log = logging.getLogger("frametuner.caption")

SHEET_FRAMES = 8
SHEET_TILE_WIDTH = 240


def _sheet_size(height: int, width: int, frames: int = 1) -> tuple[int, int]:
    scale = min(1.0, SHEET_TILE_WIDTH / width)
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def _write_sheet(item: MediaFile, folder: Path) -> str | None:
    """The sheet's file name in ``folder``, or None if the file does not decode."""
    try:
        media = load_image(item.path, _sheet_size) if item.kind == "image" else load_video(item.path, SHEET_FRAMES, _sheet_size)
    except DecodeError:
        return None
    name = hashlib.sha1(str(item.path).encode()).hexdigest()[:16] + ".jpg"
    target = folder / name
    temporary = temporary_beside(target)
    try:
        contact_sheet(media.frames, prompt=item.path.name, count=SHEET_FRAMES, columns=4, max_tile_width=SHEET_TILE_WIDTH).save(temporary, format="JPEG", quality=85)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return name


def write_review(folder: str | Path, media: list[MediaFile], report) -> Path:
    """Write ``folder/index.html`` for ``media`` after a run (``report``: a CaptionReport)."""
    folder = Path(folder)
    sheets = folder / "sheets"
    sheets.mkdir(parents=True, exist_ok=True)
    failed = dict(report.failed)
    new = set(report.captioned)
    rows = []
    records = []
    for item in media:
        try:
            caption = read_caption_file(caption_path(item.path))
        except CaptionError:
            caption = None
        if caption is None and item.path not in failed:
            continue  # not captioned (a dry run's pending files, an interrupted run's rest)
        sheet = _write_sheet(item, sheets)
        image = f'<img src="sheets/{sheet}" alt="">' if sheet else '<div class="missing">no frames</div>'
        if caption is not None:
            status = "new" if item.path in new else "existing"
            text = html.escape(caption)
        else:
            status = "failed"
            text = html.escape(failed[item.path])
        records.append({"path": str(item.path), "status": status, "sheet": f"sheets/{sheet}" if sheet else None,
                        **({"caption": caption} if caption is not None else {"reason": failed[item.path]})})
        rows.append(f'<tr class="{status}"><td>{image}</td><td><div class="path">{html.escape(str(item.path))}</div>'
                    f'<div class="status">{status}</div><p>{text}</p></td></tr>')
    page = (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>frametuner caption review</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;width:100%}"
        "td{vertical-align:top;border-bottom:1px solid #ddd;padding:.6em}td:first-child{width:1%}"
        ".path{font-family:monospace;font-size:.85em;color:#555}.status{font-size:.8em;text-transform:uppercase}"
        "tr.new .status{color:#070}tr.failed .status{color:#b00}p{max-width:60em;line-height:1.4}"
        "</style></head><body>"
        f"<h1>Caption review</h1><p>{len(rows)} files: {len(report.captioned)} captioned now, "
        f"{len(report.skipped)} had a caption, {len(report.failed)} failed.</p>"
        "<table>" + "".join(rows) + "</table></body></html>\n"
    )
    summary = {"captioned": len(report.captioned), "skipped": len(report.skipped), "failed": len(report.failed), "rows": records}
    index = folder / "index.html"
    for target, text in ((folder / "index.json", json.dumps(summary, ensure_ascii=False, indent=1)), (index, page)):
        temporary = temporary_beside(target)
        try:
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
    log.info("caption: review page %s", index)
    return index
