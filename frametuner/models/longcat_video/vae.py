"""LongCat-Video's VAE is the shared Wan 2.1 video VAE (:mod:`frametuner.models.encoders.video_vae`)."""

from ..encoders.video_vae import TILING, VideoVAE, denormalise_latents, normalise_latents, vae_identity  # noqa: F401
