"""The ``tiny`` flavour: a small random LongCat-architecture checkpoint built on this machine.

It is written once into a folder in the upstream layout (``dit/`` ...) so that every
loading path used for the real 54 GB release is the one exercised on a CPU in seconds.
Weights come from a fixed seed, so two machines with the same torch build the same model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_VERSION = "v1"

TINY_DIT_CONFIG = dict(
    in_channels=16,
    out_channels=16,
    hidden_size=128,
    depth=2,
    num_heads=2,
    caption_channels=64,
    mlp_ratio=4,
    adaln_tembed_dim=64,
    frequency_embedding_size=32,
    patch_size=[1, 2, 2],
    text_tokens_zero_pad=True,
)

FULL_DIT_CONFIG = dict(
    in_channels=16,
    out_channels=16,
    hidden_size=4096,
    depth=48,
    num_heads=32,
    caption_channels=4096,
    mlp_ratio=4,
    adaln_tembed_dim=512,
    frequency_embedding_size=256,
    patch_size=[1, 2, 2],
    text_tokens_zero_pad=True,
)

TINY_SEED = 20251124


def default_tiny_root() -> Path:
    base = os.environ.get("FRAMETUNER_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "frametuner")
    return Path(base) / f"tiny-longcat-video-{TINY_VERSION}"


def build_tiny_transformer(seed: int = TINY_SEED):
    """A seeded random tiny DiT; the adaLN layers are not zero so the model does something."""
    from .transformer import LongCatVideoTransformer3DModel

    generator = torch.Generator().manual_seed(seed)
    model = LongCatVideoTransformer3DModel(**TINY_DIT_CONFIG)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            elif param.dim() >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    return model


def _write_component(root: Path, name: str, writer) -> None:
    """Write ``root/name`` atomically: a crash never leaves a half-written component."""
    target = root / name
    if target.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        writer(staging)
        os.replace(staging, target)
    except FileExistsError:  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ensure_tiny_checkpoint(root: str | Path | None = None) -> Path:
    """Create (once) and return the tiny checkpoint folder in the upstream layout."""
    root = Path(root) if root is not None else default_tiny_root()
    _write_component(root, "dit", lambda folder: build_tiny_transformer().save_pretrained(folder))
    for name, writer in TINY_COMPONENT_WRITERS.items():
        _write_component(root, name, writer)
    return root


# Other components (text encoder, tokenizer, VAE, scheduler) register their writers here.
TINY_COMPONENT_WRITERS: dict = {}
