"""2 GPUs, NCCL, bf16 and the production defaults (compiled blocks, auto checkpointing):
DDP and FSDP2 LoRA runs agree, and FSDP2 full fine-tuning follows one GPU's loss curve."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.gpu

if torch.cuda.device_count() < 2:
    pytest.skip("needs 2 CUDA GPUs", allow_module_level=True)

from ..conftest import assert_close  # noqa: E402
from .distributed_worker import run_ranks  # noqa: E402
from .test_distributed import ADAM, SAMPLES, STEPS, final_weights, one_process  # noqa: E402


def losses(run_dir) -> list[float]:
    lines = (run_dir / "out" / "events.jsonl").read_text().splitlines()
    return [event["loss"] for event in map(json.loads, lines) if event["event"] == "step"]


def test_distributed_gpu_ddp_and_fsdp_agree_in_bf16(tmp_path):
    bf16 = dict(mixed_precision="bf16", max_train_steps=STEPS, **ADAM)
    jobs = [dict(dir=tmp_path / s, config={**bf16, "distributed": {"strategy": s}}) for s in ("ddp", "fsdp")]
    jobs.append(dict(dir=tmp_path / "fsdp-full", config={**bf16, "model_type": "full", "distributed": {"strategy": "fsdp"}}))
    for job in jobs:
        job.update(dir=str(job["dir"]), samples=SAMPLES, batch_size=1)
    from frametuner.models.longcat_video.tiny import ensure_tiny_checkpoint

    ensure_tiny_checkpoint()
    run_ranks(jobs)

    ddp, fsdp = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp")
    assert ddp.keys() == fsdp.keys()
    for name in ddp:  # the same bf16 forwards per rank; only the gradient reduction differs
        assert_close(fsdp[name], ddp[name], atol=1e-5, rtol=1e-3)

    one_process(tmp_path / "one-full", STEPS, mixed_precision="bf16", model_type="full")
    sharded, single = losses(tmp_path / "fsdp-full"), losses(tmp_path / "one-full")
    assert len(sharded) == len(single) == STEPS
    assert all(abs(a - b) <= 2e-2 * abs(b) for a, b in zip(sharded, single)), (sharded, single)
