"""Wan 2.1's DiT configurations (diffusers' ``WanTransformer3DModel`` keys), torch-free.

The released sizes are those of the ``Wan-AI/Wan2.1-*-Diffusers`` ``transformer/config.json``
files (and of Wan's own ``wan/configs/``): head dim 128, patch (1, 2, 2), 16 latent
channels, umT5-XXL text (4096), sinusoidal timestep features 256. The image-to-video
model takes 36 input channels (16 noise + 4 mask + 16 condition latents) and CLIP
ViT-H/14 image features (1280) through extra key/value projections.
"""

from __future__ import annotations

_COMMON = dict(
    patch_size=(1, 2, 2),
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)

T2V_1_3B = {**_COMMON, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30}
T2V_14B = {**_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
I2V_14B = {**T2V_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}

# Tiny: the same architecture cut down for CPU tests and the demo. text_dim is the tiny
# umT5's width (shared with LongCat's tiny checkpoint, so the two share text caches).
TINY_T2V = {
    **_COMMON,
    "num_attention_heads": 2,
    "attention_head_dim": 24,
    "ffn_dim": 96,
    "num_layers": 2,
    "text_dim": 64,
    "freq_dim": 32,
}
TINY_IMAGE_DIM = 32  # the tiny CLIP vision tower's hidden size
TINY_I2V = {**TINY_T2V, "in_channels": 36, "image_dim": TINY_IMAGE_DIM, "added_kv_proj_dim": 48}

DIT_CONFIGS = {
    "t2v-1.3b": T2V_1_3B,
    "t2v-14b": T2V_14B,
    "i2v-14b-480p": I2V_14B,
    "tiny": TINY_T2V,
    "tiny-i2v": TINY_I2V,
}
