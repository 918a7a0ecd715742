"""File hashes: one implementation for the model store, the dataset scan and the weight fingerprints."""

import hashlib
import re
from pathlib import Path

from anon_core.atomic import being_written

_CHUNK = 1 << 20
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # a file's digest as `sha256_file` writes it


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def prune_by_digest(folder: Path, keep: set[str]) -> int:
    """In a cache filed by file digest (`<folder>/<sha[:2]>/<sha>.<rest>`), remove the entries of every file whose
    digest is not in `keep`, the temporaries of killed writes (not those of writes going on: another process may
    be filling the cache) and the emptied subfolders. Returns the number of entries removed (counted by their
    `.json`, each entry's commit marker)."""
    folder = Path(folder)
    removed = 0
    for path in folder.glob("??/*"):
        # a temporary (".<name>...tmp") splits to ""
        if path.name.split(".", 1)[0] not in keep and not being_written(path.name):
            removed += path.suffix == ".json"
            path.unlink(missing_ok=True)
    for sub in folder.glob("??"):
        if sub.is_dir() and not any(sub.iterdir()):
            try:
                sub.rmdir()
            except OSError:  # a file written into it meanwhile
                pass
    return removed
