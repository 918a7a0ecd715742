"""Shared fixtures: the seeded tiny networks (built once per session) and small real face images."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _mlflow_in_tmp(tmp_path, monkeypatch):
    """Pipeline tests track to a temporary MLflow store, never <project>/mlflow.db (artifacts go beside it)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny convolutions (opt in: ``pytestmark = pytest.mark.usefixtures("one_thread")``):
    they gain nothing from threads, and on a shared 2-core machine OpenMP barriers made them 10-20x slower."""
    with torch_threads(1):
        yield


@pytest.fixture
def single_thread():
    """One torch thread for the test, whose runs must come out bit-identical: with two, MKL's sgemm rounds some of
    dlib's small products differently from run to run (docs/anonymize.md, bench/mkl_reproducibility.py)."""
    with torch_threads(1):
        yield


@contextlib.contextmanager
def torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def seeded_rng():
    """Seed 0 for the test (opt in with usefixtures); the global RNG is left as it was found."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


@pytest.fixture(scope="session")
def tiny_nets():
    from anon_core.profiles import build_networks

    return build_networks("tiny", device="cpu")


@pytest.fixture(scope="session")
def lfw_faces() -> np.ndarray:
    """The first 8 real LFW faces shipped by scikit-image, as uint8 RGB [8, 64, 64, 3]."""
    from PIL import Image
    from skimage.data import lfw_subset

    faces = (lfw_subset()[:8] * 255).round().astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(f).resize((64, 64), Image.BICUBIC).convert("RGB")) for f in faces])


@pytest.fixture(scope="session")
def lfw_tensor(lfw_faces) -> torch.Tensor:
    """[8, 3, 64, 64] float32 in [-1, 1]."""
    return torch.from_numpy(lfw_faces).permute(0, 3, 1, 2).float() / 127.5 - 1.0
