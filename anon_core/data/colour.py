"""Black-and-white images stay black and white: the generator draws every face in colour, so a face generated for
a grey source (its three channels equal: a black-and-white photo decoded to RGB, LFW's grey release) is written as
its luma. The method's losses still compare the colour face with the grey source, as the paper's code does; only
the image written is made grey. Photo mode does the same for a face pasted among grey pixels (anon_core.compose)."""

from __future__ import annotations

import numpy as np

__all__ = ["GREY_RULE", "LUMA", "is_grey", "keep_grey", "to_grey"]

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R 601 luma weights, Pillow's "L"."""
GREY_RULE = "a grey source's face is written as its ITU-R 601 luma"
"""In the keys of the written anonymized images (the journal's, the pipeline's): images written by another rule are
written again."""


def is_grey(pixels: np.ndarray) -> bool:
    """Whether uint8 [..., 3] pixels have three equal channels everywhere (none: False)."""
    pixels = np.asarray(pixels)
    return bool(pixels.size) and bool(np.array_equal(pixels[..., 0], pixels[..., 1])
                                      and np.array_equal(pixels[..., 1], pixels[..., 2]))


def to_grey(images: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] images as their luma, copied to the three channels (rounded to the nearest level)."""
    luma = np.clip(np.rint(np.asarray(images, np.float32) @ LUMA), 0, 255).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


def keep_grey(images: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W, 3] with the rows where `grey` [N] is true made grey (`to_grey`); the array itself when
    none is."""
    grey = np.asarray(grey, dtype=bool)
    if not grey.any():
        return images
    out = np.array(images, copy=True)
    out[grey] = to_grey(out[grey])
    return out
