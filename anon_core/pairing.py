"""Real-to-fake pairing: each real image's nearest fakes by cosine similarity of their features.

The official code pairs with scikit-learn's `NearestNeighbors(metric="cosine")`; this is the same plain
1-NN (a fake can serve many reals), exact, on L2-normalized vectors, with one of two backends:
"torch" (default: chunked matrix products + top-k) or "faiss" (an exact inner-product index). Measured side by side
on the project's 2-core CPU at 30,000 reals x 60,000 fakes x 512 (`bench/pairing_faiss_vs_sklearn.py`): torch
15.8 s, scikit-learn 41.1 s, faiss 42.4 s (an earlier run: sklearn 31.6 s, faiss 57.7 s); all return the same
neighbours.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


PAIRING_BACKENDS = ("torch", "faiss")


def nearest_fakes(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    k: int = 1,
    backend: str = "torch",
    chunk: int = 4096,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN by cosine similarity.

    Args:
        real_features: [N_real, D] features of the real images (any scale; normalized here).
        fake_features: [N_fake, D] features of the fake pool.
        k: neighbours per real image, nearest first.
        backend: "torch" or "faiss" (same results; see the module docstring for speed).
    Returns:
        indices [N_real, k] int64 into the fake pool, similarities [N_real, k] float32 (cosine).
    """
    if backend not in PAIRING_BACKENDS:
        raise ValueError(f"backend = {backend!r} must be one of {PAIRING_BACKENDS}")
    real = np.ascontiguousarray(l2_normalize(real_features))
    fake = np.ascontiguousarray(l2_normalize(fake_features))
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature shapes do not match: real {real.shape}, fake {fake.shape}")
    if not 1 <= k <= len(fake):
        raise ValueError(f"k = {k} must be in [1, {len(fake)}] (the pool size)")
    if backend == "torch":
        return _torch_knn(real, fake, k, chunk)
    import faiss

    if num_threads is not None:
        faiss.omp_set_num_threads(num_threads)
    index = faiss.IndexFlatIP(fake.shape[1])
    index.add(fake)
    similarities, indices = index.search(real, k)
    return indices.astype(np.int64), similarities.astype(np.float32)


def _torch_knn(real: np.ndarray, fake: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    fake_t = torch.from_numpy(fake)
    sims, idx = [], []
    for start in range(0, len(real), chunk):
        scores = torch.from_numpy(real[start : start + chunk]) @ fake_t.T  # (chunk, N_fake) cosine
        top = scores.topk(k, dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    if not idx:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return torch.cat(idx).numpy().astype(np.int64), torch.cat(sims).numpy().astype(np.float32)
