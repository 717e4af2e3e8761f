"""Text and latent caches with the tiny encoders: reuse, invalidation, corruption, crash safety, batches."""

from __future__ import annotations

import gc
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from frametuner.cache import CachedDataset, cache_samples, collate_cached, open_caches
from frametuner.cache.dataset import CacheEntryUnavailable
from frametuner.data import Bucket
from frametuner.models.longcat_video import clean_prompt
from frametuner.models.registry import load_spec

from ..conftest import assert_close, media_file
from .helpers import SyntheticPixels, make_sample, touch, write_sources

CAPTIONS = ["a red fox running through snow", "a cat on a table", "a red fox running through snow"]
PROMPTS = ["blurry, low quality"]


class CountingSpec:
    """The real spec, counting encoder loads (a complete cache must load none)."""

    def __init__(self):
        self.spec = load_spec("longcat_video")
        self.loads: list[str] = []

    def __getattr__(self, name):
        return getattr(self.spec, name)

    def load_text_encoder(self, *args, **kwargs):
        self.loads.append("text")
        return self.spec.load_text_encoder(*args, **kwargs)

    def load_vae(self, *args, **kwargs):
        self.loads.append("vae")
        return self.spec.load_vae(*args, **kwargs)


@pytest.fixture
def setup(tmp_path):
    spec = CountingSpec()
    root = spec.checkpoint_root("tiny", None)
    pixels = SyntheticPixels()
    cache_dir = tmp_path / "cache"

    def run(samples, **overrides):
        options = dict(
            spec=spec, model_root=root, cache_dir=cache_dir, load_pixels=pixels, load_conditioning_image=pixels.image,
            prompts=PROMPTS, text_dtype=torch.float32, device="cpu", progress=False,
        )
        return cache_samples(samples, **{**options, **overrides})

    class Setup:
        pass

    s = Setup()
    s.spec, s.root, s.pixels, s.cache_dir, s.run, s.tmp = spec, root, pixels, cache_dir, run, tmp_path
    s.sources = write_sources(tmp_path / "media", 3)
    s.samples = lambda: [make_sample(path, caption) for path, caption in zip(s.sources, CAPTIONS)]
    return s


def latent_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "latents").rglob("*.safetensors"))


def test_second_run_encodes_nothing_and_loads_no_encoder(setup):
    first = setup.run(setup.samples())
    assert (first.latents_encoded, first.latents_reused) == (3, 0)
    assert (first.text_encoded, first.text_reused) == (4, 0)  # 2 unique captions + negative prompt + ""
    assert setup.spec.loads == ["text", "vae"] and len(latent_files(setup.cache_dir)) == 3

    setup.spec.loads.clear()
    calls = setup.pixels.calls
    second = setup.run(setup.samples())
    assert (second.latents_encoded, second.latents_reused, second.text_encoded, second.text_reused) == (0, 3, 0, 4)
    assert setup.spec.loads == [] and setup.pixels.calls == calls


def test_distributed_ranks_share_the_encoding_without_duplicates(setup):
    """Two ranks (run one after the other here) each encode their share; nothing twice."""
    samples = setup.samples() + [make_sample(setup.sources[0], CAPTIONS[0])]  # a duplicate clip
    ranks = [setup.run(samples, rank=rank, world_size=2) for rank in (0, 1)]
    assert [r.latents_encoded for r in ranks] == [2, 1] and all(r.latents_reused == 0 for r in ranks)
    assert [r.text_encoded for r in ranks] == [2, 2] and all(r.text_reused == 0 for r in ranks)
    assert len(latent_files(setup.cache_dir)) == 3
    whole = setup.run(samples)
    assert (whole.latents_encoded, whole.latents_reused, whole.text_encoded, whole.text_reused) == (0, 3, 0, 4)


def test_touching_one_file_or_changing_one_setting_reencodes_exactly_that_one(setup):
    setup.run(setup.samples())
    touch(setup.sources[1])
    report = setup.run(setup.samples())
    assert (report.latents_encoded, report.latents_reused, report.text_encoded) == (1, 2, 0)

    samples = setup.samples()
    samples[2] = make_sample(setup.sources[2], CAPTIONS[2], crop_top=4)  # another crop of the same file
    report = setup.run(samples)
    assert (report.latents_encoded, report.latents_reused) == (1, 2)

    report = setup.run(samples, vae_dtype=torch.bfloat16)  # another encoder setting: everything again
    assert (report.latents_encoded, report.latents_reused, report.text_encoded) == (3, 0, 0)


