"""Tests for evaluation.attributes: pseudo-labels, agreement, accuracy, CelebA files and the attribute classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from anon_core.networks.attribute_predictors import (
    CELEBA_ATTRIBUTES,
    TALK_TO_EDIT_HEADS,
    AnycostAttributePredictor,
    TalkToEditAttributePredictor,
)
from anon_core.networks.resnet50 import ResNetConfig
from evaluation.attributes import (
    AttributeFileError,
    ClassifierConfig,
    accuracy,
    agreement,
    classifier_labels,
    classifier_utility,
    pseudo_labels,
    read_celeba_attributes,
    train_attribute_classifier,
)
from conftest import torch_threads
from seeding import fill_deterministic_

TINY = ResNetConfig(layers=(1, 1, 1, 1), width=8)


def _seeded_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights with non-trivial BatchNorm statistics, so labels vary from image to image."""
    fill_deterministic_(model, seed)
    return model.eval()


@pytest.fixture(scope="module")
def predictors() -> list:
    return [_seeded_(AnycostAttributePredictor(TINY), 1), _seeded_(TalkToEditAttributePredictor(TINY), 2)]


def test_pseudo_labels_table(lfw_faces: np.ndarray, predictors: list) -> None:
    for predictor in predictors:
        ids = [f"lfw_{i:03d}.png" for i in range(len(lfw_faces))]
        table = pseudo_labels(lfw_faces, predictor, ids=ids, batch_size=3)
        assert table.attrs["predictor"] == predictor.name
        assert list(table.index) == ids and table.index.name == "image"
        assert list(table.columns[::2]) == list(predictor.attributes)
        assert all(table[a].dtype == bool for a in predictor.attributes)
        probs = table[[f"{a}_prob" for a in predictor.attributes]].to_numpy()
        assert ((probs >= 0) & (probs <= 1)).all()
        # batching does not change labels; uint8 and [-1, 1] tensors give the same table
        tensor = torch.from_numpy(lfw_faces).permute(0, 3, 1, 2).float() / 127.5 - 1
        again = pseudo_labels(tensor, predictor, ids=ids, batch_size=8)
        pd.testing.assert_frame_equal(table[list(predictor.attributes)], again[list(predictor.attributes)])
    anycost = pseudo_labels(lfw_faces, predictors[0])
    assert list(anycost.columns[::2]) == list(CELEBA_ATTRIBUTES)
    assert anycost[list(CELEBA_ATTRIBUTES)].to_numpy().any(axis=0).any()  # not all-False
    assert list(pseudo_labels(lfw_faces, predictors[1]).columns[::2]) == list(TALK_TO_EDIT_HEADS)


def test_agreement_of_real_set_with_itself_is_one(lfw_faces: np.ndarray, predictors: list) -> None:
    for predictor in predictors:
        real = pseudo_labels(lfw_faces, predictor)
        shuffled = pseudo_labels(lfw_faces, predictor).iloc[::-1]  # matched by image id, not position
        table = agreement(real, shuffled)
        assert list(table.index) == list(predictor.attributes)
        assert (table["agreement"] == 1.0).all() and (table["n"] == len(lfw_faces)).all()
        assert np.allclose(table["real_positive_rate"], table["anon_positive_rate"])


def test_agreement_known_answer() -> None:
    index = pd.Index(["a", "b", "c", "d"], name="image")
    real = pd.DataFrame({"Smiling": [True, True, False, False], "Young": [True, False, True, False]}, index=index)
    anon = pd.DataFrame({"Smiling": [True, False, False, False], "Young": [False, True, False, True]}, index=index)
    table = agreement(real, anon)
    assert table.loc["Smiling", "agreement"] == 0.75 and table.loc["Young", "agreement"] == 0.0
    assert table.loc["Smiling", "real_positive_rate"] == 0.5 and table.loc["Smiling", "anon_positive_rate"] == 0.25
    assert list(agreement(real, anon, attributes=["Young"]).index) == ["Young"]
    with pytest.raises(ValueError, match="only in the first"):
        agreement(real, anon.iloc[:3])
    with pytest.raises(ValueError, match="Bald"):
        agreement(real, anon, attributes=["Bald"])


