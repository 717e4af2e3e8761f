"""The trainer's event stream: ``<output_dir>/events.jsonl``, one JSON object per line.

The web UI (and anything else) follows a run by tailing this file; it never imports the
trainer. Every event has ``event`` and ``time`` (unix seconds). Events:

- ``start``: ``max_steps``, ``config`` (the resolved config as JSON), ``pid``
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
from typing import Any

EVENTS_FILE = "events.jsonl"


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
