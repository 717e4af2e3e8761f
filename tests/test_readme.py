"""The README stays true: generated config table current, CI runs its two commands."""

from pathlib import Path

from frametuner.config.docs import BEGIN, END, config_reference_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_table_is_current():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert table == config_reference_markdown(), "run: frametuner config docs, and paste it into README.md"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.py 1" in ci and "readme_commands.py 2" in ci
    import subprocess
    import sys

    commands = [
        subprocess.run([sys.executable, str(ROOT / ".ci" / "readme_commands.py"), str(n)], capture_output=True, text=True, check=True).stdout
        for n in (1, 2)
    ]
    assert "pip install torch==2.13.0" in commands[0] and "frametuner" in commands[0]
    assert "pytest" in commands[1]


def test_demo_config_shipped_in_the_package_equals_the_example():
    import json

    from frametuner.config import loads_jsonc
    from frametuner.demo import DEMO_CONFIG, DEMO_DATASETS

    assert DEMO_CONFIG.read_text() == (ROOT / "examples" / "demo" / "config.json").read_text()
    assert json.loads((ROOT / "examples" / "demo" / "datasets.json").read_text()) == DEMO_DATASETS
    assert loads_jsonc(DEMO_CONFIG.read_text())["model_flavour"] == "tiny"
