"""The one way this project writes a file: to a hidden temporary name beside it, then `os.replace`, so a reader
never sees half a file and a process killed mid-write leaves at most a hidden `.<name>.<pid>.<random>.tmp`.

The temporary name is unique per writer (process id + random), so two processes writing the same file never mix
their bytes: the last rename wins whole.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from anon_core.errors import FalcoError


@contextmanager
def atomic_path(path: Path, private: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; on a clean exit it is fsynced and renamed to `path`, on an
    error it is removed. Creates the parent folders. `private`: the file is readable by its owner only (0600, its
    new folders 0700), for real faces."""
    path = Path(path)
    tmp = _temporary_beside(path, private)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _naming(err, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_files_atomic(files: Mapping[Path, bytes]) -> None:
    """Write several files as one (a report's pages, tables and figures): every file to its temporary first, fsynced,
    then all renamed in one go. A call stopped on the way (Ctrl-C, a full disk) leaves each previous file as it was,
    not some old and some new; only a kill in the instant of the renames can."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            tmp = _temporary_beside(Path(path), private=False)
            written.append((tmp, Path(path)))
            tmp.write_bytes(data)
            _fsync(tmp)
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException as err:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and written:
            raise _naming(err, written[-1][1])
        raise


def _naming(err: OSError, path: Path) -> OSError:
    """`err`, naming `path` where it names no file: a write() that fails (a full disk, a quota) says only "No space
    left on device", and the user cannot tell which disk."""
    if err.filename is not None or err.errno is None:
        return err
    named = type(err)(err.errno, err.strerror, str(path))
    named.__cause__ = err
    return named


def _temporary_beside(path: Path, private: bool) -> Path:
    """A new, empty, hidden temporary file beside `path` (its folders created), for `path`'s new bytes."""
    if private:
        _private_parents(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir())
        raise FalcoError(f"cannot write {path}: {blocker} is a file where a folder is needed (left by an earlier "
                         "run?); move it away and run again") from None
    if path.is_dir() and not path.is_symlink():
        raise FalcoError(f"cannot write {path}: a folder is there where the file goes (left by an earlier run?); move "
                         "it away and run again")
    # Hidden (scan_folder skips it), <= 255 bytes, and created with O_EXCL so it never clobbers; mode 0o666 lets
    # the umask decide permissions as for any ordinary file (tempfile.mkstemp would leave 0o600).
    tmp = path.parent / f".{path.name[:50]}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666))
    return tmp


def _fsync(path: Path) -> None:
    with open(path, "rb+") as written:
        os.fsync(written.fileno())


_TEMPORARY = re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp")  # what atomic_path names its temporaries


def remove_orphaned_temporaries(folder: Path, min_age_s: float = 0.0) -> list[Path]:
    """Remove the temporaries under `folder` that killed writers left (`atomic_path`'s names; links to folders are
    not followed): those whose process is not running on this machine and that nobody wrote to for `min_age_s`
    (where processes of other machines write too, their process ids say nothing). Returns what was removed."""
    now, removed = time.time(), []
    for root, _, files in os.walk(folder):
        for name in files:
            found = _TEMPORARY.fullmatch(name)
            if found is None or _running(int(found.group(1))):
                continue
            path = Path(root) / name
            try:
                if now - path.stat().st_mtime >= min_age_s:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # renamed or removed meanwhile
                continue
    return removed


def being_written(name: str) -> bool:
    """Whether a file named `name` is the temporary of a write still going on (its process running here)."""
    found = _TEMPORARY.fullmatch(name)
    return found is not None and _running(int(found.group(1)))


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_bytes_atomic(path: Path, data: bytes, private: bool = False) -> None:
    """Write `data` to `path` atomically (see the module docstring); `private` as for `atomic_path`."""
    with atomic_path(path, private) as tmp:
        tmp.write_bytes(data)


def _private_parents(folder: Path) -> None:
    """Create `folder` and its missing parents with mode 0700."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(mode=0o700, exist_ok=True)
