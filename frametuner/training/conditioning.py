"""Per-sample training mode (t2v, i2v or continuation) drawn from a conditioning mix.

A pure function of the mix, the clip's latent length and a ``torch.Generator``: the
trainer passes its step generator (checkpointed with every checkpoint), draws for the
global batch like every other random choice of a step, and keeps its own rows, so a
resumed run and a run on N ranks draw exactly the modes an uninterrupted single-process
run would. A mix with nothing to choose (one mode, one length) draws nothing, so runs
without a mix consume the generator exactly as before the mix existed.

A mode needs ``num_cond_latents`` clean latent frames plus at least one noised one; a
clip too short for the drawn mode trains as text-to-video instead (``fallback``), which
:func:`fallback_counts` predicts per dataset for the data report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import torch

from ..config.conditioning import MODES, ConditioningMix


@dataclass(frozen=True)
class SampleConditioning:
    """How one sample trains: ``mode`` and its clean latent frames ``num_cond_latents``."""

    mode: str  # "t2v", "i2v" or "vc": what the sample trains as
    drawn: str  # what the draw picked (differs from ``mode`` on a fallback)
    cond_frames: int = 0  # clean pixel frames (1 for i2v)
    num_cond_latents: int = 0

    @property
    def fallback(self) -> bool:
        return self.mode != self.drawn


T2V = SampleConditioning("t2v", "t2v")


def resolve(mode: str, cond_frames: int, latent_frames: int, temporal_stride: int) -> SampleConditioning:
    """The conditioning of a sample drawn as ``mode``; t2v when the clip is too short."""
    if mode == "t2v":
        return T2V
    frames = 1 if mode == "i2v" else cond_frames
    k = 1 + (frames - 1) // temporal_stride  # the VAE packs frame 0 alone, then groups of stride
    if k >= latent_frames:
        return SampleConditioning("t2v", mode, 0, 0)
    return SampleConditioning(mode, mode, frames, k)


def draw_conditioning(
    mix: ConditioningMix, count: int, *, latent_frames: int, temporal_stride: int, generator: torch.Generator
) -> list[SampleConditioning]:
    """Modes of ``count`` samples of ``latent_frames`` latent frames each.

    Two uniforms per sample (mode, continuation length) are drawn whenever the mix has a
    choice, whatever the outcome, so the generator advances the same way every step.
    """
    probabilities = mix.probabilities
    if mix.deterministic:
        mode = next(m for m in MODES if probabilities[m] > 0)
        return [resolve(mode, mix.vc_cond_frames[0], latent_frames, temporal_stride)] * count
    draws = torch.rand(count, 2, generator=generator, dtype=torch.float64).tolist()
    edges, total = [], 0.0
    for mode in MODES:
        total += probabilities[mode]
        edges.append((total, mode))
    lengths = mix.vc_cond_frames
    out = []
    for u_mode, u_length in draws:
        # The last mode with non-zero probability catches rounding of the sum.
        mode = next((m for edge, m in edges if u_mode < edge and probabilities[m] > 0), None)
        mode = mode or next(m for m in reversed(MODES) if probabilities[m] > 0)
        cond_frames = lengths[min(int(u_length * len(lengths)), len(lengths) - 1)]
        out.append(resolve(mode, cond_frames, latent_frames, temporal_stride))
    return out


def fallback_counts(mix: ConditioningMix, latent_frames: Iterable[int], temporal_stride: int) -> Counter:
    """Per mode choice (``"i2v"``, ``"vc13"``...), how many of the given clips are too short for
    it and train as text-to-video when it is drawn (the data report's column)."""
    choices = []
    if mix.i2v > 0:
        choices.append(("i2v", "i2v", 1))
    choices += [(f"vc{frames}", "vc", frames) for frames in mix.cond_frames_used]
    counts: Counter = Counter()
    for t in latent_frames:
        for name, mode, frames in choices:
            if resolve(mode, frames, t, temporal_stride).fallback:
                counts[name] += 1
    return counts


def split_by_cond_latents(plan: list[SampleConditioning]) -> list[tuple[int, list[int]]]:
    """``(num_cond_latents, rows)`` groups in order of first appearance: the DiT takes one
    ``num_cond_latents`` per forward (it decides which tokens attend to what), so a batch
    that mixes them runs one forward per group."""
    groups: dict[int, list[int]] = {}
    for row, item in enumerate(plan):
        groups.setdefault(item.num_cond_latents, []).append(row)
    return list(groups.items())
