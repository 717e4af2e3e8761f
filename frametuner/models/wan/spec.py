"""Wan 2.1 as a model family: everything frametuner needs to know about it, in one place.

Facts without torch (defaults, flavours) are in ``info.py``; DiT sizes in ``configs.py``;
the sampler in ``sampling.py``; image-to-video conditioning in ``conditioning.py``.

Objective (Wan's, as diffusers' pipeline and Wan's own code sample it): ``x_s = (1 - s) x0
+ s noise`` with ``s`` shifted by ``k s / (1 + (k - 1) s)`` (k = 3), the DiT called at
timestep ``1000 s`` and trained toward the velocity ``noise - x0``. The text goes in
zero-padded to 512 tokens, without a mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..components import resolve_component
from ..encoders.family_mixin import UMT5WanVAEEncoders
from ..family import DenoiseSettings, ModelFamily, TextConditioning, TrainingConditioning, TrainingInputs, per_sample_cond
from ..loading import load_blockwise
from .configs import DIT_CONFIGS
from .info import INFO
from .lora_layout import DEFAULT_LORA_TARGETS, LORA_LAYOUT, OPTIONAL_LORA_TARGETS
from .sampling import WanSamplingLoop, pad_text
from .transformer import WanTransformer

NUM_TRAIN_TIMESTEPS = 1000


def keep_fp32_modules(model: torch.nn.Module) -> torch.nn.Module:
    """Float32 for the layers diffusers keeps in float32 whatever the load dtype
    (``_keep_in_fp32_modules``: RoPE tables, time embedder, modulation tables, norms), as
    ``from_pretrained(torch_dtype=bf16)`` does; every other path (blockwise loading,
    random builds) ends in the same dtypes."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if any(part in keep for part in name.split(".")):
            torch.nn.Module.to(module, dtype=torch.float32)
    for name, param in model.named_parameters():
        if name.split(".")[-1] in keep and param.is_floating_point():
            param.data = param.data.float()
    return model


