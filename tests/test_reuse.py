"""Per-row reuse across runs (anon_core.reuse): a row is taken again only under the key of what decided it."""

import numpy as np

from anon_core.reuse import KEY, StoredRows, dropped_rows, merge_rows, row_keys

AXES = {"ws": 0, "loss": 1}


def _stored(keys, ws, loss):
    return {KEY: np.array(keys), "ws": np.asarray(ws, np.float32), "loss": np.asarray(loss, np.float32)}


def test_a_key_changes_with_any_input_of_its_row_or_any_shared_setting():
    w = np.zeros((2, 3), np.float32)
    base = row_keys({"margin": 0.5}, ["aa", "bb"], [w, w])
    assert base[0] != base[1]  # another image
    assert row_keys({"margin": 0.5}, ["aa", "bb"], [w, w]).tolist() == base.tolist()  # stable
    assert row_keys({"margin": 0.6}, ["aa", "bb"], [w, w])[0] != base[0]  # a setting
    nudged = w.copy()
    nudged[1, 2] = np.nextafter(np.float32(0), np.float32(1))
    assert row_keys({"margin": 0.5}, ["aa", "bb"], [nudged, w])[0] != base[0]  # one float bit of its inversion
    # the parts are hashed with their lengths: moving bytes from one part to the next is another key
    assert row_keys({}, ["ab"], ["c"])[0] != row_keys({}, ["a"], ["bc"])[0]


def test_rows_are_found_in_any_stored_value_and_merged_in_row_order():
    first = _stored(["k1", "k2"], [[1.0], [2.0]], [[10.0, 20.0]])
    second = _stored(["k3", "k2"], [[3.0], [99.0]], [[30.0, 99.0]])  # k2 again: the first value found wins
    keys = np.array(["k3", "new", "k2", "k1"])
    found, reused = StoredRows([first, second]).take(keys, AXES)
    assert found.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(reused["ws"][:, 0], [3.0, 2.0, 1.0])  # rows 0, 2, 3
    np.testing.assert_array_equal(reused["loss"][0], [30.0, 20.0, 10.0])
    merged = merge_rows(found, reused, {"ws": np.array([[7.0]], np.float32), "loss": np.array([[70.0]])}, AXES)
    np.testing.assert_array_equal(merged["ws"][:, 0], [3.0, 7.0, 2.0, 1.0])
    np.testing.assert_array_equal(merged["loss"][0], [30.0, 70.0, 20.0, 10.0])


def test_a_repeated_key_among_the_rows_takes_the_one_stored_row_for_each():
    found, reused = StoredRows([_stored(["k1"], [[1.0]], [[5.0]])]).take(np.array(["k1", "x", "k1"]), AXES)
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(reused["ws"][:, 0], [1.0, 1.0])


def test_a_stored_value_missing_a_member_or_of_another_shape_is_not_used():
    no_loss = {KEY: np.array(["k1"]), "ws": np.ones((1, 1), np.float32)}
    good = _stored(["k2"], [[2.0]], [[4.0]])
    other_shape = _stored(["k3"], [[3.0, 3.0]], [[6.0]])
    found, reused = StoredRows([no_loss, good, other_shape]).take(np.array(["k1", "k2", "k3"]), AXES)
    assert found.tolist() == [False, True, False]
    np.testing.assert_array_equal(reused["ws"], [[2.0]])


def test_the_rows_a_replacement_drops_are_kept_once_each():
    old = _stored(["k1", "k2", "k3"], [[1.0], [2.0], [3.0]], [[1.0, 2.0, 3.0]])
    moved_before = _stored(["k4", "k2"], [[4.0], [2.0]], [[4.0, 2.0]])
    kept = dropped_rows([old, moved_before], np.array(["k1", "k5"]), AXES)
    assert kept[KEY].tolist() == ["k2", "k3", "k4"]
    np.testing.assert_array_equal(kept["ws"][:, 0], [2.0, 3.0, 4.0])
    assert dropped_rows([old], np.array(["k1", "k2", "k3"]), AXES) is None
