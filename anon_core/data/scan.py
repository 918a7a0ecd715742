"""Deterministic scanning of a user's input folder: every file, its hash, duplicates and unsafe links.

Reference: none to port; the walk follows the semantics of ``os.walk(followlinks=False)`` (directory
symlinks are never descended, so link loops cannot hang) written with ``os.scandir`` so that symlinks can be
classified. The official FALCO code globs one extension per folder; this module instead returns EVERY regular
file, so that a stray ``notes.txt`` or a corrupt JPEG is reported as rejected rather than silently dropped.

Rules:
- Results are sorted by ``relpath`` (POSIX, relative to the root, names kept exactly as on disk).
- Hidden files and folders (name starting with ".") are skipped, as are sockets, FIFOs and devices.
- A symlink (to a file or a folder) that resolves outside the root is not read and comes back with
  ``skip_reason="outside_input"``: anonymising a dataset must never pull in files from elsewhere. A broken one is
  ``"unreadable"`` wherever it points (`ScannedFile.skip_detail` says which and why).
- A file symlink inside the root is read like a file; a folder symlink inside the root is not descended
  (its files are reached through their real path).
- Broken links, link loops, files or folders we may not read, and FIFOs, sockets and devices (reading a FIFO would
  block the run) come back with ``skip_reason="unreadable"``.
- A name that is not UTF-8 text (bytes from an old Latin-1 archive) is ``"bad_name"``, its relpath shown with
  ``\\xNN`` escapes: no table, manifest or parquet file can hold the name itself.
- ``duplicate_of`` names the first readable file (in sorted order) with the same bytes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from anon_core.hashing import sha256_file

__all__ = ["ScannedFile", "output_relpath", "printable", "scan_folder"]



@dataclass(frozen=True)
class ScannedFile:
    """One entry of an input folder. Read ``path`` only when ``skip_reason`` is None."""

    path: Path                 # absolute (the link itself for symlinks; not resolved)
    relpath: str               # POSIX path relative to the root, as on disk (spaces, non-ASCII kept)
    sha256: str | None         # hex digest of the bytes; None when the file was not or could not be read
    duplicate_of: str | None   # relpath of the first file (sorted order) with the same bytes, else None
    skip_reason: str | None    # "outside_input" | "unreadable" | "bad_name"; None when the file can be processed

    def named(self, text: str) -> str:
        """`text` (a rejection's detail) naming the file by its relpath, as the manifest's other notes do."""
        return text.replace(str(self.path), self.relpath)

    def skip_detail(self) -> str:
        """Why a file with a `skip_reason` is not read, and what to do, for its manifest row."""
        if self.skip_reason == "bad_name":
            return (f"{self.relpath}: its name is not UTF-8 text (shown here with \\x escapes), so no manifest could "
                    "name it: not read; rename it (e.g. `convmv -f latin1 -t utf8`) to anonymize it")
        target = _link_target(self.path)
        if self.skip_reason == "outside_input":
            return (f"{self.relpath}: a link to {target}, outside the input folder: not read (files from elsewhere "
                    "are never pulled in; copy the file into the input folder to anonymize it)")
        if target is not None and not os.path.exists(self.path):
            return f"{self.relpath}: a broken link (to {target}, which does not exist, or a link loop): not read"
        return (f"{self.relpath}: not read: it cannot be opened or listed (check its permissions), or it is a FIFO, "
                "socket or device")


def printable(text: str) -> str:
    """`text` as UTF-8 can hold it: a name's undecodable bytes (Python's surrogate escapes) as `\\xNN`."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _link_target(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # not a link (any more)
        return None


def _is_inside(target: str, root_real: str) -> bool:
    return target == root_real or target.startswith(root_real.rstrip(os.sep) + os.sep)


