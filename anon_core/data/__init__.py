"""Input data: robust image reading and writing, input-folder scanning, and the offline sample dataset.

Face detection/alignment and dataset adapters (CelebA-HQ, LFW) build on these and live in their own modules.
"""

from anon_core.data.image_io import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    MIN_SIDE,
    REJECT_REASONS,
    ImageRejected,
    encode_png,
    load_rgb,
    save_png,
    to_tensor,
    to_uint8,
)
from anon_core.data.sample import build_sample_dataset
from anon_core.data.scan import ScannedFile, output_relpath, scan_folder

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "REJECT_REASONS",
    "ImageRejected",
    "ScannedFile",
    "build_sample_dataset",
    "encode_png",
    "load_rgb",
    "output_relpath",
    "save_png",
    "scan_folder",
    "to_tensor",
    "to_uint8",
]
