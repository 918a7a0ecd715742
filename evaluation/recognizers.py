"""Face recognizers for the privacy evaluation: one table, one interface, stated thresholds.

References, per recognizer (the networks themselves live in ``anon_core/networks``):

- ``dlib``: dlib's ``dlib_face_recognition_resnet_model_v1`` (davisking/dlib, ``dnn_face_recognition_ex.cpp``):
  Euclidean distance between 128-d descriptors, same person when the distance is below 0.6 (dlib's documented
  threshold, 99.38 % on LFW). Real and offline (``face-recognition-models``).
- ``facenet_vggface2`` / ``facenet_casia``: facenet-pytorch's InceptionResnetV1 (the recognizers the FALCO paper
  used after CIAGAN). The repository fixes no threshold; we use the FaceNet paper's (Schroff et al., CVPR 2015,
  Figure 1: squared L2 distance 1.1 between unit embeddings classifies the pairs shown correctly; we count
  D <= 1.1 as "same"), i.e. cosine >= 0.45, since ||a - b||^2 = 2 - 2 cos(a, b) for unit vectors. That value
  was shown for the paper's own 128-d model, not for these 512-d ones: a stated convention, not a calibrated
  operating point.
- ``arcface_irse50``: TreB1eN/InsightFace_Pytorch IR-SE50 (``model_ir_se50.pth``, FALCO's identity-loss network):
  ``face_verify.py`` matches when the squared L2 distance between unit embeddings is <= 1.54 (its ``--threshold``
  default; ``Learner.infer`` marks "no match" when the distance is > threshold), i.e. cosine >= 0.23.

Every recognizer reports ``similarity`` where higher means more alike: cosine for FaceNet/ArcFace, and for dlib
the NEGATIVE Euclidean distance, so dlib's threshold is -0.6 and ``is_match`` is ``similarity > -0.6``, exactly
dlib's ``distance < 0.6``. ``RecognizerSpec.threshold`` keeps each threshold in its native units.

Input: aligned face crops, uint8 [N, H, W, 3] or float [N, 3, H, W] in [-1, 1]. Each recognizer first crops a
named region (:data:`FACE_CROPS`) of the FFHQ-aligned image that matches the crops it was trained on, then does
its network's own preparation (dlib: resize to a 150 px chip, 0..255; FaceNet: resize to 160 px, (p - 127.5) /
128; ArcFace: pSp's 256 px -> [35:223, 32:220] -> 112 px, [-1, 1]). For crops that are not FFHQ-aligned (e.g.
tight LFW crops), pass ``crop="full"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from anon_core import model_store
from anon_core.errors import FalcoError
from anon_core.identity import DLIB_CHIP_BOX, Box, crop_fraction
from evaluation.image_sets import ImageSetLike
from evaluation.quality import image_batches

__all__ = [
    "FACE_CROPS",
    "RECOGNIZERS",
    "Recognizer",
    "RecognizerSpec",
    "available_recognizers",
    "build_recognizer",
    "crop_faces",
    "to_unit_range",
]

FACE_CROPS: dict[str, Box | None] = {
    # (top, bottom, left, right) as fractions of the aligned image's height/width; None: the whole image.
    "full": None,
    "dlib_chip": DLIB_CHIP_BOX,  # dlib's own 150 px chip (anon_core.identity)
    # The MTCNN face box facenet-pytorch crops (margin 0) before its 160 px resize: median of our MTCNN's boxes
    # on the same 98 FFHQ-aligned faces at 256 px, (x1, y1, x2, y2) = (67, 57, 197, 228). Not square: resized
    # to 160 x 160 without keeping the aspect, as facenet-pytorch's extract_face does.
    "mtcnn_box": (57 / 256, 228 / 256, 67 / 256, 197 / 256),
}


@dataclass(frozen=True)
class RecognizerSpec:
    """One row of the recognizer table: what it is, where its weights come from, how it decides "same"."""

    name: str
    network: str  # architecture and training set
    weights: str  # model-store name (anon_core.model_store) of its weight file
    crop: str  # default key of FACE_CROPS for FFHQ-aligned input
    preparation: str  # what happens to a [-1, 1] crop before the network
    metric: str  # "euclidean" (match below the threshold) or "cosine" (match at or above it)
    threshold: float  # in the metric's own units
    inclusive: bool  # whether a value equal to the threshold is a match
    threshold_source: str  # where the threshold comes from
    offline: bool  # weights install from PyPI (no download at run time)
    score_range: tuple[float, float]  # fixed histogram range of the native score, comparable across runs

    @property
    def similarity_threshold(self) -> float:
        """The threshold in similarity units (higher = more alike): -distance for euclidean."""
        return -self.threshold if self.metric == "euclidean" else self.threshold


_FACENET_RULE = "FaceNet paper, Fig. 1: squared L2 <= 1.1 on unit vectors, = cosine >= 0.45"
_FACENET_PREP = "crop, resize to 160 px (bilinear, antialiased), (p - 127.5) / 128"

RECOGNIZERS: dict[str, RecognizerSpec] = {
    spec.name: spec
    for spec in (
        RecognizerSpec(
            "dlib", "dlib ResNet-29 metric network (128-d, ~3M faces)", "dlib-face-descriptor", "dlib_chip",
            "crop, resize to 150 px (bilinear, antialiased), 0..255 minus the file's mean RGB, / 256",
            "euclidean", 0.6, False, "dlib: distance < 0.6 is the same person (99.38% on LFW)", True, (0.0, 1.5),
        ),
        RecognizerSpec(
            "facenet_vggface2", "FaceNet InceptionResnetV1, VGGFace2 (LFW 0.9965)", "facenet-vggface2",
            "mtcnn_box", _FACENET_PREP, "cosine", 0.45, True, _FACENET_RULE, False, (-1.0, 1.0),
        ),
        RecognizerSpec(
            "facenet_casia", "FaceNet InceptionResnetV1, CASIA-WebFace (LFW 0.9905)", "facenet-casia-webface",
            "mtcnn_box", _FACENET_PREP, "cosine", 0.45, True, _FACENET_RULE, False, (-1.0, 1.0),
        ),
        RecognizerSpec(
            "arcface_irse50", "ArcFace IR-SE50 (TreB1eN, MS1M; FALCO's identity-loss network)", "arcface_ir_se50",
            "full", "pSp IDLoss: 256 px, crop [35:223, 32:220], area-pool to 112 px, [-1, 1]",
            "cosine", 0.23, True,
            "TreB1eN InsightFace_Pytorch face_verify.py: squared L2 <= 1.54 on unit vectors, = cosine >= 0.23",
            False, (-1.0, 1.0),
        ),
    )
}


def to_unit_range(images: np.ndarray | Tensor) -> Tensor:
    """uint8 [N, H, W, 3] or float [N, 3, H, W] in [-1, 1] -> float32 [N, 3, H, W] in [-1, 1]."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}; convert float images to "
                "a [-1, 1] tensor [N, 3, H, W] instead"
            )
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"expected a float tensor [N, 3, H, W] in [-1, 1], got {images.dtype} {tuple(images.shape)}")
    return images.float()


