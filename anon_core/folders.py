"""The folders a command reads and writes: they may not contain one another, and one writer at a time.

- `check_separate`: the input, output and storage trees of a command, after resolving symlinks, may not be the
  same or inside one another (an output inside the input is read back as new faces; an input inside the output is
  overwritten). One rule for every command, checked before anything is written.
- `exclusive`: a lock on a folder (`<folder>/.falco.lock`) held for a whole command, so a second `falco anonymize`
  into the same output folder, or a second `falco pipeline` on the same storage, is refused with one line naming
  the holder (PID, host, start time). The lock is the kernel's (`flock`): it is released when its process ends,
  however it ends, so a crash never leaves a stale lock; the holder's details in the file are only a message.
- `previous_outputs` / `remove_outputs`: a run into an output folder that holds an earlier run's results removes
  the images of that run which it will not write again (an input since removed or now rejected, a photo-mode
  output after an aligned run), so `images/` always matches `manifest.csv`. Only files that the earlier manifest
  names as outputs, inside `images/`, are removed; anything else in the folder is left alone.
- `TakeOver`: when that happens. The earlier run's folder becomes this run's (its journal, the removals above, the
  new run's manifest) only just before this run writes its first output or journal entry, so a run that fails
  before (building the pool, pairing, an out-of-memory first batch, every input rejected) leaves an earlier,
  finished run whole, evaluable and resumable. A file already where this run writes an output, which no earlier
  manifest names (a user's own `images/x.png`), is refused before anything is written (`check_not_foreign`).
- `MANIFEST_EVERY_S` / `check_finished`: a run's manifest is valid at every moment: rows not done yet say
  `pending` (with the output name they will have, so a stopped run's images are never lost track of), and
  `falco evaluate` refuses a run that still has such rows.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from anon_core.atomic import remove_orphaned_temporaries
from anon_core.errors import FalcoError
from anon_core.journal import FOLDER as JOURNAL_FOLDER

LOCK_FILE = ".falco.lock"
PIPELINE_STORAGE_MARK = ".falco_instance.json"  # in a `falco pipeline` storage's root (orchestration.driver)
# The manifest is rewritten as work finishes, at most this often: each rewrite is the whole table (~3 MB at
# CelebA-HQ's 30,000 rows), and a resumed run finishes its journaled batches all at once.
MANIFEST_EVERY_S = 5.0
RUN_RECORD = ("params.json", "latents.npy", "losses.csv")  # what a run writes about itself once it has finished
STALE_RESULTS = ("face_privacy.csv",)  # verdicts on the previous run's images (the CLI writes them anew at the end)


def check_separate(**folders: Path | str | None) -> None:
    """FalcoError when two of the named folders (None: not used) are the same or one is inside the other."""
    named = [(name.replace("_", " "), Path(path).expanduser().resolve()) for name, path in folders.items()
             if path is not None]
    for i, (name, path) in enumerate(named):
        for other, other_path in named[i + 1:]:
            if path == other_path:
                raise FalcoError(f"the {name} and the {other} are the same folder ({path}); give them separate ones")
            for inner, inner_path, outer, outer_path in ((name, path, other, other_path),
                                                         (other, other_path, name, path)):
                if outer_path in inner_path.parents:
                    raise FalcoError(f"the {inner} {inner_path} is inside the {outer} {outer_path}; put it outside "
                                     f"(nothing was written)")


# Columns every manifest falco writes has (aligned and photo mode): a manifest.csv without them is not ours
OUR_MANIFEST_COLUMNS = frozenset({"input", "output", "status", "reason", "detail", "latent_index", "fake_index",
                                  "fake_similarity", "identity_similarity"})


ANONYMIZE_IN_STORAGE = ("the run's files (its journal, aligned real faces) would end up among them, in an anonymized "
                        "dataset folder to be released")


def check_outside_pipeline_storage(path: Path, harm: str = ANONYMIZE_IN_STORAGE, what: str = "an output folder") -> None:
    """FalcoError when `path`, which a user's command writes (`what`), is inside the storage of a `falco pipeline`;
    `harm` says what would go wrong there. The pipeline's own assets write there on purpose, not through this."""
    path = Path(path)
    folder = pipeline_storage_of(path)
    if folder is not None:
        raise FalcoError(f"{path} is inside the storage of a `falco pipeline` ({folder}), whose folders hold the "
                         f"pipeline's own values: {harm}; give {what} outside it (nothing was written)")


