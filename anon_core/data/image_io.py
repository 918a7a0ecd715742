"""Robust image reading, validation and writing for user-supplied face folders.

Reference: none to port; this module follows Pillow's documented behaviour (``Image.open`` reads only the
header, ``Image.load`` decodes, ``ImageOps.exif_transpose`` applies the EXIF Orientation tag) and the
conventions of DESIGN.md section 6: images are written as lossless PNG with atomic writes, and generator output
in [-1, 1] is converted to 8 bit by clamping, never by min-max rescaling (a defect of the official FALCO code).

Every way an input file can be bad becomes an :class:`ImageRejected` with a short machine ``reason`` (one of
:data:`REJECT_REASONS`) and a human ``detail`` naming the file, so a pipeline can skip the file and report it.
Accepted: JPEG (incl. MPO camera JPEGs), PNG, BMP, WebP and TIFF whose shorter side is at least
:data:`MIN_SIDE` pixels and whose pixel count is at most :data:`MAX_PIXELS` (checked from the header, before
any pixel is decoded).
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from anon_core.atomic import write_bytes_atomic

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "REJECT_REASONS",
    "ImageRejected",
    "encode_png",
    "is_image_file",
    "load_rgb",
    "read_listed",
    "save_png",
    "to_tensor",
    "to_uint8",
]

# Pillow warns (and reads on) where a photo's EXIF block is damaged ("Corrupt EXIF data", "Truncated File Read"),
# without naming the file. Its pixels are read whole and no metadata is written out, so the warning tells a user
# nothing to act on. (`_tiff_pixels`'s "error" filter comes first and still sees a cut TIFF directory.)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")

MIN_SIDE = 32
"""Images whose shorter side is below this many pixels are rejected ("too_small"): no face in them can be
aligned to the networks' input sizes without inventing detail."""

MAX_PIXELS = 64_000_000
"""Images with more pixels than this (width * height from the header) are rejected ("too_large") before
decoding: an 8-bit RGB decode of 64 MP already takes ~190 MB, and a crafted header can claim far more."""

PNG_COMPRESS_LEVEL = 6
"""zlib level of every PNG we write (Pillow's default)."""

PNG_ZLIB_STRATEGY = zlib.Z_RLE
"""zlib strategy of every PNG we write. After PNG's per-row filters a photograph is mostly short runs of small
differences, which zlib's default string matching searches at length for little gain: run-length matching encoded
1024 px photographs 4.7-4.9x faster and 0-2% smaller, smooth noise 1.8x faster at the same size, and blown-up
low-resolution faces 2.5x faster but 25% larger (`bench/png_writing.py`). Content that repeats at a distance (a tiled
texture, a screenshot) can come out many times larger; the networks and cameras do not make it. Lossless either
way: the pixels read back are the same."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
"""File name suffixes (lower case) of the formats we accept; scanning uses them only when asked to filter."""

REJECT_REASONS = (
    "empty_file",          # zero bytes
    "not_an_image",        # no image format recognises the bytes (e.g. a text file named .jpg)
    "truncated",           # the header is an image's but the data ends early
    "unsupported_format",  # a real image, but a format or pixel type we do not accept (GIF, ICO, float TIFF)
    "too_small",           # shorter side < min_side
    "too_large",           # width * height > max_pixels, or Pillow's decompression-bomb guard fired
    "corrupt",             # the decoder found damaged data (libjpeg's "Corrupt JPEG data", a broken data stream)
    "unreadable",          # missing, a folder, no permission, or any other decode failure
    "outside_input",       # a symlink resolving outside the input folder (set by scan.scan_folder)
    "bad_name",            # a file name that is not UTF-8 text, which no manifest can hold (set by scan.scan_folder)
    "no_face",             # no face found (set by face detection/alignment, not by this module)
    "changed",             # its bytes are not those listed when the run began: it changed while the run read it
)

# Pillow format names (``Image.format``) we accept. MPO is what Pillow calls many phone/camera JPEGs.
_ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"})

# Leading bytes of accepted formats; a file that starts like one but cannot be identified is "truncated".
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_WHITE = 255


class ImageRejected(Exception):
    """An input image that cannot be used; ``reason`` is one of REJECT_REASONS, ``detail`` names the file."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; expected one of {REJECT_REASONS}")
        super().__init__(f"[{reason}] {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # keep reason/detail when pickled across worker processes
        return (type(self), (self.reason, self.detail))


def _sniff_format(path: Path) -> str | None:
    """Name of the accepted format whose signature the file starts with, else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC", b"hevx": "HEIC",
                b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def _heif_kind(path: Path) -> str | None:
    """"HEIC", "HEIF" or "AVIF" for a file that starts with an ISO media `ftyp` box of those brands (what phones
    write), which Pillow does not read; else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return None
    return _HEIF_BRANDS.get(head[8:12]) if head[4:8] == b"ftyp" else None


_TIFF_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point", 4: "untyped", 5: "complex",
                        6: "complex floating-point"}


