"""The sampler against the upstream reference (tests/fixtures/longcat_reference, "Scheduler and sampling")."""

from __future__ import annotations

import pytest
import torch

from frametuner.models.longcat_video.sampling import cfg_zero_star, input_sigmas, sigmas
from frametuner.sampling import denoise

from ..conftest import assert_close

SCHEDULES = {"n16_distill": (16, True), "n40": (40, False), "n50": (50, False)}
FIXTURE_STEPS = 4  # the fixture loops run 4 steps at guidance 4.0


@pytest.mark.parametrize("tag", sorted(SCHEDULES))
def test_schedule_matches_reference(cases, tag):
    steps, distill = SCHEDULES[tag]
    assert_close(input_sigmas(steps, distill), cases[f"sched.{tag}.input_sigmas"], atol=1e-6, rtol=0)
    sigma, timesteps = sigmas(steps, shift=12.0, distill=distill)
    assert sigma.dtype == timesteps.dtype == torch.float32
    assert sigma[-1].item() == 0.0
    assert_close(sigma, cases[f"sched.{tag}.sigmas"], atol=1e-6, rtol=0)
    assert_close(timesteps, cases[f"sched.{tag}.timesteps"], atol=1e-4, rtol=0)


def test_shift_formula():
    """set_timesteps applies s' = k s / (1 + (k - 1) s) on top of the input sigmas."""
    sigma, timesteps = sigmas(7, shift=3.0)
    s = input_sigmas(7)
    assert_close(sigma[:-1], 3.0 * s / (1 + 2.0 * s), atol=1e-6, rtol=0)
    assert_close(timesteps, 1000 * sigma[:-1], atol=1e-4, rtol=0)


def test_distill_rejects_more_steps_than_its_grid():
    with pytest.raises(ValueError, match="50-step grid"):
        input_sigmas(51, distill=True)


def test_cfg_zero_star_analytic():
    """When cond is a multiple of uncond, st is that multiple and guidance changes nothing."""
    uncond = torch.tensor([[1.0, 2.0, -2.0], [0.5, 0.0, 1.0]])
    cond = uncond * torch.tensor([[3.0], [-1.0]])
    assert_close(cfg_zero_star(uncond, cond, guidance=4.0), cond, atol=1e-6, rtol=1e-6)
    # Orthogonal predictions: st = 0, so the result is guidance * cond.
    assert_close(cfg_zero_star(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), 4.0), torch.tensor([[0.0, 8.0]]), atol=0, rtol=0)


