"""Seeded, resumable batch sampler over buckets.

A batch holds samples of one dataset with the same ``(bucket.key, is_i2v)``: the same
pixel size and frame count (tensors stack) and never image-to-video mixed with
text-to-video (the trainer's conditioning differs). The order of an epoch is a pure
function of ``(seed, epoch)``, so a resumed run that restores ``(epoch, position)``
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict
from typing import Iterator, Mapping, Sequence

from torch.utils.data import Sampler

from .sample import Sample


class BucketBatchSampler(Sampler[list[int]]):
    """Yields lists of indices into ``samples`` (use as a DataLoader ``batch_sampler``).

    Per epoch and dataset, each sample appears ``1 + repeats`` times; the batches of
    each ``(bucket, i2v)`` group are formed from a shuffled list, then a ``probability``
    fraction of the dataset's batches is kept (a fresh subset each epoch), and the
    batches of all datasets are shuffled together.

    Distributed: with ``num_replicas`` > 1 the sampler forms *global* batches of
    ``batch_size * num_replicas`` samples and hands rank ``r`` its own slice, so ranks
    see distinct samples of the same bucket at every step and agree on the step count.
    An incomplete last batch of a group is dropped (``drop_last``) or filled with other
    samples of the same group.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        batch_size: int,
        *,
        seed: int = 0,
        repeats: Mapping[str, int] | None = None,
        probability: Mapping[str, float] | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if not samples:
            raise ValueError("no samples to draw batches from")
        self.samples = list(samples)
        self.batch_size = batch_size
        self.seed = seed
        self.repeats = dict(repeats or {})
        self.probability = dict(probability or {})
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        self._groups: dict[str, dict[tuple[str, bool], list[int]]] = defaultdict(lambda: defaultdict(list))
        for index, sample in enumerate(self.samples):
            self._groups[sample.dataset_id][sample.batch_group].append(index)
        self._digest = self._fingerprint(num_replicas)

    @classmethod
    def from_scan(cls, scan, config, *, num_replicas: int = 1, rank: int = 0, drop_last: bool = False) -> "BucketBatchSampler":
        """A sampler over ``scan.samples`` with the datasets' repeats/probability and the config's batch size and seed."""
        datasets = {scan_.config.id: scan_.config for scan_ in scan.datasets.values()}
        return cls(
            scan.samples,
            config.train_batch_size,
            seed=config.seed if config.seed is not None else 0,
            repeats={k: d.repeats for k, d in datasets.items()},
            probability={k: d.probability for k, d in datasets.items()},
            drop_last=drop_last,
            num_replicas=num_replicas,
            rank=rank,
        )

    # ------------------------------------------------------------------ plan
    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def _fingerprint(self, num_replicas: int) -> str:
        """Identifies the sample list and batching, so a resume on changed data is caught."""
        digest = hashlib.sha256()
        for sample in self.samples:
            digest.update(f"{sample.dataset_id}|{sample.source.path}|{sample.bucket.key}|{sample.is_i2v}\n".encode())
        digest.update(f"{self.batch_size}|{num_replicas}|{self.drop_last}|{sorted(self.repeats.items())}|{sorted(self.probability.items())}".encode())
        return digest.hexdigest()[:16]

    def _group_batches(self, indices: list[int], copies: int, rng: random.Random) -> list[list[int]]:
        pool = indices * copies
        if self.shuffle:
            rng.shuffle(pool)
        size = self.global_batch_size
        batches = [pool[i : i + size] for i in range(0, len(pool), size)]
        if batches and len(batches[-1]) < size:
            if self.drop_last:
                batches.pop()
            else:
                last = batches[-1]
                filler = [pool[i % len(pool)] for i in range(size - len(last))]
                batches[-1] = last + filler
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every global batch of ``epoch`` in order (the same on every rank)."""
        rng = random.Random(f"{self.seed}/{epoch}")
        batches: list[list[int]] = []
        for dataset_id in sorted(self._groups):
            copies = 1 + int(self.repeats.get(dataset_id, 0))
            dataset_batches: list[list[int]] = []
            for key in sorted(self._groups[dataset_id]):
                dataset_batches += self._group_batches(self._groups[dataset_id][key], copies, rng)
            keep = self._kept(len(dataset_batches), self.probability.get(dataset_id, 1.0))
            if keep < len(dataset_batches):
                dataset_batches = [dataset_batches[i] for i in sorted(rng.sample(range(len(dataset_batches)), keep))]
            batches += dataset_batches
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    @staticmethod
    def _kept(count: int, probability: float) -> int:
        return count if probability >= 1.0 else min(count, max(1 if count else 0, math.floor(count * probability + 0.5)))

    def __len__(self) -> int:
        """Batches per epoch (per rank; every rank takes the same number of steps)."""
        total = 0
        for dataset_id, groups in self._groups.items():
            copies = 1 + int(self.repeats.get(dataset_id, 0))
            count = 0
            for indices in groups.values():
                full, rest = divmod(len(indices) * copies, self.global_batch_size)
                count += full + (1 if rest and not self.drop_last else 0)
            total += self._kept(count, self.probability.get(dataset_id, 1.0))
        return total

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        start = self.rank * self.batch_size
        while self.position < len(batches):
            batch = batches[self.position][start : start + self.batch_size]
            self.position += 1
            yield batch
        self.epoch += 1
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (DistributedSampler habit)."""
        self.epoch, self.position = epoch, 0

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Where the sampler is: batches already handed out in the current epoch.

        With DataLoader workers prefetching, the sampler runs ahead of training by the
        prefetched batches; save the count of consumed batches as ``position`` then.
        """
        return {
            "seed": self.seed, "epoch": self.epoch, "position": self.position,
            "fingerprint": self._digest, "num_replicas": self.num_replicas,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue where ``state`` was saved. Saved with another number of ranks (same data,
        same batch size per rank), the position is carried over in samples: the run goes on
        from the same point of the epoch, though the batches of the rest of the epoch differ."""
        saved_replicas = int(state.get("num_replicas", self.num_replicas))
        if state.get("fingerprint") != self._fingerprint(saved_replicas):
            raise ValueError(
                "the sampler state was saved for different data or batching (samples, buckets, batch size, repeats); "
                "the saved order cannot be restored: start a new epoch with set_epoch() or restore the original data"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        # Rounded down: a few samples are seen twice rather than skipped.
        self.position = int(state["position"]) * saved_replicas // self.num_replicas
