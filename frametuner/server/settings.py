"""Server settings: where state lives, who may connect, which command runs the jobs."""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import frametuner

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def default_data_dir() -> Path:
    """``$FRAMETUNER_DATA_DIR``, else ``$XDG_DATA_HOME/frametuner`` (``~/.local/share/frametuner``)."""
    explicit = os.environ.get("FRAMETUNER_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "frametuner"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def package_root() -> Path:
    """The folder holding the ``frametuner`` package the server runs from (put on the jobs' PYTHONPATH)."""
    return Path(frametuner.__file__).resolve().parent.parent


def default_cli_command() -> list[str]:
    return [sys.executable, "-m", "frametuner"]


@dataclass
class ServerSettings:
    """Everything the app needs; tests build one directly instead of going through the CLI.

    ``cli_command`` is the argument-list prefix a job runs (``<prefix> train --config ...``):
    the real CLI by default, a stand-in trainer in tests. It is a server setting, never
    something a request can choose.
    """

    data_dir: Path = field(default_factory=default_data_dir)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None  # required on every request when set
    cli_command: list[str] = field(default_factory=default_cli_command)
    gpus: list[str] | None = None  # None: detect (CUDA_VISIBLE_DEVICES, nvidia-smi)
    poll_seconds: float = 0.5  # scheduler and live-stream polling period
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths typed into the form resolve here
    examples_dir: Path | None = None  # None: <repo>/examples when running from a checkout
    # Folders (besides the data dir and the examples) that configs submitted over HTTP may read from.
    allow_paths: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.base_dir = Path(self.base_dir).expanduser().resolve()
        if self.examples_dir is None:
            self.examples_dir = package_root() / "examples"
        self.allow_paths = [Path(path).expanduser().resolve() for path in self.allow_paths]
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"binding {self.host} (not loopback) needs an access token; pass --token or let the server generate one"
            )

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def read_roots(self) -> tuple[Path, ...]:
        """Folders a submitted config may read from, besides its job's folder."""
        return (self.data_dir, Path(self.examples_dir), *self.allow_paths)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "frametuner.sqlite3"
