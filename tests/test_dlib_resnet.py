"""The PyTorch port of dlib's face descriptor ResNet against dlib itself (``dlib-bin``), plus our .dat reader.

Real files come from installed packages (``face-recognition-models``, ``dlib-bin``, ``scikit-image``);
tests that need them skip with a reason when they are absent. Tolerance against dlib: 1e-4 max abs over
the 128 dimensions (measured here: about 4e-7).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from anon_core.networks import dlib_resnet
from anon_core.networks.dlib_format import DlibFormatError, read_dlib_network
from anon_core.networks.dlib_resnet import (
    DLIB_MATCH_THRESHOLD,
    dlib_metric_net_structure,
    load_dlib_descriptor,
    prepare_chips,
)

PARITY_ATOL = 1e-4  # max abs difference to dlib.compute_face_descriptor, per dimension


def _models_dir() -> Path | None:
    spec = importlib.util.find_spec("face_recognition_models")  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@pytest.fixture(scope="module")
def dat_path() -> Path:
    models = _models_dir()
    path = models / "dlib_face_recognition_resnet_model_v1.dat" if models else None
    if path is None or not path.is_file():
        pytest.skip("face-recognition-models==0.3.0 is not installed (no dlib_face_recognition_resnet_model_v1.dat)")
    return path


@pytest.fixture(scope="module")
def dlib_mod():
    return pytest.importorskip("dlib", reason="dlib-bin is not installed; it is the reference implementation")


@pytest.fixture(scope="module")
def model(dat_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dlib_resnet.DlibFaceDescriptor:
    return load_dlib_descriptor(dat_path, cache_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def chips(dat_path: Path, dlib_mod) -> np.ndarray:
    """Seven 150x150 RGB uint8 chips of real faces: astronaut (aligned, flipped, shifted) and 4 LFW faces."""
    from PIL import Image
    from skimage import data

    img = data.astronaut()
    rects = dlib_mod.get_frontal_face_detector()(img, 0)
    assert len(rects) == 1, f"expected one HOG detection in astronaut(), got {len(rects)}"
    predictor = dlib_mod.shape_predictor(str(dat_path.parent / "shape_predictor_5_face_landmarks.dat"))
    chip = dlib_mod.get_face_chip(img, predictor(img, rects[0]), 150, 0.25)
    out = [chip, chip[:, ::-1], np.roll(chip, (4, -3), axis=(0, 1))]
    for face in data.lfw_subset()[:4]:  # the first 100 are real LFW faces, 25x25 gray in [0, 1]
        gray = Image.fromarray(np.round(face * 255).astype(np.uint8)).resize((150, 150), Image.BILINEAR)
        out.append(np.repeat(np.asarray(gray)[..., None], 3, axis=2))
    return np.ascontiguousarray(np.stack(out))  # (7, 150, 150, 3)


def _to_tensor(chips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(chips).permute(0, 3, 1, 2).float()  # (B, 3, 150, 150), 0..255


def _dlib_descriptors(dlib_mod, dat_path: Path, chips: np.ndarray) -> np.ndarray:
    net = dlib_mod.face_recognition_model_v1(str(dat_path))
    return np.stack([np.asarray(net.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips])


def test_reader_parses_the_whole_network(dat_path: Path) -> None:
    layers = read_dlib_network(dat_path, dlib_metric_net_structure())
    kinds = [layer.kind for layer in layers]
    assert kinds[0] == "input_rgb_image_sized" and kinds[-1] == "loss_metric"
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("fc") == 1
    np.testing.assert_allclose(layers[0].tensors["mean_rgb"], [122.782, 117.001, 104.298], atol=1e-4)
    assert layers[1].tensors["weight"].shape == (32, 3, 7, 7)
    assert layers[1].attrs["stride_y"] == 2 and layers[1].attrs["padding_y"] == 0
    fc = layers[-2]
    assert fc.kind == "fc" and fc.tensors["weight"].shape == (128, 256) and "bias" not in fc.tensors
    assert layers[-1].attrs["distance_threshold"] == pytest.approx(DLIB_MATCH_THRESHOLD)
    n_params = sum(t.size for layer in layers for t in layer.tensors.values()) - 3  # minus the input mean
    assert 5_500_000 < n_params < 5_700_000


def test_matches_dlib_compute_face_descriptor(model, dlib_mod, dat_path: Path, chips: np.ndarray) -> None:
    expected = _dlib_descriptors(dlib_mod, dat_path, chips)
    with torch.no_grad():
        got = model(_to_tensor(chips)).double().numpy()
    assert got.shape == (len(chips), 128)
    np.testing.assert_allclose(got, expected, rtol=0, atol=PARITY_ATOL)
    # Not L2-normalized (dlib's loss_metric returns the fc output as is) and not degenerate.
    norms = np.linalg.norm(got, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-2) and np.all(norms > 0.5)
    distances = np.linalg.norm(got[:, None] - got[None], axis=-1)
    assert distances[0, 1] < DLIB_MATCH_THRESHOLD  # the astronaut and her mirror image match
    assert distances[0, 3:].min() > DLIB_MATCH_THRESHOLD  # and no LFW face matches her


def test_batch_of_four_equals_four_singles(model, chips: np.ndarray) -> None:
    x = torch.from_numpy(chips[:4]).permute(0, 3, 1, 2)  # (4, 3, 150, 150) uint8
    with torch.no_grad():
        batched = model(x.float())
        singles = torch.cat([model(x[i : i + 1]) for i in range(4)])  # uint8 singles, converted inside
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_cuda_matches_cpu(model, chips: np.ndarray, monkeypatch) -> None:
    # cuDNN convolutions default to TF32 on Ampere and later (~1e-3 error); parity needs full fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x = _to_tensor(chips[:4])
    cuda_model = copy.deepcopy(model).to("cuda")
    with torch.no_grad():
        torch.testing.assert_close(cuda_model(x.cuda()).cpu(), model(x), rtol=0, atol=PARITY_ATOL)


def test_gradients_flow_to_the_input(model, chips: np.ndarray) -> None:
    target = torch.linspace(-0.1, 0.1, 128)
    x = _to_tensor(chips[:1]).requires_grad_(True)
    loss = (model(x)[0] - target).norm()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert not model.training


def test_gradients_flow_through_prepare_chips(model) -> None:
    torch.manual_seed(0)
    images = (torch.rand(2, 3, 64, 64) * 1.6 - 0.8).requires_grad_(True)  # generator range, not 150 px
    descriptors = model(prepare_chips(images))
    descriptors.pow(2).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert (images.grad.abs().flatten(1).sum(1) > 0).all()  # every image receives gradient


def test_prepare_chips_maps_generator_range_to_dlib_input(chips: np.ndarray) -> None:
    exact = _to_tensor(chips[:2])
    images = exact / 127.5 - 1.0  # [-1, 1], already 150 px: no resize
    torch.testing.assert_close(prepare_chips(images), exact, rtol=0, atol=1e-3)
    big = torch.nn.functional.interpolate(images, size=300, mode="nearest")  # (2, 3, 300, 300)
    for mode in ("bilinear-antialias", "bilinear", "area"):
        out = prepare_chips(big, resize=mode)
        assert out.shape == (2, 3, 150, 150)
        assert (out - exact).abs().mean() < 2.0  # 2x up then down returns close to the original
    gray = prepare_chips(images[:, :1])
    assert gray.shape == (2, 3, 150, 150) and torch.equal(gray[:, 0], gray[:, 2])
    clamped = prepare_chips(torch.full((1, 3, 150, 150), 1.5))
    assert clamped.max() == 255.0
    with pytest.raises(ValueError, match="resize="):
        prepare_chips(images, resize="bicubic")


def test_wrong_chip_shape_names_the_fix(model) -> None:
    with pytest.raises(ValueError, match="prepare_chips"):
        model(torch.zeros(1, 3, 112, 112))


def test_cache_is_created_once_and_reused(dat_path: Path, tmp_path: Path, monkeypatch) -> None:
    first = load_dlib_descriptor(dat_path, cache_dir=tmp_path)
    cache = tmp_path / "dlib_face_recognition_resnet_model_v1.safetensors"
    assert cache.is_file() and [p.name for p in tmp_path.iterdir()] == [cache.name]  # no temp file left
    mtime = cache.stat().st_mtime_ns

    def no_parse(*args, **kwargs):
        raise AssertionError("the .dat was parsed again although the cache is valid")

    monkeypatch.setattr(dlib_resnet, "read_dlib_network", no_parse)
    second = load_dlib_descriptor(dat_path, cache_dir=tmp_path, dtype=torch.float64)
    assert cache.stat().st_mtime_ns == mtime
    assert next(second.parameters()).dtype == torch.float64
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=0, msg=name)

    monkeypatch.undo()
    cache.write_bytes(b"not a safetensors file")  # a damaged cache is rebuilt, not trusted
    third = load_dlib_descriptor(dat_path, cache_dir=tmp_path)
    torch.testing.assert_close(third.fc.weight, first.fc.weight, rtol=0, atol=0)
    assert cache.stat().st_size > 20_000_000


def test_different_dat_is_reconverted(dat_path: Path, tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "dat" / dat_path.name
    copy.parent.mkdir()
    shutil.copyfile(dat_path, copy)
    cache_dir = tmp_path / "cache"
    calls: list[Path] = []
    real_reader = dlib_resnet.read_dlib_network

    def counting_reader(path, structure):
        calls.append(Path(path))
        return real_reader(path, structure)

    monkeypatch.setattr(dlib_resnet, "read_dlib_network", counting_reader)
    load_dlib_descriptor(copy, cache_dir=cache_dir)
    load_dlib_descriptor(copy, cache_dir=cache_dir)
    assert len(calls) == 1
    data = bytearray(copy.read_bytes())
    assert data[17:21] == bytes.fromhex("030ad7a3")  # loss_metric margin: 3-byte mantissa of 0.04
    data[18] ^= 0x01  # a different but valid file: only the stored margin changes
    copy.write_bytes(bytes(data))
    load_dlib_descriptor(copy, cache_dir=cache_dir)
    assert len(calls) == 2


def test_corrupt_dat_gives_a_clear_error(dat_path: Path, tmp_path: Path) -> None:
    data = dat_path.read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[:200_000])
    with pytest.raises(DlibFormatError, match=r"truncated\.dat.*file ends"):
        load_dlib_descriptor(truncated, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "truncated.safetensors").exists()

    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DlibFormatError, match=r"garbage\.dat"):
        read_dlib_network(garbage, dlib_metric_net_structure())

    compressed = tmp_path / "model.dat"
    compressed.write_bytes(b"BZh91AY&SY" + data[:100])
    with pytest.raises(DlibFormatError, match="decompress"):
        read_dlib_network(compressed, dlib_metric_net_structure())

    trailing = tmp_path / "trailing.dat"
    trailing.write_bytes(data + b"\x00")
    with pytest.raises(DlibFormatError, match="trailing bytes"):
        read_dlib_network(trailing, dlib_metric_net_structure())


# --- a tiny synthetic network, written from dlib's format spec: covers the bn_con -> affine fold ---


def _int(v: int) -> bytes:
    raw = abs(v).to_bytes(max(1, (abs(v).bit_length() + 7) // 8), "little")
    return bytes([len(raw) | (0x80 if v < 0 else 0)]) + raw


def _str(s: str) -> bytes:
    return _int(len(s)) + s.encode()


def _float(v: float) -> bytes:
    mantissa, exponent = math.frexp(v)
    return _int(int(mantissa * 2**53)) + _int(exponent - 53)


def _bool(b: bool) -> bytes:
    return b"1" if b else b"0"


def _tensor(a: np.ndarray) -> bytes:
    shape = (1, 1, 1, a.size) if a.ndim == 1 else a.shape
    return _int(2) + b"".join(_int(d) for d in shape) + a.astype("<f4").tobytes()


def _alias(*shape: int) -> bytes:
    return _int(1) + b"".join(_int(d) for d in shape)


def _trailer(on_input: bool) -> bytes:
    """add_layer state after the details: 3 flags, x_grad, cached_output, then params_grad (version 2)
    or, over the input, grad_final and the sample expansion factor (version 3)."""
    empty = _tensor(np.zeros(0, np.float32))
    out = _bool(True) + _bool(True) + _bool(False) + empty + empty + empty
    return out + _int(1) if on_input else out


def test_reader_folds_bn_con_like_dlib(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 3, 1, 1)).astype(np.float32)
    b = rng.normal(size=2).astype(np.float32)
    gamma, beta = np.array([1.5, -0.5], np.float32), np.array([0.25, 2.0], np.float32)
    mean, var, eps = np.array([0.1, -0.3], np.float32), np.array([4.0, 0.25], np.float32), 1e-5
    fc = rng.normal(size=(2, 3)).astype(np.float32)  # dlib layout: (num_inputs, num_outputs)
    zeros2 = np.zeros(2, np.float32)
    blob = _int(1) + _str("loss_metric_2") + _float(0.04) + _float(0.6)
    blob += _int(2) * 4 + _int(3)  # add_layer headers: fc, avg_pool, relu, affine, then con (over the input)
    blob += _str("input_rgb_image_sized") + _float(122.782) + _float(117.001) + _float(104.298)
    blob += _int(150) + _int(150)
    con = _str("con_6") + _tensor(np.concatenate([w.ravel(), b])) + _int(2) + _int(1) + _int(1)
    con += _int(1) + _int(1) + _int(0) + _int(0) + _alias(2, 3, 1, 1) + _alias(1, 2, 1, 1)
    con += _float(1) * 2 + _float(1) + _float(0) + _bool(True) + _bool(False)
    blob += con + _trailer(on_input=True)
    bn = _str("bn_con2") + _tensor(np.concatenate([gamma, beta])) + _alias(1, 2, 1, 1) + _alias(1, 2, 1, 1)
    bn += _tensor(zeros2) + _tensor(zeros2) + _tensor(mean) + _tensor(var) + _int(100) + _int(1000)
    bn += _float(1) * 3 + _float(0) + _float(eps)
    blob += bn + _trailer(False)
    blob += _str("relu_2") + _bool(False) + _trailer(False)
    pool = _str("avg_pool_2") + _int(0) + _int(0) + _int(1) + _int(1) + _int(0) + _int(0)
    blob += pool + _trailer(False)
    fc_details = _str("fc_3") + _int(3) + _int(2) + _tensor(fc.ravel()) + _alias(2, 3, 1, 1) + _alias(0, 0, 0, 0)
    # num_outputs 3, num_inputs 2, weights alias (num_inputs, num_outputs); bias_mode 1 = FC_NO_BIAS
    fc_details += _int(1) + _float(1) * 3 + _float(0) + _bool(False)
    blob += fc_details + _trailer(False)
    path = tmp_path / "tiny.dat"
    path.write_bytes(blob)

    structure = ("loss_metric", "fc", "avg_pool", "relu", "affine", "con", "input_rgb_image_sized")
    layers = read_dlib_network(path, structure)
    assert [layer.kind for layer in layers] == list(reversed(structure))
    np.testing.assert_array_equal(layers[1].tensors["weight"], w)
    np.testing.assert_array_equal(layers[1].tensors["bias"], b)
    scale = gamma / np.sqrt(var + np.float32(eps))
    np.testing.assert_allclose(layers[2].tensors["weight"], scale, rtol=1e-6)
    np.testing.assert_allclose(layers[2].tensors["bias"], beta - scale * mean, rtol=1e-6)
    np.testing.assert_array_equal(layers[5].tensors["weight"], fc.T)
    assert layers[6].attrs["margin"] == pytest.approx(0.04)
    # A structure that does not match the bytes fails with the file named.
    with pytest.raises(DlibFormatError, match=r"tiny\.dat"):
        read_dlib_network(path, ("loss_metric", "fc", "avg_pool", "relu", "con", "input_rgb_image_sized"))


def test_env_var_sets_the_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FALCO_MODELS", str(tmp_path))
    assert dlib_resnet.default_model_cache_dir() == tmp_path
    monkeypatch.delenv("FALCO_MODELS")
    assert dlib_resnet.default_model_cache_dir() == Path.home() / ".cache" / "falco" / "models"
