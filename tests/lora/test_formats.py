"""The three file formats: documented key naming and shapes, exact round trips, ComfyUI mapping."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from frametuner.cli import main
from frametuner.lora import (
    LoraFormatError,
    LoraWeights,
    add_lora,
    apply_lora,
    convert,
    detect_format,
    export_lora,
    read_lora,
    write_lora,
)
from frametuner.lora.formats import comfyui_key_to_module
from frametuner.lora.layout import layout_for_family

from ..conftest import assert_close
from .conftest import UPSTREAM_LORA, randomise_lora, run_t2v

TOL = dict(atol=1e-5, rtol=1e-5)
ALL_TARGETS = [
    "attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj",
    "ffn.w1", "ffn.w2", "ffn.w3", "adaLN_modulation.1", "final_layer.adaLN_modulation.1", "final_layer.linear",
]
H = "___lorahyphen___"


def _tensors(path):
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


@pytest.fixture
def trained(dit):
    """A frametuner-trained-like LoRA: PEFT adapters on every target, random weights, dropout 0."""
    add_lora(dit, rank=4, alpha=2.0, dropout=0.0, target_modules=ALL_TARGETS)
    randomise_lora(dit, seed=1)
    return dit


# ---------------------------------------------------------------------------- upstream
def test_upstream_export_has_the_documented_keys_and_shapes(trained, tmp_path):
    path = export_lora(trained, tmp_path, ["upstream"], metadata={"base_model": "fixture"})["upstream"]
    tensors, metadata = _tensors(path)
    # docs: fused layers n = 3 (attn.qkv), 2 (kv_linear), 6 (adaLN), 2 (final adaLN); down [n*r, in], up blocks [out/n, r]
    layers = {  # module -> (in, out, n)
        "attn.qkv": (256, 768, 3), "attn.proj": (256, 256, 1), "cross_attn.q_linear": (256, 256, 1),
        "cross_attn.kv_linear": (256, 512, 2), "cross_attn.proj": (256, 256, 1), "ffn.w1": (256, 768, 1),
        "ffn.w2": (768, 256, 1), "ffn.w3": (256, 768, 1), "adaLN_modulation.1": (64, 1536, 6),
    }
    expected = {}
    modules = {f"blocks.{b}.{name}": spec for b in range(2) for name, spec in layers.items()}
    modules["final_layer.adaLN_modulation.1"] = (64, 512, 2)
    modules["final_layer.linear"] = (256, 64, 1)
    for module, (fan_in, fan_out, parts) in modules.items():
        prefix = "lora" + H + module.replace(".", H)
        expected[f"{prefix}.lora_down.weight"] = (parts * 4, fan_in)
        expected[f"{prefix}.alpha_scale"] = ()
        if parts == 1:
            expected[f"{prefix}.lora_up.weight"] = (fan_out, 4)
        for i in range(parts if parts > 1 else 0):
            expected[f"{prefix}.lora_up.blocks.{i}.weight"] = (fan_out // parts, 4)
    assert {key: tuple(t.shape) for key, t in tensors.items()} == expected
    assert all(tensors[key].dtype == torch.float32 and float(tensors[key]) == 0.5 for key in expected if key.endswith("alpha_scale"))
    assert metadata["lora_network_dim"] == "4" and metadata["rank"] == "4" and metadata["alpha"] == "2"
    assert metadata["base_model"] == "fixture"
    assert json.loads(metadata["target_modules"]) == sorted(ALL_TARGETS)
    # PEFT's one lora_A feeds every part: upstream's down is it stacked n times
    qkv = trained.blocks[0].attn.qkv
    down = tensors["lora" + H + "blocks" + H + "0" + H + "attn" + H + "qkv.lora_down.weight"]
    assert torch.equal(down, qkv.lora_A["default"].weight.repeat(3, 1))


@pytest.mark.parametrize("fmt", ["upstream", "comfyui", "peft"])
def test_trained_lora_exported_and_reapplied_gives_identical_outputs(trained, reference_dit, cases, tmp_path, fmt):
    expected = run_t2v(trained, cases)
    path = export_lora(trained, tmp_path, [fmt])[fmt]
    fresh = copy.deepcopy(reference_dit)
    apply_lora(fresh, path)
    assert torch.equal(run_t2v(fresh, cases), expected)  # same float ops in the same order: bitwise
    assert not torch.allclose(expected, run_t2v(reference_dit, cases), atol=1e-3), "the LoRA must change the output"


def test_one_rank_per_upstream_file_pads_exactly(dit, cases, tmp_path):
    """A fused layer needing rank 12 makes the whole file rank 12 (upstream takes one lora_network_dim)."""
    weights = read_lora(UPSTREAM_LORA)
    qkv = weights.deltas["blocks.0.attn.qkv"]
    qkv.up[:256, 4:] = 0.01  # q now reads k's down chunk: no longer block-diagonal, needs rank 12 per part
    assert not qkv.block_diagonal(3)
    path = write_lora(weights, tmp_path / "mixed.safetensors", "upstream")
    tensors, metadata = _tensors(path)
    assert metadata["lora_network_dim"] == "12"
    for key, tensor in tensors.items():
        if key.endswith("lora_down.weight"):
            assert tensor.shape[0] % 12 == 0, key
        elif ".lora_up." in key:
            assert tensor.shape[1] == 12, key
    reference = copy.deepcopy(dit)
    apply_lora(reference, weights)
    apply_lora(dit, path)
    assert_close(run_t2v(dit, cases), run_t2v(reference, cases), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- round trips
def test_upstream_to_comfyui_to_upstream_is_exact(dit, cases, tmp_path):
    comfy = convert(UPSTREAM_LORA, tmp_path / "comfy.safetensors", to="comfyui")
    back = convert(comfy, tmp_path / "back.safetensors", to="upstream")
    original, round_trip = load_file(UPSTREAM_LORA), load_file(back)
    assert set(round_trip) == set(original)
    assert all(torch.equal(round_trip[key], original[key]) for key in original)
    apply_lora(dit, back)
    assert_close(run_t2v(dit, cases), cases["lora.output"], **TOL)


def test_peft_to_comfyui_to_peft_reproduces_the_reference(reference_dit, cases, tmp_path):
    peft_dir = convert(UPSTREAM_LORA, tmp_path / "peft", to="peft")
    comfy = convert(peft_dir, tmp_path / "comfy.safetensors", to="comfyui")
    back = convert(comfy, tmp_path / "peft_again", to="peft")
    assert detect_format(back) == "peft"
    model = copy.deepcopy(reference_dit)
    apply_lora(model, back)
    assert_close(run_t2v(model, cases), cases["lora.output"], **TOL)
    # and peft's own loader reads frametuner's PEFT folder
    with_peft = PeftModel.from_pretrained(copy.deepcopy(reference_dit), str(back))
    assert_close(run_t2v(with_peft, cases), cases["lora.output"], **TOL)


def test_peft_export_keys_and_config(tmp_path):
    folder = convert(UPSTREAM_LORA, tmp_path / "peft", to="peft")
    tensors, metadata = _tensors(folder / "adapter_model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert json.loads(metadata["adapter_config"]) == config
    assert "base_model.model.blocks.0.attn.qkv.lora_A.weight" in tensors
    assert all(key.startswith("base_model.model.") for key in tensors)
    # fixture: rank 4 alpha 2; its fused layers (own down per part) are rank n*4, alpha n*2
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 2, "LORA")
    assert config["rank_pattern"][r"blocks\.0\.attn\.qkv"] == 12 and config["alpha_pattern"][r"blocks\.0\.attn\.qkv"] == 6
    assert config["rank_pattern"][r"blocks\.1\.adaLN_modulation\.1"] == 24


# ---------------------------------------------------------------------------- ComfyUI
def test_comfyui_block0_matches_a_hand_written_expectation(tmp_path):
    """Key names, shapes and alpha of block 0 of the fixture LoRA in the wrapper's naming."""
    tensors, _ = _tensors(convert(UPSTREAM_LORA, tmp_path / "comfy.safetensors", to="comfyui"))
    block0 = {key: (tuple(t.shape), float(t) if t.dim() == 0 else None) for key, t in tensors.items() if ".blocks.0." in key}
    d = "diffusion_model.blocks.0."
    expected = {}
    for name, fan_in, fan_out, rank in [
        ("self_attn.q", 256, 256, 4), ("self_attn.k", 256, 256, 4), ("self_attn.v", 256, 256, 4),
        ("self_attn.o", 256, 256, 4), ("cross_attn.q", 256, 256, 4), ("cross_attn.k", 256, 256, 4),
        ("cross_attn.v", 256, 256, 4), ("cross_attn.o", 256, 256, 4), ("ffn.w1", 256, 768, 4),
        ("ffn.w2", 768, 256, 4), ("ffn.w3", 256, 768, 4), ("modulation.1", 64, 1536, 24),
    ]:
        expected[d + name + ".lora_A.weight"] = ((rank, fan_in), None)
        expected[d + name + ".lora_B.weight"] = ((fan_out, rank), None)
        expected[d + name + ".alpha"] = ((), 0.5 * rank)  # alpha = alpha_scale * rank
    assert block0 == expected

    upstream = load_file(UPSTREAM_LORA)
    qkv = "lora" + H + "blocks" + H + "0" + H + "attn" + H + "qkv"
    kv = "lora" + H + "blocks" + H + "0" + H + "cross_attn" + H + "kv_linear"
    for part, name in enumerate(["q", "k", "v"]):  # each part: its own down chunk and up block
        assert torch.equal(tensors[f"{d}self_attn.{name}.lora_A.weight"], upstream[f"{qkv}.lora_down.weight"][4 * part : 4 * part + 4])
        assert torch.equal(tensors[f"{d}self_attn.{name}.lora_B.weight"], upstream[f"{qkv}.lora_up.blocks.{part}.weight"])
    for part, name in enumerate(["k", "v"]):
        assert torch.equal(tensors[f"{d}cross_attn.{name}.lora_A.weight"], upstream[f"{kv}.lora_down.weight"][4 * part : 4 * part + 4])
        assert torch.equal(tensors[f"{d}cross_attn.{name}.lora_B.weight"], upstream[f"{kv}.lora_up.blocks.{part}.weight"])
    head = {key: tuple(t.shape) for key, t in tensors.items() if ".head." in key}
    assert head == {
        "diffusion_model.head.head.lora_A.weight": (4, 256), "diffusion_model.head.head.lora_B.weight": (64, 4),
        "diffusion_model.head.head.alpha": (),
        "diffusion_model.head.modulation.1.lora_A.weight": (8, 64),
        "diffusion_model.head.modulation.1.lora_B.weight": (512, 8), "diffusion_model.head.modulation.1.alpha": (),
    }


