"""The evaluation on image sets left on disk: the same numbers as on arrays, with memory bounded by a few batches.

The memory tests count, for every ImageFiles and MappedImages read (baselines and generated fakes are
MappedImages), how many images one read returns and how many read images are alive at once (a read's array stays
alive while anything still holds it or a view of it)."""

import threading
import weakref

import numpy as np
import pandas as pd
import pytest
import torch

from anon_core.data.image_files import ImageFiles
from anon_core.data.image_io import save_png
from anon_core.fake_pool import generate
from evaluation.attributes import ClassifierConfig, classifier_labels, train_attribute_classifier
from evaluation.baselines import BASELINES, apply_baseline, baseline_images
from evaluation.image_sets import MappedImages, concatenate, generated_images
from evaluation.quality import seeded_extractor
from evaluation.recognizers import RECOGNIZERS, Recognizer, build_recognizer
from evaluation.suite import (
    AnonymizedSet,
    build_attribute_predictors,
    evaluate_runs,
    read_set,
    summary_table,
)
from seeding import mini_networks

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(folder, images, workers=2) -> ImageFiles:
    folder.mkdir()
    paths = [folder / f"{i:03d}.png" for i in range(len(images))]
    for path, image in zip(paths, images):
        save_png(path, image)
    return ImageFiles(paths, images.shape[1], workers=workers)


