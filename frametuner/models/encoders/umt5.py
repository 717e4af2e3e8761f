"""umT5 text encoding: the upstream prompt cleaning (LongCat-Video and Wan 2.1 share it), tokenisation and encoder.

The encoder (5.7B parameters for umT5-XXL) is only ever loaded to fill the text cache or
to encode validation prompts; :meth:`TextEncoder.unload` frees it before the DiT is built.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import ftfy
import regex
import torch

from ..components import component_identity, free_accelerator_memory, resolve_component

log = logging.getLogger(__name__)

_WHITESPACE = regex.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """The upstream ``prompt_clean``: fix mojibake/HTML, collapse whitespace.

    Matches the reference exactly (tests/fixtures/longcat_reference/prompt_clean.json), so a
    caption tokenises to the same ids the released model was trained on.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


def _caption_preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class TextEncoder:
    """umT5 encoder + tokenizer: prompts in, ``[B, max_length, C]`` embeddings + int64 mask out.

    Weights stay where they were loaded (``device``) and inputs follow them. The cache
    loads on the CPU, calls :meth:`to` the GPU for its encoding pass only, then
    :meth:`unload`; ``identity`` names what this encoder computes (for cache keys).
    """

    def __init__(self, model, tokenizer, *, max_length: int, identity: str, dtype: torch.dtype):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.identity = identity
        self.dtype = dtype

    @classmethod
    def from_pretrained(
        cls,
        root: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = 512,
        text_encoder_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
    ) -> "TextEncoder":
        from transformers import AutoTokenizer, UMT5EncoderModel

        encoder_folder = resolve_component(root, text_encoder_subfolder)
        tokenizer_folder = resolve_component(root, tokenizer_subfolder)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
        model = UMT5EncoderModel.from_pretrained(encoder_folder, dtype=dtype).eval().requires_grad_(False)
        identity = text_encoder_identity(encoder_folder, tokenizer_folder, dtype=dtype, max_length=max_length)
        return cls(model.to(device), tokenizer, max_length=max_length, identity=identity, dtype=dtype)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "TextEncoder":
        self.model.to(device)
        return self

    def unload(self) -> None:
        """Drop the weights and give their memory back (host and accelerator)."""
        self.model = None
        free_accelerator_memory()

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned, padded to ``max_length``, truncated with a warning naming the caption."""
        cleaned = [clean_prompt(p) for p in prompts]
        # Untruncated lengths, to name the captions that get cut (verbose=False: we warn ourselves).
        lengths = [len(ids) for ids in self.tokenizer(cleaned, add_special_tokens=True, verbose=False)["input_ids"]]
        for text, length in zip(cleaned, lengths):
            if length > self.max_length:
                log.warning(
                    "caption %s is %d tokens; only the first %d are used (the rest is cut)",
                    _caption_preview(text), length, self.max_length,
                )
        tokens = self.tokenizer(
            cleaned,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens["input_ids"], tokens["attention_mask"].to(torch.int64)

    @torch.no_grad()
    def encode(self, prompts: list[str], *, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """``last_hidden_state`` ``[B, max_length, C]`` (on the encoder's device) and mask ``[B, max_length]`` int64.

        Padding rows are set to exactly zero: the DiT zeroes them after its caption
        projection anyway, and zero rows make a live encoding identical to a cached one
        (which stores only the valid tokens and is zero-padded when batched).
        """
        if self.model is None:
            raise RuntimeError("this TextEncoder was unloaded; load it again with spec.load_text_encoder(root)")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("TextEncoder.encode needs at least one prompt (use \"\" for the empty prompt)")
        device = self.device
        embeddings, masks = [], []
        for start in range(0, len(prompts), batch_size):
            ids, mask = self.tokenize(list(prompts[start : start + batch_size]))
            ids, mask = ids.to(device), mask.to(device)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            embeddings.append(hidden * mask.unsqueeze(-1).to(hidden.dtype))
            masks.append(mask)
        return torch.cat(embeddings), torch.cat(masks)


def text_encoder_identity(encoder_folder: str | Path, tokenizer_folder: str | Path, *, dtype: torch.dtype, max_length: int) -> str:
    """What decides an embedding besides the caption: weights, tokenizer, dtype, length, cleaning."""
    return component_identity(
        "umt5",
        [encoder_folder, tokenizer_folder],
        dtype=dtype,
        settings={"max_length": max_length, "clean_prompt": "upstream-v1", "padding_rows": "zero"},
    )
