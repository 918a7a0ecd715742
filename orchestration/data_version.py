"""The version of the real data: the hash of the input folder's files, and the md5 DVC recorded for it.

The `input_images` observation (orchestration/assets/settings.py) reports `files_version` of the folder as its
Dagster data version, so any changed, added or removed file makes `real_images` stale, whether or not `dvc add` was
run since; its metadata names the md5 that DVC recorded in the `.dvc` file covering the folder, when there is one.
`dvc add data` writes `data.dvc` (YAML: `outs: [{md5: <hash>.dir, path: data, ...}]`, format of DVC 3,
https://dvc.org/doc/user-guide/project-structure/dvc-files).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class DvcOut:
    dvc_file: Path  # the .dvc file
    path: Path  # the tracked file or folder, absolute
    md5: str  # as written in the .dvc file ("<hex>.dir" for a folder)


def read_dvc_file(dvc_file: Path) -> list[DvcOut]:
    """Every output of one `.dvc` file. Raises ValueError naming the file if it is not a DVC file."""
    try:
        data = yaml.safe_load(Path(dvc_file).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{dvc_file}: cannot read it as a .dvc file ({err})") from err
    outs = (data or {}).get("outs") if isinstance(data, dict) else None
    if not outs:
        raise ValueError(f"{dvc_file}: no `outs` entry; recreate it with `dvc add <folder>`")
    base = Path(dvc_file).resolve().parent
    return [DvcOut(Path(dvc_file), (base / o["path"]).resolve(), str(o["md5"])) for o in outs if "md5" in o]


def find_dvc_out(path: Path) -> DvcOut | None:
    """The DVC output that contains `path` (the folder itself or one above it), found through the `<name>.dvc`
    file next to that folder; None when no `.dvc` file up to the DVC project root covers it."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        candidate = folder.parent / f"{folder.name}.dvc"
        if candidate.is_file():
            for out in read_dvc_file(candidate):
                if out.path == folder:
                    return out
        if (folder / ".dvc").is_dir():  # the project root: nothing above it belongs to this project
            return None
    return None


def files_version(files: list[tuple[str, str]]) -> str:
    """A version of a folder from its (relative path, sha256) pairs, for data that DVC does not track."""
    digest = hashlib.sha256()
    for relpath, sha in sorted(files):
        digest.update(f"{relpath}\0{sha}\n".encode())
    return "sha256:" + digest.hexdigest()[:32]
