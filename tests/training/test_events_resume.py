"""After a kill and a resume, every reader shows each step once, with the resumed launch's values.

The killed launch logged steps 3 and 4 past its last checkpoint (step 2); the resumed
launch does them again (on other data here, so its losses differ). ``events.jsonl`` keeps
both on disk (it is append-only, tailed by the web UI); the ``resume`` event lets every
reader drop the killed launch's: :func:`read_run`, the server's ``RunProgress`` and
TensorBoard (``purge_step``).
"""

from __future__ import annotations

import json

import pytest

from frametuner.server.progress import RunProgress
from frametuner.training.events import EVENTS_FILE, read_run, supersede
from frametuner.training.trainer import Trainer

from .faults import Killed
from .helpers import synthetic_data, tiny_config


def test_supersede_keeps_each_step_once_from_the_latest_launch():
    events = [
        {"event": "start", "step": 0}, {"event": "step", "step": 1, "loss": 1.0}, {"event": "step", "step": 2, "loss": 2.0},
        {"event": "validation", "step": 2}, {"event": "checkpoint", "step": 2}, {"event": "step", "step": 3, "loss": 3.0},
        {"event": "validation", "step": 3},
        {"event": "resume", "step": 2}, {"event": "start", "step": 2}, {"event": "step", "step": 3, "loss": 30.0},
    ]
    kept = supersede(events)
    assert [(e["step"], e["loss"]) for e in kept if e["event"] == "step"] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert [e["step"] for e in kept if e["event"] == "validation"] == [2]
    assert [e["step"] for e in kept if e["event"] == "checkpoint"] == [2]  # its folder is still there
    # A new launch from scratch in the same folder starts the history over.
    assert [e for e in supersede(events + [{"event": "start", "step": 0}]) if e["event"] == "step"] == []


@pytest.mark.slow
def test_a_resumed_run_shows_each_step_once_in_events_progress_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(tmp_path, max_train_steps=4, checkpointing_steps=2, report_to="tensorboard")
    killed = Trainer(config, synthetic_data(n=3, seed=0))

    def die(reason="periodic"):
        if killed.global_step == 4:  # killed after step 4, before its checkpoint
            killed.accelerator.get_tracker("tensorboard", unwrap=True).flush()  # what it had written by then
            raise Killed
        return Trainer.save(killed, reason)

    killed.save = die
    with pytest.raises(Killed):
        killed.train()

    resumed_config = tiny_config(tmp_path, max_train_steps=4, checkpointing_steps=2, report_to="tensorboard", resume_from_checkpoint="latest")
    resumed = Trainer(resumed_config, synthetic_data(n=3, seed=1))  # other data: other losses for steps 3 and 4
    resumed.train()

    path = tmp_path / "out" / EVENTS_FILE
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    raw_steps = [(e["step"], e["loss"]) for e in raw if e["event"] == "step"]
    assert [s for s, _ in raw_steps] == [1, 2, 3, 4, 3, 4]  # on disk: both launches
    assert [e["step"] for e in raw if e["event"] == "resume"] == [2]
    first, second = dict(raw_steps[:4]), dict(raw_steps[4:])
    assert first[3] != second[3] and first[4] != second[4]
    expected = [(1, first[1]), (2, first[2]), (3, second[3]), (4, second[4])]

    assert [(e["step"], e["loss"]) for e in read_run(path) if e["event"] == "step"] == expected

    # The server's fold: right after the resume event, the killed launch's step 4 is gone.
    progress = RunProgress(tmp_path, tmp_path / "out")
    resume_at = next(i for i, e in enumerate(raw) if e["event"] == "resume")
    for event in raw[: resume_at + 1]:
        progress.apply(event)
    assert progress.step == 2 and progress.public()["latest"] == {"step": 2}
    assert RunProgress(tmp_path, tmp_path / "out").update().step == 4

    # TensorBoard: the files of both launches, read by TensorBoard's own loader.
    logs = tmp_path / "out" / "logs" / config.tracker_project_name
    assert len(list(logs.glob("events.out.tfevents.*"))) == 2
    accumulator = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = [(s.step, s.value) for s in accumulator.Scalars("loss")]
    assert [s for s, _ in scalars] == [1, 2, 3, 4]
    assert [v for _, v in scalars] == pytest.approx([v for _, v in expected], rel=1e-6)  # float32 in the file
