"""The tiny captioner, built and loaded once per session (it is the same random model everywhere)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Built where ``--model tiny`` looks for it under the tests' FRAMETUNER_HOME (tests/conftest.py)."""
    from frametuner.caption.tiny import TINY_VERSION, ensure_tiny_captioner

    home = tmp_path_factory.getbasetemp() / "frametuner-home"
    return ensure_tiny_captioner(home / f"tiny-qwen2.5-vl-captioner-{TINY_VERSION}")


@pytest.fixture(scope="session")
def tiny_captioner(tiny_root):
    from frametuner.caption.qwen_vl import load_qwen_vl

    return load_qwen_vl(str(tiny_root), device="cpu")
