"""Is REAL_DIR what a run anonymized? Checked by `falco evaluate` before any work, for aligned and photo-mode runs.

A run's manifest names its inputs relative to the folder it read (`input`), and, from this version on, the sha256
of each input file's bytes (`sha256`, "" where the file could not be read). REAL_DIR is read as the run read it
(`anon_core.data.datasets.load_dataset`, which hashes every file), and

- an input the run used (an `ok` image, a photo with faces) that REAL_DIR does not hold means REAL_DIR is another
  folder: the message names the folder the run's params.json records;
- a file whose bytes differ from the recorded sha256 means the folder changed since the run: its faces are not the
  ones anonymized, and every privacy figure computed against it would be wrong, so the evaluation stops.

A manifest without the `sha256` column (written by an earlier version) cannot be checked for changed files; the
evaluation goes on with a printed note.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from anon_core.errors import FalcoError

HASH_COLUMN = "sha256"


def scan_real_folder(real_dir: Path, dataset: str, labels_csv: Path | None = None) -> dict[str, str | None]:
    """Every file of REAL_DIR as a run reads it (`dataset`: the layout; photo mode reads "folder"): relpath under
    the dataset's image folder -> sha256 of its bytes (None: it cannot be read)."""
    from anon_core.data.datasets import load_dataset

    return file_hashes(load_dataset(dataset, Path(real_dir), labels_csv))


def file_hashes(table: pd.DataFrame) -> dict[str, str | None]:
    """`scan_real_folder` of a `load_dataset` table already read."""
    from anon_core.ingest import dataset_files

    return {f.relpath: f.sha256 for f in dataset_files(table)}


def check_real_folder(real_dir: Path, run_folder: Path, record: dict, manifest: pd.DataFrame, used: Iterable[str],
                      current: dict[str, str | None], log: Callable[[str], object] | None = None) -> None:
    """FalcoError unless REAL_DIR holds every input in `used` (the manifest inputs the evaluation reads) with the
    bytes the run read. `manifest`: the run's manifest as text; `current`: `scan_real_folder` of REAL_DIR;
    `record`: the run's params.json; `log` takes the note on a manifest without sha256 (default: stderr)."""
    anonymized = record.get("input_dir", "?")
    used = list(dict.fromkeys(used))
    absent = [p for p in used if p not in current]
    if absent:
        raise FalcoError(
            f"{run_folder}: its manifest's input {absent[0]!r} ({len(absent)} in all) is not in {real_dir}; pass as "
            f"REAL_DIR the folder this run anonymized (its params.json says {anonymized})")
    if HASH_COLUMN not in manifest.columns:
        (log or _to_stderr)(f"note: {Path(run_folder) / 'manifest.csv'} records no sha256 of its inputs (written "
                            f"by an earlier version), so {real_dir} is not checked for files changed since the run")
        return
    recorded = manifest.loc[manifest[HASH_COLUMN].fillna("") != "", ["input", HASH_COLUMN]]
    for relpath, digest in recorded.drop_duplicates("input").itertuples(index=False):
        if relpath not in current or current[relpath] == digest:
            continue  # a file the run rejected and that is gone now: nothing of it is evaluated
        now = current[relpath]
        what = "cannot be read now" if now is None else \
            f"has other bytes than when {run_folder} anonymized it (sha256 {now[:12]}..., was {digest[:12]}...)"
        raise FalcoError(
            f"{real_dir}: {relpath} {what}, so the folder no longer holds what the run anonymized; pass the folder "
            f"as the run read it (its params.json says {anonymized}), or anonymize it again")


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)
