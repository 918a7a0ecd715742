"""How far from black and white is a region? `tone_residual` (anon_core.data.colour) on colour faces and on
black-and-white versions of them (grey, sepia-toned, with scanner noise, saved as JPEG), against the bound
MONOCHROME_MAX_RESIDUAL under which photo mode pastes a face in the photo's tone.

    .venv/bin/python bench/monochrome_tone.py
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.data import astronaut

from anon_core.data.colour import LUMA, MONOCHROME_MAX_RESIDUAL, tone_residual
from anon_core.data.sample import GROUP_PHOTO_FACES, build_sample_photos


def toned(luma: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    """Sepia, strongest in the mid-tones, plus Gaussian noise of sd `noise` levels per channel."""
    mid = luma / 255.0
    tint = 4 * mid * (1 - mid)
    image = np.stack([luma + 40 * tint, luma + 10 * tint, luma - 30 * tint], axis=-1)
    image += np.random.default_rng(seed).normal(0, noise, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def main() -> None:
    face = astronaut()[20:220, 120:300]
    luma = face.astype(np.float32) @ LUMA
    rows = {"astronaut face, colour": face}
    for share in (0.5, 0.3, 0.15):
        rows[f"astronaut face, colour at {share:.0%} saturation"] = np.clip(
            np.rint(luma[..., None] + (face - luma[..., None]) * share), 0, 255).astype(np.uint8)
    rows["astronaut face, grey"] = np.repeat(np.rint(luma).astype(np.uint8)[..., None], 3, axis=-1)
    for noise in (0, 2, 4):
        rows[f"astronaut face, sepia, noise sd {noise}"] = toned(luma, noise)
    for quality in (60, 75, 90):
        rows[f"astronaut face, sepia, noise sd 2, JPEG q{quality}"] = jpeg(toned(luma, 2), quality)
    with tempfile.TemporaryDirectory() as folder:
        build_sample_photos(Path(folder))
        group = np.asarray(Image.open(Path(folder) / "group.png").convert("RGB"))
    for i, (source, left, top, side) in enumerate(GROUP_PHOTO_FACES):
        margin = side // 4
        rows[f"sample group photo, face {i} ({source}), colour"] = group[max(top - margin, 0):top + side + margin,
                                                                        max(left - margin, 0):left + side + margin]
    print(f"bound: {MONOCHROME_MAX_RESIDUAL:g} levels RMS (at or below: black and white)")
    for name, pixels in rows.items():
        residual = tone_residual(pixels)[1]
        verdict = "black and white" if residual <= MONOCHROME_MAX_RESIDUAL else "colour"
        print(f"{residual:6.2f}  {verdict:15s}  {name}")


if __name__ == "__main__":
    main()
