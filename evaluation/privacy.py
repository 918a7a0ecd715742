"""Privacy metrics: face detection rate and re-identification against the real gallery.

Protocol (DESIGN.md section 5, after CIAGAN and FALCO's paper; the official FALCO code ships no evaluation):

- Detection rate: the share of anonymized images in which a detector still finds a face: dlib's HOG frontal
  face detector (davisking/dlib, ``get_frontal_face_detector``; ``upsample="auto"`` upsamples once when the
  shorter image side is below :data:`DLIB_UPSAMPLE_BELOW` px, since its 80 x 80 px window misses smaller faces,
  and not at all above; any detection dlib returns counts, i.e. its default score > 0) and MTCNN
  (``anon_core.networks.mtcnn``, facenet-pytorch's thresholds 0.6/0.7/0.7, smallest face 20 px). A high rate
  means the images still look like faces (desired for a utility-keeping anonymizer); blur and masks lower it.
- Re-identification, per recognizer (``evaluation.recognizers``): each anonymized image i, made from real image
  ``source_index[i]``, is compared with every real image (the gallery). Identity of i = the identity label of its
  source when labels are given (LFW: any image of the same person counts), else the source image itself.
  ``rank`` = 1 + the number of gallery images of OTHER identities strictly more similar than the most similar
  same-identity image (ties go to the attacker). top-k rate = share with rank <= k. Verification rate = share
  whose similarity to their own source passes the recognizer's threshold. An image FAILS (is re-identified) when
  it is verified against its source or its rank is 1.

Everything here is a pure function of image sets (read batch by batch), arrays and DataFrames; the caller writes
the parquet.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from evaluation.image_sets import ImageSetLike, batch_slices, read_parts
from evaluation.recognizers import Recognizer

__all__ = [
    "DETECTORS",
    "DLIB_UPSAMPLE_BELOW",
    "DetectionResult",
    "ReidentificationReport",
    "combine_tables",
    "detect_faces",
    "evaluate_reidentification",
    "reidentification_report",
    "first_match_ranks",
    "reidentification_table",
    "summarize_reidentification",
]

DETECTORS = ("dlib_hog", "mtcnn")
DLIB_UPSAMPLE_BELOW = 256
"""dlib HOG upsamples an image once when its shorter side is below this (px); FFHQ-aligned crops of 256 px and
more hold faces of ~130 px and more, well above the detector's 80 px window."""
TOP_K = (1, 5)
SCORE_BINS = 30  # histogram bins over the recognizer's fixed score range
DETECTION_BATCH = 32  # images read at a time for the detectors, which then see one image at a time


# --------------------------------------------------------------------------------------------- detection
@dataclass(frozen=True)
class DetectionResult:
    """Per-image face detection by one detector."""

    detector: str
    faces: np.ndarray  # int [N]: faces found in each image

    @property
    def detected(self) -> np.ndarray:
        """bool [N]: at least one face found."""
        return self.faces > 0

    @property
    def rate(self) -> float:
        """Share of images with at least one face."""
        return float(self.detected.mean()) if len(self.faces) else float("nan")


