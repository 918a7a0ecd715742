"""MTCNN face detector with five facial landmarks, in plain PyTorch.

Follows facenet-pytorch 2.6.0 (timesler/facenet-pytorch, ``models/mtcnn.py`` and
``models/utils/detect_face.py``), itself a port of Zhang et al., "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks" (2016): the P/R/O-Net layers and state-dict key names, the
weights shipped in its wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``), the defaults (min face 20 px,
thresholds 0.6/0.7/0.7, pyramid factor 0.709), the input normalization ``(x - 127.5) * 0.0078125``, area
resampling, the pyramid, NMS, box-regression and squaring steps, so detections match that package's
``MTCNN.detect``. facenet-pytorch itself is never imported (it pins old torch/numpy and imports
torchvision); only its weight files are read, with ``torch.load(weights_only=True)``.

Behaviour kept from facenet-pytorch on purpose: a candidate box that sticks out of the image is cropped to the
image and the crop resized to a square (the original MTCNN zero-pads instead). One deliberate difference: a
candidate whose crop is empty is dropped together with its box (facenet-pytorch would misalign boxes and crops).
Box arithmetic stays in float32, as in the reference, so that truncation to integer crop edges agrees with it:
in float64, one of 120 test images got a crop shifted by a pixel and a score 1e-3 off.

Landmark order: image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner
(for a frontal face: the subject's right eye first), each (x, y) in pixels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anon_core.checkpoint_file import read_checkpoint

__all__ = ["Detection", "MTCNN", "ONet", "PNet", "RNet", "mtcnn_weights_dir", "nms"]

FACENET_PIP = "pip install --no-deps facenet-pytorch==2.6.0"
WEIGHT_FILES = {"pnet": "pnet.pt", "rnet": "rnet.pt", "onet": "onet.pt"}
PNET_STRIP_ROWS = 256
"""P-Net output rows per pass over a pyramid level: a larger level goes in strips of rows, so its activations (10
to 32 channels at the level's full and half size: 1.2 GB for a 24 MP photo in one pass) stay those of a strip."""


# --------------------------------------------------------------------------------------------- networks
class PNet(nn.Module):
    """Proposal net: fully convolutional, 12 x 12 receptive field, stride 2.

    Returns (box regression [N, 4, h, w], face probability [N, 2, h, w]); channel 1 is "face".
    """

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(3, 10, 3, **kw)
        self.prelu1 = nn.PReLU(10, **kw)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3, **kw)
        self.prelu2 = nn.PReLU(16, **kw)
        self.conv3 = nn.Conv2d(16, 32, 3, **kw)
        self.prelu3 = nn.PReLU(32, **kw)
        self.conv4_1 = nn.Conv2d(32, 2, 1, **kw)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1, **kw)  # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(dim=1)


def _caffe_flatten(x: torch.Tensor) -> torch.Tensor:
    """Flatten [N, C, H, W] in the (W, H, C) order that the Caffe-ported dense weights expect."""
    return x.permute(0, 3, 2, 1).flatten(1)  # [N, C, H, W] -> [N, W*H*C]


class RNet(nn.Module):
    """Refine net on 24 x 24 crops. Returns (box regression [N, 4], face probability [N, 2])."""

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(3, 28, 3, **kw)
        self.prelu1 = nn.PReLU(28, **kw)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3, **kw)
        self.prelu2 = nn.PReLU(48, **kw)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2, **kw)
        self.prelu3 = nn.PReLU(64, **kw)
        self.dense4 = nn.Linear(576, 128, **kw)  # 576 = 3 * 3 * 64
        self.prelu4 = nn.PReLU(128, **kw)
        self.dense5_1 = nn.Linear(128, 2, **kw)
        self.dense5_2 = nn.Linear(128, 4, **kw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))  # [N, 64, 3, 3]
        x = self.prelu4(self.dense4(_caffe_flatten(x)))
        return self.dense5_2(x), self.dense5_1(x).softmax(dim=1)


