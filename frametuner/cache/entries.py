"""The two kinds of cache entry: text embeddings (one per caption) and latents (one per sample).

Each cache object turns a caption or a :class:`~frametuner.data.Sample` into a file path
(a hash of everything that decides the tensor), validates an existing file against what
its key promises, writes atomically and reads back.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.sample import Sample
from ..models.spec import LatentGeometry
from .store import CorruptCacheEntry, atomic_save, cache_key, check_entry, read_entry


class TextCache:
    """``<cache_dir>/text/<key>.safetensors``: ``text`` ``[n, C]`` (valid tokens only) and ``length`` ``[]`` int64.

    Only the n real tokens are stored (a full padded row block of a large encoder is megabytes,
    most captions are < 100 tokens); :func:`pad_text` zero-pads back to ``max_length``, the
    encoder's (the family's) text length.
    """

    def __init__(self, cache_dir: str | Path, *, encoder_identity: str, dtype: torch.dtype, max_length: int):
        self.folder = Path(cache_dir) / "text"
        self.encoder_identity = encoder_identity
        self.dtype = dtype
        self.max_length = max_length

    def path(self, caption: str) -> Path:
        key = cache_key({"caption": caption, "encoder": self.encoder_identity, "dtype": str(self.dtype)})
        return self.folder / f"{key}.safetensors"

    def check(self, caption: str) -> None:
        """Raise :class:`CorruptCacheEntry` unless the entry is intact (``FileNotFoundError`` if absent)."""
        path = self.path(caption)
        if not path.exists():
            raise FileNotFoundError(path)
        shape = check_entry(path, {"text": (None, self.dtype), "length": ((), torch.int64)})["text"]
        if len(shape) != 2 or not 0 < shape[0] <= self.max_length:
            raise CorruptCacheEntry(path, f"text has shape {list(shape)}, expected [tokens (1..{self.max_length}), channels]")

    def save(self, caption: str, embedding: torch.Tensor, mask: torch.Tensor) -> Path:
        """Store the valid rows of one encoded caption (``embedding [L, C]``, ``mask [L]``)."""
        length = int(mask.sum())
        valid = embedding[mask.bool()].to(self.dtype)
        path = self.path(caption)
        atomic_save(
            {"text": valid, "length": torch.tensor(length, dtype=torch.int64)},
            path,
            metadata={"caption": caption, "encoder": self.encoder_identity},
        )
        return path

    def load(self, caption: str) -> torch.Tensor:
        """``[n, C]`` real tokens of ``caption`` in the cache dtype."""
        path = self.path(caption)
        tensors = read_entry(path)
        text = tensors.get("text")
        if text is None or text.ndim != 2 or int(tensors.get("length", -1)) != text.shape[0]:
            raise CorruptCacheEntry(path, "text/length missing or inconsistent")
        return text


class LatentCache:
    """``<cache_dir>/latents/<bucket>/<key>.safetensors``: ``latents`` ``[C, T, h, w]`` (+ ``cond_latent`` ``[C, 1, h, w]``).

    The key is the sample's pixel identity (file fingerprint, frames, crop, bucket), its
    conditioning identity and the VAE identity (weights, dtype, settings): a changed file
    or setting gets a new key and is encoded again; everything else is reused.
    """

    def __init__(self, cache_dir: str | Path, *, vae_identity: str, geometry: LatentGeometry, dtype: torch.dtype = torch.float32):
        self.folder = Path(cache_dir) / "latents"
        self.vae_identity = vae_identity
        self.geometry = geometry
        self.dtype = dtype

    def key_parts(self, sample: Sample) -> dict:
        return {
            "pixels": sample.pixel_identity(),
            "conditioning": sample.conditioning_identity(),
            "vae": self.vae_identity,
            "dtype": str(self.dtype),
        }

    def path(self, sample: Sample) -> Path:
        return self.folder / sample.bucket.key / f"{cache_key(self.key_parts(sample))}.safetensors"

    def expected(self, sample: Sample) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        bucket = sample.bucket
        shape = self.geometry.latent_shape(bucket.frames, bucket.height, bucket.width)
        expected = {"latents": (shape, self.dtype)}
        if has_conditioning_image(sample):
            expected["cond_latent"] = ((shape[0], 1, *shape[2:]), self.dtype)
        return expected

    def check(self, sample: Sample) -> None:
        path = self.path(sample)
        if not path.exists():
            raise FileNotFoundError(path)
        check_entry(path, self.expected(sample))

    def save(self, sample: Sample, latents: torch.Tensor, cond_latent: torch.Tensor | None = None) -> Path:
        tensors = {"latents": latents.to(self.dtype)}
        if cond_latent is not None:
            tensors["cond_latent"] = cond_latent.to(self.dtype)
        path = self.path(sample)
        atomic_save(tensors, path, metadata={"source": str(sample.source.path), "bucket": sample.bucket.key, "vae": self.vae_identity})
        return path

    def load(self, sample: Sample) -> dict[str, torch.Tensor]:
        path = self.path(sample)
        tensors = read_entry(path)
        for name, (shape, _) in self.expected(sample).items():
            if name not in tensors or tuple(tensors[name].shape) != tuple(shape):
                raise CorruptCacheEntry(path, f"{name!r} missing or not of shape {list(shape)}")
        return tensors


class ConditioningCache:
    """``<cache_dir>/conditioning/<bucket>/<key>.safetensors``: the per-sample inputs a family
    trains with beyond latents and text (``ModelFamily.training_conditioning``, e.g. an
    image-to-video model's condition latents and image features), tensors ``names``.

    Keyed like the latents (pixel and conditioning identity) plus the family's identity of
    its conditioning encoders, so a changed encoder or setting is encoded again.
    """

    def __init__(self, cache_dir: str | Path, *, identity: str, names: tuple[str, ...], dtype: torch.dtype = torch.float32):
        self.folder = Path(cache_dir) / "conditioning"
        self.identity = identity
        self.names = tuple(names)
        self.dtype = dtype

    def path(self, sample: Sample) -> Path:
        parts = {"pixels": sample.pixel_identity(), "conditioning": sample.conditioning_identity(), "encoder": self.identity, "dtype": str(self.dtype)}
        return self.folder / sample.bucket.key / f"{cache_key(parts)}.safetensors"

    def check(self, sample: Sample) -> None:
        path = self.path(sample)
        if not path.exists():
            raise FileNotFoundError(path)
        check_entry(path, {name: (None, self.dtype) for name in self.names})

    def save(self, sample: Sample, tensors: dict[str, torch.Tensor]) -> Path:
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise ValueError(f"the conditioning encoder returned no {missing}")
        path = self.path(sample)
        atomic_save(
            {name: tensors[name].to(self.dtype).contiguous() for name in self.names}, path,
            metadata={"source": str(sample.source.path), "bucket": sample.bucket.key, "encoder": self.identity},
        )
        return path

    def load(self, sample: Sample) -> dict[str, torch.Tensor]:
        path = self.path(sample)
        tensors = read_entry(path)
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise CorruptCacheEntry(path, f"{missing} missing")
        return {name: tensors[name] for name in self.names}


def has_conditioning_image(sample: Sample) -> bool:
    """An image-to-video sample conditioned on a separate image (not the clip's own first frame)."""
    return sample.is_i2v and sample.conditioning_image is not None


def pad_text(text: torch.Tensor, pad_to: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = text.shape[0]
    if length > pad_to:
        raise ValueError(f"a cached caption has {length} tokens, more than pad_to={pad_to}")
    padded = text.new_zeros((pad_to, text.shape[1]))
    padded[:length] = text
    mask = torch.zeros(pad_to, dtype=torch.int64)
    mask[:length] = 1
    return padded, mask
