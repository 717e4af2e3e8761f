"""The family seam holds: outside ``frametuner/models/`` no module names a model family or
holds one of its constants; they ask the family (``frametuner.models.family.ModelFamily``).

The forbidden words and numbers are read from the registry, so a new family is covered
the moment it registers. Exempt: the config's default ``model_family`` (one line), and
``frametuner/bench/`` (benchmarks measure named models by design).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from frametuner.models.registry import families, load_spec

PACKAGE = Path(__file__).resolve().parents[2] / "frametuner"
EXEMPT_DIRS = ("models", "bench")
# The rooms that must hold no family constant (numbers); every module outside models/ and
# bench/ must not name a family. (A captioner's token budget of 512 is its own number.)
NUMBER_ROOMS = ("training", "sampling", "memory", "cache", "data", "config", "lora", "server")
# (file, text) pairs allowed to name a family: the config's default family, nothing else.
ALLOWED = {("config/schema.py", 'DEFAULT_MODEL_FAMILY = "')}
# The frame rule written out ((frames - 1) % 4): it belongs to FamilyInfo.check_frames.
FRAME_RULE = re.compile(r"\(\s*\w*frames?\w*\s*-\s*1\s*\)\s*%\s*\d")


def family_words() -> dict[str, str]:
    """Regex -> what it names: each family's name, display name and its stem, denoiser and
    block class names, hub ids."""
    words = {}
    for name, info in families().items():
        words[rf"\b{re.escape(name)}\b"] = f"family name {name!r}"
        for display in filter(None, {info.display_name, info.display_name.split(" ")[0].split("-")[0]}):
            words[rf"(?i)\b{re.escape(display)}\b"] = f"{name}'s name {display!r}"
        for path in info.transformer_classes:
            cls = path.rsplit(":", 1)[1]
            words[rf"\b{re.escape(cls)}\b"] = f"{name}'s denoiser class {cls}"
        for unit in load_spec(name).shard_units:
            words[rf"\b{re.escape(unit)}\b"] = f"{name}'s block class {unit}"
        for flavour in info.flavours.values():
            if flavour.hub_id:
                words[re.escape(flavour.hub_id)] = f"{name}'s checkpoint {flavour.hub_id}"
    return words


def family_numbers() -> dict[str, str]:
    """Regex -> what it is: defaults distinctive enough to be a family's (frames, text length,
    a shift other than 1) where a module writes them as a literal default or assignment."""
    numbers = {}
    for name, info in families().items():
        d = info.defaults
        for value, what in ((d.frames, "frames"), (d.text_length, "text length")):
            numbers[rf"(?:^\s*|[=:(,]\s*|default\s+){value}\b(?!\.\d)"] = f"{name}'s default {what} {value}"
        for value, what in ((d.shift, "shift"), (d.training_shift, "training shift")):
            if value != 1.0:
                numbers[rf"(?:[=:(,]\s*|\bk\s*=\s*){re.escape(repr(float(value)))}(?!\d)"] = f"{name}'s {what} {value}"
    return numbers


def scanned_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in EXEMPT_DIRS)


def violations(files: list[Path]) -> list[str]:
    words, numbers = family_words(), family_numbers()
    found = []
    for path in files:
        relative = path.relative_to(PACKAGE).as_posix()
        patterns = {**words, **(numbers if relative.split("/")[0] in NUMBER_ROOMS else {})}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(relative == file and text in line for file, text in ALLOWED):
                continue
            for pattern, what in patterns.items():
                if re.search(pattern, line):
                    found.append(f"frametuner/{relative}:{number}: {what}: {line.strip()[:120]}")
            if FRAME_RULE.search(line):
                found.append(f"frametuner/{relative}:{number}: the frame rule written out: {line.strip()[:120]}")
    return found


def test_no_module_outside_models_names_a_family_or_holds_its_constants():
    problems = violations(scanned_files())
    assert not problems, "ask the family (frametuner.models.family / registry) instead:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "line",
    [
        'SHARD_UNIT = "LongCatSingleStreamBlock"',
        "    flow_schedule_shift: float = _field(12.0, ...)",
        "def collate(items, pad_to: int | None = 512):",
        'family = "longcat_video"',
        "# the Wan VAE",
        '    num_frames: int = 93',
        "    if frames < 1 or (frames - 1) % 4:",
    ],
)
def test_the_scan_catches_a_leak(tmp_path, line, monkeypatch):
    """Break the seam on purpose: each of these lines, in a module outside models/, is reported."""
    module = tmp_path / "frametuner" / "training" / "leak.py"
    module.parent.mkdir(parents=True)
    module.write_text(line + "\n", encoding="utf-8")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "frametuner", raising=False)
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "frametuner"
    try:
        assert violations([module]), line
    finally:
        PACKAGE = saved


# ---------------------------------------------------------------------- the interface itself
def test_every_family_declares_the_interface_and_is_found_from_its_model():
    """Each registered family: a complete ModelFamily, a torch-free registry entry whose frame
    rule and defaults agree with it, and a tiny denoiser that implements the block protocol and
    leads back to its family (also under a LoRA)."""
    import torch

    from frametuner.lora import add_lora
    from frametuner.memory.blocks import BLOCK_PROTOCOL, require_block_model
    from frametuner.models.family import BlockModel, ModelFamily, family_of

    declared = set(BlockModel.__annotations__) | {n for n in vars(BlockModel) if not n.startswith("__") and callable(vars(BlockModel)[n])}
    assert declared == set(BLOCK_PROTOCOL), "memory/blocks.py checks other members than the BlockModel protocol declares"

    for name, info in families().items():
        family = load_spec(name)
        assert isinstance(family, ModelFamily) and family.name == name and family.info is info
        assert family.geometry == info.geometry and family.shard_units and family.default_lora_targets
        assert info.valid_frames(info.defaults.frames) and not info.valid_frames(info.defaults.frames + 1)
        assert info.defaults.height % info.pixel_multiple == 0 and info.defaults.width % info.pixel_multiple == 0
        tiny = next(f for f in info.flavours if f.startswith("tiny"))
        model = family.build_transformer(flavour=tiny, device="cpu", dtype=torch.float32)
        require_block_model(model)  # TypeError naming what is missing
        assert type(model.blocks[0]).__name__ in family.shard_units
        assert family_of(model) is family
        add_lora(model, rank=2)
        assert family_of(model) is family


def test_memory_tools_refuse_a_model_without_the_block_protocol():
    import torch

    from frametuner.memory.blocks import BlockRunner

    with pytest.raises(TypeError, match="block protocol.*missing: blocks, _run_block"):
        BlockRunner.of(torch.nn.Linear(2, 2))


def test_a_mixed_batch_trains_each_sample_as_alone():
    """Per-sample conditioning lengths: one batch with K = 0 and K = 1 gives each sample the
    inputs, prediction and loss it gets in a batch of its own."""
    import torch

    from frametuner.training.flow_matching import flow_matching_loss

    family = load_spec("longcat_video")
    model = family.build_transformer(flavour="tiny", device="cpu", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 16, 3, 4, 6, generator=g), torch.randn(2, 16, 3, 4, 6, generator=g)
    channels = model.config.caption_channels
    text, mask = torch.randn(2, 8, channels, generator=g), torch.ones(2, 8, dtype=torch.int64)
    sigmas = torch.tensor([0.4, 0.7])
    mixed = family.training_inputs(x0, noise, sigmas, num_cond_latents=torch.tensor([0, 1]))
    with torch.no_grad():
        prediction = family.training_forward(model, mixed, text, mask)
    losses = []
    for row, k in enumerate((0, 1)):
        alone = family.training_inputs(x0[row : row + 1], noise[row : row + 1], sigmas[row : row + 1], num_cond_latents=k)
        assert torch.equal(alone.noisy_latents[0], mixed.noisy_latents[row]) and torch.equal(alone.timesteps[0], mixed.timesteps[row])
        with torch.no_grad():
            single = family.training_forward(model, alone, text[row : row + 1], mask[row : row + 1])
        torch.testing.assert_close(single[0], prediction[row], atol=1e-5, rtol=1e-5)
        losses.append(flow_matching_loss(single, alone))
    torch.testing.assert_close(flow_matching_loss(prediction, mixed), torch.stack(losses).mean(), atol=1e-6, rtol=1e-6)
