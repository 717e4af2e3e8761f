"""LongCat-Video's registry entry: names, flavours and defaults (no torch; read by config and the web UI)."""

from __future__ import annotations

from ..registry import ContinuationInfo, FamilyDefaults, FamilyInfo, FlavourInfo, register_family
from ..spec import LatentGeometry

INFO = FamilyInfo(
    name="longcat_video",
    display_name="LongCat-Video",
    description="LongCat-Video (Meituan) 13.6B text/image-to-video DiT; umT5-XXL text encoder, Wan 2.1 VAE",
    spec="frametuner.models.longcat_video.spec:LongCatVideoSpec",
    flavours={
        "final": FlavourInfo("final", "the released text-to-video + image-to-video checkpoint", "meituan-longcat/LongCat-Video"),
        "tiny": FlavourInfo("tiny", "a small random-weight model of the same architecture, built locally (CPU demos and tests)"),
    },
    default_flavour="final",
    transformer_classes=("frametuner.models.longcat_video.transformer:LongCatVideoTransformer3DModel",),
    # Upstream's pipeline defaults: 480x832, 93 frames at 15 fps, 50 steps, CFG 4, shift 12 (training too);
    # the released cfg_step_lora samples 16 steps without guidance. 64-px buckets make 720p
    # eligible for block-sparse attention.
    defaults=FamilyDefaults(
        frames=93, fps=15, height=480, width=832, steps=50, guidance=4.0, shift=12.0, training_shift=12.0,
        text_length=512, bucket_alignment=64, distill_steps=16, distill_guidance=1.0,
    ),
    lora_formats=("peft", "upstream", "comfyui"),
    # Wan 2.1 VAE: 16 channels, stride 4x8x8; DiT patch (1, 2, 2). Frames are 4k+1, sizes multiples of 16.
    geometry=LatentGeometry(channels=16, vae_stride=(4, 8, 8), patch_size=(1, 2, 2)),
    # Upstream's generate_vc: 13 conditioning frames (4 latent frames), the condition's KV cache
    # and the enhance_hf schedule on by default (enhance_hf asserts it is not the distilled schedule);
    # the cache (4.9 GB at 480p) moves to host memory when the weights do (block swap, group offload).
    continuation=ContinuationInfo(
        cond_frames=13, sampler_options={"use_kv_cache": True, "enhance_hf": True, "offload_kv_cache": False},
        not_with_distill=("enhance_hf",), with_offloaded_weights=("offload_kv_cache",),
    ),
)

register_family(INFO)
