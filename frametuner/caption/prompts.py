"""The default captioning instructions, tuned for dense video-model captions.

The video models frametuner trains were trained on long, dense captions: who or what is in the shot, what
happens, how the camera moves, where and when it is, and how it looks, written as one
paragraph of plain prose. The instructions ask for exactly that, in that order, and
forbid what hurts a text-to-video caption (lists, headings, "this video shows", guesses).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_VIDEO_PROMPT = (
    "Describe this video in one detailed paragraph, as a caption for training a text-to-video model. "
    "Cover, in this order: the main subject (who or what, appearance, clothing, colours); the action "
    "(what happens and how things move, from start to end); the camera (shot size, angle, and movement "
    "such as static, pan, tilt, tracking, dolly, zoom or handheld); the scene (setting, background, "
    "lighting, time of day, weather); and the style (realistic, cinematic, animated, film look, colour "
    "palette). Write plain present-tense sentences in a single paragraph, no lists, no headings, no "
    "line breaks. Do not begin with \"The video\" or \"This video\", and do not guess at anything that "
    "is not visible."
)

DEFAULT_IMAGE_PROMPT = (
    "Describe this image in one detailed paragraph, as a caption for training a text-to-video model. "
    "Cover, in this order: the main subject (who or what, appearance, clothing, colours); what the "
    "subject is doing; the camera (shot size and angle); the scene (setting, background, lighting, "
    "time of day, weather); and the style (realistic, cinematic, animated, film look, colour palette). "
    "Write plain present-tense sentences in a single paragraph, no lists, no headings, no line breaks. "
    "Do not begin with \"The image\" or \"This image\", and do not guess at anything that is not visible."
)


def instructions(prompt: str | None = None, prompt_file: str | Path | None = None) -> dict[str, str]:
    """Instruction per media kind: ``--prompt`` / ``--prompt_file`` (UTF-8) for both, else the defaults."""
    if prompt_file is not None:
        prompt = Path(prompt_file).expanduser().read_text(encoding="utf-8-sig")
    if prompt is not None:
        prompt = prompt.strip()
        if not prompt:
            raise ValueError("the captioning prompt is empty")
        return {"video": prompt, "image": prompt}
    return {"video": DEFAULT_VIDEO_PROMPT, "image": DEFAULT_IMAGE_PROMPT}


def finish_caption(answer: str, prefix: str = "") -> str:
    """The caption written to disk: the model's answer on one line (whitespace collapsed, as
    the dataset reader normalises it), after ``prefix`` (a trigger word) and a space; ``""``
    when the model answered nothing."""
    from ..data.captions import normalise_caption

    text = normalise_caption(answer)
    if not text:
        return ""
    prefix = normalise_caption(prefix)
    return f"{prefix} {text}" if prefix else text
