"""Dagster's mirrors of a step's output, kept out of the terminal's Ctrl-C.

Dagster copies each step's captured stdout and stderr back to the terminal through a `tail -F` process and a Python
`watch_orphans.py` process that it starts per step (`dagster._core.execution.compute_logs`). Started in the terminal's
foreground process group, they get its Ctrl-C too, and each watcher prints a KeyboardInterrupt traceback beneath
falco's one-line "stopped" message. Started in a process group of their own they never see it; they still end with
their step (Dagster terminates them), and if the falco process is killed, the watcher sees its parent gone and ends
the tail, as before.
"""

from __future__ import annotations

import functools
import subprocess
import types

_MARK = "_falco_own_process_group"


def start_log_tails_in_their_own_group() -> None:
    """Make Dagster start its log mirrors in a process group of their own, in this process (idempotent). Nothing to
    do where Dagster no longer has that module."""
    try:
        from dagster._core.execution import compute_logs
    except ImportError:
        return
    if not hasattr(compute_logs, "subprocess") or getattr(compute_logs.subprocess, _MARK, False):
        return
    own_group = types.SimpleNamespace(**vars(subprocess))  # the module, with one call changed
    own_group.Popen = functools.partial(subprocess.Popen, process_group=0)
    setattr(own_group, _MARK, True)
    compute_logs.subprocess = own_group