def test_comfyui_split_of_a_shared_down_copies_it_to_every_part(trained, tmp_path):
    tensors, _ = _tensors(export_lora(trained, tmp_path, ["comfyui"])["comfyui"])
    qkv = trained.blocks[1].attn.qkv
    a, b = qkv.lora_A["default"].weight, qkv.lora_B["default"].weight
    for part, name in enumerate(["q", "k", "v"]):
        assert torch.equal(tensors[f"diffusion_model.blocks.1.self_attn.{name}.lora_A.weight"], a)
        assert torch.equal(tensors[f"diffusion_model.blocks.1.self_attn.{name}.lora_B.weight"], b[256 * part : 256 * (part + 1)])
        assert float(tensors[f"diffusion_model.blocks.1.self_attn.{name}.alpha"]) == 2.0


def test_no_key_of_the_comfyui_export_is_left_unmapped(dit, tmp_path):
    tensors, _ = _tensors(convert(UPSTREAM_LORA, tmp_path / "comfy.safetensors", to="comfyui"))
    layout = layout_for_family()
    modules = dict(dit.named_modules())
    per_block = [
        f"{layer}.{leaf}"
        for layer in ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                      "cross_attn.v", "cross_attn.o", "ffn.w1", "ffn.w2", "ffn.w3", "modulation.1"]
        for leaf in ["lora_A.weight", "lora_B.weight", "alpha"]
    ]
    listed = [f"diffusion_model.blocks.{b}.{key}" for b in range(2) for key in per_block] + [
        f"diffusion_model.{layer}.{leaf}" for layer in ["head.head", "head.modulation.1"] for leaf in ["lora_A.weight", "lora_B.weight", "alpha"]
    ]
    assert sorted(tensors) == sorted(listed)  # 78 keys
    for key in listed:
        module, part, parts, slot = comfyui_key_to_module(key, layout)
        assert module in modules and 0 <= part < parts and slot in ("down", "up", "alpha"), key