def _tiff_pixels(path: Path) -> str | None:
    """What a TIFF's first image directory says its pixels are ("3 samples of 32-bit floating-point"), or None when
    that directory cannot be read (the file is truncated or corrupt)."""
    from PIL import TiffImagePlugin

    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow warns, and goes on, where the directory is cut short
            directory = TiffImagePlugin.ImageFileDirectory_v2(handle.read(8))
            handle.seek(directory.next)
            directory.load(handle)
        if not {256, 257, 258} <= set(directory):  # width, height, bits per sample
            return None
        bits = directory[258]
        formats = directory.get(339, (1,))
        samples = int(directory.get(277, len(bits)))
        return (f"{samples} sample{'s' * (samples != 1)} of {bits[0]}-bit "
                f"{_TIFF_SAMPLE_FORMATS.get(formats[0], f'sample format {formats[0]}')} per pixel")
    except Exception:  # SyntaxError, struct.error, OSError, IndexError: no readable directory
        return None


T = TypeVar("T")


_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})


def read_listed(path: Path, sha256: str | None) -> bytes:
    """The file's bytes, which must be those whose digest was listed (`sha256`, as `hashing.sha256_file` gives it),
    or ImageRejected("changed"). Decoding these bytes (the `data` of `load_rgb` and the header readers), not the
    file again, keeps what a run read one with what it recorded and cached by that digest: a photo replaced between
    the listing and the decoding had its faces found in the new picture and kept under the old one's digest, where
    the old picture, put back or copied elsewhere, later took them, its real face left as it was."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc, "read the file") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageRejected("changed", f"{path}: the file changed while this run read it (its bytes are not those "
                                       "listed when the run began); run the command again once it is written whole.")
    return data


def _unreadable(path: Path, error: OSError, doing: str) -> ImageRejected:
    """The `unreadable` rejection of a file that `doing` ("read the file", "stat file") failed on."""
    if isinstance(error, FileNotFoundError):
        return ImageRejected("unreadable", f"{path}: file does not exist.")
    if isinstance(error, IsADirectoryError):
        return ImageRejected("unreadable", f"{path}: is a folder, not an image file.")
    return ImageRejected("unreadable", f"{path}: cannot {doing} ({error.strerror or error}).")


def _source(path: Path, data: bytes | None):
    """What Pillow opens: the bytes read once (`read_listed`), else the file."""
    return path if data is None else io.BytesIO(data)


def _from_header(path: Path, read: Callable[[Image.Image], T], otherwise: T, data: bytes | None = None) -> T:
    """`read` of the opened image (its header; nothing is decoded unless `read` asks), or `otherwise` where the file
    cannot be opened as an image (not one, unreadable, a bomb header: `load_rgb` will say which). `data`: the file's
    bytes, read already."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # before opening: Pillow's bomb warning comes from `open` itself
            with Image.open(_source(path, data)) as image:
                return read(image)
    except Exception:
        return otherwise


def flattened(path: Path, data: bytes | None = None) -> list[str]:
    """What reading the file as one RGB image (`load_rgb`) leaves out: frames after the first (from the header; an
    MPO's extra pictures, a phone's previews, not counted) and transparency where a pixel of the first frame has
    some (an opaque image with an alpha channel loses nothing). Empty for an unreadable file."""
    def left_out(image: Image.Image) -> list[str]:
        frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
        return ([f"only its first frame of {frames} was read"] if frames > 1 else []) + \
            (["its transparency was flattened onto white"] if _has_transparent_pixel(image) else []) + \
            (["its 16 bits per colour channel were read as 8 (Pillow reads their high byte)"]
             if _deep_colour(image) else [])

    return _from_header(path, left_out, [], data)


def _deep_colour(image: Image.Image) -> bool:
    """Whether the file holds 16-bit colour (a 48- or 64-bit PNG or TIFF), which Pillow decodes to 8 bits."""
    rawmode = image.tile[0].args if image.tile else None
    rawmode = rawmode[0] if isinstance(rawmode, tuple) and rawmode else rawmode
    return image.mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode


def stores_grey(path: Path, data: bytes | None = None) -> bool:
    """Whether the file holds one grey channel (bilevel, 8- or 16-bit grey, with or without alpha), from the
    header; False for an unreadable file."""
    return _from_header(path, lambda image: image.mode in _GREY_MODES, False, data)


def _has_transparent_pixel(image: Image.Image) -> bool:
    """Whether the first frame has a pixel that is not fully opaque (decodes it; only images that can have one)."""
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return False
    try:
        image.seek(0)
        return image.convert("RGBA").getchannel("A").getextrema()[0] < 255
    except Exception:  # a mode Pillow cannot convert: say what may have been lost
        return True


def displayed_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of the image `load_rgb` gives (its EXIF orientation applied), from the header; None when the
    header cannot be read."""
    def size(image: Image.Image) -> tuple[int, int]:
        width, height = image.size
        turned = image.getexif().get(0x0112) in (5, 6, 7, 8)  # Orientation: a quarter turn, or a transpose
        if turned and image.format == "TIFF" and (image.tag_v2.get(256), image.tag_v2.get(257)) != (width, height):
            turned = False  # this Pillow's TIFF reader gives the turned size (and turns the pixels) itself
        return (height, width) if turned else (width, height)

    return _from_header(path, size, None)


def is_image_file(path: Path) -> bool:
    """Whether the file's header is one of an accepted format (nothing is decoded)."""
    return _from_header(path, lambda image: image.format in _ACCEPTED_FORMATS, False)


