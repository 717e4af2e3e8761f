"""Read cached samples back as training batches (the contract in ``frametuner/cache/__init__.py``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from ..data.sample import Sample
from .entries import ConditioningCache, LatentCache, TextCache, pad_text
from .store import CorruptCacheEntry


class CacheEntryUnavailable(RuntimeError):
    """Training asked for an entry that is missing or unreadable; caching again repairs it."""


class CachedDataset(Dataset):
    """One item per sample: its latents and the real tokens of its caption, read from the caches.

    Batches must not mix buckets or image-to-video with text-to-video; :meth:`group_of`
    gives the grouping key for a batch sampler, and :meth:`collate` enforces it.
    """

    def __init__(
        self, samples: Sequence[Sample], *, text_cache: TextCache, latent_cache: LatentCache, pad_to: int | None | str = "max_length",
        conditioning_cache: ConditioningCache | None = None,
    ):
        """``pad_to``: ``"max_length"`` pads text to the encoder's length (the text cache's
        ``max_length``, the family's), None to the batch's longest caption, an int to that.
        ``conditioning_cache``: the family's per-sample training conditioning (when its model
        needs some), handed to the trainer as ``batch["conditioning_inputs"]``."""
        self.samples = list(samples)
        self.text_cache = text_cache
        self.latent_cache = latent_cache
        self.conditioning_cache = conditioning_cache
        self.pad_to = text_cache.max_length if pad_to == "max_length" else pad_to

    def __len__(self) -> int:
        return len(self.samples)

    def group_of(self, index: int) -> tuple[str, bool]:
        return self.samples[index].batch_group

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            entry = self.latent_cache.load(sample)
            text = self.text_cache.load(sample.caption)
            extras = self.conditioning_cache.load(sample) if self.conditioning_cache is not None else None
        except (FileNotFoundError, CorruptCacheEntry) as error:
            raise CacheEntryUnavailable(
                f"cache entry for {sample.source.path} ({sample.bucket.key}) is missing or corrupt ({error}); "
                "run `frametuner cache --config ...` to encode it again"
            ) from error
        return {
            "latents": entry["latents"],
            "cond_latent": entry.get("cond_latent"),
            "text": text,
            "caption": sample.caption,
            "group": sample.batch_group,
            **({"conditioning_inputs": extras} if extras is not None else {}),
        }

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_cached(items, pad_to=self.pad_to)


def collate_cached(items: list[dict[str, Any]], *, pad_to: int | None = None) -> dict[str, Any]:
    """Stack items of one group into a batch; text zero-padded to ``pad_to`` with an int64 mask.

    ``pad_to=None`` pads only to the longest caption of the batch: the family's denoiser
    restores its full padded length exactly.

    ``latents`` are always the clips' own. Where an item has an explicit conditioning image,
    the batch also holds ``image_latents`` ``[B, C, 1, h, w]`` (the image; for the other
    rows their clip's frame 0): the trainer writes it into frame 0 of the samples it trains
    as image-to-video, and leaves the clip's own frame 0 to the others (t2v, continuation).
    """
    groups = {item["group"] for item in items}
    if len(groups) != 1:
        raise ValueError(f"a batch mixes buckets or i2v with t2v: {sorted(groups)}; group batches by dataset.group_of(index)")
    (_, is_i2v), = groups
    latents = torch.stack([item["latents"] for item in items])
    images = None
    if any(item.get("cond_latent") is not None for item in items):
        images = latents[:, :, :1].clone()
        for row, item in enumerate(items):
            if item.get("cond_latent") is not None:
                images[row] = item["cond_latent"]
    length = pad_to if pad_to is not None else max(item["text"].shape[0] for item in items)
    texts, masks = zip(*(pad_text(item["text"], length) for item in items))
    return {
        "latents": latents,
        "text": torch.stack(texts),
        "text_mask": torch.stack(masks),
        "num_cond_latents": 1 if is_i2v else 0,
        "captions": [item["caption"] for item in items],
        **({"image_latents": images} if images is not None else {}),
        **_stacked_conditioning(items),
    }


def _stacked_conditioning(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"conditioning_inputs": {name: [B, ...]}}`` from the items' family conditioning (if any)."""
    extras = [item.get("conditioning_inputs") for item in items]
    if all(extra is None for extra in extras):
        return {}
    if any(extra is None for extra in extras):
        raise ValueError("a batch mixes samples with and without cached training conditioning")
    return {"conditioning_inputs": {name: torch.stack([extra[name] for extra in extras]) for name in extras[0]}}
