"""A step's process ends when the falco process that started it dies.

Dagster's multiprocess executor runs each step in a process of its own (`multiprocessing`, spawn). Killed alone
(`kill -9`, the kernel's out-of-memory killer), the falco process left that step running, reparented and unlocked:
it went on writing into the storage beside the re-run (a 50-step result could land after a re-run with 10 steps
had started), closed its MLflow runs as FINISHED for a run Dagster had marked failed, and then hung for good waiting
on its dead parent. Each step process now watches its parent and kills itself the moment the parent is gone; its
temporary files are removed by the next run, as after any kill.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

_started = False


def end_with_parent() -> None:
    """In a process started by `multiprocessing` (a step of the multiprocess executor): a daemon thread that waits
    for the parent's end and then SIGKILLs this process. Idempotent; nothing in a process started otherwise."""
    global _started
    parent = multiprocessing.parent_process()
    if parent is None or _started:
        return
    _started = True

    def watch() -> None:
        parent.join()  # returns once the parent's sentinel closes: the parent has exited, whatever killed it
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="falco-end-with-parent", daemon=True).start()