def test_corrupt_files_are_reported_deleted_and_reencoded(setup, caplog):
    samples = setup.samples()
    setup.run(samples)
    text_cache, latent_cache = open_caches(
        setup.spec, setup.root, setup.cache_dir, text_dtype=torch.float32, text_encoder_dtype=torch.float32, vae_dtype=torch.float32
    )
    latent_path, text_path = latent_cache.path(samples[0]), text_cache.path(CAPTIONS[1])
    latents_before, text_before = latent_cache.load(samples[0])["latents"].clone(), text_cache.load(CAPTIONS[1]).clone()  # loads are memory-mapped

    latent_path.write_bytes(latent_path.read_bytes()[:-100])  # truncated
    text_path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")  # garbage
    with caplog.at_level(logging.WARNING):
        report = setup.run(samples)
    assert (report.latents_encoded, report.text_encoded) == (1, 1)
    assert sorted(report.repaired) == sorted([latent_path, text_path])
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(latent_path) in warned and str(text_path) in warned and "corrupt" in warned
    assert torch.equal(latent_cache.load(samples[0])["latents"], latents_before)
    assert torch.equal(text_cache.load(CAPTIONS[1]), text_before)

    # A file with the right name but the wrong shape (e.g. written by a buggy tool) is caught too.
    from safetensors.torch import save_file

    save_file({"latents": torch.zeros(16, 1, 1, 1)}, str(latent_path))
    assert setup.run(samples).repaired == [latent_path]


def test_text_cache_bytes_are_proportional_to_token_counts(setup):
    captions = ["a cat", "a red fox running through snow " * 3, "horse " * 40, ""]
    samples = [make_sample(setup.sources[0], caption) for caption in captions]
    setup.run(samples, prompts=[])
    text_cache, _ = open_caches(
        setup.spec, setup.root, setup.cache_dir, text_dtype=torch.float32, text_encoder_dtype=torch.float32, vae_dtype=torch.float32
    )
    tokenizer = setup.spec.load_text_encoder(setup.root).tokenizer
    channels, total = 64, 0
    for caption in captions:
        path = text_cache.path(caption)
        data = path.read_bytes()
        header = struct.unpack("<Q", data[:8])[0]
        tokens = len(tokenizer(clean_prompt(caption))["input_ids"])
        assert len(data) - 8 - header == tokens * channels * 4 + 8  # valid rows (float32) + the int64 length
        assert header < 1024
        total += len(data)
    padded = len(captions) * 512 * channels * 4
    assert total < padded / 10, (total, padded)


def test_dataset_batches_follow_the_contract(setup):
    image = setup.tmp / "media" / "still.png"
    image.write_bytes(b"not decoded by the synthetic loader")
    i2v = [make_sample(setup.sources[0], "a cat", is_i2v=True, image=image), make_sample(setup.sources[1], "", is_i2v=True)]
    t2v = setup.samples()
    setup.run(i2v + t2v)
    text_cache, latent_cache = open_caches(
        setup.spec, setup.root, setup.cache_dir, text_dtype=torch.float32, text_encoder_dtype=torch.float32, vae_dtype=torch.float32
    )
    dataset = CachedDataset(i2v + t2v, text_cache=text_cache, latent_cache=latent_cache, pad_to=512)
    assert [dataset.group_of(i) for i in range(len(dataset))] == [("16x32@5", True)] * 2 + [("16x32@5", False)] * 3

    encoder, vae = setup.spec.load_text_encoder(setup.root), setup.spec.load_vae(setup.root)
    batch = dataset.collate([dataset[2], dataset[3]])
    assert batch["latents"].shape == (2, 16, 2, 2, 4) and batch["num_cond_latents"] == 0
    assert batch["captions"] == CAPTIONS[:2]
    live_text, live_mask = encoder.encode(CAPTIONS[:2])
    assert torch.equal(batch["text_mask"], live_mask) and batch["text"].shape == (2, 512, 64)
    assert_close(batch["text"], live_text, atol=1e-6, rtol=0)  # zero-padded exactly like a live encoding
    assert torch.equal(batch["latents"][0], vae.encode(setup.pixels(t2v[0])))

    batch = collate_cached([dataset[0], dataset[1]])
    assert batch["num_cond_latents"] == 1
    # The clips' own latents stay (t2v and continuation samples of an i2v dataset train on them);
    # the explicit image comes beside them, for the samples the trainer trains as i2v.
    assert torch.equal(batch["image_latents"][0], vae.encode(setup.pixels.image(i2v[0]).unsqueeze(0)))
    assert torch.equal(batch["latents"][0], vae.encode(setup.pixels(i2v[0])))
    assert torch.equal(batch["latents"][1], vae.encode(setup.pixels(i2v[1])))
    assert torch.equal(batch["image_latents"][1], batch["latents"][1, :, :1])  # no image: the clip's own frame 0

    with pytest.raises(ValueError, match="mixes"):
        dataset.collate([dataset[0], dataset[2]])
    latent_cache.path(t2v[0]).unlink()
    with pytest.raises(CacheEntryUnavailable, match="frametuner cache"):
        dataset[2]


KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    sys.path.insert(0, {repo!r})
    import frametuner.cache.store as store
    from frametuner.cache import cache_samples
    from frametuner.models.registry import load_spec
    from tests.cache.helpers import SyntheticPixels, make_sample

    real_save, latent_writes = store.save_file, []

    def save_then_hang_on_third_latent(tensors, filename, metadata=None):
        if "latents" in filename:
            latent_writes.append(filename)
            if len(latent_writes) == 3:  # half-write the third entry, then wait to be killed
                real_save(tensors, filename, metadata=metadata)
                Path(filename).write_bytes(Path(filename).read_bytes()[: Path(filename).stat().st_size // 2])
                Path({flag!r}).touch()
                time.sleep(600)
        return real_save(tensors, filename, metadata=metadata)

    store.save_file = save_then_hang_on_third_latent
    samples = [make_sample(Path(p), "caption " + str(i)) for i, p in enumerate({sources!r})]
    cache_samples(samples, spec=load_spec("longcat_video"), model_root={root!r}, cache_dir={cache_dir!r},
                  load_pixels=SyntheticPixels(), text_dtype=torch.float32, device="cpu", progress=False)
    """
)


def test_killed_run_leaves_no_partial_entries_and_rerun_completes(setup):
    sources = write_sources(setup.tmp / "four", 4)
    flag = setup.tmp / "hanging"
    script = KILLED_CHILD.format(
        repo=str(Path(__file__).resolve().parents[2]), flag=str(flag), sources=[str(p) for p in sources],
        root=str(setup.root), cache_dir=str(setup.cache_dir),
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 180
        while not flag.exists():
            assert child.poll() is None, f"the caching child exited early ({child.returncode})"
            assert time.monotonic() < deadline, "the caching child never reached its third latent"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()

    partial = list((setup.cache_dir / "latents").rglob(".*.tmp"))
    assert len(partial) == 1 and len(latent_files(setup.cache_dir)) == 2  # the half-written one never got its name
    samples = [make_sample(p, f"caption {i}") for i, p in enumerate(sources)]
    report = setup.run(samples, prompts=[])
    assert (report.latents_encoded, report.latents_reused, report.repaired) == (2, 2, [])
    assert (report.text_encoded, report.text_reused) == (0, 5)  # the text pass had finished before the kill
    assert list(setup.cache_dir.rglob("*.tmp")) == [] and len(latent_files(setup.cache_dir)) == 4


def test_motorcycle_clip_is_cached_with_the_tiny_vae(setup):
    """The 3 s sample clip, decoded with PyAV (9 frames at 64x112), through the whole caching path."""
    path = media_file("motorcycle.mp4")
    import av

    bucket = Bucket(height=64, width=112, frames=9)
    decoded = []

    def decode(sample):
        frames = []
        with av.open(str(sample.source.path)) as container:
            for frame in container.decode(video=0):
                frames.append(torch.from_numpy(frame.to_ndarray(width=bucket.width, height=bucket.height, format="rgb24")))
                if len(frames) == bucket.frames:
                    break
        decoded.append(torch.stack(frames))
        return decoded[-1]

    sample = make_sample(path, "a motorcycle on a road", bucket=bucket)
    report = setup.run([sample], load_pixels=decode)
    assert (report.latents_encoded, report.failed) == (1, [])
    _, latent_cache = open_caches(
        setup.spec, setup.root, setup.cache_dir, text_dtype=torch.float32, text_encoder_dtype=torch.float32, vae_dtype=torch.float32
    )
    latents = latent_cache.load(sample)["latents"]
    assert latents.shape == (16, 3, 8, 14) and decoded[0].float().std() > 10  # a real picture, not a blank frame
    assert torch.equal(latents, setup.spec.load_vae(setup.root).encode(decoded[0]))
    assert setup.run([sample], load_pixels=decode).latents_reused == 1 and len(decoded) == 1


def test_unloadable_clip_is_reported_and_the_rest_cached(setup):
    samples = setup.samples()

    def flaky(sample):
        if sample.source.path == setup.sources[1]:
            raise OSError("moov atom not found")
        return setup.pixels(sample)

    report = setup.run(samples, load_pixels=flaky)
    assert report.latents_encoded == 2 and report.failed == [(str(setup.sources[1]), "moov atom not found")]
    wrong_size = setup.run(samples, load_pixels=lambda s: torch.zeros(5, 16, 16, 3, dtype=torch.uint8))
    assert "expected uint8 [5, 16, 32, 3]" in wrong_size.failed[0][1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_caching_on_gpu_matches_cpu_and_gives_the_memory_back(setup):
    samples = setup.samples()
    report = setup.run(samples, device="cuda", cache_dir=setup.tmp / "gpu")
    assert (report.latents_encoded, report.text_encoded) == (3, 4)
    gc.collect()
    assert [tuple(o.shape) for o in gc.get_objects() if torch.is_tensor(o) and o.is_cuda] == []  # encoders and activations freed
    setup.run(samples, device="cpu", cache_dir=setup.tmp / "cpu")
    caches = {
        where: open_caches(setup.spec, setup.root, setup.tmp / where, text_dtype=torch.float32, text_encoder_dtype=torch.float32, vae_dtype=torch.float32)
        for where in ("gpu", "cpu")
    }
    for sample in samples:
        gpu, cpu = (caches[where][1].load(sample)["latents"] for where in ("gpu", "cpu"))
        assert_close(gpu, cpu, atol=1e-2, rtol=1e-2)  # TF32 convolutions on the GPU
        gpu, cpu = (caches[where][0].load(sample.caption) for where in ("gpu", "cpu"))
        assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
