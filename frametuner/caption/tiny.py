"""The ``tiny`` captioner: a random Qwen2.5-VL of 173,000 weights, built here.

Same transformers class (``Qwen2_5_VLForConditionalGeneration``), the same chat template
and the same files as a Hub checkpoint (config, weights, tokenizer, chat template,
preprocessor and video-processor configs, generation config), so ``--model tiny`` runs
the exact code path of ``--model Qwen/Qwen2.5-VL-7B-Instruct`` on a CPU in seconds, with
no download. Written once (atomically) into ``$FRAMETUNER_HOME`` like the tiny video models.

Its words are random: a caption reads like shuffled caption vocabulary. Generation is
bounded by the folder's ``generation_config.json`` (``max_new_tokens``), and the special
tokens other than end-of-text are suppressed there, so a caption is never empty by
construction of the tiny model (the captioner itself still reports an empty answer as a
failure, for real models).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_VERSION = "v1"
TINY_SEED = 20261206

# The chat template of Qwen2-VL / Qwen2.5-VL (the Hub's chat_template.json): a default
# system turn, then each content item of a user turn as a vision placeholder or text.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# Whole words, so random weights write shuffled caption vocabulary rather than bytes.
_WORDS = (
    "a an the of and in on at with from into through over under while as is are "
    "man woman person child dog cat horse bird car boat train city street forest beach river "
    "mountain field room kitchen window door table light sky clouds sun rain snow water "
    "walks runs rides drives flies sits stands turns looks smiles waves moves falls jumps "
    "slowly quickly gently bright dark warm cold red blue green golden white black "
    "camera pans tilts tracks zooms dolly static handheld aerial close-up wide medium shot "
    "scene background foreground cinematic realistic documentary soft natural lighting style "
    "morning evening night daylight shallow depth field film grain video image . ,"
).split()

TINY_TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},  # head_dim 16
)
TINY_VISION_CONFIG = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,  # the text hidden size
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    tokens_per_second=2,
    window_size=112,
    fullatt_block_indexes=[1],
)
# Small frames (at most 64 merged tokens per frame pair) and 8 frames per clip: fast on a CPU.
TINY_VIDEO_PROCESSOR = {"size": {"shortest_edge": 4 * 28 * 28, "longest_edge": 64 * 28 * 28}, "num_frames": 8}
TINY_IMAGE_PROCESSOR = {"min_pixels": 4 * 28 * 28, "max_pixels": 64 * 28 * 28}
TINY_MAX_NEW_TOKENS = 8


def default_tiny_captioner_root() -> Path:
    base = os.environ.get("FRAMETUNER_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "frametuner")
    return Path(base) / f"tiny-qwen2.5-vl-captioner-{TINY_VERSION}"


def build_tiny_tokenizer():
    """A word-level tokenizer with Qwen2.5-VL's special tokens and chat template, built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0}
    for word in _WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]), model_max_length=32768,
    )
    fast.add_special_tokens({"pad_token": "<|endoftext|>"})
    fast.chat_template = QWEN_VL_CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, seed: int = TINY_SEED):
    """A seeded random ``Qwen2_5_VLForConditionalGeneration`` whose token ids match ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(TINY_TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=TINY_VISION_CONFIG,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model.eval()


def _write(folder: Path) -> None:
    from transformers import GenerationConfig

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t != "<|im_end|>"]
    GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=TINY_MAX_NEW_TOKENS, do_sample=False, repetition_penalty=1.5,
        suppress_tokens=special + [tokenizer.unk_token_id],
    ).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN_VL_CHAT_TEMPLATE, encoding="utf-8")
    preprocessor = {
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        **TINY_IMAGE_PROCESSOR,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
             **TINY_VIDEO_PROCESSOR}
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2), encoding="utf-8")


def ensure_tiny_captioner(root: str | Path | None = None) -> Path:
    """Create (once, atomically) and return the tiny captioner's folder."""
    root = Path(root) if root is not None else default_tiny_captioner_root()
    if (root / "config.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        _write(staging)
        os.replace(staging, root)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (root / "config.json").is_file():
            raise  # not another process winning the race: a real error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root