def test_unmappable_comfyui_key_is_named(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 256),
            "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(256, 4),
            "diffusion_model.blocks.0.self_attn.norm_q.lora_A.weight": torch.zeros(4, 128),
        },
        str(path),
    )
    with pytest.raises(LoraFormatError, match=r"unmapped key 'diffusion_model\.blocks\.0\.self_attn\.norm_q\.lora_A\.weight'"):
        read_lora(path)


def test_comfyui_lora_with_only_some_of_qkv_is_exact(dit, cases, tmp_path):
    """A Wan-style LoRA adapting q and v only: the fused qkv gets nothing for k."""
    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for name in ("q", "v"):
        tensors[f"diffusion_model.blocks.0.self_attn.{name}.lora_A.weight"] = torch.randn(2, 256, generator=generator)
        tensors[f"diffusion_model.blocks.0.self_attn.{name}.lora_B.weight"] = torch.randn(256, 2, generator=generator)
        tensors[f"diffusion_model.blocks.0.self_attn.{name}.alpha"] = torch.tensor(1.0)
    save_file(tensors, str(tmp_path / "qv.safetensors"))
    delta = read_lora(tmp_path / "qv.safetensors").deltas["blocks.0.attn.qkv"]
    q = 0.5 * tensors["diffusion_model.blocks.0.self_attn.q.lora_B.weight"] @ tensors["diffusion_model.blocks.0.self_attn.q.lora_A.weight"]
    v = 0.5 * tensors["diffusion_model.blocks.0.self_attn.v.lora_B.weight"] @ tensors["diffusion_model.blocks.0.self_attn.v.lora_A.weight"]
    torch.testing.assert_close(delta.weight(), torch.cat([q, torch.zeros(256, 256), v]), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- detection, CLI
def test_format_detection(tmp_path):
    assert detect_format(UPSTREAM_LORA) == "upstream"
    assert detect_format(convert(UPSTREAM_LORA, tmp_path / "c.safetensors", to="comfyui")) == "comfyui"
    assert detect_format(convert(UPSTREAM_LORA, tmp_path / "p", to="peft")) == "peft"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(LoraFormatError, match="not a LoRA in a format frametuner reads"):
        detect_format(tmp_path / "model.safetensors")


def test_cli_convert(tmp_path, capsys):
    target = tmp_path / "lora_comfyui.safetensors"
    assert main(["lora", "convert", str(UPSTREAM_LORA), str(target), "--to", "comfyui"]) == 0
    assert read_lora(target).format == "comfyui"
    expected, _ = _tensors(convert(UPSTREAM_LORA, tmp_path / "direct.safetensors", to="comfyui"))
    written, _ = _tensors(target)
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    assert str(target) in capsys.readouterr().out


def test_empty_lora_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty LoRA"):
        write_lora(LoraWeights({}), tmp_path / "x.safetensors", "upstream")
