"""Image sets the evaluation reads batch by batch, so its memory is bounded by a few batches, not by the set.

Three kinds of set stand where a uint8 [N, H, W, 3] array used to: an ndarray, an `ImageFiles` (images left on
disk, `anon_core.data.image_files`) and a `MappedImages`, whose images are computed on indexing from the same
rows of other sets (a baseline applied to the real sources, fakes generated from their latent codes). All three
answer `len`, `shape`, `dtype`, `ndim` and `images[rows]`; `read_parts` walks any of them with the next parts
read (or computed) in a thread while the caller works on the current one (both from `anon_core.prefetch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from anon_core.data.image_files import ImageFiles
from anon_core.prefetch import batch_slices, read_parts

__all__ = ["ImageSetLike", "MappedImages", "batch_slices", "check_image_set", "concatenate", "generated_images",
           "read_parts"]


class MappedImages:
    """uint8 images [N, *image_shape] made on indexing: `images[rows] = fn(*(x[rows] for x in inputs))`.

    `fn` must treat each row on its own (its output for a row may not depend on the other rows of the batch),
    so that any batching gives the same images; nothing is kept between calls.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, fn: Callable[..., np.ndarray], inputs: Sequence, image_shape: tuple[int, int, int],
                 name: str = "mapped") -> None:
        lengths = {len(x) for x in inputs}
        if len(lengths) != 1:
            raise ValueError(f"{name}: inputs of different lengths {sorted(lengths)}; each row needs one of each")
        self.fn = fn
        self.inputs = list(inputs)
        self.image_shape = tuple(image_shape)
        self.name = name

    def __len__(self) -> int:
        return len(self.inputs[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    def __repr__(self) -> str:
        return f"MappedImages({self.name}: {len(self)} images of {self.image_shape})"

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(len(self))[index]  # an ndarray's rules: negative rows, masks, IndexError
        if rows.ndim == 0:
            return self[rows[None]][0]
        if not len(rows):
            return np.zeros((0, *self.image_shape), np.uint8)
        out = self.fn(*(x[rows] for x in self.inputs))
        if out.dtype != np.uint8 or out.shape != (len(rows), *self.image_shape):
            raise ValueError(f"{self.name}: made {out.dtype} {out.shape} for {len(rows)} rows, expected uint8 "
                             f"{(len(rows), *self.image_shape)}")
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self[:]
        return images if dtype is None else images.astype(dtype)


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
        return ImageFiles([p for s in full for p in s.paths], full[0].size, full[0].workers)
    if all(isinstance(s, np.ndarray) for s in full):
        return np.concatenate(full)
    raise TypeError(f"concatenate takes ImageFiles or ndarrays, not a mix of {sorted({type(s).__name__ for s in full})}")


def generated_images(generator, ws: np.ndarray, index: np.ndarray, device="cpu") -> MappedImages:
    """Images of the generator for the codes `ws[index]` (W [N, w_dim] or W+ [N, num_ws, w_dim]), generated on
    indexing: row i is `generate(generator, ws[index[i]])`. Read in batches of a multiple of
    `generate`'s own batch size (16), the images are bit for bit those of generating every row at once."""
    from anon_core.fake_pool import generate

    resolution = generator.config.resolution
    return MappedImages(lambda rows: generate(generator, ws[rows], device=device),
                        [np.asarray(index)], (resolution, resolution, 3), name="generated")
