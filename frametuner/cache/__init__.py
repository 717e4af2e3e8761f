"""Encode once, train many times: text-embedding and latent caches on disk.

Contract with ``training/`` (the trainer reads only this, never an encoder):

- per sample, a safetensors file keyed by the sample's ``pixel_identity()`` + encoder
  identity + dtype, holding ``latents`` ``[C, T_lat, h, w]`` (the family's latent geometry) normalised with the VAE's
  ``(z - mean) / std``, and for image-to-video samples with an explicit conditioning
  image ``cond_latent`` ``[C, 1, h, w]`` (otherwise latent frame 0 is the condition);
- per unique caption, a safetensors file with only the valid tokens ``text`` ``[n, C]``
  (n = real token count) in the training dtype;
- a batch (collate) is ``latents [B, C, T, h, w]``, ``text [B, L, C]`` zero-padded,
  ``text_mask [B, L]`` int64 (1 = real token), ``num_cond_latents`` (0 or 1; batches never
  mix image-to-video and text-to-video samples), ``captions`` (list of str), and where a
  sample has an explicit ``cond_latent``, ``image_latents`` ``[B, C, 1, h, w]`` (the image,
  else the clip's frame 0): the trainer puts it in frame 0 of the samples it trains as
  image-to-video (the conditioning mix, docs/conditioning.md); ``latents`` stay the clips'.
- where the family's model trains with more per-sample inputs (``ModelFamily.training_conditioning``,
  e.g. an image-to-video model's condition latents and image features), one more file per
  sample under ``<cache_dir>/conditioning/`` (:class:`.entries.ConditioningCache`, keyed like the
  latents plus the family's encoder identity), stacked into ``batch["conditioning_inputs"]``
  ``{name: [B, ...]}``; the trainer hands them to the family as ``TrainingInputs.conditioning``.

Layout: ``<cache_dir>/text/<key>.safetensors`` and
``<cache_dir>/latents/<bucket>/<key>.safetensors`` (:mod:`.entries`); writing, validation
and crash safety in :mod:`.store`; filling the caches in :mod:`.build`
(:func:`cache_samples`); reading batches in :mod:`.dataset`; the CLI entry in :mod:`.run`.
"""

from .build import CacheReport, cache_latents, cache_samples, cache_texts, open_caches
from .dataset import CacheEntryUnavailable, CachedDataset, collate_cached
from .entries import LatentCache, TextCache
from .store import CorruptCacheEntry

__all__ = [
    "CacheEntryUnavailable",
    "CacheReport",
    "CachedDataset",
    "CorruptCacheEntry",
    "LatentCache",
    "TextCache",
    "cache_latents",
    "cache_samples",
    "cache_texts",
    "collate_cached",
    "open_caches",
]
