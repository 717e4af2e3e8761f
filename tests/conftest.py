"""Shared test fixtures: the upstream reference oracle lives in tests/fixtures (copied from ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
REFERENCE = TESTS / "fixtures" / "longcat_reference"
VC_REFERENCE = TESTS / "fixtures" / "longcat_reference_vc"  # video continuation (same tiny DiT)
SHARED = TESTS.parent.parent / "shared"
SHARED_MEDIA = SHARED / "fixtures" / "media"

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Tiny checkpoints go to one per-session folder, never the user's ~/.cache."""
    home = tmp_path_factory.getbasetemp() / "frametuner-home"
    monkeypatch.setenv("FRAMETUNER_HOME", str(home))


@pytest.fixture(scope="session")
def cases() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(REFERENCE / "cases.safetensors")


@pytest.fixture(scope="session")
def vc_cases() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(VC_REFERENCE / "cases.safetensors")


@pytest.fixture(scope="session")
def reference_dit():
    from frametuner.models.longcat_video import LongCatVideoTransformer3DModel

    return LongCatVideoTransformer3DModel.from_pretrained(REFERENCE / "dit").eval()


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported, for optional dependencies (optimum-quanto, torchao, playwright, httpx).

    ``importlib.util.find_spec("optimum.quanto")`` raises instead of answering when the parent
    package ``optimum`` is absent (a plain ``pip install -e .``); this answers False.
    """
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module set to None in sys.modules
        return False


def requires_module(name: str, install: str) -> pytest.MarkDecorator:
    """Skip a test (with the install command as the reason) when an optional package is absent."""
    return pytest.mark.skipif(not module_available(name), reason=f"needs {name} (pip install {install}, or pip install -e '.[test]')")


def media_file(name: str) -> Path:
    """A real sample file from ../shared; skips the test (with the reason) where it is absent."""
    path = SHARED_MEDIA / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared media fixtures sit beside the checkout (../shared) only")
    return path


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    """Elementwise |a - b| <= atol + rtol |b|, the fixture README's acceptance rule."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = (actual.double() - expected.double()).abs()
    bound = atol + rtol * expected.double().abs()
    worst = (diff - bound).max().item()
    assert worst <= 0, f"max |diff| {diff.max().item():.3e} exceeds atol {atol} + rtol {rtol} |ref|"
