"""Storage of asset values on disk, by type, never as pickles.

| value                      | on disk (in the asset's folder)                      |
| -------------------------- | ---------------------------------------------------- |
| numpy array                | `<stem>.npy`                                         |
| dict of numpy arrays       | `<stem>.npz`                                         |
| pandas DataFrame           | `<stem>.parquet`                                     |
| ImageSet (table + images)  | `<stem>.parquet` + `images/<name>.png`               |
| KeyedArray (array + keys)  | `<stem>.npy` + `<stem>.keys.npy`, loaded as the array |
| Weights (arrays + strings) | `<stem>.safetensors` (string metadata in its header) |

The asset's folder is `resources.asset_dir`: `<root>/<asset>`, or `<root>/<asset>/<variant>` for a variant's
partitions, so variants never share a file. `<stem>` is the shard for a shard's partition, else `all`. So a
variant's anonymized dataset is one folder, `anonymized_images/<variant>/images/`, with the inputs' relative paths.

An array is loaded memory-mapped (read-only), a dict of arrays member by member when one is read (`LazyArrays`),
and an ImageSet with its images left on disk (an `ImageFiles`, decoded when indexed); an ImageSet is written a chunk
of images at a time (read, decoded or generated ahead of the chunk being PNG-encoded by worker threads), so
neither side ever holds a whole dataset of images.

Every file is written by `anon_core.atomic` (a temporary name, then a rename), so a run killed mid-write never
leaves a half-written file that a later step would read; a table is written after its images, so a table on disk
means all of its images are there.

Values are replaced in place, and Dagster records a materialization only after its value is written: a run killed
in between leaves a value the instance does not record (written under other settings, say), which a later run with
the recorded settings would take as up to date. So before writing a value its writer's run id goes to `.<stem>.run`
beside it, and a stored value counts only while that is the run of its latest recorded materialization
(`unrecorded`): the driver makes such a value again, and loading one fails naming the asset to materialize.

Once a value is whole, the files it consists of go to `.<stem>.files` (with the run that wrote them; an asset that
writes files of its own adds them, `record_files`). A value Dagster records whose writer file or recorded files are
gone (a folder or an image deleted by hand) is `missing_files`: the driver makes it again, where Dagster alone would
call it up to date and a later step would read nothing, or a report would point at files that are not there.

A stored image set's `images/` holds what its tables list and nothing else: writing an unpartitioned one removes
the images its new table does not list (an input since removed), and the driver prunes a partitioned one once its
shards are all written (`prune_shards`: the tables of shards no longer registered, and images no table lists).

An image set whose table has a `key` column (`anon_core.reuse`: what decided each image) writes only what changed:
its table records each file's size and modification time as written, and an image a table of the set recorded
under the same key, its file unchanged since, is neither read (generated, decoded) nor written again
(`unchanged_images`); a shard keeps the records of images that moved to another shard until `prune_shards`. A
variant's image that another variant holds under the same key (a variant defined like another) is copied from there.

An input that reads every partition of an upstream asset fails on a missing one, unless its definition says
`metadata={ALLOW_MISSING: True}` (the report: the variants evaluated so far); it then gets the stored ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.execution.context.output import RUN_ID_PLACEHOLDER
import numpy as np
import pandas as pd
from PIL import Image

from anon_core.artifacts import ImageSet, KeyedArray, Weights
from anon_core.atomic import atomic_path, write_bytes_atomic
from anon_core.data.image_files import ImageFiles
from anon_core.data.image_io import encode_png
from anon_core.errors import FalcoError
from anon_core.prefetch import WriteBehind, batch_slices, read_parts
from anon_core.reuse import KEY
from orchestration.partitions import split_key
from orchestration.resources import asset_dir

__all__ = ["ALLOW_MISSING", "REAL_FACES", "FalcoIOManager", "ImageSet", "KeyedArray", "LazyArrays", "Weights",
           "claim", "keep_dropped_rows", "keyed_array", "keyed_dicts", "make_private", "missing_files",
           "prune_images", "prune_moved_rows", "prune_shards", "prune_unregistered_shards", "record_files",
           "stored_files", "stored_state", "unrecorded", "value_location", "verified_keys"]

ALLOW_MISSING = "falco/allow_missing_partitions"  # AssetIn metadata key
STORED = "path"  # materialization metadata key: the value went to files (handle_output, or an asset's own)
REAL_FACES = "falco/real_faces"  # asset metadata key: it holds real faces (or codes that redraw them); its files
# are stored readable by their owner only


class LazyArrays(Mapping):
    """The arrays of an `.npz` file, each read when first asked for (a shard's codes are not read to plot its
    losses), then kept."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with np.load(self.path, allow_pickle=False) as data:
            self._keys = tuple(data.files)
        self._read: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._read:
            if key not in self._keys:
                raise KeyError(f"{key!r} is not in {self.path} (it holds {', '.join(self._keys)})")
            with np.load(self.path, allow_pickle=False) as data:
                self._read[key] = data[key]
        return self._read[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def value_location(root: str | Path, asset_key: dg.AssetKey, partitions_def, partition: str | None) -> tuple[Path, str]:
    """(the asset's folder, the file stem) of one partition (or of an unpartitioned asset)."""
    variant, shard = split_key(partition, partitions_def)
    return asset_dir(root, "/".join(asset_key.path), variant), shard or "all"


def make_private(root: str | Path, graph) -> tuple[list[str], list[str]]:
    """Make the stored values of the graph's real-face assets (REAL_FACES) readable by their owner only, folders
    0700 and files 0600, where a storage written by an earlier version left them readable by all (a folder already
    0700 is taken as done; a folder that is a link, to a larger disk say, is followed). Returns the assets whose
    values it changed, and `<folder>: <why>` for those it could not."""
    changed, failed = [], []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if not (node.metadata or {}).get(REAL_FACES) or node.partitions_def is not None:
            continue
        base, _ = value_location(root, key, None, None)
        if not base.is_dir() or base.stat().st_mode & 0o077 == 0:
            continue
        try:
            for path in [*base.rglob("*"), base]:  # the folder last: one left as it was is tried again next run
                if path == base or not path.is_symlink():
                    path.chmod(0o700 if path.is_dir() else 0o600)
            changed.append(key.to_user_string())
        except OSError as error:  # not ours to change (another owner, an immutable file): said, not hidden
            failed.append(f"{error.filename or base}: {error.strerror or error}")
    return changed, failed


def _writer_file(base: Path, stem: str) -> Path:
    return base / f".{stem}.run"


def _files_record(base: Path, stem: str) -> Path:
    return base / f".{stem}.files"


def _read_writer(base: Path, stem: str) -> str | None:
    try:
        return _writer_file(base, stem).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def writer_of(root: str | Path, asset_key: dg.AssetKey, partitions_def, partition: str | None) -> str | None:
    """The run that wrote the stored value (None: nothing stored, or a value older than writer files)."""
    return _read_writer(*value_location(root, asset_key, partitions_def, partition))


def latest_materialization(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None):
    records = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=asset_key, asset_partitions=[partition] if partition is not None else None), limit=1).records
    return records[0] if records else None


