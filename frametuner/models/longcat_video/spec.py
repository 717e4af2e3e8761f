"""Everything frametuner needs to know about LongCat-Video, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..components import resolve_component
from ..loading import load_blockwise
from ..registry import family_info
from ..spec import LatentGeometry, ModelSpec
from .lora_layout import LORA_LAYOUT
from .text import TextEncoder, clean_prompt, text_encoder_identity
from .tiny import FULL_DIT_CONFIG, build_tiny_transformer, ensure_tiny_checkpoint
from .transformer import LongCatVideoTransformer3DModel
from .vae import VideoVAE, denormalise_latents, normalise_latents, vae_identity

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


class LongCatVideoSpec(ModelSpec):
    family = "longcat_video"
    geometry = LatentGeometry(channels=16, vae_stride=(4, 8, 8), patch_size=(1, 2, 2))
    flow_shift = 12.0
    bucket_alignment = 64
    default_fps = 15
    default_frames = 93
    text_max_length = 512
    default_lora_targets = DEFAULT_LORA_TARGETS
    optional_lora_targets = OPTIONAL_LORA_TARGETS
    lora_layout = LORA_LAYOUT
    transformer_class = LongCatVideoTransformer3DModel
    subfolders = {"transformer": "dit", "text_encoder": "text_encoder", "tokenizer": "tokenizer", "vae": "vae", "scheduler": "scheduler", "lora": "lora"}

    def checkpoint_root(self, flavour: str, pretrained_model_name_or_path: str | None) -> str | Path:
        if pretrained_model_name_or_path:
            return pretrained_model_name_or_path
        info = family_info(self.family).flavours[flavour]
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
        model.text_virtual_length = self.text_max_length  # the release was trained on 512-padded text
        return model

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
            model.text_virtual_length = self.text_max_length
            return model
        with torch.device("meta"):
            model = LongCatVideoTransformer3DModel(**FULL_DIT_CONFIG)
        model.text_virtual_length = self.text_max_length
        # nn.Module.to: diffusers' ModelMixin.to warns about float32 modules on every dtype cast.
        model = torch.nn.Module.to(model, dtype=dtype)
        if torch.device(device).type == "meta":
            return model
        model = model.to_empty(device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                elif param.dim() >= 2:
                    param.normal_(0.0, 0.02, generator=generator)
                else:
                    param.zero_()
        return model

    # ------------------------------------------------------------------ encoders
    clean_prompt = staticmethod(clean_prompt)
    normalise_latents = staticmethod(normalise_latents)
    denormalise_latents = staticmethod(denormalise_latents)

    def load_text_encoder(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TextEncoder:
        """umT5 from ``<root>/text_encoder`` + ``<root>/tokenizer``; prompts padded to ``text_max_length``."""
        return TextEncoder.from_pretrained(
            root,
            device=device,
            dtype=dtype,
            max_length=self.text_max_length,
            text_encoder_subfolder=self.subfolders["text_encoder"],
            tokenizer_subfolder=self.subfolders["tokenizer"],
        )

    def load_vae(self, root: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VideoVAE:
        """Wan 2.1 VAE from ``<root>/vae``, tiling on; latents normalised with its config's mean/std."""
        return VideoVAE.from_pretrained(root, device=device, dtype=dtype, subfolder=self.subfolders["vae"])

    def text_encoder_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        return text_encoder_identity(
            resolve_component(root, self.subfolders["text_encoder"]),
            resolve_component(root, self.subfolders["tokenizer"]),
            dtype=dtype,
            max_length=self.text_max_length,
        )

    def vae_identity(self, root: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        return vae_identity(resolve_component(root, self.subfolders["vae"]), dtype=dtype)
