"""The journal of a `falco anonymize` run: each finished batch's results, so that a run stopped at 29,000 of 30,000
images, rerun with the same arguments, redoes only what was not finished; and a run with other inputs (10 images
added) takes each image an earlier run finished from its batch, by the image's key (`anon_core.reuse`).

`<output>/.journal/run.json` holds the key of the latest run (a hash of everything that decides its results: the
resolved parameters, the weights, the alignment and every input file's path and sha256);
`batch-<key[:16]>-<index>.npz` holds a finished batch's codes, pairs, similarities, losses and each row's key,
written (atomically) only after all of its images are. The batches of other keys (earlier runs, other work) stay
until a run finishes (`end`): until then they are where its images' codes are looked up, and a run whose preparation
fails leaves them as they were.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from anon_core.atomic import atomic_path, write_bytes_atomic

FOLDER = ".journal"


def run_key(record: Any) -> str:
    """A hash of JSON-able values that decide a run's results."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


class Journal:
    """The batches of one run key in `<output_dir>/.journal`. `start` writes the key as the folder's latest (called
    before the run's first write); `earlier` gives the batches of other keys, `end` removes them."""

    def __init__(self, output_dir: Path, key: str, start: bool = True) -> None:
        self.folder = Path(output_dir) / FOLDER
        self.key = key
        self._prefix = f"batch-{key[:16]}-"
        if start:
            self.start()

    def start(self) -> None:
        write_bytes_atomic(self.folder / "run.json", json.dumps({"key": self.key}).encode())

    def _path(self, index: int) -> Path:
        return self.folder / f"{self._prefix}{index:06d}.npz"

    def finished(self, index: int) -> dict[str, np.ndarray] | None:
        """The results of batch `index` if a run with this key finished it, else None."""
        path = self._path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):  # a damaged entry: the batch is done again
            return None

    def record(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Batch `index` is finished (call after its images are written)."""
        with atomic_path(self._path(index)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    def set_aside(self, start: int) -> list[BatchFile]:
        """This key's batches from `start` on, which hold other rows than the run's (its inputs gave other rows than
        when they were written: a photo's faces found otherwise), renamed out of this key, so that no later
        `finished` gives them by their place and the run's new batches do not overwrite them: returned (the keyed
        ones) to be found by their rows' keys, as the batches of other keys are, and removed by `end`."""
        moved = []
        for path in sorted(self.folder.glob(f"{self._prefix}*.npz")):
            index = path.stem[len(self._prefix):]
            if index.isdigit() and int(index) >= start:
                aside = path.with_name(f"{self._prefix[:-1]}~aside-{index}.npz")
                path.replace(aside)
                moved.append(aside)
        return keyed_batches(moved)

    def _others(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("batch-*.npz") if not p.name.startswith(self._prefix))

    def earlier(self) -> list[BatchFile]:
        """The finished batches of other keys that hold their rows' keys (`reuse.KEY`), for `reuse.StoredRows`."""
        return keyed_batches(self._others())

    def end(self) -> None:
        """The run finished: the batches of other keys go (the images it took from them are its own batches now)."""
        for path in self._others():
            path.unlink(missing_ok=True)


def keyed_batches(paths: Iterable[Path]) -> list[BatchFile]:
    """The journal batches among `paths` that hold their rows' keys (`reuse.KEY`): not of an older falco, not
    damaged, not removed since listed."""
    from anon_core.reuse import KEY

    batches = []
    for path in paths:
        batch = BatchFile(path)
        try:
            batch[KEY]
        except (KeyError, OSError, ValueError, zipfile.BadZipFile, EOFError):
            continue
        batches.append(batch)
    return batches


def run_batches(output_dir: Path) -> list[BatchFile]:
    """Every keyed batch in the journal of another output folder, of any run key, for `reuse.StoredRows`."""
    return keyed_batches(sorted((Path(output_dir) / FOLDER).glob("batch-*.npz")))


def end_latest_run(output_dir: Path) -> None:
    """`Journal.end` for the latest run in `output_dir` (its run.json), whose earlier batches were left for the
    runs of other folders to take from; nothing when there is no readable run.json."""
    try:
        key = json.loads((Path(output_dir) / FOLDER / "run.json").read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    Journal(output_dir, str(key), start=False).end()


class BatchFile(Mapping):
    """A journal batch's arrays, read from its file when asked for (not kept: a run reads thousands), its row keys
    read once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: np.ndarray | None = None

    def __getitem__(self, name: str) -> np.ndarray:
        from anon_core.reuse import KEY

        if name == KEY and self._keys is not None:
            return self._keys
        with np.load(self.path, allow_pickle=False) as data:
            value = data[name]
        if name == KEY:
            self._keys = value
        return value

    def __iter__(self) -> Iterator[str]:
        with np.load(self.path, allow_pickle=False) as data:
            return iter(list(data.files))

    def __len__(self) -> int:
        return len(list(iter(self)))
