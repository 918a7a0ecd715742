"""The evaluation's per-image outputs kept by image key (evaluation.output_store): an image evaluated before is not
read again, a new image is, what comes back equals what a fresh read gives, and an evaluation served from the store
has the numbers of one that read everything."""

import numpy as np
import pandas as pd
import pytest

from store_checks import Counted, kept_keys
from evaluation.baselines import apply_baseline
from evaluation.output_store import OutputStore
from evaluation.privacy import DETECTORS
from evaluation.quality import seeded_extractor
from evaluation.recognizers import build_recognizer
from evaluation.suite import AnonymizedSet, build_attribute_predictors, evaluate_runs, read_set

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def networks():
    return dict(recognizers=[build_recognizer("dlib", crop="full")], extractor=seeded_extractor(),
                detectors=DETECTORS, predictors=build_attribute_predictors(seeded=True))


def _assert_outputs_equal(a, b, rows=slice(None), exact=True):
    check = np.testing.assert_array_equal if exact else (lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5))
    assert a.embeddings.keys() == b.embeddings.keys() and a.labels.keys() == b.labels.keys()
    for name in a.embeddings:
        check(a.embeddings[name][rows], b.embeddings[name][rows])
    check(a.features[rows], b.features[rows])
    for name in a.faces:
        np.testing.assert_array_equal(a.faces[name].faces[rows], b.faces[name].faces[rows])
    for name in a.labels:
        pd.testing.assert_frame_equal(a.labels[name].iloc[rows], b.labels[name].iloc[rows], check_exact=exact,
                                      atol=1e-5)
    assert a.extractor == b.extractor


def test_an_image_is_read_once_and_a_new_one_alone(tmp_path, lfw_faces, networks):
    faces, keys, ids = lfw_faces[:6], [f"k{i}" for i in range(6)], [f"face{i}.png" for i in range(6)]
    store = OutputStore(tmp_path / "outputs")
    fresh = read_set(faces, ids=ids, **networks)

    counted = Counted(faces)
    first, read = store.read(counted, keys, ids=ids, **networks)
    assert read == counted.read == 6
    _assert_outputs_equal(first, fresh)  # the whole set read in one go: the batches of a plain read, to the last bit

    counted = Counted(faces)
    again, read = store.read(counted, keys, ids=ids, **networks)
    assert read == counted.read == 0  # nothing read: every output came from the store
    _assert_outputs_equal(again, fresh)
    assert list(again.labels[networks["predictors"][0].name].index) == ids

    counted = Counted(faces)  # `--fresh`: every image read again, and kept
    _, read = OutputStore(tmp_path / "outputs", reuse=False).read(counted, keys, ids=ids, **networks)
    assert read == counted.read == 6
    assert len(list((tmp_path / "outputs").glob("*/*.npz"))) == 2

    # two images added in front, the rest in another order: only the two are read, every row is its image's
    more = np.concatenate([lfw_faces[6:8], faces[::-1]])
    more_keys, more_ids = ["k6", "k7", *keys[::-1]], ["face6.png", "face7.png", *ids[::-1]]
    counted = Counted(more)
    grown, read = store.read(counted, more_keys, ids=more_ids, **networks)
    assert read == counted.read == 2
    whole = read_set(more, ids=more_ids, **networks)
    _assert_outputs_equal(grown, whole, rows=slice(2, None))  # stored rows: exactly what was computed then
    _assert_outputs_equal(grown, whole, rows=slice(0, 2), exact=False)  # read in another batch: float32 rounding


def test_rows_of_one_key_are_read_once_and_get_what_the_store_keeps(tmp_path, lfw_faces, networks):
    """The swap baseline's images of one shared fake have one key: each was read in its own batch position, the store
    kept the first one's outputs, and evaluating again into the same report changed the swap row's numbers (its FD by
    2e-4) though no image was read. Each key is read once and its outputs are every such row's."""
    faces = lfw_faces[[0, 1, 0, 2, 1, 0]]  # rows 0, 2, 5 are one image (one key), rows 1 and 4 another
    keys = ["a", "b", "a", "c", "b", "a"]
    store = OutputStore(tmp_path / "outputs")
    counted = Counted(faces)
    first, read = store.read(counted, keys, **networks)
    assert read == counted.read == 3
    for same in ([0, 2, 5], [1, 4]):
        for row in same[1:]:
            np.testing.assert_array_equal(first.features[row], first.features[same[0]])
            for name in first.embeddings:
                np.testing.assert_array_equal(first.embeddings[name][row], first.embeddings[name][same[0]])
    counted = Counted(faces)
    again, read = store.read(counted, keys, **networks)
    assert read == counted.read == 0
    _assert_outputs_equal(again, first)  # from the store: the numbers of the read that kept them, to the last bit