RESTORED_TAG = "falco/restored_from_run"  # a materialization reported again for files put back (orchestration.restored)


def recorded_run(record) -> str | None:
    """The run that made the value a materialization record describes: its own, or the one it was reported again
    for (a value DVC put back)."""
    if record is None:
        return None
    return (record.asset_materialization.tags or {}).get(RESTORED_TAG) or record.run_id


def unrecorded(instance: dg.DagsterInstance, root: str | Path, asset_key: dg.AssetKey, partitions_def,
               partition: str | None) -> tuple[str, str | None] | None:
    """(the run that wrote the stored value, the run of its latest recorded materialization or None) when these
    differ: the value on disk is not the one the instance records (its writer stopped before Dagster recorded it).
    None when they agree, or when nothing is stored or the value predates writer files."""
    writer = writer_of(root, asset_key, partitions_def, partition)
    if writer is None:
        return None
    recorded = recorded_run(latest_materialization(instance, asset_key, partition))
    return None if writer == recorded else (writer, recorded)


def _written_whole(base: Path, stem: str) -> bool:
    """Whether the run that last began writing the value (its writer file) also finished it (its files record)."""
    writer = _read_writer(base, stem)
    try:
        return writer is not None and json.loads(_files_record(base, stem).read_text()).get("run") == writer
    except (OSError, ValueError, AttributeError):
        return False


