"""LoRA errors: one line each, naming the file, the key and what to do."""

from __future__ import annotations


class LoraError(ValueError):
    """Base class for LoRA problems frametuner reports to the user."""


class LoraFormatError(LoraError):
    """A file that is not a LoRA in a format frametuner reads, or has keys it cannot map."""


class LoraMismatchError(LoraError):
    """A LoRA whose layers or shapes do not fit the model (a LoRA for another architecture)."""