class DitRecorder:
    """Observes the DiT calls of a loop through a forward hook: inputs (kwargs) and outputs."""

    def __init__(self, model):
        self.calls: list[dict[str, torch.Tensor]] = []
        self.handle = model.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, output):
        self.calls.append(dict(latents=kwargs["hidden_states"].clone(), timestep=kwargs["timestep"].clone(), output=output.clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _text(cases):
    return dict(
        prompt_embeds=cases["sample_t2v.prompt_embeds"],
        prompt_mask=cases["sample_t2v.prompt_attention_mask"],
        negative_embeds=cases["sample_t2v.negative_prompt_embeds"],
        negative_mask=cases["sample_t2v.negative_prompt_attention_mask"],
    )


def _check_steps(recorder, cases, case):
    assert len(recorder.calls) == FIXTURE_STEPS
    for i, call in enumerate(recorder.calls):
        prefix = f"{case}.step{i}"
        expected_latents = cases[f"{prefix}.dit_input_latents"]
        # The DiT gets two copies of the latents: [negative, positive].
        assert_close(call["latents"][:1], expected_latents, atol=5e-5, rtol=1e-5)
        assert torch.equal(call["latents"][0], call["latents"][1])
        assert_close(call["timestep"], cases[f"{prefix}.dit_timestep"], atol=1e-4, rtol=0)
        assert_close(call["output"], cases[f"{prefix}.dit_output"], atol=5e-5, rtol=1e-5)


def test_t2v_loop_matches_reference(reference_dit, cases):
    sigma, timesteps = sigmas(FIXTURE_STEPS)
    assert_close(sigma, cases["sample_t2v.sigmas"], atol=1e-6, rtol=0)
    assert_close(timesteps, cases["sample_t2v.timesteps"], atol=1e-4, rtol=0)
    init = cases["sample_t2v.latents_init"]
    with DitRecorder(reference_dit) as recorder:
        final = denoise(reference_dit, init, **_text(cases), steps=FIXTURE_STEPS, guidance=4.0, shift=12.0)
    assert_close(final, cases["sample_t2v.latents_final"], atol=5e-5, rtol=1e-5)
    assert torch.equal(init, cases["sample_t2v.latents_init"]), "denoise must not modify its input"
    _check_steps(recorder, cases, "sample_t2v")


def test_i2v_loop_matches_reference(reference_dit, cases):
    latents = cases["sample_i2v.latents_init"].clone()
    latents[:, :, :1] = cases["sample_i2v.cond_latent_normalized"]
    with DitRecorder(reference_dit) as recorder:
        final = denoise(reference_dit, latents, **_text(cases), steps=FIXTURE_STEPS, guidance=4.0, num_cond_latents=1)
    assert_close(final, cases["sample_i2v.latents_final"], atol=5e-5, rtol=1e-5)
    # The condition frame is never stepped.
    assert torch.equal(final[:, :, :1], cases["sample_i2v.cond_latent_normalized"])
    _check_steps(recorder, cases, "sample_i2v")


def test_guidance_above_one_needs_negative_embeddings(reference_dit, cases):
    text = _text(cases)
    with pytest.raises(ValueError, match="needs negative_embeds"):
        denoise(reference_dit, cases["sample_t2v.latents_init"], text["prompt_embeds"], text["prompt_mask"], steps=2, guidance=4.0)


def test_guidance_one_runs_positive_only(reference_dit, cases):
    """Without CFG the DiT sees only the positive batch and the step is plain Euler on -output."""
    text = _text(cases)
    init = cases["sample_t2v.latents_init"]
    with DitRecorder(reference_dit) as recorder:
        final = denoise(reference_dit, init, text["prompt_embeds"], text["prompt_mask"], steps=1, guidance=1.0)
    (call,) = recorder.calls
    assert call["latents"].shape[0] == 1
    sigma, _ = sigmas(1)
    expected = init + (sigma[1] - sigma[0]) * -call["output"]
    assert_close(final, expected, atol=0, rtol=0)


def test_public_signatures():
    """Outside tools call these by name; the signatures are part of the contract."""
    import inspect

    import frametuner.sampling.pipeline  # noqa: F401  (importing submodules must not shadow the functions)
    from frametuner import sampling

    params = inspect.signature(sampling.denoise).parameters
    assert list(params)[:11] == [
        "model", "latents", "prompt_embeds", "prompt_mask", "negative_embeds", "negative_mask",
        "steps", "guidance", "shift", "num_cond_latents", "distill",
    ]
    defaults = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    # steps/guidance/shift default to the model family's (None = ask the family): LongCat's 50, 4.0, 12.0.
    assert {k: defaults[k] for k in ("negative_embeds", "negative_mask", "steps", "guidance", "shift", "num_cond_latents", "distill", "progress")} == dict(
        negative_embeds=None, negative_mask=None, steps=None, guidance=None, shift=None, num_cond_latents=0, distill=False, progress=False
    )
    from frametuner.models.registry import family_defaults

    longcat = family_defaults("longcat_video")
    assert (longcat.steps, longcat.guidance, longcat.shift) == (50, 4.0, 12.0)
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in ("steps", "guidance", "shift", "num_cond_latents", "distill"))
    from frametuner.models.longcat_video import sampling  # the family's schedule keeps its public signature
    sigma_params = inspect.signature(sampling.sigmas).parameters
    assert [(name, p.default) for name, p in sigma_params.items()] == [("steps", inspect.Parameter.empty), ("shift", 12.0), ("distill", False)]
