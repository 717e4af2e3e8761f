"""The model-family seam: everything the rest of frametuner may ask a model family.

A family (``models/<family>/``) subclasses :class:`ModelFamily` and registers a light
:class:`~frametuner.models.registry.FamilyInfo` (names, flavours, defaults; no torch).
The trainer, sampler, caches, memory tools, LoRA code and server only call what is
declared here; none of them tests which family it runs. finetrainers'
``ModelSpecification`` is the model for this seam; the differences:

- the training forward is split in two calls, :meth:`ModelFamily.training_inputs` (what
  the DiT sees and what it is trained toward, per sample) and
  :meth:`ModelFamily.training_forward` (the call itself), so the trainer draws the
  randomness and computes the loss itself and a test can check every input;
- sampling is a :class:`SamplingLoop` the family builds per call (its schedule, its
  guidance, its step), so :func:`frametuner.sampling.denoise` is one loop for all;
- the block protocol (:class:`BlockModel`) is declared, because memory tools (block
  swap, activation offload, checkpointing) and FSDP act on blocks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import torch
import torch.nn as nn

from .spec import LatentGeometry, LoraLayout

if TYPE_CHECKING:
    from .registry import FamilyDefaults, FamilyInfo


# ---------------------------------------------------------------------- block protocol
@runtime_checkable
class BlockModel(Protocol):
    """What memory tools (block swap, offload, activation offload) and FSDP need of a denoiser.

    The forward must run every block as ``self._run_block(index, block, *args)``: memory
    tools replace ``_run_block`` on the instance (``frametuner.memory.BlockRunner``) to act
    at block boundaries in the forward and the backward.
    """

    blocks: nn.ModuleList

    def _run_block(self, index: int, block: nn.Module, *args: Any) -> torch.Tensor: ...

    def enable_gradient_checkpointing(self, policy: str = "full", budget_bytes: int | None = None) -> None: ...

    def disable_gradient_checkpointing(self) -> None: ...

    def compile_blocks(self, **compile_kwargs: Any) -> None: ...


# ---------------------------------------------------------------------- training
@dataclass
class TrainingInputs:
    """One training micro-batch as the denoiser sees it, and what it is trained toward.

    ``num_cond_latents`` is per sample (``[B]`` int64): the first K latent frames of a
    sample are clean conditioning (timestep 0, left out of the loss), K = 0 for t2v.
    """

    noisy_latents: torch.Tensor  # [B, C, T, H, W] float32
    timesteps: torch.Tensor  # [B, T] in the denoiser's units, 0 on conditioning frames
    target: torch.Tensor  # [B, C, T, H, W] float32, the family's objective
    loss_mask: torch.Tensor  # [B, 1, T, 1, 1] float32: 1 on frames that count in the loss
    num_cond_latents: torch.Tensor  # [B] int64
    conditioning: dict[str, Any] = field(default_factory=dict)  # family extras (e.g. image embeddings)
    # Set by the trainer for a batch that mixes K: the most distinct Ks any rank holds. A family
    # that calls its denoiser once per K makes this many calls on every rank (the extra ones with
    # weight 0), so that the ranks' collectives (FSDP gathers per call) stay in step.
    forward_calls: int | None = None


def per_sample_cond(num_cond_latents: int | torch.Tensor, batch: int, frames: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``num_cond_latents`` as ``[B]`` int64 (an int applies to every sample); checks 0 <= K < T."""
    if isinstance(num_cond_latents, torch.Tensor):
        k = num_cond_latents.to(device=device, dtype=torch.int64).reshape(-1)
        if k.numel() == 1 and batch != 1:
            k = k.expand(batch).clone()
    else:
        k = torch.full((batch,), int(num_cond_latents), dtype=torch.int64, device=device)
    if k.numel() != batch:
        raise ValueError(f"num_cond_latents has {k.numel()} entries for a batch of {batch}")
    if bool((k < 0).any()) or bool((k >= frames).any()):
        raise ValueError(f"num_cond_latents {k.tolist()} must leave at least one of the {frames} latent frames noisy")
    return k


def frame_mask(num_cond_latents: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, T]`` float32: 1 on noisy frames, 0 on each sample's first K (conditioning) frames."""
    index = torch.arange(frames, device=num_cond_latents.device)
    return (index[None, :] >= num_cond_latents[:, None]).to(torch.float32)


@dataclass(frozen=True)
class TrainingConditioning:
    """Per-sample inputs a family's denoiser trains with beyond latents and text (e.g. an
    image-to-video model's image features), cached like the latents (``cache/``).

    ``identity`` keys the cache entries (the encoders' weights, dtype and settings);
    ``names`` are the tensors of one entry; ``load(device=, dtype=)`` returns the encoder:
    ``encode(image uint8 [1, H, W, 3], frames) -> {name: tensor}`` (one sample, no batch
    axis; ``image`` is the sample's conditioning image, else its clip's first frame),
    ``to(device)``, ``unload()``. A batch hands them to the family as
    ``TrainingInputs.conditioning[name]`` (stacked ``[B, ...]``). The same names are the
    keys its sampling loop takes as ``DenoiseSettings.conditioning`` (batched ``[1, ...]``):
    validation renders each eval clip from its entry, and refuses validation prompts that
    come without one (a family returning this samples only with it).
    """

    identity: str
    names: tuple[str, ...]
    load: Callable[..., Any]


