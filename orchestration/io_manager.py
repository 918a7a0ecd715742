"""Storage of asset values on disk, by type, never as pickles.

| value                      | on disk                                                        |
| -------------------------- | -------------------------------------------------------------- |
| numpy array                | `<asset>/<partition>.npy`                                      |
| dict of numpy arrays       | `<asset>/<partition>.npz`                                      |
| pandas DataFrame           | `<asset>/<partition>.parquet`                                  |
| ImageSet (table + images)  | `<asset>/<partition>.parquet` + `<asset>/images/<name>.png`   |
| Weights (arrays + strings) | `<asset>/<partition>.safetensors` (string metadata in header) |

An array is loaded memory-mapped (read-only) and an ImageSet with its images left on disk (an `ImageFiles`,
decoded when indexed); an ImageSet is written a chunk of images at a time (read, decoded or generated ahead of the
chunk being PNG-encoded by worker threads), so neither side ever holds a whole dataset of images.

`<partition>` is `all` for unpartitioned assets. Every file is written to a temporary name and renamed, so a run
killed mid-write never leaves a half-written file that a later step would read; a table is written after its
images, so a table on disk means all of its images are there.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image

from anon_core.data.image_files import ImageFiles
from anon_core.data.image_io import encode_png, write_bytes_atomic
from anon_core.errors import FalcoError
from anon_core.prefetch import batch_slices, read_parts


@dataclass
class ImageSet:
    """A table and the images of its rows: `table["image"]` names a row's file under `images/`, or is "" for a
    row without an image (a rejected input); `images` holds the images of the named rows, in table order."""

    table: pd.DataFrame
    images: np.ndarray | ImageFiles  # [N_named, H, W, 3] uint8

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


class FalcoIOManager(dg.ConfigurableIOManager):
    """Typed, atomic, pickle-free storage under `root`."""

    root: str

    def _base(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return Path(self.root).joinpath(*context.asset_key.path)

    @staticmethod
    def _stem(partition: str | None) -> str:
        return partition if partition is not None else "all"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        base = self._base(context)
        stem = self._stem(context.partition_key if context.has_partition_key else None)
        base.mkdir(parents=True, exist_ok=True)
        if isinstance(obj, ImageSet):
            _write_images(base / "images", obj.named["image"].tolist(), obj.images)
            write_bytes_atomic(base / f"{stem}.parquet", _parquet_bytes(obj.table))
        elif isinstance(obj, Weights):
            from safetensors.numpy import save

            arrays = {k: np.ascontiguousarray(v) for k, v in obj.arrays.items()}
            write_bytes_atomic(base / f"{stem}.safetensors", save(arrays, metadata=obj.metadata))
        elif isinstance(obj, pd.DataFrame):
            write_bytes_atomic(base / f"{stem}.parquet", _parquet_bytes(obj))
        elif isinstance(obj, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, obj, allow_pickle=False)
            write_bytes_atomic(base / f"{stem}.npy", buf.getvalue())
        elif isinstance(obj, dict) and all(isinstance(v, np.ndarray) for v in obj.values()):
            buf = io.BytesIO()
            np.savez(buf, **obj)
            write_bytes_atomic(base / f"{stem}.npz", buf.getvalue())
        else:
            raise TypeError(
                f"asset {context.asset_key.to_user_string()} returned {type(obj).__name__}; FalcoIOManager stores "
                "numpy arrays, dicts of arrays, DataFrames, ImageSets and Weights"
            )
        context.add_output_metadata({"path": dg.MetadataValue.path(str(base))})

    def load_input(self, context: dg.InputContext) -> Any:
        base = self._base(context)
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            if context.has_partition_key and len(keys) == 1:  # same-partitioned downstream: one shard
                return self._load(base, keys[0])
            return {key: self._load(base, key) for key in sorted(keys)}  # unpartitioned downstream: all shards
        return self._load(base, None)

    def _load(self, base: Path, partition: str | None) -> Any:
        stem = self._stem(partition)
        for suffix in (".npy", ".npz", ".parquet", ".safetensors"):
            path = base / f"{stem}{suffix}"
            if path.exists():
                break
        else:
            raise FileNotFoundError(f"no stored value for {base.name} partition {stem!r} under {base}")
        if suffix == ".npy":  # memory-mapped: a shard's step reads its rows of real_inversions, not all 30,000
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as data:
                return Weights(arrays={k: data.get_tensor(k) for k in data.keys()}, metadata=data.metadata() or {})
        table = pd.read_parquet(path)
        if (base / "images").is_dir() and "image" in table.columns:
            paths = [base / "images" / name for name in table["image"].fillna("") if name]
            if not paths:
                return ImageSet(table=table, images=np.zeros((0, 1, 1, 3), np.uint8))
            try:
                with Image.open(paths[0]) as first:
                    size = first.size[0]
            except OSError as err:
                raise FalcoError(f"{paths[0]}: cannot be read ({err}); the stored {base.name} is incomplete, so "
                                 "materialize it again") from None
            return ImageSet(table=table, images=ImageFiles(paths, size, workers=_io_workers()))
        return table


def _io_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _write_images(folder: Path, names: list[str], images) -> None:
    """Write images[i] as PNG names[i]: read in chunks (an ImageFiles decodes, a generated set generates, the next
    chunk while this one is written), each image PNG-encoded and written by a pool of threads."""
    workers = _io_workers()

    def write(name: str, image: np.ndarray) -> None:
        write_bytes_atomic(folder / name, encode_png(image))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="falco-png") as pool:
        # 32 images a chunk (a multiple of generate's batch), the next one read meanwhile: 200 MB at 1024 px
        for part, chunk in read_parts(images, batch_slices(len(names), 32), ahead=1):
            list(pool.map(write, names[part], chunk))  # list(): raises the first failed write


def _parquet_bytes(table: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    return buf.getvalue()
