import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from anon_core.assignment import collisions, identity_fakes, unique_fakes
from anon_core.pairing import l2_normalize

EXACT = {}  # default limit: tiny problems take the dense Hungarian
CANDIDATES_ONLY = {"exact_cell_limit": 0}  # forces the sparse top-k path at any size


def _structured(rng, n, rank=8, dim=32):
    basis = rng.normal(size=(rank, dim))
    return (rng.normal(size=(n, rank)) @ basis + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)


def _cosine(real, fake):
    return l2_normalize(real) @ l2_normalize(fake).T


def _optimal_total(real, fake):
    sims = _cosine(real, fake).astype(np.float64)
    rows, cols = linear_sum_assignment(sims, maximize=True)
    return cols, sims[rows, cols].sum()


@pytest.mark.parametrize("path", [EXACT, {**CANDIDATES_ONLY, "candidates": 7}, {**CANDIDATES_ONLY, "candidates": 3}])
@pytest.mark.parametrize("seed", range(4))
def test_unique_equals_brute_force_over_all_permutations(seed, path):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(5, 6)) * rng.uniform(0.1, 10, size=(5, 1))
    fake = rng.normal(size=(7, 6))
    sims = _cosine(real, fake).astype(np.float64)
    perms = np.array(list(itertools.permutations(range(7), 5)))  # (2520, 5): every injective real -> fake map
    totals = sims[np.arange(5), perms].sum(axis=1)

    indices, similarities, info = unique_fakes(real, fake, **path)

    np.testing.assert_array_equal(indices, perms[np.argmax(totals)])
    assert info.total_similarity == pytest.approx(totals.max(), abs=1e-5)
    np.testing.assert_allclose(similarities, sims[np.arange(5), indices], atol=1e-6)
    assert indices.dtype == np.int64 and similarities.dtype == np.float32


def test_candidate_path_with_large_k_equals_linear_sum_assignment():
    rng = np.random.default_rng(1)
    real, fake = _structured(rng, 300), _structured(rng, 500)
    expected, best = _optimal_total(real, fake)

    indices, _, info = unique_fakes(real, fake, candidates=64, **CANDIDATES_ONLY)

    assert info.method == "candidates k=64" and not info.fallback
    np.testing.assert_array_equal(indices, expected)
    assert info.total_similarity == pytest.approx(best, abs=1e-3)


def test_candidate_path_with_small_k_stays_close_to_exact():
    rng = np.random.default_rng(2)
    real, fake = _structured(rng, 300), _structured(rng, 500)
    _, best = _optimal_total(real, fake)

    indices, _, info = unique_fakes(real, fake, candidates=8, **CANDIDATES_ONLY)

    assert len(np.unique(indices)) == len(real) and not info.fallback
    # measured on this seed: 0.0011 lower mean cosine than exact at k = 8 (k = 16 is exact); 1-NN is 0.030 higher
    gap = (best - info.total_similarity) / len(real)
    assert 0 <= gap < 0.003, gap


def test_exact_limit_picks_the_solver():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(20, 8)), rng.normal(size=(30, 8))
    assert unique_fakes(real, fake, exact_cell_limit=600)[2].method == "exact"
    assert unique_fakes(real, fake, exact_cell_limit=599, candidates=4)[2].method.startswith("candidates k=")


def test_more_reals_than_fakes_is_refused():
    with pytest.raises(ValueError, match="pool holds 3 fakes but 4 real images need distinct ones; raise pool_size"):
        unique_fakes(np.ones((4, 2)), np.eye(3, 2))


def _one_crowded_direction(n_reals, n_fakes):
    """All reals point the same way, so every real's top-k are the same k fakes (ranked by angle)."""
    angles = np.linspace(0.05, 1.5, n_fakes)
    fake = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    real = np.tile([1.0, 0.0], (n_reals, 1)) * np.arange(1, n_reals + 1)[:, None]  # scale must not matter
    return real, fake


def test_k_is_doubled_when_the_candidate_graph_has_no_full_matching():
    real, fake = _one_crowded_direction(4, 10)
    indices, _, info = unique_fakes(real, fake, candidates=2, **CANDIDATES_ONLY)

    assert info.method == "candidates k=4" and info.k_doublings == 1 and info.greedy_rows == 0 and info.fallback
    assert sorted(indices.tolist()) == [0, 1, 2, 3]


def test_greedy_last_resort_assigns_the_rest_to_the_best_free_fakes():
    real, fake = _one_crowded_direction(6, 10)
    indices, _, info = unique_fakes(real, fake, candidates=1, max_doublings=1, **CANDIDATES_ONLY)

    assert info.method == "candidates k=2" and info.greedy_rows == 4 and info.fallback
    assert sorted(indices.tolist()) == [0, 1, 2, 3, 4, 5]  # the six most similar fakes: still optimal here
    assert info.total_similarity == pytest.approx(_optimal_total(real, fake)[1], abs=1e-5)


