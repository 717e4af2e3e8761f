"""The ranks of tests/training/test_distributed.py: N processes (torch.multiprocessing, gloo)
that each run the same list of training jobs on the tiny model with in-memory data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ranks(jobs: list[dict], world_size: int = 2) -> None:
    """Run ``jobs`` one after the other on ``world_size`` spawned ranks; raises if a rank fails.

    ``job``: ``dir`` (the run's folder), ``config`` (overrides of ``tiny_config``),
    ``samples`` (in-memory clips), ``batch_size`` (per rank), optional ``stop_at`` (end
    the run after this step, as a crash right after a checkpoint would).
    """
    ports = [free_port() for _ in jobs]
    mp.start_processes(_rank_main, args=(world_size, ports, jobs), nprocs=world_size, start_method="spawn")


def _rank_main(rank: int, world_size: int, ports: list[int], jobs: list[dict]) -> None:
    from accelerate.state import AcceleratorState, GradientState

    torch.set_num_threads(1)
    for port, job in zip(ports, jobs):
        # What torchrun / accelerate launch set for each rank.
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
        )
        run_job(rank, world_size, job)
        # The trainer's end_training() closed the process group: the next job starts afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        os.environ.pop("ACCELERATE_USE_FSDP", None)


def run_job(rank: int, world_size: int, job: dict) -> None:
    from frametuner.training.trainer import Trainer

    from .helpers import synthetic_data, tiny_config

    config = tiny_config(Path(job["dir"]), **job["config"])
    extra = {}
    if job.get("conditioning"):
        from frametuner.config.conditioning import ConditioningMix

        extra["conditioning"] = ConditioningMix(**job["conditioning"])
    data = synthetic_data(n=job["samples"], batch_size=job["batch_size"], num_replicas=world_size, rank=rank, **extra)
    trainer = Trainer(config, data)
    if "stop_at" in job:
        trainer.max_steps = job["stop_at"]
    trainer.train()
