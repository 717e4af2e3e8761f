"""Training: the accelerate loop, flow matching, LoRA, checkpoints and export."""

from __future__ import annotations


def train(config) -> int:
    """Entry point of ``frametuner train`` (see :mod:`frametuner.training.pipeline`)."""
    from .pipeline import train as run

    return run(config)
