"""The trainer's event stream: ``<output_dir>/events.jsonl``, one JSON object per line.

The web UI (and anything else) follows a run by tailing this file; it never imports the
trainer. Every event has ``event`` and ``time`` (unix seconds). Events:

- ``start``: ``max_steps``, ``step`` (0, or the step resumed at), ``config`` (the resolved config as JSON), ``pid``
- ``resume``: ``step``, ``checkpoint`` (relative when under output_dir): a run continues from a
  checkpoint. Events of an earlier launch that got further (``step`` and ``validation``
  events with a step above it: a killed run's steps, done again now) are superseded;
  readers drop them (:func:`supersede`), so every step appears once.
- ``step``: ``step``, ``loss``, ``loss_smoothed``, ``lr``, ``s_per_step``, ``samples_per_s`` (all GPUs),
  ``eta_s``, ``grad_norm``, ``peak_gb`` (rank 0's GPU)
- ``validation``: ``step``, ``prompt_index``, ``prompt``, ``video`` and ``contact_sheet`` (paths relative to output_dir)
- ``checkpoint``: ``step``, ``path`` (relative), ``lora`` ({format: relative path})
- ``done``: ``step``, ``seconds``, ``lora`` ({format: relative path})
- ``stopped``: ``step``, ``reason`` (``SIGTERM``, ``SIGINT``), ``checkpoint``
- ``error``: ``message``
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..storage import disk_errors

EVENTS_FILE = "events.jsonl"
SUPERSEDED = ("step", "validation")  # events a later launch redoes after its resume step


class EventLog:
    """Appends events; each line is flushed and fsynced so a reader never sees half a line."""

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.path = Path(output_dir) / EVENTS_FILE
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps({"event": event, "time": time.time(), **fields}, default=str)
        with disk_errors(self.path.parent, "appending to the run's event log"):
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Events after byte ``offset``, and the new offset (only whole lines are consumed)."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    events = [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]
    return events, offset + end


def restart_step(event: dict) -> int | None:
    """The step a launch continues from, for ``resume`` and ``start`` events (None otherwise):
    events of earlier launches with a higher step are superseded."""
    if event.get("event") in ("resume", "start") and isinstance(event.get("step"), int):
        return event["step"]
    return None


def is_superseded(event: dict, restart: int) -> bool:
    """True for a ``step``/``validation`` event past ``restart`` (an earlier launch's, redone)."""
    step = event.get("step")
    return event.get("event") in SUPERSEDED and isinstance(step, (int, float)) and step > restart


def supersede(events: Iterable[dict]) -> list[dict]:
    """``events`` (in file order) as they should be shown: at each ``resume``/``start`` the
    earlier ``step`` and ``validation`` events past its step are dropped, so each training
    step appears once, with the values of the launch that kept it."""
    kept: list[dict] = []
    for event in events:
        restart = restart_step(event)
        if restart is not None:
            kept = [e for e in kept if not is_superseded(e, restart)]
        kept.append(event)
    return kept


def read_run(path: str | Path) -> list[dict]:
    """Every event of a run's ``events.jsonl``, superseded ones dropped (see :func:`supersede`).
    A damaged line (a launch killed mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    return supersede(parse_events_tolerant(path.read_bytes()))


def parse_events_tolerant(data: bytes) -> list[dict]:
    """The events in whole or partial ``events.jsonl`` bytes; a damaged line (a launch killed
    mid-write, then resumed) is skipped, not fatal."""
    events = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
