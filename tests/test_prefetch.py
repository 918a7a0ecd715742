"""Read-ahead of the input files: results in input order, work done ahead of the caller, errors at their item."""

import threading

import pytest

from anon_core.prefetch import read_ahead

WAIT = 30  # seconds; only reached if read-ahead is broken


def test_results_keep_input_order_when_workers_finish_out_of_order():
    last_done = threading.Event()

    def slow_first(i):
        if i == 0:
            assert last_done.wait(WAIT), "item 0 was not read in parallel with item 3"
        if i == 3:
            last_done.set()
        return i * 10

    got = [(item, future.result()) for item, future in read_ahead(slow_first, range(6), workers=4, depth=4)]
    assert got == [(i, i * 10) for i in range(6)]


def test_items_are_read_ahead_while_the_caller_holds_the_current_one():
    started = [threading.Event() for _ in range(6)]

    def record(i):
        started[i].set()
        return i

    stream = read_ahead(record, range(6), workers=2, depth=3)
    item, future = next(stream)
    assert item == 0 and future.result() == 0
    assert started[2].wait(WAIT)  # items 1 and 2 are being read while the caller works on item 0
    assert not started[3].is_set()  # and no further than `depth` ahead
    assert [i for i, _ in stream] == [1, 2, 3, 4, 5]


def test_an_error_surfaces_at_its_own_item():
    def fail_on_two(i):
        if i == 2:
            raise ValueError("bad file 2")
        return i

    outcomes = []
    for item, future in read_ahead(fail_on_two, range(4), workers=2, depth=2):
        try:
            outcomes.append(future.result())
        except ValueError as err:
            outcomes.append(str(err))
    assert outcomes == [0, 1, "bad file 2", 3]
    with pytest.raises(ValueError, match="workers"):
        next(read_ahead(fail_on_two, range(4), workers=0, depth=2))