def _noise(n, size, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class ReadCounter:
    """Patches the reads of ImageFiles and MappedImages to record the largest read and the most images alive."""

    def __init__(self, monkeypatch):
        self.largest_read = self.alive = self.most_alive = self.reads = 0
        self._lock = threading.Lock()
        for cls in (ImageFiles, MappedImages):
            monkeypatch.setattr(cls, "__getitem__", self._counting(cls.__getitem__))

    def _counting(self, getitem):
        def counted(images, index):
            out = getitem(images, index)
            n = 1 if out.ndim == 3 else len(out)
            with self._lock:
                self.reads += 1
                self.largest_read = max(self.largest_read, n)
                self.alive += n
                self.most_alive = max(self.most_alive, self.alive)
            weakref.finalize(out, self._release, n)
            return out

        return counted

    def _release(self, n):
        with self._lock:
            self.alive -= n


def test_suite_on_files_gives_the_numbers_of_the_suite_on_arrays(tmp_path, lfw_faces):
    """FALCO and every baseline, read from PNGs in batches of 4, against the same images held as arrays."""
    real = lfw_faces  # 8 LFW faces at 64 px, each its own identity
    source = np.array([0, 2, 3, 5, 6, 7])
    anon = apply_baseline("blur", real[source], sigma=3.0)  # the blur baseline uses 2 px at 64 px
    fakes = np.roll(real, 3, axis=0)[source]
    names = [f"a{i}" for i in source]
    recognizers = [build_recognizer("dlib", crop="full", batch_size=4)]  # LFW crops are not FFHQ-aligned
    predictors = build_attribute_predictors(seeded=True)
    ids = [f"r{i}" for i in range(len(real))]

    def evaluate(real_set, anon_set, fakes_set):
        labels = read_set(real_set, predictors=predictors, ids=ids).labels
        results = evaluate_runs([AnonymizedSet("falco", anon_set, source, names)], real_set, recognizers,
                                seeded_extractor(), baselines=tuple(BASELINES), fakes=fakes_set,
                                predictors=predictors, real_labels=labels, batch_size=4)
        return labels, results

    on_arrays = evaluate(real, anon, fakes)
    on_files = evaluate(_files(tmp_path / "real", real), _files(tmp_path / "anon", anon),
                        _files(tmp_path / "fakes", fakes))

    for name in on_arrays[0]:
        pd.testing.assert_frame_equal(on_files[0][name], on_arrays[0][name], check_exact=True)
    arrays, files = on_arrays[1], on_files[1]
    assert [r.method for r in files] == ["falco", *BASELINES]
    pd.testing.assert_frame_equal(summary_table(files), summary_table(arrays), check_exact=True)
    for a, f in zip(arrays, files):
        pd.testing.assert_frame_equal(f.per_image, a.per_image, check_exact=True)
        pd.testing.assert_frame_equal(f.attributes, a.attributes, check_exact=True)
        assert f.quality == a.quality
    # The baselines differ from each other and from FALCO, so each row really read its own images.
    assert summary_table(files)["quality/fd_seeded"].nunique() == 1 + len(BASELINES)


def test_lazy_baselines_make_the_pixels_of_apply_baseline_in_any_batching(tmp_path):
    images, fakes = _noise(30, 48, 0), _noise(30, 48, 1)
    files = _files(tmp_path / "images", images)
    for name, baseline in BASELINES.items():
        whole = apply_baseline(name, images, fakes=fakes if baseline.needs_fakes else None)
        lazy = baseline_images(name, files, fakes=fakes if baseline.needs_fakes else None)
        assert lazy.shape == whole.shape and lazy.dtype == np.uint8 and len(lazy) == 30
        np.testing.assert_array_equal(np.concatenate([lazy[i : i + 7] for i in range(0, 30, 7)]), whole, name)
        np.testing.assert_array_equal(lazy[np.array([29, 3, 3])], whole[[29, 3, 3]], name)
        np.testing.assert_array_equal(lazy[-1], whole[-1], name)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_images("cartoon", files)
    with pytest.raises(ValueError, match="no parameter"):
        baseline_images("blur", files, radius=3)
    with pytest.raises(ValueError, match="needs the paired fake"):
        baseline_images("swap", files)
    with pytest.raises(ValueError, match="must match"):
        baseline_images("swap", files, fakes=fakes[:5])
    with pytest.raises(ValueError, match="uint8"):
        baseline_images("blur", images.astype(np.float32))


def test_fakes_generated_per_batch_are_those_generated_at_once():
    generator = mini_networks()[0]
    ws = torch.randn(40, generator.num_ws, 16, generator=torch.Generator().manual_seed(0)).numpy()
    index = np.array([5, 0, 39, 5, *range(10, 46)]) % 40  # 40 rows, repeated codes included
    at_once = generate(generator, ws[index])
    lazy = generated_images(generator, ws, index)
    assert lazy.shape == at_once.shape == (40, 32, 32, 3)
    np.testing.assert_array_equal(np.concatenate([lazy[i : i + 16] for i in range(0, 40, 16)]), at_once)


def test_shards_on_disk_concatenate_without_reading(tmp_path, monkeypatch):
    a, b = _noise(3, 32, 0), _noise(2, 32, 1)
    counter = ReadCounter(monkeypatch)
    joined = concatenate([_files(tmp_path / "a", a), np.zeros((0, 1, 1, 3), np.uint8), _files(tmp_path / "b", b)])
    assert isinstance(joined, ImageFiles) and counter.reads == 0
    np.testing.assert_array_equal(joined[:], np.concatenate([a, b]))
    with pytest.raises(ValueError, match="different sizes"):
        concatenate([_files(tmp_path / "c", _noise(1, 40, 2)), joined])


def test_evaluating_200_images_on_disk_keeps_a_few_batches_in_memory(tmp_path, monkeypatch):
    """FALCO and every baseline over 200 real and 200 anonymized PNGs, read 16 at a time."""
    n, batch = 200, 16
    real = _files(tmp_path / "real", _noise(n, 32, 0))
    anon = _files(tmp_path / "anon", _noise(n, 32, 1))
    fakes = _files(tmp_path / "fakes", _noise(n, 32, 2))
    source = np.random.default_rng(3).permutation(n)

    def mean_colour(x: torch.Tensor) -> torch.Tensor:  # a weightless recognizer: this test is about reading
        return x.mean(dim=(2, 3))  # (B, 3)

    recognizer = Recognizer(RECOGNIZERS["dlib"], mean_colour, crop="full", batch_size=8)
    counter = ReadCounter(monkeypatch)
    results = evaluate_runs([AnonymizedSet("falco", anon, source)], real, [recognizer], seeded_extractor(),
                            baselines=tuple(BASELINES), fakes=fakes, batch_size=batch)

    assert [r.metrics["reid/dlib/images"] for r in results] == [n] * (1 + len(BASELINES))
    assert counter.reads >= 6 * n // batch  # the real set, FALCO's and every baseline's images were all read
    assert counter.largest_read == batch
    # Seen: at most 48 images alive (the batch being evaluated and the two read ahead); a whole set would be 200.
    assert counter.most_alive <= 5 * batch < n


def test_classifier_trains_on_files_as_on_the_array_reading_one_batch_at_a_time(tmp_path, monkeypatch):
    images = _noise(40, 32, 0)
    images[:20, :8] = 255  # a learnable attribute: a white band on top
    labels = np.zeros((40, 2), bool)
    labels[:20, 0] = True
    labels[::3, 1] = True
    config = ClassifierConfig(layers=(1, 1, 1, 1), width=8, image_size=32, batch_size=8, epochs=2, max_steps=None,
                              lr=1e-4, weight_decay=0.0, hflip=True, seed=3)
    from_array, history = train_attribute_classifier(images, labels, config)

    files = _files(tmp_path / "train", images)
    counter = ReadCounter(monkeypatch)
    from_files, history_files = train_attribute_classifier(files, labels, config)
    predicted = classifier_labels(from_files, files, config.image_size, batch_size=8)

    assert [h["loss"] for h in history_files] == [h["loss"] for h in history]
    for key, value in from_array.state_dict().items():
        assert torch.equal(from_files.state_dict()[key], value), key
    np.testing.assert_array_equal(predicted, classifier_labels(from_array, images, config.image_size, batch_size=8))
    assert counter.largest_read == config.batch_size
    assert counter.most_alive <= 4 * config.batch_size < len(images)  # seen: 24, the batch and two read ahead
