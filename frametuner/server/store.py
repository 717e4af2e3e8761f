"""Job records in SQLite (``<data_dir>/frametuner.sqlite3``): the server's only state.

Job folders hold the files (config, log, outputs); this table holds what the server
decided about them (status, pid, assigned GPUs), so a restarted server finds its jobs.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Job life: created -> queued -> running -> finished | stopped | failed | cancelled;
# running -> stopping -> stopped; a server restart that finds the process gone -> interrupted.
CREATED, QUEUED, RUNNING, STOPPING = "created", "queued", "running", "stopping"
FINISHED, STOPPED, FAILED, CANCELLED, INTERRUPTED = "finished", "stopped", "failed", "cancelled", "interrupted"
ACTIVE = (QUEUED, RUNNING, STOPPING)
LIVE = (RUNNING, STOPPING)  # a process exists
TERMINAL = (FINISHED, STOPPED, FAILED, CANCELLED, INTERRUPTED)

TRAIN, SAMPLE = "train", "sample"
CAPTION = "caption"  # frametuner caption on dataset folders (server/captions.py)


@dataclass
class Job:
    id: str
    kind: str
    name: str
    status: str = CREATED
    created_at: float = field(default_factory=time.time)
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None
    pid_start: str | None = None  # the process's start tick (guards against pid reuse)
    exit_code: int | None = None
    gpus: list[str] = field(default_factory=list)
    slots_needed: int = 1
    message: str = ""
    resume: bool = False  # next launch continues from the latest checkpoint
    cancel_requested: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # sample-job settings (validated)

    def public(self) -> dict[str, Any]:
        return asdict(self)


_JSON_FIELDS = ("gpus", "params")
_BOOL_FIELDS = ("resume", "cancel_requested")
_COLUMNS = [f.name for f in fields(Job)]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    queued_at REAL,
    started_at REAL,
    finished_at REAL,
    pid INTEGER,
    pid_start TEXT,
    exit_code INTEGER,
    gpus TEXT NOT NULL DEFAULT '[]',
    slots_needed INTEGER NOT NULL DEFAULT 1,
    message TEXT NOT NULL DEFAULT '',
    resume INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    params TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""


class JobStore:
    """A small thread-safe table of :class:`Job`; every write is its own transaction."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _to_row(job: Job) -> dict[str, Any]:
        row = asdict(job)
        for name in _JSON_FIELDS:
            row[name] = json.dumps(row[name])
        for name in _BOOL_FIELDS:
            row[name] = int(row[name])
        return row

    @staticmethod
    def _from_row(row: sqlite3.Row) -> Job:
        data = dict(row)
        for name in _JSON_FIELDS:
            data[name] = json.loads(data[name])
        for name in _BOOL_FIELDS:
            data[name] = bool(data[name])
        return Job(**data)

    def insert(self, job: Job) -> Job:
        row = self._to_row(job)
        placeholders = ", ".join(f":{name}" for name in _COLUMNS)
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})", row)
        return job

    def update(self, job_id: str, **changes: Any) -> Job:
        unknown = set(changes) - set(_COLUMNS) - {"id"}
        if unknown or "id" in changes:
            raise KeyError(f"cannot update {sorted(unknown | ({'id'} & set(changes)))}")
        row = self._to_row(Job(id=job_id, kind="", name="", **changes))
        assignments = ", ".join(f"{name} = :{name}" for name in changes)
        values = {name: row[name] for name in changes} | {"id": job_id}
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = :id", values)
            return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return self._from_row(row)

    def list(self, statuses: tuple[str, ...] | None = None) -> list[Job]:
        query, args = "SELECT * FROM jobs", ()
        if statuses:
            query += f" WHERE status IN ({', '.join('?' for _ in statuses)})"
            args = statuses
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at DESC, id", args).fetchall()
        return [self._from_row(row) for row in rows]
