"""``validation/index.html``: every validation video, one row per step, one column per prompt.

Each validation writes a small JSON record beside its files (``step000100_prompt00.json``);
the index is rebuilt from those records, so it never disagrees with what is on disk and a
resumed run keeps the earlier rows. Static HTML with inline CSS: it opens from the file
system with no server and no CDN.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..storage import disk_errors

INDEX_NAME = "index.html"


# What a validation record shows: a prompt's video (t2v, or i2v from an eval dataset image), a
# continuation of given frames, or a long video of several segments.
KINDS = ("prompt", "continuation", "long")
KIND_LABELS = {"prompt": "", "continuation": "continuation", "long": "long video"}


def validation_stem(step: int, prompt_index: int, kind: str = "prompt") -> str:
    """File name stem for one validation: sorts by step, then prompt (then kind)."""
    stem = f"step{step:06d}_prompt{prompt_index:02d}"
    return stem if kind == "prompt" else f"{stem}_{kind}"


@dataclass
class ValidationRecord:
    """What one validation produced; file names are relative to the validation folder."""

    step: int
    prompt_index: int
    prompt: str
    video: str | None = None
    contact_sheet: str | None = None
    latents: str | None = None  # set while decoding is deferred
    settings: dict = field(default_factory=dict)
    kind: str = "prompt"  # see KINDS
    segment_sheets: list[str] = field(default_factory=list)  # long videos: one contact sheet per segment

    @property
    def stem(self) -> str:
        return validation_stem(self.step, self.prompt_index, self.kind)

    def save(self, folder: Path) -> Path:
        path = folder / f"{self.stem}.json"
        write_text_atomic(path, json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> "ValidationRecord":
        data = json.loads(path.read_text())
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_errors(path.parent, f"writing {path.name}"):
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def load_records(folder: str | Path) -> list[ValidationRecord]:
    records = []
    for path in sorted(Path(folder).glob("step*_prompt*.json")):
        try:
            records.append(ValidationRecord.load(path))
        except (OSError, ValueError, TypeError):
            continue  # a foreign or damaged file must not break the page
    return records


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: 0.4rem; vertical-align: top; background: #fff; }
th.prompt { max-width: 28rem; font-weight: normal; text-align: left; }
th.step { white-space: nowrap; }
video, img { max-width: 28rem; display: block; }
.pending { color: #888; font-style: italic; }
.links { font-size: 0.8rem; }
.segments img { max-width: 28rem; margin-top: 0.3rem; }
.segments figcaption { font-size: 0.8rem; color: #555; }
"""


def _cell(record: ValidationRecord | None) -> str:
    if record is None:
        return "<td></td>"
    parts = []
    if record.video:
        source = html.escape(record.video, quote=True)
        parts.append(f'<video src="{source}" controls loop muted playsinline preload="metadata"></video>')
    elif record.contact_sheet:
        parts.append(f'<img src="{html.escape(record.contact_sheet, quote=True)}" alt="contact sheet">')
    else:
        parts.append('<span class="pending">decoding pending</span>')
    if record.video and record.contact_sheet:
        parts.append(f'<div class="links"><a href="{html.escape(record.contact_sheet, quote=True)}">contact sheet</a></div>')
    if record.segment_sheets:  # one sheet per segment, stacked, so drift shows at a glance
        figures = "".join(
            f'<figure><figcaption>segment {number}</figcaption><a href="{html.escape(sheet, quote=True)}">'
            f'<img src="{html.escape(sheet, quote=True)}" alt="segment {number} contact sheet"></a></figure>'
            for number, sheet in enumerate(record.segment_sheets)
        )
        parts.append(f'<div class="segments">{figures}</div>')
    return f"<td>{''.join(parts)}</td>"


def _column_label(kind: str, index: int, prompt: str) -> str:
    label = KIND_LABELS.get(kind, kind)
    return f"#{index}{' ' + label if label else ''}: {prompt}"


def render_index(records: list[ValidationRecord], title: str = "Validation") -> str:
    # One column per (prompt, kind): a prompt's video, then its continuation and long video.
    prompts: dict[tuple[int, int, str], str] = {}
    by_step: dict[int, dict[tuple[int, int, str], ValidationRecord]] = {}
    order = {kind: number for number, kind in enumerate(KINDS)}
    for record in records:
        column = (record.prompt_index, order.get(record.kind, len(KINDS)), record.kind)
        prompts.setdefault(column, record.prompt)
        by_step.setdefault(record.step, {})[column] = record
    columns = sorted(prompts)
    header = "".join(
        f'<th class="prompt">{html.escape(_column_label(kind, index, prompts[(index, rank, kind)]))}</th>'
        for index, rank, kind in columns
    )
    rows = "\n".join(
        f'<tr><th class="step">step {step}</th>{"".join(_cell(by_step[step].get(index)) for index in columns)}</tr>'
        for step in sorted(by_step)
    )
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<table>\n<tr><th>step</th>{header}</tr>\n{rows}\n</table>\n</body></html>\n"
    )


def write_index(folder: str | Path, title: str = "Validation") -> Path:
    """(Re)write ``<folder>/index.html`` from the records in the folder."""
    folder = Path(folder)
    path = folder / INDEX_NAME
    write_text_atomic(path, render_index(load_records(folder), title))
    return path
