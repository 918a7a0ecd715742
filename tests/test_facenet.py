"""FaceNet InceptionResnetV1: parity with facenet-pytorch 2.6.0 and the published-file loader.

Fixture ``tests/fixtures/parity/facenet_inception_resnet_v1.npz`` was recorded OUTSIDE the repository by running
facenet-pytorch 2.6.0's own ``models/inception_resnet_v1.py`` (loaded from the installed file with
``importlib.util.spec_from_file_location`` under a stub package name, so ``facenet_pytorch/__init__`` and
torchvision were never imported), built as ``InceptionResnetV1(classify=True, num_classes=8631)`` (the layout of
``20180402-114759-vggface2.pt``), filled by ``_seeded_state_dict`` below, evaluated in eval mode with
``classify=False`` on ``_inputs()`` whitened by ``fixed_image_standardization``. It holds the key/shape list,
the ``num_batches_tracked`` keys, the L2-normalized output [3, 512] and the ``last_bn`` output [3, 512].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anon_core.errors import FalcoError, MissingWeightsError
from anon_core.networks.facenet import (
    FACENET_WEIGHTS,
    InceptionResnetV1,
    facenet_key_shapes,
    load_facenet,
    whiten,
)

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "facenet_inception_resnet_v1.npz"
TOL = 1e-4  # absolute, on unit-norm embeddings (float32 CPU; seen: ~1e-7)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def _seeded_state_dict(ref: dict[str, np.ndarray], num_classes: int = 8631) -> dict[str, torch.Tensor]:
    """The recorded fill: keys in sorted order, randn * 0.05 from one seeded generator; running_var -> |t| + 1,
    BatchNorm weights -> t + 1; num_batches_tracked = 0 (draws nothing)."""
    shapes = {str(k): tuple(int(s) for s in v.split(",")) for k, v in zip(ref["keys"], ref["shapes"], strict=True)}
    shapes["logits.weight"], shapes["logits.bias"] = (num_classes, 512), (num_classes,)
    shapes.update({str(k): () for k in ref["num_batches_tracked"]})
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key in sorted(shapes):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
            continue
        t = torch.randn(shapes[key], generator=gen) * 0.05
        if key.endswith("running_var"):
            t = t.abs() + 1.0
        elif key.endswith("bn.weight"):
            t = t + 1.0
        state[key] = t
    return state


def _inputs() -> torch.Tensor:
    """Pixels 0..255 [3, 3, 160, 160]: astronaut face crop, an LFW face (6x nearest, edge-padded), seeded noise."""
    from skimage.data import astronaut, lfw_subset

    astro = astronaut()[40:200, 140:300]
    lfw0 = np.pad((np.kron(lfw_subset()[0], np.ones((6, 6))) * 255).round().astype(np.uint8), 5, mode="edge")
    noise = (torch.rand(3, 160, 160, generator=torch.Generator().manual_seed(1)) * 255).floor()
    return torch.stack(
        [
            torch.from_numpy(astro).permute(2, 0, 1).float(),
            torch.from_numpy(np.repeat(lfw0[None], 3, 0)).float(),
            noise,
        ]
    )


@pytest.fixture(scope="module")
def seeded_file(ref, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("facenet") / FACENET_WEIGHTS["vggface2"].file
    torch.save(_seeded_state_dict(ref), path)  # the published format: one flat state dict
    return path


@pytest.fixture(scope="module")
def model(seeded_file) -> InceptionResnetV1:
    return load_facenet(seeded_file)


def test_key_layout_matches_reference(ref):
    ours = facenet_key_shapes(int(ref["num_classes"]))
    assert [k for k, _ in ours] == list(ref["keys"])
    assert [",".join(map(str, s)) for _, s in ours] == list(ref["shapes"])
    tracked = [k for k in InceptionResnetV1().state_dict() if k.endswith("num_batches_tracked")]
    assert tracked == list(ref["num_batches_tracked"])


def test_parity_with_facenet_pytorch(ref, model):
    x = whiten(_inputs())
    feats = {}
    hook = model.last_bn.register_forward_hook(lambda m, i, o: feats.__setitem__("last_bn", o))
    with torch.no_grad():
        out = model(x).numpy()
    hook.remove()
    # The fixture must discriminate: its images differ by far more than the tolerance.
    assert np.abs(ref["output"][0] - ref["output"][1]).max() > 30 * TOL
    np.testing.assert_allclose(out, ref["output"], atol=TOL, rtol=0)
    np.testing.assert_allclose(feats["last_bn"].numpy(), ref["last_bn"], atol=TOL * 10, rtol=TOL)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_embed_prepares_minus_one_one_images(ref, model):
    """[-1, 1] input at 160 px goes through prepare() to the same whitening the reference expects."""
    images = _inputs() / 127.5 - 1.0
    with torch.no_grad():
        out = model.embed(images).numpy()
    np.testing.assert_allclose(out, ref["output"], atol=TOL, rtol=0)
    # Resizing follows PIL's Image.BILINEAR (facenet-pytorch's extract_face): within PIL's uint8 rounding.
    from PIL import Image
    from skimage.data import astronaut

    face = astronaut()[:500, 6:506]
    pil = np.asarray(Image.fromarray(face).resize((160, 160), Image.BILINEAR)).astype(np.float32)
    prepared = InceptionResnetV1.prepare(torch.from_numpy(face).permute(2, 0, 1)[None].float() / 127.5 - 1.0)
    assert prepared.shape == (1, 3, 160, 160)
    pixels = prepared[0].permute(1, 2, 0).numpy() * 128 + 127.5
    assert np.abs(pixels - pil).max() <= 1.0  # seen: 0.85
    ends = InceptionResnetV1.prepare(torch.tensor([-1.0, 1.0, 3.0]).view(1, 3, 1, 1).expand(1, 3, 160, 160))
    assert ends[0, :, 0, 0].tolist() == pytest.approx([-127.5 / 128, 127.5 / 128, 127.5 / 128])


def test_casia_layout_and_files_without_num_batches_tracked_load(ref, tmp_path):
    state = _seeded_state_dict(ref, num_classes=FACENET_WEIGHTS["casia-webface"].num_classes)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / FACENET_WEIGHTS["casia-webface"].file
    torch.save(state, path)
    model = load_facenet(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert "logits.weight" not in model.state_dict()  # the classifier is dropped
    torch.testing.assert_close(model.last_linear.weight, state["last_linear.weight"])


def test_missing_file_names_the_download(tmp_path):
    with pytest.raises(MissingWeightsError, match="20180402-114759-vggface2.pt"):
        load_facenet(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s.update({"conv2d_1a.conv.weight": torch.zeros(32, 3, 5, 5)}), "conv2d_1a.conv.weight has shape"),
        (lambda s: s.pop("block8.conv2d.bias"), "missing keys"),
        (lambda s: s.update({"module.extra": torch.zeros(1)}), "unexpected keys"),
        (lambda s: s.pop("logits.bias"), "come together"),
    ],
)
def test_damaged_state_dicts_are_refused(ref, tmp_path, damage, message):
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in _seeded_state_dict(ref, num_classes=4).items()}
    damage(state)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(FalcoError, match=message):
        load_facenet(path)


def test_non_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(FalcoError, match="flat state dict"):
        load_facenet(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(FalcoError, match="not a readable PyTorch checkpoint"):
        load_facenet(path)
