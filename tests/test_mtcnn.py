"""Tests for anon_core.networks.mtcnn: weights, box maths, detections on real faces, parity numbers.

Parity numbers were recorded from facenet-pytorch 2.6.0's own ``MTCNN(select_largest=False, keep_all=True)
.detect(img, landmarks=True)`` run from its installed source files (torchvision's ``batched_nms`` replaced by a
plain greedy NMS with torchvision's rule, since torchvision does not import beside this torch).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anon_core.networks import mtcnn as mtcnn_mod
from anon_core.networks.mtcnn import MTCNN, ONet, PNet, RNet, mtcnn_weights_dir, nms

skimage_data = pytest.importorskip("skimage.data")

# facenet-pytorch's output on skimage.data.astronaut() (see module docstring)
ASTRONAUT_BOX = (181.05139717, 62.1561257, 267.74731172, 172.05013817)
ASTRONAUT_SCORE = 0.99999774
ASTRONAUT_LANDMARKS = [[205.0109, 101.72746], [246.76257, 103.71408], [224.67136, 128.965],
                       [201.71611, 139.24619], [245.26549, 141.85703]]
# ... and on lfw_subset()[0], 2x nearest upscaled to 50 x 50, gray to RGB
LFW0_BOX = (3.1555223, -0.4721352, 39.9924545, 50.0421486)
LFW0_SCORE = 0.99695706
LFW0_LANDMARKS = [[15.7572937, 17.960392], [32.9485474, 17.6318855], [26.1071663, 27.7937203],
                  [18.0787144, 38.0991364], [31.1520920, 37.9274063]]


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


def lfw_rgb(index: int, upscale: int) -> np.ndarray:
    face = skimage_data.lfw_subset()[index]  # [25, 25] float in [0, 1]
    big = np.kron(face, np.ones((upscale, upscale)))  # nearest upscale
    gray = (big * 255).round().astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def grid_of_sixteen() -> np.ndarray:
    """16 LFW faces, each 3x nearest upscaled, in a 4 x 4 grid: uint8 [300, 300, 3]."""
    faces = skimage_data.lfw_subset()[:16]
    tile = np.block([[np.kron(faces[r * 4 + c], np.ones((3, 3))) for c in range(4)] for r in range(4)])
    return np.repeat((tile * 255).round().astype(np.uint8)[..., None], 3, axis=2)


# ------------------------------------------------------------------------------------------- weights
def test_weights_dir_found_without_importing_facenet_pytorch() -> None:
    folder = mtcnn_weights_dir()
    assert sorted(p.name for p in folder.glob("*.pt")) == ["onet.pt", "pnet.pt", "rnet.pt"]
    assert "facenet_pytorch" not in sys.modules


@pytest.mark.parametrize("cls,name,n_params", [(PNet, "pnet", 6_632), (RNet, "rnet", 100_178),
                                               (ONet, "onet", 389_040)])
def test_shipped_weights_load_strictly(cls: type[torch.nn.Module], name: str, n_params: int) -> None:
    state = torch.load(mtcnn_weights_dir() / f"{name}.pt", map_location="cpu", weights_only=True)
    net = cls()
    assert set(net.state_dict()) == set(state)
    net.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in net.parameters()) == n_params
    detector = MTCNN()
    loaded = getattr(detector, name).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_missing_package_and_missing_files_say_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"pnet\.pt.*pip install --no-deps facenet-pytorch==2\.6\.0"):
        MTCNN(weights_dir=tmp_path)
    monkeypatch.setattr(mtcnn_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps facenet-pytorch==2\.6\.0"):
        mtcnn_weights_dir()


# ------------------------------------------------------------------------------------------- networks and maths
def test_networks_output_shapes_and_probabilities() -> None:
    torch.manual_seed(0)
    reg, prob = PNet()(torch.randn(2, 3, 12, 12))
    assert reg.shape == (2, 4, 1, 1) and prob.shape == (2, 2, 1, 1)
    reg, prob = RNet()(torch.randn(3, 3, 24, 24))
    assert reg.shape == (3, 4) and prob.shape == (3, 2)
    reg, marks, prob = ONet()(torch.randn(3, 3, 48, 48))
    assert reg.shape == (3, 4) and marks.shape == (3, 10) and prob.shape == (3, 2)
    torch.testing.assert_close(prob.sum(1), torch.ones(3))


def test_pnet_cell_is_a_12px_window_at_stride_2(detector: MTCNN) -> None:
    # the geometry _stage1 uses to turn output cell (row, col) into a box at (2 col, 2 row), 12 px wide
    torch.manual_seed(0)
    x = torch.randn(1, 3, 40, 34)
    with torch.no_grad():
        reg, prob = detector.pnet(x)
        for row, col in [(0, 0), (5, 7), (14, 11)]:
            reg_w, prob_w = detector.pnet(x[:, :, 2 * row : 2 * row + 12, 2 * col : 2 * col + 12])
            torch.testing.assert_close(reg[0, :, row, col], reg_w[0, :, 0, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(prob[0, :, row, col], prob_w[0, :, 0, 0], atol=1e-5, rtol=1e-5)


def test_nms_union_and_min_modes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 8, 8]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # union, areas without +1: IoU(0, 1) = 81 / 119 = 0.68, IoU(0, 3) = 36 / 100
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2, 3]
    # min, areas with +1: box 3 lies inside box 0 (overlap 1.0); box 1 overlaps 100 / 121 = 0.83
    assert nms(boxes, scores, 0.7, mode="min").tolist() == [0, 2]
    assert nms(boxes, scores, 0.9, mode="min").tolist() == [0, 1, 2]
    # equal scores: union visits the lower index first, min the higher (facenet-pytorch's orders)
    twin = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    assert nms(twin, np.array([0.5, 0.5], np.float32), 0.5).tolist() == [0]
    assert nms(twin, np.array([0.5, 0.5], np.float32), 0.5, mode="min").tolist() == [1]
    with pytest.raises(ValueError, match="nms mode"):
        nms(boxes, scores, 0.5, mode="max")


def test_bad_inputs_are_refused(detector: MTCNN) -> None:
    with pytest.raises(ValueError, match=r"uint8 RGB .*\[H, W, 3\]"):
        detector.detect(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="grayscale"):
        detector.detect(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="min_face_size"):
        MTCNN(min_face_size=8)


# ------------------------------------------------------------------------------------------- detections
def test_astronaut_one_face_matches_facenet_pytorch(detector: MTCNN) -> None:
    dets = detector.detect(skimage_data.astronaut())
    assert len(dets) == 1
    det = dets[0]
    assert det.score > 0.99
    assert det.score == pytest.approx(ASTRONAUT_SCORE, abs=1e-5)
    np.testing.assert_allclose(det.box, ASTRONAUT_BOX, atol=0.01)
    np.testing.assert_allclose(det.landmarks, ASTRONAUT_LANDMARKS, atol=0.01)

    x1, y1, x2, y2 = det.box
    assert 170 < x1 < x2 < 280 and 50 < y1 < y2 < 185  # her face, not the flag or the helmet
    lm = det.landmarks
    assert lm.shape == (5, 2) and lm.dtype == np.float32
    assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2))
    left_eye, right_eye, nose, mouth_left, mouth_right = lm
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]  # image-left first
    eye_y, mouth_y = (left_eye[1] + right_eye[1]) / 2, (mouth_left[1] + mouth_right[1]) / 2
    assert eye_y < nose[1] < mouth_y
    assert left_eye[0] < nose[0] < right_eye[0]


def test_astronaut_eyes_agree_with_dlib_5_point(detector: MTCNN) -> None:
    dlib = pytest.importorskip("dlib")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        pytest.skip("face-recognition-models is not installed")
    model = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_5_face_landmarks.dat"
    img = skimage_data.astronaut()
    rects = dlib.get_frontal_face_detector()(img, 0)
    assert len(rects) == 1
    parts = np.array([[p.x, p.y] for p in dlib.shape_predictor(str(model))(img, rects[0]).parts()], float)
    # dlib's 5 points: image-right eye corners (0, 1), image-left eye corners (2, 3), nose base (4)
    dlib_eyes = np.stack([parts[2:4].mean(0), parts[0:2].mean(0)])  # [2, 2] image-left, image-right
    ours = detector.detect(img)[0].landmarks[:2]
    # measured: 1.5 px and 0.8 px, with an inter-ocular distance of 42 px
    assert np.linalg.norm(ours - dlib_eyes, axis=1).max() < 3.0


def test_no_face_on_flat_gray_or_noise(detector: MTCNN) -> None:
    assert detector.detect(np.full((256, 256, 3), 128, np.uint8)) == []
    rng = np.random.default_rng(0)
    for _ in range(2):
        assert detector.detect(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) == []
    assert detector.detect(np.zeros((10, 10, 3), np.uint8)) == []  # smaller than one P-Net window


def test_lfw_face_upscaled_2x_matches_facenet_pytorch(detector: MTCNN) -> None:
    dets = detector.detect(lfw_rgb(0, 2))
    assert len(dets) == 1
    assert dets[0].score == pytest.approx(LFW0_SCORE, abs=1e-5)
    np.testing.assert_allclose(dets[0].box, LFW0_BOX, atol=0.01)
    np.testing.assert_allclose(dets[0].landmarks, LFW0_LANDMARKS, atol=0.01)


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5])
def test_lfw_faces_upscaled_2x_are_found(detector: MTCNN, index: int) -> None:
    # 99 of the first 100 are found at 2x (index 76, a face filling its whole crop, is not); the faces sit
    # off-centre in these tight 50 px crops and the boxes overhang them
    dets = detector.detect(lfw_rgb(index, 2))
    assert len(dets) == 1 and dets[0].score > 0.9
    x1, y1, x2, y2 = dets[0].box
    assert 30 < x2 - x1 < 50 and 40 < y2 - y1 < 60 and 12 < (x1 + x2) / 2 < 38 and 12 < (y1 + y2) / 2 < 38
    left_eye, right_eye, nose, mouth_left, mouth_right = dets[0].landmarks
    assert np.all((dets[0].landmarks >= 0) & (dets[0].landmarks < 50))
    assert left_eye[0] + 10 < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_grid_of_sixteen_faces_one_detection_each_sorted(detector: MTCNN) -> None:
    img = grid_of_sixteen()
    dets = detector.detect(img)
    assert len(dets) == 16
    scores = [d.score for d in dets]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.9
    cells = {(int((d.box[1] + d.box[3]) / 2 // 75), int((d.box[0] + d.box[2]) / 2 // 75)) for d in dets}
    assert cells == {(r, c) for r in range(4) for c in range(4)}


@pytest.mark.parametrize("height", [40, 41, 63, 64, 333])
@pytest.mark.parametrize("rows", [1, 2, 7])
def test_pnet_in_strips_of_rows_equals_one_pass(detector: MTCNN, monkeypatch: pytest.MonkeyPatch, height: int,
                                                 rows: int) -> None:
    """A large pyramid level goes through P-Net in strips of output rows (its activations are GBs for a 24 MP
    photo): every output equals one pass's to float32 rounding, the last rows (P-Net's ceil-mode pooling) too."""
    level = torch.from_numpy(np.random.default_rng(height).integers(0, 256, (1, 3, height, 57)).astype(np.float32))
    whole = detector.pnet(detector._normalize(level))
    monkeypatch.setattr(mtcnn_mod, "PNET_STRIP_ROWS", rows)
    strips = detector._pnet(level)
    for a, b in zip(whole, strips):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_faces_found_in_strips_are_the_faces_found_in_one_pass(detector: MTCNN,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    img = grid_of_sixteen()
    monkeypatch.setattr(mtcnn_mod, "PNET_STRIP_ROWS", 1 << 30)
    whole = detector.detect(img)
    monkeypatch.setattr(mtcnn_mod, "PNET_STRIP_ROWS", 5)  # every level of the pyramid in strips
    strips = detector.detect(img)
    assert len(strips) == len(whole) == 16
    for a, b in zip(whole, strips):
        np.testing.assert_allclose(b.box, a.box, atol=1e-3)
        np.testing.assert_allclose(b.landmarks, a.landmarks, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(detector: MTCNN) -> None:
    img = skimage_data.astronaut()
    cpu, gpu = detector.detect(img), MTCNN(device="cuda").detect(img)
    assert len(gpu) == len(cpu) == 1
    np.testing.assert_allclose(gpu[0].box, cpu[0].box, atol=1.0)
    np.testing.assert_allclose(gpu[0].landmarks, cpu[0].landmarks, atol=1.0)
    assert gpu[0].score == pytest.approx(cpu[0].score, abs=1e-3)
