"""Bad and unusual inputs for anon_core.data.image_io and anon_core.data.scan, one test per kind."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from anon_core.data import (
    IMAGE_EXTENSIONS,
    REJECT_REASONS,
    ImageRejected,
    load_rgb,
    output_relpath,
    save_png,
    scan_folder,
    to_tensor,
    to_uint8,
)
from anon_core.data.image_io import MAX_PIXELS


def _rng_image(height: int = 48, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _blocks_image() -> np.ndarray:
    """64 x 64 of flat 16 px blocks (JPEG keeps flat blocks almost exactly)."""
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:32, :32] = (200, 30, 30)
    image[:32, 32:] = (30, 200, 30)
    image[32:, :32] = (30, 30, 200)
    image[32:, 32:] = (220, 220, 220)
    return image


def _jpeg_bytes(image: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _reject(path: Path, **kwargs) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        load_rgb(path, **kwargs)
    error = info.value
    assert error.reason in REJECT_REASONS
    assert str(path) in error.detail, "the detail must name the file"
    return error


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming width x height, followed by one row of pixel data only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    one_row = zlib.compress(b"\x00" * (1 + 3 * min(width, 1000)))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", one_row) + _png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------- rejections


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _reject(path).reason == "empty_file"


@pytest.mark.parametrize("keep_fraction", [0.5, 0.15])
def test_truncated_jpeg_is_rejected_not_padded(tmp_path: Path, keep_fraction: float) -> None:
    data = _jpeg_bytes(_rng_image(64, 64))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    assert _reject(path).reason == "truncated"


def test_jpeg_cut_inside_header_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "header.jpg"
    path.write_bytes(_jpeg_bytes(_rng_image(64, 64))[:20])
    assert _reject(path).reason == "truncated"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "BMP"])
def test_truncated_other_formats_are_rejected(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_rng_image(64, 64)).save(buffer, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert _reject(path).reason == "truncated"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about some corrupt TIFF tags
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP"])
def test_corrupted_bytes_never_escape_as_other_errors(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_rng_image(48, 48)).save(buffer, format=fmt)
    original = buffer.getvalue()
    rng = np.random.default_rng(7)
    path = tmp_path / f"fuzz.{fmt.lower()}"
    for _ in range(40):
        data = bytearray(original)
        for position in rng.integers(0, len(data), size=4):
            data[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data[: int(rng.integers(len(data) // 2, len(data) + 1))]))
        try:
            image = load_rgb(path)
        except ImageRejected as error:
            assert error.reason in REJECT_REASONS and str(path) in error.detail
        else:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_text_file_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are my notes, not a photo\n")
    assert _reject(path).reason == "not_an_image"


@pytest.mark.parametrize("fmt", ["GIF", "ICO"])
def test_formats_pillow_opens_but_we_refuse(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"face.{fmt.lower()}"
    Image.fromarray(_rng_image(48, 48)).save(path, format=fmt)
    error = _reject(path)
    assert error.reason == "unsupported_format"
    assert fmt in error.detail


@pytest.mark.parametrize("brand, kind", [(b"heic", "HEIC"), (b"mif1", "HEIF"), (b"avif", "AVIF")])
def test_a_phone_heic_photo_is_an_unsupported_format_not_a_damaged_file(tmp_path: Path, brand: bytes,
                                                                         kind: str) -> None:
    """An iPhone's HEIC was "not an image file", which reads as damaged; it is a format falco does not read."""
    for name in ("IMG_0001.HEIC", "renamed.jpg"):
        path = tmp_path / name
        path.write_bytes(b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00mif1heic" + bytes(64))
        error = _reject(path)
        assert error.reason == "unsupported_format"
        article = "an" if kind == "AVIF" else "a"
        assert f": {article} {kind} image (as phones save photos), which falco does not read; convert it to JPEG" \
            in error.detail


def test_a_damaged_exif_block_prints_no_warning(tmp_path: Path) -> None:
    """Pillow's "Corrupt EXIF data" / "Truncated File Read" warnings appeared amid the summary without naming the
    photo; the pixels are read whole and no metadata is written out."""
    import subprocess
    import sys

    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Camera maker " * 8
    path = tmp_path / "cut_exif.jpg"
    path.write_bytes(_jpeg_bytes(_rng_image(40, 64), exif=exif.tobytes()[:-20]))
    code = ("import sys; from pathlib import Path; from anon_core.data.image_io import load_rgb, displayed_size; "
            "image = load_rgb(Path(sys.argv[1])); print(image.shape, displayed_size(Path(sys.argv[1])))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stderr == "" and done.stdout.strip() in ("(64, 40, 3) (40, 64)", "(40, 64, 3) (64, 40)")


def test_gif_named_jpg_is_judged_by_content(tmp_path: Path) -> None:
    path = tmp_path / "face.jpg"
    Image.fromarray(_rng_image(48, 48)).save(path, format="GIF")
    assert _reject(path).reason == "unsupported_format"


def test_tiny_image_rejected_and_boundary_accepted(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(_rng_image(31, 100)).save(small)
    error = _reject(small)
    assert error.reason == "too_small" and "32" in error.detail
    edge = tmp_path / "edge.png"
    Image.fromarray(_rng_image(32, 32)).save(edge)
    assert load_rgb(edge).shape == (32, 32, 3)


def test_huge_header_rejected_without_decoding(tmp_path: Path) -> None:
    # The files hold one row of pixels, so a decode attempt would end as "truncated", not "too_large".
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 100_000, 100_000)  # beyond Pillow's own DecompressionBombError limit
    assert _reject(bomb).reason == "too_large"
    # one limit, falco's (before: Pillow's error text, naming its own 178956970-pixel limit, then falco's)
    assert _reject(bomb).detail == f"{bomb}: 10000000000 px exceeds the limit of {MAX_PIXELS} px; downscale it."
    ours = tmp_path / "big.png"
    _png_header_only(ours, 9_000, 9_000)  # 81 MP: over MAX_PIXELS, under Pillow's error limit
    assert _reject(ours).reason == "too_large"


def test_reading_a_huge_header_prints_no_pillow_warning(tmp_path: Path) -> None:
    """Before, Pillow's DecompressionBombWarning (between 89 and 179 MP) reached the terminal beside falco's own
    `too_large` row: the header checks silenced warnings only once the file was open, after Pillow had warned."""
    import warnings

    from anon_core.data.image_io import displayed_size, flattened, is_image_file

    path = tmp_path / "big.png"
    _png_header_only(path, 12_000, 12_000)  # 144 MP
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        displayed_size(path)
        assert is_image_file(path) and flattened(path) == []
        assert _reject(path).reason == "too_large"
    assert [str(w.message) for w in caught] == []


def test_max_pixels_checked_before_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.png"
    Image.fromarray(_rng_image(64, 64)).save(path)

    def no_decode(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    assert _reject(path, max_pixels=64 * 64 - 1).reason == "too_large"


def test_missing_file_and_folder_are_unreadable(tmp_path: Path) -> None:
    assert _reject(tmp_path / "nope.png").reason == "unreadable"
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    assert _reject(folder).reason == "unreadable"


def test_refuses_to_run_with_truncated_loading_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.png"
    Image.fromarray(_rng_image()).save(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_rgb(path)


def test_unknown_reject_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown reject reason"):
        ImageRejected("blurry", "x")


# ---------------------------------------------------------------------------------------------- conversions


def test_rgb_png_loads_exactly(tmp_path: Path) -> None:
    image = _rng_image()
    path = tmp_path / "rgb.png"
    Image.fromarray(image).save(path)
    loaded = load_rgb(path)
    assert loaded.dtype == np.uint8 and loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, image)


def test_cmyk_jpeg_converted_with_right_colours(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (64, 64))
    patches = {  # CMYK ink -> expected RGB
        (0, 0): ((0, 255, 255, 0), (255, 0, 0)),
        (32, 0): ((255, 0, 255, 0), (0, 255, 0)),
        (0, 32): ((255, 255, 0, 0), (0, 0, 255)),
        (32, 32): ((0, 0, 0, 0), (255, 255, 255)),
    }
    for (x, y), (ink, _) in patches.items():
        cmyk.paste(ink, (x, y, x + 32, y + 32))
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, format="JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    loaded = load_rgb(path)
    assert loaded.shape == (64, 64, 3)
    for (x, y), (_, rgb) in patches.items():
        centre = loaded[y + 16, x + 16].astype(int)
        assert np.abs(centre - np.array(rgb)).max() <= 6, (centre, rgb)  # JPEG tolerance


def test_16bit_png_ramp_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 32 * 64).round().astype(np.uint16).reshape(32, 64)  # [H, W]
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = load_rgb(path)
    expected = np.round(ramp / 257.0).astype(np.uint8)  # exact: v / 257 is never k + 0.5 for integer v
    assert loaded.shape == (32, 64, 3)
    np.testing.assert_array_equal(loaded[:, :, 0], expected)
    np.testing.assert_array_equal(loaded[:, :, 1], loaded[:, :, 2])
    assert loaded[0, 0, 0] == 0 and loaded[-1, -1, 0] == 255
    assert 100 < loaded[16, 0, 0] < 156, "mid-ramp must be mid-grey (clipping would give 255)"


def test_16bit_grey_png_with_a_transparent_level_is_flattened_onto_white_as_its_note_says(tmp_path: Path) -> None:
    from anon_core.data.image_io import flattened

    values = np.full((32, 40), 1000, np.uint16)
    values[:8] = 0  # the tRNS level
    path = tmp_path / "grey16_trns.png"
    Image.frombytes("I;16", (40, 32), values.astype("<u2").tobytes()).save(path, transparency=0)
    loaded = load_rgb(path)
    assert (loaded[:8] == 255).all() and (loaded[8:] == 4).all()  # round(1000 / 257)
    assert flattened(path) == ["its transparency was flattened onto white"]


def test_32bit_int_tiff_in_16bit_range_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.int32).repeat(32, 0).repeat(8, 1)  # [32, 32]
    path = tmp_path / "int.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    loaded = load_rgb(path)
    np.testing.assert_array_equal(loaded[0, ::8, 0], [0, 1, 128, 255])


def test_32bit_int_outside_16bit_range_rejected(tmp_path: Path) -> None:
    path = tmp_path / "wide.tif"
    Image.fromarray(np.full((32, 32), 70_000, dtype=np.int32)).save(path)
    assert _reject(path).reason == "unsupported_format"


@pytest.mark.parametrize("dtype, says", [(np.float32, "3 samples of 32-bit floating-point"),
                                         (np.int8, "3 samples of 8-bit signed integer")])
def test_a_tiff_of_pixels_pillow_cannot_read_is_named_unsupported_not_truncated(tmp_path: Path, dtype, says) -> None:
    import tifffile  # scikit-image's TIFF writer: Pillow cannot write these either

    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, (_rng_image(32, 32) // 2).astype(dtype), photometric="rgb")
    rejected = _reject(path)
    assert rejected.reason == "unsupported_format" and says in rejected.detail
    path.write_bytes(path.read_bytes()[:60])  # its directory cut short: truncated after all
    assert _reject(path).reason == "truncated"


def test_rgba_alpha_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((32, 48, 4), dtype=np.uint8)
    rgba[:, :16] = (10, 20, 30, 255)   # opaque
    rgba[:, 16:32] = (10, 20, 30, 0)   # transparent -> white
    rgba[:, 32:] = (0, 100, 200, 128)  # half -> blend
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    loaded = load_rgb(path)
    np.testing.assert_array_equal(loaded[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(loaded[0, 20], (255, 255, 255))
    expected = np.round((np.array([0, 100, 200]) * 128 + 255 * 127) / 255)
    np.testing.assert_array_equal(loaded[0, 40], expected)


def test_la_png_composited(tmp_path: Path) -> None:
    la = np.zeros((32, 32, 2), dtype=np.uint8)
    la[:, :16] = (50, 255)
    la[:, 16:] = (50, 0)
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    loaded = load_rgb(path)
    np.testing.assert_array_equal(loaded[0, 0], (50, 50, 50))
    np.testing.assert_array_equal(loaded[0, 20], (255, 255, 255))


def test_palette_png_converted(tmp_path: Path) -> None:
    palette_image = Image.fromarray(_blocks_image()).quantize(colors=4)
    path = tmp_path / "palette.png"
    palette_image.save(path)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(load_rgb(path), np.asarray(palette_image.convert("RGB")))


def test_palette_png_with_transparency_composited(tmp_path: Path) -> None:
    palette_image = Image.new("P", (32, 32), 0)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.paste(1, (16, 0, 32, 32))
    path = tmp_path / "palette_t.png"
    palette_image.save(path, transparency=0)  # index 0 (red) is transparent
    loaded = load_rgb(path)
    np.testing.assert_array_equal(loaded[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(loaded[0, 20], (0, 0, 255))


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_converted_to_three_equal_channels(tmp_path: Path, mode: str) -> None:
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1))  # [40, 64]
    image = Image.fromarray(grey).convert(mode)
    path = tmp_path / f"grey_{mode}.png"
    image.save(path)
    loaded = load_rgb(path)
    assert loaded.shape == (40, 64, 3)
    np.testing.assert_array_equal(loaded[:, :, 0], np.asarray(image.convert("L")))
    np.testing.assert_array_equal(loaded[:, :, 0], loaded[:, :, 1])
    np.testing.assert_array_equal(loaded[:, :, 0], loaded[:, :, 2])


def test_exif_orientation_applied(tmp_path: Path) -> None:
    stored = np.zeros((40, 64, 3), dtype=np.uint8)  # stored landscape: H=40, W=64
    stored[:16, :16] = (255, 0, 0)  # red marker top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(stored, exif=exif.tobytes()))
    raw = np.asarray(Image.open(path).convert("RGB"))  # [40, 64, 3] as stored, orientation ignored
    loaded = load_rgb(path)
    assert loaded.shape == (64, 40, 3), "portrait after applying orientation 6"
    np.testing.assert_array_equal(loaded, np.rot90(raw, k=-1))  # lossless transpose of decoded pixels
    assert loaded[8, 40 - 8, 0] > 200 and loaded[8, 8, 0] < 60, "marker moved to the top-right"


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff"])
def test_displayed_size_is_the_size_of_the_loaded_image_under_every_orientation(tmp_path: Path, fmt: str) -> None:
    """`falco evaluate` compares a photo's displayed size (from its header) with the output's: Pillow's TIFF reader
    turns the size itself, where the others leave it to the EXIF orientation."""
    from anon_core.data.image_io import displayed_size

    stored = Image.fromarray(_rng_image(40, 64))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{fmt}"
        stored.save(path, format=fmt.upper(), exif=exif)
        height, width = load_rgb(path).shape[:2]
        assert displayed_size(path) == (width, height), orientation
        assert (height, width) == ((64, 40) if orientation >= 5 else (40, 64))


def test_spaces_and_non_ascii_names(tmp_path: Path) -> None:
    folder = tmp_path / "my photos" / "été 顔"
    folder.mkdir(parents=True)
    image = _rng_image()
    path = folder / "Zoë face 1.PNG"
    Image.fromarray(image).save(path, format="PNG")
    np.testing.assert_array_equal(load_rgb(path), image)
    scanned = scan_folder(tmp_path)
    assert [item.relpath for item in scanned] == ["my photos/été 顔/Zoë face 1.PNG"]
    assert scanned[0].path == path and scanned[0].path.is_absolute()
    assert output_relpath(scanned[0].relpath) == "my photos/été 顔/Zoë face 1.png"


# ---------------------------------------------------------------------------------------------- writing and tensors


def test_save_png_round_trips_exactly_and_atomically(tmp_path: Path) -> None:
    image = _rng_image(37, 53, seed=3)
    path = tmp_path / "new" / "deeper" / "out.png"
    save_png(path, image)
    np.testing.assert_array_equal(load_rgb(path), image)
    save_png(path, image[::-1].copy())  # overwrite in place
    np.testing.assert_array_equal(load_rgb(path), image[::-1])
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"], "no temporary file left behind"


def test_photographs_are_written_exactly_and_no_larger_than_pillows_default(tmp_path: Path) -> None:
    """The anonymized faces, the photos of photo mode and the cached alignments are photographs: their PNGs must read
    back exactly, and the faster encoding (zlib's run-length strategy) must not cost disk space on them."""
    from skimage import data

    astronaut = np.asarray(Image.fromarray(data.astronaut()).resize((1024, 1024), Image.BICUBIC))
    retina = np.ascontiguousarray(data.retina()[190:190 + 768, 190:190 + 768])
    for name, image in (("astronaut", astronaut), ("retina", retina)):
        path = tmp_path / f"{name}.png"
        save_png(path, image)
        np.testing.assert_array_equal(load_rgb(path), image)
        pillow_default = io.BytesIO()
        Image.fromarray(image).save(pillow_default, format="PNG")
        assert path.stat().st_size < pillow_default.tell(), name


def test_save_png_rejects_wrong_dtype(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "x.png", np.zeros((8, 8, 3), dtype=np.float32))
    assert not (tmp_path / "x.png").exists()


def test_to_uint8_clamps_instead_of_rescaling() -> None:
    images = torch.tensor([1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]).view(1, 1, 1, 7).expand(2, 3, 1, 7)
    out = to_uint8(images)
    assert out.shape == (2, 1, 7, 3) and out.dtype == np.uint8
    # min-max scaling would map 1.5 -> 255 but 1.0 -> 229 and 0.5 -> 204
    np.testing.assert_array_equal(out[0, 0, :, 0], [255, 255, 191, 128, 64, 0, 0])


def test_to_uint8_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((1, 3, 2, 2), float("nan")))


def test_to_tensor_range_layout_and_round_trip() -> None:
    images = [_rng_image(16, 16, seed=1), _rng_image(16, 16, seed=2)]
    tensor = to_tensor(images, 16)
    assert tensor.shape == (2, 3, 16, 16) and tensor.dtype == torch.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    assert tensor[1, 2, 3, 4].item() == pytest.approx(images[1][3, 4, 2] / 127.5 - 1.0, abs=1e-6)
    np.testing.assert_array_equal(to_uint8(tensor), np.stack(images))


def test_to_tensor_resizes_with_pil_bicubic() -> None:
    image = _rng_image(48, 40, seed=4)
    batch = np.stack([image, image[::-1]])  # [2, 48, 40, 3]
    tensor = to_tensor(batch, 24)
    expected = np.asarray(Image.fromarray(image).resize((24, 24), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(to_uint8(tensor)[0], expected)


# ---------------------------------------------------------------------------------------------- scanning


def test_scan_lists_every_regular_file_sorted_and_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / "b" / "2.jpg").write_bytes(b"two")
    (tmp_path / "a.png").write_bytes(b"one")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / ".cache" / "hidden.png").write_bytes(b"y")
    scanned = scan_folder(tmp_path)
    assert [item.relpath for item in scanned] == ["a.png", "b/2.jpg", "notes.txt"]
    assert all(item.skip_reason is None and item.duplicate_of is None for item in scanned)
    assert scanned[0].sha256 == "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"  # sha256("one")
    filtered = scan_folder(tmp_path, extensions=IMAGE_EXTENSIONS)
    assert [item.relpath for item in filtered] == ["a.png", "b/2.jpg"]


def test_scan_reports_duplicates(tmp_path: Path) -> None:
    for name, data in [("c.png", b"same"), ("a.png", b"same"), ("b.png", b"other"), ("d/e.png", b"same")]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    scanned = {item.relpath: item for item in scan_folder(tmp_path)}
    assert scanned["a.png"].duplicate_of is None
    assert scanned["b.png"].duplicate_of is None
    assert scanned["c.png"].duplicate_of == "a.png"
    assert scanned["d/e.png"].duplicate_of == "a.png"
    assert scanned["c.png"].sha256 == scanned["a.png"].sha256


def test_scan_does_not_follow_symlinks_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "input"
    outside = tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"not yours")
    (root / "real.png").write_bytes(b"real")
    os.symlink(outside / "secret.png", root / "link.png")
    os.symlink(outside, root / "linked_dir")
    os.symlink(root / "real.png", root / "inside_link.png")
    scanned = {item.relpath: item for item in scan_folder(root)}
    assert set(scanned) == {"real.png", "link.png", "linked_dir", "inside_link.png"}
    for name in ("link.png", "linked_dir"):
        assert scanned[name].skip_reason == "outside_input"
        assert scanned[name].sha256 is None, "a file outside the root must not be read"
    assert scanned["inside_link.png"].skip_reason is None
    assert scanned["inside_link.png"].sha256 == scanned["real.png"].sha256
    assert scanned["real.png"].duplicate_of == "inside_link.png", "first in sorted order wins"
    detail = scanned["link.png"].skip_detail()  # the manifest's note: what the link points at, and the fix
    assert detail.startswith("link.png: a link to ") and str(outside / "secret.png") in detail
    assert "copy the file into the input folder" in detail


def test_scan_survives_symlink_loops_and_broken_links(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "sub" / "loop_to_root")  # directory cycle
    os.symlink(tmp_path / "self.png", tmp_path / "self.png")  # link to itself
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    os.symlink("/nonexistent/elsewhere.png", tmp_path / "broken_outside.png")  # broken first, outside second
    scanned = {item.relpath: item for item in scan_folder(tmp_path)}
    assert set(scanned) == {"sub/x.png", "self.png", "broken.png", "broken_outside.png"}
    for name in ("self.png", "broken.png", "broken_outside.png"):
        assert scanned[name].skip_reason == "unreadable"
    assert scanned["broken_outside.png"].skip_detail() == (
        "broken_outside.png: a broken link (to /nonexistent/elsewhere.png, which does not exist, or a link loop): "
        "not read")


def test_scan_missing_root_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        scan_folder(tmp_path / "does-not-exist")


def test_output_relpath() -> None:
    assert output_relpath("a/b c/x.JPG") == "a/b c/x.png"
    assert output_relpath("noext") == "noext.png"
    assert output_relpath("x.jpeg", suffix=".npy") == "x.npy"
    with pytest.raises(ValueError):
        output_relpath("../escape.jpg")
    with pytest.raises(ValueError):
        output_relpath("/abs.jpg")


def test_only_an_image_with_a_transparent_pixel_is_said_to_lose_its_transparency(tmp_path):
    """An alpha channel that is opaque everywhere (a lossless WebP opens as RGBA, many exports add one) loses nothing
    when flattened onto white: its row gets no note, where one transparent pixel gets it."""
    from anon_core.data.image_io import flattened

    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "opaque.png")
    Image.fromarray(rgb).convert("LA").save(tmp_path / "grey_opaque.png")
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[::-1])]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    holed = Image.fromarray(rgb).convert("RGBA")
    holed.putpixel((3, 3), (0, 0, 0, 254))
    holed.save(tmp_path / "one_pixel.png")
    assert flattened(tmp_path / "opaque.png") == flattened(tmp_path / "grey_opaque.png") == []
    assert flattened(tmp_path / "anim.webp") == ["only its first frame of 2 was read"]
    assert flattened(tmp_path / "one_pixel.png") == ["its transparency was flattened onto white"]


def test_a_fifo_in_the_input_is_listed_as_unreadable_and_never_opened(tmp_path: Path) -> None:
    """A FIFO (or a link to one) got no row at all; opening one would block the run until something writes to it."""
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink(tmp_path / "pipe.png", tmp_path / "link.png")
    (tmp_path / "x.png").write_bytes(b"x")
    scanned = {item.relpath: item.skip_reason for item in scan_folder(tmp_path)}  # returns: nothing was opened
    assert scanned == {"pipe.png": "unreadable", "link.png": "unreadable", "x.png": None}
