"""``frametuner cache``: fill the caches for a training config (``train`` should call :func:`run_cache` first)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import ConfigError, resolve_input_path
from ..config.precision import torch_dtype
from .build import CacheReport, cache_samples, open_caches, open_conditioning_cache

log = logging.getLogger(__name__)


def cache_dir_for(config) -> Path:
    return Path(config.cache_dir) if config.cache_dir else Path(config.output_dir) / "cache"


def validation_prompts(config) -> list[str]:
    """Validation prompt(s) and the negative prompt, so validation never needs the text encoder."""
    prompts = [config.validation_prompt] if config.validation_prompt else []
    if config.validation_prompt_file:
        path = resolve_input_path(config, config.validation_prompt_file)
        if not path.is_file():
            raise ConfigError([f"'validation_prompt_file': {path} does not exist; give a text file with one prompt per line"])
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return prompts + [config.validation_negative_prompt]


def cache_settings(config, spec) -> dict:
    """Dtypes that key the caches: embeddings stored in the training dtype, encoders per the spec."""
    encoder_dtype = spec.encoder_dtype(config.mixed_precision)
    return {"text_dtype": torch_dtype(config.mixed_precision), "text_encoder_dtype": encoder_dtype, "vae_dtype": encoder_dtype}


def open_config_caches(config):
    """The (TextCache, LatentCache) pair a training run reads, keyed exactly as :func:`run_cache` wrote them."""
    from ..models.registry import load_spec

    spec = load_spec(config.model_family)
    root = spec.checkpoint_root(config.model_flavour, config.pretrained_model_name_or_path)
    return open_caches(spec, root, cache_dir_for(config), **cache_settings(config, spec))


def open_config_conditioning_cache(config):
    """The cache of the family's per-sample training conditioning for ``config`` (None when its model needs none)."""
    from ..models.registry import load_spec

    spec = load_spec(config.model_family)
    root = spec.checkpoint_root(config.model_flavour, config.pretrained_model_name_or_path)
    return open_conditioning_cache(spec, root, cache_dir_for(config), vae_dtype=cache_settings(config, spec)["vae_dtype"])


def run_cache(config, *, scan=None, progress: bool = True, rank: int = 0, world_size: int = 1, device=None) -> CacheReport:
    """Cache every sample (training and evaluation datasets), caption and validation prompt
    of ``config``; ``scan`` reuses a scan already made (else the datasets are scanned).
    ``rank``/``world_size``: this process's share of a multi-GPU run (see :func:`cache_samples`)."""
    from .. import data
    from ..models.registry import load_spec

    spec = load_spec(config.model_family)
    root = spec.checkpoint_root(config.model_flavour, config.pretrained_model_name_or_path)
    if scan is None:
        scan = data.scan_datasets(config)
    samples = list(scan.all_samples)
    cache_dir = cache_dir_for(config)
    log.info("caching %d samples from %s into %s", len(samples), config.data_backend_config, cache_dir)
    return cache_samples(
        samples,
        spec=spec,
        model_root=root,
        cache_dir=cache_dir,
        load_pixels=data.load_clip,
        load_conditioning_image=data.load_conditioning_image,
        prompts=validation_prompts(config),
        progress=progress,
        rank=rank,
        world_size=world_size,
        device=device,
        **cache_settings(config, spec),
    )
