"""Real-to-fake pairing: each real image's nearest fakes by cosine similarity of their features.

The official code pairs with scikit-learn's `NearestNeighbors(metric="cosine")`; this is the same plain
1-NN (a fake can serve many reals), done exactly with a faiss inner-product index on L2-normalized vectors.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def nearest_fakes(
    real_features: np.ndarray, fake_features: np.ndarray, k: int = 1, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN by cosine similarity.

    Args:
        real_features: [N_real, D] features of the real images (any scale; normalized here).
        fake_features: [N_fake, D] features of the fake pool.
        k: neighbours per real image, nearest first.
    Returns:
        indices [N_real, k] int64 into the fake pool, similarities [N_real, k] float32 (cosine).
    """
    import faiss

    real = np.ascontiguousarray(l2_normalize(real_features))
    fake = np.ascontiguousarray(l2_normalize(fake_features))
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature shapes do not match: real {real.shape}, fake {fake.shape}")
    if not 1 <= k <= len(fake):
        raise ValueError(f"k = {k} must be in [1, {len(fake)}] (the pool size)")
    if num_threads is not None:
        faiss.omp_set_num_threads(num_threads)
    index = faiss.IndexFlatIP(fake.shape[1])
    index.add(fake)
    similarities, indices = index.search(real, k)
    return indices.astype(np.int64), similarities.astype(np.float32)