class ONet(nn.Module):
    """Output net on 48 x 48 crops.

    Returns (box regression [N, 4], landmarks [N, 10] as x0..x4 then y0..y4 relative to the box,
    face probability [N, 2]).
    """

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(3, 32, 3, **kw)
        self.prelu1 = nn.PReLU(32, **kw)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3, **kw)
        self.prelu2 = nn.PReLU(64, **kw)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3, **kw)
        self.prelu3 = nn.PReLU(64, **kw)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2, **kw)
        self.prelu4 = nn.PReLU(128, **kw)
        self.dense5 = nn.Linear(1152, 256, **kw)  # 1152 = 3 * 3 * 128
        self.prelu5 = nn.PReLU(256, **kw)
        self.dense6_1 = nn.Linear(256, 2, **kw)
        self.dense6_2 = nn.Linear(256, 4, **kw)
        self.dense6_3 = nn.Linear(256, 10, **kw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))  # [N, 128, 3, 3]
        x = self.prelu5(self.dense5(_caffe_flatten(x)))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(dim=1)


# --------------------------------------------------------------------------------------------- weights
def mtcnn_weights_dir() -> Path:
    """Folder holding facenet-pytorch's ``pnet.pt``/``rnet.pt``/``onet.pt``, found without importing it."""
    spec = importlib.util.find_spec("facenet_pytorch")  # a top-level find_spec does not run the package
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"MTCNN weights come from the facenet-pytorch wheel, which is not installed. Run: {FACENET_PIP}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; reinstall the weights with: {FACENET_PIP}")
    return folder


def _load_net(net: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"MTCNN weight file {path} is missing; pass weights_dir= a folder holding "
            f"{', '.join(WEIGHT_FILES.values())}, or run: {FACENET_PIP}"
        )
    state = read_checkpoint(path, resave="torch.save(net.state_dict(), path)")
    net.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------- box maths
def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    mode "union": IoU with areas (x2 - x1) * (y2 - y1), drop when IoU > threshold (torchvision's ``nms``,
    used by facenet-pytorch in stages 1 and 2). mode "min": overlap over the smaller box with areas
    (x2 - x1 + 1) * (y2 - y1 + 1), drop when overlap > threshold (its final stage). Equal scores: "union"
    visits the lower index first (torchvision's stable sort), "min" the higher one (facenet-pytorch's
    ascending ``np.argsort`` read from the end); ties are common there, from boxes clipped to the same crop.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', got {mode!r}")
    one = 1.0 if mode == "min" else 0.0
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-scores, kind="stable") if mode == "union" else np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = iw * ih
        if mode == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow [N, 4] boxes to squares of side max(w, h) about the same centre (w = x2 - x1)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + 0.5 * (w - side)
    y1 = boxes[:, 1] + 0.5 * (h - side)
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def _regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool) -> np.ndarray:
    """Apply [N, 4] offsets scaled by box width/height (width counted with +1 where the reference does)."""
    one = 1.0 if plus_one else 0.0
    wh = np.stack([boxes[:, 2] - boxes[:, 0] + one, boxes[:, 3] - boxes[:, 1] + one], axis=1)  # [N, 2]
    return boxes + reg * np.tile(wh, 2)  # offsets are (x1, y1, x2, y2) * (w, h, w, h)


def _as_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [H, W, 3] (the photo or a part of it) -> float32 [1, 3, H, W], contiguous: the area resize would
    otherwise make a contiguous copy of a permuted view first (the values and their sums are the same)."""
    return pixels.permute(2, 0, 1)[None].to(torch.float32, memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class Detection:
    """One face: box (x1, y1, x2, y2) in pixels, O-Net probability, landmarks [5, 2] (x, y).

    Landmarks: image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


