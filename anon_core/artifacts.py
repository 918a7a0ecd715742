"""Values that stages hand to storage and back, besides plain arrays and tables: an image set with its table, and
a network's weights with their description. The IO manager (orchestration.io_manager) stores both without pickles:
PNG files and a parquet table, one safetensors file."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from anon_core.data.image_files import ImageFiles
from anon_core.data.mapped_images import MappedImages


@dataclass
class ImageSet:
    """A table and the images of its rows: `table["image"]` names a row's file under `images/`, or is "" for a
    row without an image (a rejected input); `images` holds the images of the named rows, in table order."""

    table: pd.DataFrame
    images: np.ndarray | ImageFiles | MappedImages  # [N_named, H, W, 3] uint8

    def __post_init__(self) -> None:
        if "image" not in self.table.columns:
            raise ValueError("ImageSet.table needs an 'image' column with each image's relative file name")
        if int(self.has_image.sum()) != len(self.images):
            raise ValueError(f"ImageSet names {int(self.has_image.sum())} images but holds {len(self.images)}")

    @property
    def has_image(self) -> pd.Series:
        return self.table["image"].fillna("") != ""

    @property
    def named(self) -> pd.DataFrame:
        """The rows that have an image, in the order of `images`."""
        return self.table[self.has_image].reset_index(drop=True)


@dataclass
class Weights:
    """A network's state dict as numpy arrays, with string metadata (its config, labels, status); stored as one
    safetensors file, so loading it never unpickles anything."""

    arrays: dict[str, np.ndarray]
    metadata: dict[str, str]


@dataclass
class KeyedArray:
    """An array whose rows each carry the key of what decided them (`anon_core.reuse`): stored as `<stem>.npy` and
    `<stem>.keys.npy`, and loaded as the plain array; a later run reads the keys to take the rows it would
    compute again."""

    array: np.ndarray  # [N, ...]
    keys: np.ndarray  # [N] str

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.array):
            raise ValueError(f"KeyedArray has {len(self.array)} rows but {len(self.keys)} keys")
