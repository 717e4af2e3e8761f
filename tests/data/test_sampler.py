"""Batch sampler: groups never mixed, seeded and resumable order, repeats/probability,
distinct shards per rank."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from frametuner.data import Bucket, BucketBatchSampler, CropBox, Sample, SourceInfo


def make_samples(groups: list[tuple[str, tuple[int, int, int], bool, int]]) -> list[Sample]:
    """``(dataset, (h, w, frames), is_i2v, count)`` -> that many samples (no files needed)."""
    samples = []
    for dataset_id, (h, w, f), i2v, count in groups:
        for i in range(count):
            source = SourceInfo(Path(f"/data/{dataset_id}/{h}x{w}x{f}-{i2v}-{i}.mp4"), 1, 1, f, 30.0, h, w)
            crop = CropBox((h, w), 0, 0, (h, w))
            samples.append(Sample(dataset_id, source, f"clip {i}", "video", tuple(range(f)), crop, Bucket(h, w, f), is_i2v=i2v))
    return samples


SAMPLES = make_samples(
    [
        ("a", (64, 96, 17), False, 7),
        ("a", (96, 64, 17), False, 5),
        ("a", (64, 96, 17), True, 4),  # same bucket as the first group, but image-to-video
        ("a", (64, 96, 33), False, 3),
        ("b", (64, 96, 17), False, 6),
    ]
)


def group_of(index: int) -> tuple:
    sample = SAMPLES[index]
    return sample.dataset_id, sample.bucket.key, sample.is_i2v


def test_batches_never_mix_buckets_or_i2v_and_cover_every_sample():
    sampler = BucketBatchSampler(SAMPLES, batch_size=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 2 + 1 + 2  # ceil(group / 3) per group
    assert all(len(batch) == 3 for batch in batches)  # incomplete batches are filled from their own group
    assert all(len({group_of(i) for i in batch}) == 1 for batch in batches)
    assert {i for batch in batches for i in batch} == set(range(len(SAMPLES)))
    dropped = BucketBatchSampler(SAMPLES, batch_size=3, seed=1, drop_last=True)
    assert len(list(dropped)) == len(dropped) == 2 + 1 + 1 + 1 + 2


def test_order_is_seeded_and_changes_per_epoch():
    first, again, other = (BucketBatchSampler(SAMPLES, 2, seed=s) for s in (5, 5, 6))
    assert list(first) == list(again)
    assert list(first) == list(again) == first.epoch_batches(1)  # both moved on to epoch 1 ...
    assert first.epoch_batches(0) != first.epoch_batches(1)  # ... a different order
    assert first.epoch_batches(0) != other.epoch_batches(0)


def test_resume_mid_epoch_continues_the_same_order():
    reference = BucketBatchSampler(SAMPLES, 2, seed=3)
    uninterrupted = list(reference) + list(reference)  # epochs 0 and 1

    interrupted = BucketBatchSampler(SAMPLES, 2, seed=3)
    seen = []
    for batch in interrupted:
        seen.append(batch)
        if len(seen) == 5:
            break
    state = interrupted.state_dict()
    assert (state["epoch"], state["position"]) == (0, 5)

    resumed = BucketBatchSampler(SAMPLES, 2, seed=999)  # the saved seed wins
    resumed.load_state_dict(state)
    assert seen + list(resumed) + list(resumed) == uninterrupted

    changed = BucketBatchSampler(SAMPLES[:-1], 2, seed=3)
    with pytest.raises(ValueError, match="saved for different data or batching"):
        changed.load_state_dict(state)


def test_repeats_and_probability():
    sampler = BucketBatchSampler(SAMPLES, 1, seed=0, repeats={"b": 2}, probability={"a": 0.5})
    epoch0, epoch1 = sampler.epoch_batches(0), sampler.epoch_batches(1)
    counts = Counter(SAMPLES[batch[0]].dataset_id for batch in epoch0)
    assert counts == {"b": 6 * 3, "a": 19 // 2 + 1}  # b seen 1 + 2 times; half of a's 19 batches (rounded)
    per_sample_b = Counter(batch[0] for batch in epoch0 if SAMPLES[batch[0]].dataset_id == "b")
    assert set(per_sample_b.values()) == {3}
    subset = lambda batches: {b[0] for b in batches if SAMPLES[b[0]].dataset_id == "a"}  # noqa: E731
    assert subset(epoch0) != subset(epoch1)  # a fresh subset each epoch
    assert len(sampler) == len(epoch0)


def test_ranks_get_distinct_shards_of_the_same_global_batch():
    samples = make_samples([("a", (64, 96, 17), False, 8), ("a", (96, 64, 17), True, 4)])
    ranks = [BucketBatchSampler(samples, 2, seed=4, num_replicas=2, rank=r) for r in (0, 1)]
    per_rank = [list(sampler) for sampler in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == 3  # every rank takes the same steps
    global_batches = ranks[0].epoch_batches(0)
    for step, (mine, theirs) in enumerate(zip(*per_rank)):
        assert mine + theirs == global_batches[step]
        assert not set(mine) & set(theirs)
        assert len({(samples[i].bucket.key, samples[i].is_i2v) for i in mine + theirs}) == 1
    assert sorted(i for batches in per_rank for batch in batches for i in batch) == list(range(12))


def test_distributed_resume_on_another_number_of_ranks_keeps_the_place_in_the_epoch():
    samples = make_samples([("a", (64, 96, 17), False, 24)])
    two = [BucketBatchSampler(samples, 2, seed=4, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in two:
        for _ in zip(range(3), sampler):  # 3 global batches of 4 = 12 samples seen
            pass
    state = two[0].state_dict()
    assert state == two[1].state_dict() and state["num_replicas"] == 2
    one = BucketBatchSampler(samples, 2, seed=0)
    one.load_state_dict(state)
    assert (one.seed, one.epoch, one.position) == (4, 0, 6)  # 6 batches of 2 = the same 12 samples
    assert len(list(one)) == len(one) - 6
    other_data = BucketBatchSampler(samples[:-1], 2, seed=4)
    with pytest.raises(ValueError, match="saved for different data or batching"):
        other_data.load_state_dict(state)


def test_works_as_a_dataloader_batch_sampler():
    sampler = BucketBatchSampler(SAMPLES, 2, seed=0)
    loader = DataLoader(SAMPLES, batch_sampler=sampler, collate_fn=list)
    for batch in loader:
        assert len({(s.dataset_id, s.bucket.key, s.is_i2v) for s in batch}) == 1
    assert sampler.epoch == 1 and sampler.position == 0
