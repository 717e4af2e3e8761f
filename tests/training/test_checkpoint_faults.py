"""No kill or full disk loses a checkpoint.

Fault injection (``faults.FileOps``) kills the process before each file operation of a
save, of a re-save of the same step (a finished run resumed: the case that used to leave
``checkpoint-N`` without its weights) and of a save that prunes (``checkpoints_total_limit``).
After each kill the next start (``recover_checkpoints`` + ``resolve_resume('latest')``)
must find a complete checkpoint that loses at most the step being saved, and resuming it
must restore exactly the weights that step had.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from frametuner.storage import StorageError
from frametuner.training import checkpoint as ckpt
from frametuner.training.trainer import Trainer

from .faults import FileOps, Killed
from .helpers import synthetic_data, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LoRA run of 2 steps with a checkpoint at each, and the weights each step saved."""
    tmp = tmp_path_factory.mktemp("faults")
    trainer = Trainer(tiny_config(tmp, max_train_steps=2, checkpointing_steps=1), synthetic_data(n=3))
    trainer.train()
    baseline = trainer.checkpoint_dir
    weights = {step: load_file(ckpt.checkpoint_folder(baseline, step) / ckpt.WEIGHTS_FILE) for step in (1, 2)}
    assert not torch.equal(next(iter(weights[1].values())), next(iter(weights[2].values())))
    return trainer, baseline, weights


def _prepare(trainer, baseline, target, steps):
    """A checkpoints folder holding ``steps`` of the baseline; the trainer at step 2, saving there."""
    if target.parent.exists():
        shutil.rmtree(target.parent)
    target.mkdir(parents=True)
    for step in steps:
        shutil.copytree(ckpt.checkpoint_folder(baseline, step), ckpt.checkpoint_folder(target, step))
    trainer.resume(ckpt.checkpoint_folder(baseline, 2))  # the state that step 2 saves
    trainer.checkpoint_dir, trainer.output_dir = target, target.parent


def _restart_and_check(trainer, target, weights, allowed):
    """What the next start does; returns the step it resumed."""
    ckpt.recover_checkpoints(target)
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")], "hidden folders left after recovery"
    path = ckpt.resolve_resume(target, "latest")
    assert path is not None, "no checkpoint to resume"
    trainer.resume(path)  # the trainer's own resume: dies with KeyError 'weights' on a gutted folder
    assert trainer.global_step in allowed
    restored = trainer.trainable_state_dict()
    assert restored.keys() == weights[trainer.global_step].keys()
    for name, value in weights[trainer.global_step].items():
        assert torch.equal(restored[name], value), name
    for folder in ckpt.list_checkpoints(target):  # whatever counts as a checkpoint loads
        assert "weights" in ckpt.load_checkpoint(folder)
    return trainer.global_step


# Each saves step 2 with checkpoints_total_limit 1: the operations of a save without a limit
# are the first ones of these (the pruning comes after the new checkpoint is in place).
SCENARIOS = {
    # name: (checkpoints present before the save of step 2, keep, steps a kill may leave as latest)
    "save": ((1,), 1, {1, 2}),
    "re-save": ((1, 2), 1, {2}),  # a finished run resumed saves its last step again
}


@pytest.fixture
def no_fsync(monkeypatch):
    """fsync guards against power loss, not kills: skipped here to keep the many saves fast."""
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: None)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_kill_before_any_file_operation_of_a_save_loses_at_most_that_step(trained, tmp_path, scenario, no_fsync):
    trainer, baseline, weights = trained
    present, keep, allowed = SCENARIOS[scenario]
    trainer.config.checkpoints_total_limit = keep
    target = tmp_path / "out" / "checkpoints"
    try:
        _prepare(trainer, baseline, target, present)
        with FileOps(target) as counted:
            trainer.save()
        total = counted.count
        assert total >= 10, counted.log  # a save is many operations: the loop below covers each
        resumed = []
        for die_at in range(1, total + 1):
            _prepare(trainer, baseline, target, present)
            with pytest.raises(Killed), FileOps(target, die_at=die_at) as ops:
                trainer.save()
            try:
                resumed.append(_restart_and_check(trainer, target, weights, allowed))
            except AssertionError as error:
                raise AssertionError(f"killed before operation {die_at} {ops.log[-1]}: {error}") from error
        # Killed late enough, the new checkpoint is the one resumed.
        assert resumed[-1] == 2
        # After a save that completes, the pruning rule holds.
        _prepare(trainer, baseline, target, present)
        trainer.save()
        assert [p.name for p in ckpt.list_checkpoints(target)] == ["checkpoint-000002"]
    finally:
        trainer.config.checkpoints_total_limit = None


