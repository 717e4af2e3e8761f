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
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():
            raise
        # another process (a rank of the same run) won the race: its copy is complete
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ensure_tiny_checkpoint(root: str | Path | None = None) -> Path:
    """Create (once) and return the tiny checkpoint folder in the upstream layout."""
    root = Path(root) if root is not None else default_tiny_root()
    # Module construction draws from the global RNG: writing the checkpoint on a first run
    # must not change what a seeded run draws next (LoRA initialisation, noise).
    with torch.random.fork_rng(devices=[]):
        _write_component(root, "dit", lambda folder: build_tiny_transformer().save_pretrained(folder))
        for name, writer in TINY_COMPONENT_WRITERS.items():
            _write_component(root, name, writer)
    return root


# ---------------------------------------------------------------------- encoders and scheduler
TINY_TEXT_ENCODER_CONFIG = dict(
    d_model=TINY_DIT_CONFIG["caption_channels"],  # the DiT's caption_channels
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

# Same strides as the Wan 2.1 VAE (4x8x8, z_dim 16, the default latents_mean/std); only
# the width is cut (base_dim 96 -> 4) so a clip encodes in well under a second on a CPU.
TINY_VAE_CONFIG = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])

SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=12.0, use_dynamic_shifting=False)

# Whole-word pieces for the tiny tokenizer, so captions take a realistic number of tokens;
# anything else falls back to characters, then to UTF-8 bytes (no text is ever <unk>).
_TINY_WORDS = (
    "a an the of and or in on at to from with by for into over under through near behind while is are was "
    "it its this that his her their one two three man woman person people child girl boy dog cat horse bird "
    "car motorcycle bike road street city forest tree trees snow water river sea beach sky sun cloud clouds "
    "mountain field grass house room table light night day morning red blue green yellow white black orange "
    "small large big little old young slowly quickly running walking riding driving flying sitting standing "
    "looking playing smiling moving camera shot close up view wide scene video background foreground fox "
    "fast slow bright dark cinematic"
).split()


def build_tiny_tokenizer():
    """A umT5-style tokenizer (Unigram, Metaspace, ``</s>`` appended, pad 0 / eos 1 / unk 2) built offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    SPACE = "\u2581"  # SentencePiece's word-boundary mark, as in the umT5 vocabulary

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"<0x{byte:02X}>", -20.0) for byte in range(256)]  # byte fallback: every string encodes
    vocab += [(SPACE, -3.0)]
    printable = [chr(code) for code in range(33, 127)]
    vocab += [(char, -8.0) for char in printable] + [(SPACE + char, -9.0) for char in printable]
    vocab += [(SPACE + word, -5.0) for word in _TINY_WORDS]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=True))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)])
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512)


def _seeded(seed: int, build):
    """Build under a fixed global seed without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_tiny_text_encoder(vocab_size: int, seed: int = TINY_SEED + 1):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, **TINY_TEXT_ENCODER_CONFIG)
    return _seeded(seed, lambda: UMT5EncoderModel(config))


def build_tiny_vae(seed: int = TINY_SEED + 2):
    from diffusers import AutoencoderKLWan

    return _seeded(seed, lambda: AutoencoderKLWan(**TINY_VAE_CONFIG))


def _write_tokenizer(folder: Path) -> None:
    build_tiny_tokenizer().save_pretrained(folder)


def _write_text_encoder(folder: Path) -> None:
    build_tiny_text_encoder(len(build_tiny_tokenizer())).save_pretrained(folder)


def _write_vae(folder: Path) -> None:
    build_tiny_vae().save_pretrained(folder)


def _write_scheduler(folder: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(folder)


# Other components register their writers here; each is written once, atomically.
TINY_COMPONENT_WRITERS: dict = {
    "tokenizer": _write_tokenizer,
    "text_encoder": _write_text_encoder,
    "vae": _write_vae,
    "scheduler": _write_scheduler,
}
