"""LongCat-Video's text encoder is the shared umT5 one (:mod:`frametuner.models.encoders.umt5`)."""

from ..encoders.umt5 import TextEncoder, clean_prompt, text_encoder_identity  # noqa: F401
