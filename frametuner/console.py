"""Rich consoles for what frametuner prints: whole lines in logs and pipes.

Rich wraps to the terminal's width, and to 80 columns when the stream is a file or a pipe,
which cut the LoRA and checkpoint paths of summary tables in a training log. A console
for a stream that is not a terminal gets a width no table of ours reaches, so tables keep
their natural width and every path stays on one line (tables are not expanded, so nothing
is padded to that width).
"""

from __future__ import annotations

import sys

UNBOUNDED_WIDTH = 10_000


def console(stderr: bool = True, file=None):
    """A ``rich.console.Console`` on stderr (or stdout, or ``file``) that never cuts a line when
    the stream is not a terminal."""
    from rich.console import Console

    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    terminal = Console(file=stream)
    if terminal.is_terminal:
        return terminal
    return Console(file=stream, width=UNBOUNDED_WIDTH, soft_wrap=True)
