"""Training: the accelerate loop, flow matching, LoRA, checkpoints and export."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def train(config) -> int:
    """Entry point of ``frametuner train`` (the loop lands with the training issue)."""
    from ..models.registry import load_spec

    spec = load_spec(config.model_family)
    root = spec.checkpoint_root(config.model_flavour, config.pretrained_model_name_or_path)
    log.info("model family %s, flavour %s, checkpoint %s", config.model_family, config.model_flavour, root)
    model = spec.load_transformer(root, dtype={"bf16": __import__("torch").bfloat16}.get(config.mixed_precision, __import__("torch").float32))
    params = sum(p.numel() for p in model.parameters())
    log.info("built %s with %.3fM parameters; training is not implemented yet", type(model).__name__, params / 1e6)
    return 0
