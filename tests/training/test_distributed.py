"""Multi-GPU training on the CPU: 2 ranks over gloo, DDP and FSDP2, on the tiny model.

The oracle is one process with the doubled batch: the trainer draws its randomness for
the global batch, so 2 ranks x batch 1 must train the same weights as 1 process x batch 2
(up to float32 summation order), and a resumed run must equal an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from frametuner.training.checkpoint import SHARDED_DIR, WEIGHTS_FILE, list_checkpoints
from frametuner.training.trainer import Trainer

from ..conftest import assert_close
from .distributed_worker import run_ranks
from .helpers import synthetic_data, tiny_config

STEPS = 4
SAMPLES = 8  # one epoch of 4 global batches of 2
FP32 = dict(atol=1e-6, rtol=1e-5)  # 2 ranks vs one process: same maths, other summation order
# AdamW divides by sqrt(v) + eps: with the default 1e-8 a gradient element that is ~0 (a sum
# of cancelling terms) turns float32 summation noise into a visible update. A larger eps keeps
# these comparisons about the sharding rather than Adam's conditioning.
ADAM = dict(adam_epsilon=1e-4, lr_scheduler="cosine", lr_warmup_steps=1)  # + a schedule that must step once per step
MIXED = {"t2v": 0.5, "vc": 0.5, "vc_cond_frames": [5]}  # the conditioning mix: K = 0 or 2 of 3 latent frames


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The trainable weights of a checkpoint, whole, whether written by one process, DDP or FSDP."""
    if (path / WEIGHTS_FILE).exists():
        return load_file(path / WEIGHTS_FILE)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as folder:
        dcp_to_torch_save(path / SHARDED_DIR, Path(folder) / "whole.pt")
        return torch.load(Path(folder) / "whole.pt", weights_only=False)["model"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint_weights(list_checkpoints(run_dir / "out" / "checkpoints")[-1])


def one_process(run_dir: Path, steps: int, **overrides) -> dict[str, torch.Tensor]:
    """The reference: one process, batch 2 (the global batch of 2 ranks x 1)."""
    config = tiny_config(run_dir, max_train_steps=steps, **{**ADAM, **overrides})
    Trainer(config, synthetic_data(n=SAMPLES, batch_size=2)).train()
    return final_weights(run_dir)


def assert_same_weights(actual: dict, expected: dict, exact: bool = False) -> None:
    assert actual.keys() == expected.keys() and actual
    for name in expected:
        if exact:
            assert torch.equal(actual[name], expected[name]), name
        else:
            assert_close(actual[name], expected[name], **FP32)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Every 2-rank run of this module, in one spawn (each rank starts Python once)."""
    root = tmp_path_factory.mktemp("distributed")
    home = tmp_path_factory.getbasetemp() / "frametuner-home"
    lora = dict(max_train_steps=STEPS, **ADAM)
    jobs = []
    for strategy in ("ddp", "fsdp"):
        settings = {**lora, "distributed": {"strategy": strategy}}
        jobs += [
            dict(dir=root / strategy, config=settings),
            dict(dir=root / f"{strategy}-resumed", config=settings, stop_at=STEPS // 2),
            dict(dir=root / f"{strategy}-resumed", config={**settings, "resume_from_checkpoint": "latest"}),
        ]
    jobs.append(dict(dir=root / "fsdp-full", config=dict(max_train_steps=2, model_type="full", distributed={"strategy": "fsdp"}, **ADAM)))
    jobs.append(dict(dir=root / "fsdp-mixed", config={**lora, "distributed": {"strategy": "fsdp"}}, conditioning=MIXED, batch_size=2))
    for job in jobs:
        job.update(dir=str(job["dir"]), samples=SAMPLES)
        job.setdefault("batch_size", 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRAMETUNER_HOME", str(home))  # the ranks inherit it
        from frametuner.models.longcat_video.tiny import ensure_tiny_checkpoint

        ensure_tiny_checkpoint()
        run_ranks(jobs)
    return root


def test_distributed_ddp_lora_equals_one_process_with_the_doubled_batch(ranks, tmp_path):
    reference = one_process(tmp_path, STEPS)
    ddp = final_weights(ranks / "ddp")
    assert all(".lora_" in name for name in ddp)
    assert_same_weights(ddp, reference)
    fresh = one_process(tmp_path / "untrained", 1, learning_rate=1e-9)
    assert max((reference[n] - fresh[n]).abs().max() for n in reference) > 1e-3  # it trained


def test_distributed_fsdp_lora_equals_one_process_with_the_doubled_batch(ranks, tmp_path):
    checkpoint = list_checkpoints(ranks / "fsdp" / "out" / "checkpoints")[-1]
    assert (checkpoint / SHARDED_DIR).is_dir() and not (checkpoint / WEIGHTS_FILE).exists()
    assert {p.name for p in checkpoint.glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    assert json.loads((checkpoint / "trainer_state.json").read_text())["num_processes"] == 2
    assert_same_weights(checkpoint_weights(checkpoint), one_process(tmp_path, STEPS))


def test_distributed_fsdp_mixed_conditioning_equals_one_process(ranks, tmp_path, monkeypatch):
    """A conditioning mix draws a mode per sample of the global batch (2 ranks x 2). The DiT
    takes one K per call, so a rank holding two Ks calls it twice: a rank holding one K then
    makes a second call with weight 0 (FSDP gathers per call; unequal counts would hang)."""
    from frametuner.config.conditioning import ConditioningMix
    from frametuner.training import trainer as trainer_module

    draws = []
    real = trainer_module.draw_conditioning
    monkeypatch.setattr(trainer_module, "draw_conditioning", lambda *a, **k: draws.append(real(*a, **k)) or draws[-1])
    config = tiny_config(tmp_path, max_train_steps=STEPS, **ADAM)
    Trainer(config, synthetic_data(n=SAMPLES, batch_size=4, conditioning=ConditioningMix(**MIXED))).train()
    distinct = [[len({item.num_cond_latents for item in plan[r * 2 : r * 2 + 2]}) for r in (0, 1)] for plan in draws]
    assert [1, 2] in distinct or [2, 1] in distinct, distinct  # a step where the ranks' call counts differ
    assert_same_weights(final_weights(ranks / "fsdp-mixed"), final_weights(tmp_path))


def test_distributed_fsdp_full_finetune_equals_one_process(ranks, tmp_path):
    reference = one_process(tmp_path, 2, model_type="full")
    sharded = final_weights(ranks / "fsdp-full")
    assert "x_embedder.proj.weight" in sharded and "blocks.1.ffn.w2.weight" in sharded  # every DiT weight
    assert_same_weights(sharded, reference)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_distributed_resumed_run_equals_uninterrupted(ranks, strategy):
    resumed_dir = ranks / f"{strategy}-resumed" / "out" / "checkpoints"
    assert [p.name for p in list_checkpoints(resumed_dir)] == ["checkpoint-000002", "checkpoint-000004"]
    assert_same_weights(final_weights(ranks / f"{strategy}-resumed"), final_weights(ranks / strategy), exact=True)


def test_distributed_fsdp_checkpoint_resumes_on_one_process_with_a_warning(ranks, tmp_path, caplog):
    """Written by 2 FSDP ranks at step 2, continued by one unsharded process (batch 2): the
    same global batches and randomness, so the same weights as one process throughout."""
    checkpoints = tmp_path / "out" / "checkpoints"
    shutil.copytree(ranks / "fsdp-resumed" / "out" / "checkpoints" / "checkpoint-000002", checkpoints / "checkpoint-000002")
    config = tiny_config(tmp_path, max_train_steps=STEPS, resume_from_checkpoint="latest", **ADAM)
    with caplog.at_level(logging.WARNING, logger="frametuner.training.trainer"):
        Trainer(config, synthetic_data(n=SAMPLES, batch_size=2)).train()
    assert "written by 2 process(es), resuming on 1" in caplog.text
    assert_same_weights(final_weights(tmp_path), one_process(tmp_path / "reference", STEPS))


def demo_config(tmp_path: Path, **overrides) -> Path:
    """Demo clips, their dataset list and a tiny-model config writing to ``tmp_path/two``."""
    from frametuner.demo import DEMO_DATASETS, write_demo_clips

    write_demo_clips(tmp_path / "clips", frames=9)
    (tmp_path / "datasets.json").write_text(json.dumps([{**DEMO_DATASETS[0], "repeats": 1, "video": {"num_frames": 5}}]))
    settings = {
        "model_flavour": "tiny", "mixed_precision": "no", "report_to": "none", "seed": 3, "data_backend_config": "datasets.json",
        "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "two"), "train_batch_size": 1, "max_train_steps": 2,
        "checkpointing_steps": 100, "learning_rate": 1e-3, "lora_export_formats": ["peft"], **ADAM, **overrides,
    }
    path = tmp_path / "two.json"
    path.write_text(json.dumps(settings))
    return path


def train_command(config: Path, *flags: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-m", "frametuner", "train", "--config", str(config), "--num_processes", "2", *flags], env


def read_events(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "events.jsonl").read_text().splitlines()]


def test_distributed_train_command_launches_ranks_that_split_the_cache(tmp_path):
    """`frametuner train --num_processes 2` end to end through accelerate launch (FSDP2): rank
    0 scans, the ranks share the caching, validate (all forwards, rank 0 writes) and save;
    the LoRA equals one process's with the doubled batch, which finds the cache complete."""
    from frametuner.cache.run import run_cache
    from frametuner.config import load_config
    from frametuner.lora import read_lora
    from frametuner.training import train

    config = demo_config(
        tmp_path, validation_prompt="a red ball bouncing", validation_resolution="32x48", validation_num_video_frames=5,
        validation_num_inference_steps=2, validation_steps=1,
    )
    command, env = train_command(config, "--distributed", '{"strategy": "fsdp"}')
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]

    events = read_events(tmp_path / "two")
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]  # one writer: rank 0
    assert [e["step"] for e in events if e["event"] == "validation"] == [0, 1, 2]
    assert all((tmp_path / "two" / e["video"]).stat().st_size > 0 for e in events if e["event"] == "validation")
    assert (list_checkpoints(tmp_path / "two" / "checkpoints")[-1] / SHARDED_DIR).is_dir()

    one = load_config(config, {"output_dir": str(tmp_path / "one"), "train_batch_size": 2, "validation_prompt": None})
    assert run_cache(one, progress=False).latents_encoded == 0  # the two ranks cached everything
    assert train(one) == 0
    [done] = [e for e in events if e["event"] == "done"]
    two_ranks = read_lora(tmp_path / "two" / done["lora"]["peft"])
    one_rank = read_lora(list_checkpoints(tmp_path / "one" / "checkpoints")[-1] / "lora" / "peft")
    assert two_ranks.deltas.keys() == one_rank.deltas.keys()
    for name, delta in one_rank.deltas.items():
        assert_close(two_ranks.deltas[name].up, delta.up, **FP32)
        assert_close(two_ranks.deltas[name].down, delta.down, **FP32)


