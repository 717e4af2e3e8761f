"""The Qwen2.5-VL inputs match transformers' own processors and the model's documented usage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frametuner.caption.frames import Media
from frametuner.caption.qwen_vl import VisionSettings, patchify, processor_inputs, smart_resize


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    budgets = [(4 * 28 * 28, 64 * 28 * 28), (128 * 28 * 28, 768 * 28 * 28), (3136, 12845056)]
    for height in (17, 64, 200, 480, 720, 1080, 1920):
        for width in (33, 96, 480, 832, 1280, 1920):
            for low, high in budgets:
                assert smart_resize(height, width, 28, low, high) == tuple(reference(height, width, 28, low, high))


def test_video_size_follows_qwen_vl_utils_budgets():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    settings = VisionSettings()
    # 480p, 16 frames: within 768 x 28^2 per frame -> nearest multiples of 28
    assert settings.video_size(480, 832, 16) == (476, 840)
    # 1080p is capped at 768 x 28^2 pixels per frame
    assert settings.video_size(1080, 1920, 16) == tuple(reference(1080, 1920, 28, 128 * 28 * 28, 768 * 28 * 28))
    # 768 frames: the whole-clip budget binds: 128000 x 28^2 x 0.9 pixels shared by 768 / 2 frame pairs
    share = int(128000 * 28 * 28 * 0.9) / 768 * 2
    assert settings.video_size(1080, 1920, 768) == tuple(reference(1080, 1920, 28, 128 * 28 * 28, int(share)))
    # never below 1.05 x the per-frame minimum
    assert settings.video_size(1080, 1920, 100000) == tuple(reference(1080, 1920, 28, 128 * 28 * 28, int(128 * 28 * 28 * 1.05)))


def test_patchify_matches_the_transformers_image_processor_layout():
    """A still is a video of one frame pair: transformers' Qwen2-VL image processor repeats the
    frame to the temporal patch, so its pixel_values are our patches of [frame, frame]."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
    settings = VisionSettings()
    reference = Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 64 * 28 * 28})(
        images=[frame], return_tensors="pt")
    ours, grid = patchify(np.stack([frame, frame]), settings)
    assert grid == (1, 4, 6) and tuple(reference["image_grid_thw"][0].tolist()) == grid
    assert ours.shape == reference["pixel_values"].shape == (24, 3 * 2 * 14 * 14)
    torch.testing.assert_close(ours, reference["pixel_values"].float(), atol=1e-5, rtol=1e-5)
    # one frame alone is padded by repeating it: the same patches
    alone, _ = patchify(frame[None], settings)
    torch.testing.assert_close(alone, ours)


def test_processor_inputs_follow_the_model_card_usage(tiny_captioner):
    """One user turn [video, text] through the chat template; one placeholder per merged patch;
    time between temporal patches = temporal_patch_size / sampled fps; left padding."""
    processor = tiny_captioner.processor
    rng = np.random.default_rng(1)
    clip = Media(path="a.mp4", kind="video", frames=rng.integers(0, 256, (8, 56, 84, 3), dtype=np.uint8),
                 indices=[0, 6, 11, 17, 22, 28, 33, 39], total_frames=40, fps=30.0)
    still = Media(path="b.png", kind="image", frames=rng.integers(0, 256, (1, 84, 112, 3), dtype=np.uint8), indices=[0])
    inputs = processor_inputs(processor, [clip, still], ["Describe this video.", "Describe this image, please."])
    tokenizer = processor.tokenizer
    video_pad, image_pad = (tokenizer.convert_tokens_to_ids(t) for t in ("<|video_pad|>", "<|image_pad|>"))
    assert inputs["video_grid_thw"].tolist() == [[4, 4, 6]] and inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    ids = inputs["input_ids"]
    assert int((ids[0] == video_pad).sum()) == 4 * 4 * 6 // 4 and int((ids[0] == image_pad).sum()) == 0
    assert int((ids[1] == image_pad).sum()) == 6 * 8 // 4
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([2 / (8 / 40 * 30.0)])
    # left padding: both prompts end with the generation prompt in the last columns
    assert inputs["attention_mask"][:, -1].tolist() == [1, 1] and 0 in inputs["attention_mask"][0].tolist() + inputs["attention_mask"][1].tolist()
    from frametuner.caption.qwen_vl import messages_for

    text = processor.apply_chat_template(messages_for(clip, "Describe this video."), tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|video_pad|><|vision_end|>Describe this video.<|im_end|>\n<|im_start|>assistant\n")
    expanded = text.replace("<|video_pad|>", "<|video_pad|>" * 24)
    assert ids[0][inputs["attention_mask"][0].bool()].tolist() == tokenizer(expanded)["input_ids"]
    # the model consumes them: its placeholder check compares tokens with vision features
    with torch.inference_mode():
        out = tiny_captioner.model(**inputs)
    assert out.logits.shape[:2] == ids.shape and torch.isfinite(out.logits).all()


def test_int8_load_quantises_the_language_model_only(tiny_root):
    """--quantize int8: every Linear of the language model becomes a quanto QLinear with int8
    weights; the vision tower and output head stay as they were; captions still come out."""
    from optimum.quanto import QLinear, qint8

    from frametuner.caption.qwen_vl import load_qwen_vl

    captioner = load_qwen_vl(str(tiny_root), device="cpu", quantise="int8")
    language = captioner.model.model.language_model
    linears = [m for m in language.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, QLinear) and m.weight_qtype == qint8 for m in linears)
    assert not any(isinstance(m, QLinear) for m in captioner.model.model.visual.modules())
    assert not isinstance(captioner.model.lm_head, QLinear)
    rng = np.random.default_rng(2)
    clip = Media(path="a.mp4", kind="video", frames=rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8),
                 indices=[0, 3, 6, 9], total_frames=10, fps=10.0)
    assert captioner.caption([clip], ["Describe this video."])[0].strip()