def scan_folder(root: Path, extensions: frozenset[str] | None = None, digests: bool = True) -> list[ScannedFile]:
    """List every regular file under ``root`` recursively, sorted by relpath (see the module rules).

    ``extensions`` (e.g. ``IMAGE_EXTENSIONS``), when given, keeps only names whose suffix matches
    case-insensitively; by default nothing is filtered, so non-images can be reported as rejected.
    ``digests=False`` lists the names alone (no file is read: no sha256, no duplicate found).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input folder {root} does not exist; pass the folder that holds your images")
    if not root.is_dir():
        raise NotADirectoryError(f"input path {root} is a file; pass the folder that holds your images")
    root_abs = Path(os.path.abspath(root))
    root_real = os.path.realpath(root)
    wanted = None if extensions is None else frozenset(ext.lower() for ext in extensions)

    entries: list[tuple[str, Path, str | None]] = []  # (relpath, absolute path, skip_reason)

    def keep(name: str) -> bool:
        return wanted is None or os.path.splitext(name)[1].lower() in wanted

    def walk(folder: Path, rel_parts: tuple[str, ...]) -> None:
        try:
            with os.scandir(folder) as iterator:
                children = sorted(iterator, key=lambda entry: entry.name)
        except OSError as exc:
            if not rel_parts:
                raise OSError(f"cannot list input folder {root}: {exc.strerror or exc}") from exc
            entries.append(("/".join(rel_parts), folder, "unreadable"))  # a sub-folder we may not list
            return
        for child in children:
            if child.name.startswith("."):
                continue
            parts = (*rel_parts, child.name)
            relpath = "/".join(parts)
            child_path = folder / child.name
            if printable(relpath) != relpath:
                if child.is_dir(follow_symlinks=False):
                    walk(child_path, parts)
                elif keep(child.name):
                    entries.append((printable(relpath), child_path, "bad_name"))
                continue
            try:
                if child.is_symlink():
                    try:
                        mode = os.stat(child_path).st_mode  # follows the link; ELOOP / ENOENT if broken
                    except OSError:
                        if keep(child.name):
                            entries.append((relpath, child_path, "unreadable"))
                        continue
                    if not _is_inside(os.path.realpath(child_path), root_real):
                        if keep(child.name):
                            entries.append((relpath, child_path, "outside_input"))
                        continue
                    if not stat.S_ISDIR(mode) and keep(child.name):  # a link to a FIFO, socket or device: not read
                        entries.append((relpath, child_path, None if stat.S_ISREG(mode) else "unreadable"))
                    continue  # folder links inside the root are reached through their real path
                if child.is_dir(follow_symlinks=False):
                    walk(child_path, parts)
                elif keep(child.name):  # a FIFO, socket or device is listed, not read (a FIFO would block the run)
                    entries.append((relpath, child_path, None if child.is_file(follow_symlinks=False) else "unreadable"))
            except OSError:
                if keep(child.name):
                    entries.append((relpath, child_path, "unreadable"))

    walk(root_abs, ())
    entries.sort(key=lambda item: item[0])

    results: list[ScannedFile] = []
    first_with_hash: dict[str, str] = {}
    for relpath, path, skip_reason in entries:
        digest = None
        duplicate_of = None
        if skip_reason is None and digests:
            try:
                digest = sha256_file(path)
            except OSError:
                skip_reason = "unreadable"
        if digest is not None:
            duplicate_of = first_with_hash.setdefault(digest, relpath)
            if duplicate_of == relpath:
                duplicate_of = None
        results.append(ScannedFile(path, relpath, digest, duplicate_of, skip_reason))
    return results


def output_relpath(relpath: str, suffix: str = ".png") -> str:
    """Output name for an input relpath: same folders and stem, new suffix ("a/b c/x.JPG" -> "a/b c/x.png").

    Different inputs can map to the same output ("x.jpg" and "x.png"); callers must check for collisions.
    """
    pure = PurePosixPath(relpath)
    if pure.is_absolute() or ".." in pure.parts or not pure.name:
        raise ValueError(f"relpath must be a relative file path inside the input folder, got {relpath!r}")
    if not suffix.startswith(".") or "/" in suffix:
        raise ValueError(f"suffix must look like '.png', got {suffix!r}")
    return pure.with_suffix(suffix).as_posix()