def test_accuracy_against_celeba_labels(tmp_path: Path) -> None:
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("3\nSmiling Young\n0.jpg 1 -1\n1.jpg -1 -1\n2.jpg  1  1\n")
    truth = read_celeba_attributes(path)
    assert list(truth.columns) == ["Smiling", "Young"] and list(truth.index) == ["0.jpg", "1.jpg", "2.jpg"]
    assert truth.to_numpy().tolist() == [[True, False], [False, False], [True, True]]
    # rows in another order than the file: matched by image name
    predicted = pd.DataFrame({"Smiling": [True, True, True], "Young": [True, False, False]}, index=truth.index[::-1])
    table = accuracy(predicted, truth)
    assert table.loc["Smiling", "accuracy"] == pytest.approx(2 / 3) and table.loc["Young", "accuracy"] == 1.0
    bad = tmp_path / "bad.txt"
    bad.write_text("2\nSmiling\n0.jpg 1\n")
    with pytest.raises(AttributeFileError, match="bad.txt"):
        read_celeba_attributes(bad)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Attribute k present <=> colour channel k is brighter: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, 3)) < 0.5
    images = rng.integers(60, 140, (n, 32, 32, 3)).astype(np.float64) + 90 * labels[:, None, None, :]
    return images.clip(0, 255).astype(np.uint8), labels


def test_classifier_training_loss_falls_and_utility_table() -> None:
    images, labels = _synthetic(64, seed=0)
    config = ClassifierConfig(layers=(1, 1, 1, 1), width=8, image_size=32, batch_size=16, epochs=10, max_steps=12,
                              lr=3e-3, weight_decay=0.0, hflip=True, seed=0)
    logged: list[dict] = []
    model, history = train_attribute_classifier(images, labels, config, device="cpu", log=logged.append)
    losses = [entry["loss"] for entry in history]
    assert len(losses) == 12 and logged == history
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
    test_images, test_labels = _synthetic(32, seed=1)
    truth = pd.DataFrame(test_labels, columns=["Red", "Green", "Blue"])
    assert classifier_labels(model, test_images, config.image_size).shape == (32, 3)
    swapped = test_images[..., ::-1].copy()  # "anonymization" that destroys the red/blue attributes
    table = classifier_utility(model, test_images, swapped, truth, config)
    assert list(table.columns) == ["accuracy_real", "accuracy_anon", "drop", "agreement", "n",
                                   "real_positive_rate", "anon_positive_rate"]
    assert (table["n"] == 32).all() and table.loc[["Red", "Blue"], "agreement"].max() < 1.0, table
    assert table["accuracy_real"].mean() > 0.8, table
    assert table.loc[["Red", "Blue"], "drop"].mean() > 0.2 and table.loc[["Red", "Blue"], "drop"].min() > 0, table
    same = classifier_utility(model, test_images, test_images.copy(), truth, config)
    assert (same["drop"] == 0).all() and (same["agreement"] == 1).all()


def test_classifier_weights_and_labels_do_not_depend_on_the_cpu_thread_count() -> None:
    """Evaluations compared across machines must agree: with two threads BatchNorm's statistics and the weight
    gradients were summed in another order, and Adam carried the rounding into other weights and labels."""
    images, labels = _synthetic(64, seed=0)
    config = ClassifierConfig(layers=(1, 1, 1, 1), width=8, image_size=32, batch_size=32, epochs=10, max_steps=6,
                              lr=3e-3, weight_decay=0.0, hflip=True, seed=0)
    test_images, _ = _synthetic(32, seed=1)
    trained = {}
    for threads in (1, 2):
        with torch_threads(threads):
            model, history = train_attribute_classifier(images, labels, config)
            predicted = classifier_labels(model, test_images, config.image_size)
            assert torch.get_num_threads() == threads  # the caller's setting is back
        trained[threads] = model.state_dict(), [entry["loss"] for entry in history], predicted
    (weights_1, losses_1, labels_1), (weights_2, losses_2, labels_2) = trained[1], trained[2]
    assert all(torch.equal(weights_1[k], weights_2[k]) for k in weights_1), \
        {k: float((weights_1[k].double() - weights_2[k].double()).abs().max()) for k in weights_1}
    assert losses_1 == losses_2 and np.array_equal(labels_1, labels_2)


@pytest.mark.gpu
def test_classifier_trains_on_cuda() -> None:
    images, labels = _synthetic(64, seed=0)
    config = ClassifierConfig(layers=(1, 1, 1, 1), width=8, image_size=32, batch_size=16, epochs=10, max_steps=12,
                              lr=3e-3, weight_decay=0.0, hflip=True, seed=0)
    model, history = train_attribute_classifier(images, labels, config, device="cuda")
    losses = [entry["loss"] for entry in history]
    assert next(model.parameters()).is_cuda
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
    assert classifier_labels(model, images, config.image_size, device="cuda").shape == (64, 3)
