"""The evaluation suite: what `evaluate_runs` computes once from the real set (features, their statistics, the
gallery embeddings) gives exactly the numbers each method gets when it computes everything itself."""

import numpy as np
import pandas as pd
import pytest

from store_checks import Counted
from evaluation.baselines import apply_baseline
from evaluation.quality import features, seeded_extractor
from evaluation.recognizers import build_recognizer
from evaluation.suite import AnonymizedSet, evaluate_method, evaluate_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_real_side_computed_once_gives_the_numbers_of_each_method_alone(lfw_faces):
    real = lfw_faces  # 8 LFW faces, each its own identity
    source = np.array([0, 2, 3, 5, 7])
    run = AnonymizedSet("falco", apply_baseline("blur", real[source], sigma=2.0), source, [f"a{i}" for i in source])
    recognizers = [build_recognizer("dlib", crop="full")]  # LFW crops are not FFHQ-aligned
    extractor = seeded_extractor()
    shared = evaluate_runs([run], real, recognizers, extractor, baselines=("pixelate",))
    assert [r.method for r in shared] == ["falco", "pixelate"]

    for result, images in zip(shared, (run.images, apply_baseline("pixelate", real[source]))):
        alone = evaluate_method(result.method, images, real, source, recognizers, extractor,
                                real_features=features(real, extractor), names=run.names)
        pd.testing.assert_series_equal(pd.Series(result.metrics), pd.Series(alone.metrics), check_exact=True)
        pd.testing.assert_frame_equal(result.per_image, alone.per_image, check_exact=True)
        assert result.quality == alone.quality
    assert shared[0].metrics["reid/dlib/images"] == len(source)
    assert shared[0].metrics["quality/fd_seeded"] > 0  # blurred faces are not the real set


def test_a_real_gallery_read_once_and_stored_gives_the_same_numbers_without_reading_the_real_set_again(lfw_faces):
    """What the pipeline's `real_gallery` stores (`read_set` of the real set, as a dict of arrays) stands in for the real set's
    read: the same numbers to the last bit, and the real images are not read again; a gallery of another
    extractor is not used, and one lacking a recognizer has that recognizer's embeddings read alone."""
    from evaluation.suite import SetOutputs, read_set

    real, source = lfw_faces, np.array([1, 4, 6])
    run = AnonymizedSet("falco", apply_baseline("pixelate", real[source]), source, [f"a{i}" for i in source])
    recognizers = [build_recognizer("dlib", crop="full")]
    extractor = seeded_extractor()
    inline = evaluate_runs([run], real, recognizers, extractor, baselines=("blur",))

    stored = SetOutputs.from_arrays(read_set(real, recognizers, extractor).to_arrays())
    counted = Counted(real)
    again = evaluate_runs([run], counted, recognizers, extractor, baselines=("blur",), real_outputs=stored)
    for a, b in zip(inline, again):
        pd.testing.assert_series_equal(pd.Series(a.metrics), pd.Series(b.metrics), check_exact=True)
        pd.testing.assert_frame_equal(a.per_image, b.per_image, check_exact=True)
    assert counted.read == len(source)  # the blur baseline's sources only: the gallery was not read

    other = SetOutputs(embeddings=stored.embeddings, faces={}, features=stored.features, labels={}, extractor="dlib")
    counted = Counted(real)
    evaluate_runs([run], counted, recognizers, extractor, real_outputs=other)
    assert counted.read == len(real)  # features of another extractor: the gallery is read again
    lacking = SetOutputs(embeddings={}, faces={}, features=stored.features, labels={}, extractor=extractor.name)
    counted = Counted(real)
    [result] = evaluate_runs([run], counted, recognizers, extractor, real_outputs=lacking)
    assert counted.read == len(real)  # the dlib embeddings, read alone
    pd.testing.assert_series_equal(pd.Series(result.metrics), pd.Series(inline[0].metrics), check_exact=True)
