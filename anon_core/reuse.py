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

KEY = "key"  # the member of a stored dict of arrays that holds its rows' keys, in row order


def row_keys(context: Any, *per_row: Sequence[str | bytes | np.ndarray]) -> np.ndarray:
    """One hex key per row: sha256 of `context` (JSON-able, keys sorted) and of the row's entry in each of
    `per_row` (strings, bytes or arrays, hashed with their length so that no two splits of the bytes collide)."""
    base = hashlib.sha256(json.dumps(context, sort_keys=True, default=str).encode()).digest()
    keys = []
    for parts in zip(*per_row, strict=True):
        digest = hashlib.sha256(base)
        for part in parts:
            data = part.encode() if isinstance(part, str) else np.ascontiguousarray(part).tobytes()
            digest.update(len(data).to_bytes(8, "little") + data)
        keys.append(digest.hexdigest())
    return np.array(keys, dtype="<U64").reshape(len(keys))


def reuse_rows(stored: Iterable[Mapping[str, np.ndarray]], keys: np.ndarray, axes: Mapping[str, int]
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(found [N] bool, {name: the found rows' values, in row order along `axes[name]`}) for the rows whose key
    one of `stored` holds (each: a mapping with `KEY` and the members `axes` names, its rows along their axis).
    A stored value that cannot be read whole, or lacks a member, is skipped: its rows are computed again."""
    wanted: dict[str, list[int]] = {}
    for row, key in enumerate(keys.tolist()):
        wanted.setdefault(key, []).append(row)
    found = np.zeros(len(keys), bool)
    rows: list[np.ndarray] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in axes}
    for value in stored:
        if not wanted:
            break
        try:
            their_keys = np.asarray(value[KEY]).tolist()
            ours, theirs, seen = [], [], set()
            for index, key in enumerate(their_keys):
                if key in wanted and key not in seen:  # a key stored twice: its first row
                    seen.add(key)
                    ours += wanted[key]
                    theirs += [index] * len(wanted[key])
            if not ours:
                continue
            taken = {name: np.take(np.asarray(value[name]), theirs, axis=axis) for name, axis in axes.items()}
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile):
            continue  # unreadable or of another layout: not reused
        if parts[next(iter(axes))] and any(taken[n].shape[:a] + taken[n].shape[a + 1:]
                                           != parts[n][0].shape[:a] + parts[n][0].shape[a + 1:]
                                           for n, a in axes.items()):
            continue  # rows of another shape under the same key cannot be (keys hash the settings): not trusted
        for row in ours:
            wanted.pop(str(keys[row]), None)
        found[ours] = True
        rows.append(np.array(ours))
        for name in axes:
            parts[name].append(taken[name])
    if not rows:
        return found, {}
    order = np.argsort(np.concatenate(rows), kind="stable")
    return found, {name: np.take(np.concatenate(parts[name], axis=axes[name]), order, axis=axes[name])
                   for name in axes}


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
    keep_set = set(np.asarray(keep).tolist())
    keys: dict[str, None] = {}
    for value in stored:
        try:
            keys |= dict.fromkeys(k for k in np.asarray(value[KEY]).tolist() if k not in keep_set)
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile):
            continue
    found, rows = reuse_rows(stored, np.array(list(keys), dtype="<U64"), axes)
    return {KEY: np.array(list(keys), dtype="<U64")[found], **rows} if found.any() else None