def pipeline_storage_of(path: Path) -> Path | None:
    """The root of the `falco pipeline` storage that `path` is in (or is), None when it is in none."""
    path = Path(path).resolve()
    return next((folder for folder in (path, *path.parents) if (folder / PIPELINE_STORAGE_MARK).is_file()), None)


def check_output_folder(output_dir: Path, input_dir: Path) -> None:
    """Before a run writes into `output_dir`: FalcoError when a folder link inside it leads into (or around) the
    input folder, since the outputs written through it would overwrite the inputs, or when it holds a manifest.csv
    that falco did not write, which the run would overwrite and whose `output` column it would take for its own
    earlier outputs to remove."""
    import pandas as pd

    output_dir, input_dir = Path(output_dir), Path(input_dir).resolve()
    for folder, subfolders, _ in os.walk(output_dir):  # does not follow links: each is checked, not entered
        for name in subfolders:
            link = Path(folder) / name
            if not link.is_symlink():
                continue
            target = link.resolve()
            if target == input_dir or input_dir in target.parents or target in input_dir.parents:
                raise FalcoError(f"{link} is a link to {target}, in the input folder {input_dir}: the outputs written "
                                 "through it would overwrite the inputs; remove the link (nothing was written)")
    manifest = output_dir / "manifest.csv"
    if (manifest.exists() or manifest.is_symlink()) and not manifest.is_dir():  # a folder there: atomic's message
        columns = set()
        if manifest.is_file():  # not a FIFO, whose read would block
            try:
                columns = set(pd.read_csv(manifest, nrows=0).columns)
            except (OSError, ValueError):
                pass
        if not OUR_MANIFEST_COLUMNS <= columns:
            raise FalcoError(f"{manifest} was not written by falco, and a run into {output_dir} would overwrite it; "
                             "give an output folder of its own (new, empty, or an earlier falco anonymize output), "
                             "or move that file away (nothing was written)")
    else:  # no manifest: nothing in the folder is an earlier run's, so what a run writes beside it must not be there
        theirs = [name for name in (*RUN_RECORD, *STALE_RESULTS)
                  if (output_dir / name).exists() or (output_dir / name).is_symlink()]
        if theirs:
            journal = " (a falco journal is there: was its manifest.csv removed? put it back to resume)" \
                if (output_dir / JOURNAL_FOLDER).is_dir() else ""
            raise FalcoError(f"{output_dir} holds {', '.join(theirs)} but no manifest.csv of falco's{journal}: a run "
                             "would overwrite or remove them; give an output folder of its own (new, empty, or an "
                             "earlier falco anonymize output), or move them away (nothing was written)")


@contextmanager
def exclusive(folder: Path, what: str, orphans_older_than_s: float = 0.0) -> Iterator[None]:
    """Hold the lock of `folder` (created if needed) while the block runs; FalcoError if another process holds it.
    `what` names the folder's role in the message ("output folder", "storage"). Once held, the temporary files that
    killed writers left in it are removed (atomic.remove_orphaned_temporaries; `orphans_older_than_s` where other
    machines write into it too)."""
    folder = Path(folder)
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FalcoError(f"the {what} {folder} is a file (or inside one) where a folder is needed; give a folder "
                         "path") from None
    path = folder / LOCK_FILE
    lock_made = not path.exists()
    handle = _open_current(path, fcntl.LOCK_EX, "a+")
    if handle is None:
        raise FalcoError(f"the {what} {folder} is in use by {_holder(path)}; wait for it to finish, or use another "
                         f"{what}")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                 "command": _command_line()}))
        handle.flush()
        remove_orphaned_temporaries(folder, orphans_older_than_s)
        yield
    except BaseException:
        if lock_made:  # a failed command leaves no lock file it made, and a command that failed before writing no
            path.unlink(missing_ok=True)  # folder it made (the lock is still held: no other process took the file)
            if made and not os.listdir(folder):
                folder.rmdir()
        raise
    finally:
        handle.close()  # releases the lock


