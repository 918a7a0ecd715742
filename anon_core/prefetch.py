"""Host I/O beside the networks: ordered read-ahead (decode and align the next images in worker threads while the
GPU optimizes this batch) and write-behind (encode and write the finished images in worker threads while the
GPU goes on).

Results come back in input order whatever order the workers finish in, so a run's outputs do not depend on the
number of workers. Image decoding (Pillow), the alignment's resampling and PNG encoding release the GIL for most
of their work, which is what lets threads run them side by side (PNG at 1024 px: 0.17 s an image on one thread,
1.7x faster on two; one thread alone would hold a GPU that anonymizes 8 images/s to about 6).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


_END = object()  # the end of read_ahead's items


def read_ahead(fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int,
               weight: Callable[[T], int] | None = None, budget: int | None = None
               ) -> Iterator[tuple[T, Future[R]]]:
    """Yield (item, future of fn(item)) in input order, with up to `depth` items submitted (the yielded one
    included) while the caller works; with `weight` (an item's cost in memory, such as a photo's pixels) and
    `budget`, also no more than `budget` of weight, except that one item is always submitted, however heavy.

    `future.result()` returns fn's value or raises its exception, so per-item errors reach the caller at that
    item. Leaving the loop early cancels what has not started and waits for what has.
    """
    if workers < 1 or depth < 1:
        raise ValueError(f"read_ahead needs workers >= 1 and depth >= 1, got {workers} and {depth}")
    if (weight is None) != (budget is None):
        raise ValueError("read_ahead needs both weight and budget, or neither")
    weigh = weight or (lambda item: 0)
    source = iter(items)
    pending: deque[tuple[T, Future[R], int]] = deque()
    held = 0  # weight of the pending items
    upcoming = next(source, _END)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="falco-read") as pool:
        try:
            while pending or upcoming is not _END:
                # the caller is done with the item yielded last: submit what fits beside the pending ones
                while upcoming is not _END and len(pending) < depth and (
                        not pending or budget is None or held + weigh(upcoming) <= budget):
                    cost = weigh(upcoming)
                    pending.append((upcoming, pool.submit(fn, upcoming), cost))
                    held += cost
                    upcoming = next(source, _END)
                item, future, cost = pending.popleft()
                held -= cost
                yield item, future
        finally:
            for _, future, _ in pending:
                future.cancel()


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of `batch_size` rows covering range(n)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def read_parts(images, parts: Iterable, ahead: int = 2) -> Iterator[tuple[object, object]]:
    """(part, images[part]) for each index in `parts` (slices or row arrays), in order. A set that reads or
    computes its images on indexing (anything but an ndarray or tensor) gets up to `ahead` further parts made in
    a thread while the caller works on this one."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported; importing it here costs seconds
    if isinstance(images, np.ndarray) or (torch is not None and isinstance(images, torch.Tensor)):
        for part in parts:
            yield part, images[part]
        return
    for part, batch in read_ahead(images.__getitem__, parts, workers=1, depth=1 + ahead):
        yield part, batch.result()


class WriteBehind:
    """Run writes (encode and write a file) in `workers` threads while the caller goes on.

    At most `depth` writes (default 2 x workers) are pending at once, since each holds its image: a submit beyond
    that waits for the oldest. A failed write raises its exception at a later `submit`, at `wait()` or on leaving
    the with-block; leaving it on an exception cancels the writes not started and waits for the running ones.
    """

    def __init__(self, workers: int, depth: int | None = None):
        if workers < 1:
            raise ValueError(f"WriteBehind needs workers >= 1, got {workers}")
        self.depth = depth if depth is not None else 2 * workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="falco-write")
        self._pending: deque[Future] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        """Wait until every submitted write is done; raises the first failed one's exception."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)
