"""Small DiTs with LoRA, a fixed batch, and the loss + LoRA gradients every memory test compares."""

from __future__ import annotations

import copy

import torch

from frametuner.models.longcat_video.spec import DEFAULT_LORA_TARGETS
from frametuner.models.longcat_video.tiny import TINY_DIT_CONFIG
from frametuner.models.longcat_video.transformer import LongCatVideoTransformer3DModel

from ..conftest import requires_module


requires_quanto = requires_module("optimum.quanto", "optimum-quanto")


def small_dit(depth: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> LongCatVideoTransformer3DModel:
    """The tiny architecture (hidden 128) with ``depth`` blocks and seeded non-trivial weights."""
    torch.manual_seed(seed)
    model = LongCatVideoTransformer3DModel(**{**TINY_DIT_CONFIG, "depth": depth, **overrides})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() < 2:
                param.copy_(0.02 * torch.randn_like(param) + (1.0 if name.endswith("norm.weight") else 0.0))
    return torch.nn.Module.to(model, dtype).eval()  # (ModelMixin.to warns on every cast)


def add_test_lora(model, rank: int = 4, seed: int = 1) -> dict[str, torch.nn.Parameter]:
    """PEFT LoRA on the family's default targets in every block, with random (non-zero)
    B so that A's gradients are non-zero too; base frozen. Returns the LoRA parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    names = [f"blocks.{i}.{target}" for i in range(len(model.blocks)) for target in DEFAULT_LORA_TARGETS]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=names), model)
    generator = torch.Generator().manual_seed(seed)
    trainable = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            with torch.no_grad():
                param.data = (0.05 * torch.randn(param.shape, generator=generator)).to(param.device)
            param.requires_grad_(True)
            trainable[name] = param
    return trainable


def make_batch(frames: int = 3, height: int = 4, width: int = 6, text_len: int = 8, seed: int = 2, device="cpu") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, text_len, dtype=torch.int64)
    mask[:, :5] = 1
    batch = {
        "hidden_states": torch.randn(1, 16, frames, height, width, generator=generator),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": torch.randn(1, text_len, TINY_DIT_CONFIG["caption_channels"], generator=generator) * mask[..., None],
        "encoder_attention_mask": mask,
        "target": torch.randn(1, 16, frames, height, width, generator=generator),
    }
    return {key: value.to(device) for key, value in batch.items()}


def loss_and_grads(model, batch, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward + backward; the loss and every trainable parameter's gradient (then cleared)."""
    inputs = {key: value for key, value in batch.items() if key != "target"}
    if dtype is not None:
        inputs["hidden_states"] = inputs["hidden_states"].to(dtype)
        inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"].to(dtype)
    prediction = model(**inputs)
    loss = (prediction.float() - batch["target"]).pow(2).mean()
    loss.backward()
    grads = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            grads[name] = param.grad.detach().clone()
            param.grad = None
    return loss.detach(), grads


def twin(model):
    """An independent copy (same weights) to modify while the original stays plain."""
    return copy.deepcopy(model)


def assert_same(result, reference):
    """Bit-identical loss and gradients (what exact memory tools must give)."""
    loss, grads = result
    ref_loss, ref_grads = reference
    assert torch.equal(loss, ref_loss), (loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name