def record_files(base: Path, stem: str, run_id: str | None, names: Iterable[str], private: bool = False) -> None:
    """Once run `run_id` has written a whole value: the files it consists of (paths relative to the value's folder
    `base`), added to what the same run recorded before (an asset's own files, then its output's)."""
    if run_id is None or run_id == RUN_ID_PLACEHOLDER:  # a context built by hand (tests)
        return
    path = _files_record(base, stem)
    files = {name for name in names if (base / name).is_file()}
    try:
        earlier = json.loads(path.read_text())
        if earlier.get("run") == run_id:
            files.update(earlier["files"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # none yet, or unreadable: this run's files alone
    write_bytes_atomic(path, json.dumps({"run": run_id, "files": sorted(files)}).encode(), private)


def stored_files(context: dg.AssetExecutionContext, root: str | Path, paths: Iterable[Path]) -> None:
    """For an asset that writes files of its own (the report, photo mode's photos; see `claim`), once they are all
    written: `record_files` for them (absolute paths under the asset's folder)."""
    partitions_def = context.assets_def.partitions_def
    partition = str(context.partition_key) if context.has_partition_key else None
    base, stem = value_location(root, context.asset_key, partitions_def, partition)
    record_files(base, stem, context.run.run_id, [Path(p).relative_to(base).as_posix() for p in paths])


def stored_state(instance: dg.DagsterInstance, root: str | Path, asset_key: dg.AssetKey, partitions_def,
                 partition: str | None) -> str | None:
    """"UNRECORDED" (`unrecorded`), "INCOMPLETE" (`missing_files`) or None for a stored value, reading its latest
    materialization once for both."""
    record = latest_materialization(instance, asset_key, partition)
    writer = writer_of(root, asset_key, partitions_def, partition)
    if writer is not None and writer != recorded_run(record):
        return "UNRECORDED"
    return "INCOMPLETE" if _missing(record, root, asset_key, partitions_def, partition) else None


def missing_files(instance: dg.DagsterInstance, root: str | Path, asset_key: dg.AssetKey, partitions_def,
                  partition: str | None) -> list[str]:
    """What of the stored value Dagster records is no longer on disk (deleted by hand): its writer file when its
    folder went (the whole value), else the recorded files that are gone (paths relative to the value's folder).
    Empty when all is there, when the recorded materialization stored no files, when the value on disk is not the
    recorded one (`unrecorded`), or when it predates files records."""
    return _missing(latest_materialization(instance, asset_key, partition), root, asset_key, partitions_def,
                    partition)


def _missing(record, root: str | Path, asset_key: dg.AssetKey, partitions_def, partition: str | None) -> list[str]:
    if record is None or STORED not in (record.asset_materialization.metadata or {}):
        return []
    base, stem = value_location(root, asset_key, partitions_def, partition)
    writer = _read_writer(base, stem)
    if writer is None:
        return [_writer_file(base, stem).name]
    if writer != recorded_run(record):
        return []
    try:
        files = json.loads(_files_record(base, stem).read_text())
        names = files["files"] if files.get("run") == writer else []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [name for name in names if not (base / name).is_file()]


def claim(context: dg.AssetExecutionContext, root: str | Path) -> None:
    """For an asset that writes files of its own into its folder before it returns (photo mode's photos, the
    report): from here on its stored value is this run's until Dagster records it (as `handle_output` does)."""
    partitions_def = context.assets_def.partitions_def
    partition = str(context.partition_key) if context.has_partition_key else None
    base, stem = value_location(root, context.asset_key, partitions_def, partition)
    write_bytes_atomic(_writer_file(base, stem), context.run.run_id.encode())


KEYS_SUFFIX = ".keys.npy"


def keyed_array(instance: dg.DagsterInstance, root: str | Path, asset_key: dg.AssetKey, name: str
                ) -> dict[str, np.ndarray] | None:
    """An unpartitioned KeyedArray as stored, `{reuse.KEY: its keys, name: the array (memory-mapped)}`, for
    `reuse.StoredRows`; None when there is none, or when it is neither the value the instance records nor one its
    writer wrote whole (a run stopped between writing the keys and the array, say). A whole one that Dagster did
    not record (its run killed once it was written) is as good: each row's key names what it was computed from."""
    base, stem = value_location(root, asset_key, None, None)
    if unrecorded(instance, root, asset_key, None, None) is not None and not _written_whole(base, stem):
        return None
    try:
        keys = np.load(base / f"{stem}{KEYS_SUFFIX}", allow_pickle=False)
        array = np.load(base / f"{stem}.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return {KEY: keys, name: array} if len(keys) == len(array) else None


def keyed_dicts(root: str | Path, asset: str) -> Iterator[LazyArrays]:
    """Every stored dict of arrays of `asset` (each partition of each variant) that holds row keys. Each is one
    file, written whole or not at all, and its keys name what its rows were computed from, so one that Dagster did
    not record is as good as one it did."""
    for path in sorted((Path(root) / asset).rglob("*.npz")):
        try:
            value = LazyArrays(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            continue
        if KEY in value:
            yield value


def _moved_file(base: Path, stem: str) -> Path:
    return base / f".{stem}.moved.npz"


def keep_dropped_rows(root: str | Path, asset_key: dg.AssetKey, partitions_def, partition: str | None,
                      keys: np.ndarray, context: str, axes: Mapping[str, int]) -> int:
    """Before a partition's dict of arrays with row keys is replaced by one with `keys`, made under the settings
    `context` (`reuse.context_digest`): keep the rows the replacement drops that were made under the same settings
    (images that moved to another shard; rows of other settings, a new margin say, are of no use to its shards) in
    `.<stem>.moved.npz`, where `keyed_dicts` finds them, until `prune_moved_rows`. Returns how many rows it holds."""
    from anon_core.reuse import CONTEXT, dropped_rows

    base, stem = value_location(root, asset_key, partitions_def, partition)
    moved = _moved_file(base, stem)
    stored = []
    for path in (base / f"{stem}.npz", moved):
        try:
            value = LazyArrays(path)
            if str(value[CONTEXT]) == context:
                stored.append(value)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue  # none, unreadable, or of an older falco: nothing of it to keep
    rows = dropped_rows(stored, keys, axes)
    if rows is None:
        moved.unlink(missing_ok=True)
        return 0
    with atomic_path(moved) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **rows, **{CONTEXT: np.array(context)})
    return len(rows[KEY])


def prune_moved_rows(folder: Path) -> list[str]:
    """Remove the rows kept by `keep_dropped_rows` in `folder` (a variant's, once all of its shards are made)."""
    removed = []
    for path in sorted(folder.glob(".*.moved.npz")) if folder.is_dir() else []:
        path.unlink()
        removed.append(path.name)
    return removed


class UnrecordedValue(FalcoError):
    """A stored value that is not the one the instance records (`unrecorded`)."""


class FalcoIOManager(dg.ConfigurableIOManager):
    """Typed, atomic, pickle-free storage under `root`."""

    root: str

    def _where(self, asset_key: dg.AssetKey, partitions_def, partition: str | None) -> tuple[Path, str]:
        return value_location(self.root, asset_key, partitions_def, partition)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        partition = context.partition_key if context.has_partition_key else None
        base, stem = self._where(context.asset_key, context.asset_partitions_def if partition else None, partition)
        private = bool((context.definition_metadata or {}).get(REAL_FACES))
        base.mkdir(parents=True, exist_ok=True)
        if private:  # its listing names real files too (hF: real_images/ was 0755 around its 0600 files)
            with contextlib.suppress(OSError):  # not ours to change: its files stay 0600 all the same
                base.chmod(0o700)
        run_id = _provided(lambda: context.run_id)  # a context built by hand (tests) has none, or an ephemeral one
        if run_id is not None and run_id != RUN_ID_PLACEHOLDER:
            # first: from here on the stored value is this run's until Dagster records it
            write_bytes_atomic(_writer_file(base, stem), run_id.encode(), private)
        files = [f"{stem}.parquet"]
        if isinstance(obj, ImageSet):
            names = obj.named["image"].tolist()
            keys = obj.named[KEY].tolist() if KEY in obj.table.columns else None
            unchanged = unchanged_images(base, names, keys)
            copied = _copy_from_other_variants(base, names, keys, ~unchanged, private) \
                if keys is not None and partition is not None else np.zeros(len(names), bool)
            _write_images(base / "images", names, obj.images, private, skip=unchanged | copied)
            table = obj.table if keys is None else _with_file_stamps(obj, base / "images")
            if keys is not None and partition is not None:
                _keep_dropped_records(base, stem, set(names), private)
            write_bytes_atomic(base / f"{stem}.parquet", _parquet_bytes(table), private)
            if partition is None:  # its table lists the whole set
                prune_images(base / "images", set(names))
            files += [f"images/{name}" for name in names]
            if keys is not None:
                context.add_output_metadata({"num_images_written": int((~unchanged & ~copied).sum()),
                                             "num_images_unchanged": int(unchanged.sum()),
                                             "num_images_copied": int(copied.sum())})
        elif isinstance(obj, Weights):
            from safetensors.numpy import save

            arrays = {k: np.ascontiguousarray(v) for k, v in obj.arrays.items()}
            write_bytes_atomic(base / f"{stem}.safetensors", save(arrays, metadata=obj.metadata), private)
            files = [f"{stem}.safetensors"]
        elif isinstance(obj, pd.DataFrame):
            write_bytes_atomic(base / f"{stem}.parquet", _parquet_bytes(obj), private)
        elif isinstance(obj, KeyedArray):  # the keys first: the writer file keeps a torn pair from being reused
            with atomic_path(base / f"{stem}{KEYS_SUFFIX}", private) as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.asarray(obj.keys, dtype=str), allow_pickle=False)
            with atomic_path(base / f"{stem}.npy", private) as tmp, open(tmp, "wb") as fh:
                np.save(fh, obj.array, allow_pickle=False)
            files = [f"{stem}{KEYS_SUFFIX}", f"{stem}.npy"]
        elif isinstance(obj, np.ndarray):
            with atomic_path(base / f"{stem}.npy", private) as tmp, open(tmp, "wb") as fh:
                np.save(fh, obj, allow_pickle=False)
            files = [f"{stem}.npy"]
        elif isinstance(obj, dict) and all(isinstance(v, np.ndarray) for v in obj.values()):
            with atomic_path(base / f"{stem}.npz", private) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **obj)
            files = [f"{stem}.npz"]
        else:
            raise TypeError(
                f"asset {context.asset_key.to_user_string()} returned {type(obj).__name__}; FalcoIOManager stores "
                "numpy arrays, dicts of arrays, DataFrames, ImageSets and Weights"
            )
        record_files(base, stem, run_id, files, private)
        context.add_output_metadata({STORED: dg.MetadataValue.path(str(base))})

    def load_input(self, context: dg.InputContext) -> Any:
        if not context.has_asset_partitions:
            return self._load_recorded(context, None, None)
        partitions_def = context.asset_partitions_def  # the upstream asset's
        keys = context.asset_partition_keys
        if context.has_partition_key and [str(k) for k in keys] == [str(context.partition_key)]:
            return self._load_recorded(context, partitions_def, keys[0])  # the same partition
        allow_missing = bool((context.definition_metadata or {}).get(ALLOW_MISSING))
        values = {}
        for key in sorted(keys):  # e.g. every shard of a variant, or every variant
            try:
                values[str(key)] = self._load_recorded(context, partitions_def, key)
            except (FileNotFoundError, UnrecordedValue):  # allowed: as if it were not there
                if not allow_missing:
                    raise
        return values

    def _load_recorded(self, context: dg.InputContext, partitions_def, partition: str | None) -> Any:
        """The stored value, unless it is not the one the instance records (FalcoError naming what to re-make)."""
        base, stem = self._where(context.asset_key, partitions_def, partition)
        value = self._load(base, stem)  # a missing value: FileNotFoundError
        instance = _provided(lambda: context.instance)  # None for a context built by hand (tests)
        mismatch = unrecorded(instance, self.root, context.asset_key, partitions_def, partition) if instance else None
        if mismatch is not None:
            name = context.asset_key.to_user_string() + (f" {partition}" if partition is not None else "")
            raise UnrecordedValue(
                f"the stored {name} ({base}) was written by Dagster run {mismatch[0][:8]}, which stopped before "
                f"Dagster recorded it, so it is not the value the instance records"
                f"{f' (run {mismatch[1][:8]})' if mismatch[1] else ''}; materialize {name} again "
                "(`falco pipeline` re-makes it by itself)")
        return value

    def _load(self, base: Path, stem: str) -> Any:
        for suffix in (".npy", ".npz", ".parquet", ".safetensors"):
            path = base / f"{stem}{suffix}"
            if path.exists():
                break
        else:
            raise FileNotFoundError(f"no stored value {stem!r} under {base}: materialize it first")
        if suffix == ".npy":  # memory-mapped: a shard's step reads its rows of real_inversions, not all 30,000
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            return LazyArrays(path)
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


def _provided(read: Callable[[], Any]) -> Any:
    """What a Dagster context gives, or None where it was built without it."""
    from dagster._core.errors import DagsterInvariantViolationError

    try:
        return read()
    except DagsterInvariantViolationError:
        return None


def _io_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _write_images(folder: Path, names: list[str], images, private: bool = False, skip: np.ndarray | None = None
                  ) -> None:
    """Write images[i] as PNG names[i], except where `skip[i]` (neither read nor written): read in chunks (an
    ImageFiles decodes, a generated set generates, the next chunk while this one is written), each image PNG-encoded
    and written by a pool of threads. `private`: readable by their owner only (real faces)."""
    def write(name: str, image: np.ndarray) -> None:
        write_bytes_atomic(folder / name, encode_png(image), private)

    todo = np.flatnonzero(~skip) if skip is not None else np.arange(len(names))
    names = np.asarray(names, dtype=object)
    with WriteBehind(_io_workers()) as writer:
        # 32 images a chunk (a multiple of generate's batch), the next one read meanwhile: 200 MB at 1024 px
        parts = [todo[chunk] for chunk in batch_slices(len(todo), 32)]
        for part, chunk in read_parts(images, parts, ahead=1):
            for name, image in zip(names[part], chunk):
                writer.submit(write, name, image)


FILE_STAMP = ("file_size", "file_mtime_ns")
"""Columns of a keyed image set's table (one with `reuse.KEY`): each image file's size and modification time as it
was written, by which a later write of the set knows the file unchanged (`unchanged_images`)."""


def _with_file_stamps(images: ImageSet, folder: Path) -> pd.DataFrame:
    """`images.table` with `FILE_STAMP` of each named row's file under `folder`, as written."""
    table = images.table.copy()
    stats = [os.stat(folder / name) for name in images.named["image"]]
    has_image = images.has_image.to_numpy()
    for column, values in zip(FILE_STAMP, ([st.st_size for st in stats], [st.st_mtime_ns for st in stats])):
        table[column] = pd.array([pd.NA] * len(table), dtype="Int64")
        table.loc[has_image, column] = values
    return table


def verified_keys(images: ImageSet) -> list[str | None] | None:
    """Each stored image's key (`reuse.KEY`: what decided it), where its file is as its table recorded writing it
    (`FILE_STAMP`), else None (replaced or edited by hand since, or gone); None for a set stored without keys. What is
    computed of an image under its key (`evaluation.output_store`) holds for the file only while that is so."""
    named = images.named
    if KEY not in named.columns or not set(FILE_STAMP) <= set(named.columns):
        return None
    if not len(named):  # a shard without images (stored as an empty array)
        return []
    if not isinstance(images.images, ImageFiles):
        return None
    keys: list[str | None] = []
    for path, key, size, mtime in zip(images.images.paths, named[KEY], named[FILE_STAMP[0]], named[FILE_STAMP[1]]):
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            st = None
        recorded = st is not None and not pd.isna(size) and (st.st_size, st.st_mtime_ns) == (int(size), int(mtime))
        keys.append(str(key) if recorded and stat.S_ISREG(st.st_mode) else None)
    return keys


def _recorded_files(path: Path) -> pd.DataFrame | None:
    """The image, key and `FILE_STAMP` of each image a stored table recorded writing; None when there is no such
    table (none, torn, or written without keys)."""
    try:
        return pd.read_parquet(path, columns=["image", KEY, *FILE_STAMP]).dropna()
    except (OSError, ValueError, KeyError):
        return None


def _keep_dropped_records(base: Path, stem: str, names: set[str], private: bool) -> None:
    """Before a shard's keyed image set replaces its table: keep the records of the images the old table (or the
    records kept before) lists and the new one does not, images that moved to another shard, in
    `.<stem>.moved.parquet`, where `unchanged_images` finds them for the shard that holds them now, until
    `prune_shards` (every shard written)."""
    moved = base / f".{stem}.moved.parquet"
    parts = [table[~table["image"].isin(names)] for table in map(_recorded_files, (base / f"{stem}.parquet", moved))
             if table is not None]
    dropped = pd.concat(parts, ignore_index=True).drop_duplicates() if parts else None
    if dropped is None or dropped.empty:
        moved.unlink(missing_ok=True)
    else:
        write_bytes_atomic(moved, _parquet_bytes(dropped), private)


def unchanged_images(base: Path, names: list[str], keys: list[str] | None) -> np.ndarray:
    """Which of the images `names`, made under `keys` (`reuse.KEY`: what decided each image), are on disk in
    `base / "images"` as a table of `base` (any shard's) recorded writing them under the same key: the same name,
    key, size and modification time (rsync's quick check; a file replaced or touched since is written again). These
    need neither making nor writing: new data re-writes only the images it changes."""
    if keys is None:
        return np.zeros(len(names), bool)
    recorded: set[tuple] = set()
    for path in base.glob("*.parquet"):  # every shard's table, and the records kept of moved images
        table = _recorded_files(path)
        if table is None:
            continue
        recorded.update(zip(table["image"], table[KEY], table[FILE_STAMP[0]].astype("int64"),
                            table[FILE_STAMP[1]].astype("int64")))
    unchanged = np.zeros(len(names), bool)
    for i, (name, key) in enumerate(zip(names, keys)):
        try:
            st = os.stat(base / "images" / name, follow_symlinks=False)
        except OSError:
            continue
        unchanged[i] = stat.S_ISREG(st.st_mode) and (name, key, st.st_size, st.st_mtime_ns) in recorded
    return unchanged


def recorded_keys(asset_dir: Path) -> set[str]:
    """The keys of the images that a table in any of `asset_dir`'s variant folders records writing: every shard's,
    registered still or not, and the records kept of moved images. What the variants on disk hold, whichever of
    them a run covers."""
    keys: set[str] = set()
    for path in Path(asset_dir).glob("*/*.parquet"):
        table = _recorded_files(path)
        if table is not None:
            keys.update(table[KEY].astype(str))
    return keys


def _copy_from_other_variants(base: Path, names: list[str], keys: list[str], wanted: np.ndarray, private: bool
                              ) -> np.ndarray:
    """Which of the images `names` (where `wanted`) another variant's folder beside `base` holds under the same key,
    unchanged since written (`unchanged_images`): a variant defined like another has the same codes, so the same
    images. Those are copied (not linked: editing one variant's file in place must not change another's) instead of
    generated and encoded."""
    copied = np.zeros(len(names), bool)
    todo = {i: (names[i], keys[i]) for i in np.flatnonzero(wanted)}
    for other in sorted(p for p in base.parent.iterdir() if p.is_dir() and p != base) if todo else []:
        rows = list(todo)
        found = unchanged_images(other, [todo[i][0] for i in rows], [todo[i][1] for i in rows])
        for i in np.asarray(rows)[found]:
            with atomic_path(base / "images" / names[i], private) as tmp:
                shutil.copyfile(other / "images" / names[i], tmp)
            copied[i] = True
            del todo[i]
        if not todo:
            break
    return copied


def _parquet_bytes(table: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    return buf.getvalue()


def prune_images(folder: Path, keep: set[str]) -> list[str]:
    """Remove the files under `folder` whose path relative to it `keep` does not list, and the folders this leaves
    empty; returns the removed paths (relative)."""
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.rglob("*"), reverse=True):  # a folder's files before the folder
        name = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif name not in keep:
            path.unlink()
            removed.append(name)
    return removed


def prune_shards(base: Path, shards: list[str]) -> list[str]:
    """A partitioned image set's folder (`<shard>.parquet` per shard, the images of all of them in `images/`): remove
    the tables of shards not in `shards` (no longer registered), the records kept of moved images (`.<shard>.moved.
    parquet`: every image is in its shard's table now) and the images no remaining table lists. Nothing
    while a shard in `shards` has no table: a step killed after writing its images and before its table would
    otherwise lose them."""
    if not base.is_dir() or any(not (base / f"{shard}.parquet").is_file() for shard in shards):
        return []
    removed = []
    for table in sorted(base.glob("*.parquet")):
        if table.name.startswith("."):  # records of moved images: each is in its shard's table now
            table.unlink()
        elif table.stem not in shards:
            table.unlink()
            _writer_file(base, table.stem).unlink(missing_ok=True)
            _files_record(base, table.stem).unlink(missing_ok=True)
            removed.append(table.name)
    keep = set()
    for shard in shards:
        names = pd.read_parquet(base / f"{shard}.parquet", columns=["image"])["image"]
        keep.update(name for name in names.fillna("") if name)
    return removed + [f"images/{name}" for name in prune_images(base / "images", keep)]


def prune_unregistered_shards(base: Path, shards: list[str]) -> list[str]:
    """A variant's folder of per-shard values (`<shard>.npz`; photo mode's `<shard>.parquet` and `<shard>/` folder of
    photos): remove those of shards not in `shards` (no longer registered: the input shrank), so that none is left
    behind, nor serves as a source of rows (`keyed_dicts`). Only names of the shard-key form are touched."""
    from orchestration.partitions import SHARD_KEY

    removed = []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        stem = path.name.split(".", 1)[0]
        if SHARD_KEY.fullmatch(stem) and stem not in shards and not path.is_symlink():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            _writer_file(base, stem).unlink(missing_ok=True)
            _files_record(base, stem).unlink(missing_ok=True)
            removed.append(path.name)
    return removed
