"""Precision names of the config and the dtypes they mean: the one home of that mapping.

``mixed_precision`` is the compute precision (``no`` = float32); ``base_model_precision``
stores the frozen base weights (``no_change`` = the compute dtype, or a quantised type).
torch is imported only by the functions that return dtypes, so the config stays light.
"""

from __future__ import annotations

from typing import Any

QUANTISED_PRECISIONS = ("int8-quanto", "int4-quanto", "fp8-torchao")
# fp8_compute_layers: which frozen Linears fp8 compute converts (memory.fp8.fp8_layer_filter)
FP8_COMPUTE_LAYERS = ("all_but_cross", "all", "ffn")
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "no": "float32"}


def torch_dtype(precision: str):
    """``bf16`` -> ``torch.bfloat16`` (``no`` and ``fp32`` -> float32)."""
    import torch

    try:
        return getattr(torch, DTYPE_NAMES[precision])
    except KeyError:
        raise ValueError(f"{precision!r} is not a plain precision ({', '.join(DTYPE_NAMES)})") from None


def compute_dtype(mixed_precision: str):
    """The autocast dtype of ``mixed_precision``, or None for ``no`` (float32, no autocast)."""
    return None if mixed_precision == "no" else torch_dtype(mixed_precision)


def base_weight_dtype(config: Any):
    """Storage dtype of the frozen base weights (of a quantised base: of the layers that
    stay unquantised, the compute dtype): ``base_model_precision`` when it is a dtype,
    else ``mixed_precision``'s."""
    precision = config.base_model_precision
    return torch_dtype(precision if precision in DTYPE_NAMES else config.mixed_precision)