# ---------------------------------------------------------------------- sampling
@dataclass
class TextConditioning:
    """Prompt (and negative prompt) embeddings for a batch of B latents, already broadcast to B."""

    prompt_embeds: torch.Tensor  # [B, L, C]
    prompt_mask: torch.Tensor  # [B, L]
    negative_embeds: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None


@dataclass
class DenoiseSettings:
    """Everything a sampling run is configured with (one object instead of a keyword list).

    ``shift``/``steps``/``guidance`` None mean the family's defaults. ``options`` holds
    family keywords (passed to ``denoise`` by name, e.g. ``use_kv_cache``); a family
    refuses keywords it does not know. ``conditioning`` holds family inputs beyond text
    and latents (e.g. image embeddings for an image-conditioned family).
    """

    steps: int | None = None
    guidance: float | None = None
    shift: float | None = None
    num_cond_latents: int = 0
    distill: bool = False
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    conditioning: dict[str, Any] = field(default_factory=dict)

    def resolved(self, defaults: "FamilyDefaults") -> "DenoiseSettings":
        """A copy with unset steps/guidance/shift taken from the family (distilled defaults when ``distill``)."""
        steps = self.steps
        guidance = self.guidance
        if steps is None:
            steps = defaults.distill_steps if self.distill and defaults.distill_steps else defaults.steps
        if guidance is None:
            guidance = defaults.distill_guidance if self.distill and defaults.distill_guidance is not None else defaults.guidance
        shift = defaults.shift if self.shift is None else self.shift
        return DenoiseSettings(steps, guidance, shift, self.num_cond_latents, self.distill, self.progress, dict(self.options), dict(self.conditioning))


@runtime_checkable
class SamplingLoop(Protocol):
    """One sampling run, built by :meth:`ModelFamily.sampling_loop`.

    ``frametuner.sampling.denoise`` runs ``for i in range(len(loop.timesteps)):
    latents = loop.step(latents, loop.predict(latents, i), i)`` and returns the latents.
    ``latents`` are float32 and owned by the loop run (``step`` may update them in place).
    """

    timesteps: torch.Tensor  # [N]: one entry per denoiser evaluation (per step)

    def predict(self, latents: torch.Tensor, index: int) -> torch.Tensor: ...

    def step(self, latents: torch.Tensor, prediction: torch.Tensor, index: int) -> torch.Tensor: ...


