"""Faces back into photos: a generated face warped into place with a soft mask, and the fallback cover of a face
that cannot be anonymized.

Pasting (:func:`paste_face`): the generated image is the anonymized version of the FFHQ-aligned crop cut out of the
photo along ``quad`` (anon_core.data.align), so each photo pixel is looked up in it through the inverse of that
cut (``quad_to_output``, bilinear). It is blended in with a mask drawn in the crop's coordinates: 1 on an ellipse
(:data:`MASK_ELLIPSE`) that holds the whole head a recognizer looks at (dlib's chip, the MTCNN box: hair line,
ears, chin) and falling smoothly to 0 over a band of :data:`FEATHER` of its size, so no seam is sharp and every
pixel beyond the band keeps its exact value. Before blending, the generated pixels are shifted by the mean colour
difference between the photo and the generated image on that band (per channel), so the face takes the light of
its surroundings. Where the face goes (the mask's pixels) the photo may be black and white, grey or toned (sepia, a
scanner's tint: anon_core.data.colour's :func:`monochrome_tone`): the face is then its luma, shifted by the band's
mean luma difference, in that tone, so the photo stays black and white.

Cover (:func:`cover_box`): the face box grown by :data:`COVER_GROW` on each side, pixelated to
:data:`PIXEL_BLOCKS` blocks across (each block the mean of its pixels) or Gaussian-blurred with sigma = box side /
:data:`BLUR_DIVISOR`. Used for faces too small, too turned away, or failing alignment (anon_core.photo_faces).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from anon_core.data.align import quad_to_output
from anon_core.data.colour import LUMA, in_tone, monochrome_tone

__all__ = ["COVERS", "FEATHER", "cover_box", "face_mask", "paste_face"]

MASK_ELLIPSE = (0.5, 0.55, 0.35, 0.40)
"""(centre x, centre y, semi-axis x, semi-axis y) of the blend ellipse as shares of the aligned crop's side. In
FFHQ-aligned crops the MTCNN face box spans (0.26, 0.22)-(0.77, 0.89) (median over 98 faces, evaluation.recognizers)
and dlib's chip is the square of side 0.66 centred at (0.5, 0.6) (anon_core.identity): the ellipse holds the ellipse
inscribed in the box, its band reaches the chip's edges."""
FEATHER = 0.15
"""Width of the blend band, as a share of the ellipse's size: 1 inside the ellipse, 0 beyond 1 + FEATHER."""
COVERS = ("pixelate", "blur")
PIXEL_BLOCKS = 5
"""Blocks across a pixelated face: at 5, eyes, nose and mouth share a handful of blocks (dlib matches no
pixelated face of the test photos to its source)."""
BLUR_DIVISOR = 4.0
COVER_GROW = 0.15


