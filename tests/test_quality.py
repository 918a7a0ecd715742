"""Tests for evaluation.quality (Frechet / kernel distance, named extractors) and anon_core.networks.inception_fid.

Parity fixture tests/fixtures/parity/fid_inception_pool3.npz was recorded OUTSIDE the repo by running pytorch-fid's
own `src/pytorch_fid/inception.py` (commit b9c18118, unmodified) on CPU, with torchvision 0.11.1's own
`models/inception.py` (from the PyPI wheel, loaded through a stub package because torchvision cannot be imported
beside this torch) as the base of `fid_inception_v3()`, whose download was replaced by a state dict in the
`pt_inception-2015-12-05-6726825d.pth` key layout filled by `seeded_state_dict` below; `InceptionV3([3])` with
resize_input and normalize_input on [0, 1] input. It holds that key list with shapes, two uint8 192 px crops of
skimage's astronaut and the pool3 features [2, 2048].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anon_core.errors import MissingWeightsError
from anon_core.networks.inception_fid import FID_INCEPTION_FILE, FID_INCEPTION_URL, FIDInceptionV3
from evaluation import quality
from evaluation.quality import (
    build_extractor,
    compare_features,
    compare_image_sets,
    dlib_extractor,
    feature_statistics,
    features,
    frechet_distance,
    inception_extractor,
    kid,
    seeded_extractor,
)
from seeding import seeded_state_dict

PARITY = Path(__file__).parent / "fixtures" / "parity"




@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """60 real LFW faces shipped by scikit-image, uint8 RGB [60, 64, 64, 3]."""
    from skimage.data import lfw_subset

    gray = (lfw_subset()[:60] * 255).round().astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(f).resize((64, 64), Image.BICUBIC).convert("RGB")) for f in gray])


def _noisy(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, images.shape)
    return np.clip(images.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


def test_frechet_distance_closed_form_diagonal_gaussians() -> None:
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    var1, var2 = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert abs(frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) - expected) < 1e-9
    # the same Gaussians in a rotated basis (commuting covariances): same distance
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert abs(rotated - expected) < 1e-8
    assert abs(frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1))) < 1e-12
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(mu1, np.diag(var1), mu2[:3], np.diag(var2[:3]))


def test_feature_statistics_matches_numpy() -> None:
    feats = np.random.default_rng(1).normal(size=(50, 4))
    mu, sigma = feature_statistics(feats)
    assert np.allclose(mu, feats.mean(0)) and np.allclose(sigma, np.cov(feats.T))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(feats[:1])


def test_kid_known_answer() -> None:
    """With subset_size >= N every subset is the whole set: the unbiased MMD^2, written out by hand."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(7, 3))
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kid(x, y, subsets=5, subset_size=100, seed=3)
    assert abs(mean - (xx + yy - 2 * xy)) < 1e-10 and std < 1e-10
    assert kid(x, y, subsets=20, subset_size=4, seed=1) == kid(x, y, subsets=20, subset_size=4, seed=1)
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], y)


def _check_distances_grow(real: np.ndarray, extractor, sigmas=(10.0, 20.0, 40.0)) -> list:
    base = features(real, extractor)
    results = [compare_features(base, base, extractor, kid_subsets=50, kid_subset_size=len(real))]
    results += [
        compare_features(base, features(_noisy(real, s), extractor), extractor, kid_subsets=50, kid_subset_size=30)
        for s in sigmas
    ]
    fds = [r.fd for r in results]
    kds = [r.kd_mean for r in results]
    assert abs(fds[0]) < 1e-3, fds
    assert fds[1] < fds[2] < fds[3], fds
    assert fds[1] > 100 * abs(fds[0]), fds
    assert kds[1] < kds[2] < kds[3], kds
    assert abs(kds[0]) < kds[1], kds  # the unbiased estimate on one set against itself is ~0 (may be negative)
    return results


def test_dlib_fallback_fd_and_kd(faces: np.ndarray) -> None:
    """The offline fallback (dlib's trained descriptor ResNet): ~0 on the set itself, growing with pixel noise."""
    extractor = dlib_extractor()
    results = _check_distances_grow(faces[:40], extractor)
    record = results[1].as_dict()
    assert record["fd_metric"] == "fd_dlib" and record["kd_metric"] == "kd_dlib"
    assert record["feature_extractor"] == "dlib_resnet_v1_pool256" and record["input_size"] == 150
    assert len(record["weights_sha256"]) == 64 and record["resize"]
    assert set(results[1].metrics()) == {"fd_dlib", "kd_dlib", "kd_dlib_std"}  # subsets of 30 of 40 images
    assert results[1].kd_std > 0
    # Subsets as large as both sets are all the whole set: the std is 0 by construction and is not reported.
    assert set(results[0].metrics()) == {"fd_dlib", "kd_dlib"} and results[0].kid_subset_size == 40
    assert not any("fid" in key for key in results[1].metrics())  # never called FID