def test_distributed_sigterm_stops_all_ranks_after_one_step_and_exits_0(tmp_path):
    """The web UI's stop: SIGTERM to the command; every rank leaves after the same step, the
    checkpoint holds each rank's RNG, and the command exits 0 (torchrun itself reports 1)."""
    config = demo_config(tmp_path, max_train_steps=100_000)
    command, env = train_command(config, "--distributed", '{"strategy": "ddp"}')
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    events_file = tmp_path / "two" / "events.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (events_file.exists() and '"event": "step"' in events_file.read_text()):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr[-4000:]
    events = read_events(tmp_path / "two")
    [stopped] = [e for e in events if e["event"] == "stopped"]
    assert stopped["reason"] == "SIGTERM" and stopped["step"] == max(e["step"] for e in events if e["event"] == "step")
    checkpoint = tmp_path / "two" / stopped["checkpoint"]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == stopped["step"]
    assert (checkpoint / "rng_rank0.pt").exists() and (checkpoint / "rng_rank1.pt").exists()


def test_distributed_launch_is_an_argument_list_with_multicast_off(tmp_path, monkeypatch):
    from frametuner.config import TrainConfig
    from frametuner.training.distributed import MULTICAST_OFF, launch_command, needs_launch

    config = TrainConfig(model_flavour="tiny", num_processes=4, mixed_precision="bf16")
    argv = ["train", "--config", "my config.json", "--num_processes", "4"]
    command, env = launch_command(config.num_processes, argv, mixed_precision=config.mixed_precision, port=29999)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4" and command[command.index("--main_process_port") + 1] == "29999"
    assert command[-len(argv) - 2 :] == ["-m", "frametuner", *argv]  # the user's command, verbatim
    assert all(env[key] == value for key, value in MULTICAST_OFF.items())
    for name in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert needs_launch(config) and not needs_launch(TrainConfig(model_flavour="tiny"))
    monkeypatch.setenv("LOCAL_RANK", "0")  # a rank: never launches again
    assert not needs_launch(config)
