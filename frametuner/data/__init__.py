"""Datasets: scan folders of clips and captions, decode with PyAV, bucket, sample batches.

Files in, :class:`~frametuner.data.sample.Sample` records out; no model code here.
The cache room calls :func:`scan_datasets`, then :func:`load_clip` and
:func:`load_conditioning_image` per sample; the trainer draws batches with
:class:`BucketBatchSampler`.
"""

from .media import DecodeError, load_clip, load_conditioning_image, probe_image, probe_video, select_frames
from .sample import Bucket, CropBox, Sample, SourceInfo
from .sampler import BucketBatchSampler
from .scan import DatasetScan, EmptyDatasetError, ScanResult, SkippedFile, scan_datasets

__all__ = [
    "Bucket",
    "BucketBatchSampler",
    "CropBox",
    "DatasetScan",
    "DecodeError",
    "EmptyDatasetError",
    "Sample",
    "ScanResult",
    "SkippedFile",
    "SourceInfo",
    "load_clip",
    "load_conditioning_image",
    "probe_image",
    "probe_video",
    "scan_datasets",
    "select_frames",
]