@pytest.mark.slow
def test_a_finished_run_killed_while_saving_again_resumes_through_train(tmp_path):
    """The reported case end to end: a finished run resumed (it saves checkpoint-2 again) is
    killed while the old copy is being deleted; the next ``train`` resumes and finishes."""
    config = tiny_config(tmp_path, max_train_steps=2, checkpointing_steps=1000)
    Trainer(config, synthetic_data(n=3)).train()
    target = tmp_path / "out" / "checkpoints"
    again = Trainer(tiny_config(tmp_path, max_train_steps=2, resume_from_checkpoint="latest"), synthetic_data(n=3))
    with FileOps(target) as counted:
        again.train()
    deleting = [i + 1 for i, (op, path) in enumerate(counted.log) if op == "unlink" and ".deleting" in path]
    assert deleting, counted.log
    again = Trainer(tiny_config(tmp_path, max_train_steps=2, resume_from_checkpoint="latest"), synthetic_data(n=3))
    with pytest.raises(Killed), FileOps(target, die_at=deleting[len(deleting) // 2]):
        again.train()
    final = Trainer(tiny_config(tmp_path, max_train_steps=3, resume_from_checkpoint="latest"), synthetic_data(n=3))
    result = final.train()
    assert result["step"] == 3
    assert [p.name for p in ckpt.list_checkpoints(target)] == ["checkpoint-000002", "checkpoint-000003"]


def test_a_complete_partial_is_recovered_not_deleted(trained, tmp_path, caplog):
    trainer, baseline, weights = trained
    target = tmp_path / "out" / "checkpoints"
    _prepare(trainer, baseline, target, (1,))
    # A kill between the staging folder's completion marker and its rename into place.
    shutil.copytree(ckpt.checkpoint_folder(baseline, 2), ckpt.staging_folder(target, 2))
    with caplog.at_level(logging.WARNING):
        done = ckpt.recover_checkpoints(target)
    assert done and "checkpoint-000002" in done[0]
    assert [p.name for p in ckpt.list_checkpoints(target)] == ["checkpoint-000001", "checkpoint-000002"]
    recovered = load_file(ckpt.checkpoint_folder(target, 2) / ckpt.WEIGHTS_FILE)
    assert recovered.keys() == weights[2].keys() and all(torch.equal(recovered[k], weights[2][k]) for k in recovered)


def test_latest_skips_an_incomplete_checkpoint_and_names_it(trained, tmp_path, caplog):
    trainer, baseline, _ = trained
    target = tmp_path / "out" / "checkpoints"
    _prepare(trainer, baseline, target, (1, 2))
    gutted = ckpt.checkpoint_folder(target, 2)
    (gutted / ckpt.WEIGHTS_FILE).unlink()  # what the old save's kill left: the state file, no weights
    with caplog.at_level(logging.WARNING):
        assert ckpt.resolve_resume(target, "latest") == ckpt.checkpoint_folder(target, 1)
    assert f"skipping incomplete checkpoint {gutted}" in caplog.text and "trainable.safetensors is missing" in caplog.text
    with pytest.raises(FileNotFoundError, match="trainable.safetensors is missing"):
        ckpt.resolve_resume(target, str(gutted))
    # Without the marker (written last) a folder counts only as a checkpoint of the format
    # before markers, with every file such a save wrote: runs started before the upgrade resume.
    (gutted / ckpt.COMPLETE_FILE).unlink()
    legacy = ckpt.checkpoint_folder(target, 1)
    (legacy / ckpt.COMPLETE_FILE).unlink()
    assert ckpt.list_checkpoints(target) == [legacy] and ckpt.resolve_resume(target, "latest") == legacy
    trainer.resume(legacy)
    assert trainer.global_step == 1
    (legacy / ckpt.rng_file(0)).unlink()
    assert ckpt.list_checkpoints(target) == [] and ckpt.resolve_resume(target, "latest") is None


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EACCES])
def test_a_full_disk_at_a_save_is_one_line_and_keeps_the_previous_checkpoint(trained, tmp_path, error_number, no_fsync):
    trainer, baseline, _ = trained
    target = tmp_path / "out" / "checkpoints"
    _prepare(trainer, baseline, target, (1,))
    with FileOps(target) as counted:
        trainer.save()
    assert counted.writes >= 5
    for fail_at in range(1, counted.writes + 1):
        _prepare(trainer, baseline, target, (1,))
        before = json.loads((ckpt.checkpoint_folder(target, 1) / ckpt.COMPLETE_FILE).read_text())
        error = OSError(error_number, "No space left on device" if error_number == errno.ENOSPC else "Permission denied")
        with pytest.raises(StorageError) as caught, FileOps(target, fail_at=fail_at, error=error):
            trainer.save()
        message = str(caught.value)
        assert "\n" not in message and str(target) in message and "free" in message, message
        assert "checkpoint-000001 is intact" in message and "--resume_from_checkpoint latest" in message, message
        assert ("disk full" in message) == (error_number == errno.ENOSPC), message
        assert sorted(p.name for p in target.iterdir()) == ["checkpoint-000001"], "the partial save was not removed"
        assert json.loads((ckpt.checkpoint_folder(target, 1) / ckpt.COMPLETE_FILE).read_text()) == before
        assert ckpt.is_complete(ckpt.checkpoint_folder(target, 1))


@pytest.mark.slow
def test_a_full_disk_during_training_ends_the_command_with_one_line(tmp_path, monkeypatch, capsys):
    """`frametuner train` whose first checkpoint save meets a full disk: one `error:` line, exit 1,
    no traceback, no partial left (the real trainer on synthetic data behind the CLI's entry point)."""
    from frametuner import cli

    def train(args, extra):
        Trainer(tiny_config(tmp_path, max_train_steps=2, checkpointing_steps=1), synthetic_data(n=3)).train()
        return 0

    monkeypatch.setitem(cli.COMMANDS, "train", train)
    target = tmp_path / "out" / "checkpoints"
    with FileOps(target, fail_at=3, error=OSError(errno.ENOSPC, "No space left on device")):  # the weights file
        code = cli.main(["train", "--config", str(tmp_path / "config.json")])  # the config is the stand-in's
    err = capsys.readouterr().err
    errors = [line for line in err.split("\n") if "error:" in line]
    assert code == 1 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith(f"error: disk full while saving checkpoint-000001 in {target}: "), err
    assert "no earlier checkpoint exists" in errors[0] and "--resume_from_checkpoint latest" in errors[0]
    assert not target.exists() or not any(target.iterdir())  # no partial left
