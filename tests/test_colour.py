"""Black-and-white sources keep black-and-white faces (anon_core.data.colour)."""

import numpy as np
from PIL import Image

from anon_core.data.colour import is_grey, keep_grey, to_grey


def test_a_grey_image_is_one_with_three_equal_channels_everywhere():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (16, 16, 1), dtype=np.uint8), 3, axis=2)
    assert is_grey(grey)
    tinted = grey.copy()
    tinted[5, 7, 2] ^= 1  # one channel of one pixel one level off
    assert not is_grey(tinted)
    assert not is_grey(np.zeros((0, 0, 3), np.uint8))


def test_keep_grey_makes_only_the_rows_it_names_grey_as_pillows_luma():
    images = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    out = keep_grey(images, np.array([False, True, False]))
    np.testing.assert_array_equal(out[[0, 2]], images[[0, 2]])
    assert is_grey(out[1]) and not is_grey(images[1])
    pillow = np.asarray(Image.fromarray(images[1]).convert("L")).astype(int)
    assert np.abs(out[1][..., 0].astype(int) - pillow).max() <= 1  # the same weights; Pillow rounds in fixed point
    assert keep_grey(images, np.zeros(3, bool)) is images
    np.testing.assert_array_equal(to_grey(out[1]), out[1])  # grey stays as it is