@contextmanager
def reading(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder`'s lock shared while the block reads it: a writer of it (`exclusive`) is refused meanwhile, other
    readers are not; FalcoError naming the writer if one holds it. Nothing to hold where the folder has no lock file
    (no falco command ever wrote it, or it is not a folder: the reader's own checks say so)."""
    path = Path(folder) / LOCK_FILE
    try:
        handle = _open_current(path, fcntl.LOCK_SH)
    except OSError:
        yield
        return
    if handle is None:
        raise FalcoError(f"the {what} {folder} is being written by {_holder(path)}; wait for it to finish")
    with handle:
        yield


@contextmanager
def one_at_a_time(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if needed) while the block runs, WAITING for another
    process that holds it: for a short check-then-write that two processes must not interleave."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _open_current(path: Path, mode: int, how: str = "r"):
    """The lock file `path` opened and locked in `mode` (fcntl.LOCK_EX or LOCK_SH); None where another process holds
    it. A failed command removes the lock file it made (`exclusive`): one opened just before that is locked here only
    if it is still the file at `path`, else the new one is opened, so two writers never hold two files."""
    while True:
        handle = open(path, how)
        if not _lock(handle, mode):
            handle.close()
            return None
        try:
            current = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return handle
        handle.close()


def _lock(handle, mode: int) -> bool:
    """Take the lock of the open file `handle` in `mode` (fcntl.LOCK_EX or LOCK_SH) without waiting; False where
    another process holds it in a mode that excludes this one."""
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _command_line(limit: int = 300) -> str:
    """This process's command as a user would type it again (`falco anonymize in out --margin 0.5`), cut at
    `limit` characters: what the message of a command refused by its lock names."""
    import shlex

    words = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    text = shlex.join(words)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _holder(path: Path) -> str:
    """Who holds the lock of the file `path`, as it names them (`exclusive` writes it); readers only (`reading`)
    when a shared lock is still free."""
    try:
        with open(path) as handle:
            if _lock(handle, fcntl.LOCK_SH):
                return "a command reading it (`falco evaluate`)"
            text = handle.read()
    except OSError:
        return "another process"
    try:
        info = json.loads(text)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"`{info.get('command', '?')}` (PID {info['pid']} on {info['host']}, since {started})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def previous_outputs(output_dir: Path) -> set[str]:
    """The outputs (relative to `images/`) that the manifest of the run last finished in `output_dir` lists; empty
    when there is none or it cannot be read."""
    manifest = _our_manifest(output_dir)
    return set() if manifest is None else set(manifest["output"]) - {""}


def previous_inputs(output_dir: Path, status: str) -> set[str]:
    """The inputs that the manifest in `output_dir` lists with `status` (e.g. rejected); empty as above."""
    manifest = _our_manifest(output_dir)
    return set() if manifest is None else set(manifest.loc[manifest["status"] == status, "input"])


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` holds a run's manifest.csv falco wrote, or its journal (a stopped first run)."""
    return _our_manifest(folder) is not None or (Path(folder) / JOURNAL_FOLDER).is_dir()


def _our_manifest(output_dir: Path):
    """The manifest.csv falco wrote in `output_dir` (a DataFrame of strings), or None: none, not a regular file (a
    FIFO would block the read), unreadable, or not ours."""
    import pandas as pd

    path = Path(output_dir) / "manifest.csv"
    if not path.is_file():
        return None
    try:
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError):
        return None
    return manifest if OUR_MANIFEST_COLUMNS <= set(manifest.columns) else None


def missing_outputs(output_dir: Path, names) -> list[str]:
    """The outputs among `names` (relative to `output_dir/images`) that are not there as files."""
    images = Path(output_dir) / "images"
    return [name for name in names if not (images / name).is_file()]


def changed_outputs(output_dir: Path, names, digests=None) -> list[str]:
    """The outputs among `names` that are not there as files or, where `digests` (the sha256 each was written
    with, hex) are given, whose bytes are no longer those: damaged, or replaced by hand."""
    from anon_core.hashing import sha256_file

    missing = missing_outputs(output_dir, names)
    if digests is None:
        return missing
    images, gone = Path(output_dir) / "images", set(missing)
    return [name for name, digest in zip(names, digests) if name in gone or sha256_file(images / name) != digest]


