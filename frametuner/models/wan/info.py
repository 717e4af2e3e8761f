"""Wan 2.1's registry entry: names, flavours and defaults (no torch; read by config and the web UI)."""

from __future__ import annotations

from ..registry import FamilyDefaults, FamilyInfo, FlavourInfo, register_family
from ..spec import LatentGeometry

INFO = FamilyInfo(
    name="wan",
    display_name="Wan 2.1",
    description="Wan 2.1 (Alibaba) text/image-to-video DiT through diffusers' WanTransformer3DModel; umT5-XXL text encoder, Wan 2.1 VAE",
    spec="frametuner.models.wan.spec:WanSpec",
    flavours={
        "t2v-1.3b": FlavourInfo("t2v-1.3b", "Wan2.1-T2V-1.3B, text-to-video, 480p", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
        "t2v-14b": FlavourInfo("t2v-14b", "Wan2.1-T2V-14B, text-to-video, 480p and 720p", "Wan-AI/Wan2.1-T2V-14B-Diffusers"),
        "i2v-14b-480p": FlavourInfo(
            "i2v-14b-480p", "Wan2.1-I2V-14B-480P, image-to-video (CLIP image features + mask channels)", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
            image_conditioned=True,
        ),
        "tiny": FlavourInfo("tiny", "a small random-weight text-to-video Wan, built locally (CPU demos and tests)"),
        "tiny-i2v": FlavourInfo("tiny-i2v", "a small random-weight image-to-video Wan, built locally (CPU tests)", image_conditioned=True),
    },
    default_flavour="t2v-1.3b",
    transformer_classes=("diffusers.models.transformers.transformer_wan:WanTransformer3DModel",),
    # WanPipeline's defaults: 480x832, 81 frames (16 fps), 50 steps, CFG 5.0; UniPC flow solver with
    # flow_shift 3.0 (diffusers' documented value for 480p; 5.0 for 720p), the same shift for training.
    defaults=FamilyDefaults(
        frames=81, fps=16, height=480, width=832, steps=50, guidance=5.0, shift=3.0, training_shift=3.0,
        text_length=512, bucket_alignment=16,
    ),
    # "comfyui" (diffusion_model.blocks.N.self_attn.q...) is also what WanPipeline.load_lora_weights reads.
    lora_formats=("peft", "comfyui"),
    # Wan 2.1 VAE: 16 channels, stride 4x8x8; DiT patch (1, 2, 2). Frames are 4k+1, sizes multiples of 16.
    geometry=LatentGeometry(channels=16, vae_stride=(4, 8, 8), patch_size=(1, 2, 2)),
    # The I2V flavours train image-to-video through their image conditioning (WanSpec.training_conditioning).
    image_to_video_training=True,
)

register_family(INFO)
