"""CUDA: block swap, group offload and activation offload give the plain model's loss and
LoRA gradients (real transfers on side streams, compiled blocks), and actually save memory;
quantised bases train on the GPU."""

from __future__ import annotations

import pytest
import torch

from frametuner.memory import enable_activation_offload, enable_block_swap, enable_group_offload, quantise_transformer

from ..conftest import module_available
from .helpers import add_test_lora, loss_and_grads, make_batch, small_dit, twin

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEPTH = 4


def lora_model(dtype=torch.float32, depth=DEPTH, **config):
    model = small_dit(depth=depth, dtype=dtype, **config)
    add_test_lora(model)
    model.enable_gradient_checkpointing("full")
    return model


def on_gpu(model):
    return model.to("cuda")


def assert_matches(result, reference, exact: bool):
    loss, grads = result
    ref_loss, ref_grads = reference
    if exact:
        assert torch.equal(loss, ref_loss), (loss.item(), ref_loss.item())
    else:
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name in ref_grads:
        assert grads[name].device.type == "cuda"
        if exact:
            assert torch.equal(grads[name], ref_grads[name]), name
        else:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


APPLY = {
    "swap1": lambda m: enable_block_swap(m, 1, "cuda"),
    "swap3": lambda m: enable_block_swap(m, DEPTH - 1, "cuda"),
    "group_block": lambda m: enable_group_offload(m, "cuda"),
    "group_block_stream": lambda m: enable_group_offload(m, "cuda", use_stream=True),
    "group_block2_stream": lambda m: enable_group_offload(m, "cuda", blocks_per_group=2, use_stream=True),
    "group_leaf": lambda m: enable_group_offload(m, "cuda", offload_type="leaf_level"),
    "actoffload": lambda m: enable_activation_offload(m, "cuda"),
    "swap3+actoffload": lambda m: (enable_block_swap(m, DEPTH - 1, "cuda"), enable_activation_offload(m, "cuda")),
}


@pytest.mark.parametrize("name", list(APPLY))
def test_same_loss_and_gradients_as_plain_fp32(name):
    base = lora_model()
    plain = on_gpu(twin(base))
    model = twin(base)  # stays on the CPU: the memory tools place it
    if name == "actoffload":
        model = on_gpu(model)
    APPLY[name](model)
    batch = make_batch(device="cuda")
    reference = loss_and_grads(plain, batch)
    for _ in range(2):
        assert_matches(loss_and_grads(model, batch), reference, exact=True)
    with torch.no_grad():  # sampling through the same hooks
        inputs = {k: v for k, v in batch.items() if k != "target"}
        assert torch.equal(model(**inputs), plain(**inputs))


@pytest.mark.parametrize("name", ["swap3", "group_block_stream", "actoffload"])
def test_compiled_blocks_bf16(name):
    base = lora_model(dtype=torch.bfloat16)
    plain = on_gpu(twin(base))
    plain.compile_blocks()
    model = twin(base)
    if name == "actoffload":
        model = on_gpu(model)
    hook = APPLY[name](model)
    model.compile_blocks()
    batch = make_batch(device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = loss_and_grads(plain, batch, torch.bfloat16)
        for _ in range(2):
            assert_matches(loss_and_grads(model, batch, torch.bfloat16), reference, exact=False)
    if name == "actoffload":  # the compiled block saved its input (or a full view of it) for the backward
        assert hook.packed == 2 * DEPTH


def test_block_swap_and_activation_offload_lower_peak_memory():
    """A model with heavy blocks: swapping 6 of 8 saves at least 4 blocks' weights at the peak;
    activation offload saves most of the block inputs."""
    config = dict(hidden_size=1024, num_heads=8, depth=8)
    base = lora_model(dtype=torch.bfloat16, **config)
    block_bytes = sum(p.numel() * p.element_size() for p in base.blocks[0].parameters() if not p.requires_grad)
    batch = make_batch(frames=5, height=16, width=16, device="cuda")

    def peak(model):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss_and_grads(model, batch, torch.bfloat16)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    plain = on_gpu(twin(base))
    plain_peak = peak(plain)
    del plain
    torch.cuda.empty_cache()
    swapped = twin(base)
    enable_block_swap(swapped, 6, "cuda")
    assert plain_peak - peak(swapped) >= 4 * block_bytes


QUANTISED = ["int8-quanto", "int4-quanto", "fp8-torchao"]


def fp8_available() -> bool:
    return module_available("torchao") and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.parametrize("precision", QUANTISED)
def test_quantised_base_trains_and_swaps_exactly_on_gpu(precision):
    if precision == "fp8-torchao" and not fp8_available():
        pytest.skip("fp8-torchao needs torchao and an sm89+ GPU")
    if precision != "fp8-torchao" and not module_available("optimum.quanto"):
        pytest.skip("needs optimum-quanto")

    def build():
        model = small_dit(depth=DEPTH, dtype=torch.bfloat16, hidden_size=256, num_heads=2)
        model.requires_grad_(False)
        quantise_transformer(model, precision, device="cuda")
        add_test_lora(model)
        model.enable_gradient_checkpointing("full")
        return model

    reference_model = on_gpu(lora_model(dtype=torch.bfloat16, hidden_size=256, num_heads=2))
    batch = make_batch(device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = loss_and_grads(reference_model, batch, torch.bfloat16)
        quantised = on_gpu(build())
        result = loss_and_grads(quantised, batch, torch.bfloat16)
        swapped = build()
        enable_block_swap(swapped, DEPTH - 1, "cuda")
        enable_activation_offload(swapped, "cuda")
        swapped_result = loss_and_grads(swapped, batch, torch.bfloat16)
    tolerance = {"int8-quanto": 0.02, "fp8-torchao": 0.05, "int4-quanto": 0.1}[precision]
    assert abs(result[0].item() - reference[0].item()) / reference[0].item() < tolerance
    cosines = [torch.nn.functional.cosine_similarity(result[1][n].flatten().float(), reference[1][n].flatten().float(), dim=0).item() for n in reference[1]]
    assert min(cosines) > 0.9, min(cosines)
    assert_matches(swapped_result, result, exact=True)
    if precision == "fp8-torchao":  # diffusers' group offload moves torchao tensors (swap_tensors)
        offloaded = build()
        enable_group_offload(offloaded, "cuda", use_stream=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert_matches(loss_and_grads(offloaded, batch, torch.bfloat16), result, exact=True)


def test_trainer_24gb_combination_matches_quantised_plain(tmp_path):
    """Through the Trainer on CUDA (compiled blocks): int8 + block swap + activation offload
    gives exactly the int8 run's losses."""
    from frametuner.models.longcat_video.tiny import ensure_tiny_checkpoint
    from frametuner.training.trainer import Trainer

    from ..training.helpers import synthetic_data, tiny_config

    ensure_tiny_checkpoint()

    def losses(folder, **overrides):
        config = tiny_config(tmp_path / folder, mixed_precision="bf16", base_model_precision="int8-quanto", **overrides)
        data = synthetic_data(n=1)
        trainer = Trainer(config, data)
        batch = next(iter(data.epoch(0)))
        return [trainer.step(batch)[0].item() for _ in range(3)]

    assert losses("b", musubi_blocks_to_swap=1, gradient_checkpointing_cpu_offload=True) == losses("a")