class MTCNN:
    """Three-stage MTCNN cascade with facenet-pytorch's shipped weights.

    ``detect`` takes one uint8 [H, W, 3] RGB image and returns every face, highest score first.
    """

    def __init__(
        self,
        weights_dir: Path | None = None,
        device: str | torch.device = "cpu",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        if min_face_size < 12:
            raise ValueError(f"min_face_size={min_face_size} is below P-Net's 12 px window; use 12 or more")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor={factor} must lie in (0, 1); facenet-pytorch uses 0.709")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds={thresholds} must hold 3 values, for P-, R- and O-Net")
        self.device = torch.device(device)
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        folder = Path(weights_dir) if weights_dir is not None else mtcnn_weights_dir()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            _load_net(net, folder / WEIGHT_FILES[name])
            net.to(self.device).eval().requires_grad_(False)

    # -- helpers ---------------------------------------------------------------------------------------
    def _scales(self, h: int, w: int) -> list[float]:
        """Pyramid scales mapping min_face_size to P-Net's 12 px, down to a 12 px short side."""
        scale = 12.0 / self.min_face_size
        short = min(h, w) * scale
        scales = []
        while short >= 12:
            scales.append(scale)
            scale *= self.factor
            short *= self.factor
        return scales

    @staticmethod
    def _normalize(x: torch.Tensor) -> torch.Tensor:
        return (x - 127.5) * 0.0078125

    def _crops(self, photo: torch.Tensor, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
        """Cut boxes out of the uint8 [H, W, 3] photo (clipped to it, 1-based inclusive as the reference does) and
        area-resize.

        Returns ([K, 3, size, size] normalized crops, indices of the K boxes with a non-empty crop).
        """
        h, w = photo.shape[:2]
        ib = np.trunc(boxes).astype(np.int64)
        x, y = np.maximum(ib[:, 0], 1), np.maximum(ib[:, 1], 1)
        ex, ey = np.minimum(ib[:, 2], w), np.minimum(ib[:, 3], h)
        valid = np.flatnonzero((ey > y - 1) & (ex > x - 1))
        crops = [F.interpolate(_as_float(photo[y[k] - 1 : ey[k], x[k] - 1 : ex[k]]), size=(size, size), mode="area")
                 for k in valid]
        if not crops:
            return torch.zeros(0, 3, size, size, device=photo.device), valid
        return self._normalize(torch.cat(crops)), valid

    def _pnet(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over one pyramid level (unnormalized [1, 3, H, W]), in strips of PNET_STRIP_ROWS output rows.
        Output row r sees input rows 2r to 2r + 11 (three valid 3x3 convs around a 2x2 pooling), so a strip of
        output rows [a, b) needs input rows [2a, 2b + 10): strips start on even rows, as the pooling's windows do,
        and the last one ends where the level does (its ceil-mode window is the whole level's). Every output
        equals one pass's to float32 rounding (the convolutions' kernels may block a smaller input otherwise)."""
        height = level.shape[-2]
        out_rows = (height - 1) // 2 - 4  # conv: H - 2, ceil-mode pool: ceil((H - 2) / 2), two convs: -4
        if out_rows <= PNET_STRIP_ROWS:
            return self.pnet(self._normalize(level))
        strips = [self.pnet(self._normalize(level[:, :, 2 * a: 2 * min(a + PNET_STRIP_ROWS, out_rows) + 10]))
                  for a in range(0, out_rows, PNET_STRIP_ROWS)]
        return torch.cat([r for r, _ in strips], dim=2), torch.cat([p for _, p in strips], dim=2)

    # -- stages ----------------------------------------------------------------------------------------
    def _stage1(self, photo: torch.Tensor) -> np.ndarray:
        """P-Net over the pyramid of the uint8 [H, W, 3] photo; returns [N, 5] boxes (x1, y1, x2, y2, score),
        regressed and squared. Each level is resized from a float copy of the photo made for it alone, so that
        copy (12 bytes a pixel) is never held beside the P-Net activations of the largest level."""
        h, w = photo.shape[:2]
        found = []
        for scale in self._scales(h, w):
            small = F.interpolate(_as_float(photo), size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            reg, prob = self._pnet(small)
            face = prob[0, 1]  # [h', w']
            rows, cols = torch.nonzero(face >= self.thresholds[0], as_tuple=True)
            if rows.numel() == 0:
                continue
            score = face[rows, cols].cpu().numpy()
            offsets = reg[0][:, rows, cols].T.cpu().numpy()  # [4, n] -> [n, 4]
            # each output cell is a 12 px window at stride 2 in the scaled image
            xy = torch.stack([cols, rows], dim=1).cpu().numpy().astype(np.float32)  # [n, 2]
            top_left = np.floor((2 * xy + 1) / scale)
            bottom_right = np.floor((2 * xy + 12) / scale)
            cand = np.concatenate([top_left, bottom_right, score[:, None], offsets], axis=1)  # [n, 9]
            found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5), np.float32)
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        boxes = _square(_regress(cand[:, :4], cand[:, 5:9], plus_one=False))
        return np.concatenate([boxes, cand[:, 4:5]], axis=1)

    def _stage2(self, photo: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        """R-Net on 24 px crops; returns [N, 5] boxes, rescored, regressed and squared."""
        crops, valid = self._crops(photo, boxes[:, :4], 24)
        if len(valid) == 0:
            return np.zeros((0, 5), np.float32)
        reg, prob = (t.cpu().numpy() for t in self.rnet(crops))
        keep = prob[:, 1] > self.thresholds[1]
        boxes, reg, score = boxes[valid][keep, :4], reg[keep], prob[keep, 1]
        pick = nms(boxes, score, 0.7)
        boxes = _square(_regress(boxes[pick], reg[pick], plus_one=True))
        return np.concatenate([boxes, score[pick, None]], axis=1)

    def _stage3(self, photo: torch.Tensor, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """O-Net on 48 px crops; returns final [N, 5] boxes and [N, 5, 2] landmarks, highest score first."""
        crops, valid = self._crops(photo, boxes[:, :4], 48)
        if len(valid) == 0:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        reg, marks, prob = (t.cpu().numpy() for t in self.onet(crops))
        keep = prob[:, 1] > self.thresholds[2]
        boxes, reg, marks, score = boxes[valid][keep, :4], reg[keep], marks[keep], prob[keep, 1]
        # landmarks are fractions of the (unregressed) box, 1-based like the box crop
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1  # [N, 2] (w, h)
        marks = marks.reshape(-1, 2, 5).transpose(0, 2, 1)  # [N, 10] -> [N, 2, 5] -> [N, 5, 2]
        marks = marks * size[:, None, :] + boxes[:, None, 0:2] - 1
        boxes = _regress(boxes, reg, plus_one=True)
        pick = nms(boxes, score, 0.7, mode="min")
        return np.concatenate([boxes[pick], score[pick, None]], axis=1), marks[pick]

    # -- public ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[Detection]:
        """Detect faces in one uint8 [H, W, 3] RGB image; returns detections sorted by score, highest first."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
            raise ValueError(
                f"MTCNN.detect needs a uint8 RGB array of shape [H, W, 3], got {got}; convert grayscale with "
                "np.repeat(img[..., None], 3, axis=2) and floats in [0, 1] with (img * 255).round().astype(np.uint8)"
            )
        photo = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)  # uint8 [H, W, 3]
        boxes = self._stage1(photo)
        if len(boxes):
            boxes = self._stage2(photo, boxes)
        marks = np.zeros((0, 5, 2), np.float32)
        if len(boxes):
            boxes, marks = self._stage3(photo, boxes)
        order = np.argsort(-boxes[:, 4], kind="stable")
        return [
            Detection(box=tuple(float(v) for v in boxes[i, :4]), score=float(boxes[i, 4]),
                      landmarks=marks[i].astype(np.float32))
            for i in order
        ]
