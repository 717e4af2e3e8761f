"""Model-family registry: the one place that maps ``model_family`` to its implementation.

Entries are light (no torch import) so the config validator, the CLI and the web UI can
list families, flavours and defaults cheaply; :func:`load_spec` imports the family's
:class:`~frametuner.models.family.ModelFamily` (the heavy part) on demand. A family
registers itself from its own torch-free ``models/<family>/info.py``; adding a family =
that module, listed in ``FAMILY_MODULES``, plus its ``ModelFamily`` subclass
(docs/adding_a_family.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .spec import LatentGeometry, frame_count_problem, valid_frame_count

# Torch-free modules that each call register_family() for one family.
FAMILY_MODULES = ("frametuner.models.longcat_video.info", "frametuner.models.wan.info")


@dataclass(frozen=True)
class FlavourInfo:
    name: str
    description: str
    hub_id: str | None = None  # None: built locally (the tiny flavour)
    # Samples only from an input image (its conditioning): a validation prompt alone cannot be rendered.
    image_conditioned: bool = False


@dataclass(frozen=True)
class FamilyDefaults:
    """A family's numbers that config validation, the CLI and the web UI need without torch."""

    frames: int  # default video length (frames)
    fps: int  # frame rate of the model's videos
    height: int
    width: int
    steps: int  # sampling steps
    guidance: float  # classifier-free guidance scale (1 = off)
    shift: float  # sigma shift of the sampling schedule
    training_shift: float  # sigma shift of the training timestep draw
    text_length: int  # tokens the text encoder pads prompts to
    bucket_alignment: int = 64  # default pixel grid of training buckets
    distill_steps: int | None = None  # a distilled sampling mode's steps/guidance (None: no such mode)
    distill_guidance: float | None = None

    @property
    def resolution(self) -> str:
        return f"{self.height}x{self.width}"


@dataclass(frozen=True)
class ContinuationInfo:
    """How a family continues a video: the last frames of a video, VAE-encoded, become the
    clean leading latent frames of the next clip (``frametuner sample --video/--segments``)."""

    cond_frames: int  # default conditioning frames (a valid frame count: 1 + frame_stride * k)
    # denoise() options a continuation runs with (True: on unless turned off by a ``--no_<name>`` style flag)
    sampler_options: dict[str, bool] = field(default_factory=dict)
    # of those, the ones the distilled schedule cannot run with (turned off under ``--distill``)
    not_with_distill: tuple[str, ...] = ()
    # of those, the ones turned on when the memory options keep weights in host memory
    with_offloaded_weights: tuple[str, ...] = ()


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    description: str
    spec: str  # "module:attribute" of the ModelFamily class
    defaults: FamilyDefaults
    flavours: dict[str, FlavourInfo] = field(default_factory=dict)
    default_flavour: str = ""
    # "module:Class" of the denoiser(s), so a model's family is found without importing every family
    transformer_classes: tuple[str, ...] = ()
    display_name: str = ""  # for the CLI/web UI ("LongCat-Video")
    lora_formats: tuple[str, ...] = ("peft",)  # LoRA export formats the family writes (config choices)
    geometry: LatentGeometry | None = None  # channels, VAE stride, patch: the frame and size rules
    continuation: ContinuationInfo | None = None  # None: the family cannot continue videos
    # Trains image-to-video samples without clean frames (through ModelFamily.training_conditioning:
    # an image-to-video flavour's own inputs), so an i2v conditioning mix is allowed without continuation.
    image_to_video_training: bool = False

    @property
    def frame_stride(self) -> int:
        """Temporal VAE stride: valid frame counts are ``1 + frame_stride * k``."""
        return self.geometry.vae_stride[0]

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this (spatial VAE stride x patch)."""
        return self.geometry.vae_stride[1] * self.geometry.patch_size[1]

    def valid_frames(self, frames: int) -> bool:
        return valid_frame_count(frames, self.frame_stride)

    def check_frames(self, frames: int) -> int:
        """``frames`` if it is a valid count, else ValueError naming the two nearest valid ones."""
        problem = frame_count_problem(frames, self.frame_stride)
        if problem is not None:
            raise ValueError(f"{problem[0]}; {problem[1]}")
        return frames

    def check_size(self, height: int, width: int, text: str | None = None) -> tuple[int, int]:
        multiple = self.pixel_multiple
        bad = [str(v) for v in (height, width) if v <= 0 or v % multiple]
        if bad:
            text = text if text is not None else f"{height}x{width}"
            raise ValueError(
                f"{text!r}: height and width must be positive multiples of {multiple} "
                f"(VAE stride {self.geometry.vae_stride[1]} x patch {self.geometry.patch_size[1]}); "
                f"{', '.join(bad)} is not; try '{max(multiple, round(height / multiple) * multiple)}x{max(multiple, round(width / multiple) * multiple)}'"
            )
        return height, width


_FAMILIES: dict[str, FamilyInfo] = {}
_SPECS: dict[str, object] = {}
_LOADED = False


def register_family(info: FamilyInfo) -> None:
    _FAMILIES[info.name] = info


def _ensure_registered() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for module in FAMILY_MODULES:
            importlib.import_module(module)


def families() -> dict[str, FamilyInfo]:
    _ensure_registered()
    return dict(_FAMILIES)


def family_info(name: str) -> FamilyInfo:
    _ensure_registered()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model_family {name!r}; available: {sorted(_FAMILIES)}") from None


def family_defaults(name: str) -> FamilyDefaults:
    return family_info(name).defaults


def family_for_class(cls: type) -> str:
    """The registered family whose denoiser class ``cls`` is (or derives from)."""
    _ensure_registered()
    names = {f"{base.__module__}:{base.__qualname__}" for base in cls.__mro__}
    for info in _FAMILIES.values():
        if names.intersection(info.transformer_classes):
            return info.name
    raise KeyError(f"{cls.__name__} is not the denoiser of a registered model family ({', '.join(sorted(_FAMILIES))})")


def load_spec(name: str):
    """The family's :class:`~frametuner.models.family.ModelFamily` instance (imports torch and the model code)."""
    if name not in _SPECS:
        module_name, attribute = family_info(name).spec.split(":")
        _SPECS[name] = getattr(importlib.import_module(module_name), attribute)()
    return _SPECS[name]


load_family = load_spec
