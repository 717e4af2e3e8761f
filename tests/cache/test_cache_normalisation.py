"""The latents the cache stores are normalised exactly as upstream does it (issue 19 point 10).

The oracle is the reference fixtures' normalisation case, not frametuner's own encoder:
the VAE's posterior is made to return ``norm.input`` (raw Wan 2.1 latents) and the stored
latents must equal ``norm.output`` = ``(x - mean_c) * (1 / std_c)`` computed upstream.
A change of the statistics, of the formula, or of what the cache keeps (a sample instead
of the posterior mode, an unnormalised tensor) fails here.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from frametuner.cache import cache_samples
from frametuner.cache.store import read_entry
from frametuner.data import Bucket
from frametuner.models.registry import load_spec

from ..conftest import assert_close
from .helpers import SyntheticPixels, make_sample, write_sources

BUCKET = Bucket(height=32, width=48, frames=9)  # latents [16, 3, 4, 6], the fixture case's shape


class PosteriorFromFixture:
    """The real tiny VAE, whose encoder posterior returns the fixture's raw latents in turn."""

    def __init__(self, raw: torch.Tensor):
        self.spec = load_spec("longcat_video")
        self.raw = raw
        self.encoded: list[torch.Tensor] = []  # the pixels each raw latent was returned for

    def __getattr__(self, name):
        return getattr(self.spec, name)

    def load_vae(self, *args, **kwargs):
        vae = self.spec.load_vae(*args, **kwargs)

        def encode(video, *rest, **options):
            index = len(self.encoded)
            self.encoded.append(video.detach().clone())
            mode = self.raw[index : index + 1].to(video.device, video.dtype)
            posterior = SimpleNamespace(mode=lambda: mode, sample=lambda *a, **k: mode + torch.randn_like(mode), mean=mode)
            return SimpleNamespace(latent_dist=posterior)

        vae.model.encode = encode
        return vae


def test_cached_latents_match_the_reference_normalisation(tmp_path, cases):
    raw, expected = cases["norm.input"], cases["norm.output"]
    assert tuple(raw.shape[1:]) == (16, 3, 4, 6)
    spec = PosteriorFromFixture(raw)
    pixels = SyntheticPixels()
    samples = [make_sample(path, f"clip {i}", bucket=BUCKET) for i, path in enumerate(write_sources(tmp_path / "media", 2))]
    cache_samples(
        samples, spec=spec, model_root=spec.checkpoint_root("tiny", None), cache_dir=tmp_path / "cache",
        load_pixels=pixels, prompts=[], text_dtype=torch.float32, device="cpu", progress=False,
    )
    assert len(spec.encoded) == 2
    stored = sorted((tmp_path / "cache" / "latents").rglob("*.safetensors"))
    assert len(stored) == 2
    rows = set()
    for path in stored:
        latents = read_entry(path)["latents"]
        assert latents.dtype == torch.float32 and tuple(latents.shape) == (16, 3, 4, 6)
        # Which fixture row this clip got: the one returned for its pixels.
        matches = [i for i in range(2) if torch.allclose(latents, expected[i], atol=1e-6, rtol=0)]
        assert len(matches) == 1, f"{path.name}: stored latents match no row of norm.output"
        assert_close(latents, expected[matches[0]], atol=1e-6, rtol=0)
        rows.add(matches[0])
    assert rows == {0, 1}
    assert not torch.allclose(expected[0], expected[1])
