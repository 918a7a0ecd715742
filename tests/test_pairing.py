import numpy as np
import pytest

from anon_core.pairing import l2_normalize, nearest_fakes


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("k", [1, 5])
def test_pairing_equals_brute_force_cosine(k, backend):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 64)).astype(np.float32) * rng.uniform(0.1, 10, size=(300, 1)).astype(np.float32)
    fake = rng.normal(size=(2000, 64)).astype(np.float32)
    indices, sims = nearest_fakes(real, fake, k=k, backend=backend, chunk=128)  # several chunks

    cosine = l2_normalize(real) @ l2_normalize(fake).T  # (300, 2000)
    expected = np.argsort(-cosine, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(cosine, expected, axis=1), atol=1e-5)
    assert indices.shape == (300, k) and indices.dtype == np.int64


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_one_fake_can_serve_many_reals(backend):
    fake = np.eye(3, dtype=np.float32)
    real = np.array([[1, 0.1, 0], [2, 0, 0.2], [0, 0, 5]], dtype=np.float32)
    indices, _ = nearest_fakes(real, fake, backend=backend)
    assert indices[:, 0].tolist() == [0, 0, 2]


def test_mismatched_dimensions_are_refused():
    with pytest.raises(ValueError, match="shapes"):
        nearest_fakes(np.zeros((2, 4)), np.zeros((3, 5)))