def crop_faces(images: Tensor, crop: str) -> Tensor:
    """Cut the named FACE_CROPS region out of [N, 3, H, W] images (rounded to whole pixels)."""
    if crop not in FACE_CROPS:
        raise FalcoError(f"crop={crop!r} is not one of {sorted(FACE_CROPS)}")
    return crop_fraction(images, FACE_CROPS[crop])


class Recognizer:
    """A face recognizer: ``embed`` images, compare embeddings with ``similarity``, decide with ``is_match``.

    ``network`` maps cropped [-1, 1] images [B, 3, h, w] to embeddings [B, D] and does its own preparation.
    """

    def __init__(
        self,
        spec: RecognizerSpec,
        network: Callable[[Tensor], Tensor],
        device: torch.device | str = "cpu",
        crop: str | None = None,
        batch_size: int = 32,
        weights_file: Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.spec = spec
        self.network = network
        self.device = torch.device(device)
        self.crop = spec.crop if crop is None else crop
        if self.crop not in FACE_CROPS:
            raise FalcoError(f"crop={self.crop!r} is not one of {sorted(FACE_CROPS)}")
        self.batch_size = batch_size
        self.weights_file = weights_file  # where its weights were read from (None: not from a file)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def threshold(self) -> float:
        """Match threshold in similarity units (dlib: -0.6; FaceNet: 0.45; ArcFace: 0.23)."""
        return self.spec.similarity_threshold

    @torch.no_grad()
    def embed(self, images: ImageSetLike | Tensor) -> np.ndarray:
        """Aligned faces (a uint8 NHWC image set, read batch by batch, or [-1, 1] NCHW) -> float32 embeddings
        [N, D]."""
        out = [self.network(crop_faces(batch, self.crop).to(self.device)).float().cpu().numpy()
               for batch in image_batches(images, self.batch_size)]
        if not out:
            raise ValueError(f"{self.name}: no images to embed")
        return np.concatenate(out)  # (N, D)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """All pairs: embeddings [Na, D] x [Nb, D] -> similarity [Na, Nb], higher = more alike."""
        a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
        if self.spec.metric == "euclidean":
            sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T  # (Na, Nb)
            return 0.0 - np.sqrt(np.maximum(sq, 0.0))  # 0.0 - x: no -0.0 for identical images
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return a @ b.T  # (Na, Nb)

    def paired_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row by row: embeddings [N, D] and [N, D] -> similarity [N] of a[i] to b[i]."""
        if a.shape != b.shape:
            raise ValueError(f"paired embeddings must have equal shapes, got {a.shape} and {b.shape}")
        a, b = a.astype(np.float64), b.astype(np.float64)
        if self.spec.metric == "euclidean":
            return 0.0 - np.linalg.norm(a - b, axis=1)
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    def match_pairs(self, images: ImageSetLike, sources: ImageSetLike) -> tuple[np.ndarray, np.ndarray]:
        """Row by row, each image against its own source: the native score [N] (dlib: distance) and whether the
        recognizer calls them the same person [N] (the privacy checks' verdict)."""
        similarity = self.paired_similarity(self.embed(images), self.embed(sources))
        return self.to_score(similarity), self.is_match(similarity)

    def is_match(self, similarity: np.ndarray | float) -> np.ndarray:
        """Same identity by the recognizer's stated rule (dlib: distance < 0.6; others: cosine >= threshold)."""
        sim = np.asarray(similarity)
        return sim >= self.threshold if self.spec.inclusive else sim > self.threshold

    def to_score(self, similarity: np.ndarray) -> np.ndarray:
        """Similarity -> the recognizer's native score (dlib: Euclidean distance; others: cosine)."""
        return 0.0 - np.asarray(similarity) if self.spec.metric == "euclidean" else np.asarray(similarity)


# --------------------------------------------------------------------------------------------- building
def _weights_present(spec: RecognizerSpec) -> bool:
    try:
        return model_store.model_path(spec.weights).is_file()
    except FalcoError:
        return False


def available_recognizers() -> list[str]:
    """Names of the recognizers whose weights are on this machine (dlib wherever face-recognition-models is)."""
    return [name for name, spec in RECOGNIZERS.items() if _weights_present(spec)]


def _dlib_network(path, device: torch.device) -> Callable[[Tensor], Tensor]:
    from anon_core.networks.dlib_resnet import load_dlib_descriptor, prepare_chips

    model = load_dlib_descriptor(path=path, device=device)
    return lambda x: model(prepare_chips(x))


def _facenet_network(path, device: torch.device) -> Callable[[Tensor], Tensor]:
    from anon_core.networks.facenet import load_facenet

    return load_facenet(path, device=device).embed


def _arcface_network(path, device: torch.device) -> Callable[[Tensor], Tensor]:
    from torch.nn.functional import interpolate

    from anon_core.checkpoints import load_arcface

    model = load_arcface(path).to(device).requires_grad_(False)

    def run(x: Tensor) -> Tensor:
        if x.shape[-1] != x.shape[-2]:  # ArcFaceEncoder.prepare needs squares; only a custom crop makes others
            side = max(x.shape[-2:])
            x = interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return model(x)

    return run


_BUILDERS: dict[str, Callable] = {
    "dlib": _dlib_network,
    "facenet_vggface2": _facenet_network,
    "facenet_casia": _facenet_network,
    "arcface_irse50": _arcface_network,
}


def build_recognizer(
    name: str,
    device: torch.device | str = "cpu",
    path: str | None = None,
    crop: str | None = None,
    batch_size: int = 32,
) -> Recognizer:
    """Build a recognizer of :data:`RECOGNIZERS` with its real weights.

    ``path``: the weight file; default: the model store (``anon_core.model_store.model_path``). Absent weights
    raise MissingWeightsError naming the file and the command that fetches it. ``crop``: a FACE_CROPS key, to
    override the recognizer's default (e.g. "full" for crops that are not FFHQ-aligned).
    """
    if name not in RECOGNIZERS:
        raise FalcoError(f"unknown recognizer {name!r}; known: {', '.join(RECOGNIZERS)}")
    spec = RECOGNIZERS[name]
    if path is None:
        path = model_store.require([spec.weights])[spec.weights]  # MissingWeightsError with the fetch command
    device = torch.device(device)
    return Recognizer(spec, _BUILDERS[name](path, device), device=device, crop=crop, batch_size=batch_size,
                      weights_file=Path(path))
