"""Everything frametuner needs to know about LongCat-Video, in one place."""

from __future__ import annotations

from pathlib import Path

import torch

from ..registry import family_info
from ..spec import LatentGeometry, ModelSpec
from .tiny import FULL_DIT_CONFIG, TINY_DIT_CONFIG, ensure_tiny_checkpoint
from .transformer import LongCatVideoTransformer3DModel

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
    transformer_class = LongCatVideoTransformer3DModel
    subfolders = {"transformer": "dit", "text_encoder": "text_encoder", "tokenizer": "tokenizer", "vae": "vae", "scheduler": "scheduler", "lora": "lora"}

    def checkpoint_root(self, flavour: str, pretrained_model_name_or_path: str | None) -> str | Path:
        if pretrained_model_name_or_path:
            return pretrained_model_name_or_path
        info = family_info(self.family).flavours[flavour]
        if info.hub_id is None:
            return ensure_tiny_checkpoint()
        return info.hub_id

    def load_transformer(self, root: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
        """Load ``<root>/dit`` (single file or shards), cast to ``dtype`` shard by shard."""
        model = LongCatVideoTransformer3DModel.from_pretrained(
            root, subfolder=self.subfolders["transformer"], torch_dtype=dtype, low_cpu_mem_usage=True
        )
        return model.to(device)

    def configure_attention(self, model, config) -> None:
        """``attention_implementation`` + ``bsa_*`` (merged with the checkpoint's ``bsa_params``) onto the DiT."""
        from .bsa import configure_attention

        configure_attention(model, config)

    def build_transformer(self, *, flavour: str = "final", device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16):
        """Random-weight DiT built directly on ``device`` (``meta`` allocates nothing)."""
        config = TINY_DIT_CONFIG if flavour == "tiny" else FULL_DIT_CONFIG
        with torch.device(device):
            model = LongCatVideoTransformer3DModel(**config)
        return model.to(dtype)
