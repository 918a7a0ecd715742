"""File hashes: one implementation for the model store, the dataset scan and the weight fingerprints."""

import hashlib
import json
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


class DigestEntries:
    """JSON records kept per file, filed by its sha256 and a `key` (what else decided the record):
    `<folder>/<sha[:2]>/<sha>.<key>.json`, the layout `prune_by_digest` prunes. Each record holds the file's digest,
    the key and the sha256 of the rest of it (`check`): a record that does not match it (a damaged disk block, a hand
    edit), or another file's or key's, reads as missing. Written atomically and readable by the owner only."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = Path(folder), key

    def path(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}.{self.key}.json"

    def read(self, sha256: str | None) -> dict | None:
        """The record of the file with this digest, without its digest, key and check; None on a miss."""
        from anon_core.reuse import context_digest

        if not sha256 or not SHA256_HEX.fullmatch(sha256):
            return None
        try:
            record = json.loads(self.path(sha256).read_text(encoding="utf-8"))
            check = record.pop("check")
            if check != context_digest(record) or record.pop("sha256") != sha256 or record.pop("key") != self.key:
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return record

    def write(self, sha256: str | None, record: dict) -> None:
        """Keep `record` (JSON-able) for the file with this digest (nothing for a file without one)."""
        from anon_core.atomic import write_bytes_atomic
        from anon_core.errors import FalcoError
        from anon_core.reuse import context_digest

        if not sha256 or not SHA256_HEX.fullmatch(sha256):
            return
        record = {**record, "sha256": sha256, "key": self.key}
        record["check"] = context_digest(record)
        try:
            write_bytes_atomic(self.path(sha256), json.dumps(record).encode(), private=True)
        except (OSError, FalcoError):  # its temporary removed by another process's `prune_by_digest`, a folder in
            pass  # its place (FalcoError), a full disk: not kept (a later run computes it again), and the run goes on
