"""GPU: the optimized training path (regional compile, selective checkpointing, compact
text) computes the same loss and LoRA gradients as the eager baseline, in bf16."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)


def build(depth=4):
    from frametuner.lora import add_lora
    from frametuner.models.longcat_video.spec import DEFAULT_LORA_TARGETS
    from frametuner.models.longcat_video.tiny import FULL_DIT_CONFIG
    from frametuner.models.longcat_video.transformer import LongCatVideoTransformer3DModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LongCatVideoTransformer3DModel(**{**FULL_DIT_CONFIG, "depth": depth})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0, 0.02)
    model = torch.nn.Module.to(model, dtype=torch.bfloat16)
    model.requires_grad_(False)
    add_lora(model, rank=16, alpha=16, dropout=0.0, target_modules=list(DEFAULT_LORA_TARGETS))
    with torch.no_grad():  # non-zero up matrices so LoRA gradients flow everywhere
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.data = param.data.float()
                param.normal_(0, 0.01)
    return model


def loss_and_grads(model, text, mask, num_cond=0):
    g = torch.Generator(device="cuda").manual_seed(1)
    x0 = torch.randn(1, 16, 8, 16, 32, device="cuda", generator=g)
    noise = torch.randn(x0.shape, device="cuda", generator=g)
    from frametuner.models.registry import load_spec
    from frametuner.training.flow_matching import flow_matching_loss

    make_inputs = load_spec("longcat_video").training_inputs

    inputs = make_inputs(x0, noise, torch.tensor([0.7], device="cuda"), num_cond_latents=num_cond)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        pred = model(inputs.noisy_latents, inputs.timesteps, text, mask, num_cond_latents=num_cond)
    loss = flow_matching_loss(pred, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("num_cond", [0, 1])
def test_optimized_equals_eager(num_cond):
    eager = build()
    optimized = copy.deepcopy(eager)
    text = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    mask = torch.zeros(1, 512, dtype=torch.int64, device="cuda")
    mask[:, :120] = 1
    eager.enable_gradient_checkpointing("full")
    loss_a, grads_a = loss_and_grads(eager, text, mask, num_cond)

    optimized.enable_gradient_checkpointing("save_attention")
    optimized.compile_blocks()
    optimized.text_virtual_length = 512
    loss_b, grads_b = loss_and_grads(optimized, text[:, :121], mask[:, :121], num_cond)

    assert abs(loss_a.item() - loss_b.item()) <= 1e-2 * abs(loss_a.item())
    worst = max(((grads_a[n] - grads_b[n]).norm() / grads_a[n].norm().clamp_min(1e-12)).item() for n in grads_a)
    assert worst < 3e-2, f"worst relative LoRA-gradient difference {worst:.3e}"
