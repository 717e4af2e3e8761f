"""Quantised frozen base: what is quantised, within what error, LoRA on top, streamed loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from frametuner.memory import MemoryOptionError, check_quantisation_supported, is_quantised, quantise_transformer
from frametuner.models.loading import load_blockwise
from frametuner.models.longcat_video.transformer import FP32Linear, LongCatVideoTransformer3DModel

from .helpers import add_test_lora, loss_and_grads, make_batch, requires_quanto, small_dit, twin

# Stated tolerances (tiny model, fp32 compute): int8 per-channel absmax keeps each weight
# within 1/254 of its row's largest magnitude; int4 (groups of 128) within 1/30.
INT8_LOSS_RTOL, INT8_GRAD_RTOL = 2e-3, 5e-2
INT4_LOSS_RTOL, INT4_GRAD_COSINE = 1e-2, 0.95


def quantised_lora_model(precision: str, dtype=torch.float32):
    model = small_dit(depth=3, dtype=dtype)
    model.requires_grad_(False)
    quantise_transformer(model, precision)
    add_test_lora(model)
    model.enable_gradient_checkpointing("full")
    return model


@pytest.fixture(scope="module")
def reference():
    model = small_dit(depth=3)
    add_test_lora(model)
    model.enable_gradient_checkpointing("full")
    return loss_and_grads(model, make_batch())


@requires_quanto
def test_int8_quantises_block_linears_only_within_the_absmax_bound():
    original = small_dit(depth=3)
    model = twin(original)
    model.requires_grad_(False)
    quantise_transformer(model, "int8-quanto")
    originals = dict(original.named_modules())
    quantised = 0
    for name, module in model.named_modules():
        source = originals.get(name)
        if type(source) is nn.Linear and name.startswith("blocks."):
            weight = module.weight.dequantize().float()
            bound = source.weight.abs().amax(dim=1, keepdim=True) / 254 * (1 + 1e-3)
            assert ((weight - source.weight).abs() <= bound).all(), name
            quantised += 1
        elif isinstance(source, (nn.Linear, nn.LayerNorm, nn.Conv3d)):  # FP32Linear, embedders, final layer, norms
            for key, value in source.state_dict().items():
                assert torch.equal(module.state_dict()[key], value), f"{name}.{key} must stay as it was"
    assert quantised == 3 * 8  # qkv, proj, q_linear, kv_linear, proj, w1, w2, w3 per block
    assert is_quantised(model) and type(model.blocks[0].adaLN_modulation[1]) is FP32Linear


def relative_errors(result, reference):
    loss, grads = result
    ref_loss, ref_grads = reference
    loss_error = abs(loss.item() - ref_loss.item()) / ref_loss.item()
    grad_errors = {n: ((grads[n] - ref_grads[n]).norm() / ref_grads[n].norm()).item() for n in ref_grads}
    cosines = {n: torch.nn.functional.cosine_similarity(grads[n].flatten(), ref_grads[n].flatten(), dim=0).item() for n in ref_grads}
    return loss_error, grad_errors, cosines


@requires_quanto
def test_int8_lora_loss_and_gradients_within_tolerance(reference):
    model = quantised_lora_model("int8-quanto")
    assert type(model.blocks[0].attn.qkv.base_layer).__name__ == "QLinear"  # PEFT wrapped the quantised layer
    loss_error, grad_errors, _ = relative_errors(loss_and_grads(model, make_batch()), reference)
    assert loss_error < INT8_LOSS_RTOL
    assert max(grad_errors.values()) < INT8_GRAD_RTOL, max(grad_errors.items(), key=lambda kv: kv[1])


@requires_quanto
def test_int4_lora_loss_and_gradients_within_tolerance(reference):
    model = quantised_lora_model("int4-quanto")
    loss_error, _, cosines = relative_errors(loss_and_grads(model, make_batch()), reference)
    assert loss_error < INT4_LOSS_RTOL
    assert min(cosines.values()) > INT4_GRAD_COSINE


@requires_quanto
def test_quantising_trainable_weights_is_rejected():
    model = small_dit(depth=2)  # every weight trains
    with pytest.raises(MemoryOptionError, match="model_type 'lora'"):
        quantise_transformer(model, "int8-quanto")


def test_fp8_needs_a_float8_gpu():
    with pytest.raises(MemoryOptionError, match="fp8-torchao' needs a CUDA GPU with float8 support.*use 'int8-quanto'"):
        check_quantisation_supported("fp8-torchao", "cpu")


@requires_quanto
def test_int4_has_no_mps_kernels():
    with pytest.raises(MemoryOptionError, match="int4-quanto' has no Apple MPS kernels"):
        check_quantisation_supported("int4-quanto", "mps")


def test_a_missing_optimum_is_one_clear_error(monkeypatch):
    """Without optimum (a plain ``pip install -e .``) quanto precisions name the install, not a traceback."""
    import sys

    for name in [name for name in sys.modules if name.startswith("optimum.")]:
        monkeypatch.delitem(sys.modules, name)  # an imported submodule would be found without its parent
    monkeypatch.setitem(sys.modules, "optimum", None)
    for precision in ("int8-quanto", "int4-quanto"):
        with pytest.raises(MemoryOptionError, match=f"'{precision}' needs optimum-quanto: pip install optimum-quanto"):
            check_quantisation_supported(precision, "cpu")


@requires_quanto
def test_torch_unpack_matches_quantos_reference():
    """The CUDA kernel frametuner registers for ``quanto::unpack`` must undo quanto's packing
    exactly as quanto's own reference does (run here on the CPU), for int4 and int2, with a
    row count that is not a multiple of the values per byte."""
    from optimum.quanto.tensor.packed import PackedTensor

    from frametuner.memory.quantise import unpack_with_torch_ops

    generator = torch.Generator().manual_seed(0)
    for bits in (4, 2):
        values = torch.randint(0, 2**bits, (301, 40), generator=generator, dtype=torch.uint8)
        packed = PackedTensor.pack(values, bits)._data
        ours = unpack_with_torch_ops(packed, bits)
        assert torch.equal(ours, torch.ops.quanto.unpack(packed, bits))
        assert torch.equal(ours[: values.shape[0]], values)


@requires_quanto
def test_int4_on_cuda_routes_quantos_unpack_to_torch_instead_of_compiling(monkeypatch):
    """quanto compiles its CUDA unpack (used by the int4 backward) with nvcc on first use:
    minutes inside step 1, and a CUDA toolkit most users lack. On torch >= 2.8 the op's CUDA
    kernel becomes torch ops and nothing is built; older torch builds it (or says what is
    missing) while loading."""
    from torch.utils import cpp_extension

    import frametuner.memory.quantise as quantise

    class Extension:
        build_directory, loads = "/tmp/quanto-build", 0

        @property
        def lib(self):
            Extension.loads += 1
            return object()

    import optimum.quanto.library.extensions as extensions

    monkeypatch.setattr(extensions, "is_extension_available", lambda name: name == "quanto_cuda")
    monkeypatch.setattr(extensions, "get_extension", lambda name: Extension())
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    routed = []
    monkeypatch.setattr(quantise, "route_quanto_unpack_to_torch", lambda: routed.append(1) or True)
    for precision, device in [("int4-quanto", "cpu"), ("int8-quanto", "cuda"), ("fp8-torchao", "cuda")]:
        quantise.prepare_quanto_kernels(precision, device)
    assert routed == []
    quantise.block_quantiser("int4-quanto", training=True, device="cuda:0")  # what loading and quantise_transformer call
    assert routed == [1] and Extension.loads == 0

    monkeypatch.setattr(quantise, "route_quanto_unpack_to_torch", lambda: False)  # torch < 2.8
    quantise.prepare_quanto_kernels("int4-quanto", "cuda:0")
    assert Extension.loads == 1
    quantise.block_quantiser("int4-quanto", training=False, device="cuda")  # sampling: no backward, nothing to build
    assert Extension.loads == 1
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    with pytest.raises(MemoryOptionError, match=r"CUDA toolkit \(nvcc\).*CUDA_HOME, upgrade torch, or use 'int8-quanto'"):
        quantise.prepare_quanto_kernels("int4-quanto", "cuda")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(MemoryOptionError, match="pip install ninja"):
        quantise.prepare_quanto_kernels("int4-quanto", "cuda")
    assert Extension.loads == 1


@requires_quanto
def test_routing_registers_a_cuda_kernel_for_quantos_unpack():
    import inspect

    from frametuner.memory.quantise import route_quanto_unpack_to_torch

    if "allow_override" not in inspect.signature(torch.library.Library.impl).parameters:
        assert route_quanto_unpack_to_torch() is False
        return
    assert route_quanto_unpack_to_torch() is True
    assert route_quanto_unpack_to_torch() is True  # once per process
    assert torch._C._dispatch_has_kernel_for_dispatch_key("quanto::unpack", "CUDA")


def test_config_rejects_full_finetuning_of_a_quantised_base():
    from frametuner.config import TrainConfig

    with pytest.raises(ValueError, match="model_type 'full' cannot train a quantised base"):
        TrainConfig(model_flavour="tiny", model_type="full", base_model_precision="int8-quanto")


# ---------------------------------------------------------------------- streamed loading
def write_checkpoint(folder: Path, model, max_shard_size: str | None = None) -> Path:
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder


def test_blockwise_loading_equals_from_pretrained(tmp_path):
    source = small_dit(depth=3)
    folder = write_checkpoint(tmp_path / "dit", source, max_shard_size="200KB")
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").exists()
    prepared = []
    model = load_blockwise(LongCatVideoTransformer3DModel, folder, dtype=torch.bfloat16, prepare_block=prepared.append)
    expected = LongCatVideoTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert len(prepared) == 3 and prepared[0] is model.blocks[0]
    assert model.state_dict().keys() == expected.state_dict().keys()
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_blockwise_loading_names_a_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = write_checkpoint(tmp_path / "dit", small_dit(depth=2))
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    del weights["blocks.1.ffn.w2.weight"]
    save_file(weights, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(KeyError, match="lacks blocks.1.ffn.w2.weight"):
        load_blockwise(LongCatVideoTransformer3DModel, folder, dtype=torch.float32)


PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from frametuner.memory.quantise import block_quantiser
    from frametuner.models.loading import load_blockwise
    from frametuner.models.longcat_video.transformer import LongCatVideoTransformer3DModel

    def status(key):  # VmRSS now, VmHWM peak (of this image: ru_maxrss would include the forking parent's)
        line = next(line for line in open("/proc/self/status") if line.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    quantise = block_quantiser("int8-quanto")
    baseline = status("VmRSS")
    model = load_blockwise(LongCatVideoTransformer3DModel, sys.argv[1], dtype=torch.bfloat16, prepare_block=quantise)
    print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "after": status("VmRSS")}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@requires_quanto
def test_quantising_while_loading_keeps_host_memory_near_the_quantised_size(tmp_path):
    """A 150M-parameter DiT (bf16: 300 MB) loads and quantises to int8 with a peak of the
    int8 model plus about one bf16 block, never the bf16 model."""
    config = dict(hidden_size=768, depth=16, num_heads=6, caption_channels=64, adaln_tembed_dim=64, frequency_embedding_size=32)
    with torch.device("meta"):
        skeleton = LongCatVideoTransformer3DModel(**config)
    block_params = sum(p.numel() for p in skeleton.blocks[0].parameters())
    linear_params = sum(m.weight.numel() for m in skeleton.blocks.modules() if type(m) is nn.Linear)
    bf16_bytes = 2 * sum(p.numel() for p in skeleton.parameters())
    int8_bytes = bf16_bytes - linear_params  # quantised Linears: 1 byte per weight instead of 2
    model = LongCatVideoTransformer3DModel(**config).to(torch.bfloat16)
    folder = write_checkpoint(tmp_path / "dit", model, max_shard_size="100MB")
    del model

    repo = str(Path(__file__).resolve().parents[2])  # first, keeping what the caller's path adds (carried packages)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(folder)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    grown = numbers["peak"] - numbers["baseline"]
    bound = int8_bytes + 3 * 2 * block_params + 48 * 2**20  # + a few bf16 blocks in flight and allocator slack
    assert bound < bf16_bytes, "the test model must be able to tell the two apart"
    assert grown <= bound, f"peak grew {grown / 2**20:.0f} MB; bound {bound / 2**20:.0f} MB (bf16 model {bf16_bytes / 2**20:.0f} MB)"


@requires_quanto
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_lora_on_an_int4_base_reduces_the_loss(device):
    """Issue 8's int4 promise: LoRA trained on an int4-quanto base still learns. A fixed batch
    (latents, noise target, timestep, text), 30 AdamW steps: the loss falls below 75% of
    where it started (measured on CPU: 62%), and the int4 base weights do not change."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = small_dit(depth=2, dtype=torch.float32)
    model.requires_grad_(False)
    quantise_transformer(model, "int4-quanto", device=device)
    trainable = add_test_lora(model)
    model.to(device)
    model.enable_gradient_checkpointing("full")
    def values(param):  # a quantised weight compares by its dequantised values
        return (param.dequantize() if hasattr(param, "dequantize") else param).detach().float().cpu()

    base = {name: values(param) for name, param in model.named_parameters() if not param.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=3e-3, weight_decay=0.0)
    batch = make_batch(device=device)
    losses = []
    for _ in range(30):
        loss, grads = loss_and_grads(model, batch)
        for name, param in trainable.items():
            param.grad = grads[name]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    for name, param in model.named_parameters():
        if name in base:
            assert torch.equal(values(param), base[name]), f"{name} changed"
