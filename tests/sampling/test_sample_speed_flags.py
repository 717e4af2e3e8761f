"""``frametuner sample --distill_lora PATH`` and ``--fp8_compute`` (issue 23)."""

from __future__ import annotations

import argparse

import pytest

from frametuner.cli import main
from frametuner.models.registry import load_spec
from frametuner.sampling.command import add_sample_arguments, build_request

from ..conftest import REFERENCE

FIXTURE_LORA = REFERENCE / "lora" / "upstream_format_lora.safetensors"


def _args(*flags):
    parser = argparse.ArgumentParser()
    add_sample_arguments(parser)
    return parser.parse_args(["--prompt", "a fox", *flags])


def test_distill_lora_stacks_the_lora_and_samples_with_the_distilled_setting():
    spec = load_spec("longcat_video")
    request = build_request(_args("--lora", f"{FIXTURE_LORA}:0.5", "--distill_lora", str(FIXTURE_LORA)), spec)
    assert request.distill is True
    assert (request.steps, request.guidance) == (spec.defaults.distill_steps, spec.defaults.distill_guidance)
    assert [(str(path), multiplier) for path, multiplier in request.loras] == [(str(FIXTURE_LORA), 0.5), (str(FIXTURE_LORA), 1.0)]
    plain = build_request(_args("--lora", str(FIXTURE_LORA)), spec)
    assert plain.distill is False and plain.steps == spec.defaults.steps


def test_distill_lora_must_be_a_lora_file(tmp_path):
    from frametuner.config import ConfigError

    with pytest.raises(ConfigError, match="--distill_lora"):
        build_request(_args("--distill_lora", str(tmp_path / "missing.safetensors")), load_spec("longcat_video"))


def test_fp8_compute_in_sampling_is_refused_on_a_cpu(capsys, tmp_path):
    code = main(["sample", "--prompt", "a fox", "--model_flavour", "tiny", "--mixed_precision", "no", "--device", "cpu",
                 "--resolution", "32x48", "--num_frames", "5", "--steps", "1", "--output", str(tmp_path / "out.mp4"), "--fp8_compute"])
    err = capsys.readouterr().err
    assert code != 0 and "fp8_compute needs a CUDA GPU" in err
