"""Tests for anon_core.data.align: FFHQ quad geometry, parity with the FFHQ recipe, detection, cache.

``fixtures/ffhq_recipe_astronaut.npz`` holds the output of NVlabs/ffhq-dataset's ``recreate_aligned_images``
crop/pad/transform steps (run outside this repository on Pillow 13.0.0, ``PIL.Image.ANTIALIAS`` read as
``LANCZOS``) for ``skimage.data.astronaut()`` and the quad of its MTCNN landmarks, in four cases: ``plain``
(64 px from a 256 px transform), ``shrink`` (the image upscaled 2x bicubic, quad * 2 + 0.5, so the recipe
shrinks by 2 first), ``pad`` (the image cropped at [60:, 150:] so the quad leaves it and the blurred
reflection padding runs) and ``t64`` (transform_size = size). Our implementation matched it bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anon_core.data.align import (
    ALIGN_VERSION,
    AlignmentCache,
    FaceAligner,
    ffhq_quad,
    quad_to_output,
    warp_quad,
)
from anon_core.data.image_io import ImageRejected

skimage_data = pytest.importorskip("skimage.data")

FIXTURE = Path(__file__).parent / "fixtures" / "ffhq_recipe_astronaut.npz"
SHA = "ab" * 32


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner(256)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.array(skimage_data.astronaut())  # writable copy, [512, 512, 3]


# ------------------------------------------------------------------------------------------- geometry
def test_ffhq_quad_of_an_upright_face() -> None:
    lm = np.array([[100, 100], [140, 100], [120, 125], [105, 150], [135, 150]], dtype=float)
    # eye_to_eye (40, 0), eye_to_mouth (0, 50): x = (40 + 50, 0) scaled to max(80, 90) = 90, c = (120, 105)
    expected = [[30, 15], [30, 195], [210, 195], [210, 15]]
    np.testing.assert_allclose(ffhq_quad(lm), expected, atol=1e-12)


def test_ffhq_quad_rotates_and_scales_with_the_face() -> None:
    lm = np.array([[100, 100], [140, 104], [121, 125], [106, 152], [133, 151]], dtype=float)
    angle = np.deg2rad(30.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 1.5 * lm @ rot.T + [7.0, -3.0]
    np.testing.assert_allclose(ffhq_quad(moved), 1.5 * ffhq_quad(lm) @ rot.T + [7.0, -3.0], atol=1e-9)
    with pytest.raises(ValueError, match=r"\[5, 2\]"):
        ffhq_quad(lm[:4])


def test_warp_quad_matches_the_ffhq_recipe() -> None:
    ref = np.load(FIXTURE)
    img, quad = np.array(skimage_data.astronaut()), ref["quad"]
    np.testing.assert_allclose(ffhq_quad(ref["landmarks"]), quad, atol=1e-9)
    big = np.asarray(Image.fromarray(img).resize((1024, 1024), Image.Resampling.BICUBIC))
    cases = {"plain": (img, quad, 256), "shrink": (big, quad * 2 + 0.5, 256),
             "pad": (img[60:, 150:], quad - [150, 60], 256), "t64": (img, quad, 64)}
    for name, (image, q, transform_size) in cases.items():
        ours = warp_quad(image, q, 64, transform_size).astype(int)
        diff = np.abs(ours - ref[name].astype(int))
        # bit-exact when recorded; allow Pillow's resamplers to round differently in another version
        assert diff.max() <= 1 and diff.mean() < 0.02, (name, diff.max(), diff.mean())
    # the recipe's --no-padding: outside the image stays black, where padding put blurred reflections
    unpadded = warp_quad(img[60:, 150:], quad - [150, 60], 64, 256, padding=False)
    assert unpadded[0, 0].max() == 0 and ref["pad"][0, 0].max() > 0


def test_quad_to_output_says_where_source_points_land() -> None:
    h, w = 300, 360
    yy, xx = np.mgrid[:h, :w]
    points = np.array([[150.0, 120.0], [205.3, 131.7], [170.2, 190.6]])
    image = np.zeros((h, w, 3), np.uint8)
    for x, y in points:  # bright Gaussian blobs, sigma 3 px
        blob = 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18)
        image[..., 0] = np.maximum(image[..., 0], blob.astype(np.uint8))
    lm = np.array([[150, 120], [205, 131], [178, 160], [160, 195], [200, 203]], dtype=float)
    quad = ffhq_quad(lm)
    out = warp_quad(image, quad, 128).astype(float)[..., 0]
    expected = quad_to_output(points, quad, 128)
    oy, ox = np.mgrid[:128, :128]
    for ex, ey in expected:
        window = (np.abs(ox - ex) < 8) & (np.abs(oy - ey) < 8)
        weight = out * window
        got = np.array([(weight * ox).sum(), (weight * oy).sum()]) / weight.sum()
        assert np.abs(got - [ex, ey]).max() < 0.15, (got, (ex, ey))


# ------------------------------------------------------------------------------------------- detection
def test_astronaut_eyes_land_where_the_recipe_puts_them(aligner: FaceAligner, astronaut: np.ndarray) -> None:
    face = aligner.align(astronaut)
    assert face.image.shape == (256, 256, 3) and face.image.dtype == np.uint8 and face.faces_seen == 1
    np.testing.assert_allclose(face.quad, ffhq_quad(face.landmarks))
    expected = quad_to_output(face.landmarks[:2], face.quad, 256)
    # Eye distance sets the crop here (2 |eye_to_eye| > 1.8 |eye_to_mouth|), so FFHQ puts the eyes at 3/8 and
    # 5/8 of the width (pixel centres: -0.5), up to the small tilt the mouth adds to the crop's x axis.
    np.testing.assert_allclose(expected[:, 0], [3 / 8 * 256 - 0.5, 5 / 8 * 256 - 0.5], atol=0.5)
    redetected = aligner.detect(face.image)
    assert len(redetected) == 1
    error = np.abs(redetected[0].landmarks[:2] - expected).max()
    assert error < 2.0, error  # measured 1.47 px: MTCNN's own landmark noise at this scale


def test_dlib_landmarks_agree_with_mtcnn(astronaut: np.ndarray, aligner: FaceAligner) -> None:
    dlib_aligner = FaceAligner(256, detector="dlib")
    face = dlib_aligner.align(astronaut)
    assert face.faces_seen == 1  # the one-fold upsampled HOG detector's 0.12 false face is dropped
    np.testing.assert_array_equal(face.landmarks[3], face.landmarks[4])  # derived mouth centre, twice
    mtcnn_face = aligner.align(astronaut)
    assert np.abs(face.landmarks[:2] - mtcnn_face.landmarks[:2]).max() < 3.0  # eye centres, source pixels
    expected = quad_to_output(face.landmarks[:2], face.quad, 256)
    assert np.abs(aligner.detect(face.image)[0].landmarks[:2] - expected).max() < 2.5  # measured 1.74


def test_images_without_a_face_are_rejected(aligner: FaceAligner) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    for image in (np.array(skimage_data.coffee()), noise):
        with pytest.raises(ImageRejected) as info:
            aligner.align(image, name="cup.jpg")
        assert info.value.reason == "no_face" and info.value.detail.startswith("cup.jpg: no face found by the mtcnn")


@pytest.mark.parametrize("big_on_the_right", [True, False])
def test_two_faces_take_the_larger(aligner: FaceAligner, astronaut: np.ndarray, big_on_the_right: bool) -> None:
    face = astronaut[20:240, 120:340]  # [220, 220, 3] around the face
    small = np.asarray(Image.fromarray(face).resize((130, 130), Image.Resampling.BICUBIC))
    canvas = np.full((260, 420, 3), 128, np.uint8)
    big_x, small_x = (180, 10) if big_on_the_right else (10, 270)
    canvas[20:240, big_x:big_x + 220] = face
    canvas[65:195, small_x:small_x + 130] = small
    aligned = aligner.align(canvas)
    assert aligned.faces_seen == 2
    assert np.all((aligned.landmarks[:, 0] > big_x) & (aligned.landmarks[:, 0] < big_x + 220))
    # the same face as when the big one is aligned alone, shifted; MTCNN's stride-2 pyramid is not exactly
    # shift-invariant (measured up to 1.9 px), while the small face is 90 px away
    alone = aligner.align(np.ascontiguousarray(canvas[:, big_x:big_x + 220]))
    assert np.abs(alone.landmarks + [big_x, 0] - aligned.landmarks).max() < 3.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="detector='s3fd'"):
        FaceAligner(256, detector="s3fd")
    with pytest.raises(ValueError, match="transform_size=128 must be >= size=256"):
        FaceAligner(256, transform_size=128)
    with pytest.raises(ValueError, match=r"uint8 RGB array \[H, W, 3\]"):
        FaceAligner(64).align(np.zeros((64, 64), np.uint8))


# ------------------------------------------------------------------------------------------- cache
def _fail(*args, **kwargs):
    raise AssertionError("the detector ran although the cache holds this face")


def test_cache_skips_detection_on_the_second_call(tmp_path: Path, aligner: FaceAligner, astronaut: np.ndarray,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = AlignmentCache(tmp_path / "cache")
    first = aligner.align_cached(astronaut, SHA, cache)
    entry = tmp_path / "cache" / "ab" / f"{SHA}.ffhq-s256-t1024-mtcnn-v{ALIGN_VERSION}"
    record = json.loads(entry.with_name(entry.name + ".json").read_text())
    assert record["faces_seen"] == 1 and np.allclose(record["quad"], first.quad)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temporaries

    monkeypatch.setattr(aligner, "_detect", _fail)
    for image in (astronaut, tmp_path / "not-read.png"):  # a hit neither detects nor reads the file
        again = aligner.align_cached(image, SHA, cache)
        np.testing.assert_array_equal(again.image, first.image)
        np.testing.assert_array_equal(again.quad, first.quad)
        np.testing.assert_array_equal(again.landmarks, first.landmarks)
        assert again.faces_seen == first.faces_seen
    with pytest.raises(AssertionError, match="the detector ran"):  # other bytes: a miss
        aligner.align_cached(astronaut, "cd" * 32, cache)
    png = entry.with_name(entry.name + ".png")
    png.write_bytes(png.read_bytes()[:-10])  # a torn PNG is a miss, never a wrong face
    with pytest.raises(AssertionError, match="the detector ran"):
        aligner.align_cached(astronaut, SHA, cache)


def test_cache_keys_on_settings_and_remembers_no_face(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = AlignmentCache(tmp_path)
    small = FaceAligner(64)
    coffee = np.array(skimage_data.coffee())
    with pytest.raises(ImageRejected):
        small.align_cached(coffee, SHA, cache)
    monkeypatch.setattr(small, "_detect", _fail)
    with pytest.raises(ImageRejected, match=r"x\.jpg: no face found .*\(cached result\)") as info:
        small.align_cached(coffee, SHA, cache, name="x.jpg")
    assert info.value.reason == "no_face"
    other = FaceAligner(128)  # another size is another key
    monkeypatch.setattr(other, "_detect", _fail)
    with pytest.raises(AssertionError, match="the detector ran"):
        other.align_cached(coffee, SHA, cache)
    with pytest.raises(ValueError, match="64 lower-case hex digits"):
        cache.get("../../etc/passwd", small.settings)


def test_a_file_replaced_after_it_was_listed_is_rejected_not_kept_under_its_old_digest(tmp_path: Path,
                                                                                        astronaut: np.ndarray) -> None:
    """hD: a file replaced between the listing (its sha256) and its decoding had the new picture's crop cached, and
    journalled, under the old picture's digest; an untouched copy of the old picture took that other face's crop
    (and its fake) on every later run. Now the bytes decoded are the bytes hashed, or the file is `changed`."""
    from anon_core.data.datasets import load_dataset
    from anon_core.errors import FalcoError
    from anon_core.ingest import ingest

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "z.png"):
        Image.fromarray(astronaut).save(folder / name)
    table = load_dataset("folder", folder, None)
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(folder / "a.png")  # after its digest was taken
    got = ingest(folder, 64, "folder", None, True, "mtcnn", tmp_path / "cache", table=table)
    rows = got.table.set_index("input")
    assert (rows.loc["a.png", "status"], rows.loc["a.png", "reason"]) == ("rejected", "changed")
    assert "changed while this run read it" in rows.loc["a.png", "detail"]
    assert rows.loc["z.png", "status"] == "ok"
    np.testing.assert_array_equal(got.images()[0], FaceAligner(64).align(astronaut).image)

    plain = tmp_path / "plain"  # read as they are: decoded when the run gets to them, checked then too
    plain.mkdir()
    Image.fromarray(astronaut).save(plain / "a.png")
    listed = ingest(plain, 64, "folder", None, False, "mtcnn", tmp_path / "cache2")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(plain / "a.png")
    with pytest.raises(FalcoError, match=r"a.png: the file changed since this image set was listed \(its bytes are not "
                                         r"those hashed then\): restore it"):
        listed.images()[0]
