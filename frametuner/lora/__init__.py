"""LoRA for frametuner: PEFT training adapters, the three file formats, inference application.

- training (PEFT): :func:`add_lora`, :func:`add_lora_from_file`, :func:`lora_state_dict`,
  :func:`set_lora_state_dict`, :func:`export_lora`;
- files: :func:`read_lora`, :func:`write_lora`, :func:`convert` between ``peft``,
  ``upstream`` (the family's own loader's, where it has one) and ``comfyui`` (ComfyUI's names);
- inference: :func:`apply_lora` (stacks), :func:`remove_loras`.

Every format converts through one exact in-memory form, :class:`LowRankDelta`
(``delta W = scale * up @ down`` per layer). See ``docs/lora_formats.md``.
"""

from .adapters import (
    EXPORT_NAMES,
    FP32LoraLinear,
    add_lora,
    add_lora_from_file,
    export_lora,
    lora_state_dict,
    lora_weights_from_model,
    resolve_lora_targets,
    set_lora_state_dict,
)
from .apply import LoraHandle, apply_lora, remove_loras
from .delta import LoraWeights, LowRankDelta
from .errors import LoraError, LoraFormatError, LoraMismatchError
from .formats import FORMATS, convert, detect_format, read_lora, write_lora

__all__ = [
    "EXPORT_NAMES",
    "FORMATS",
    "FP32LoraLinear",
    "LoraError",
    "LoraFormatError",
    "LoraHandle",
    "LoraMismatchError",
    "LoraWeights",
    "LowRankDelta",
    "add_lora",
    "add_lora_from_file",
    "apply_lora",
    "convert",
    "detect_format",
    "export_lora",
    "lora_state_dict",
    "lora_weights_from_model",
    "read_lora",
    "remove_loras",
    "resolve_lora_targets",
    "set_lora_state_dict",
    "write_lora",
]
