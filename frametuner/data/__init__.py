"""Datasets: scan folders of clips and captions, decode with PyAV, bucket, sample batches.

Files in, :class:`~frametuner.data.sample.Sample` records out; no model code here.
"""

from .sample import Bucket, CropBox, Sample, SourceInfo

__all__ = ["Bucket", "CropBox", "Sample", "SourceInfo"]