# ---------------------------------------------------------------------- the family
class ModelFamily(ABC):
    """A model family: its facts, its components, its objective and its sampler."""

    name: str  # the registry key (``model_family`` in configs)
    geometry: LatentGeometry
    transformer_class: type | None = None  # ``family_of(model)`` matches instances of it
    shard_units: tuple[str, ...] = ()  # class names FSDP2 wraps as units (one per block)
    default_lora_targets: tuple[str, ...] = ()
    # Name prefixes, inside a block, of the feed-forward Linears (``fp8_compute_layers: ffn``).
    feedforward_layers: tuple[str, ...] = ()
    # ... and of the cross-attention (to text) Linears (``fp8_compute_layers: all_but_cross``
    # keeps them bf16: in float8 they carried most of the DiT output's error, bench/RESULTS.md).
    cross_attention_layers: tuple[str, ...] = ()
    optional_lora_targets: tuple[str, ...] = ()
    lora_layout: LoraLayout | None = None
    # Component -> subfolder of the checkpoint layout ("transformer" is the denoiser's).
    subfolders: dict[str, str] = {}

    # ------------------------------------------------------------------ facts
    @property
    def info(self) -> "FamilyInfo":
        from .registry import family_info

        return family_info(self.name)

    @property
    def defaults(self) -> "FamilyDefaults":
        return self.info.defaults

    def valid_frame_count(self, frames: int) -> bool:
        return self.info.valid_frames(frames)

    def encoder_dtype(self, mixed_precision: str) -> torch.dtype:
        """Dtype the encoders run in while caching: bfloat16, or float32 when training in
        full precision (never float16: T5-family encoders overflow in it)."""
        return torch.float32 if mixed_precision == "no" else torch.bfloat16

    # ------------------------------------------------------------------ loading
    @abstractmethod
    def checkpoint_root(self, flavour: str, pretrained_model_name_or_path: str | None) -> str | Path:
        """Local folder (or hub id) holding the family's checkpoint layout."""

    @abstractmethod
    def load_transformer(
        self, root: str | Path, *, dtype: torch.dtype, device: str | torch.device = "cpu", prepare_block: Callable[[Any], None] | None = None
    ) -> BlockModel:
        """The denoiser, loaded shard by shard and cast while loading.

        ``prepare_block`` (optional): called on each block right after its weights are read
        (quantisation while loading); it places the block. See ``models/loading.py``.
        """

    @abstractmethod
    def build_transformer(self, *, flavour: str = "final", device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16) -> BlockModel:
        """The denoiser for a flavour with random weights (for benchmarks and tests)."""

    def is_norm_weight(self, name: str, param: torch.Tensor) -> bool:
        """Whether a parameter is a normalisation layer's scale (random models set it to 1)."""
        return param.dim() == 1 and name.endswith("norm.weight")

    @torch.no_grad()
    def initialise_random(self, model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
        """Random weights in place, on the model's device, for benchmarks at full size: weights
        ~ N(0, 0.02) from a seeded generator, biases 0, norm scales 1 (numerically tame)."""
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        for name, param in model.named_parameters():
            if self.is_norm_weight(name, param):
                param.fill_(1.0)
            elif param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=generator)
            else:
                param.zero_()
        return model

    @abstractmethod
    def load_text_encoder(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        """The text encoder + tokenizer: ``encode(prompts) -> (embeddings [B, L, C], mask [B, L] int64)``, ``identity``."""

    @abstractmethod
    def load_vae(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        """The video autoencoder: ``encode(uint8 [F, H, W, 3]) -> normalised latents [C, T, h, w]``, ``decode``, ``identity``."""

    @abstractmethod
    def text_encoder_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        """The text encoder's ``identity`` without loading its weights (the text cache key)."""

    @abstractmethod
    def vae_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        """The VAE's ``identity`` without loading its weights (the latent cache key)."""

    def load_image_encoder(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any | None:
        """An image encoder for image conditioning (``encode(uint8 [1, H, W, 3]) -> embeddings``), or None."""
        return None

    def image_encoder_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str | None:
        """The image encoder's cache key, or None when the family has none."""
        return None

    def training_conditioning(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> TrainingConditioning | None:
        """What the denoiser of ``root`` needs per training sample beyond latents and text
        (cached; see :class:`TrainingConditioning`), or None (the default: nothing)."""
        return None

    @torch.no_grad()
    def image_conditioning(
        self, root: str | Path, vae: Any, image: torch.Tensor, latents: torch.Tensor, *, frames: int,
        device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
    ) -> tuple[int, dict[str, Any]]:
        """Image-to-video from uint8 ``image [1, H, W, 3]``: edit ``latents [1, C, T, h, w]``
        (float32) in place and/or return sampler conditioning; returns ``(num_cond_latents,
        conditioning)`` for :func:`frametuner.sampling.denoise`.

        Default: the image's latent is the first latent frame, clean (a family whose
        denoiser reads the image another way overrides this).
        """
        cond = vae.encode(image)  # [C, 1, h, w]
        latents[0, :, : cond.shape[1]] = cond.to(latents)
        return cond.shape[1], {}

    def configure_attention(self, model: Any, config: Any) -> None:
        """Apply ``attention_implementation`` and the family's attention keys to a loaded denoiser."""

    def tag_model(self, model: Any) -> Any:
        """Mark a denoiser as this family's (``family_of`` finds it even through wrappers)."""
        try:
            model.frametuner_family = self.name
        except AttributeError:
            pass
        return model

    # ------------------------------------------------------------------ training
    @abstractmethod
    def training_inputs(
        self, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, num_cond_latents: int | torch.Tensor = 0
    ) -> TrainingInputs:
        """Noise clean latents ``x0`` to level ``sigmas [B]`` (in [0, 1]); the first
        ``num_cond_latents`` frames of each sample stay clean at timestep 0."""

    @abstractmethod
    def training_forward(self, model: Any, inputs: TrainingInputs, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction ``[B, C, T, H, W]`` for ``inputs`` (compared with ``inputs.target``)."""

    # ------------------------------------------------------------------ sampling
    def sampling_problems(self, settings: DenoiseSettings) -> list[str]:
        """What is wrong with (resolved) sampling settings for this family, one line each; [] when fine."""
        if settings.distill and self.defaults.distill_steps is None:
            return [f"{self.name} has no distilled sampling mode"]
        return []

    @abstractmethod
    def sampling_loop(self, model: Any, latents: torch.Tensor, text: TextConditioning, settings: DenoiseSettings) -> SamplingLoop:
        """A sampling run over float32 ``latents`` (conditioning frames already written in).

        ``settings`` arrives resolved (steps, guidance and shift set).
        """


def unwrap_model(model: Any) -> Any:
    """The denoiser under PEFT, DDP/FSDP (``.module``) and ``torch.compile`` wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        get_base_model = getattr(model, "get_base_model", None)
        if callable(get_base_model):
            model = get_base_model()
            continue
        for attribute in ("_orig_mod", "module"):
            inner = getattr(model, attribute, None) if isinstance(model, nn.Module) else None
            if isinstance(inner, nn.Module):
                model = inner
                break
    return model


def family_of(model: Any) -> ModelFamily:
    """The family a denoiser belongs to: its ``frametuner_family`` tag, else its class."""
    from .registry import family_for_class, load_spec

    model = unwrap_model(model)
    name = getattr(model, "frametuner_family", None)
    if not isinstance(name, str):
        name = family_for_class(type(model))
    return load_spec(name)