def _frames(images: ImageSetLike | Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """Each image, checked to be uint8 [H, W, 3] RGB: a [N, H, W, 3] set is read DETECTION_BATCH images at a time,
    a sequence (of images of any sizes) one by one."""
    if getattr(images, "ndim", None) == 4:
        chunks = (batch for _, batch in read_parts(images, batch_slices(len(images), DETECTION_BATCH)))
    else:
        chunks = iter([images])
    i = 0
    for chunk in chunks:
        for image in chunk:
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"image {i}: expected uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
            yield np.ascontiguousarray(image)
            i += 1


# Both detectors hold only fixed weights, so one per process (per device) serves every call: dlib builds its HOG
# detector in ~0.6 s, which the suite otherwise paid once per method.
@functools.cache
def _hog_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.cache
def _mtcnn(device: torch.device):
    from anon_core.networks.mtcnn import MTCNN

    return MTCNN(device=device)


def detect_faces(
    images: ImageSetLike | Sequence[np.ndarray],
    detector: str = "dlib_hog",
    upsample: int | str = "auto",
    device: torch.device | str = "cpu",
    mtcnn=None,
) -> DetectionResult:
    """Count faces in each uint8 [H, W, 3] image with ``detector`` ("dlib_hog" or "mtcnn"); a [N, H, W, 3] set is
    read in batches, so only the counts are kept.

    ``upsample`` (dlib only): times to double the image before detection, or "auto" (once when the shorter side
    is below DLIB_UPSAMPLE_BELOW, else never). ``mtcnn``: a ready ``anon_core.networks.mtcnn.MTCNN`` to use
    instead of the process's default one on ``device``.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector={detector!r} is not one of {DETECTORS}")
    if detector == "mtcnn":
        net = mtcnn if mtcnn is not None else _mtcnn(torch.device(device))
        return DetectionResult(detector, np.array([len(net.detect(f)) for f in _frames(images)], dtype=np.int64))
    if upsample != "auto" and (not isinstance(upsample, int) or upsample < 0):
        raise ValueError(f"upsample={upsample!r} must be 'auto' or a non-negative int")
    hog = _hog_detector()
    counts = []
    for frame in _frames(images):
        times = (1 if min(frame.shape[:2]) < DLIB_UPSAMPLE_BELOW else 0) if upsample == "auto" else upsample
        counts.append(len(hog(frame, times)))
    return DetectionResult(detector, np.array(counts, dtype=np.int64))


# --------------------------------------------------------------------------------------------- ranking
def labelled_or_own(identity: Sequence | pd.Series | None, names: Sequence[str]) -> np.ndarray | None:
    """Each gallery image's identity: its label, or for an image without one (a file outside the labels CSV or
    LFW's person folders) its own name, so it is its own identity; None where no image has a label. A name that is
    also someone's label (an image labelled `b/x.png`) is marked ` (unlabelled)`, so the two stay apart."""
    if identity is None:
        return None
    labels = pd.Series(list(identity), dtype=object)
    if len(labels) != len(names):
        raise ValueError(f"{len(labels)} identity labels for {len(names)} gallery images")
    missing = labels.isna().to_numpy()
    if missing.all():
        return None
    taken = {str(label) for label in labels[~missing]}
    own = []
    for name in np.asarray(names, dtype=object)[missing]:
        while str(name) in taken:
            name = f"{name} (unlabelled)"
        own.append(name)
    labels[missing] = own
    return labels.to_numpy(dtype=object)


def rivals(identity: np.ndarray | None, images: int) -> np.ndarray:
    """For each of a gallery's `images`, how many of the gallery's images are of other people (`labelled_or_own`'s
    labels; each image its own without): an image made from it ranks at worst one more than that, so with fewer than
    k rivals its top-k hit is certain whatever it looks like. int [images]."""
    if identity is None:
        return np.full(images, images - 1, dtype=np.int64)
    _, person, sizes = np.unique(np.asarray(identity, dtype=object).astype(str), return_inverse=True,
                                 return_counts=True)
    return (images - sizes[person]).astype(np.int64)


def _query_identity(source_index: np.ndarray, n_gallery: int, gallery_identity: np.ndarray | None) -> np.ndarray:
    if source_index.ndim != 1 or not np.issubdtype(source_index.dtype, np.integer):
        raise ValueError(f"source_index must be a 1-d integer array, got {source_index.dtype} {source_index.shape}")
    if len(source_index) and (source_index.min() < 0 or source_index.max() >= n_gallery):
        raise ValueError(f"source_index must lie in [0, {n_gallery}) (gallery size), got {source_index.min()}.."
                         f"{source_index.max()}")
    if gallery_identity is None:
        return source_index
    if len(gallery_identity) != n_gallery:
        raise ValueError(f"gallery_identity has {len(gallery_identity)} labels for {n_gallery} gallery images")
    return gallery_identity[source_index]


TIE_TOLERANCE = 1e-9
"""Similarities closer than this are a tie, which goes to the attacker: the similarities of one image to two
byte-identical gallery images (a duplicated file) came out 4e-16 apart, from the matrix product's rounding, and the
duplicate's source ranked second."""


def first_match_ranks(
    similarity: np.ndarray, source_index: np.ndarray, gallery_identity: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(rank [Nq], best same-identity similarity [Nq]) from similarity [Nq, Ng] (higher = more alike).

    rank = 1 + number of other-identity gallery items more similar than the best same-identity one by more than
    TIE_TOLERANCE.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    source_index = np.asarray(source_index)
    if similarity.ndim != 2 or similarity.shape[0] != len(source_index):
        raise ValueError(f"similarity {similarity.shape} must be [queries, gallery] with {len(source_index)} rows")
    gallery_ids = None if gallery_identity is None else np.asarray(gallery_identity)
    query_ids = _query_identity(source_index, similarity.shape[1], gallery_ids)
    if gallery_ids is None:
        gallery_ids = np.arange(similarity.shape[1])
    same = gallery_ids[None, :] == query_ids[:, None]  # (Nq, Ng); never empty: the source itself is same
    best_same = np.where(same, similarity, -np.inf).max(axis=1)  # (Nq,)
    ranks = 1 + ((similarity > best_same[:, None] + TIE_TOLERANCE) & ~same).sum(axis=1)
    return ranks.astype(np.int64), best_same


def reidentification_table(
    similarity: np.ndarray,
    source_index: np.ndarray,
    threshold: float,
    inclusive: bool,
    gallery_identity: np.ndarray | None = None,
    ks: Sequence[int] = TOP_K,
) -> pd.DataFrame:
    """Per-query table from similarity [Nq, Ng] (higher = more alike) and each query's source gallery index.

    ``threshold``/``inclusive``: the match rule in similarity units (``sim >= t`` when inclusive, else ``sim > t``).
    Columns: source_index, [identity], similarity_to_source, best_same_similarity, rank, top{k}..., verified,
    passed (not verified and rank > 1).
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    source_index = np.asarray(source_index)
    ranks, best_same = first_match_ranks(similarity, source_index, gallery_identity)
    to_source = similarity[np.arange(len(source_index)), source_index]  # (Nq,)
    verified = to_source >= threshold if inclusive else to_source > threshold
    table = pd.DataFrame({"source_index": source_index.astype(np.int64)})
    if gallery_identity is not None:
        table["identity"] = np.asarray(gallery_identity)[source_index]
    table["similarity_to_source"] = to_source
    table["best_same_similarity"] = best_same
    table["rank"] = ranks
    for k in ks:
        table[f"top{k}"] = ranks <= k
    table["verified"] = verified
    table["passed"] = ~verified & (ranks > 1)
    return table


@dataclass
class ReidentificationReport:
    """One recognizer's re-identification result: headline numbers, score histogram, per-image table."""

    recognizer: str
    summary: dict[str, float]  # rates, threshold and score distribution, in the recognizer's native units
    histogram_counts: np.ndarray  # int [bins] of score_to_source over the recognizer's fixed score range
    histogram_edges: np.ndarray  # float [bins + 1]
    table: pd.DataFrame  # one row per anonymized image

    def metrics(self, prefix: str = "reid") -> dict[str, float]:
        """Flat ``{prefix}/{recognizer}/{key}: value`` for a tracker."""
        return {f"{prefix}/{self.recognizer}/{k}": float(v) for k, v in self.summary.items()}


def summarize_reidentification(
    table: pd.DataFrame,
    scores: np.ndarray,
    unit: str,
    score_range: tuple[float, float],
    ks: Sequence[int] = TOP_K,
    bins: int = SCORE_BINS,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Rates from a reidentification_table plus the distribution of ``scores``, each image's comparison with its
    source in the recognizer's own ``unit`` ("distance" or "cosine"), as ``<unit>_to_source_<statistic>``.

    Returns (summary, histogram counts, edges). Scores outside ``score_range`` count in the end bins.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(table) or not len(table):
        raise ValueError(f"{len(scores)} scores for a table of {len(table)} rows; both must be equal and non-empty")
    summary: dict[str, float] = {"images": float(len(table))}
    for k in ks:
        summary[f"top{k}_rate"] = float(table[f"top{k}"].mean())
    summary["verification_rate"] = float(table["verified"].mean())
    summary["pass_rate"] = float(table["passed"].mean())
    for name, value in {
        "mean": scores.mean(), "std": scores.std(), "min": scores.min(), "p05": np.percentile(scores, 5),
        "p25": np.percentile(scores, 25), "median": np.median(scores), "p75": np.percentile(scores, 75),
        "p95": np.percentile(scores, 95), "max": scores.max(),
    }.items():
        summary[f"{unit}_to_source_{name}"] = float(value)
    lo, hi = score_range
    counts, edges = np.histogram(np.clip(scores, lo, hi), bins=bins, range=(lo, hi))
    return summary, counts, edges


def evaluate_reidentification(
    recognizer: Recognizer,
    anonymized: ImageSetLike | torch.Tensor,
    gallery: ImageSetLike | torch.Tensor,
    source_index: np.ndarray,
    gallery_identity: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    ks: Sequence[int] = TOP_K,
    chunk: int = 1024,
    gallery_embeddings: np.ndarray | None = None,
) -> ReidentificationReport:
    """Re-identification of ``anonymized`` images against the real ``gallery`` with one recognizer.

    Images: aligned faces, uint8 [N, H, W, 3] sets (read batch by batch) or [-1, 1] [N, 3, H, W].
    ``source_index[i]``: the gallery row that anonymized image i was made from. ``gallery_embeddings``: reuse
    embeddings computed earlier. See :func:`reidentification_report` for the rest.
    """
    query_emb = recognizer.embed(anonymized)
    gallery_emb = recognizer.embed(gallery) if gallery_embeddings is None else gallery_embeddings
    return reidentification_report(recognizer, query_emb, gallery_emb, source_index, gallery_identity, names, ks,
                                   chunk)


def reidentification_report(
    recognizer: Recognizer,
    query_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray,
    source_index: np.ndarray,
    gallery_identity: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    ks: Sequence[int] = TOP_K,
    chunk: int = 1024,
) -> ReidentificationReport:
    """Re-identification from embeddings: query [Nq, D] (anonymized image i made from gallery row
    ``source_index[i]``) against gallery [Ng, D]. Queries are ranked ``chunk`` at a time, so memory stays
    O(chunk x gallery). The table gets ``name`` (when given), and each image's comparison with its source and with
    the most alike image of its own identity in the recognizer's units: ``distance_to_source`` and
    ``distance_to_same_identity`` for dlib (larger = more private), ``cosine_to_source`` and
    ``cosine_to_same_identity`` for the cosine recognizers (smaller = more private)."""
    source_index = np.asarray(source_index)
    if len(source_index) != len(query_embeddings):
        raise ValueError(f"{len(query_embeddings)} anonymized images but {len(source_index)} source indices")
    parts = []
    for start in range(0, len(query_embeddings), chunk):
        rows = slice(start, start + chunk)
        sim = recognizer.similarity(query_embeddings[rows], gallery_embeddings)  # (chunk, Ng)
        parts.append(reidentification_table(sim, source_index[rows], recognizer.threshold,
                                            recognizer.spec.inclusive, gallery_identity, ks))
    table = pd.concat(parts, ignore_index=True)
    if names is not None:
        if len(names) != len(table):
            raise ValueError(f"{len(names)} names for {len(table)} anonymized images")
        table.insert(0, "name", list(names))
    unit = "distance" if recognizer.spec.metric == "euclidean" else "cosine"
    table = table.rename(columns={"similarity_to_source": f"{unit}_to_source",
                                  "best_same_similarity": f"{unit}_to_same_identity"})
    for column in (f"{unit}_to_source", f"{unit}_to_same_identity"):  # similarity units -> the recognizer's own
        table[column] = recognizer.to_score(table[column].to_numpy())
    summary, counts, edges = summarize_reidentification(
        table, table[f"{unit}_to_source"].to_numpy(), unit, recognizer.spec.score_range, ks
    )
    return ReidentificationReport(recognizer.name, summary, counts, edges, table)


def combine_tables(reports: Sequence[ReidentificationReport]) -> pd.DataFrame:
    """One row per image across recognizers: ``{recognizer}/{column}`` columns and ``passed_all``."""
    if not reports:
        raise ValueError("no reports to combine")
    shared = [c for c in ("name", "source_index", "identity") if c in reports[0].table.columns]
    out = reports[0].table[shared].copy()
    for report in reports:
        if len(report.table) != len(out):
            raise ValueError(f"{report.recognizer}: {len(report.table)} rows, expected {len(out)}")
        for column in report.table.columns.drop(shared, errors="ignore"):
            out[f"{report.recognizer}/{column}"] = report.table[column].to_numpy()
    out["passed_all"] = np.logical_and.reduce([r.table["passed"].to_numpy() for r in reports])
    return out


PSEUDONYM_MAX_PAIRS = 100_000  # same-person pairs compared at most (a seeded sample beyond), and as many others


def pseudonym_consistency(recognizer: Recognizer, anon_embeddings: np.ndarray, real_embeddings: np.ndarray,
                          person: np.ndarray, seed: int = 0) -> dict[str, float]:
    """With identity labels: does one person keep one pseudonym? Over pairs of images of the same person, the share
    the recognizer verifies as one person, for the anonymized images and for their real sources; over as many
    pairs of different people, the share of anonymized pairs merged into one. `person`: a label per image ("" or
    None: unlabelled, left out). Empty dict when no person has two labelled images."""
    from anon_core.assignment import person_labels

    person = person_labels(person)
    labelled = np.flatnonzero(person != "")
    groups = _person_rows(person)
    if _shortfall(groups):
        return {}
    same = [(a, b) for rows in groups.values() for k, a in enumerate(rows) for b in rows[k + 1:]]
    rng = np.random.default_rng(seed)
    if len(same) > PSEUDONYM_MAX_PAIRS:
        same = [same[i] for i in rng.choice(len(same), PSEUDONYM_MAX_PAIRS, replace=False)]
    other = other_person_pairs(person[labelled], len(same), rng)
    other = labelled[other] if len(other) else np.zeros((0, 2), np.int64)
    same = np.asarray(same)

    def similarity(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        return recognizer.paired_similarity(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]]) if len(pairs) else \
            np.zeros(0)

    def match_rate(similarities: np.ndarray) -> float:
        return float(np.mean(recognizer.is_match(similarities))) if len(similarities) else float("nan")

    def separation(same_sim: np.ndarray, other_sim: np.ndarray) -> float:
        """P(a same-person pair is more alike than a different-person pair): the ROC AUC (Mann-Whitney)."""
        if not len(same_sim) or not len(other_sim):
            return float("nan")
        ranks = rankdata(np.concatenate([same_sim, other_sim]))
        return float((ranks[:len(same_sim)].sum() - len(same_sim) * (len(same_sim) + 1) / 2)
                     / (len(same_sim) * len(other_sim)))

    name = f"pseudonym/{recognizer.name}"
    anon_same, anon_other = similarity(anon_embeddings, same), similarity(anon_embeddings, other)
    real_same, real_other = similarity(real_embeddings, same), similarity(real_embeddings, other)
    return {f"{name}/anon_same_person_match_rate": match_rate(anon_same),
            f"{name}/real_same_person_match_rate": match_rate(real_same),
            f"{name}/anon_other_person_match_rate": match_rate(anon_other),
            f"{name}/anon_separation_auc": separation(anon_same, anon_other),
            f"{name}/real_separation_auc": separation(real_same, real_other),
            f"{name}/pairs": float(len(same)), f"{name}/other_pairs": float(len(other))}


def _person_rows(person: np.ndarray) -> dict[str, list[int]]:
    """The rows of each person of `person_labels` (unlabelled rows left out)."""
    groups: dict[str, list[int]] = {}
    for i in np.flatnonzero(person != ""):
        groups.setdefault(person[i], []).append(int(i))
    return groups


def pseudonym_shortfall(person) -> str | None:
    """Why `pseudonym_consistency` has no figures for these labels (one per anonymized image), in words; None when
    it has them: it needs a person with two images and images of two people."""
    from anon_core.assignment import person_labels

    return _shortfall(_person_rows(person_labels(person)))


def _shortfall(groups: dict[str, list[int]]) -> str | None:
    """`pseudonym_shortfall` of the rows of each person."""
    if not groups:
        return "no anonymized image has an identity label"
    if max(len(rows) for rows in groups.values()) < 2:
        return (f"no person has two anonymized images (the labels give {len(groups)} people, one image each), so "
                "there is no pair of images of one person to compare")
    if len(groups) < 2:
        return (f"every anonymized image is of one person ({next(iter(groups))!r}), so there is no pair of "
                "different people to compare")
    return None


ALL_PAIRS_UP_TO = 2_000_000  # different-person pairs listed whole to draw from; beyond, drawn at random


def other_person_pairs(person: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct pairs [count, 2] of rows whose `person` differs, drawn uniformly without replacement from
    all such pairs (every one of them, in a random order, when there are fewer). Drawing pairs of rows at random and
    dropping those of one person (as before) gave fewer: 12 of 17 on 11 images of 4 people."""
    n = len(person)
    _, group, sizes = np.unique(person, return_inverse=True, return_counts=True)
    differing = (n * n - int((sizes.astype(np.int64) ** 2).sum())) // 2
    count = min(count, differing)
    if differing <= ALL_PAIRS_UP_TO:  # each person's rows against the rows of the people after them
        rows, ends = np.argsort(group, kind="stable"), np.cumsum(sizes)
        pairs = np.concatenate([np.stack(np.meshgrid(rows[end - size:end], rows[end:], indexing="ij"), -1)
                                .reshape(-1, 2) for size, end in zip(sizes, ends)]) if n else np.zeros((0, 2), int)
        return pairs[rng.permutation(len(pairs))[:count]]
    accepted = differing / (n * (n - 1) / 2)  # share of random pairs that are of two people
    found: dict[tuple[int, int], None] = {}
    while len(found) < count:
        a, b = rng.integers(0, n, size=(2, int(min(1e7, 2 * (count - len(found)) / accepted + 16))))
        keep = person[a] != person[b]
        for i, j in zip(np.minimum(a, b)[keep].tolist(), np.maximum(a, b)[keep].tolist()):
            if len(found) == count:
                break
            found.setdefault((i, j))
    return np.array(list(found), dtype=np.int64).reshape(-1, 2)