class WanSpec(UMT5WanVAEEncoders, ModelFamily):
    name = INFO.name
    geometry = INFO.geometry
    default_lora_targets = DEFAULT_LORA_TARGETS
    optional_lora_targets = OPTIONAL_LORA_TARGETS
    lora_layout = LORA_LAYOUT
    transformer_class = WanTransformer
    shard_units = ("WanTransformerBlock",)
    feedforward_layers = ("ffn.",)  # diffusers' FeedForward: net.0.proj, net.2
    cross_attention_layers = ("attn2.",)  # to_q, to_k, to_v, to_out; i2v's add_k_proj, add_v_proj
    subfolders = {
        "transformer": "transformer",
        "text_encoder": "text_encoder",
        "tokenizer": "tokenizer",
        "vae": "vae",
        "scheduler": "scheduler",
        "image_encoder": "image_encoder",
        "image_processor": "image_processor",
    }

    # ------------------------------------------------------------------ loading
    def checkpoint_root(self, flavour: str, pretrained_model_name_or_path: str | None) -> str | Path:
        if pretrained_model_name_or_path:
            return pretrained_model_name_or_path
        info = self.info.flavours[flavour]
        if info.hub_id is None:
            from .tiny import ensure_tiny_checkpoint

            return ensure_tiny_checkpoint(flavour)
        return info.hub_id

    def load_transformer(
        self,
        root: str | Path,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        prepare_block: Callable[[torch.nn.Module], None] | None = None,
    ) -> WanTransformer:
        """``<root>/transformer`` as :class:`WanTransformer`; with ``prepare_block``
        (quantisation) block by block, so the whole model never exists in ``dtype``."""
        if prepare_block is not None:
            folder = resolve_component(root, self.subfolders["transformer"])
            model = load_blockwise(WanTransformer, folder, dtype=dtype, device=device, prepare_block=prepare_block)
            keep_fp32_modules(model)
            _reset_rope(model, device)
        else:
            model = WanTransformer.from_pretrained(root, subfolder=self.subfolders["transformer"], torch_dtype=dtype, low_cpu_mem_usage=True)
            model = model.to(device)
        return self.tag_model(model.eval())

    def build_transformer(self, *, flavour: str = "t2v-14b", device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16) -> WanTransformer:
        """Random-weight DiT of a flavour, materialised directly on ``device`` in ``dtype``.

        Built on the meta device first, so a 14B bf16 model on a GPU never exists in float32
        or on the CPU. Weights ~ N(0, 0.02), biases 0, norm weights 1. ``tiny`` and
        ``tiny-i2v`` give the seeded tiny models (the tiny checkpoints' weights).
        """
        if flavour in ("tiny", "tiny-i2v"):
            from .tiny import build_tiny_transformer

            model = build_tiny_transformer(flavour, model_class=WanTransformer)
            model = keep_fp32_modules(torch.nn.Module.to(model, device=device, dtype=dtype))
            return self.tag_model(model)
        with torch.device("meta"):
            model = WanTransformer(**DIT_CONFIGS[flavour])
        self.tag_model(model)
        model = keep_fp32_modules(torch.nn.Module.to(model, dtype=dtype))
        if torch.device(device).type == "meta":
            return model
        model = self.initialise_random(model.to_empty(device=device))
        _reset_rope(model, device)
        return model

    def is_norm_weight(self, name: str, param: torch.Tensor) -> bool:
        """diffusers' Wan names its RMSNorm / affine LayerNorm scales ``...norm*.weight``."""
        return name.endswith(".weight") and param.dim() == 1 and name.split(".")[-2].startswith("norm")

    # ------------------------------------------------------------------ encoders
    def _has_image_encoder(self, root: str | Path) -> bool:
        local = Path(root).expanduser()
        if local.exists():
            return (local / self.subfolders["image_encoder"]).is_dir()
        return "I2V" in str(root)

    def load_image_encoder(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        """CLIP ViT-H/14 (``image_encoder/`` + ``image_processor/``) of an image-to-video checkpoint; None for text-to-video."""
        if not self._has_image_encoder(root):
            return None
        from .conditioning import ImageEncoder

        return ImageEncoder.from_pretrained(
            root, device=device, dtype=dtype,
            encoder_subfolder=self.subfolders["image_encoder"], processor_subfolder=self.subfolders["image_processor"],
        )

    def image_encoder_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str | None:
        if not self._has_image_encoder(root):
            return None
        from .conditioning import image_encoder_identity

        return image_encoder_identity(
            resolve_component(root, self.subfolders["image_encoder"]), resolve_component(root, self.subfolders["image_processor"]), dtype=dtype
        )

    def training_conditioning(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> TrainingConditioning | None:
        """An image-to-video checkpoint trains with, per sample, the condition tensor (mask +
        VAE latents of ``[image, grey...]``) and the image's CLIP features, cached once
        (:class:`.conditioning.TrainingConditioner`); a text-to-video one needs nothing."""
        clip = self.image_encoder_identity(root, dtype=dtype)
        if clip is None:
            return None
        from .conditioning import TrainingConditioner

        identity = f"wan-i2v-condition/1|{self.vae_identity(root, dtype=dtype)}|{clip}"

        def load(*, device: str | torch.device = "cpu", dtype: torch.dtype = dtype) -> TrainingConditioner:
            vae = self.load_vae(root, device=device, dtype=dtype)
            try:
                encoder = self.load_image_encoder(root, device=device, dtype=dtype)
            except BaseException:
                vae.unload()
                raise
            return TrainingConditioner(vae, encoder, identity=identity)

        return TrainingConditioning(identity=identity, names=TrainingConditioner.names, load=load)

    def image_conditioning(self, root, vae, image: torch.Tensor, latents: torch.Tensor, *, frames: int, device=None, dtype: torch.dtype = torch.float32):
        """Image-to-video as ``WanImageToVideoPipeline``: the latents stay noise; the DiT gets the
        mask + condition latents as extra channels and the image's CLIP features
        (:mod:`.conditioning`). Returns ``(num_cond_latents = 0, conditioning)``."""
        from .conditioning import condition_latents

        encoder = self.load_image_encoder(root, device=device or "cpu", dtype=dtype)
        if encoder is None:
            raise ValueError(f"{root} is a text-to-video checkpoint (no image_encoder/): image-to-video needs an I2V flavour")
        try:
            image_embeds = encoder.encode(image)
        finally:
            encoder.unload()
        return 0, {"condition": condition_latents(vae, image, frames), "image_embeds": image_embeds}

    # ------------------------------------------------------------------ training
    def training_inputs(self, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, num_cond_latents: int | torch.Tensor = 0) -> TrainingInputs:
        """``x_s = (1 - s) x0 + s noise`` on every frame, timestep ``1000 s`` (one per sample),
        target the velocity ``noise - x0``, every frame in the loss.

        Wan 2.1 has no clean-frame conditioning. Its image-to-video model reads the image
        through extra input channels (and CLIP features) instead, and its noisy input keeps
        no clean frame: ``WanImageToVideoPipeline`` starts from pure noise on all latent
        frames, calls the DiT on ``cat([latents, condition], dim=1)`` with one timestep per
        sample and steps every frame with the scheduler (``prepare_latents`` returns the noise
        untouched and the condition separately; Wan 2.1's ``expand_timesteps`` is off). So a
        sample drawn as image-to-video (``num_cond_latents`` 1, frame 0 = the image) trains
        exactly like a text-to-video one here, plus ``conditioning["image_rows"]`` (``[B]``
        bool) telling :meth:`training_forward` to add the cached image conditioning.
        Continuation (``num_cond_latents`` > 1) does not exist for Wan and is refused.
        With a dataset's own conditioning image, the trainer has put the image's latent in
        frame 0 of ``x0`` (as for every family), so the target starts from the image the
        condition was built from, as the pipeline's videos do.
        """
        x0, noise = x0.float(), noise.float()
        batch, _, frames = x0.shape[:3]
        k = per_sample_cond(num_cond_latents, batch, frames, device=x0.device)
        if bool((k > 1).any()):
            raise ValueError(
                "Wan 2.1 cannot train video continuation samples (clean leading latent frames); "
                "set the dataset's conditioning mix to text-to-video or image-to-video"
            )
        s = sigmas.float().to(x0.device).view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        timesteps = (sigmas.float().to(x0.device) * float(NUM_TRAIN_TIMESTEPS))[:, None].expand(-1, frames).clone()
        loss_mask = torch.ones(batch, 1, frames, 1, 1, dtype=torch.float32, device=x0.device)
        none = torch.zeros_like(k)  # no clean frames: all frames noised and in the loss
        return TrainingInputs(noisy, timesteps, noise - x0, loss_mask, none, conditioning={"image_rows": k == 1})

    def training_forward(self, model, inputs: TrainingInputs, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The DiT at timestep ``[B]``, text zero-padded to 512 rows (no mask).

        Text-to-video: on the noisy latents. Image-to-video (a DiT with more input channels
        than latent channels): on ``cat([noisy latents, condition], dim=1)`` with
        ``encoder_hidden_states_image`` = the CLIP features, both from the cache
        (``conditioning["condition"]``, ``conditioning["image_embeds"]``), exactly as
        ``WanImageToVideoPipeline`` calls it while sampling.
        """
        extras = dict(inputs.conditioning)
        image_rows = extras.pop("image_rows", None)
        condition = extras.pop("condition", None)
        image_embeds = extras.pop("image_embeds", None)
        if extras:
            raise ValueError(f"Wan's training forward takes no conditioning {sorted(extras)}")
        noisy = inputs.noisy_latents
        wants_image = image_rows is not None and bool(image_rows.any())
        text = pad_text(text, text_mask, self.defaults.text_length)
        if _in_channels(model) == noisy.shape[1]:  # text-to-video
            if wants_image:
                raise ValueError(
                    "a text-to-video Wan cannot train image-to-video samples; train an image-to-video flavour "
                    "(i2v-14b-480p) or set the dataset's conditioning mix to text-to-video"
                )
            return model(hidden_states=noisy, timestep=inputs.timesteps[:, 0], encoder_hidden_states=text, return_dict=False)[0]
        if image_rows is None or not bool(image_rows.all()):
            raise ValueError(
                "the image-to-video Wan trains image-to-video samples only (its DiT always reads an image): set the "
                "dataset's conditioning mix to {\"i2v\": 1.0} (the clip's first frame) or give it conditioning images (is_i2v)"
            )
        if condition is None or image_embeds is None:
            raise ValueError(
                "training the image-to-video Wan needs each sample's cached image conditioning (condition latents and CLIP "
                "features); run `frametuner cache --config ...` with this model, and read batches with the conditioning cache"
            )
        hidden = torch.cat([noisy, condition.to(noisy)], dim=1)
        return model(
            hidden_states=hidden,
            timestep=inputs.timesteps[:, 0],
            encoder_hidden_states=text,
            encoder_hidden_states_image=image_embeds.to(noisy.device),
            return_dict=False,
        )[0]

    # ------------------------------------------------------------------ sampling
    def sampling_problems(self, settings: DenoiseSettings) -> list[str]:
        problems = super().sampling_problems(settings)
        if settings.num_cond_latents:
            problems.append("Wan 2.1 conditions image-to-video through its input channels, not clean latent frames (num_cond_latents must be 0)")
        if settings.options:
            problems.append(f"Wan's sampler takes no options {sorted(settings.options)}")
        return problems

    def sampling_loop(self, model, latents: torch.Tensor, text: TextConditioning, settings: DenoiseSettings) -> WanSamplingLoop:
        problems = self.sampling_problems(settings)
        if problems:
            raise ValueError("; ".join(problems))
        return WanSamplingLoop(
            model,
            latents,
            text.prompt_embeds,
            text.prompt_mask,
            text.negative_embeds,
            text.negative_mask,
            steps=settings.steps,
            guidance=settings.guidance,
            shift=settings.shift,
            conditioning=settings.conditioning,
            text_length=self.defaults.text_length,
        )


def _in_channels(model) -> int:
    from ..family import unwrap_model

    return int(unwrap_model(model).config.in_channels)


def _reset_rope(model: WanTransformer, device: str | torch.device) -> None:
    """Recompute the RoPE tables (non-persistent buffers: empty after ``to_empty`` or a meta build)."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    rope = model.rope
    fresh = WanRotaryPosEmbed(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    model.rope = fresh.to(device)
