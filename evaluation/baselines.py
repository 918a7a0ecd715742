"""Classic anonymization baselines, run through the same privacy/utility evaluation as FALCO.

Reference: the baselines CIAGAN (Maximov et al., CVPR 2020) and FALCO compare against: Gaussian blur,
pixelation (mosaic), a black mask over the face, and "swap" (here: the real image's paired fake from the fake
pool, i.e. what FALCO starts its optimization from, showing how much FALCO's attribute loss keeps).

Each baseline is ``fn(images uint8 [N, H, W, 3], **params) -> uint8 [N, H, W, 3]`` on aligned face crops.
Size parameters are in pixels; :data:`BASELINES` states defaults for a 256 px crop and :func:`apply_baseline`
scales them to the actual width (so the same setting hides the same share of the face at every resolution).

Every baseline treats each image on its own (the blur filters only along height and width, the mosaic and the
mask work per image, swap copies), so :func:`baseline_images` makes them batch by batch on indexing, for sets
that do not fit in memory, with the pixels :func:`apply_baseline` makes for the whole set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from evaluation.image_sets import ImageSetLike, MappedImages, check_image_set
from evaluation.recognizers import FACE_CROPS

__all__ = [
    "BASELINES",
    "REFERENCE_SIZE",
    "Baseline",
    "apply_baseline",
    "baseline_of",
    "made_from_real",
    "real_source",
    "baseline_images",
    "baseline_keys",
    "black_mask",
    "gaussian_blur",
    "pixelate",
    "swap",
]

REFERENCE_SIZE = 256  # the crop width the default pixel sizes are stated for
BASELINES_VERSION = "1"  # in every baseline image's key: bump when a baseline's function changes what it makes


def _check(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise ValueError(f"baselines take uint8 ndarrays [N, H, W, 3], got {type(images).__name__}; for an image set "
                         "that is read from disk use baseline_images")
    check_image_set(images, "baselines")
    return images


def gaussian_blur(images: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    """Blur every channel with a Gaussian of ``sigma`` px (truncated at 4 sigma, reflected borders)."""
    images = _check(images)
    if sigma <= 0:
        raise ValueError(f"sigma={sigma} must be positive (pixels)")
    out = gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="reflect", truncate=4.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def pixelate(images: np.ndarray, block_size: int = 16) -> np.ndarray:
    """Mosaic: every ``block_size`` x ``block_size`` block (from the top-left; edge blocks may be smaller) takes
    its mean colour."""
    images = _check(images)
    if int(block_size) != block_size or block_size < 1:
        raise ValueError(f"block_size={block_size} must be a positive whole number of pixels")
    b = int(block_size)
    n, h, w, _ = images.shape
    rows, cols = np.arange(0, h, b), np.arange(0, w, b)
    sums = np.add.reduceat(np.add.reduceat(images.astype(np.float64), rows, axis=1), cols, axis=2)  # (N, hb, wb, 3)
    counts = np.minimum(b, h - rows)[:, None] * np.minimum(b, w - cols)[None, :]  # (hb, wb)
    means = np.rint(sums / counts[None, :, :, None]).astype(np.uint8)
    return np.repeat(np.repeat(means, b, axis=1), b, axis=2)[:, :h, :w]


def black_mask(
    images: np.ndarray, shape: str = "ellipse", region: str = "mtcnn_box", grow: float = 1.1, value: int = 0
) -> np.ndarray:
    """Paint the face region of aligned crops with ``value`` (0 = black).

    ``region``: a key of ``evaluation.recognizers.FACE_CROPS`` (default: where MTCNN finds the face in an
    FFHQ-aligned crop), scaled by ``grow`` about its centre; ``shape``: "ellipse" (inscribed) or "box".
    """
    images = _check(images)
    if shape not in ("ellipse", "box"):
        raise ValueError(f"shape={shape!r} must be 'ellipse' or 'box'")
    box = FACE_CROPS.get(region)
    if box is None:
        raise ValueError(f"region={region!r} must name a face box of FACE_CROPS, one of "
                         f"{sorted(k for k, v in FACE_CROPS.items() if v is not None)}")
    _, h, w, _ = images.shape
    top, bottom, left, right = box
    cy, cx = (top + bottom) / 2 * h, (left + right) / 2 * w
    ry, rx = (bottom - top) / 2 * h * grow, (right - left) / 2 * w * grow
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    if shape == "ellipse":
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    else:
        inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    out = images.copy()
    out[:, inside] = value
    return out


def swap(images: np.ndarray, fakes: np.ndarray) -> np.ndarray:
    """The paired fake image itself (the nearest fake of each real image, as FALCO's pairing chose it)."""
    images, fakes = _check(images), _check(fakes)
    if fakes.shape != images.shape:
        raise ValueError(f"fakes {fakes.shape} must match images {images.shape}: one aligned fake per real image")
    return fakes.copy()


@dataclass(frozen=True)
class Baseline:
    """One row of the baseline table."""

    name: str
    fn: Callable[..., np.ndarray]
    defaults: dict[str, object] = field(default_factory=dict)  # stated for a REFERENCE_SIZE px wide crop
    scaled: tuple[str, ...] = ()  # pixel-size parameters scaled by width / REFERENCE_SIZE
    needs_fakes: bool = False  # takes the paired fake images


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("blur", gaussian_blur, {"sigma": 8.0}, scaled=("sigma",)),
        Baseline("pixelate", pixelate, {"block_size": 16}, scaled=("block_size",)),
        Baseline("mask", black_mask, {"shape": "ellipse", "region": "mtcnn_box", "grow": 1.1, "value": 0}),
        Baseline("swap", swap, needs_fakes=True),
    )
}


