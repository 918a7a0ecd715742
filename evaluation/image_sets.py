"""Image sets the evaluation reads batch by batch, so its memory is bounded by a few batches, not by the set.

Three kinds of set stand where a uint8 [N, H, W, 3] array used to: an ndarray, an `ImageFiles` (images left on
disk, `anon_core.data.image_files`) and a `MappedImages`, whose images are computed on indexing from the same
rows of other sets (a baseline applied to the real sources, fakes generated from their latent codes). All three
answer `len`, `shape`, `dtype`, `ndim` and `images[rows]`; `read_parts` walks any of them with the next parts
read (or computed) in a thread while the caller works on the current one (both from `anon_core.prefetch`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anon_core.data.image_files import ImageFiles
from anon_core.data.mapped_images import MappedImages
from anon_core.fake_pool import generated_images
from anon_core.prefetch import batch_slices, read_parts

__all__ = ["ImageSetLike", "MappedImages", "batch_slices", "check_image_set", "concatenate", "generated_images",
           "read_parts"]


ImageSetLike = np.ndarray | ImageFiles | MappedImages


def check_image_set(images, what: str = "images") -> None:
    """ValueError unless `images` holds uint8 RGB images [N, H, W, 3] (an ndarray, ImageFiles or MappedImages)."""
    dtype, shape = getattr(images, "dtype", type(images).__name__), getattr(images, "shape", None)
    if dtype != np.uint8 or getattr(images, "ndim", None) != 4 or shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 images [N, H, W, 3], got {dtype} {shape}")


def concatenate(sets: Sequence[ImageSetLike]) -> ImageSetLike:
    """The images of `sets` one after the other: ImageFiles of one size stay one ImageFiles (nothing is read),
    ndarrays are concatenated. Empty sets are dropped (the IO manager stores an empty shard as a [0, 1, 1, 3]
    array)."""
    if not sets:
        raise ValueError("no image sets to concatenate")
    full = [s for s in sets if len(s)]
    if not full:
        return sets[0]
    if all(isinstance(s, ImageFiles) for s in full):
        sizes = sorted({s.size for s in full})
        if len(sizes) > 1:
            raise ValueError(f"image sets of different sizes {sizes} px cannot be one set")
        return ImageFiles([p for s in full for p in s.paths], full[0].size, full[0].workers, full[0].when_changed,
                          [d for s in full for d in s.sha256s])
    if all(isinstance(s, np.ndarray) for s in full):
        return np.concatenate(full)
    raise TypeError(f"concatenate takes ImageFiles or ndarrays, not a mix of {sorted({type(s).__name__ for s in full})}")
