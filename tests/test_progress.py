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
        # where it ended (before: 90% was its last word, though the loop ran to the end)
        "optimize: 100/100 steps (100%), 01:40 elapsed, batch 2/2",
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
        with pytest.raises(FalcoError, match=f"FALCO_PROGRESS_EVERY_S='{bad}': not a number of seconds, 0 or more"):
            progress_bar(range(3), desc="x", enable=lines.append)
    assert progress_bar(range(3), desc="x", enable=False).disable  # no log, no bar: the variable is not read
    for unset in ("", " "):  # set to nothing: as if unset
        monkeypatch.setenv(EVERY_ENV, unset)
        assert log_every_s() == 30.0


def test_a_bad_interval_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    from orchestration.cli import main

    monkeypatch.setenv(EVERY_ENV, "every minute")
    out = tmp_path / "out"
    assert main(["anonymize", str(tmp_path), str(out), "--profile", "tiny"]) == 2
    assert capsys.readouterr().err == ("falco: error: FALCO_PROGRESS_EVERY_S='every minute': not a number of seconds, "
                                       "0 or more (how often a long step logs its progress; unset it for 30)\n")
    assert not out.exists()


def test_without_a_terminal_a_bar_is_plain_lines_on_stderr(clock, monkeypatch, capsys):
    """Piped or redirected, a bar's redraws (carriage returns, cursor moves) would fill the file: lines instead."""
    monkeypatch.delenv(EVERY_ENV, raising=False)
    for _ in progress_bar(range(4), desc="anonymize", unit="image", enable=True):
        clock.now += 20.0
    assert capsys.readouterr().err == ("anonymize: 2/4 images (50%), 00:40 elapsed, about 00:40 left\n"
                                       "anonymize: 4/4 images (100%), 01:20 elapsed\n")


def test_closing_the_bars_leaves_none_drawn(monkeypatch):
    """A command stopped or failed in the middle of nested bars closes them all, innermost first, so its last line
    is not written over them."""
    import io

    from tqdm.std import tqdm

    from anon_core.progress import close_bars

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    outer = progress_bar(None, desc="anonymize", unit="image", total=12)
    inner = progress_bar(None, desc="optimize", unit="step", total=200)
    inner.update(73)
    assert {bar.pos for bar in (outer, inner)} == {0, 1} and not outer.disable
    close_bars()
    assert not tqdm._instances and outer.disable and inner.disable
    assert terminal.getvalue().endswith("\r")  # at the start of a line


def test_a_bar_counting_pixels_shows_them_with_a_prefix(clock, monkeypatch):
    monkeypatch.delenv(EVERY_ENV, raising=False)
    lines: list[str] = []
    bar = progress_bar(None, desc="read", unit="pixel", total=24_480_000, unit_scale=True, enable=lines.append)
    clock.now += 40.0
    bar.set_postfix_str("1/3 photos", refresh=False)
    bar.update(24_000_000)
    bar.close()
    assert lines == ["read: 24.0M/24.5M pixels (98%), 00:40 elapsed, about 00:00 left, 1/3 photos"]
