"""Tests for anon_core.networks.resnet50 and anon_core.networks.attribute_predictors (Anycost GAN, Talk-to-Edit).

Parity fixtures (tests/fixtures/parity/attr_*.npz) were recorded OUTSIDE the repo by running the reference code on
CPU with state dicts in the references' exact key layouts, filled by `seeded_state_dict` below (same rule):
- attr_anycost_resnet50.npz: torchvision 0.11.1's own `models/resnet.py` (from the PyPI wheel; torchvision cannot
  be imported beside this torch, so only its model file was loaded, through a stub package), built as anycost-gan
  `models/__init__.py` does (`resnet50()`, `fc = Linear(2048, 80)`), fed as `metrics/attribute_consistency.py`
  does (clamp, bilinear align_corners=True to 256), logits viewed [N, 40, 2].
- attr_talk_to_edit.npz: Talk-to-Edit's `models/archs/attribute_predictor_arch.py` with `configs/attributes_5.json`
  (commit 72c45e10), `load_state_dict(strict=True)`, input = `ToTensor` [0, 1] -> area resize to 128 -> ImageNet
  mean/std, the five head outputs.
Each holds the reference's key list and shapes, two uint8 192 px crops of skimage's astronaut, and the outputs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anon_core.checkpoint_file import CheckpointError
from anon_core.errors import MissingWeightsError
from anon_core.networks.attribute_predictors import (
    ANYCOST_FILE,
    ANYCOST_URL,
    CELEBA_ATTRIBUTES,
    TALK_TO_EDIT_HEADS,
    TALK_TO_EDIT_REDUCTION,
    AnycostAttributePredictor,
    TalkToEditAttributePredictor,
    load_anycost_predictor,
    load_talk_to_edit_predictor,
)
from anon_core.networks.resnet50 import RESNET50, CheckpointMismatchError, ResNet, ResNetConfig
from seeding import seeded_state_dict

PARITY = Path(__file__).parent / "fixtures" / "parity"
TINY = ResNetConfig(layers=(1, 1, 1, 1), width=4)  # narrow backbone for behaviour tests




def _fixture(name: str) -> tuple[list[tuple[str, list[int]]], torch.Tensor, dict[str, np.ndarray]]:
    data = np.load(PARITY / name)
    keys_shapes = list(zip(data["keys"].tolist(), json.loads(str(data["shapes_json"])), strict=True))
    images = torch.from_numpy(data["input_uint8"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (2, 3, 192, 192)
    outputs = {k: data[k] for k in data.files if k not in ("keys", "shapes_json", "input_uint8")}
    return keys_shapes, images, outputs


def _keys_shapes(module: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


def test_celeba_attribute_order() -> None:
    assert len(CELEBA_ATTRIBUTES) == 40 and len(set(CELEBA_ATTRIBUTES)) == 40
    expected = {"5_o_Clock_Shadow": 0, "Bangs": 5, "Eyeglasses": 15, "Male": 20, "No_Beard": 24, "Smiling": 31}
    assert {a: CELEBA_ATTRIBUTES.index(a) for a in expected} == expected
    assert CELEBA_ATTRIBUTES[-1] == "Young"


def test_resnet_layout_matches_torchvision_resnet50() -> None:
    """Key names, order and shapes equal torchvision's resnet50 (with Anycost's 80-way fc)."""
    reference, _, _ = _fixture("attr_anycost_resnet50.npz")
    ours = _keys_shapes(ResNet(ResNetConfig(num_classes=80)))
    assert ours == reference
    assert len(reference) == 320
    assert RESNET50.feature_dim == 2048
    features = ResNet(ResNetConfig(num_classes=None))
    assert features.fc is None and not any(k.startswith("fc.") for k in features.state_dict())


def test_anycost_loader_parity(tmp_path: Path) -> None:
    keys_shapes, images, outputs = _fixture("attr_anycost_resnet50.npz")
    path = tmp_path / ANYCOST_FILE
    torch.save({"state_dict": seeded_state_dict(keys_shapes)}, path)
    model = load_anycost_predictor(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        logits = model.pair_logits(images)  # 192 px in: the predictor resizes to 256 itself
    reference = torch.from_numpy(outputs["logits"])
    assert logits.shape == (2, 40, 2)
    assert (logits - reference).abs().max() <= 1e-4 * max(1.0, reference.abs().max().item())
    labels = model.labels(images)
    assert list(labels) == list(CELEBA_ATTRIBUTES)
    assert torch.equal(torch.stack([labels[a] for a in CELEBA_ATTRIBUTES], 1), reference.argmax(-1) == 1)


def test_talk_to_edit_loader_parity(tmp_path: Path) -> None:
    keys_shapes, images, outputs = _fixture("attr_talk_to_edit.npz")
    assert {k.split(".")[0] for k, _ in keys_shapes if k.startswith("classifier")} == set(TALK_TO_EDIT_HEADS.values())
    ours = _keys_shapes(TalkToEditAttributePredictor())
    assert sorted(ours) == sorted(keys_shapes)  # head registration order differs; names and shapes are exact
    state = seeded_state_dict(keys_shapes)
    for prefix in ("", "module."):  # a DataParallel-saved copy loads too
        path = tmp_path / f"{prefix}predictor_128.pth.tar"
        torch.save({"state_dict": {prefix + k: v for k, v in state.items()}, "epoch": 3}, path)
        model = load_talk_to_edit_predictor(path)
        with torch.no_grad():
            levels = model.level_logits(images)  # 192 px in: area-resized to 128 inside
        for name in TALK_TO_EDIT_HEADS:
            reference = torch.from_numpy(outputs[f"logits_{name}"])
            assert (levels[name] - reference).abs().max() <= 1e-4, name


def _tiny_anycost(present: set[str]) -> AnycostAttributePredictor:
    """A predictor whose fc ignores the image: pair i = [0, 2] when attribute i is in `present`, else [2, 0]."""
    model = AnycostAttributePredictor(TINY).eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        bias = torch.tensor([[0.0, 2.0] if a in present else [2.0, 0.0] for a in CELEBA_ATTRIBUTES])  # (40, 2)
        model.fc.bias.copy_(bias.view(80))  # logits.view(-1, 40, 2): pair i is fc outputs 2i, 2i+1
    return model


def test_anycost_argmax_semantics() -> None:
    present = {"Smiling", "Young", "5_o_Clock_Shadow", "Eyeglasses"}
    model = _tiny_anycost(present)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        labels, probs = model.labels(images), model.predict(images)
    p_present = torch.softmax(torch.tensor([0.0, 2.0]), 0)[1].item()  # 0.881
    for attribute in CELEBA_ATTRIBUTES:
        expected = attribute in present
        assert labels[attribute].tolist() == [expected] * 3, attribute
        assert torch.allclose(probs[attribute], torch.full((3,), p_present if expected else 1 - p_present)), attribute
    tie = torch.zeros(1, 40, 2)
    assert not AnycostAttributePredictor.labels_from_logits(tie).any()  # argmax of a tie is index 0: absent


def _one_hot_logits(level: int, batch: int = 1) -> torch.Tensor:
    logits = torch.full((batch, 6), -4.0)
    logits[:, level] = 4.0
    return logits


def test_talk_to_edit_reduction_table() -> None:
    expected_present_levels = {
        "Bangs": {1, 2, 3, 4, 5},
        "Eyeglasses": {1, 2, 3, 4, 5},
        "No_Beard": {0},
        "Smiling": {1, 2, 3, 4, 5},
        "Young": {0, 1, 2},
    }
    assert {k: set(v) for k, v in TALK_TO_EDIT_REDUCTION.items()} == expected_present_levels
    for level in range(6):
        probs, labels = TalkToEditAttributePredictor.reduce({a: _one_hot_logits(level) for a in TALK_TO_EDIT_HEADS})
        for attribute, levels in expected_present_levels.items():
            assert labels[attribute].item() == (level in levels), (attribute, level)
            assert (probs[attribute].item() > 0.5) == (level in levels), (attribute, level)
    # P(present) is the softmax mass on the present levels; the label follows the argmax level.
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.3, 1e-9, 1e-9, 1e-9]]))
    probs, labels = TalkToEditAttributePredictor.reduce({"Bangs": logits, "No_Beard": logits})
    assert abs(probs["Bangs"].item() - 0.6) < 1e-5 and not labels["Bangs"].item()
    assert abs(probs["No_Beard"].item() - 0.4) < 1e-5 and labels["No_Beard"].item()


def test_talk_to_edit_heads_are_wired_by_name() -> None:
    """Setting one head's final bias moves only that attribute's level."""
    model = TalkToEditAttributePredictor(TINY).eval()
    chosen = {"Bangs": 3, "Eyeglasses": 0, "No_Beard": 2, "Smiling": 5, "Young": 4}
    with torch.no_grad():
        for attribute, level in chosen.items():
            final = getattr(model, TALK_TO_EDIT_HEADS[attribute])[1]
            final.weight.zero_()
            final.bias.copy_(_one_hot_logits(level)[0])
        levels = model.level_logits(torch.zeros(2, 3, 128, 128))
        labels = model.labels(torch.zeros(2, 3, 128, 128))
    assert {a: levels[a].argmax(-1).tolist() for a in chosen} == {a: [lv, lv] for a, lv in chosen.items()}
    assert {a: labels[a].tolist()[0] for a in chosen} == {
        "Bangs": True, "Eyeglasses": False, "No_Beard": False, "Smiling": True, "Young": False,
    }  # fmt: skip


def test_input_preparation() -> None:
    anycost, tte = AnycostAttributePredictor(TINY), TalkToEditAttributePredictor(TINY)
    x256 = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    assert torch.equal(anycost.prepare(x256), x256.clamp(-1, 1))  # 256 px: only clamped, no normalization
    x64 = x256[:, :, ::4, ::4].clamp(-1, 1)
    up = anycost.prepare(x64)
    assert up.shape == (2, 3, 256, 256)
    assert torch.allclose(up[..., 0, 0], x64[..., 0, 0]) and torch.allclose(up[..., -1, -1], x64[..., -1, -1])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = x256.clamp(-1, 1)
    area = ((x + 1) / 2).view(2, 3, 128, 2, 128, 2).mean(dim=(3, 5))  # 2x2 block means
    assert torch.allclose(tte.prepare(x), (area - mean) / std, atol=1e-6)


def _tiny_checkpoint(tmp_path: Path, model: torch.nn.Module, edit=None, name: str = "ckpt.pt") -> Path:
    state = dict(model.state_dict())
    if edit is not None:
        edit(state)
    path = tmp_path / name
    torch.save({"state_dict": state}, path)
    return path


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda s: s.pop("layer2.0.conv2.weight"), "missing keys: layer2.0.conv2.weight"),
        (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "unexpected keys: extra.weight"),
        (lambda s: s.__setitem__("fc.bias", torch.zeros(3)), "fc.bias: file (3,) vs network (80,)"),
    ],
)
def test_anycost_checkpoint_mismatch_names_key_and_file(tmp_path: Path, edit, fragment: str) -> None:
    path = _tiny_checkpoint(tmp_path, AnycostAttributePredictor(TINY), edit)
    with pytest.raises(CheckpointMismatchError) as error:
        load_anycost_predictor(path, backbone=TINY)
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_talk_to_edit_checkpoint_mismatch(tmp_path: Path) -> None:
    path = _tiny_checkpoint(
        tmp_path, TalkToEditAttributePredictor(TINY), lambda s: s.pop("classifier40Young.1.bias"), "x.pth.tar"
    )
    with pytest.raises(CheckpointMismatchError, match="classifier40Young.1.bias"):
        load_talk_to_edit_predictor(path, backbone=TINY)
    # an old checkpoint without BatchNorm step counters still loads
    model = TalkToEditAttributePredictor(TINY)
    path = _tiny_checkpoint(
        tmp_path, model, lambda s: [s.pop(k) for k in list(s) if k.endswith("num_batches_tracked")], "old.pth.tar"
    )
    assert isinstance(load_talk_to_edit_predictor(path, backbone=TINY), TalkToEditAttributePredictor)


def test_missing_weights_and_unsafe_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingWeightsError) as error:
        load_anycost_predictor(tmp_path / ANYCOST_FILE)
    assert ANYCOST_FILE in str(error.value) and ANYCOST_URL in str(error.value)
    assert "falco models fetch anycost-attribute-predictor" in str(error.value)
    with pytest.raises(MissingWeightsError, match="predictor_128.pth.tar"):
        load_talk_to_edit_predictor(tmp_path / "predictor_128.pth.tar")
    monkeypatch.setenv("FALCO_MODELS", str(tmp_path / "empty_store"))  # default paths: the (empty) model store
    with pytest.raises(MissingWeightsError, match=r"empty_store.*eval_predictor\.pth\.tar"):
        load_talk_to_edit_predictor()
    path = tmp_path / "with_objects.pth.tar"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors"):
        load_talk_to_edit_predictor(path, backbone=TINY)


@pytest.mark.gpu
def test_loaders_on_cuda_match_reference(tmp_path: Path) -> None:
    """Same parity on the GPU; tolerance 1e-2 relative because cuDNN may run convolutions in TF32."""
    for name, loader, file in (
        ("attr_anycost_resnet50.npz", load_anycost_predictor, ANYCOST_FILE),
        ("attr_talk_to_edit.npz", load_talk_to_edit_predictor, "eval_predictor.pth.tar"),
    ):
        keys_shapes, images, outputs = _fixture(name)
        torch.save({"state_dict": seeded_state_dict(keys_shapes)}, tmp_path / file)
        model = loader(tmp_path / file, device="cuda")
        with torch.no_grad():
            if isinstance(model, AnycostAttributePredictor):
                got = {"logits": model.pair_logits(images.cuda()).cpu()}
            else:
                got = {f"logits_{k}": v.cpu() for k, v in model.level_logits(images.cuda()).items()}
        for key, value in got.items():
            reference = torch.from_numpy(outputs[key])
            assert (value - reference).abs().max() <= 1e-2 * max(1.0, reference.abs().max().item()), (name, key)
