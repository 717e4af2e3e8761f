"""The sampling schedule: the sigmas and timesteps LongCat-Video's pipeline denoises through.

Upstream hands ``linspace(1, 0.001, steps)`` (or, for the distilled ``cfg_step_lora``,
a subset of a 50-step grid) to diffusers' ``FlowMatchEulerDiscreteScheduler``, whose
``set_timesteps`` applies the shift on top. Going through the same scheduler class keeps
the float32 rounding identical to the reference.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

NUM_TRAIN_TIMESTEPS = 1000
# The distilled LoRA was trained on a fixed 50-step grid; fewer steps pick from it.
NUM_DISTILL_GRID_STEPS = 50
# Upstream stops the linear ramp just above zero; the scheduler appends the terminal 0.
FINAL_INPUT_SIGMA = 0.001


def input_sigmas(steps: int, distill: bool = False) -> torch.Tensor:
    """The unshifted sigmas the pipeline passes to ``set_timesteps`` (float32, ``[steps]``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not distill:
        return torch.linspace(1.0, FINAL_INPUT_SIGMA, steps, dtype=torch.float32)
    if steps > NUM_DISTILL_GRID_STEPS:
        raise ValueError(f"distilled sampling picks from a {NUM_DISTILL_GRID_STEPS}-step grid; use at most that many steps, not {steps}")
    stride = NUM_TRAIN_TIMESTEPS // NUM_DISTILL_GRID_STEPS
    grid = (torch.arange(NUM_DISTILL_GRID_STEPS, 0, -1, dtype=torch.float32) * stride).round().long()  # 1000, 980, ..., 20
    # Same index rule as upstream (numpy linspace then floor), so any step count picks the same entries.
    picks = np.floor(np.linspace(0, NUM_DISTILL_GRID_STEPS, num=steps, endpoint=False)).astype(np.int64)
    return grid[torch.from_numpy(picks)].float() / NUM_TRAIN_TIMESTEPS


def make_scheduler(shift: float = 12.0) -> FlowMatchEulerDiscreteScheduler:
    """LongCat-Video's scheduler config: fixed shift, no resolution-dependent shifting."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift, use_dynamic_shifting=False)


def sigmas(steps: int, shift: float = 12.0, distill: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas [steps + 1] ending in 0, timesteps [steps] = 1000 * shifted sigma)``, float32 on the CPU."""
    scheduler = make_scheduler(shift)
    scheduler.set_timesteps(steps, sigmas=input_sigmas(steps, distill).numpy(), device="cpu")
    return scheduler.sigmas.to(torch.float32), scheduler.timesteps.to(torch.float32)