def test_what_the_store_does_not_serve(tmp_path, lfw_faces, networks):
    faces, keys = lfw_faces[:4], ["a", None, "c", "a"]  # row 1: no key; rows 0 and 3 claim the same key
    store = OutputStore(tmp_path / "outputs")
    store.read(faces, keys, **networks)
    counted = Counted(faces)
    _, read = store.read(counted, keys, **networks)
    assert read == counted.read == 1  # an image without a key is read every time, and never kept
    [folder] = (tmp_path / "outputs").iterdir()
    [part] = folder.glob("*.npz")
    assert sorted(np.load(part)["key"]) == ["a", "c"]

    # a part that cannot be read (cut short by a disk error, say) is skipped with a warning: its images are read again
    original = part.read_bytes()
    for cut in (0, 100, len(original) // 2):  # empty, or cut short: numpy and zipfile fail in other ways
        part.write_bytes(original[:cut])
        for newer in set(folder.glob("*.npz")) - {part}:
            newer.unlink()
        counted = Counted(faces)
        with pytest.warns(UserWarning, match="not read .*; removed"):
            _, read = store.read(counted, keys, **networks)
        assert read == counted.read == 3  # "a" once: a key's rows get one read's outputs, as the store serves them
        assert not part.exists()  # damaged: removed, so the next read neither warns nor reads it again

    # a store that cannot be written (here a file where its folder goes; a full disk alike) warns, and the outputs
    # are still returned
    blocked = OutputStore(tmp_path / "blocked")
    (tmp_path / "blocked").write_text("not a folder")
    with pytest.warns(UserWarning, match="could not be kept"):
        outputs, read = blocked.read(faces, keys, **networks)
    assert read == 3 and len(outputs.features) == 4

    # other networks (here another quality extractor) have a store of their own: everything is read for them
    other = {**networks, "extractor": seeded_extractor(seed=1)}
    counted = Counted(faces)
    _, read = store.read(counted, keys, **other)
    assert read == counted.read == 3
    assert len(list((tmp_path / "outputs").iterdir())) == 2


def test_an_evaluation_served_from_the_store_has_the_numbers_of_one_that_read_everything(tmp_path, lfw_faces,
                                                                                          networks):
    """A sweep's variant defined like another has the same images under the same keys: its evaluation reads none
    of them and gets exactly the other's numbers."""
    real, source = lfw_faces, np.array([0, 2, 3, 5, 7])
    images = apply_baseline("blur", real[source], sigma=2.0)
    names, keys = [f"a{i}.png" for i in source], [f"key{i}" for i in source]
    common = dict(recognizers=networks["recognizers"], extractor=networks["extractor"],
                  predictors=networks["predictors"])
    real_labels = read_set(real, predictors=networks["predictors"]).labels
    plain = evaluate_runs([AnonymizedSet("default", images, source, names)], real, real_labels=real_labels, **common)
    store = OutputStore(tmp_path / "outputs")
    runs = [AnonymizedSet("default", images, source, names, keys),
            AnonymizedSet("m0", Counted(images), source, names, keys)]
    default, like = evaluate_runs(runs, real, store=store, real_labels=real_labels, **common)
    assert (default.images_read, like.images_read, runs[1].images.read) == (5, 0, 0)
    for result in (default, like):
        pd.testing.assert_series_equal(pd.Series(result.metrics), pd.Series(plain[0].metrics), check_exact=True)
        pd.testing.assert_frame_equal(result.per_image, plain[0].per_image, check_exact=True)
        pd.testing.assert_frame_equal(result.attributes, plain[0].attributes, check_exact=True)


def test_baseline_images_made_before_are_not_read_again(tmp_path, lfw_faces, networks):
    """New data re-evaluates the baselines over every real image; with their images' keys only the new ones are
    read (a baseline's key: its name, its parameters at the image width, its source's key)."""
    from evaluation.baselines import baseline_keys

    real, fakes = lfw_faces, lfw_faces[::-1].copy()
    common = dict(recognizers=networks["recognizers"], extractor=networks["extractor"])
    real_keys = [f"real{i}" for i in range(len(real))]
    fake_keys = [f"fake{i}" for i in range(len(real))]

    def evaluate(index, store, real_store):
        keys = {"blur": baseline_keys("blur", 64, [real_keys[i] for i in index]),
                "swap": baseline_keys("swap", 64, [fake_keys[i] for i in index])}
        return evaluate_runs([], real, baselines=("blur", "swap"), fakes=fakes[index], baseline_index=index,
                             baseline_names=[f"r{i}" for i in index], store=store, real_store=real_store,
                             baseline_keys=keys, **common)

    stores = OutputStore(tmp_path / "outputs"), OutputStore(tmp_path / "outputs" / "real", private=True)
    first = evaluate(np.arange(6), *stores)
    assert [r.images_read for r in first] == [6, 6]
    index = np.array([7, *range(6)])  # one image added in front
    grown, plain = evaluate(index, *stores), evaluate(index, None, None)
    assert [r.images_read for r in grown] == [1, 1] and [r.images_read for r in plain] == [7, 7]
    for a, b in zip(grown, plain):
        assert a.metrics.keys() == b.metrics.keys()
        np.testing.assert_allclose([a.metrics[k] for k in a.metrics], [b.metrics[k] for k in a.metrics], rtol=1e-5)

    assert baseline_keys("blur", 64, ["k"]) != baseline_keys("blur", 128, ["k"])  # sigma scales with the width
    assert baseline_keys("blur", 64, ["k"]) != baseline_keys("blur", 64, ["k"], sigma=3.0)
    assert baseline_keys("blur", 64, ["k", None])[1] is None


def test_a_real_image_removed_from_the_data_leaves_no_output_behind(tmp_path, lfw_faces, networks):
    """The real store holds identity embeddings (biometric data) of every real image read, and of the baselines that
    only hide a face (blur, pixelate, mask); an image removed from the data takes them with it, the others stay
    served from the store. Baseline outputs of real pixels go to the private real store, swap's (fakes) do not."""
    import os

    from evaluation.baselines import baseline_keys, made_from_real

    real, fakes = lfw_faces[:6], lfw_faces[::-1][:6].copy()
    real_keys, fake_keys = [f"real{i}" for i in range(6)], [f"fake{i}" for i in range(6)]
    stores = OutputStore(tmp_path / "outputs" / "real", private=True), OutputStore(tmp_path / "outputs")
    common = dict(recognizers=networks["recognizers"], extractor=networks["extractor"])

    def evaluate(index):
        keys = {"blur": baseline_keys("blur", 64, [real_keys[i] for i in index]),
                "swap": baseline_keys("swap", 64, [fake_keys[i] for i in index])}
        return evaluate_runs([], real, baselines=("blur", "swap"), fakes=fakes[index], baseline_index=index,
                             store=stores[1], real_store=stores[0], baseline_keys=keys, **common)

    stores[0].read(real, real_keys, **common)
    evaluate(np.arange(6))
    kept = kept_keys(stores[0].root)
    assert {k for k in kept if not made_from_real(k)} == set(real_keys) and len(kept) == 12  # the reals and blur's
    assert kept_keys(stores[1].root) == set(baseline_keys("swap", 64, fake_keys))  # swap shows fakes only

    assert stores[0].keep_only_real(real_keys[:4] + [None]) == 4  # real4, real5 and their blurred images
    kept = kept_keys(stores[0].root)
    assert not any(k.endswith(("real4", "real5")) for k in kept) and len(kept) == 8
    for part in stores[0].root.glob("*/*.npz"):  # written again without the rows: private still
        assert oct(os.stat(part).st_mode & 0o777) == "0o600"
    counted = Counted(real)
    _, read = stores[0].read(counted, real_keys, **common)  # the four kept are served, the two removed read again
    assert read == counted.read == 2
    assert [r.images_read for r in evaluate(np.arange(4))] == [0, 0]

    assert stores[0].keep_only_real([]) == 10 and kept_keys(stores[0].root) == set()
    assert not list(stores[0].root.iterdir())  # no folder of networks left empty
    # the anonymized images' store holds no blurred real face, even one an earlier version put there
    stores[1].read(apply_baseline("blur", real), baseline_keys("blur", 64, real_keys), **common)
    assert stores[1].forget(made_from_real) == 6
    assert kept_keys(stores[1].root) == set(baseline_keys("swap", 64, fake_keys))


def test_forget_keeps_a_part_s_place_among_the_parts(tmp_path, lfw_faces, networks):
    """A part written again without some rows keeps its time, so an output kept twice (a `--fresh` read) is still
    taken from the newer part."""
    common = dict(recognizers=networks["recognizers"], extractor=networks["extractor"])
    store = OutputStore(tmp_path / "outputs")
    store.read(lfw_faces[:3], ["a", "b", "c"], **common)
    OutputStore(tmp_path / "outputs", reuse=False).read(lfw_faces[3:5], ["a", "d"], **common)  # "a" again, newer
    [folder] = (tmp_path / "outputs").iterdir()
    older, newer = sorted(folder.glob("*.npz"))
    assert store.forget(lambda key: key == "b") == 1
    assert sorted(p.name.split("-")[0] for p in folder.glob("*.npz")) == \
        [older.name.split("-")[0], newer.name.split("-")[0]] and not older.exists() and newer.exists()
    outputs, read = store.read(Counted(lfw_faces[3:4]), ["a"], **common)
    assert read == 0
    np.testing.assert_array_equal(outputs.features, read_set(lfw_faces[3:4], **common).features)
