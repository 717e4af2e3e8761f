"""Which family's LoRA layout applies: from a model (apply, training) or a family name (convert)."""

from __future__ import annotations

import re

from ..config.schema import DEFAULT_MODEL_FAMILY as DEFAULT_FAMILY
from ..models.registry import family_info, load_spec
from ..models.spec import LoraLayout
from .errors import LoraError


def layout_for_family(family: str = DEFAULT_FAMILY) -> LoraLayout:
    layout = load_spec(family).lora_layout
    if layout is None:
        raise LoraError(f"model family {family!r} declares no LoRA layout")
    return layout


def family_formats(family: str = DEFAULT_FAMILY) -> tuple[str, ...]:
    """The LoRA file formats the family has (its registry entry's ``lora_formats``)."""
    return family_info(family).lora_formats


def family_for_model(model) -> str:
    """The registered family whose denoiser ``model`` (or the model under PEFT) is."""
    from ..models.family import family_of

    try:
        return family_of(model).name
    except KeyError as error:
        raise LoraError(str(error).strip('"')) from None


def layout_for_model(model) -> LoraLayout:
    return layout_for_family(family_for_model(model))


def unwrap_peft(model):
    """The plain model under a ``peft.PeftModel`` (inject_adapter_in_model leaves it plain)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def split_block(name: str, layout: LoraLayout) -> tuple[int | None, str]:
    """``blocks.3.attn.qkv`` -> ``(3, "attn.qkv")``; names outside the blocks -> ``(None, name)``."""
    match = re.fullmatch(rf"{re.escape(layout.block_prefix)}\.(\d+)\.(.+)", name)
    return (int(match.group(1)), match.group(2)) if match else (None, name)


def is_root_layer(local: str, layout: LoraLayout) -> bool:
    """Whether a layer name is named from the model root rather than inside each block."""
    return local.split(".", 1)[0] in layout.root_children


def join_block(block: int | None, local: str, layout: LoraLayout) -> str:
    return local if block is None else f"{layout.block_prefix}.{block}.{local}"


def fused_outputs(name: str, layout: LoraLayout) -> int:
    """How many output parts upstream's format splits module ``name`` into (1 = plain)."""
    return layout.fused_outputs.get(split_block(name, layout)[1], 1)
