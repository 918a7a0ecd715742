"""Progress reporting for long loops: tqdm on stderr, switched off by the caller when not wanted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], desc: str, unit: str = "it", enable: bool = True, total: int | None = None) -> tqdm:
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=not enable, dynamic_ncols=True, leave=False)
