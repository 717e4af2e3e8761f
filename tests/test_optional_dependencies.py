"""The suite collects with a plain ``pip install -e .`` (issue 19 point 9): tests of optional
packages (optimum-quanto, torchao, playwright, httpx) skip with a reason instead of erroring.

The absent packages are simulated in a subprocess by ``None`` entries in ``sys.modules``,
which make every import of them fail as an uninstalled package's does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import module_available, requires_module

TESTS = Path(__file__).resolve().parent
OPTIONAL = ("optimum", "torchao", "playwright", "httpx")  # top-level packages: their submodules then fail to import too

COLLECT = """
import sys
for name in {optional!r}:
    sys.modules[name] = None
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-rs", {tests!r}]))
"""


def test_module_available_answers_for_a_missing_parent_package(monkeypatch):
    import importlib.util

    for name in [name for name in sys.modules if name.startswith("optimum.")]:
        monkeypatch.delitem(sys.modules, name)  # an imported submodule would be found without its parent
    monkeypatch.setitem(sys.modules, "optimum", None)
    with pytest.raises(ModuleNotFoundError):  # what tests/memory/helpers.py once called at import
        importlib.util.find_spec("optimum.quanto")
    assert module_available("optimum.quanto") is False
    assert module_available("no_such_package_frametuner.sub") is False
    assert module_available("torch") is True
    marker = requires_module("no_such_package_frametuner", "no-such-package")
    assert marker.args == (True,) and "pip install no-such-package" in marker.kwargs["reason"]


@pytest.mark.slow
def test_the_suite_collects_without_the_optional_packages():
    code = COLLECT.format(optional=OPTIONAL, tests=str(TESTS))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=TESTS.parent)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert not [line for line in output.splitlines() if line.startswith("ERROR")], output[-4000:]
    assert "during collection" not in output, output[-4000:]
    assert "tests collected" in output or "test collected" in output
    assert "playwright" in output  # the browser tests say why they skip
