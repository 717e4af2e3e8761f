"""LongCat-Video's layers as the three LoRA file formats name and split them.

Upstream format (meituan-longcat/LongCat-Video ``longcat_video/modules/lora_utils.py``):
a LoRA module is built for every ``.lora_down.weight`` key of the file, with one up
block per ``.lora_up.blocks.<i>.weight`` key and one rank (``lora_network_dim``) for
the whole file. Its released LoRAs give ``attn.qkv`` 3 blocks, ``cross_attn.kv_linear``
2, ``adaLN_modulation.1`` 6 and ``final_layer.adaLN_modulation.1`` 2 (one per chunk the
layer's output is cut into), which is what :data:`LORA_LAYOUT` ``fused_outputs`` records.

ComfyUI format: ComfyUI has no LongCat model of its own; kijai/ComfyUI-WanVideoWrapper
runs it as a Wan model with a 4096-wide DiT (``nodes_model_loading.py``: ``dim == 4096``
-> "longcat", 32 heads, 48 layers). Read from the wrapper's source
(``wanvideo/modules/model.py``, ``WanAttentionBlock(is_longcat=True)`` and
``Head_adaLN``; checked at commits 3317577 / 0cf30c6):

- each block has separate ``self_attn.{q,k,v,o}`` and ``cross_attn.{q,k,v,o}`` Linears
  (so upstream's fused ``attn.qkv`` and ``cross_attn.kv_linear`` are split),
  ``ffn.{w1,w2,w3}`` (LongCat's SwiGLU, same names) and
  ``modulation = Sequential(SiLU, Linear(512, 6*dim))`` (one Linear: ``modulation.1``);
- the head is ``head.head`` (Linear) and ``head.modulation.1``; text projection is
  ``text_embedding.{0,2}`` as in Wan.

LoRA keys are matched by the wrapper's ``standardize_lora_key_format`` +
``model_lora_keys_unet``: ``diffusion_model.<module>`` then ``.lora_A.weight`` (down),
``.lora_B.weight`` (up) and optional ``.alpha``; ComfyUI scales by ``alpha / rank``.
"""

from __future__ import annotations

from ..spec import LoraLayout, UpstreamLoraFormat
from .transformer import FP32Linear

LORA_LAYOUT = LoraLayout(
    block_prefix="blocks",
    root_children=("x_embedder", "t_embedder", "y_embedder", "final_layer"),
    fused_outputs={
        "attn.qkv": 3,
        "cross_attn.kv_linear": 2,
        "adaLN_modulation.1": 6,
        "final_layer.adaLN_modulation.1": 2,
    },
    comfyui_names={
        "attn.qkv": ("self_attn.q", "self_attn.k", "self_attn.v"),
        "attn.proj": ("self_attn.o",),
        "cross_attn.q_linear": ("cross_attn.q",),
        "cross_attn.kv_linear": ("cross_attn.k", "cross_attn.v"),
        "cross_attn.proj": ("cross_attn.o",),
        "ffn.w1": ("ffn.w1",),
        "ffn.w2": ("ffn.w2",),
        "ffn.w3": ("ffn.w3",),
        "adaLN_modulation.1": ("modulation.1",),
        "final_layer.linear": ("head.head",),
        "final_layer.adaLN_modulation.1": ("head.modulation.1",),
        "y_embedder.y_proj.0": ("text_embedding.0",),
        "y_embedder.y_proj.2": ("text_embedding.2",),
    },
    comfyui_prefix="diffusion_model.",
    fp32_linear_types=(FP32Linear,),
    upstream=UpstreamLoraFormat(name="longcat_video_upstream", key_prefix="lora___lorahyphen___", key_dot="___lorahyphen___"),
    comfyui_format="comfyui_wanvideowrapper",
)