def face_mask(quad: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """The blend mask of the face cut along ``quad`` (at ``size`` px) in a photo of ``shape`` (H, W): (rows, cols,
    mask [h, w] float32 in [0, 1], the crop coordinates (u, v) of those pixels [h, w, 2]) over the part of the photo
    the crop covers; the mask is zero everywhere else."""
    height, width = shape
    rows = slice(max(int(np.floor(quad[:, 1].min())), 0), min(int(np.ceil(quad[:, 1].max())) + 1, height))
    cols = slice(max(int(np.floor(quad[:, 0].min())), 0), min(int(np.ceil(quad[:, 0].max())) + 1, width))
    ys, xs = np.mgrid[rows, cols]
    uv = quad_to_output(np.stack([xs.ravel(), ys.ravel()], axis=1), quad, size).reshape(*xs.shape, 2)
    cx, cy, ax, ay = (share * size for share in MASK_ELLIPSE)
    distance = np.sqrt(((uv[..., 0] + 0.5 - cx) / ax) ** 2 + ((uv[..., 1] + 0.5 - cy) / ay) ** 2)  # 1 on the ellipse
    ramp = np.clip((1.0 + FEATHER - distance) / FEATHER, 0.0, 1.0)
    return rows, cols, (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32), uv  # smoothstep


def paste_face(photo: np.ndarray, generated: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """``photo`` (uint8 [H, W, 3]) with the generated face (uint8 [R, R, 3], the anonymized crop of ``quad``)
    blended in; a new array, ``photo`` is left as it was."""
    rows, cols, mask, uv = face_mask(quad, generated.shape[0], photo.shape[:2])
    out = photo.copy()
    if mask.size == 0 or not mask.any():
        return out
    coords = [uv[..., 1].ravel(), uv[..., 0].ravel()]
    face = np.stack([map_coordinates(generated[:, :, c].astype(np.float32), coords, order=1, mode="nearest")
                     for c in range(3)], axis=1).reshape(*mask.shape, 3)  # [h, w, 3]
    region = photo[rows, cols].astype(np.float32)
    band = (mask > 0.0) & (mask < 1.0)
    # judged on the pixels the face goes over, not on the crop's whole box: a coloured mark beside the head, or a
    # colour photo beside a black-and-white one, does not make a black-and-white face a colour one
    tone = monochrome_tone(photo[rows, cols][mask > 0.0])
    if tone is not None:  # black and white: the face's luma, lit as its band, in the photo's tone
        luma = face @ LUMA
        if band.any():
            luma += (region[band] @ LUMA).mean() - luma[band].mean()
        face = in_tone(luma, tone)
    elif band.any():
        face += region[band].mean(axis=0) - face[band].mean(axis=0)
    blended = region + (face - region) * mask[:, :, None]
    out[rows, cols] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def _grown_box(box: tuple[float, float, float, float], shape: tuple[int, int]
               ) -> tuple[tuple[float, float, float, float], tuple[int, int, int, int]]:
    """The face box grown by COVER_GROW, maybe past the frame (x1, y1, x2, y2), and the pixels of it inside a photo
    of `shape` (H, W): (left, top, right, bottom), right and bottom exclusive."""
    x1, y1, x2, y2 = (float(v) for v in box)
    grow_x, grow_y = (x2 - x1) * COVER_GROW, (y2 - y1) * COVER_GROW
    grown = (x1 - grow_x, y1 - grow_y, x2 + grow_x, y2 + grow_y)
    height, width = shape
    return grown, (max(int(np.floor(grown[0])), 0), max(int(np.floor(grown[1])), 0),
                   min(int(np.ceil(grown[2])), width), min(int(np.ceil(grown[3])), height))


def changed_pixels(shape: tuple[int, int], faces, size: int) -> np.ndarray:
    """bool [H, W]: the pixels of a photo of `shape` that its faces' pastes (`paste_face`, crops of `size` px) and
    covers (`cover_box`) may change: where a pasted face's mask is above zero, a covered face's grown box. `faces`
    have `anonymized`, `quad` and `box` (anon_core.photo_faces.PhotoFace)."""
    changed = np.zeros(shape, dtype=bool)
    for face in faces:
        if face.anonymized:
            rows, cols, mask, _ = face_mask(face.quad, size, shape)
            changed[rows, cols] |= mask > 0.0
        else:
            _, (left, top, right, bottom) = _grown_box(face.box, shape)
            changed[top:bottom, left:right] = True
    return changed


def cover_box(photo: np.ndarray, box: tuple[float, float, float, float], how: str) -> np.ndarray:
    """``photo`` with the face box (grown by COVER_GROW) pixelated or blurred (``how``: one of COVERS); a new
    array. The blocks and the blur's sigma are sized on the whole grown box, also where part of it lies outside the
    photo: a face cut by the frame is covered as coarsely as a whole one (sized on the visible part, its blocks
    came out half as large and dlib matched such faces to their source)."""
    if how not in COVERS:
        raise ValueError(f"cover {how!r} is not one of {COVERS}")
    (gx1, gy1, gx2, gy2), (left, top, right, bottom) = _grown_box(box, photo.shape[:2])
    out = photo.copy()
    if right <= left or bottom <= top:
        return out
    region = photo[top:bottom, left:right]
    if how == "pixelate":
        blocks_x = PIXEL_BLOCKS
        blocks_y = max(1, int(round(PIXEL_BLOCKS * (gy2 - gy1) / max(gx2 - gx1, 1e-9))))
        # the whole box's block edges, clipped to the photo: each visible block takes the mean of its visible pixels
        cols = np.clip(np.rint(np.linspace(gx1, gx2, blocks_x + 1)).astype(int), left, right)
        rows = np.clip(np.rint(np.linspace(gy1, gy2, blocks_y + 1)).astype(int), top, bottom)
        cols[0], cols[-1], rows[0], rows[-1] = left, right, top, bottom  # every pixel of the region in a block
        for r0, r1 in zip(rows[:-1], rows[1:]):
            for c0, c1 in zip(cols[:-1], cols[1:]):
                if r1 > r0 and c1 > c0:
                    block = photo[r0:r1, c0:c1]
                    out[r0:r1, c0:c1] = np.rint(block.reshape(-1, block.shape[-1]).mean(axis=0)).astype(photo.dtype)
    else:
        sigma = max(gx2 - gx1, gy2 - gy1) / BLUR_DIVISOR
        out[top:bottom, left:right] = np.clip(np.rint(gaussian_filter(region.astype(np.float32),
                                                                      [sigma, sigma, 0], mode="nearest")), 0, 255)
    return out
