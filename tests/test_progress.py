"""Progress of long loops in a log (a Dagster asset's): a line now and then, with how far it got and the time left."""

from __future__ import annotations

import pytest

from anon_core.errors import FalcoError
from anon_core.progress import EVERY_ENV, log_every_s, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("tqdm.std.time", clock)  # tqdm reads the time through this name
    return clock


def test_a_log_gets_a_line_every_interval_with_how_far_and_the_time_left(clock, monkeypatch):
    monkeypatch.delenv(EVERY_ENV, raising=False)
    lines: list[str] = []
    bar = progress_bar(None, desc="optimize", unit="step", total=100, enable=lines.append)
    for step in range(100):
        clock.now += 1.0  # a step takes a second
        bar.set_postfix_str(f"batch {step // 50 + 1}/2", refresh=False)
        bar.update()
    bar.close()
    assert lines == [
        "optimize: 30/100 steps (30%), 00:30 elapsed, about 01:10 left, batch 1/2",
        "optimize: 60/100 steps (60%), 01:00 elapsed, about 00:40 left, batch 2/2",
        "optimize: 90/100 steps (90%), 01:30 elapsed, about 00:10 left, batch 2/2",
    ]


def test_a_slow_stretch_is_reported_by_the_ticks_inside_it_and_a_short_loop_logs_nothing(clock, monkeypatch):
    monkeypatch.delenv(EVERY_ENV, raising=False)
    lines: list[str] = []
    for _ in progress_bar(range(10), desc="fake pool", unit="batch", enable=lines.append):
        clock.now += 2.9  # 29 s in all: less than the interval
    assert lines == []

    faces = progress_bar(None, desc="anonymize", unit="face", enable=lines.append)  # no total: a count
    faces.update(8)
    clock.now += 45.0
    faces.update(0)  # a tick with nothing finished: the line still comes, once the interval has passed
    faces.update(0)
    assert lines == ["anonymize: 8 faces, 00:45 elapsed"]


def test_the_interval_comes_from_the_environment_and_a_bad_value_is_named(clock, monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "5")
    assert log_every_s() == 5.0
    lines: list[str] = []
    for _ in progress_bar(range(4), desc="read the real images", unit="batch", enable=lines.append):
        clock.now += 3.0
    assert lines == ["read the real images: 2/4 batches (50%), 00:06 elapsed, about 00:06 left",
                     "read the real images: 4/4 batches (100%), 00:12 elapsed"]
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv(EVERY_ENV, bad)
        with pytest.raises(FalcoError, match=f"FALCO_PROGRESS_EVERY_S='{bad}': not a number of seconds >= 0"):
            progress_bar(range(3), desc="x", enable=lines.append)
    assert progress_bar(range(3), desc="x", enable=False).disable  # no log, no bar: the variable is not read
