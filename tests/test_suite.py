"""The evaluation suite: what `evaluate_runs` computes once from the real set (features, their statistics, the
gallery embeddings) gives exactly the numbers each method gets when it computes everything itself."""

import numpy as np
import pandas as pd
import pytest

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
