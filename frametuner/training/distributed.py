"""Multi-GPU training through accelerate: launching, the process group, DDP and FSDP2.

``frametuner train --num_processes N`` runs itself again under ``accelerate launch`` (one
process per GPU, torchrun underneath); every rank then runs the ordinary ``train`` path,
which asks this module for its :class:`~accelerate.Accelerator`. Plain ``accelerate
launch -m frametuner train ...`` lands in the same place.

Strategies (``distributed.strategy``):

- ``ddp``: every rank holds the whole DiT; gradients are all-reduced (PyTorch DDP).
- ``fsdp``: FSDP2 through accelerate's plugin (``fsdp_version=2``): one shard unit per
  block (the family's ``shard_units``), plus the root. Blocks checkpoint themselves (the
  block protocol), so the plugin's own activation checkpointing stays off.

Randomness is drawn for the *global* batch and sliced per rank (see
:meth:`Trainer.training_step`), so N ranks with batch b train exactly like one process
with batch N*b: a run does not depend on how its batch was split.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config.precision import compute_dtype

log = logging.getLogger(__name__)

# NVLink SHARP / multicast stay off: on shared hosts they can take GPUs out of service.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# torchrun gives workers this long to finish after SIGTERM before it kills them: enough to
# end the current step and write a checkpoint (a sharded full fine-tune is ~160 GB).
SHUTDOWN_GRACE_S = 900
# Rank 0 validates while the others wait at a barrier (DDP); a 720p validation with a few
# prompts takes tens of minutes, far past NCCL's 10-minute default.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
def launched_world_size() -> int:
    """Processes of this run as set by the launcher (torchrun, accelerate); 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def needs_launch(config) -> bool:
    """True in the process a user started with ``num_processes`` > 1 (not yet one of the ranks)."""
    return config.num_processes > 1 and "LOCAL_RANK" not in os.environ and launched_world_size() == 1


