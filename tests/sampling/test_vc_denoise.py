"""Video-continuation sampling against upstream's generate_vc (tests/fixtures/longcat_reference_vc).

The four modes (``use_kv_cache`` x ``enhance_hf``) are different videos upstream; each
must match its own reference. The first K latent frames hold the normalised condition.
"""

from __future__ import annotations

import pytest
import torch

from frametuner.models.longcat_video.sampling import enhance_hf_sigmas, sigmas
from frametuner.sampling import denoise

from ..conftest import assert_close
from .test_denoise import DitRecorder

STEPS, GUIDANCE, K = 4, 4.0, 2


def _text(vc):
    return dict(
        prompt_embeds=vc["sample_vc.prompt_embeds"], prompt_mask=vc["sample_vc.prompt_attention_mask"],
        negative_embeds=vc["sample_vc.negative_prompt_embeds"], negative_mask=vc["sample_vc.negative_prompt_attention_mask"],
    )


def _latents(vc):
    latents = vc["sample_vc.latents_init"].clone()
    assert int(vc["sample_vc.num_cond_latents"]) == 1 + (int(vc["sample_vc.num_cond_frames"]) - 1) // 4 == K
    latents[:, :, :K] = vc["sample_vc.cond_latent_normalized"]
    return latents


def test_enhance_hf_schedule_matches_reference(vc_cases):
    sigma, timesteps = enhance_hf_sigmas(STEPS, shift=12.0)
    assert_close(timesteps, vc_cases["sample_vc_hf.timesteps"], atol=1e-4, rtol=0)
    assert_close(sigma, vc_cases["sample_vc_hf.sigmas"], atol=1e-6, rtol=0)
    plain_sigma, plain_timesteps = sigmas(STEPS)
    assert_close(plain_timesteps, vc_cases["sample_vc.timesteps"], atol=1e-4, rtol=0)
    assert_close(plain_sigma, vc_cases["sample_vc.sigmas"], atol=1e-6, rtol=0)
    # Upstream's demo: 50 steps become 56 DiT calls, 16 become 24.
    assert len(enhance_hf_sigmas(50)[1]) == 56 and len(enhance_hf_sigmas(16)[1]) == 24


@pytest.mark.parametrize("enhance_hf", [False, True], ids=["plain", "enhance_hf"])
@pytest.mark.parametrize("use_kv_cache", [False, True], ids=["nokv", "kv"])
def test_continuation_matches_reference(reference_dit, vc_cases, use_kv_cache, enhance_hf):
    latents = _latents(vc_cases)
    init = latents.clone()
    with DitRecorder(reference_dit) as recorder:
        final = denoise(
            reference_dit, latents, **_text(vc_cases), steps=STEPS, guidance=GUIDANCE, shift=12.0,
            num_cond_latents=K, use_kv_cache=use_kv_cache, enhance_hf=enhance_hf,
        )
    reference = vc_cases[f"sample_vc{'_hf' if enhance_hf else ''}.{'kv' if use_kv_cache else 'nokv'}.latents_final"]
    assert_close(final, reference, atol=5e-5, rtol=1e-5)
    # Condition frames are never stepped: bit-equal to the condition.
    assert torch.equal(final[:, :, :K], vc_cases["sample_vc.cond_latent_normalized"])
    assert torch.equal(latents, init), "denoise must not modify its input"
    assert len(recorder.calls) == (13 if enhance_hf else STEPS)
    if enhance_hf:
        return
    mode = "kv" if use_kv_cache else "nokv"
    for i, call in enumerate(recorder.calls):
        prefix = f"sample_vc.{mode}.step{i}"
        assert_close(call["latents"][:1], vc_cases[f"{prefix}.dit_input_latents"], atol=5e-5, rtol=1e-5)
        assert_close(call["timestep"], vc_cases[f"{prefix}.dit_timestep"], atol=1e-4, rtol=0)
        assert_close(call["output"], vc_cases[f"{prefix}.dit_output"], atol=5e-5, rtol=1e-5)


