"""A damaged weight file (a partial download, random bytes, a web page saved under its name) is one CheckpointError
naming the file and saying to fetch it again, for every network loader, never torch's stack trace."""

import io

import numpy as np
import pytest
import torch

from anon_core.checkpoint_file import CheckpointError
from anon_core.networks.attribute_predictors import load_anycost_predictor
from anon_core.networks.facenet import load_facenet
from anon_core.networks.inception_fid import load_fid_inception


def _damaged(kind: str) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(64, 64)}, buffer)
    whole = buffer.getvalue()
    random = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    return {"truncated zip": whole[: len(whole) // 2], "pickle byte then noise": b"\x80" + random,
            "web page": b"<!DOCTYPE html><html>Not Found</html>"}[kind]


@pytest.mark.parametrize("kind", ["truncated zip", "pickle byte then noise", "web page"])
@pytest.mark.parametrize("load", [load_fid_inception, load_anycost_predictor, load_facenet],
                         ids=["fid_inception", "anycost", "facenet"])
def test_a_damaged_weight_file_is_one_error_that_says_to_fetch_it_again(tmp_path, kind, load):
    path = tmp_path / "weights.pt"
    path.write_bytes(_damaged(kind))
    with pytest.raises(CheckpointError) as error:
        load(path)
    message = str(error.value)
    assert str(path) in message and "fetch it again" in message and "\n" not in message
    assert "weights_only` set to `False`" not in message  # torch's advice to unpickle an untrusted file