def uses_cpu_backend() -> bool:
    """Ranks without a CUDA GPU talk through gloo (tests, debugging); accelerate needs to be told."""
    return launched_world_size() > 1 and not torch.cuda.is_available()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(
    num_processes: int, argv: Sequence[str], *, module: str = "frametuner", mixed_precision: str = "no", port: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` argument list and environment that run ``python -m <module>
    <argv>`` on ``num_processes`` ranks. The ranks see ``LOCAL_RANK`` and do not launch again."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes", str(num_processes),
        "--num_machines", "1",
        "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no",
        "--main_process_port", str(port if port is not None else free_port()),
        "-m", module, *argv,
    ]
    env = dict(os.environ)
    env.update(MULTICAST_OFF)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_GRACE_S))
    # torchrun would pin every rank to one thread; caching decodes video on the CPU.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    return command, env


def end_run(accelerator) -> None:
    """Finish trackers and close the process group, all ranks together.

    The barrier first: a rank that closes its gloo/NCCL connections while another still
    works (rank 0 validating, exporting or writing results) can make that rank's transport
    thread see a closed peer and abort the process (SIGABRT) after a run that succeeded.
    """
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
    accelerator.end_training()


def check_devices(config) -> None:
    """Refuse a launch that would put two ranks on one GPU (``num_processes`` > visible GPUs)."""
    from ..config import ConfigError

    if not torch.cuda.is_available():
        log.warning("no CUDA GPU: running %d CPU processes with gloo (slow; for tests and debugging)", config.num_processes)
        return
    visible = torch.cuda.device_count()
    if config.num_processes > visible:
        pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={pinned})" if pinned is not None else ""
        raise ConfigError([f"'num_processes' = {config.num_processes} but only {visible} GPU(s) are visible{where}; use at most {visible}"])


def relaunch(config, argv: Sequence[str]) -> int:
    """Run ``frametuner <argv>`` on ``config.num_processes`` ranks through ``accelerate launch``; its exit code.

    The launcher runs in its own session and this process stays as the one to signal: a
    SIGTERM or Ctrl-C is passed on (torchrun forwards it to every rank; they agree on the
    step to stop after and save together), and a stop that ended in a checkpoint exits 0.
    Should this process be killed outright, the launcher and the ranks die with it.
    """
    check_devices(config)
    command, env = launch_command(config.num_processes, argv, mixed_precision=config.mixed_precision)
    log.info("launching %d processes (%s): %s", config.num_processes, config.distributed.strategy, " ".join(command))
    started = time.time()
    child = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=die_with_parent)
    stop_signals: list[int] = []

    def forward(signum, frame):
        stop_signals.append(signum)
        child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stop_signals and code != 0 and _stopped_since(config, started):
        return 0  # torchrun reports the signal as a failure; the ranks stopped cleanly
    return code if code >= 0 else 128 - code


def _stopped_since(config, started: float) -> bool:
    """Whether the run's event stream ends with a clean stop written after ``started``."""
    from .events import EVENTS_FILE, read_events

    events, _ = read_events(Path(config.output_dir) / EVENTS_FILE)
    return bool(events) and events[-1]["event"] == "stopped" and events[-1]["time"] >= started


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (torchrun starts every rank in a
    session of its own, where a kill of the launcher's process group does not reach)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def process_state():
    """The run's accelerate :class:`~accelerate.PartialState` (initialises the process group
    on the first call, with NVLink multicast off and a long collective timeout)."""
    from accelerate import PartialState

    if launched_world_size() > 1:
        for key, value in MULTICAST_OFF.items():
            os.environ[key] = value  # read when NCCL creates its communicators
        die_with_parent()  # the launcher's end is this rank's end
    state = PartialState(cpu=uses_cpu_backend(), timeout=COLLECTIVE_TIMEOUT)
    if not state.is_main_process:
        _quiet_progress_bars()
    return state


def _quiet_progress_bars() -> None:
    """Only rank 0 draws progress bars (model loading bars of every rank would interleave)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def fsdp_plugin(config):
    """accelerate's FSDP2 plugin: one unit per DiT block; precision chosen to match DDP.

    LoRA keeps each parameter in its storage dtype (frozen base bf16, LoRA float32) and
    computes under autocast like DDP; full fine-tuning gathers weights in the compute
    dtype (half the traffic of the float32 masters). Gradients are reduced in float32.
    """
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from ..models.registry import load_spec

    compute = compute_dtype(config.mixed_precision)
    # The unit FSDP2 shards: every block's weights are gathered just for its forward/backward.
    shard_units = list(load_spec(config.model_family).shard_units)
    gather_dtype = compute if config.model_type == "full" else None
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=shard_units,
        reshard_after_forward=config.distributed.fsdp_reshard_after_forward,
        mixed_precision_policy=MixedPrecisionPolicy(param_dtype=gather_dtype, reduce_dtype=torch.float32),
        activation_checkpointing=False,  # blocks checkpoint themselves (enable_gradient_checkpointing)
        cpu_ram_efficient_loading=False,
    )


def build_accelerator(config, **kwargs: Any):
    """The :class:`~accelerate.Accelerator` of one rank: plain, DDP or FSDP2 per the config and the launch."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import DistributedDataParallelKwargs

    from ..config import ConfigError

    process_state()
    world = launched_world_size()
    strategy = config.distributed.strategy if world > 1 else None
    if world > 1 and config.num_processes not in (1, world):
        log.warning("launched on %d processes; 'num_processes' = %d in the config is ignored", world, config.num_processes)
    elif world == 1 and config.num_processes > 1:
        log.warning("'num_processes' = %d, but this is one process: training on one GPU (`frametuner train` launches the others)", config.num_processes)
    if strategy == "fsdp" and config.optimizer == "adamw8bit":
        raise ConfigError(["optimizer 'adamw8bit' cannot step FSDP-sharded weights; use optimizer 'adamw' or distributed.strategy 'ddp'"])
    plugin = fsdp_plugin(config) if strategy == "fsdp" else None
    if plugin is not None:
        # A block returns a reshaped fresh tensor and the DiT never changes it in place, which
        # is all FSDP2's warning about views asks.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    if strategy == "ddp" and os.environ.pop("ACCELERATE_USE_FSDP", "false").lower() == "true":
        log.warning("accelerate was launched with FSDP but distributed.strategy is 'ddp': training with DDP")
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=config.distributed.find_unused_parameters)]
    accelerator = Accelerator(
        cpu=uses_cpu_backend(),
        fsdp_plugin=plugin,
        kwargs_handlers=handlers,
        # Our sampler hands each rank its slice of a global batch, which is accelerate's
        # split_batches: the LR scheduler then steps once per optimizer step, not N times.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        **kwargs,
    )
    if plugin is not None and not accelerator.is_fsdp2:
        _enable_fsdp_on_cpu(accelerator, plugin)
    return accelerator


def _enable_fsdp_on_cpu(accelerator, plugin) -> None:
    """accelerate turns FSDP on for accelerator backends only; torch's FSDP2 also runs on a
    gloo CPU group, so there (tests, debugging) set the state as accelerate does on GPUs."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    # AcceleratorState copies PartialState's fields on every instantiation; accelerate
    # records the distributed type there too.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