def test_default_is_the_loop_without_cache(reference_dit, vc_cases):
    """denoise's defaults (no cache, plain schedule) keep the i2v fixtures' loop: nokv reference."""
    final = denoise(reference_dit, _latents(vc_cases), **_text(vc_cases), steps=STEPS, guidance=GUIDANCE, num_cond_latents=K)
    assert_close(final, vc_cases["sample_vc.nokv.latents_final"], atol=5e-5, rtol=1e-5)


def test_kv_cache_is_built_once_per_run(reference_dit, vc_cases, monkeypatch):
    builds = []
    original = type(reference_dit).build_condition_cache

    def counting(self, cond, **kwargs):
        builds.append(cond.shape)
        return original(self, cond, **kwargs)

    monkeypatch.setattr(type(reference_dit), "build_condition_cache", counting)
    denoise(reference_dit, _latents(vc_cases), **_text(vc_cases), steps=STEPS, guidance=GUIDANCE, num_cond_latents=K, use_kv_cache=True)
    assert builds == [torch.Size([1, 16, K, 4, 6])]  # batch 1, shared by both CFG branches
    builds.clear()
    # Without condition frames there is nothing to cache.
    denoise(reference_dit, _latents(vc_cases), **_text(vc_cases), steps=1, guidance=GUIDANCE, use_kv_cache=True)
    assert builds == []


def test_enhance_hf_refuses_the_distilled_schedule(reference_dit, vc_cases):
    with pytest.raises(ValueError, match="enhance_hf"):
        denoise(reference_dit, _latents(vc_cases), **_text(vc_cases), steps=4, distill=True, num_cond_latents=K, enhance_hf=True)


def test_unknown_family_option_is_refused(reference_dit, vc_cases):
    with pytest.raises(TypeError, match="use_kv_cahce"):
        denoise(reference_dit, _latents(vc_cases), **_text(vc_cases), steps=1, use_kv_cahce=True)


def test_kv_cache_serves_a_batch_of_videos(reference_dit, vc_cases):
    """Two videos in one batch (each with its own condition) give what each gives alone: the cache
    keeps one entry per video and the CFG batch [negatives; positives] reuses them in that order."""
    first = _latents(vc_cases)
    second = first.flip(-1).clone()  # another condition and other noise
    both = denoise(reference_dit, torch.cat([first, second]), **_text(vc_cases), steps=2, guidance=GUIDANCE, num_cond_latents=K, use_kv_cache=True)
    for index, single in enumerate((first, second)):
        alone = denoise(reference_dit, single, **_text(vc_cases), steps=2, guidance=GUIDANCE, num_cond_latents=K, use_kv_cache=True)
        assert_close(both[index : index + 1], alone, atol=1e-5, rtol=1e-5)


def test_offloaded_kv_cache_is_the_same_video(reference_dit, vc_cases):
    kv = denoise(reference_dit, _latents(vc_cases), **_text(vc_cases), steps=STEPS, guidance=GUIDANCE, num_cond_latents=K, use_kv_cache=True, offload_kv_cache=True)
    assert_close(kv, vc_cases["sample_vc.kv.latents_final"], atol=5e-5, rtol=1e-5)


def test_continuation_options_follow_the_family_and_the_flags():
    from frametuner.models.registry import family_info
    from frametuner.sampling.long_video import continuation_options

    info = family_info("longcat_video")
    assert continuation_options(info, distill=False) == {"use_kv_cache": True, "enhance_hf": True, "offload_kv_cache": False}
    assert continuation_options(info, distill=True)["enhance_hf"] is False
    assert continuation_options(info, distill=False, turned_off=("use_kv_cache",))["use_kv_cache"] is False
    assert continuation_options(info, distill=False, offloaded_weights=True)["offload_kv_cache"] is True
    with pytest.raises(ValueError, match="no 'warp_drive' option"):
        continuation_options(info, distill=False, turned_off=("warp_drive",))
