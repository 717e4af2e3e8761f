"""LongCat-Video as a model family: everything frametuner needs to know about it, in one place.

Facts without torch (defaults, flavours) are in ``info.py``; the sampler in ``sampling.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..components import resolve_component
from ..encoders.family_mixin import UMT5WanVAEEncoders
from ..family import DenoiseSettings, ModelFamily, TextConditioning, TrainingInputs, frame_mask, per_sample_cond
from ..loading import load_blockwise
from .info import INFO
from .lora_layout import LORA_LAYOUT
from .sampling import NUM_TRAIN_TIMESTEPS, LongCatSamplingLoop, sampling_problems
from .tiny import FULL_DIT_CONFIG, build_tiny_transformer, ensure_tiny_checkpoint
from .transformer import LongCatSingleStreamBlock, LongCatVideoTransformer3DModel

# Upstream's released LoRAs (cfg_step_lora, refinement_lora) wrap these Linear layers.
DEFAULT_LORA_TARGETS = (
    "attn.qkv",
    "attn.proj",
    "cross_attn.q_linear",
    "cross_attn.kv_linear",
    "cross_attn.proj",
    "ffn.w1",
    "ffn.w2",
    "ffn.w3",
)
OPTIONAL_LORA_TARGETS = ("adaLN_modulation.1", "final_layer.adaLN_modulation.1", "final_layer.linear")


class LongCatVideoSpec(UMT5WanVAEEncoders, ModelFamily):
    name = INFO.name
    geometry = INFO.geometry
    default_lora_targets = DEFAULT_LORA_TARGETS
    optional_lora_targets = OPTIONAL_LORA_TARGETS
    lora_layout = LORA_LAYOUT
    transformer_class = LongCatVideoTransformer3DModel
    shard_units = (LongCatSingleStreamBlock.__name__,)  # blocks checkpoint themselves
    feedforward_layers = ("ffn.",)  # SwiGLU w1, w2, w3
    cross_attention_layers = ("cross_attn.",)  # q_linear, kv_linear, proj
    subfolders = {"transformer": "dit", "text_encoder": "text_encoder", "tokenizer": "tokenizer", "vae": "vae", "scheduler": "scheduler", "lora": "lora"}

    def checkpoint_root(self, flavour: str, pretrained_model_name_or_path: str | None) -> str | Path:
        if pretrained_model_name_or_path:
            return pretrained_model_name_or_path
        info = self.info.flavours[flavour]
        if info.hub_id is None:
            return ensure_tiny_checkpoint()
        return info.hub_id

    def load_transformer(
        self,
        root: str | Path,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        prepare_block: Callable[[torch.nn.Module], None] | None = None,
    ):
        """Load ``<root>/dit`` (single file or shards), cast to ``dtype`` shard by shard.

        With ``prepare_block`` (quantisation), blocks are streamed in one at a time and each
        is handed to it (which places it), so the full model never exists in ``dtype``.
        """
        if prepare_block is not None:
            folder = resolve_component(root, self.subfolders["transformer"])
            model = load_blockwise(LongCatVideoTransformer3DModel, folder, dtype=dtype, device=device, prepare_block=prepare_block)
        else:
            model = LongCatVideoTransformer3DModel.from_pretrained(
                root, subfolder=self.subfolders["transformer"], torch_dtype=dtype, low_cpu_mem_usage=True
            ).to(device)
        model.text_virtual_length = self.defaults.text_length  # the release was trained on 512-padded text
        return self.tag_model(model)

    def configure_attention(self, model, config) -> None:
        """``attention_implementation`` + ``bsa_*`` (merged with the checkpoint's ``bsa_params``) onto the DiT."""
        from .bsa import configure_attention

        configure_attention(model, config)

    def build_transformer(self, *, flavour: str = "final", device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16):
        """Random-weight DiT materialised directly on ``device`` in ``dtype``.

        Built on the meta device first, so a 13.6B bf16 model on a GPU never exists in
        float32 or on the CPU (27 GB, not 54 + 27). Weights ~ N(0, 0.02), biases 0, norm
        weights 1: numerically tame for benchmarks. ``tiny`` gives the seeded tiny model.
        """
        if flavour == "tiny":
            model = torch.nn.Module.to(build_tiny_transformer(), device=device, dtype=dtype)
            model.text_virtual_length = self.defaults.text_length
            return self.tag_model(model)
        with torch.device("meta"):
            model = LongCatVideoTransformer3DModel(**FULL_DIT_CONFIG)
        model.text_virtual_length = self.defaults.text_length
        self.tag_model(model)
        # nn.Module.to: diffusers' ModelMixin.to warns about float32 modules on every dtype cast.
        model = torch.nn.Module.to(model, dtype=dtype)
        if torch.device(device).type == "meta":
            return model
        return self.initialise_random(model.to_empty(device=device))

    # ------------------------------------------------------------------ encoders
    # ------------------------------------------------------------------ training
    def training_inputs(self, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, num_cond_latents: int | torch.Tensor = 0) -> TrainingInputs:
        """``x_s = (1 - s) x0 + s noise``, timestep ``1000 s``, target ``x0 - noise`` (the DiT's
        raw output is the negative of the usual velocity; training toward ``noise - x0``
        destroys the pretrained model). Each sample's first K latent frames stay clean with
        timestep 0 and are left out of the loss."""
        x0, noise = x0.float(), noise.float()
        batch, _, frames = x0.shape[:3]
        k = per_sample_cond(num_cond_latents, batch, frames, device=x0.device)
        noisy_frames = frame_mask(k, frames)  # [B, T]: 1 noisy, 0 conditioning
        s = sigmas.float().to(x0.device).view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        keep = noisy_frames[:, None, :, None, None]
        noisy = torch.where(keep.bool(), noisy, x0)
        # t * 1 and t * 0 are exact in float32: the same per-frame timesteps as the sampler's.
        timesteps = (sigmas.float().to(x0.device) * float(NUM_TRAIN_TIMESTEPS))[:, None] * noisy_frames
        return TrainingInputs(noisy, timesteps, x0 - noise, keep.clone(), k)

    def training_forward(self, model, inputs: TrainingInputs, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The DiT on ``inputs``: one call per distinct conditioning length K in the batch
        (the DiT takes one K per call: conditioning tokens attend only to themselves)."""
        ks = inputs.num_cond_latents
        values = sorted(set(ks.tolist()))
        if len(values) == 1 and (inputs.forward_calls or 1) <= 1:
            return model(
                hidden_states=inputs.noisy_latents,
                timestep=inputs.timesteps,
                encoder_hidden_states=text,
                encoder_attention_mask=text_mask,
                num_cond_latents=values[0],
            )
        parts, order = [], []
        for value in values:
            rows = (ks == value).nonzero().flatten()
            order.append(rows)
            parts.append(model(
                hidden_states=inputs.noisy_latents[rows],
                timestep=inputs.timesteps[rows],
                encoder_hidden_states=text[rows],
                encoder_attention_mask=text_mask[rows],
                num_cond_latents=value,
            ))
        prediction = torch.cat(parts)[torch.argsort(torch.cat(order))]
        # Another rank makes more calls (it holds more distinct Ks): make as many, on row 0, and
        # join them with weight 0, so that their backward and collectives run here too.
        for _ in range(max(0, (inputs.forward_calls or 0) - len(values))):
            extra = model(
                hidden_states=inputs.noisy_latents[:1],
                timestep=inputs.timesteps[:1],
                encoder_hidden_states=text[:1],
                encoder_attention_mask=text_mask[:1],
                num_cond_latents=values[0],
            )
            prediction = prediction + 0.0 * extra.mean()
        return prediction

    # ------------------------------------------------------------------ sampling
    def sampling_loop(self, model, latents: torch.Tensor, text: TextConditioning, settings: DenoiseSettings) -> LongCatSamplingLoop:
        return LongCatSamplingLoop(model, latents, text, settings)

    def sampling_problems(self, settings: DenoiseSettings) -> list[str]:
        return sampling_problems(settings.steps, settings.guidance, settings.distill, settings.options)