def test_seeded_extractor_and_batching(faces: np.ndarray) -> None:
    extractor = seeded_extractor(dim=16, seed=0)
    one = features(faces[:10], extractor, batch_size=10)
    tensor = torch.from_numpy(faces[:10]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert np.allclose(one, features(tensor, extractor, batch_size=3), atol=1e-6)  # uint8 == tensor, any batch
    result = compare_image_sets(faces, faces, extractor, kid_subsets=10, kid_subset_size=60)
    assert abs(result.fd) < 1e-3 and result.fd_metric == "fd_seeded" and result.n_real == 60
    assert result.feature_extractor == "seeded_convnet_d16_s0" and result.weights_sha256 is None
    noisy = compare_image_sets(faces, _noisy(faces, 60.0), extractor, kid_subsets=10, kid_subset_size=60)
    assert noisy.fd > 100 * max(abs(result.fd), 1e-9)


def _seeded_inception_file(tmp_path: Path) -> tuple[Path, torch.Tensor, np.ndarray]:
    data = np.load(PARITY / "fid_inception_pool3.npz")
    keys_shapes = list(zip(data["keys"].tolist(), json.loads(str(data["shapes_json"])), strict=True))
    path = tmp_path / "seeded_inception.pth"
    torch.save(seeded_state_dict(keys_shapes), path)
    images = torch.from_numpy(data["input_uint8"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return path, images, data["pool3"]


def test_inception_layout_matches_pytorch_fid() -> None:
    data = np.load(PARITY / "fid_inception_pool3.npz")
    reference = list(zip(data["keys"].tolist(), json.loads(str(data["shapes_json"])), strict=True))
    ours = [(k, list(v.shape)) for k, v in FIDInceptionV3().state_dict().items()]
    assert ours == reference
    assert ("fc.weight", [1008, 2048]) in ours and not any(k.startswith("AuxLogits") for k, _ in ours)


def test_inception_loader_parity_and_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, images, pool3 = _seeded_inception_file(tmp_path)
    extractor = inception_extractor(path)
    with torch.no_grad():
        ours = extractor.fn(images).numpy()  # 192 px in: bilinear to 299 inside
    assert ours.shape == (2, 2048)
    assert np.abs(ours - pool3).max() <= 1e-4 * max(1.0, np.abs(pool3).max())
    # seeded weights are not the published file: the distance must not be called FID
    assert extractor.fd_metric == "fd_inception_unverified" and not extractor.official_fid
    # the same code path with the published file's sha256 prefix yields the FID names
    monkeypatch.setattr("anon_core.networks.inception_fid.FID_INCEPTION_SHA256_PREFIX", extractor.weights_sha256[:8])
    official = inception_extractor(path)
    assert (official.fd_metric, official.kd_metric, official.name) == (
        "fid_inception", "kid_inception", "inception_v3_pytorch_fid",
    )  # fmt: skip
    assert official.resize == "legacy_pytorch" and official.input_size == 299


def test_extractor_resolution_and_missing_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = tmp_path / FID_INCEPTION_FILE
    with pytest.raises(MissingWeightsError) as error:
        inception_extractor(absent)
    assert FID_INCEPTION_FILE in str(error.value) and FID_INCEPTION_URL in str(error.value)
    with pytest.raises(MissingWeightsError, match="falco models fetch fid-inception"):
        build_extractor("inception", inception_weights=absent)
    monkeypatch.setenv("FALCO_MODELS", str(tmp_path / "empty_store"))  # default path: the (empty) model store
    with pytest.raises(MissingWeightsError, match="empty_store"):
        inception_extractor()
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown feature extractor 'fid'"):
        build_extractor("fid")
    fallback = build_extractor("auto", inception_weights=absent)  # no Inception weights: the named fallback
    assert (fallback.fd_metric, fallback.kd_metric) == ("fd_dlib", "kd_dlib")
    assert quality.EXTRACTORS == ("inception", "dlib", "seeded", "auto")
