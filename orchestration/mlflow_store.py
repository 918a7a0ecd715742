"""A SQLite MLflow store that a kill or a concurrent start cannot leave half made.

MLflow creates and migrates a SQLite store on first use, in the file itself: a process killed 1.5-3 s in (while
"Updating database tables") left a half-migrated file, and two processes starting together on a fresh store raced
on the same migrations; every later command then failed inside sqlalchemy. Here the store is created under a file
lock in a temporary file beside it, migrated to the end there, and renamed into place, so the store's file either
does not exist or is complete. A half-made store left by an older version holds no run: it is moved aside (its
name says so) and made again; a store with runs whose schema is behind gets the command that upgrades it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from contextlib import closing
from functools import lru_cache
from pathlib import Path

from anon_core.errors import FalcoError


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` tracking URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@lru_cache(maxsize=None)
def ready_sqlite_store(uri: str) -> None:
    """Make sure the SQLite store of `uri` exists, is complete and keeps a write-ahead log (once per process and URI);
    other URIs pass."""
    path = sqlite_path(uri)
    if path is None:
        return
    if _state(path) != "complete":
        _make(path)
    _write_ahead_log(path)


def _make(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator; the others wait, then find it made
        state = _state(path)
        if state == "complete":
            return
        if state == "behind":
            raise FalcoError(f"the MLflow store {path} holds runs but its schema is older than this MLflow's: "
                             f"upgrade it with `mlflow db upgrade sqlite:///{path}` (back it up first)")
        if state == "half-made":
            aside = path.with_name(f"{path.name}.half-made-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            print(f"falco: {path} was a half-made MLflow store without runs (a process killed while creating it); "
                  f"moved it to {aside.name} and made a new one")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            from mlflow import MlflowClient

            # Creates and migrates the store. MLflow keeps an engine on the temporary name; on POSIX the rename
            # leaves it pointing at the renamed file, and nothing uses that URI again.
            MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _write_ahead_log(path: Path) -> None:
    """Put the store in WAL mode (kept in the file): readers never block a writer. Ctrl-C among the rows of an MLflow
    query leaves that read open in the process, and in SQLite's default mode every later write (marking the stopped
    run KILLED) waited 20 s for its lock and failed; steps writing their runs side by side wait less too. Set after
    the rename: the log file is named after the database. Busy (another process in a write): left to a later one."""
    try:
        with closing(sqlite3.connect(path, timeout=5)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:
        pass


def _state(path: Path) -> str:
    """"missing", "complete", "half-made" (no run in it: safe to make again) or "behind" (runs, older schema)."""
    if not path.exists():
        return "missing"
    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = db.execute("SELECT version_num FROM alembic_version").fetchone() \
                if "alembic_version" in tables else None
            runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError as err:
        raise FalcoError(f"{path} is not a readable MLflow store ({err}); move it away and run again") from None
    if version is not None and version[0] == _get_latest_schema_revision():
        return "complete"
    return "behind" if runs else "half-made"
