"""A set of images made on indexing from the same rows of other sets: the fakes of a pool generated from their
codes, a baseline applied to real sources. It answers `len`, `shape`, `dtype`, `ndim` and `images[rows]` like a
uint8 [N, H, W, 3] array or an `ImageFiles`, so any stage or metric that reads images batch by batch takes it,
and a set far larger than memory is never made whole."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


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

    def subset(self, index) -> MappedImages:
        """The images at `index` (slice, int array or mask) as another MappedImages; nothing is made."""
        from anon_core.data.image_files import take

        rows = np.arange(len(self))[index]
        return MappedImages(self.fn, [take(x, rows) for x in self.inputs], self.image_shape, self.name)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self[:]
        return images if dtype is None else images.astype(dtype)
