"""Wan under FSDP2 (2 CPU ranks over gloo, one shard unit per WanTransformerBlock): the same
LoRA as one process with the doubled batch, through the same distributed code as LongCat."""

from __future__ import annotations

import pytest

from tests.training.test_distributed import ADAM, SAMPLES, assert_same_weights, final_weights, one_process
from tests.training.distributed_worker import run_ranks

pytestmark = pytest.mark.slow

WAN = dict(model_family="wan", model_flavour="tiny")
STEPS = 2


def test_wan_fsdp_lora_equals_one_process_with_the_doubled_batch(tmp_path, tmp_path_factory):
    from frametuner.models.wan.tiny import ensure_tiny_checkpoint

    home = tmp_path_factory.getbasetemp() / "frametuner-home"
    job = dict(dir=str(tmp_path / "fsdp"), config={**WAN, **ADAM, "max_train_steps": STEPS, "distributed": {"strategy": "fsdp"}}, samples=SAMPLES, batch_size=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRAMETUNER_HOME", str(home))  # the ranks inherit it
        ensure_tiny_checkpoint("tiny")
        run_ranks([job])
    sharded = final_weights(tmp_path / "fsdp")
    assert any("blocks.1.attn1.to_q.lora_A" in name for name in sharded)
    assert_same_weights(sharded, one_process(tmp_path / "one", STEPS, **WAN))
