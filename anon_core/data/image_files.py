"""A set of images that stays on disk until indexed: the drop-in for a uint8 [N, R, R, 3] array where the whole
set does not fit in memory (CelebA-HQ's 30,000 faces at 1024 px are 94 GB decoded).

`ImageFiles[i]` decodes one file, `ImageFiles[rows]` (a slice, integer array or boolean mask) decodes those files
in worker threads and stacks them; each image is resized to R x R exactly as `stages.resize_images` does, so
a stage gives the same result on an ImageFiles as on the array it stands for. `subset(rows)` is another
ImageFiles, nothing decoded. `read_batches` walks any image array in batches with the next batches read ahead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anon_core.data.image_io import ImageRejected, load_rgb, read_listed, to_tensor, to_uint8
from anon_core.errors import FalcoError
from anon_core.prefetch import batch_slices, read_parts

if TYPE_CHECKING:
    from anon_core.data.mapped_images import MappedImages

WHEN_CHANGED = "restore it, or make again what listed it (materialize the asset again, or re-run the command)"


class ImageFiles:
    """Images read from `paths` on indexing, each resized to `size` x `size` (uint8 RGB)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths: Sequence[Path | str], size: int, workers: int = 4,
                 when_changed: str = WHEN_CHANGED, sha256s: Sequence[str | None] | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.paths = [Path(p) for p in paths]
        self.size = size
        self.workers = max(1, workers)
        self.when_changed = when_changed  # the fix a file that went bad since the set was listed calls for
        # each file's digest when it was listed (None: not checked): a file that changed since is refused, not read
        self.sha256s = list(sha256s) if sha256s is not None else [None] * len(self.paths)
        if len(self.sha256s) != len(self.paths):
            raise ValueError(f"{len(self.sha256s)} digests for {len(self.paths)} files")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size, self.size, 3)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self.paths)} files at {self.size} px)"

    def read(self, position: int) -> np.ndarray:
        """The image at `position`, uint8 [size, size, 3]; a file that went missing or bad gives a FalcoError."""
        path, sha256 = self.paths[position], self.sha256s[position]
        try:
            image = load_rgb(path, data=read_listed(path, sha256) if sha256 else None)
        except ImageRejected as rejected:
            if rejected.reason == "changed":
                raise FalcoError(f"{path}: the file changed since this image set was listed (its bytes are not those "
                                 f"hashed then): {self.when_changed}") from None
            raise FalcoError(f"{rejected.detail.rstrip('.')}; it was readable when this image set was listed, so it "
                             f"has been changed or removed since: {self.when_changed}") from None
        if image.shape[:2] != (self.size, self.size):
            image = to_uint8(to_tensor([image], self.size))[0]
        return image

    def _positions(self, index) -> list[int]:
        if isinstance(index, tuple):
            raise IndexError("ImageFiles takes one index (rows), not a tuple; index the returned array for pixels")
        if isinstance(index, slice):
            return list(range(len(self.paths)))[index]
        rows = np.asarray(index)
        if rows.dtype == bool:
            if rows.shape != (len(self.paths),):
                raise IndexError(f"boolean index of shape {rows.shape} for {len(self.paths)} images")
            return np.flatnonzero(rows).tolist()
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise IndexError(f"index images with an int, a slice, an int array or a boolean mask, not {index!r}")
        return [range(len(self.paths))[int(r)] for r in rows]  # range() raises IndexError and wraps negatives

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.read(range(len(self.paths))[int(index)])
        positions = self._positions(index)
        out = np.empty((len(positions), self.size, self.size, 3), np.uint8)
        if len(positions) <= 1 or self.workers == 1:
            for i, p in enumerate(positions):
                out[i] = self.read(p)
            return out
        with ThreadPoolExecutor(max_workers=min(self.workers, len(positions))) as pool:
            for i, image in enumerate(pool.map(self.read, positions)):
                out[i] = image
        return out

    def subset(self, index) -> ImageFiles:
        """The images at `index` (slice, int array or mask) as another ImageFiles; nothing is read."""
        positions = self._positions(index)
        return ImageFiles([self.paths[p] for p in positions], self.size, self.workers, self.when_changed,
                          [self.sha256s[p] for p in positions])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self[:]
        return images if dtype is None else images.astype(dtype)


def take(images: np.ndarray | ImageFiles | MappedImages, index) -> np.ndarray | ImageFiles | MappedImages:
    """`images[index]` that stays lazy for an ImageFiles or a MappedImages (a view, not a decoded or computed copy)."""
    return images.subset(index) if hasattr(images, "subset") else images[index]


def read_batches(
    images: np.ndarray | ImageFiles, batch_size: int, ahead: int = 2
) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, images[rows]) for consecutive batches of `batch_size`, with up to `ahead` further batches being read
    in a thread while the caller works on this one (an ndarray is only sliced)."""
    return read_parts(images, batch_slices(len(images), batch_size), ahead)
