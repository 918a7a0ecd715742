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


def _sepia(luma: np.ndarray, noise: float = 0.0, jpeg_quality: int | None = None) -> np.ndarray:
    """A black-and-white image printed in sepia (each channel a line in the luma), with a scanner's noise (sd in
    levels), maybe saved as JPEG."""
    import io

    lines = np.array([1.0, 0.88, 0.66], np.float32), np.array([24.0, 10.0, 2.0], np.float32)
    noisy = luma[..., None] * lines[0] + lines[1] + np.random.default_rng(0).normal(0, noise, (*luma.shape, 3))
    image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if jpeg_quality is None:
        return image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=jpeg_quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def test_a_toned_or_scanned_black_and_white_photo_is_monochrome_and_a_colour_face_is_not():
    """The astronaut's face (the one colour face that ships offline) in colour, and made black and white: grey,
    sepia-toned, with a scanner's noise, saved as JPEG."""
    from skimage.data import astronaut

    from anon_core.data.colour import LUMA, monochrome_tone

    face = astronaut()[20:220, 120:300]
    luma = face.astype(np.float32) @ LUMA
    assert monochrome_tone(face) is None
    assert monochrome_tone(face[:8, :8]) is None  # too few pixels to tell a tone: only exact grey counts there
    grey = np.repeat(np.rint(luma).astype(np.uint8)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(monochrome_tone(grey), np.zeros((32, 3), np.float32))
    np.testing.assert_array_equal(monochrome_tone(grey[:4, :4]), np.zeros((32, 3), np.float32))
    for toned in (_sepia(luma), _sepia(luma, noise=4.0), _sepia(luma, noise=2.0, jpeg_quality=75)):
        tone = monochrome_tone(toned)
        assert tone is not None
        middle = tone[14:18][~np.isnan(tone[14:18, 0])].mean(axis=0)  # luma near 128
        assert middle[0] > 15 and middle[2] < -10  # warm: red above the luma, blue below
    faded = np.clip(np.rint(luma[..., None] + (face - luma[..., None]) * 0.5), 0, 255).astype(np.uint8)
    assert monochrome_tone(faded) is None  # a colour photo at half its saturation is still colour


def test_in_tone_gives_a_colour_image_the_luma_and_tone_of_a_black_and_white_one():
    from skimage.data import astronaut

    from anon_core.data.colour import LUMA, in_tone, monochrome_tone

    face = astronaut()[20:220, 120:300]
    luma = face.astype(np.float32) @ LUMA
    toned = _sepia(luma)
    tone = monochrome_tone(toned)
    assert np.abs(in_tone(toned @ LUMA, tone) - toned).mean() < 1.0  # a toned photo is its own luma in its tone
    out = in_tone(luma, tone)  # the colour face: its own luma, the photo's tone
    np.testing.assert_allclose(out @ LUMA, luma, atol=1e-3)
    assert monochrome_tone(np.clip(np.rint(out), 0, 255).astype(np.uint8)) is not None
    assert (out[..., 0] >= out[..., 2]).all() and (out[..., 0] - out[..., 2]).mean() > 30  # warm throughout
    grey = in_tone(luma, np.zeros((32, 3), np.float32))
    np.testing.assert_array_equal(grey, np.repeat(face.astype(np.float32) @ LUMA[:, None], 3, axis=-1))
