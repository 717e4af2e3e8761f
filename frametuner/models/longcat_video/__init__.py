"""LongCat-Video (Meituan): 13.6B text/image-to-video DiT, umT5-XXL text, Wan 2.1 VAE.

Attributes load on first use: ``info`` (the registry entry) must import without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LongCatVideoTransformer3DModel": "transformer",
    "TextEncoder": "text",
    "clean_prompt": "text",
    "VideoVAE": "vae",
    "denormalise_latents": "vae",
    "normalise_latents": "vae",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
