"""Sampling: the schedule, the denoising loop, and the videos people look at.

``denoise`` is a pure function over a model and latents (the family supplies its
schedule, guidance and step); the pipeline
(``generate``, ``sample_video``), video writing and ``render_validation`` build on them.
Attributes load on first use so that ``frametuner --help`` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "denoise": "denoising",
    "SampleRequest": "pipeline",
    "generate": "pipeline",
    "sample_video": "pipeline",
    "render_validation": "pipeline",
    "VideoSettings": "pipeline",
    "decode_pending_validations": "pipeline",
    "initial_noise": "pipeline",
    "condition_image": "pipeline",
    "VALIDATION_DIR_NAME": "pipeline",
    "write_video": "video",
    "contact_sheet": "video",
    "write_contact_sheet": "video",
    "write_index": "gallery",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
