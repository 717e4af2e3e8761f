"""LongCat-Video (Meituan): 13.6B text/image-to-video DiT, umT5-XXL text, Wan 2.1 VAE."""

from .transformer import LongCatVideoTransformer3DModel

__all__ = ["LongCatVideoTransformer3DModel"]
