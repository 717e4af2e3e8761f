"""A full disk (or any failing write) while caching stops the run with one line; nothing is dropped.

Fault injection: the Nth write under the cache raises ``OSError(ENOSPC)``. Caching must
stop with a :class:`StorageError` naming the folder, the bytes still needed and free, and
what to do; no clip may be reported as bad ("left out of training"); what was written is
intact, and the same command run again caches exactly the rest.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch

import frametuner.data
from frametuner.cache import cache_samples
from frametuner.cli import main
from frametuner.models.registry import load_spec
from frametuner.storage import StorageError, human_bytes

from ..training.faults import FileOps
from .helpers import BUCKET, SyntheticPixels, make_sample, write_sources

FREE = 12_345_678
CAPTIONS = ["a red fox running through snow", "a cat on a table", "a dog on a beach"]


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


class QuickVAE:
    """Stands in for the tiny VAE (these tests are about the disk, not the encoding): latents of the right shape."""

    def __init__(self, identity, geometry):
        self.identity, self.geometry = identity, geometry

    def to(self, device):
        return self

    def unload(self):
        pass

    def encode(self, pixels):
        frames, height, width, _ = pixels.shape
        return torch.full(self.geometry.latent_shape(frames, height, width), float(pixels.float().mean()))


class QuickSpec:
    def __init__(self, spec):
        self.spec = spec

    def __getattr__(self, name):
        return getattr(self.spec, name)

    def load_vae(self, root, device="cpu", dtype=torch.float32):
        return QuickVAE(self.spec.vae_identity(root, dtype=dtype), self.spec.geometry)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - FREE, FREE))
    spec = QuickSpec(load_spec("longcat_video"))
    root = spec.checkpoint_root("tiny", None)
    pixels = SyntheticPixels()
    sources = write_sources(tmp_path / "media", 3)
    samples = [make_sample(path, caption) for path, caption in zip(sources, CAPTIONS)]
    cache_dir = tmp_path / "cache"

    def run(**overrides):
        options = dict(spec=spec, model_root=root, cache_dir=cache_dir, load_pixels=pixels, text_dtype=torch.float32, device="cpu", progress=False)
        return cache_samples(samples, **{**options, **overrides})

    return SimpleNamespace(run=run, cache_dir=cache_dir, samples=samples, pixels=pixels, geometry=spec.geometry)


def entries(folder):
    return sorted(folder.rglob("*.safetensors"))


def test_a_full_disk_while_caching_latents_stops_with_one_line_and_drops_no_clip(setup):
    latents = setup.cache_dir / "latents"
    with FileOps(latents) as counted:
        setup.run()
    writes = counted.writes
    assert writes >= 3 and len(entries(latents)) == 3
    clip_bytes = math.prod(setup.geometry.latent_shape(BUCKET.frames, BUCKET.height, BUCKET.width)) * 4  # float32
    for fail_at in range(1, writes + 1):
        shutil.rmtree(latents)  # the text cache stays: only the latent pass is run again
        with pytest.raises(StorageError) as caught, FileOps(latents, fail_at=fail_at, error=disk_full()):
            setup.run()
        cached = len(entries(latents))
        left = 3 - cached
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"disk full while caching latents in {latents}: "), message
        assert f"needs about {human_bytes(left * clip_bytes)} more, {human_bytes(FREE)} free" in message, message
        assert f"{left} clips still to cache" in message and "run the same command again" in message, message
        assert not list(setup.cache_dir.rglob("*.tmp")), "a partial entry was left"
        report = setup.run()  # the same command again, with space
        assert (report.latents_encoded, report.latents_reused, report.failed, report.text_encoded) == (left, cached, [], 0)
        assert len(entries(latents)) == 3


def test_a_full_disk_while_caching_text_stops_the_same_way(setup):
    with pytest.raises(StorageError) as caught, FileOps(setup.cache_dir / "text", fail_at=4, error=disk_full()):
        setup.run()
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"disk full while caching text embeddings in {setup.cache_dir / 'text'}: "), message
    assert "captions still to cache" in message and human_bytes(FREE) in message
    cached = len(entries(setup.cache_dir / "text"))
    report = setup.run()
    assert (report.text_reused, report.text_encoded, report.failed) == (cached, 4 - cached, [])


def test_any_failing_cache_write_stops_but_an_unreadable_clip_is_still_only_skipped(setup):
    with pytest.raises(StorageError, match=r"cannot write \(Permission denied: .*\) while caching latents"):
        with FileOps(setup.cache_dir / "latents", fail_at=2, error=PermissionError(errno.EACCES, "Permission denied", "x.safetensors")):
            setup.run()

    def full_while_decoding(sample):  # a decoder writing a scratch file on the same full disk
        raise disk_full()

    with pytest.raises(StorageError, match="disk full while caching latents"):
        setup.run(load_pixels=full_while_decoding)

    def unreadable(sample):
        raise OSError("moov atom not found")  # no errno: the file, not the disk

    report = setup.run(load_pixels=unreadable, cache_dir=setup.cache_dir / "other")
    assert len(report.failed) == 3 and report.latents_encoded == 0


def test_the_cache_command_prints_one_line_and_fails(setup, tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_flavour": "tiny", "output_dir": str(tmp_path / "out")}))
    monkeypatch.setattr(frametuner.data, "scan_datasets", lambda config: SimpleNamespace(all_samples=setup.samples))
    monkeypatch.setattr(frametuner.data, "load_clip", setup.pixels)
    monkeypatch.setattr("frametuner.models.registry.load_spec", lambda family: QuickSpec(load_spec(family)))
    cache_dir = tmp_path / "out" / "cache"
    with FileOps(cache_dir / "latents", fail_at=2, error=disk_full()):
        code = main(["cache", "--config", str(config)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith(f"error: disk full while caching latents in {cache_dir / 'latents'}: "), err
    assert main(["cache", "--config", str(config)]) == 0
    assert len(entries(cache_dir / "latents")) == 3