def _resolve(name: str, width: int, fakes, params: dict) -> tuple[Baseline, dict]:
    """The baseline and its parameters for images `width` px wide: defaults (pixel sizes scaled to the width)
    overridden by `params`, taken as given in pixels of the actual images."""
    baseline, resolved = _parameters(name, width, params)
    if baseline.needs_fakes and fakes is None:
        raise ValueError(f"baseline {name!r} needs the paired fake images (fakes=)")
    return baseline, resolved


def _parameters(name: str, width: int, params: dict) -> tuple[Baseline, dict]:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    baseline = BASELINES[name]
    unknown = set(params) - set(baseline.defaults)
    if unknown:
        raise ValueError(
            f"baseline {name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(baseline.defaults)}"
        )
    scale = width / REFERENCE_SIZE
    resolved = {k: (v * scale if k in baseline.scaled else v) for k, v in baseline.defaults.items()}
    if "block_size" in resolved and "block_size" not in params:
        resolved["block_size"] = max(1, round(resolved["block_size"]))
    resolved.update(params)
    return baseline, resolved


def baseline_keys(name: str, width: int, source_keys: Sequence[str | None], **params) -> list[str | None]:
    """The key of each image `baseline_images(name, ...)` makes at `width` px (`evaluation.output_store`): the
    baseline, its resolved parameters and the key of what it is made from (the real source's, or for a baseline that
    takes the paired fakes, the fake's); None where that key is None."""
    baseline, resolved = _parameters(name, width, params)
    made = hashlib.sha256(json.dumps([BASELINES_VERSION, name, width, resolved], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]
    return [None if key is None else f"{name}:{made}:{key}" for key in source_keys]


def baseline_of(key: str) -> str | None:
    """The baseline whose image a key of `baseline_keys` names; None for any other key."""
    name, _, rest = key.partition(":")
    return name if name in BASELINES and ":" in rest else None


def made_from_real(key: str) -> bool:
    """Whether a key of `baseline_keys` names an image made from a real face's pixels (blur, pixelate, mask: the
    face hidden, not replaced; what the evaluation networks make of it is kept as privately as the real face's)."""
    name = baseline_of(key)
    return name is not None and not BASELINES[name].needs_fakes


def real_source(key: str) -> str:
    """The key of the real image whose pixels an image keyed `key` shows: a baseline made from real pixels shows
    its source's; any other image, itself."""
    return key.split(":", 2)[2] if made_from_real(key) else key


def apply_baseline(name: str, images: np.ndarray, fakes: np.ndarray | None = None, **params) -> np.ndarray:
    """Run baseline ``name`` with its defaults (pixel sizes scaled to the image width) overridden by ``params``.

    Overrides are taken as given, in pixels of the actual images.
    """
    images = _check(images)
    baseline, resolved = _resolve(name, images.shape[2], fakes, params)
    if baseline.needs_fakes:
        return baseline.fn(images, fakes, **resolved)
    return baseline.fn(images, **resolved)


def baseline_images(name: str, images: ImageSetLike, fakes: ImageSetLike | None = None, **params) -> ImageSetLike:
    """``apply_baseline(name, images, fakes, **params)`` as a set whose rows are made on indexing (the sources are
    read only for the rows asked for): row i holds the pixels ``apply_baseline`` gives image i. Swap is the
    ``fakes`` set itself, since its output does not depend on the source pixels."""
    check_image_set(images, f"baseline {name!r}")
    baseline, _ = _resolve(name, images.shape[2], fakes, params)  # bad names and parameters fail now, not when read
    if not baseline.needs_fakes:
        return MappedImages(lambda x: apply_baseline(name, x, **params), [images], images.shape[1:], name=name)
    check_image_set(fakes, f"baseline {name!r}: fakes")
    if tuple(fakes.shape) != tuple(images.shape):
        raise ValueError(f"fakes {fakes.shape} must match images {images.shape}: one aligned fake per real image")
    if baseline.fn is swap:
        return fakes
    return MappedImages(lambda x, f: apply_baseline(name, x, f, **params), [images, fakes], images.shape[1:],
                        name=name)