def _riff_is_short(path: Path) -> bool:
    """True for a RIFF (WebP) file whose header declares more bytes than the file holds."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
        actual = path.stat().st_size
    except OSError:
        return False
    return len(head) == 8 and head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 > actual


def grey_to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit grey levels (0..65535) -> uint8, round(v / 257): how `load_rgb` reads a 16-bit grey image."""
    return ((np.asarray(values, dtype=np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def load_deep_grey(path: Path, data: bytes | None = None) -> np.ndarray | None:
    """The 16-bit grey levels of a 16-bit grey image (uint16 [H, W], its EXIF orientation applied as `load_rgb`
    does), None for any other file. For writing such a photo back at its depth (`deepen`)."""
    def read(image: Image.Image) -> np.ndarray | None:
        if not (image.mode.startswith("I;16") or image.mode == "I"):
            return None
        values = np.asarray(ImageOps.exif_transpose(image)).astype(np.int64)
        if not (values.size and 0 <= values.min() and values.max() <= 65535):
            return None
        key = image.info.get("transparency")  # a PNG's transparent grey level: flattened onto white, as load_rgb does
        if isinstance(key, int):
            values[values == key] = 65535
        return values.astype(np.uint16)

    return _from_header(path, read, None, data)


def deepen(grey: np.ndarray, deep: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """A grey photo worked on at 8 bits (`grey`, uint8 [H, W]) at the depth of its 16-bit original (`deep`): the
    original's levels where nothing was `changed` (bool [H, W]), the 8-bit levels times 257 where something was."""
    return np.where(changed, grey.astype(np.uint16) * np.uint16(257), deep).astype(np.uint16)


def _to_rgb_array(image: Image.Image, path: Path) -> np.ndarray:
    """Decoded Pillow image of any supported mode -> uint8 [H, W, 3] RGB (alpha composited on white)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey (PNG/TIFF). Pillow's own convert("L") clips at 255; scale 0..65535 -> 0..255 instead.
        values = np.asarray(image).astype(np.int64)  # [H, W]
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageRejected(
                "unsupported_format",
                f"{path}: 32-bit integer pixels outside 0..65535 have no defined 8-bit range; "
                "save the image as 8- or 16-bit.",
            )
        grey = grey_to_8bit(values)
        key = image.info.get("transparency")  # a PNG's tRNS: the one grey level that is transparent
        if isinstance(key, int):
            grey[values == key] = _WHITE  # flattened onto white, as the alpha modes below
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))  # [H, W, 3]
    if mode == "F":
        raise ImageRejected(
            "unsupported_format",
            f"{path}: floating-point pixels (Pillow mode 'F') have no defined 8-bit range; "
            "save the image as 8- or 16-bit.",
        )
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    try:
        converted = image.convert("RGBA" if has_alpha else "RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejected(
            "unsupported_format",
            f"{path}: pixel mode {mode!r} cannot be converted to RGB ({exc}); save it as 8-bit RGB.",
        ) from exc
    pixels = np.asarray(converted, dtype=np.uint8)
    if not has_alpha:
        return np.ascontiguousarray(pixels)  # [H, W, 3]
    rgb = pixels[:, :, :3].astype(np.uint32)
    alpha = pixels[:, :, 3:4].astype(np.uint32)
    # out = round((rgb * a + white * (255 - a)) / 255), exact integer arithmetic
    out = (rgb * alpha + _WHITE * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))  # [H, W, 3]


def load_rgb(path: Path, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS, data: bytes | None = None
             ) -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] RGB, or raise :class:`ImageRejected` saying why not.

    Applies the EXIF Orientation tag; converts grayscale, palette, RGBA/LA (alpha composited on white), CMYK
    and 16-bit grey (0..65535 scaled to 0..255 with rounding, not clipped). The header's size is checked
    against ``max_pixels`` and ``min_side`` before decoding; truncated files are rejected, never padded (this
    relies on Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` being False, its default, and refuses to run
    otherwise). 16-bit RGB(A) PNGs are reduced to 8 bit by Pillow itself (high byte). Multi-frame files give
    their first frame. No exception other than ImageRejected escapes for a bad file. `data`: the file's bytes, read
    already (`read_listed`), decoded instead of the file.
    """
    path = Path(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images would be "
            "silently padded; some imported code set it. Set it back to False before loading inputs."
        )
    try:
        size_bytes = path.stat().st_size if data is None else len(data)
        if data is None and path.is_dir():
            raise IsADirectoryError(path)
    except OSError as exc:
        raise _unreadable(path, exc, "stat file") from exc
    if size_bytes == 0:
        raise ImageRejected("empty_file", f"{path}: file is empty (0 bytes); re-copy or remove it.")

    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below is the bomb guard; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_source(path, data)) as image:
                return _decode_checked(image, path, min_side, max_pixels)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:  # past Pillow's own limit, which it names beside the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} px" if found else "its size"
        raise ImageRejected("too_large", f"{path}: {size} exceeds the limit of {max_pixels} px; downscale it.") from exc
    except UnidentifiedImageError as exc:
        sniffed = _sniff_format(path)
        pixels = _tiff_pixels(path) if sniffed == "TIFF" else None
        if pixels is not None:  # a whole header, of pixels no decoder here reads
            raise ImageRejected(
                "unsupported_format", f"{path}: a TIFF of {pixels}, which Pillow cannot read; save the image as 8- or "
                                      "16-bit integer RGB or greyscale.") from exc
        if sniffed is not None:
            raise ImageRejected(
                "truncated",
                f"{path}: starts like a {sniffed} file but its header cannot be parsed; "
                "the file is truncated or corrupt, re-copy it.",
            ) from exc
        heif = _heif_kind(path)
        if heif is not None:
            raise ImageRejected(
                "unsupported_format", f"{path}: {'an' if heif == 'AVIF' else 'a'} {heif} image (as phones save "
                                      "photos), which falco does not read; convert it to JPEG or PNG first.") from exc
        raise ImageRejected(
            "not_an_image", f"{path}: not an image file (no image format recognises its bytes)."
        ) from exc
    except PermissionError as exc:
        raise ImageRejected("unreadable", f"{path}: permission denied; make the file readable.") from exc
    except OSError as exc:
        if "truncated" in str(exc).lower() or _riff_is_short(path):
            raise ImageRejected(
                "truncated", f"{path}: image data ends early ({exc}); the file is truncated, re-copy it."
            ) from exc
        raise _decode_failure(path, exc) from exc
    except Exception as exc:  # Pillow raises SyntaxError, ValueError, struct.error, ... on corrupt files
        raise _decode_failure(path, exc) from exc


# What Pillow's decoders say about damaged data inside a well-formed file (zlib's stream in a PNG, a chunk's CRC).
_DAMAGED_DATA = ("broken data stream", "unrecognized data stream contents", "broken png file", "crc check failed",
                 "decoder error")


def _decode_failure(path: Path, exc: Exception) -> ImageRejected:
    if any(words in str(exc).lower() for words in _DAMAGED_DATA):
        return ImageRejected("corrupt", f"{path}: the image data is damaged (the decoder says: {exc}); re-copy it or "
                                        "remove it.")
    return ImageRejected("unreadable", f"{path}: cannot decode image ({type(exc).__name__}: {exc}).")


def _decode_checked(image: Image.Image, path: Path, min_side: int, max_pixels: int) -> np.ndarray:
    """Header checks (format, size) on an opened image, then full decode, orientation and conversion."""
    if image.format not in _ACCEPTED_FORMATS:
        raise ImageRejected(
            "unsupported_format",
            f"{path}: format {image.format} is not accepted; convert it to PNG or JPEG "
            f"(accepted: {', '.join(sorted(_ACCEPTED_FORMATS))}).",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(
            "too_large",
            f"{path}: {width}x{height} = {width * height} px exceeds the limit of {max_pixels} px; downscale it.",
        )
    if min(width, height) < min_side:
        raise ImageRejected(
            "too_small", f"{path}: {width}x{height} px; the shorter side must be at least {min_side} px."
        )
    image.load()  # full decode; raises OSError("image file is truncated ...") on short data
    if image.format in ("JPEG", "MPO"):
        _check_jpeg_data(path)
    oriented = ImageOps.exif_transpose(image)
    return _to_rgb_array(oriented, path)


# libjpeg warnings that mean the entropy-coded data is damaged (Pillow decodes such files without a word, filling in
# garbage); others, such as an unknown JFIF revision, are harmless.
_CORRUPT_JPEG = ("Corrupt JPEG data", "Premature end", "Inconsistent progression", "Invalid SOS", "Bogus")


def _check_jpeg_data(path: Path) -> None:
    """ImageRejected("corrupt") when libjpeg-turbo, decoding the file with its warnings as errors, finds damaged
    data, with the decoder's words."""
    import simplejpeg

    data = path.read_bytes()
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        simplejpeg.decode_jpeg(data, colorspace=colorspace if colorspace in ("GRAY", "CMYK") else "RGB", strict=True)
    except ValueError as exc:
        if any(words in str(exc) for words in _CORRUPT_JPEG):
            raise ImageRejected("corrupt", f"{path}: the JPEG data is damaged (the decoder says: {exc}); re-copy "
                                           "it or remove it.") from exc


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] RGB, or uint8 or uint16 [H, W] grey -> PNG bytes (lossless, no metadata, so equal arrays
    give equal bytes)."""
    image = np.asarray(image)
    if not ((image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)))
            or (image.dtype == np.uint16 and image.ndim == 2)):
        raise ValueError(
            f"expected a uint8 [H, W, 3] RGB or a uint8/uint16 [H, W] grey array, got dtype {image.dtype} shape "
            f"{tuple(image.shape)}; convert with to_uint8() first."
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL,
                                                     compress_type=PNG_ZLIB_STRATEGY)
    return buffer.getvalue()


def save_png(path: Path, image: np.ndarray) -> str:
    """Write uint8 [H, W, 3] RGB as a lossless PNG, atomically; creates parent folders. Returns the file's sha256
    (hex), so that a caller can tell later whether the file is still what it wrote."""
    try:
        data = encode_png(image)
    except ValueError as exc:
        raise ValueError(f"cannot save {path}: {exc}") from exc
    write_bytes_atomic(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def to_tensor(images: list[np.ndarray] | np.ndarray, size: int) -> "torch.Tensor":
    """uint8 RGB images (a list of [H, W, 3] or one [N, H, W, 3] array) -> float32 [N, 3, size, size] in [-1, 1].

    Each image is resized to size x size with Pillow's bicubic filter (antialiased when shrinking); a
    non-square image is stretched, so crop or align faces first. Images already size x size are not resampled.
    """
    import torch

    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    batch = list(images) if not isinstance(images, np.ndarray) or images.ndim == 4 else [images]
    resized = []
    for index, image in enumerate(batch):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image {index}: expected uint8 [H, W, 3] RGB, got dtype {image.dtype} shape {tuple(image.shape)}"
            )
        if image.shape[:2] != (size, size):
            image = np.asarray(
                Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.BICUBIC)
            )
        resized.append(image)
    if not resized:
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    stacked = np.stack(resized).astype(np.float32)  # [N, size, size, 3]
    tensor = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()  # [N, 3, size, size]
    return tensor / 127.5 - 1.0


def to_uint8(images: "torch.Tensor") -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]: clamp to [-1, 1], then round((x + 1) * 127.5).

    Out-of-range values saturate (never min-max rescaled); NaN raises, since it means an upstream bug.
    """
    import torch

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a [N, 3, H, W] tensor, got shape {tuple(images.shape)}")
    values = images.detach().to(device="cpu", dtype=torch.float32)
    if torch.isnan(values).any():
        raise ValueError("images contain NaN; the generator or optimisation diverged upstream")
    values = ((values.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return values.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # [N, H, W, 3]
