"""The conditioning mix: config checks, the seeded per-sample draw, fallbacks to t2v."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from pydantic import ValidationError

from frametuner.config import ConfigError, TrainConfig, load_config
from frametuner.config.conditioning import ConditioningMix, dataset_mix
from frametuner.config.dataset import load_dataset_configs, validate_dataset_list
from frametuner.training.conditioning import draw_conditioning, fallback_counts, resolve, split_by_cond_latents

from ..data.factory import dataset, write_configs

MIX = ConditioningMix(t2v=0.5, i2v=0.2, vc=0.3, vc_cond_frames=[5, 13])


def draw(mix, count, seed=0, latent_frames=24):
    return draw_conditioning(mix, count, latent_frames=latent_frames, temporal_stride=4, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "value, message",
    [
        ({"t2v": 0.5, "vc": 0.3}, "t2v + i2v + vc is 0.8, not 1"),
        ({"t2v": -0.5, "vc": 1.5}, "greater than or equal to 0"),
        ({"vc": 1.0, "vc_cond_frames": []}, "at least 1 item"),
        ({"vc": 1.0, "vc_cond_frames": [13, 13]}, "repeats an entry"),
        ({"vc": 1.0, "cond_frames": [13]}, "Extra inputs are not permitted"),
    ],
)
def test_the_config_mix_is_checked(value, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        TrainConfig(conditioning=value)


def test_a_mix_summing_to_one_up_to_rounding_is_accepted():
    config = TrainConfig(conditioning={"t2v": 0.1, "i2v": 0.2, "vc": 0.7})
    assert config.conditioning.vc_cond_frames == [13]  # upstream's continuation length
    assert TrainConfig().conditioning is None


def datasets_with(tmp_path, entries, **config):
    (tmp_path / "clips").mkdir(exist_ok=True)
    return load_config(write_configs(tmp_path, entries, **config))


def test_cond_frames_follow_the_frame_rule_and_stay_below_the_sample_length(tmp_path):
    bad_rule = datasets_with(tmp_path, [dataset("x", "clips", video={"num_frames": 33}, conditioning={"vc": 1.0, "vc_cond_frames": [12]})])
    [problem] = validate_dataset_list(bad_rule, frame_stride=4)
    assert (problem.field, problem.key, problem.dataset) == ("data_backend_config", "conditioning.vc_cond_frames", "dataset 'x'")
    assert "vc_cond_frames: 12" in problem.message and "not 4k+1" in problem.message and problem.fix == "use 9 or 13"
    too_long = datasets_with(tmp_path, [dataset("x", "clips", video={"num_frames": 13}, conditioning={"t2v": 0.5, "vc": 0.5})])
    [problem] = validate_dataset_list(too_long, frame_stride=4)
    assert "13 leaves no frame to train in 13-frame samples" in problem.message and "at most 9" in problem.fix
    # The global default is checked against every video dataset it applies to, on its own field.
    global_mix = datasets_with(tmp_path, [dataset("x", "clips", video={"num_frames": 13})], conditioning={"vc": 1.0, "vc_cond_frames": [13]})
    [problem] = validate_dataset_list(global_mix, frame_stride=4)
    assert problem.field == "conditioning" and "(dataset 'x')" in problem.message
    with pytest.raises(ConfigError, match="vc_cond_frames: 13 leaves no frame"):
        load_dataset_configs(global_mix, frame_stride=4)
    # vc never drawn: its lengths are not checked.
    fine = datasets_with(tmp_path, [dataset("x", "clips", video={"num_frames": 13}, conditioning={"t2v": 1.0, "vc_cond_frames": [13]})])
    assert validate_dataset_list(fine, frame_stride=4) == []


def test_which_mix_a_dataset_trains_with(tmp_path):
    config = datasets_with(
        tmp_path,
        [
            dataset("own", "clips", video={"num_frames": 33}, conditioning={"t2v": 0.25, "vc": 0.75, "vc_cond_frames": [9]}),
            dataset("plain", "clips", video={"num_frames": 33}),
            dataset("i2v", "clips", video={"num_frames": 33}, is_i2v=True),
            dataset("stills", "clips", dataset_type="image"),
        ],
        conditioning={"t2v": 0.5, "vc": 0.5},
    )
    own, plain, i2v, stills = load_dataset_configs(config, frame_stride=4)
    assert own.conditioning_mix == ConditioningMix(t2v=0.25, vc=0.75, vc_cond_frames=[9])
    assert plain.conditioning_mix == config.conditioning
    assert i2v.conditioning_mix == ConditioningMix.only("i2v")  # is_i2v without its own mix: as before the mix
    assert stills.conditioning_mix == ConditioningMix.only("t2v")
    no_default = TrainConfig()
    assert dataset_mix(plain, no_default) == ConditioningMix.only("t2v")
    bad = datasets_with(tmp_path, [dataset("stills", "clips", dataset_type="image", conditioning={"t2v": 0.5, "i2v": 0.5})])
    [problem] = validate_dataset_list(bad, frame_stride=4)
    assert problem.key == "conditioning" and "image dataset trains text-to-video only" in problem.message


# ------------------------------------------------------------------ draw
def test_the_draw_is_a_function_of_the_generator_state():
    generator = torch.Generator().manual_seed(3)
    first = draw_conditioning(MIX, 7, latent_frames=24, temporal_stride=4, generator=generator)
    saved = generator.get_state()  # what a checkpoint keeps
    after = draw_conditioning(MIX, 7, latent_frames=24, temporal_stride=4, generator=generator)
    resumed = torch.Generator()
    resumed.set_state(saved)
    assert draw_conditioning(MIX, 7, latent_frames=24, temporal_stride=4, generator=resumed) == after
    assert draw(MIX, 7, seed=3) == first and draw(MIX, 7, seed=4) != first


def test_modes_and_lengths_follow_the_mix():
    n = 20000
    plan = draw(MIX, n)
    for mode, p in MIX.probabilities.items():
        share = sum(item.mode == mode for item in plan) / n
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (mode, share)
    vc = [item for item in plan if item.mode == "vc"]
    assert {item.cond_frames for item in vc} == {5, 13}
    assert abs(sum(item.cond_frames == 5 for item in vc) / len(vc) - 0.5) < 4 * math.sqrt(0.25 / len(vc))
    # K = 1 + (cond_frames - 1) // 4: the VAE packs frame 0 alone, then groups of 4.
    assert {(item.cond_frames, item.num_cond_latents) for item in plan if item.mode != "t2v"} == {(1, 1), (5, 2), (13, 4)}


def test_a_mix_without_a_choice_draws_nothing():
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    plan = draw_conditioning(ConditioningMix.only("vc"), 3, latent_frames=24, temporal_stride=4, generator=generator)
    assert torch.equal(generator.get_state(), before)  # runs without a mix draw as before it existed
    assert [item.num_cond_latents for item in plan] == [4, 4, 4]
    assert draw(ConditioningMix.only("t2v"), 2) == [resolve("t2v", 0, 24, 4)] * 2


def test_clips_too_short_fall_back_to_t2v_and_are_counted():
    # 13 conditioning frames are 4 latent frames: a 4-latent-frame clip (13 frames) has none left.
    assert resolve("vc", 13, 4, 4).fallback and resolve("vc", 13, 4, 4).num_cond_latents == 0
    assert not resolve("vc", 13, 5, 4).fallback
    assert resolve("i2v", 1, 1, 4).mode == "t2v"
    plan = draw(ConditioningMix.only("vc"), 4, latent_frames=3)
    assert all(item.mode == "t2v" and item.drawn == "vc" and item.fallback for item in plan)
    counts = fallback_counts(MIX, [1, 2, 3, 4, 5, 24], temporal_stride=4)
    assert counts == {"i2v": 1, "vc5": 2, "vc13": 4}


def test_a_batch_is_split_by_its_clean_frame_counts():
    plan = [resolve("vc", 13, 24, 4), resolve("t2v", 0, 24, 4), resolve("vc", 13, 24, 4), resolve("i2v", 1, 24, 4)]
    assert split_by_cond_latents(plan) == [(4, [0, 2]), (0, [1]), (1, [3])]


def test_data_inspect_counts_the_clips_that_fall_back(tmp_path, capsys):
    from rich.console import Console

    from frametuner.cli import main
    from frametuner.config import load_config
    from frametuner.data import scan_datasets
    from frametuner.data.report import conditioning_table

    from ..data.factory import write_caption, write_clip

    for name, frames in {"short": 9, "mid": 17, "long": 21}.items():
        write_caption(write_clip(tmp_path / "clips" / f"{name}.mp4", frames), f"clip {name}")
    video = {"bucket_strategy": "resolution_frames", "num_frames": 21, "frame_interval": 4}
    config = write_configs(
        tmp_path, [dataset("clips", "clips", video=video, conditioning={"t2v": 0.5, "i2v": 0.25, "vc": 0.25, "vc_cond_frames": [5, 13]})]
    )
    console = Console(width=400, record=True, file=io.StringIO())
    console.print(conditioning_table(scan_datasets(load_config(config), summary=False)))
    out = console.export_text()
    # 9 frames = 3 latent frames: 13 conditioning frames (4 latent frames) leave none to train.
    assert "t2v 0.5 / i2v 0.25 / vc 0.25 (5, 13 frames)" in out and "1 too short for vc 13 frames" in out
    assert "too short for vc 5" not in out and "too short for i2v" not in out
    assert main(["data", "inspect", "--config", str(config)]) == 0
    assert "Conditioning mix" in capsys.readouterr().out


def test_the_first_latent_frames_of_a_clip_are_its_first_frames_encoded_alone():
    """Why conditioning can come from a clip's own cached latents: the Wan VAE is causal in
    time (frame 0 alone, then groups of 4, each seeing only earlier frames), so latent frame 0
    is the clip's frame 0 encoded as an image (i2v) and the first K latent frames are its first
    1 + 4(K-1) frames encoded as a video (continuation), up to float32 rounding (CPU convolutions
    of different lengths may differ in the last bit). The last frames of a clip are not: they
    carry the clip's earlier frames in the causal cache."""
    from frametuner.models.longcat_video.tiny import build_tiny_vae
    from frametuner.models.longcat_video.vae import VideoVAE

    vae = VideoVAE(build_tiny_vae(), identity="tiny", dtype=torch.float32)
    clip = torch.randint(0, 256, (9, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    latents = vae.encode(clip)
    assert latents.shape[1] == 3
    same = dict(rtol=0, atol=1e-6)  # the latents are O(1): a few float32 ulps
    torch.testing.assert_close(latents[:, :1], vae.encode(clip[:1]), **same)  # i2v: the image encoded alone
    torch.testing.assert_close(latents[:, :2], vae.encode(clip[:5]), **same)  # continuation: 5 frames = 2 latent frames
    assert not torch.allclose(latents[:, -2:], vae.encode(clip[-5:]), atol=1e-3)


def test_a_family_without_clean_frame_conditioning_refuses_i2v_and_vc(tmp_path):
    """Continuation is a family fact (FamilyInfo.continuation): Wan 2.1 conditions otherwise."""
    with pytest.raises(ValidationError, match="Wan 2.1 cannot continue videos"):
        TrainConfig(model_family="wan", validation_segments=2)
    wan = datasets_with(tmp_path, [dataset("x", "clips", video={"num_frames": 33})], model_family="wan", conditioning={"t2v": 0.5, "vc": 0.5})
    [problem] = validate_dataset_list(wan, frame_stride=4)
    assert problem.field == "conditioning" and "wan has no clean-frame conditioning" in problem.message
    plain = datasets_with(tmp_path, [dataset("x", "clips", video={"num_frames": 33})], model_family="wan", conditioning={"t2v": 1.0})
    assert validate_dataset_list(plain, frame_stride=4) == []
