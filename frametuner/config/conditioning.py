"""The conditioning mix: how often a training sample is trained as text-to-video,
image-to-video or video continuation (``"conditioning"`` in the config and per dataset).

Only the configuration lives here (no torch): the typed mix, its checks against a
dataset's frame counts, and which mix a dataset trains with. The per-sample draw is
:mod:`frametuner.training.conditioning`; docs/conditioning.md explains when to use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..models.spec import frame_count_problem

if TYPE_CHECKING:
    from .dataset import DatasetConfig
    from .schema import TrainConfig

MODES = ("t2v", "i2v", "vc")
Mode = Literal["t2v", "i2v", "vc"]
SUM_TOLERANCE = 1e-6


class ConditioningMix(BaseModel):
    """Probabilities of the three training modes (they sum to 1) and the continuation lengths.

    ``t2v``: every latent frame noised. ``i2v``: latent frame 0 clean (the dataset's
    conditioning image, else the clip's own first frame). ``vc``: the first
    ``1 + (cond_frames - 1) // stride`` latent frames of the clip clean, with ``cond_frames``
    drawn uniformly from ``vc_cond_frames``. Clean frames get timestep 0 and no loss.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    t2v: float = Field(0.0, ge=0.0, le=1.0, description="Probability of training a sample as text-to-video (all frames noised)")
    i2v: float = Field(0.0, ge=0.0, le=1.0, description="Probability of image-to-video: latent frame 0 clean (conditioning image, else the clip's first frame)")
    vc: float = Field(0.0, ge=0.0, le=1.0, description="Probability of video continuation: the clip's first latent frames clean")
    vc_cond_frames: list[int] = Field(
        [13], min_length=1, description="Continuation: clean pixel frames, one drawn uniformly per sample (4k+1, below the clip length; upstream uses 13)"
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> "ConditioningMix":
        total = self.t2v + self.i2v + self.vc
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise ValueError(
                f"t2v + i2v + vc is {total:g}, not 1; write probabilities that sum to 1, e.g. {{\"t2v\": 0.5, \"i2v\": 0.2, \"vc\": 0.3}}"
            )
        if any(frames < 1 for frames in self.vc_cond_frames):
            raise ValueError(f"vc_cond_frames {self.vc_cond_frames}: every entry must be at least 1 frame")
        if len(set(self.vc_cond_frames)) != len(self.vc_cond_frames):
            raise ValueError(f"vc_cond_frames {self.vc_cond_frames} repeats an entry; list each length once")
        return self

    @classmethod
    def only(cls, mode: Mode) -> "ConditioningMix":
        return cls(**{mode: 1.0})

    @property
    def probabilities(self) -> dict[str, float]:
        return {mode: getattr(self, mode) for mode in MODES}

    @property
    def deterministic(self) -> bool:
        """One mode with probability 1 and (for vc) one length: nothing to draw."""
        used = [mode for mode, p in self.probabilities.items() if p > 0]
        return len(used) == 1 and (used[0] != "vc" or len(self.vc_cond_frames) == 1)

    @property
    def cond_frames_used(self) -> list[int]:
        """The continuation lengths a draw can pick (none when vc is never drawn)."""
        return list(self.vc_cond_frames) if self.vc > 0 else []

    def describe(self) -> str:
        """``t2v 0.5 / i2v 0.2 / vc 0.3 (13 frames)`` for tables and logs."""
        parts = [f"{mode} {p:g}" for mode, p in self.probabilities.items() if p > 0]
        text = " / ".join(parts)
        if self.vc > 0:
            text += f" ({', '.join(str(f) for f in self.vc_cond_frames)} frames)"
        return text


def frame_problems(mix: ConditioningMix, num_frames: int, stride: int) -> list[tuple[str, str]]:
    """(message, fix) for each continuation length the VAE cannot pack (``1 + stride*k``) or
    that leaves no frame to denoise in a ``num_frames`` sample (the dataset's longest)."""
    problems = []
    for frames in mix.cond_frames_used:
        problem = frame_count_problem(frames, stride, unit="")
        if problem is not None:
            problems.append((f"vc_cond_frames: {problem[0]}", problem[1]))
        elif frames >= num_frames:
            problems.append((
                f"vc_cond_frames: {frames} leaves no frame to train in {num_frames}-frame samples",
                f"use at most {num_frames - stride} (continuation needs at least one noised latent frame)",
            ))
    return problems


def dataset_mix(dataset: "DatasetConfig", config: "TrainConfig") -> ConditioningMix:
    """The mix a dataset trains with.

    Its own ``conditioning`` first; an image dataset is text-to-video (a still has no
    frame after the first); an ``is_i2v`` dataset without its own mix trains image-to-video
    only (as before the mix existed); then the config's ``conditioning``; else text-to-video.
    """
    own = getattr(dataset, "conditioning", None)
    if own is not None:
        return own
    if dataset.dataset_type == "image":
        return ConditioningMix.only("t2v")
    if dataset.is_i2v:
        return ConditioningMix.only("i2v")
    if config.conditioning is not None:
        return config.conditioning
    return ConditioningMix.only("t2v")


def clean_frame_conditioning(family: str) -> bool:
    """Whether the family conditions on clean leading latent frames (i2v frame 0, continuation):
    the registry's ``FamilyInfo.continuation`` (None: it cannot)."""
    from ..models import registry

    return registry.family_info(family).continuation is not None


def dataset_problems(dataset: "DatasetConfig", config: "TrainConfig", stride: int) -> list[tuple[str, str, str, str]]:
    """(config field, key, message, fix) for the mix ``dataset`` trains with.

    A dataset's own mix is reported on its ``conditioning`` key; the config's default on
    the top-level ``conditioning`` field, naming the dataset it does not fit.
    """
    own = getattr(dataset, "conditioning", None)
    if dataset.dataset_type == "image":
        if own is not None and own.probabilities["t2v"] < 1.0:
            return [("data_backend_config", "conditioning", "an image dataset trains text-to-video only (a still has no frame after the first)",
                     "remove 'conditioning' from this dataset, or use {\"t2v\": 1.0}")]
        return []
    mix = dataset_mix(dataset, config)
    num_frames = dataset.video.num_frames
    problems = []
    explicit = own is not None or (config.conditioning is not None and not dataset.is_i2v)
    from ..models import registry

    i2v_otherwise = registry.family_info(config.model_family).image_to_video_training
    if explicit and (mix.vc > 0 or (mix.i2v > 0 and not i2v_otherwise)) and not clean_frame_conditioning(config.model_family):
        where = "data_backend_config" if own is not None else "conditioning"
        return [(where, "conditioning", f"{config.model_family} has no clean-frame conditioning (i2v frame 0 / continuation) to train",
                 "use {\"t2v\": 1.0}, or a model family that can continue videos (see `frametuner models`)")]
    for message, fix in frame_problems(mix, num_frames, stride):
        if own is not None:
            problems.append(("data_backend_config", "conditioning.vc_cond_frames", message, fix))
        else:
            problems.append(("conditioning", "conditioning.vc_cond_frames", f"{message} (dataset '{dataset.id}')", fix))
    if mix.i2v > 0 and num_frames < 1 + stride:
        where = "data_backend_config" if own is not None else "conditioning"
        problems.append((where, "conditioning.i2v", f"i2v needs at least {1 + stride} frames per sample, '{dataset.id}' has {num_frames}",
                         "raise video.num_frames or set i2v to 0"))
    return problems
