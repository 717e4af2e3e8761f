"""Fill the caches: encode every caption and every sample that is not cached yet.

Encoders are loaded only when something is missing (a rerun over a complete cache loads
nothing), on the CPU, moved to the accelerator for their pass, and freed before the next
one, so the caching peak is one encoder, never the DiT as well.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..data.sample import Sample
from ..models.family import ModelFamily
from .entries import ConditioningCache, LatentCache, TextCache, has_conditioning_image
from ..storage import DISK_FULL, StorageError, storage_error
from .store import CorruptCacheEntry, discard_corrupt, sweep_temporaries

log = logging.getLogger(__name__)

PixelLoader = Callable[[Sample], torch.Tensor]  # sample -> uint8 [frames, height, width, 3]


@dataclass
class CacheReport:
    """What one caching pass did; ``*_encoded`` + ``*_reused`` = unique entries needed."""

    text_encoded: int = 0
    text_reused: int = 0
    latents_encoded: int = 0
    latents_reused: int = 0
    conditioning_encoded: int = 0  # the family's per-sample training conditioning (image features...)
    conditioning_reused: int = 0
    repaired: list[Path] = field(default_factory=list)  # corrupt files deleted and encoded again
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source file, error) of samples not cached
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"text: {self.text_encoded} encoded, {self.text_reused} reused; latents: {self.latents_encoded} encoded, "
            f"{self.latents_reused} reused; "
            + (f"conditioning: {self.conditioning_encoded} encoded, {self.conditioning_reused} reused; " if self.conditioning_encoded or self.conditioning_reused else "")
            + f"{len(self.repaired)} corrupt re-encoded; {len(self.failed)} failed; {self.seconds:.1f}s"
        )


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _unique(items: Iterable) -> list:
    return list(dict.fromkeys(items))


def _present(check: Callable, item, report: CacheReport) -> bool:
    """True if the entry is intact; a corrupt one is reported, deleted and counted for repair."""
    try:
        check(item)
        return True
    except FileNotFoundError:
        return False
    except CorruptCacheEntry as error:
        discard_corrupt(error)
        report.repaired.append(error.path)
        return False


def _progress(total: int, description: str, unit: str, enabled: bool):
    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, disable=None if enabled else True)


def cache_texts(
    captions: Iterable[str],
    *,
    text_cache: TextCache,
    load_text_encoder: Callable[[], object],
    device: torch.device | str,
    report: CacheReport,
    batch_size: int = 8,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> None:
    """Encode the captions missing from ``text_cache`` (the empty prompt is the caller's to include);
    with ``world_size`` > 1, only every ``world_size``-th unique caption from ``rank`` on."""
    captions = _unique(captions)[rank::world_size]
    missing = [caption for caption in captions if not _present(text_cache.check, caption, report)]
    report.text_reused += len(captions) - len(missing)
    if not missing:
        return
    encoder = load_text_encoder()
    try:
        if encoder.identity != text_cache.encoder_identity:
            raise RuntimeError(f"text encoder identity {encoder.identity} differs from the cache's {text_cache.encoder_identity}")
        encoder.to(device)
        written = 0
        with _progress(len(missing), "text embeddings", "caption", progress) as bar:
            for start in range(0, len(missing), batch_size):
                batch = missing[start : start + batch_size]
                embeddings, masks = encoder.encode(batch)
                for caption, embedding, mask in zip(batch, embeddings.cpu(), masks.cpu()):
                    try:
                        text_cache.save(caption, embedding, mask)
                    except OSError as error:  # the disk, not the caption: stop, keep what is cached
                        left = len(missing) - written
                        raise _stop(error, text_cache.folder, "caching text embeddings", left * embedding.numel() * text_cache.dtype.itemsize, left, "captions") from None
                    report.text_encoded += 1
                    written += 1
                bar.update(len(batch))
    finally:
        encoder.unload()  # frees host and accelerator memory before the next model loads


def _checked_pixels(pixels: torch.Tensor, sample: Sample, expected: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8 or tuple(pixels.shape) != expected:
        got = f"{pixels.dtype} {list(pixels.shape)}" if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"{sample.source.path}: the pixel loader returned {got}, expected uint8 {list(expected)} (bucket {sample.bucket.key})")
    return pixels


def _image_pixels(sample: Sample, load_conditioning_image: PixelLoader) -> torch.Tensor:
    """The sample's conditioning image as checked uint8 ``[1, H, W, 3]`` at its bucket size."""
    image = load_conditioning_image(sample)
    image = image.unsqueeze(0) if image.ndim == 3 else image
    return _checked_pixels(image, sample, (1, sample.bucket.height, sample.bucket.width, 3))


def _encode_clips(
    samples: Sequence[Sample],
    *,
    cache,
    identity: str,
    encoder_name: str,
    load_encoder: Callable[[], object],
    encode: Callable[[object, Sample], tuple],
    needs_image_loader: bool,
    what: str,
    subject: str,
    device: torch.device | str,
    report: CacheReport,
    progress: bool,
    rank: int,
    world_size: int,
    needed_bytes: Callable[[Sequence[Sample]], int] | None = None,
) -> tuple[int, int]:
    """The pass every per-clip cache shares; returns ``(reused, encoded)``.

    Unique clips of this rank's share whose entry is missing (or corrupt: deleted and
    counted for repair) are encoded with the encoder ``load_encoder`` gives (only loaded
    when something is missing; its identity must be the cache's) and saved with
    ``cache.save(sample, *encode(encoder, sample))``. A clip that fails to load or encode
    is reported and skipped; a full disk, or any error writing the cache, stops the pass
    with one :class:`StorageError` line and drops nothing.
    """
    clips = list({cache.path(sample): sample for sample in samples}.values())[rank::world_size]  # identical pixels once
    missing = [sample for sample in clips if not _present(cache.check, sample, report)]
    reused, encoded = len(clips) - len(missing), 0
    if not missing:
        return reused, encoded
    if needs_image_loader and any(has_conditioning_image(s) for s in missing):
        raise ValueError("some image-to-video samples name a conditioning image, but no load_conditioning_image was given")
    encoder = load_encoder()

    def stop(error: OSError, done: int) -> StorageError:
        needed = needed_bytes(missing[done:]) if needed_bytes is not None else None
        return _stop(error, cache.folder, what, needed, len(missing) - done, "clips")

    try:
        if encoder.identity != identity:
            raise RuntimeError(f"{encoder_name} identity {encoder.identity} differs from the cache's {identity}")
        encoder.to(device)
        with _progress(len(missing), what.removeprefix("caching "), "clip", progress) as bar:
            for done, sample in enumerate(missing):
                try:
                    entry = encode(encoder, sample)
                except Exception as error:  # one unreadable clip must not cost the whole run
                    if isinstance(error, OSError) and error.errno in DISK_FULL:  # ...but a full disk is no bad clip
                        raise stop(error, done) from None
                    log.error("could not cache %s%s (%s): %s", subject, sample.source.path, sample.bucket.key, error)
                    report.failed.append((str(sample.source.path), str(error)))
                    bar.update(1)
                    continue
                try:
                    cache.save(sample, *entry)
                except OSError as error:  # writing the cache failed: the disk, not the clip; stop, drop nothing
                    raise stop(error, done) from None
                encoded += 1
                bar.update(1)
    finally:
        encoder.unload()
    return reused, encoded


def cache_latents(
    samples: Sequence[Sample],
    *,
    latent_cache: LatentCache,
    load_vae: Callable[[], object],
    load_pixels: PixelLoader,
    load_conditioning_image: PixelLoader | None,
    device: torch.device | str,
    report: CacheReport,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> None:
    """Encode the samples missing from ``latent_cache``; a sample whose pixels fail to load is reported and skipped.
    With ``world_size`` > 1, only every ``world_size``-th unique clip from ``rank`` on."""

    def encode(vae, sample: Sample) -> tuple:
        bucket = sample.bucket
        pixels = _checked_pixels(load_pixels(sample), sample, (bucket.frames, bucket.height, bucket.width, 3))
        cond_latent = vae.encode(_image_pixels(sample, load_conditioning_image)).cpu() if has_conditioning_image(sample) else None
        return vae.encode(pixels).cpu(), cond_latent

    reused, encoded = _encode_clips(
        samples, cache=latent_cache, identity=latent_cache.vae_identity, encoder_name="VAE", load_encoder=load_vae, encode=encode,
        needs_image_loader=load_conditioning_image is None, what="caching latents", subject="", device=device, report=report,
        progress=progress, rank=rank, world_size=world_size, needed_bytes=lambda rest: _latent_bytes(latent_cache, rest),
    )
    report.latents_reused += reused
    report.latents_encoded += encoded


def cache_conditioning(
    samples: Sequence[Sample],
    *,
    conditioning_cache: ConditioningCache,
    load_conditioner: Callable[[], object],
    load_pixels: PixelLoader,
    load_conditioning_image: PixelLoader | None,
    device: torch.device | str,
    report: CacheReport,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> None:
    """Encode the family's per-sample training conditioning (``ModelFamily.training_conditioning``)
    missing from ``conditioning_cache``, from each sample's conditioning image, else its clip's
    first frame. A sample whose pixels fail to load is reported and skipped."""

    def encode(encoder, sample: Sample) -> tuple:
        bucket = sample.bucket
        if has_conditioning_image(sample):
            image = _image_pixels(sample, load_conditioning_image)
        else:  # the clip's own first frame
            image = _checked_pixels(load_pixels(sample), sample, (bucket.frames, bucket.height, bucket.width, 3))[:1]
        return (encoder.encode(image, bucket.frames),)

    reused, encoded = _encode_clips(
        samples, cache=conditioning_cache, identity=conditioning_cache.identity, encoder_name="conditioning encoder",
        load_encoder=load_conditioner, encode=encode, needs_image_loader=load_conditioning_image is None,
        what="caching training conditioning", subject="the conditioning of ", device=device, report=report,
        progress=progress, rank=rank, world_size=world_size,
    )
    report.conditioning_reused += reused
    report.conditioning_encoded += encoded


def _latent_bytes(latent_cache: LatentCache, samples: Sequence[Sample]) -> int:
    """Bytes the latents of ``samples`` take in the cache (tensor data; headers are small)."""
    total = 0
    for sample in samples:
        for shape, dtype in latent_cache.expected(sample).values():
            total += math.prod(shape) * dtype.itemsize
    return total


def _stop(error: OSError, folder: Path, what: str, needed: int, left: int, unit: str) -> StorageError:
    """The one line that stops caching when the cache cannot be written (a full disk)."""
    return storage_error(
        error, folder, needed=needed, what=what,
        fix=f"{left} {unit} still to cache; free space or set cache_dir to a larger disk, then run the same command again "
        "(what is cached is kept and reused; no clip was dropped)",
    )


def cache_samples(
    samples: Sequence[Sample],
    *,
    spec: ModelFamily,
    model_root: str | Path,
    cache_dir: str | Path,
    load_pixels: PixelLoader,
    load_conditioning_image: PixelLoader | None = None,
    prompts: Iterable[str] = (),
    text_dtype: torch.dtype = torch.bfloat16,
    text_encoder_dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    text_batch_size: int = 8,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> CacheReport:
    """Make sure every caption (plus ``prompts`` and the empty prompt) and every sample is cached.

    ``load_pixels(sample)`` returns the sample's uint8 ``[frames, H, W, 3]`` clip at its
    bucket size; ``load_conditioning_image(sample)`` its uint8 ``[H, W, 3]`` image (only
    for image-to-video samples with an explicit image). Returns what was encoded/reused.

    With ``world_size`` > 1 (the ranks of a multi-GPU run, each calling with the same
    samples) this process takes every ``world_size``-th unique caption and unique clip
    from ``rank`` on: the ranks share the work and never encode the same entry twice.
    The report covers this rank's share; wait for all ranks before reading the caches.
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    report = CacheReport()
    sweep_temporaries(cache_dir)
    text_cache, latent_cache = open_caches(
        spec, model_root, cache_dir, text_dtype=text_dtype, text_encoder_dtype=text_encoder_dtype, vae_dtype=vae_dtype
    )
    cache_texts(
        [sample.caption for sample in samples] + list(prompts) + [""],
        text_cache=text_cache,
        load_text_encoder=lambda: spec.load_text_encoder(model_root, device="cpu", dtype=text_encoder_dtype),
        device=device,
        report=report,
        batch_size=text_batch_size,
        progress=progress,
        rank=rank,
        world_size=world_size,
    )
    cache_latents(
        samples,
        latent_cache=latent_cache,
        load_vae=lambda: spec.load_vae(model_root, device="cpu", dtype=vae_dtype),
        load_pixels=load_pixels,
        load_conditioning_image=load_conditioning_image,
        device=device,
        report=report,
        progress=progress,
        rank=rank,
        world_size=world_size,
    )
    conditioning = spec.training_conditioning(model_root, dtype=vae_dtype)
    if conditioning is not None:
        cache_conditioning(
            samples,
            conditioning_cache=ConditioningCache(cache_dir, identity=conditioning.identity, names=conditioning.names),
            load_conditioner=lambda: conditioning.load(device="cpu", dtype=vae_dtype),
            load_pixels=load_pixels,
            load_conditioning_image=load_conditioning_image,
            device=device,
            report=report,
            progress=progress,
            rank=rank,
            world_size=world_size,
        )
    report.seconds = time.perf_counter() - start
    log.info("cache %s: %s", cache_dir, report.summary())
    return report


def open_caches(
    spec: ModelFamily,
    model_root: str | Path,
    cache_dir: str | Path,
    *,
    text_dtype: torch.dtype,
    text_encoder_dtype: torch.dtype,
    vae_dtype: torch.dtype,
) -> tuple[TextCache, LatentCache]:
    """The two caches as keyed for these encoders and dtypes (no weights are loaded)."""
    text_cache = TextCache(
        cache_dir,
        encoder_identity=spec.text_encoder_identity(model_root, dtype=text_encoder_dtype),
        dtype=text_dtype,
        max_length=spec.defaults.text_length,
    )
    latent_cache = LatentCache(cache_dir, vae_identity=spec.vae_identity(model_root, dtype=vae_dtype), geometry=spec.geometry)
    return text_cache, latent_cache


def open_conditioning_cache(spec: ModelFamily, model_root: str | Path, cache_dir: str | Path, *, vae_dtype: torch.dtype) -> ConditioningCache | None:
    """The cache of the family's per-sample training conditioning, or None when its model needs none."""
    conditioning = spec.training_conditioning(model_root, dtype=vae_dtype)
    if conditioning is None:
        return None
    return ConditioningCache(cache_dir, identity=conditioning.identity, names=conditioning.names)
