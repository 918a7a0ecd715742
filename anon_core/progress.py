"""Progress reporting for long loops: a tqdm bar on stderr, a line in a log now and then, or nothing.

`Progress` is what the long stages take: True draws a bar (the `falco` commands; when stderr is not a terminal, a
file or a pipe, plain lines on it instead), False shows nothing, and a function (a Dagster asset's
`context.log.info`) gets one line at most every `log_every_s()` seconds (30, or $FALCO_PROGRESS_EVERY_S), for logs
that show no live bar. Nothing is logged by a loop that ends sooner.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm.auto import tqdm
from tqdm.std import tqdm as plain_tqdm

from anon_core.errors import FalcoError

T = TypeVar("T")

Progress = bool | Callable[[str], None]

LOG_EVERY_S = 30.0
EVERY_ENV = "FALCO_PROGRESS_EVERY_S"


def log_every_s() -> float:
    """Seconds between two progress lines in a log: $FALCO_PROGRESS_EVERY_S, else LOG_EVERY_S."""
    value = os.environ.get(EVERY_ENV, "").strip()
    if not value:  # unset, or set to nothing
        return LOG_EVERY_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise FalcoError(f"{EVERY_ENV}={value!r}: not a number of seconds, 0 or more (how often a long step logs "
                         f"its progress; unset it for {LOG_EVERY_S:g})")
    return seconds


def progress_bar(iterable: Iterable[T] | None, desc: str, unit: str = "it", enable: Progress = True,
                 total: int | None = None, unit_scale: bool = False) -> tqdm:
    """`unit_scale`: counts shown with an SI prefix (12.3M), for a bar that counts pixels or bytes."""
    if enable is True and not _on_terminal():  # a bar's redraws would fill a log file with \r and cursor moves
        enable = _print_line
    if callable(enable):
        return _LogLines(iterable, desc=desc, unit=unit, total=total, unit_scale=unit_scale, log=enable,
                         every_s=log_every_s())
    return tqdm(iterable, desc=desc, unit=unit, total=total, unit_scale=unit_scale, disable=not enable,
                dynamic_ncols=True, leave=False)


def close_bars() -> None:
    """Close every bar still drawn, innermost first, leaving the cursor at the start of a cleared line: before the
    message of a command ended early (Ctrl-C, an error), which would otherwise be written over the bars."""
    bars = sorted(plain_tqdm._instances, key=lambda bar: -abs(getattr(bar, "pos", 0)))
    for bar in bars:
        bar.close()
    if bars and _on_terminal():
        sys.stderr.write("\r")
        sys.stderr.flush()


def _on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def _print_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _LogLines(plain_tqdm):
    """A tqdm whose display is one log line (`log(line)`), at most one every `every_s` seconds, the first after
    `every_s`: "optimize: 120/500 steps (24%), 02:00 elapsed, about 06:20 left, batch 3/10" (with `unit_scale`:
    "read: 24.0M/38.9M pixels (62%), ..."). Its time left is the average rate so far applied to what remains."""

    def __init__(self, *args, log: Callable[[str], None], every_s: float, **kwargs):
        self.log = log
        self.logged_n: float | None = None  # the count its last line showed; None before its first
        # miniters=0: every update (update(0) too) may log once `every_s` has passed; tqdm would otherwise learn to
        # skip updates and could stay silent through a slow stretch
        super().__init__(*args, mininterval=every_s, delay=every_s, miniters=0, smoothing=0, leave=False,
                         file=_Nowhere(), **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is None:  # tqdm clears the line with msg="" on close: nothing to log
            self.logged_n = self.n
            self.log(self.line())
        return True

    def close(self) -> None:
        # a bar that logged a line ends on where it got (a last update inside the interval left "99%" as its last word)
        if not self.disable and self.logged_n not in (None, self.n):
            self.display()
        super().close()

    def line(self) -> str:
        n, total = self.n, self.total
        elapsed = self._time() - self.start_t if hasattr(self, "start_t") else 0.0  # 0: tqdm's first display
        units = _plural(self.unit)
        shown = self.format_sizeof if self.unit_scale else str
        text = (f"{self.desc}: {shown(n)}/{shown(total)} {units} ({100 * n / total:.0f}%)" if total
                else f"{self.desc}: {shown(n)} {units}")
        text += f", {self.format_interval(elapsed)} elapsed"
        if total and 0 < n < total:
            text += f", about {self.format_interval(elapsed * (total - n) / n)} left"
        return text + (f", {self.postfix}" if self.postfix else "")


class _Nowhere:
    """tqdm's output stream when its lines go to a log: the cursor moves and clearing it writes are dropped."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")
