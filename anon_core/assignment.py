"""Distinct fakes for real images: a one-to-one real-to-fake assignment maximizing total cosine similarity.

`anon_core.pairing.nearest_fakes` lets one fake serve many reals; here no two reals (or, in identity mode, no two
people) share a fake. Features are L2-normalized first, so similarity is cosine.

- Exact when N x M <= `EXACT_CELL_LIMIT` (2e7 cells): scipy's `linear_sum_assignment` on the dense similarity.
  Measured on the project's 2-core CPU, 512-d features: 3,000 x 6,000 in 0.6 s, the square 5,000 x 5,000 (the slow
  shape) in 3 s, 10,000 x 10,000 in 12-17 s; at the limit the float64 matrix scipy works on is 160 MB.
- Above it, an approximation: each row keeps only its top-k fakes (`candidates`, default 32, from `nearest_fakes`),
  and the assignment is exact on that sparse bipartite graph (`min_weight_full_bipartite_matching`, cost 2 - cosine,
  which stays in [1, 3] so no edge is lost as an explicit zero). If that graph has no full matching, k is doubled
  (at most `max_doublings` times); as a last resort the rows a maximum matching leaves out take, in row order, the
  most similar fake still free. `AssignmentInfo` records which of these ran.
- Measured (`bench/pairing_assignment.py`, 2-core CPU, seeded structured 512-d features) at 30,000 reals x 60,000
  fakes: plain 1-NN took 23.9 s, mean cosine 0.4744, with 6,517 fakes shared by 15,980 reals; the distinct
  assignment (k = 32, no fallback) took 29.2 s (1.2x; 33.6 s and 39.3 s in a run sharing the CPU), mean cosine
  0.4688: 0.0056 (1.17%) lower. No assignment can beat 1-NN, so that is also the most it can lie below the exact
  optimum. Against the exact solver, k = 32 matched it fully on a 3,000 x 6,000 subset (k = 4: 8.6e-5 lower mean
  cosine, 97.5% of assignments identical) and, in a one-off run, on a 10,000 x 20,000 subset (exact 21 s; k = 8:
  3.7e-7 lower, 99.98% identical); at full size k = 64 gave the same assignment as k = 32.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

from anon_core.pairing import l2_normalize, nearest_fakes

EXACT_CELL_LIMIT = 20_000_000  # N x M up to which the dense Hungarian runs: <= ~3 s and 160 MB on 2 cores
DEFAULT_CANDIDATES = 32  # top-k fakes per row kept for the sparse matching above the limit
MAX_DOUBLINGS = 3  # 32 -> 256 candidates before the greedy last resort
_GREEDY_CHUNK = 512  # rows scored at once in the greedy last resort: 512 x M float32


@dataclass(frozen=True)
class AssignmentInfo:
    method: str  # "exact" (dense Hungarian) or "candidates k=K" (sparse matching on each row's top K fakes)
    total_similarity: float  # sum of cosine over the assigned rows (images, or people's mean features)
    rows: int  # rows assigned: real images for unique_fakes, people for identity_fakes
    k_doublings: int = 0  # times k was doubled because the top-k graph had no full matching
    greedy_rows: int = 0  # rows the top-k graph could not match, given the best free fake greedily

    @property
    def fallback(self) -> bool:
        return self.k_doublings > 0 or self.greedy_rows > 0


def unique_fakes(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    candidates: int = DEFAULT_CANDIDATES,
    exact_cell_limit: int = EXACT_CELL_LIMIT,
    max_doublings: int = MAX_DOUBLINGS,
    backend: str = "torch",
) -> tuple[np.ndarray, np.ndarray, AssignmentInfo]:
    """One distinct fake per real image, maximizing the total cosine similarity.

    Args:
        real_features: [N, D] features of the real images (any scale; normalized here).
        fake_features: [M, D] features of the fake pool, M >= N.
        candidates: fakes per real kept above `exact_cell_limit` (see the module docstring).
        exact_cell_limit: largest N x M solved exactly on the dense matrix.
        max_doublings: how often `candidates` may double before the greedy last resort.
        backend: `nearest_fakes` backend for the candidates.
    Returns:
        indices [N] int64 into the pool (all distinct), similarities [N] float32 (cosine), AssignmentInfo.
    """
    return _assign(real_features, fake_features, "real images", candidates, exact_cell_limit, max_doublings, backend)


def identity_fakes(
    real_features: np.ndarray,
    person: Sequence | np.ndarray,
    fake_features: np.ndarray,
    candidates: int = DEFAULT_CANDIDATES,
    exact_cell_limit: int = EXACT_CELL_LIMIT,
    max_doublings: int = MAX_DOUBLINGS,
    backend: str = "torch",
) -> tuple[np.ndarray, np.ndarray, AssignmentInfo]:
    """One fake per person, distinct across people: every image of a person gets the same fake.

    Each person is represented by the normalized mean of their images' normalized features, and the people are
    assigned with `unique_fakes`.

    Args:
        person: [N] labels (str or int); None, NaN or "" marks an unlabelled image, which is its own person.
        (the rest as in `unique_fakes`)
    Returns:
        indices [N] int64, similarities [N] float32 (cosine of each image to its person's fake),
        AssignmentInfo over the people (rows = number of people, total over their mean features).
    """
    real = l2_normalize(real_features)
    if len(person) != len(real):
        raise ValueError(f"person has {len(person)} labels but there are {len(real)} real images; give one per image")
    person_ids, people = _person_ids(person)
    order = np.argsort(person_ids, kind="stable")
    starts = np.searchsorted(person_ids[order], np.arange(people))
    sums = np.add.reduceat(real[order], starts, axis=0) if people else real[:0]  # (people, D)
    person_fakes, _, info = _assign(sums, fake_features, "people", candidates, exact_cell_limit, max_doublings, backend)
    indices = person_fakes[person_ids]
    return indices, _cosine_rows(real, l2_normalize(fake_features), indices), info


def collisions(indices: np.ndarray, person: Sequence | np.ndarray | None = None) -> dict[str, int]:
    """How fakes are shared: distinct fakes used, fakes used by more than one real, and the reals on those fakes;
    with `person` (a label per real, "" or None: unlabelled, its own person), also the number of `pseudonyms` (people,
    each unlabelled real one) and the fakes shared by more than one of them (0 under `unique` and `identity`, which
    share a fake within a person on purpose)."""
    indices = np.asarray(indices)
    if indices.ndim == 2 and indices.shape[1] == 1:
        indices = indices[:, 0]
    if indices.ndim != 1:
        raise ValueError(f"indices of shape {indices.shape} must be [N] or [N, 1] (one fake per real)")
    _, counts = np.unique(indices, return_counts=True)
    shared = counts > 1
    figures = {
        "distinct_fakes": int(len(counts)),
        "shared_fakes": int(shared.sum()),
        "reals_on_shared_fakes": int(counts[shared].sum()),
    }
    if person is None:
        return figures
    owners = [label or row for row, label in enumerate(person_labels(person).tolist())]  # a row: its own person
    per_fake = Counter(fake for fake, _ in set(zip(indices.tolist(), owners)))
    return figures | {"pseudonyms": len(set(owners)),
                      "fakes_shared_across_people": sum(1 for owned in per_fake.values() if owned > 1)}


def _assign(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    rows_are: str,
    candidates: int,
    exact_cell_limit: int,
    max_doublings: int,
    backend: str,
) -> tuple[np.ndarray, np.ndarray, AssignmentInfo]:
    real = l2_normalize(real_features)
    fake = l2_normalize(fake_features)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature shapes do not match: real {real.shape}, fake {fake.shape}")
    n, m = len(real), len(fake)
    if n > m:
        raise ValueError(f"the pool holds {m} fakes but {n} {rows_are} need distinct ones; raise pool_size")
    if candidates < 1 or max_doublings < 0:
        raise ValueError(f"candidates = {candidates} must be >= 1 and max_doublings = {max_doublings} >= 0")

    k_doublings = greedy_rows = 0
    if n * m <= exact_cell_limit:
        method = "exact"
        _, indices = linear_sum_assignment(real @ fake.T, maximize=True)  # rows come back in order 0..n-1
    else:
        k = min(candidates, m)
        while True:
            method = f"candidates k={k}"
            top, top_sims = nearest_fakes(real, fake, k=k, backend=backend)
            graph = _candidate_graph(top, top_sims, m)
            try:
                indices = _match(graph)
                break
            except ValueError as err:
                if "no full matching" not in str(err):
                    raise
                if k_doublings == max_doublings or k == m:  # k == m cannot fail, but never loop on it
                    indices, greedy_rows = _match_then_greedy(graph, real, fake)
                    break
                k, k_doublings = min(2 * k, m), k_doublings + 1

    indices = indices.astype(np.int64)
    assert len(np.unique(indices)) == n, "assignment reused a fake"
    similarities = _cosine_rows(real, fake, indices)
    info = AssignmentInfo(method, float(similarities.sum(dtype=np.float64)), n, k_doublings, greedy_rows)
    return indices, similarities, info


def _candidate_graph(top: np.ndarray, top_sims: np.ndarray, n_fakes: int) -> csr_matrix:
    n, k = top.shape
    cost = 2.0 - top_sims.astype(np.float64)  # in [1, 3]: strictly positive, so every edge is stored
    return csr_matrix((cost.ravel(), top.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n_fakes))


def _match(graph: csr_matrix) -> np.ndarray:
    rows, cols = min_weight_full_bipartite_matching(graph)
    indices = np.empty(graph.shape[0], np.int64)
    indices[rows] = cols
    return indices


def _match_then_greedy(graph: csr_matrix, real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, int]:
    """Min-cost matching of the rows a maximum matching covers; the rest take the best free fake, in row order."""
    matchable = np.flatnonzero(maximum_bipartite_matching(graph, perm_type="column") >= 0)
    indices = np.full(len(real), -1, np.int64)
    if len(matchable):
        indices[matchable] = _match(graph[matchable])
    free = np.ones(len(fake), bool)
    free[indices[matchable]] = False
    left = np.flatnonzero(indices < 0)
    for start in range(0, len(left), _GREEDY_CHUNK):
        rows = left[start : start + _GREEDY_CHUNK]
        scores = real[rows] @ fake.T  # (chunk, M) cosine
        scores[:, ~free] = -np.inf
        for i, row in enumerate(rows):
            best = int(np.argmax(scores[i]))
            indices[row] = best
            free[best] = False
            scores[:, best] = -np.inf
    return indices, len(left)


def _cosine_rows(real: np.ndarray, fake: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", real, fake[indices]).astype(np.float32)


def _person_ids(person: Sequence | np.ndarray) -> tuple[np.ndarray, int]:
    """Labels -> ([N] person id in order of first appearance, number of people); unlabelled images get their own."""
    ids: dict[object, int] = {}
    out = np.empty(len(person), np.int64)
    people = 0
    for i, label in enumerate(person):
        if isinstance(label, np.generic):
            label = label.item()  # np.int64(3) and 3 are one person
        if label is None or label == "" or (isinstance(label, float) and math.isnan(label)):
            out[i], people = people, people + 1
            continue
        if label not in ids:
            ids[label], people = people, people + 1
        out[i] = ids[label]
    return out, people


def count_people(person: Sequence | np.ndarray | None, images: int) -> int:
    """The people identity pairing gives a fake each among `images` images: one per distinct label, and one per image
    without a label (`person` None: each image is its own person)."""
    if person is None:
        return images
    labels = person_labels(person)
    return len(set(labels[labels != ""])) + int((labels == "").sum())


def check_pool_holds(mode: str, pool_size: int, images: int, person: Sequence | np.ndarray | None = None) -> None:
    """FalcoError when a pairing mode that gives each image ("unique") or person ("identity", `person`: one label
    per image, None: each image its own person) a fake of its own has fewer fakes than that: checked once the
    images are known, before the pool is made."""
    check_pool_size(mode, pool_size, images, count_people(person, images))


def check_pool_size(mode: str, pool_size: int, images: int, people: int, of: str = "") -> None:
    """check_pool_holds on counts: `images` images of `people` people (`of`: whose, for the message)."""
    from anon_core.errors import FalcoError

    needed, what = (people, "people") if mode == "identity" else (images, "images")
    if mode != "nearest" and needed > pool_size:
        raise FalcoError(f"pairing {mode!r} gives each of the {needed} {what}{of} its own fake, but the pool holds "
                         f"{pool_size}; raise pool_size to at least {needed}")


def check_identities(mode: str, person: Sequence | np.ndarray | None, labels_csv: Path | str | None = None) -> None:
    """FalcoError when pairing "identity" finds no identity label on any image (`person`, one per image; None: the
    data has no identity column): every image would be its own person, unique pairing under another name, and a
    labels CSV whose header is misspelt would be ignored. Checked once the files are listed, before any work."""
    from anon_core.errors import FalcoError

    if mode != "identity" or (person is not None and (not len(person) or (person_labels(person) != "").any())):
        return  # (no image left: nothing to pair)
    if labels_csv is None:
        why = ("no labels CSV was given (--labels, data.labels_csv), and the folder's layout gave none (an LFW "
               "folder's person folders give them; a CelebA-HQ folder's identity_CelebA.txt, in its root, Anno/ or "
               "Eval/)")
    else:
        import pandas as pd

        try:
            header = list(pd.read_csv(labels_csv, nrows=0, dtype=str).columns)
        except (ValueError, OSError, UnicodeDecodeError):
            header = []
        has_column = any(str(c).strip().lower() == "identity" for c in header)
        why = (f"the labels CSV {labels_csv} " + ("gives none of these images an identity" if has_column else
                                                  f"has no identity column (its columns: {header})"))
    raise FalcoError(f"pairing 'identity' needs the images' identity labels, but none has one: {why}; give a labels "
                     "CSV with a relpath and an identity column, or use pairing unique (no two images share a fake)")


def assign_fakes(real_features: np.ndarray, fake_features: np.ndarray, mode: str,
                 person: Sequence | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The fake of each real image under a pairing mode (params.yaml `pairing`): "nearest" (the paper's 1-NN,
    anon_core.pairing), "unique" (unique_fakes) or "identity" (identity_fakes with `person`, one label per image;
    None: every image is its own person). Returns fake indices [N] int64, cosine of each image to its fake [N]
    float32, and figures for metadata: the method and collisions."""
    check_pool_holds(mode, len(fake_features), len(real_features), person)
    labels = person_labels([None] * len(real_features) if person is None else person)
    if mode == "nearest":
        indices, similarities = nearest_fakes(real_features, fake_features, k=1)
        indices, similarities, info = indices[:, 0], similarities[:, 0], None
    elif mode == "unique":
        indices, similarities, info = unique_fakes(real_features, fake_features)
    elif mode == "identity":
        indices, similarities, info = identity_fakes(real_features, labels, fake_features)
    else:
        raise ValueError(f"pairing mode {mode!r} is not one of nearest, unique, identity")
    figures = {"pairing": mode, "assignment": info.method if info else "1-NN",
               "assignment_fallback": bool(info.fallback) if info else False, **collisions(indices, labels)}
    return indices, similarities, figures


def person_labels(values) -> np.ndarray:
    """Identity labels as text, "" where a value is missing (None, NaN, pd.NA, ""): [N] object array."""
    import pandas as pd

    return np.asarray(["" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v) for v in values],
                      dtype=object)