def remove_outputs(output_dir: Path, names: set[str]) -> list[str]:
    """Remove `names` (outputs relative to `output_dir/images`) and STALE_RESULTS from `output_dir`, and the
    folders under `images/` that this leaves empty. A name that leads out of `images/` or is not a plain file is
    left alone. Returns what was removed, relative to `output_dir`."""
    output_dir = Path(output_dir).resolve()
    images = output_dir / "images"
    removed = []
    for name in sorted(names):
        path = images / name
        if path.is_symlink() or not path.is_file() or images not in path.resolve().parents:
            continue
        path.unlink()
        removed.append(str(path.relative_to(output_dir)))
        for folder in path.parents:  # the folders this emptied, up to images/
            if folder == images or any(folder.iterdir()):
                break
            folder.rmdir()
    for name in STALE_RESULTS:
        if (output_dir / name).is_file():
            (output_dir / name).unlink()
            removed.append(name)
    return removed


def check_not_foreign(output_dir: Path, names: set[str]) -> None:
    """FalcoError when a file (or link) is already where one of `names` (outputs relative to `images/` that no falco
    manifest in `output_dir` names) would be written: it is someone's own file, which the run would overwrite."""
    images = Path(output_dir) / "images"
    there = sorted(name for name in names if (images / name).is_symlink() or (images / name).exists())
    if there and not (Path(output_dir) / "manifest.csv").exists() and (Path(output_dir) / JOURNAL_FOLDER).is_dir():
        raise FalcoError(f"{output_dir} holds falco's journal but no manifest.csv (removed?), and without it falco cannot "
                         f"tell its images from yours ({images / there[0]} is where an output goes): put manifest.csv "
                         "back to resume, or move images/ away to start over (nothing was written)")
    if there:
        more = f" and {len(there) - 1} more" if len(there) > 1 else ""
        raise FalcoError(f"{images / there[0]}{more}: falco did not write {'these' if more else 'this'} (no manifest "
                         f"of {output_dir} names {'them' if more else 'it'}), and this run would overwrite "
                         f"{'them' if more else 'it'} with its outputs of the same name; move {'them' if more else 'it'} "
                         "away or give an output folder of its own (nothing was written)")


class TakeOver:
    """Call before each write of the run (the first call does the work; the later ones nothing): start `journal`
    (the run's `anon_core.journal.Journal`, made with start=False), remove the outputs of the earlier run that this
    run will not write (its manifest's outputs minus `keep`) and its RUN_RECORD (a run stopped after this would
    otherwise leave the earlier run's params.json describing the folder), and `write_manifest` (this run's, every
    row pending). Not thread-safe: call it from one thread at a time."""

    def __init__(self, output_dir: Path, journal, keep: set[str], write_manifest: Callable[[], None],
                 also_earlier: set[str] = frozenset()) -> None:
        self.output_dir, self.journal, self.keep, self.write_manifest = Path(output_dir), journal, keep, write_manifest
        # the earlier run's outputs, as its manifest names them, and `also_earlier`: names the caller knows an earlier
        # run wrote although that manifest does not name them
        self.previous = previous_outputs(self.output_dir) | set(also_earlier)
        self.done = False
        check_not_foreign(self.output_dir, keep - self.previous)

    def __call__(self) -> None:
        if not self.done:
            self.journal.start()
            remove_outputs(self.output_dir, self.previous - self.keep)  # before its manifest is replaced
            for name in RUN_RECORD:
                (self.output_dir / name).unlink(missing_ok=True)
            self.write_manifest()
            self.done = True


def check_finished(output_dir: Path, manifest) -> None:
    """FalcoError when the manifest (a DataFrame of strings) still has `pending` rows: its run was stopped or is
    still going, so `images/` does not hold what it says."""
    pending = int((manifest["status"] == "pending").sum()) if "status" in manifest.columns else 0
    if pending:
        raise FalcoError(f"{Path(output_dir) / 'manifest.csv'}: the run into {output_dir} has not finished ({pending} "
                         "row(s) still pending; it was stopped or is still going): run the same `falco anonymize` "
                         "command again to finish it, then evaluate")
