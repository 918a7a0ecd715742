"""Anonymization baselines: known answers on hand-made images, size scaling of the defaults, the table."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.baselines import (
    BASELINES,
    REFERENCE_SIZE,
    apply_baseline,
    black_mask,
    gaussian_blur,
    pixelate,
    swap,
)


def _noise(n=2, h=32, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_blur_keeps_flat_images_and_smooths_noise():
    flat = np.full((1, 16, 16, 3), 77, np.uint8)
    np.testing.assert_array_equal(gaussian_blur(flat, sigma=3.0), flat)
    noise = _noise()
    light, heavy = gaussian_blur(noise, 1.0), gaussian_blur(noise, 4.0)
    assert light.dtype == np.uint8 and light.shape == noise.shape
    for out, sigma in ((light, 1.0), (heavy, 4.0)):  # a 2-d Gaussian scales white noise's std by 1/(2 sqrt(pi) sigma)
        assert out.std() == pytest.approx(noise.std() / (2 * np.sqrt(np.pi) * sigma), rel=0.25)
    assert abs(float(heavy.mean()) - float(noise.mean())) < 1.0  # blur keeps the mean
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(noise, 0.0)


def test_pixelate_block_means_including_edge_blocks():
    img = np.arange(25, dtype=np.uint8).reshape(1, 5, 5, 1).repeat(3, axis=3)  # value = 5 * row + col
    out = pixelate(img, block_size=2)[0, :, :, 0]
    # Block means, rounded half to even: (0+1+5+6)/4 = 3, (2+3+7+8)/4 = 5, (4+9)/2 = 6.5 -> 6, ...,
    # bottom row blocks (20+21)/2 = 20.5 -> 20, (22+23)/2 = 22.5 -> 22, 24.
    expected = np.array(
        [
            [3, 3, 5, 5, 6],
            [3, 3, 5, 5, 6],
            [13, 13, 15, 15, 16],
            [13, 13, 15, 15, 16],
            [20, 20, 22, 22, 24],
        ]
    )
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(pixelate(img, block_size=1), img)
    assert len(np.unique(pixelate(_noise(1, 32, 32), 32)[0].reshape(-1, 3), axis=0)) == 1
    with pytest.raises(ValueError, match="block_size"):
        pixelate(img, 0)


def test_mask_covers_the_face_region_only():
    img = np.full((1, 256, 256, 3), 200, np.uint8)
    ell, box = black_mask(img), black_mask(img, shape="box")
    assert (ell[0, 142, 132] == 0).all()  # centre of the MTCNN face box (57..228, 67..197) at 256 px
    assert (ell[0, 0, 0] == 200).all() and (ell[0, 255, 255] == 200).all()
    covered_e, covered_b = (ell[0, :, :, 0] == 0).mean(), (box[0, :, :, 0] == 0).mean()
    assert covered_e == pytest.approx(np.pi / 4 * covered_b, rel=0.03)  # inscribed ellipse
    assert covered_b == pytest.approx((171 * 130 * 1.1**2) / 256**2, rel=0.03)
    assert (black_mask(img, value=128)[0, 142, 132] == 128).all()
    with pytest.raises(ValueError, match="region"):
        black_mask(img, region="full")


def test_swap_returns_the_paired_fakes():
    real, fake = _noise(seed=1), _noise(seed=2)
    out = swap(real, fake)
    np.testing.assert_array_equal(out, fake)
    assert out is not fake
    with pytest.raises(ValueError, match="must match"):
        swap(real, fake[:1])


def test_table_defaults_scale_with_width():
    assert set(BASELINES) == {"blur", "pixelate", "mask", "swap"}
    images = _noise(1, 128, 128)
    half = 128 / REFERENCE_SIZE
    np.testing.assert_array_equal(apply_baseline("blur", images), gaussian_blur(images, 8.0 * half))
    np.testing.assert_array_equal(apply_baseline("pixelate", images), pixelate(images, 8))
    np.testing.assert_array_equal(apply_baseline("pixelate", images, block_size=4), pixelate(images, 4))
    np.testing.assert_array_equal(apply_baseline("mask", images), black_mask(images))
    np.testing.assert_array_equal(apply_baseline("swap", images, fakes=images[::-1]), images[::-1])


def test_table_refuses_bad_calls():
    images = _noise(1, 16, 16)
    with pytest.raises(ValueError, match="unknown baseline"):
        apply_baseline("cartoon", images)
    with pytest.raises(ValueError, match="no parameter"):
        apply_baseline("blur", images, radius=3)
    with pytest.raises(ValueError, match="needs the paired fake"):
        apply_baseline("swap", images)
    with pytest.raises(ValueError, match="uint8"):
        apply_baseline("blur", images.astype(np.float32))
