"""A run's state as the pages show it, folded from the trainer's ``events.jsonl``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..training.events import EVENTS_FILE, is_superseded, parse_events_tolerant, read_events, restart_step
from .paths import relative_to_job

def read_events_tolerant(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """``read_events``, but a damaged line (a trainer killed mid-write, then resumed) is skipped, not fatal."""
    try:
        return read_events(path, offset)
    except ValueError:
        pass
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    return parse_events_tolerant(data[:end]), offset + end


STEP_FIELDS = ("step", "loss", "loss_smoothed", "lr", "s_per_step", "eta_s", "grad_norm", "peak_gb")


@dataclass
class RunProgress:
    """Folds events in order; ``update`` may be called again with the events that followed."""

    job_dir: Path
    output_dir: Path
    offset: int = 0
    max_steps: int | None = None
    latest: dict[str, Any] = field(default_factory=dict)  # the last step event's fields
    peak_gb: float | None = None
    validations: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    final_lora: dict[str, str] = field(default_factory=dict)
    terminal: str | None = None  # done | stopped | error (of the latest launch)
    error: str | None = None

    def _file(self, path: str | None) -> str | None:
        return relative_to_job(self.job_dir, self.output_dir, path)

    def _lora(self, lora: dict[str, str] | None) -> dict[str, str]:
        files = {fmt: self._file(path) for fmt, path in (lora or {}).items()}
        return {fmt: path for fmt, path in files.items() if path}

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        restart = restart_step(event)
        if restart is not None:  # a resumed launch redoes the steps past its checkpoint: the earlier ones go
            self.validations = [v for v in self.validations if not is_superseded({"event": "validation", **v}, restart)]
            if isinstance(self.latest.get("step"), (int, float)) and self.latest["step"] > restart:
                self.latest = {"step": restart}
        if kind == "start":
            self.max_steps = event.get("max_steps", self.max_steps)
            self.terminal, self.error = None, None
        elif kind == "step":
            self.latest = {name: event.get(name) for name in STEP_FIELDS}
            if isinstance(event.get("peak_gb"), (int, float)):
                self.peak_gb = max(self.peak_gb or 0.0, float(event["peak_gb"]))
        elif kind == "validation":
            self.validations.append(
                {
                    "step": event.get("step"),
                    "prompt_index": event.get("prompt_index", 0),
                    "prompt": event.get("prompt", ""),
                    "kind": event.get("kind", "prompt"),  # prompt | continuation | long
                    "video": self._file(event.get("video")),
                    "contact_sheet": self._file(event.get("contact_sheet")),
                    "segment_sheets": [path for path in map(self._file, event.get("segment_sheets") or []) if path],
                }
            )
        elif kind == "checkpoint":
            self.checkpoints.append(
                {"step": event.get("step"), "path": self._file(event.get("path")), "lora": self._lora(event.get("lora"))}
            )
        elif kind == "done":
            self.terminal = "done"
            self.final_lora = self._lora(event.get("lora"))
            if event.get("step") is not None:
                self.latest["step"] = event["step"]
        elif kind == "stopped":
            self.terminal = "stopped"
        elif kind == "error":
            self.terminal = "error"
            self.error = str(event.get("message", ""))

    def update(self) -> "RunProgress":
        path = self.output_dir / EVENTS_FILE
        if path.exists() and path.stat().st_size < self.offset:  # the file was replaced: start over
            fresh = RunProgress(self.job_dir, self.output_dir)
            self.__dict__.update(fresh.__dict__)
        events, self.offset = read_events_tolerant(path, self.offset)
        for event in events:
            self.apply(event)
        return self

    @property
    def step(self) -> int | None:
        return self.latest.get("step")

    def public(self) -> dict[str, Any]:
        return {
            "max_steps": self.max_steps,
            "step": self.step,
            "latest": self.latest,
            "peak_gb": self.peak_gb,
            "validations": self.validations,
            "checkpoints": self.checkpoints,
            "final_lora": self.final_lora,
            "terminal": self.terminal,
            "error": self.error,
        }
