"""The one error type of the memory tools: a bad or unsupported memory setting."""

from __future__ import annotations


class MemoryOptionError(ValueError):
    """A memory setting that cannot work here; the message names the key and the fix."""
