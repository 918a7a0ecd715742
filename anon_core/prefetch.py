"""Ordered read-ahead: run a function over the next items of a sequence in worker threads while the caller works
on the current one, so decoding and aligning images overlaps the GPU's optimization of the previous batch.

Results come back in input order whatever order the workers finish in, so a run's outputs do not depend on the
number of workers. Image decoding (Pillow), the alignment's resampling and PNG encoding release the GIL for most
of their work, which is what lets threads run them side by side.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int) -> Iterator[tuple[T, Future[R]]]:
    """Yield (item, future of fn(item)) in input order, with up to `depth` items submitted (the yielded one
    included) while the caller works.

    `future.result()` returns fn's value or raises its exception, so per-item errors reach the caller at that
    item. Leaving the loop early cancels what has not started and waits for what has.
    """
    if workers < 1 or depth < 1:
        raise ValueError(f"read_ahead needs workers >= 1 and depth >= 1, got {workers} and {depth}")
    source = iter(items)
    pending: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="falco-read") as pool:
        try:
            for item in source:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= depth:
                    yield pending.popleft()
            while pending:
                yield pending.popleft()
        finally:
            for _, future in pending:
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
