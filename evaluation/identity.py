"""Identity distance between two aligned face sets with dlib's face descriptor (real, trained, offline).

dlib documents 0.6 as the Euclidean distance below which two descriptors are the same person.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from anon_core.networks.dlib_resnet import DLIB_MATCH_THRESHOLD, load_dlib_descriptor, prepare_chips

__all__ = ["DLIB_MATCH_THRESHOLD", "dlib_descriptors", "source_distances"]


@lru_cache(maxsize=1)
def _descriptor():
    return load_dlib_descriptor()


@torch.no_grad()
def dlib_descriptors(images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 aligned face crops [N, H, W, 3] -> dlib descriptors [N, 128]."""
    model = _descriptor()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2).float()
        out.append(model(prepare_chips(x / 127.5 - 1.0)).numpy())  # (B, 128)
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def source_distances(anonymized: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Descriptor distance of each anonymized image to its own source image: [N]."""
    if len(anonymized) != len(sources):
        raise ValueError(f"{len(anonymized)} anonymized images but {len(sources)} sources")
    return np.linalg.norm(dlib_descriptors(anonymized) - dlib_descriptors(sources), axis=1)
