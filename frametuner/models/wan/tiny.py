"""The ``tiny`` and ``tiny-i2v`` flavours: small random Wan 2.1 checkpoints built on this machine.

Written once, in the layout of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (``transformer/
text_encoder/ tokenizer/ vae/ scheduler/ model_index.json``; the image-to-video one adds
``image_encoder/ image_processor/``), so ``WanPipeline.from_pretrained`` opens it and every
loading path used for a released checkpoint is the one exercised on a CPU in seconds.

The text encoder, tokenizer and VAE are LongCat's tiny ones, byte for byte (same
builders, same seeds): the two tiny checkpoints ship identical encoder files, as the
released LongCat-Video and Wan 2.1 do (both use umT5-XXL and the Wan 2.1 VAE), so a Wan
run after a LongCat run on the same clips finds every text and latent cached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..longcat_video.tiny import _write_component, build_tiny_text_encoder, build_tiny_tokenizer, build_tiny_vae
from .configs import DIT_CONFIGS, TINY_IMAGE_DIM
from .sampling import SCHEDULER_CONFIG

TINY_VERSION = "v1"
TINY_SEED = 20251206

TINY_CLIP_CONFIG = dict(
    hidden_size=TINY_IMAGE_DIM,
    intermediate_size=64,
    num_hidden_layers=3,  # the pipeline reads hidden_states[-2]: the output of layer 2 of 3
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    projection_dim=TINY_IMAGE_DIM,
)


def default_tiny_root(flavour: str = "tiny") -> Path:
    base = os.environ.get("FRAMETUNER_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "frametuner")
    return Path(base) / f"{flavour}-wan-{TINY_VERSION}"


def build_tiny_transformer(flavour: str = "tiny", seed: int = TINY_SEED, model_class=None):
    """A seeded random tiny DiT (diffusers' default initialisation) of ``model_class``
    (default diffusers' ``WanTransformer3DModel``; frametuner's subclass has the same parameters)."""
    from diffusers import WanTransformer3DModel

    model_class = model_class or WanTransformer3DModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(**DIT_CONFIGS[flavour])
        with torch.no_grad():
            # diffusers zero-initialises nothing here, but make the output head non-trivial
            # and the modulation tables larger so a LoRA's effect is far above float noise.
            for name, param in model.named_parameters():
                if name.endswith("scale_shift_table"):
                    param.mul_(4.0)
    return model


def build_tiny_image_encoder(seed: int = TINY_SEED + 3):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP_CONFIG))


def build_tiny_image_processor():
    from transformers import CLIPImageProcessor

    size = TINY_CLIP_CONFIG["image_size"]
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _write_model_index(folder: Path, i2v: bool) -> None:
    import diffusers

    index = {
        "_class_name": "WanImageToVideoPipeline" if i2v else "WanPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if i2v:
        index["image_encoder"] = ["transformers", "CLIPVisionModel"]
        index["image_processor"] = ["transformers", "CLIPImageProcessor"]
    tmp = folder / ".model_index.json.tmp"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, folder / "model_index.json")


def ensure_tiny_checkpoint(flavour: str = "tiny", root: str | Path | None = None) -> Path:
    """Create (once) and return the tiny checkpoint folder of ``flavour`` (``tiny`` or ``tiny-i2v``)."""
    from diffusers import UniPCMultistepScheduler

    if flavour not in ("tiny", "tiny-i2v"):
        raise ValueError(f"no tiny Wan flavour {flavour!r}; use 'tiny' or 'tiny-i2v'")
    i2v = flavour == "tiny-i2v"
    root = Path(root) if root is not None else default_tiny_root(flavour)
    writers = {
        "transformer": lambda folder: build_tiny_transformer(flavour).save_pretrained(folder),
        "tokenizer": lambda folder: build_tiny_tokenizer().save_pretrained(folder),
        "text_encoder": lambda folder: build_tiny_text_encoder(len(build_tiny_tokenizer())).save_pretrained(folder),
        "vae": lambda folder: build_tiny_vae().save_pretrained(folder),
        "scheduler": lambda folder: UniPCMultistepScheduler(**SCHEDULER_CONFIG).save_pretrained(folder),
    }
    if i2v:
        writers["image_encoder"] = lambda folder: build_tiny_image_encoder().save_pretrained(folder)
        writers["image_processor"] = lambda folder: build_tiny_image_processor().save_pretrained(folder)
    with torch.random.fork_rng(devices=[]):  # a first run must not change what a seeded run draws next
        for name, writer in writers.items():
            _write_component(root, name, writer)
    if not (root / "model_index.json").exists():
        _write_model_index(root, i2v)
    return root
