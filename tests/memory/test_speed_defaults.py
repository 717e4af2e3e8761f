"""Issue 23's defaults: the auto policy's budget from the card's capacity, activation offload
on by default where it buys speed and the host has the RAM (explicit settings win), and
fp8_compute (off by default, refused where the GPU cannot run it)."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from frametuner.config import TrainConfig
from frametuner.memory import activation_offload as offload_module
from frametuner.memory import auto
from frametuner.memory.activation_offload import enable_activation_offload
from frametuner.memory.errors import MemoryOptionError

from .conftest import DEPTH
from .helpers import assert_same, loss_and_grads, make_batch, twin

GiB = 2**30
H100_TOTAL = 85_045_870_592  # torch.cuda.mem_get_info()[1] of an H100 80GB HBM3 (79.2 GiB)


# ---------------------------------------------------------------------- budget
def test_budget_comes_from_the_cards_capacity_minus_a_margin():
    budget = auto.activation_budget_bytes(H100_TOTAL, H100_TOTAL)
    assert budget == H100_TOTAL - int(0.06 * H100_TOTAL)  # 74.4 GiB on an H100, not the old fixed 50 GB
    assert 74 * GiB < budget < 75 * GiB
    # Another process holds 20 GiB of the card: the budget is what this process can have.
    assert auto.activation_budget_bytes(H100_TOTAL - 20 * GiB, H100_TOTAL) == budget - 20 * GiB
    # A small card: the 2 GiB minimum margin; capacity is never above the total.
    assert auto.activation_budget_bytes(16 * GiB, 16 * GiB) == 14 * GiB
    assert auto.activation_budget_bytes(32 * GiB, 16 * GiB) == 14 * GiB
    assert auto.activation_budget_bytes(GiB, 16 * GiB) == 0


# ---------------------------------------------------------------------- offload decision
@pytest.mark.parametrize(
    "explicit, device, checkpointing, policy, enabled, check",
    [
        (None, "cuda", True, "auto", True, True),  # the default on a GPU: on, host RAM checked per shape
        (None, "cpu", True, "auto", False, False),  # frees GPU memory only
        (None, "cuda", False, "auto", False, False),
        (None, "cuda", True, "full", False, False),  # nothing would use the room
        (None, "cuda", True, "save_attention", False, False),
        (True, "cuda", True, "full", True, False),  # explicit true wins, no RAM check (the user asked)
        (True, "cpu", True, "auto", True, False),
        (False, "cuda", True, "auto", False, False),  # explicit false wins
    ],
)
def test_activation_offload_decision(explicit, device, checkpointing, policy, enabled, check):
    decision = auto.decide_activation_offload(explicit, device_type=device, gradient_checkpointing=checkpointing, policy=policy)
    assert (decision.enabled, decision.check_host_ram) == (enabled, check)
    assert decision.reason


def test_activation_offload_auto_stays_off_with_several_processes():
    decision = auto.decide_activation_offload(None, device_type="cuda", gradient_checkpointing=True, policy="auto", processes=8)
    assert not decision.enabled and "8 processes" in decision.reason
    assert auto.decide_activation_offload(True, device_type="cuda", gradient_checkpointing=True, policy="auto", processes=8).enabled


def test_activation_offload_is_never_on_for_sampling():
    assert not auto.decide_activation_offload(None, device_type="cuda", gradient_checkpointing=True, policy="auto", training=False).enabled
    assert not auto.decide_activation_offload(True, device_type="cuda", gradient_checkpointing=True, policy="auto", training=False).enabled


def test_host_ram_check():
    needed = 14 * GiB  # 48 blocks x 0.29 GiB at 480x832x93
    assert auto.host_ram_allows(needed, available=120 * GiB, total=128 * GiB)
    assert not auto.host_ram_allows(needed, available=20 * GiB, total=128 * GiB)  # 14 + 12.8 margin > 20
    assert auto.host_ram_allows(needed, available=20 * GiB, total=32 * GiB)  # 14 + 4 <= 20
    assert not auto.host_ram_allows(needed, available=60 * GiB, total=128 * GiB, processes=4)  # 4 ranks pin 56 GiB
    assert auto.host_available_bytes() > 0


def test_the_config_key_defaults_to_auto_and_keeps_explicit_values():
    assert TrainConfig.model_fields["gradient_checkpointing_cpu_offload"].default is None
    assert TrainConfig(gradient_checkpointing_cpu_offload=False).gradient_checkpointing_cpu_offload is False
    assert TrainConfig(gradient_checkpointing_cpu_offload=True).gradient_checkpointing_cpu_offload is True
    # Auto never conflicts with gradient_checkpointing: false (an explicit true still does).
    TrainConfig(gradient_checkpointing=False)
    with pytest.raises(ValueError, match="needs gradient_checkpointing"):
        TrainConfig(gradient_checkpointing=False, gradient_checkpointing_cpu_offload=True)


def _forward_backward(model):
    batch = make_batch()
    prediction = model(**{key: value for key, value in batch.items() if key != "target"})
    (prediction.float() - batch["target"]).pow(2).mean().backward()


def test_a_host_without_the_ram_trains_without_offload(lora_model, monkeypatch, caplog):
    """The auto setting checks the pinned memory a shape needs before taking any, logs its
    decision once per shape, and a host that lacks it trains as without offload (same maths)."""
    monkeypatch.setattr(auto, "host_available_bytes", lambda: 1 * GiB)
    monkeypatch.setattr(auto, "host_total_bytes", lambda: 8 * GiB)
    model = twin(lora_model)
    hook = enable_activation_offload(model, "cpu", check_host_ram=True)
    with caplog.at_level(logging.INFO, logger=offload_module.__name__):
        assert_same(loss_and_grads(model, make_batch()), loss_and_grads(lora_model, make_batch()))
        _forward_backward(model)
    assert hook.packed == 0  # nothing went to host memory
    assert list(hook.host_ram_ok.values()) == [False]
    assert sum("not enough host RAM" in r.message for r in caplog.records) == 1  # one line per shape


def test_a_host_with_the_ram_offloads(lora_model, monkeypatch):
    monkeypatch.setattr(auto, "host_available_bytes", lambda: 256 * GiB)
    monkeypatch.setattr(auto, "host_total_bytes", lambda: 256 * GiB)
    model = twin(lora_model)
    hook = enable_activation_offload(model, "cpu", check_host_ram=True)
    assert_same(loss_and_grads(model, make_batch()), loss_and_grads(lora_model, make_batch()))
    assert hook.packed == DEPTH and list(hook.host_ram_ok.values()) == [True]


def test_the_trainer_keeps_todays_behaviour_on_a_cpu(tmp_path):
    """Auto on a CPU: no activation offload, full recomputation (no budget)."""
    from frametuner.models.longcat_video.tiny import ensure_tiny_checkpoint
    from frametuner.training.trainer import Trainer

    from ..training.helpers import synthetic_data, tiny_config

    ensure_tiny_checkpoint()
    trainer = Trainer(tiny_config(tmp_path, max_train_steps=1), synthetic_data(n=1))
    assert trainer.memory.activation_offload is None
    assert "actoffload" not in trainer.memory.mode


# ---------------------------------------------------------------------- fp8 compute
def test_fp8_compute_is_off_by_default():
    config = TrainConfig()
    assert config.fp8_compute is False and config.fp8_compute_scaling == "rowwise" and config.fp8_compute_layers == "all_but_cross"


@pytest.mark.parametrize("family", ["longcat_video", "wan"])
def test_fp8_compute_layers_ffn_picks_each_familys_feed_forward_linears(family):
    """``fp8_compute_layers: ffn`` converts what the family names its feed-forward Linears and
    nothing else (the attention projections carry most of float8's error: bench/RESULTS.md)."""
    from frametuner.memory.fp8 import fp8_layer_filter
    from frametuner.models.registry import load_spec

    spec = load_spec(family)
    model = spec.build_transformer(flavour="tiny", device="meta", dtype=torch.bfloat16)
    names = {name for name, module in model.blocks[0].named_modules() if type(module) is torch.nn.Linear}
    include = fp8_layer_filter("ffn", spec)
    picked = {name for name in names if include(name)}
    expected = {"longcat_video": {"ffn.w1", "ffn.w2", "ffn.w3"}, "wan": {"ffn.net.0.proj", "ffn.net.2"}}[family]
    assert picked == expected and names - picked  # the attention projections stay bf16
    assert fp8_layer_filter("all", spec) is None
    assert TrainConfig(model_family=family, fp8_compute_layers="ffn").fp8_compute_layers == "ffn"
    with pytest.raises(ValueError, match="fp8_compute_layers"):
        TrainConfig(model_family=family, fp8_compute_layers="attention")


@pytest.mark.parametrize(("family", "flavour"), [("longcat_video", "tiny"), ("wan", "tiny"), ("wan", "tiny-i2v")])
def test_fp8_compute_layers_all_but_cross_keeps_the_cross_attention_bf16(family, flavour):
    """The default ``all_but_cross``: every eligible Linear in float8 but the cross-attention's
    (to text, and Wan i2v's image keys and values): in float8 they carried most of the DiT
    output's error on the H100 (6.1% -> 1.8%, bench/RESULTS.md)."""
    from frametuner.memory.fp8 import fp8_layer_filter
    from frametuner.models.registry import load_spec

    spec = load_spec(family)
    model = spec.build_transformer(flavour=flavour, device="meta", dtype=torch.bfloat16)
    names = {name for name, module in model.blocks[0].named_modules() if type(module) is torch.nn.Linear}
    include = fp8_layer_filter("all_but_cross", spec)
    kept = {name for name in names if not include(name)}
    expected = {
        "longcat_video": {"cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj"},
        "wan": {"attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"} | ({"attn2.add_k_proj", "attn2.add_v_proj"} if flavour == "tiny-i2v" else set()),
    }[family]
    assert kept == expected
    assert TrainConfig(model_family=family).fp8_compute_layers == "all_but_cross"


def test_fp8_compute_layers_for_a_family_that_names_none():
    """A family without cross-attention (none named) runs every layer in float8 under the default;
    ``ffn`` without named feed-forward layers is refused with what to use instead."""
    from types import SimpleNamespace

    from frametuner.memory.errors import MemoryOptionError
    from frametuner.memory.fp8 import fp8_layer_filter

    bare = SimpleNamespace(name="bare", feedforward_layers=(), cross_attention_layers=())
    assert fp8_layer_filter("all_but_cross", bare) is None
    with pytest.raises(MemoryOptionError, match="names no feed-forward layers; use 'all'"):
        fp8_layer_filter("ffn", bare)
    with pytest.raises(ValueError, match="fp8_compute_layers 'attention' is not one of"):
        fp8_layer_filter("attention", bare)


def test_fp8_compute_is_refused_where_the_gpu_cannot_run_it(tmp_path):
    from frametuner.models.longcat_video.tiny import ensure_tiny_checkpoint
    from frametuner.training.trainer import Trainer

    from ..training.helpers import synthetic_data, tiny_config

    ensure_tiny_checkpoint()
    with pytest.raises(MemoryOptionError, match=r"fp8_compute needs a CUDA GPU with float8 tensor cores \(sm89\+.*runs on cpu; remove fp8_compute"):
        Trainer(tiny_config(tmp_path, max_train_steps=1, fp8_compute=True), synthetic_data(n=1))


def test_fp8_compute_refuses_an_older_gpu(monkeypatch):
    from frametuner.memory import fp8

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(MemoryOptionError, match="A100-SXM4-80GB is sm80"):
        fp8.check_fp8_compute_supported(torch.device("cuda", 0))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(base_model_precision="int8-quanto"), "use base_model_precision 'bf16'.*with fp8_compute"),
        (dict(base_model_precision="int4-quanto"), "'int4-quanto' without fp8_compute"),
        (dict(base_model_precision="fp8-torchao"), "drop fp8_compute"),
        (dict(model_type="full"), "use model_type 'lora' with fp8_compute"),
    ],
)
def test_fp8_compute_refuses_combinations_that_cannot_work(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(fp8_compute=True, **overrides)


requires_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")


@requires_torchao
def test_frozen_float8_linear_matches_torchaos_float8_linear_without_a_weight_gradient():
    """Oracle: torchao's own Float8Linear (emulated float8 on the CPU): the same output and
    input gradient, bit for bit; no weight gradient is computed."""
    from torchao.float8.float8_linear import Float8Linear

    from frametuner.memory.fp8 import _frozen_float8_linear_class, float8_config

    for scaling in ("rowwise", "tensorwise"):
        torch.manual_seed(0)
        linear = torch.nn.Linear(64, 32).to(torch.bfloat16).requires_grad_(False)
        with torch.no_grad():  # rows and columns spanning more than float8's range: the scaling axis matters
            linear.weight.mul_(torch.logspace(-10, 10, 32, base=2)[:, None] * torch.logspace(10, -10, 64, base=2)[None, :])
        reference = Float8Linear.from_float(torch.nn.Linear(64, 32).to(torch.bfloat16), config=float8_config(scaling, emulate=True))
        reference.weight = torch.nn.Parameter(linear.weight.detach().clone())
        reference.bias = torch.nn.Parameter(linear.bias.detach().clone())
        mine = _frozen_float8_linear_class().from_float(linear, config=float8_config(scaling, emulate=True))
        x = (torch.randn(3, 10, 64) * torch.logspace(-10, 10, 64, base=2)).to(torch.bfloat16).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        grad = (torch.randn(3, 10, 32) * torch.logspace(10, -10, 32, base=2)).to(torch.bfloat16)
        out, out_ref = mine(x), reference(x_ref)
        out.backward(grad)
        out_ref.backward(grad)
        assert torch.equal(out, out_ref) and torch.equal(x.grad, x_ref.grad)
        assert linear.weight.grad is None
        # On ordinary data: float8 rounding, not garbage.
        plain = torch.nn.Linear(256, 128).to(torch.bfloat16).requires_grad_(False)
        exact_input = torch.randn(64, 256, dtype=torch.bfloat16)
        exact = torch.nn.functional.linear(exact_input.float(), plain.weight.float(), plain.bias.float())
        approx = _frozen_float8_linear_class().from_float(plain, config=float8_config(scaling, emulate=True))(exact_input).float()
        assert 0.005 < ((approx - exact).norm() / exact.norm()).item() < 0.08


@requires_torchao
def test_fp8_conversion_picks_only_the_frozen_base_linears(lora_model):
    from torchao.float8.float8_linear import Float8Linear

    from frametuner.memory.fp8 import convert_to_fp8_compute

    model = twin(lora_model)
    bf16_linears = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad and "lora_" not in n and n.startswith("blocks.")}
    count = convert_to_fp8_compute(model, emulate=True)
    converted = {n for n, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert count == len(converted) > 0 and converted == {n for n in bf16_linears if model.get_submodule(n).in_features % 16 == 0 and model.get_submodule(n).out_features % 16 == 0}
    assert all(not model.get_submodule(n).weight.requires_grad for n in converted)
    assert any(n.endswith("base_layer") for n in converted)  # inside PEFT's LoRA layers
    trainable = twin(lora_model).requires_grad_(True)  # full fine-tuning: nothing is frozen, nothing converts
    assert convert_to_fp8_compute(trainable, emulate=True) == 0
    # LoRA trains: gradients reach every LoRA weight and close to the bf16 ones.
    reference = loss_and_grads(lora_model, make_batch())
    result = loss_and_grads(model, make_batch())
    assert set(result[1]) == set(reference[1])
    for name, grad in reference[1].items():
        cosine = torch.nn.functional.cosine_similarity(result[1][name].flatten().float(), grad.flatten().float(), dim=0)
        assert cosine > 0.9, name


@requires_torchao
def test_fp8_conversion_of_some_layers_and_its_revert(lora_model):
    from torchao.float8.float8_linear import Float8Linear

    from frametuner.memory.fp8 import convert_to_fp8_compute, revert_fp8_compute

    model = twin(lora_model)
    batch = make_batch()
    reference = loss_and_grads(model, batch)
    count = convert_to_fp8_compute(model, emulate=True, include=lambda name: ".ffn." in f".{name}")
    converted = {n for n, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert count == len(converted) > 0 and all(".ffn." in n for n in converted)
    assert not torch.equal(loss_and_grads(model, batch)[0], reference[0])  # float8 rounding changed the loss
    weights = {n: p for n, p in model.named_parameters()}
    assert revert_fp8_compute(model) == count
    assert not any(isinstance(m, Float8Linear) for m in model.modules())
    assert all(p is weights[n] for n, p in model.named_parameters())  # the same Parameters, nothing copied
    assert_same(loss_and_grads(model, batch), reference)


# ---------------------------------------------------------------------- compile once
def test_compile_cache_folder_and_torch_settings(tmp_path, monkeypatch):
    import torch._functorch.config
    import torch._inductor.config

    from frametuner import compile_cache

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", compile_cache.ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRAMETUNER_HOME", str(tmp_path / "home"))
    # torch's own config.patch, not monkeypatch: monkeypatch's undo deletes a ConfigModule
    # entry (its setattr goes through the module's __dict__), and every later compile in the
    # process then fails with "enable_autograd_cache does not exist".
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        _check_compile_cache(monkeypatch, tmp_path)


@pytest.mark.parametrize("cacheable", [True, False])
def test_compile_cache_keeps_the_rng_wrapped_attention_cacheable(monkeypatch, cacheable):
    """Every SDPA op is tagged random, so a checkpointed block's recomputed attention is
    wrapped in an RNG-state HOP; where torch cannot cache the CUDA-graph-safe one (2.11, the
    H100's), the compile cache turns that wrapping off, else leaves torch's setting alone."""
    import torch._functorch.config
    from torch._prims import rng_prims

    from frametuner import compile_cache

    assert torch.Tag.nondeterministic_seeded in torch.ops.aten._scaled_dot_product_cudnn_attention.default.tags
    monkeypatch.setattr(type(rng_prims.graphsafe_run_with_rng_state), "cacheable", lambda self: cacheable)
    with torch._functorch.config.patch(graphsafe_rng_functionalization=True):
        assert compile_cache.keep_rng_ops_cacheable() is (not cacheable)
        assert torch._functorch.config.graphsafe_rng_functionalization is cacheable


def _check_compile_cache(monkeypatch, tmp_path):
    import torch._functorch.config
    import torch._inductor.config

    from frametuner import compile_cache

    assert compile_cache.compile_cache_dir() == tmp_path / "home" / "compile-cache"
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))  # overridable
    folder = compile_cache.enable_compile_cache()
    assert folder == tmp_path / "mine" and folder.is_dir()
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(folder / "triton")
    assert torch._inductor.config.fx_graph_cache and torch._functorch.config.enable_autograd_cache
    # What the user set already wins.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    compile_cache.enable_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "theirs")


def test_the_trainer_sets_the_compile_cache_before_compiling(tmp_path, monkeypatch):
    from frametuner import compile_cache
    from frametuner.models.longcat_video.tiny import ensure_tiny_checkpoint
    from frametuner.models.longcat_video.transformer import LongCatVideoTransformer3DModel
    from frametuner.training.trainer import Trainer

    from ..training.helpers import synthetic_data, tiny_config

    events = []
    monkeypatch.setattr(compile_cache, "enable_compile_cache", lambda folder=None: events.append("cache"))
    monkeypatch.setattr(LongCatVideoTransformer3DModel, "compile_blocks", lambda self, **kw: events.append("compile"))
    ensure_tiny_checkpoint()
    Trainer(tiny_config(tmp_path, max_train_steps=1, compile_transformer=True), synthetic_data(n=1))
    assert events == ["cache", "compile"]
