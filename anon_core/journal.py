"""The journal of a `falco anonymize` run: each finished batch's results, so that a run stopped at 29,000 of 30,000
images, rerun with the same arguments, redoes only what was not finished.

`<output>/.journal/run.json` holds the key of the run (a hash of everything that decides its results: the resolved
parameters, the weights, the alignment and every input file's path and sha256); `batch-<index>.npz` holds a
finished batch's codes, pairs, similarities and losses, written (atomically) only after all of its images are. A
journal with another key is of other work: its batches are removed when a run with a new key starts.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from anon_core.atomic import atomic_path, write_bytes_atomic

FOLDER = ".journal"


def run_key(record: Any) -> str:
    """A hash of JSON-able values that decide a run's results."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


class Journal:
    """start: take the journal over now (see `start`); False leaves another key's batches in place until `start`,
    while `finished` already ignores them, so that a run whose preparation fails keeps the earlier run whole."""

    def __init__(self, output_dir: Path, key: str, start: bool = True) -> None:
        self.folder = Path(output_dir) / FOLDER
        self.key = key
        stamp = self.folder / "run.json"
        self.reusable = (json.loads(stamp.read_text()).get("key") if stamp.is_file() else None) == key
        if start:
            self.start()

    def start(self) -> None:
        """Make the journal this run's: another key's batches (other work, not ours to reuse) are removed."""
        if self.reusable:
            return
        for old in self.folder.glob("batch-*.npz"):
            old.unlink()
        write_bytes_atomic(self.folder / "run.json", json.dumps({"key": self.key}).encode())
        self.reusable = True

    def _path(self, index: int) -> Path:
        return self.folder / f"batch-{index:06d}.npz"

    def finished(self, index: int) -> dict[str, np.ndarray] | None:
        """The results of batch `index` if a run with this key finished it, else None."""
        path = self._path(index)
        if not self.reusable or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):  # a damaged entry: the batch is done again
            return None

    def record(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Batch `index` is finished (call after its images are written)."""
        self.start()
        with atomic_path(self._path(index)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
