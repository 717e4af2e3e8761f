"""Sampling: the schedule, the denoising loop, and the videos people look at.

``sigmas`` and ``denoise`` are pure functions over a model and latents; the pipeline,
video writing and validation rendering build on them.
"""

from .denoise import cfg_zero_star, denoise
from .schedule import input_sigmas, make_scheduler, sigmas

__all__ = ["cfg_zero_star", "denoise", "input_sigmas", "make_scheduler", "sigmas"]
