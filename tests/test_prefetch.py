"""Read-ahead of the input files (results in input order, work done ahead of the caller, errors at their item) and
write-behind of the outputs (writes side by side, bounded, none lost, none hidden)."""

import threading

import pytest

from anon_core.prefetch import WriteBehind, read_ahead

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


def test_writes_run_side_by_side_behind_the_caller():
    both_running = threading.Barrier(2, timeout=WAIT)  # broken (an error) unless two writes run at once
    written = []

    def write(i):
        both_running.wait()
        written.append(i)

    with WriteBehind(workers=2) as writer:
        writer.submit(write, 0)
        writer.submit(write, 1)  # one thread would break the barrier, and the exit would raise its error
    assert sorted(written) == [0, 1]  # leaving the block waits for every write


def test_at_most_depth_writes_wait_and_a_submit_beyond_waits_for_the_oldest():
    release = threading.Event()
    started = []

    def write(i):
        started.append(i)
        assert release.wait(WAIT)

    with WriteBehind(workers=1, depth=2) as writer:
        writer.submit(write, 0)
        writer.submit(write, 1)
        blocked = threading.Thread(target=writer.submit, args=(write, 2))
        blocked.start()
        blocked.join(0.5)
        assert blocked.is_alive()  # a third pending write (a third image held in memory) waits
        release.set()
        blocked.join(WAIT)
        assert not blocked.is_alive()
    assert started == [0, 1, 2]


def test_a_failed_write_is_raised_not_lost():
    def write(i):
        if i == 1:
            raise OSError(f"disk full writing {i}")

    with pytest.raises(OSError, match="disk full writing 1"):
        with WriteBehind(workers=2) as writer:
            for i in range(4):
                writer.submit(write, i)
    writer = WriteBehind(workers=1)
    writer.submit(write, 1)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()


def test_leaving_on_an_error_drops_the_writes_not_started():
    gate, first_running = threading.Event(), threading.Event()
    done = []

    def write(i):
        first_running.set()
        assert gate.wait(WAIT)
        done.append(i)

    with pytest.raises(KeyboardInterrupt):
        with WriteBehind(workers=1, depth=8) as writer:
            for i in range(5):
                writer.submit(write, i)
            assert first_running.wait(WAIT)
            threading.Timer(0.2, gate.set).start()
            raise KeyboardInterrupt
    assert done == [0]  # the running write finished, the four waiting ones never started


def test_read_ahead_bounded_by_weight_keeps_one_heavy_item_alone_and_several_light_ones_together():
    weights = {"a": 5, "b": 5, "c": 5, "big": 20, "d": 1}
    started = {name: threading.Event() for name in weights}

    def record(name):
        started[name].set()
        return name

    stream = read_ahead(record, list(weights), workers=4, depth=10, weight=weights.get, budget=10)
    assert next(stream)[0] == "a"
    assert started["b"].wait(WAIT)  # a and b fit the budget together
    assert not started["c"].is_set()  # a third would not, though depth allows it
    assert [next(stream)[0], next(stream)[0]] == ["b", "c"]
    item, future = next(stream)
    assert item == "big" and future.result() == "big"  # heavier than the budget: read alone
    assert not started["d"].is_set()  # nothing beside it while the caller holds it
    assert [i for i, _ in stream] == ["d"]
    with pytest.raises(ValueError, match="both weight and budget"):
        next(read_ahead(record, ["a"], workers=1, depth=2, budget=10))
