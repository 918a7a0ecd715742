"""Per-row results of earlier runs, found again by a key of what decided each row, so that new data re-makes only
the rows it adds: 10 images added to 30,000 are inverted and optimized alone, not the 30,010.

A row's key hashes everything its result is a function of: settings shared by all rows (`context`: the variant's
definition, the weights, the alignment, the code's version) and the row's own inputs (its input file's sha256, its
inversion, its fake's W). The method treats rows independently (`stages.optimize_images`: an image's optimization
does not see the others in its batch), so a row computed earlier beside other rows is the row computed now, and a
shard whose rows moved to other shards, because an image was added before them, finds them wherever they are
stored. Keys are stored with the results (the `key` member of a dict of arrays, or `<stem>.keys.npy` beside an
array), so a result is only ever taken for the inputs it was computed from.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

METHOD_VERSION = 1
"""Bump when a change to the method changes a row's result (an image's inversion, its codes): every key hashes it,
in `falco anonymize`'s journal and in the pipeline's stored values, so no row of an earlier version is taken."""
KEY = "key"  # the member of a stored dict of arrays that holds its rows' keys, in row order
CONTEXT = "key_context"  # and the member holding `context_digest` of the settings its keys were made under


def context_digest(context: Any) -> str:
    """sha256 (hex) of JSON-able settings, keys sorted: what `row_keys` hashes into every key."""
    return hashlib.sha256(json.dumps(context, sort_keys=True, default=str).encode()).hexdigest()


def row_keys(context: Any, *per_row: Sequence[str | bytes | np.ndarray]) -> np.ndarray:
    """One hex key per row: sha256 of `context` (JSON-able, keys sorted) and of the row's entry in each of
    `per_row` (strings, bytes or arrays, hashed with their length so that no two splits of the bytes collide)."""
    base = bytes.fromhex(context_digest(context))
    keys = []
    for parts in zip(*per_row, strict=True):
        digest = hashlib.sha256(base)
        for part in parts:
            data = part.encode() if isinstance(part, str) else np.ascontiguousarray(part).tobytes()
            digest.update(len(data).to_bytes(8, "little") + data)
        keys.append(digest.hexdigest())
    return np.array(keys, dtype="<U64").reshape(len(keys))


def input_ids(sha256s: Iterable[Any]) -> list[str]:
    """Each row's input file sha256, what its image is made from besides the settings; a row without one (an ok
    row always has one) gets an id no other run makes, so nothing is taken for it."""
    import uuid

    return [digest if isinstance(digest, str) and digest else f"unread-{uuid.uuid4().hex}" for digest in sha256s]


UNREADABLE = (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile)  # what a stored file that is torn,
# cut short or not what it should be raises when read


class StoredRows:
    """The rows of stored values (each: a mapping with `KEY` and per-row members along their axis), found by key;
    each value's keys are read once. A value whose keys cannot be read holds none."""

    def __init__(self, stored: Iterable[Mapping[str, np.ndarray]]) -> None:
        self.stored = list(stored)
        self.where: dict[str, tuple[int, int]] = {}  # key -> (value, row): the first value holding it
        for number, value in enumerate(self.stored):
            try:
                keys = np.asarray(value[KEY]).tolist()
            except UNREADABLE:
                continue
            for row, key in enumerate(keys):
                self.where.setdefault(key, (number, row))

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def take(self, keys: np.ndarray, axes: Mapping[str, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(found [N] bool, {name: the found rows' values, in row order along `axes[name]`}). A value that cannot
        be read whole, lacks a member, or holds rows of another shape than the first value read, gives none of its
        rows: they are computed again."""
        by_value: dict[int, tuple[list[int], list[int]]] = {}
        for row, key in enumerate(np.asarray(keys).tolist()):
            if key in self.where:
                number, theirs = self.where[key]
                ours, rows = by_value.setdefault(number, ([], []))
                ours.append(row)
                rows.append(theirs)
        found = np.zeros(len(keys), bool)
        order: list[np.ndarray] = []
        parts: dict[str, list[np.ndarray]] = {name: [] for name in axes}
        for number, (ours, theirs) in sorted(by_value.items()):
            try:
                taken = {name: np.take(np.asarray(self.stored[number][name]), theirs, axis=axis)
                         for name, axis in axes.items()}
            except UNREADABLE:
                continue
            if order and any(_row_shape(taken[n], a) != _row_shape(parts[n][0], a) for n, a in axes.items()):
                continue  # keys hash the settings, so this cannot be the same computation: not trusted
            found[ours] = True
            order.append(np.array(ours))
            for name in axes:
                parts[name].append(taken[name])
        if not order:
            return found, {}
        ranks = np.argsort(np.concatenate(order), kind="stable")
        return found, {name: np.take(np.concatenate(parts[name], axis=axes[name]), ranks, axis=axes[name])
                       for name in axes}


def _row_shape(array: np.ndarray, axis: int) -> tuple[int, ...]:
    return array.shape[:axis] + array.shape[axis + 1:]


def merge_rows(found: np.ndarray, reused: Mapping[str, np.ndarray], computed: Mapping[str, np.ndarray],
               axes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The reused rows (where `found`) and the computed ones (the others, in row order) as one value per name."""
    merged = {}
    for name, axis in axes.items():
        parts = [a for a in (reused.get(name), computed.get(name)) if a is not None]
        shape = list(parts[0].shape)
        shape[axis] = len(found)
        out = np.empty(shape, parts[0].dtype)
        index = [slice(None)] * len(shape)
        if name in reused:
            index[axis] = np.flatnonzero(found)
            out[tuple(index)] = reused[name]
        if name in computed:
            index[axis] = np.flatnonzero(~found)
            out[tuple(index)] = computed[name]
        merged[name] = out
    return merged


def dropped_rows(stored: Sequence[Mapping[str, np.ndarray]], keep: np.ndarray, axes: Mapping[str, int]
                 ) -> dict[str, np.ndarray] | None:
    """The rows of `stored` whose key `keep` lacks, once each, with their keys (`KEY`): what a value that replaces
    them drops, kept for the shard that now holds those images. None when there are none."""
    rows = StoredRows(stored)
    keep_set = set(np.asarray(keep).tolist())
    keys = np.array([key for key in rows.where if key not in keep_set], dtype="<U64")
    found, values = rows.take(keys, axes)
    return {KEY: keys[found], **values} if found.any() else None
