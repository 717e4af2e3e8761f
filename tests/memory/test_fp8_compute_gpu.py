"""CUDA sm89+ with torchao: fp8_compute on the tiny-width DiT (bf16) gives LoRA gradients close
to bf16's, compiled and with block swap + activation offload, and equals torchao's own
Float8Linear (real float8 matmuls) in output and input gradient."""

from __future__ import annotations

import pytest
import torch

from frametuner.memory import enable_activation_offload, enable_block_swap

from ..conftest import module_available
from .helpers import add_test_lora, loss_and_grads, make_batch, small_dit, twin

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs a CUDA GPU with float8 (sm89+)"),
    pytest.mark.skipif(not module_available("torchao"), reason="needs torchao"),
]


def _cosines(result, reference):
    return {name: torch.nn.functional.cosine_similarity(result[1][name].flatten().float(), grad.flatten().float(), dim=0).item() for name, grad in reference[1].items()}


@pytest.mark.parametrize("compiled", [False, True])
def test_fp8_compute_trains_lora_like_bf16(compiled):
    from frametuner.memory.fp8 import enable_fp8_compute

    model = small_dit(depth=4, dtype=torch.bfloat16)
    add_test_lora(model)
    model.enable_gradient_checkpointing("full")
    model.to("cuda").train()
    batch = make_batch(device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = loss_and_grads(model, batch, dtype=torch.bfloat16)
    fp8 = torch.nn.Module.to(twin(model), "cpu")  # block swap places the model itself
    assert enable_fp8_compute(fp8, "cuda") > 0
    enable_block_swap(fp8, 2, "cuda", training=True)
    enable_activation_offload(fp8, "cuda")
    if compiled:
        fp8.compile_blocks()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        result = loss_and_grads(fp8, batch, dtype=torch.bfloat16)
    assert abs(result[0].item() - reference[0].item()) < 0.05 * abs(reference[0].item())
    assert min(_cosines(result, reference).values()) > 0.95


@pytest.mark.parametrize("scaling", ["rowwise", "tensorwise"])
def test_frozen_float8_linear_equals_torchaos_on_the_gpu(scaling):
    from torchao.float8.float8_linear import Float8Linear

    from frametuner.memory.fp8 import _frozen_float8_linear_class, float8_config

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 512, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    reference = Float8Linear.from_float(torch.nn.Linear(256, 512, device="cuda", dtype=torch.bfloat16), config=float8_config(scaling))
    reference.weight = torch.nn.Parameter(linear.weight.detach().clone())
    reference.bias = torch.nn.Parameter(linear.bias.detach().clone())
    mine = _frozen_float8_linear_class().from_float(linear, config=float8_config(scaling))
    x = torch.randn(4, 96, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    grad = torch.randn(4, 96, 512, device="cuda", dtype=torch.bfloat16)
    out, out_ref = mine(x), reference(x_ref)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)
