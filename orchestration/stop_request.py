"""Whether a stop signal (Ctrl-C, SIGTERM) has reached the command, for code that cannot see its KeyboardInterrupt:
a library that catches it mid-call and raises another error instead (torch's tensor from a list raises "could not
determine the shape of object type ...") makes a stopped Dagster step look like a failed one."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

_checks: list[Callable[[], bool]] = []


def requested() -> bool:
    """Whether a stop signal has come since the command's handlers were put in place (`watching`)."""
    return any(check() for check in _checks)


@contextmanager
def watching(check: Callable[[], bool]) -> Iterator[None]:
    """While the block runs, `requested()` asks `check` too."""
    _checks.append(check)
    try:
        yield
    finally:
        _checks.remove(check)
