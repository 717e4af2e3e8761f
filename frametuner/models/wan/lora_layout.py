"""Wan 2.1's layers as the LoRA file formats name them.

frametuner's module names are diffusers' (``blocks.N.attn1.to_q``). The ComfyUI format
uses the names of Wan's original code (``wan/modules/model.py``), which is what ComfyUI's
own Wan model (``comfy/ldm/wan/model.py``) and kijai/ComfyUI-WanVideoWrapper load, with
keys ``diffusion_model.<module>.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha``
(scale = alpha / rank). diffusers' ``WanLoraLoaderMixin`` reads the same file
(``_convert_non_diffusers_wan_lora_to_diffusers``: ``self_attn.{q,k,v,o}`` ->
``attn1.{to_q,to_k,to_v,to_out.0}``, ``cross_attn.*`` -> ``attn2.*``, ``cross_attn.{k,v}_img``
-> ``attn2.add_{k,v}_proj``, ``ffn.{0,2}`` -> ``ffn.net.{0.proj,2}``, ``head.head`` ->
``proj_out``, ``{text,time}_embedding.{0,2}`` -> ``condition_embedder.{text,time}_embedder.linear_{1,2}``,
``img_emb.proj.{1,3}`` -> ``condition_embedder.image_embedder.ff.net.{0.proj,2}``), so the
one file serves both. No Wan layer is fused: every LoRA layer maps to one Linear.
"""

from __future__ import annotations

from ..spec import LoraLayout

# Attention and feed-forward of every block (the layers diffusers' and musubi-tuner's Wan
# LoRAs train); the I2V image keys/values are optional.
DEFAULT_LORA_TARGETS = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
)
OPTIONAL_LORA_TARGETS = ("attn2.add_k_proj", "attn2.add_v_proj", "proj_out")

_BLOCK_NAMES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_ROOT_NAMES = {
    "proj_out": "head.head",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
}

LORA_LAYOUT = LoraLayout(
    block_prefix="blocks",
    root_children=("rope", "patch_embedding", "condition_embedder", "norm_out", "proj_out"),
    fused_outputs={},
    comfyui_names={name: (comfy,) for name, comfy in {**_BLOCK_NAMES, **_ROOT_NAMES}.items()},
    comfyui_prefix="diffusion_model.",
    comfyui_format="comfyui_wan",  # the metadata "format": Wan's original module names
)
