"""Encoders more than one family uses: umT5 text encoding (with upstream's prompt cleaning)
and the Wan 2.1 causal video VAE (with per-channel latent normalisation).

Their cache identities (``text_encoder_identity``, ``vae_identity``) depend only on the
files, dtype and settings, never on the family, so two families that ship the same encoder
files share cache entries.
"""