LABELS = ["ann", "bob", "ann", None, "bob", "", float("nan"), 7, "ann", np.int64(7), "cy"]


def _people_features(rng, labels):
    """Images of one person near a common direction; unlabelled images anywhere."""
    centre = {label: rng.normal(size=16) for label in ("ann", "bob", 7, "cy")}
    rows = [2 * centre[label] + rng.normal(size=16) if label in centre else rng.normal(size=16) for label in labels]
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("path", [EXACT, {**CANDIDATES_ONLY, "candidates": 3}])
def test_identity_one_fake_per_person_distinct_across_people(path):
    rng = np.random.default_rng(4)
    real, fake = _people_features(rng, LABELS), rng.normal(size=(12, 16))

    indices, similarities, info = identity_fakes(real, LABELS, fake, **path)

    by_person = {"ann": [0, 2, 8], "bob": [1, 4], "7": [7, 9], "cy": [10], "none": [3], "empty": [5], "nan": [6]}
    fakes = [set(indices[rows].tolist()) for rows in by_person.values()]
    assert all(len(f) == 1 for f in fakes), indices  # one fake within a person (7 and np.int64(7) are one)
    assert len(set().union(*fakes)) == len(by_person)  # distinct across people; unlabelled images are their own
    assert info.rows == len(by_person)
    np.testing.assert_allclose(similarities, np.sum(l2_normalize(real) * l2_normalize(fake)[indices], axis=1),
                               atol=1e-6)


def test_identity_assigns_people_by_their_mean_feature():
    rng = np.random.default_rng(5)
    real, fake = _people_features(rng, LABELS), rng.normal(size=(12, 16))
    indices, _, _ = identity_fakes(real, LABELS, fake)

    groups = [[0, 2, 8], [1, 4], [3], [5], [6], [7, 9], [10]]
    means = np.stack([l2_normalize(real)[rows].mean(axis=0) for rows in groups])  # (people, 16)
    expected, _, _ = unique_fakes(means, fake)
    for rows, fake_index in zip(groups, expected):
        assert set(indices[rows].tolist()) == {fake_index}


@pytest.mark.parametrize("path", [EXACT, {**CANDIDATES_ONLY, "candidates": 3}])
def test_identity_does_not_depend_on_row_order(path):
    rng = np.random.default_rng(6)
    labels = np.array([f"p{i}" for i in rng.integers(0, 15, size=60)], dtype=object)
    labels[rng.choice(60, size=5, replace=False)] = None
    real, fake = rng.normal(size=(60, 16)), rng.normal(size=(40, 16))
    indices, similarities, _ = identity_fakes(real, labels, fake, **path)

    order = rng.permutation(60)
    shuffled, shuffled_sims, _ = identity_fakes(real[order], labels[order], fake, **path)

    np.testing.assert_array_equal(shuffled, indices[order])
    np.testing.assert_allclose(shuffled_sims, similarities[order], atol=1e-6)


def test_identity_refuses_more_people_than_fakes_and_wrong_label_count():
    with pytest.raises(ValueError, match="pool holds 2 fakes but 3 people need distinct ones"):
        identity_fakes(np.eye(4, 3), ["a", "b", "a", "c"], np.eye(2, 3))
    with pytest.raises(ValueError, match="3 labels but there are 4 real images"):
        identity_fakes(np.eye(4, 3), ["a", "b", "a"], np.eye(5, 3))


def test_collisions_counts_shared_fakes():
    expected = {"distinct_fakes": 4, "shared_fakes": 2, "reals_on_shared_fakes": 5}  # 3 twice, 7 three times
    assert collisions(np.array([3, 3, 5, 7, 7, 7, 9])) == expected
    assert collisions(np.array([[3], [3], [5], [7], [7], [7], [9]])) == expected  # nearest_fakes' [N, 1]
    assert collisions(np.array([0, 1, 2])) == {"distinct_fakes": 3, "shared_fakes": 0, "reals_on_shared_fakes": 0}
    # with people: a fake shared within a person is identity pairing's point; shared across people it merges them
    # (an unlabelled image is its own person)
    assert collisions(np.array([3, 3, 5, 7, 7, 9]), ["ann", "ann", "bo", None, "", "bo"]) == {
        "distinct_fakes": 4, "shared_fakes": 2, "reals_on_shared_fakes": 4, "pseudonyms": 4,
        "fakes_shared_across_people": 1}
