"""Black-and-white images stay black and white: the generator draws every face in colour, so a face generated for
a grey source (its three channels equal: a black-and-white photo decoded to RGB, LFW's grey release) is written as
its luma. The method's losses still compare the colour face with the grey source, as the paper's code does; only
the image written is made grey. Photo mode does the same for a face pasted among the pixels of a black-and-white
photo, grey or toned (sepia, a scanner's tint: `monochrome_tone`), giving the face the photo's tone
(anon_core.compose)."""

from __future__ import annotations

import numpy as np

__all__ = ["GREY_RULE", "LUMA", "MONOCHROME_MAX_RESIDUAL", "TONE_RULE", "in_tone", "is_grey", "keep_grey",
           "monochrome_tone", "to_grey", "tone_residual"]

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R 601 luma weights, Pillow's "L"."""
GREY_RULE = "a grey source's face is written as its ITU-R 601 luma"
"""In the keys of the written anonymized images (the journal's, the pipeline's): images written by another rule are
written again."""
TONE_BINS = 32
"""Luma bins (8 levels each) over which a monochrome region's tone (its mean chroma) is taken."""
MONOCHROME_MAX_RESIDUAL = 5.5
"""Largest RMS (in levels, worst channel) of a region's chroma about its tone for the region to count as black and
white, halfway between the two nearest cases measured (bench/monochrome_tone.py): the astronaut's face sepia-toned
0.94, with scanner noise of sd 2 / 4 levels 2.47 / 4.61, with noise sd 2 saved as JPEG at quality 90-60 3.35-4.14;
in colour 12.85, at 50% of its saturation 6.43, at 30% 3.86 (counted as toned: its face takes the mean tint); the
sample group photo's faces 12.46-33.21. A dim colour photo can fall under it (the sample portrait's face region at
60% brightness: 5.30): its face is then painted with the photo's own luma-to-colour curve, which by this bound is
within 5.5 levels RMS of the photo's colours there. A bound relative to the luma's spread, tried to keep dim colour
photos colour, did not separate them from noisy sepia on real face regions (0.143-0.157 against 0.145)."""
TONE_RULE = (f"a face pasted where the photo is black and white (chroma under the face within "
             f"{MONOCHROME_MAX_RESIDUAL:g} levels RMS of its mean over {TONE_BINS} luma bins) is its luma, lit as "
             "the band around it, in that tone")
"""In photo mode's run key: photos pasted by another rule are pasted again."""


def is_grey(pixels: np.ndarray) -> bool:
    """Whether uint8 [..., 3] pixels have three equal channels everywhere (none: False)."""
    pixels = np.asarray(pixels)
    return bool(pixels.size) and bool(np.array_equal(pixels[..., 0], pixels[..., 1])
                                      and np.array_equal(pixels[..., 1], pixels[..., 2]))


def monochrome_tone(pixels: np.ndarray) -> np.ndarray | None:
    """The tone of uint8 [..., 3] pixels when they are black and white, grey or toned: the mean chroma (channel
    minus luma) per luma bin, float32 [TONE_BINS, 3] (NaN for an empty bin; zeros for grey pixels), or None when
    some channel's chroma strays from it by more than MONOCHROME_MAX_RESIDUAL (RMS): a colour image. Only three
    equal channels count among fewer pixels than 8 per bin."""
    pixels = np.asarray(pixels).reshape(-1, 3)
    if is_grey(pixels):
        return np.zeros((TONE_BINS, 3), np.float32)
    if len(pixels) < 8 * TONE_BINS:
        return None
    tone, residual = tone_residual(pixels)
    return tone if residual <= MONOCHROME_MAX_RESIDUAL else None


def tone_residual(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """The mean chroma per luma bin of uint8 [..., 3] pixels (float32 [TONE_BINS, 3], NaN for an empty bin) and the
    RMS of the chroma about it, worst channel (levels)."""
    values = np.asarray(pixels).reshape(-1, 3).astype(np.float32)
    luma = values @ LUMA
    chroma = values - luma[:, None]
    bins = np.minimum((luma * (TONE_BINS / 256.0)).astype(np.intp), TONE_BINS - 1)
    counts = np.bincount(bins, minlength=TONE_BINS)
    tone = np.stack([np.bincount(bins, weights=chroma[:, c], minlength=TONE_BINS) for c in range(3)], axis=1)
    tone = (tone / np.maximum(counts, 1)[:, None]).astype(np.float32)
    residual = float(np.sqrt(np.mean((chroma - tone[bins]) ** 2, axis=0)).max())
    tone[counts == 0] = np.nan
    return tone, residual


def in_tone(luma: np.ndarray, tone: np.ndarray) -> np.ndarray:
    """Float luma [...] in `tone` (`monochrome_tone`): [..., 3], the luma plus the tone's chroma at that luma (linear
    between bin centres, the nearest bin's beyond them); float32. A grey tone gives the luma in all three channels."""
    luma = np.asarray(luma, np.float32)
    known = ~np.isnan(tone[:, 0])
    centres = (np.arange(TONE_BINS, dtype=np.float32) + 0.5) * (256.0 / TONE_BINS)
    chroma = [np.interp(luma, centres[known], tone[known, c]).astype(np.float32) for c in range(3)]
    return luma[..., None] + np.stack(chroma, axis=-1)


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
