"""Every face of a photo and what becomes of it: anonymized by the method, or covered (the fallback), with the
reason. Photo mode's settings (params.yaml `photo:`) live here too.

A detected face is anonymized when it is large enough for the generator to redraw (`min_anonymize_size`: the
shorter side of its box, in photo pixels), turned toward the camera enough for FFHQ alignment to make sense, and
its landmarks give a sane crop. Otherwise it is covered (`cover`: pixelate or blur, anon_core.compose) and the
reason is recorded:

- ``cut_by_edge``: the face is cut by an edge of the photo so far that MTCNN finds it only in the photo extended by
  its mirror image (`cut_by_edge_faces`), where half its landmarks are the mirror's: no FFHQ crop can be trusted;
- ``too_small``: box side below `min_anonymize_size`;
- ``profile``: the nose is not between the eyes: along the eye-to-eye axis it sits at t (0 = image-left eye, 1 =
  image-right eye); a frontal face has t near 0.5, a turned one moves toward an eye and past it. Faces with
  min(t, 1 - t) below `min_frontality` are covered;
- ``alignment_failed``: the landmarks give no orientation, or a crop whose side is not between
  :data:`QUAD_TO_BOX` times the box's side (the landmarks disagree with the box).

MTCNN finds only faces that show about upright: a face lying on its side or upside down (someone lying down, a photo
stored sideways without an EXIF orientation) is found by searching the photo turned as well (`turns`, `TURNS`). By
default every photo is (`turns: always`); `no_upright_face` searches only photos where no face found shows upright
(`shows_upright`: none found, or each lies on its side or has landmarks that cannot be trusted), which costs less
but misses a face lying beside upright ones. Every face found in any orientation is kept, once, with the landmarks
of the orientation where it shows upright, mapped back onto the photo as stored: alignment, covers and pasting work
there, whatever way each face lies.

Faces whose box is smaller than `min_face_size` are not found at all (MTCNN's pyramid starts there; 12 px is its
floor), so that is the smallest face photo mode can vouch for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anon_core.compose import COVERS
from anon_core.data.align import box_area, ffhq_quad
from anon_core.errors import ParamsError
from anon_core.networks.mtcnn import Detection

if TYPE_CHECKING:
    from anon_core.data.align import FaceAligner

__all__ = ["DETECTION_RULE", "FALLBACK_REASONS", "MIN_EYE_SPAN", "OUTPUT_FORMATS", "TURNED_MIN_SCORE", "TURN_MODES",
           "TURNS", "FoundFace", "PhotoFace", "PhotoSettings", "cut_by_edge_faces", "find_faces", "frontality",
           "lies_turned", "plan_faces", "photo_settings", "shows_upright", "unturn_box", "unturn_points"]

FALLBACK_REASONS = {
    "cut_by_edge": "face cut by the photo's edge, found only with the photo extended by its mirror image",
    "too_small": "face smaller than photo.min_anonymize_size",
    "profile": "face turned too far from the camera (photo.min_frontality)",
    "alignment_failed": "landmarks give no usable FFHQ crop",
}
TURN_MODES = ("always", "no_upright_face", "never")
"""When a photo is also searched turned: for every photo (4 detections each: the default, the only mode that finds a
face lying beside upright ones), when no upright face is found in it (none, or each lies on its side: a photo stored
sideways), or never (a photo stored sideways keeps its faces)."""
OUTPUT_FORMATS = ("png", "same")  # png: lossless PNG; same: JPEG inputs as JPEG (quality 95), the rest as PNG
TURNS = (1, 3, 2)
"""Quarter turns counter-clockwise (np.rot90's k) of the copies of a photo searched besides the photo itself
(TURN_MODES): a face lying on its side, or a phone photo stored sideways, is a quarter turn either way off; upside
down comes last (ties keep the earlier)."""
QUAD_TO_BOX = (1.0, 6.0)
"""Accepted range of (crop side / box side). FFHQ's crop is 4x the eye distance, about 1.6-2.2x an MTCNN box."""


@dataclass(frozen=True)
class PhotoSettings:
    min_face_size: int = 16  # detection: smallest face box found, px (>= 12)
    min_anonymize_size: int = 40  # smaller faces are covered, px
    min_frontality: float = 0.15  # nose position between the eyes: 0.5 frontal, <= 0 profile
    cover: str = "pixelate"  # pixelate | blur: the fallback
    output_format: str = "png"  # png | same
    turns: str = "always"  # when to look again with the photo turned 90, 270, 180 degrees (TURN_MODES)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def photo_settings(section: dict[str, Any], params_file: Path | str) -> PhotoSettings:
    """params.yaml's `photo:` section (with its overrides), checked: one error naming every bad or missing key (the
    file states every setting, as for the other sections; PhotoSettings' defaults are the project file's values, for
    code that builds settings itself)."""
    known = PhotoSettings.__dataclass_fields__
    problems = [f"photo.{k} is not a setting (known: {', '.join(known)})" for k in section if k not in known]
    problems += [f"photo.{k} is missing; add it (see the project's params.yaml)" for k in known if k not in section]
    values = PhotoSettings(**{k: v for k, v in section.items() if k in known})
    if not isinstance(values.min_face_size, int) or values.min_face_size < 12:
        problems.append(f"photo.min_face_size = {values.min_face_size!r} must be a whole number >= 12 (MTCNN's "
                        "smallest window)")
    if not isinstance(values.min_anonymize_size, int) or values.min_anonymize_size < 1:
        problems.append(f"photo.min_anonymize_size = {values.min_anonymize_size!r} must be a whole number >= 1")
    if not isinstance(values.min_frontality, (int, float)) or not 0.0 <= values.min_frontality < 0.5:
        problems.append(f"photo.min_frontality = {values.min_frontality!r} must lie in [0, 0.5)")
    if values.cover not in COVERS:
        problems.append(f"photo.cover = {values.cover!r} must be one of {', '.join(COVERS)}")
    if values.turns not in TURN_MODES:
        problems.append(f"photo.turns = {values.turns!r} must be one of {', '.join(TURN_MODES)}")
    if values.output_format not in OUTPUT_FORMATS:
        problems.append(f"photo.output_format = {values.output_format!r} must be one of {', '.join(OUTPUT_FORMATS)}")
    if problems:
        raise ParamsError(f"{params_file}: " + "; ".join(problems))
    return values


@dataclass(frozen=True)
class PhotoFace:
    index: int  # in the photo, largest box first
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in photo pixels
    score: float  # the detector's face probability
    landmarks: np.ndarray  # [5, 2] (x, y): eyes, nose, mouth corners (MTCNN's order)
    quad: np.ndarray | None  # [4, 2] FFHQ crop square; None when the landmarks give none
    action: str  # "anonymize", or the cover used ("pixelate" | "blur")
    reason: str  # "" when anonymized, else a key of FALLBACK_REASONS

    @property
    def anonymized(self) -> bool:
        return self.action == "anonymize"


def unturn_points(points: np.ndarray, turns: int, shape: tuple[int, ...]) -> np.ndarray:
    """(x, y) points of a photo turned `turns` quarter turns counter-clockwise (np.rot90's k), whose shape is
    `shape` (H, W, ...), in the photo as it was before the turns: [N, 2] float64."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    height, width = shape[:2]
    for _ in range(turns % 4):  # one turn back: the frame before it was as wide as this one is high
        points = np.stack([height - points[:, 1], points[:, 0]], axis=1)
        height, width = width, height
    return points


MIN_EYE_SPAN = 0.40
"""Eye-to-eye distance over the box's side (the square root of its area) below which a face's upright-looking
landmarks are not trusted: MTCNN sometimes boxes a face lying on its side and gives it landmarks crowded into the
box's middle that look upright. Measured on `bench/photo_detection_recall.py`'s photos: 0.42 or more (median 0.48)
for the 307 faces found upright in upright photos; 0.24 to 0.47 for the "upright" ones found in the same photos
stored sideways, all but 3 of 30 below 0.40."""
SAME_FACE_IOU = 0.5  # boxes of two orientations of a photo overlapping this much are one face
TURNED_MIN_SCORE = 0.9
"""Face probability a detection in a turned copy of a photo with an upright face needs (in the photo as stored, and
in the turned copies of a photo where no face shows upright, stored sideways: MTCNN's own 0.7). Each orientation
searched adds its own false detections, and a false detection is covered, which the privacy check then counts as a
face still matched (dlib matches a covered patch of background to itself). Measured on photos drawn by
`bench/photo_detection_recall.py`'s `compose` (640, 1280, 2000 px, its 5 backgrounds; 15 with 30% of their faces
lying, seed 1, and 15 upright only, seed 5), every turned copy searched: of 15 false detections from turned copies,
12 scored below 0.9 (0.70 to 0.89, the others 0.91, 0.91, 0.97); of the 93 faces found only in a turned copy, 89
scored 0.9 or more, the other 4 (0.75 to 0.87) were 12 to 34 px."""
EDGE_MIRROR = 0.25
"""Width of the mirror image of a photo added beyond each of its edges (as a share of its shorter side) for the search
for faces cut by an edge, which MTCNN misses when less than about 60% of the face is in the photo: mirrored, the part
in the photo becomes a whole, symmetric face again. Measured in `bench/photo_edge_faces.py`."""
EDGE_MIN_VISIBLE = 1 / 3
"""Share of a face's box that must lie in the photo for a face found past an edge: a face cut by the edge centres on
it (about half its box in the photo); a face-like pattern made by mirroring a corner, or the mirror image of a whole
face near the edge, lies mostly or wholly outside."""
# in a journal's key: which faces a photo's batches hold
DETECTION_RULE = (f"every orientation's faces, eye span {MIN_EYE_SPAN}, one face above IoU {SAME_FACE_IOU}, turned "
                  f"ones beside an upright face scoring {TURNED_MIN_SCORE}, faces cut by an edge found in a mirror of "
                  f"{EDGE_MIRROR} with {EDGE_MIN_VISIBLE:.3f} in the photo")


@dataclass(frozen=True)
class FoundFace:
    """A detection, its box and landmarks in the photo as stored; `turns`: the quarter turns (np.rot90's k) of the
    copy of the photo it was found in; `upright`: whether it showed upright there (`shows_upright`);
    `cut_by_edge`: found only in the photo extended by its mirror image."""

    detection: Detection
    turns: int
    upright: bool
    cut_by_edge: bool = False  # found only past an edge of the photo (`cut_by_edge_faces`); its box reaches past it


def shows_upright(detection: Detection) -> bool:
    """Whether a detection shows a face upright that can be trusted to be one: its landmarks put the mouth below the
    eyes (`lies_turned`), and its eyes are as far apart as a face's in its box (`MIN_EYE_SPAN`)."""
    landmarks = np.asarray(detection.landmarks, dtype=np.float64)
    side = np.sqrt(box_area(detection.box))
    span = float(np.hypot(*(landmarks[1] - landmarks[0])))
    return not lies_turned(landmarks) and span >= MIN_EYE_SPAN * side


def find_faces(detector: FaceAligner, image: np.ndarray, turns: str = "always") -> list[FoundFace]:
    """A photo's faces, in the photo as stored, largest box first: found upright; and, by `turns` (TURN_MODES), for
    every photo, or where no face shows upright (`shows_upright`: none found, or each lies on its side or upside
    down, or has landmarks that cannot be trusted: a photo stored sideways without an EXIF orientation, where MTCNN
    may still box a face or two): also in the photo turned by each of TURNS. A face found in several orientations is
    kept once (boxes overlapping by SAME_FACE_IOU), from the orientation where it shows upright (then the most
    confident), so that each face is aligned by landmarks MTCNN gave it upright, and faces lying in different
    directions in one photo are all kept."""
    found = [FoundFace(d, 0, shows_upright(d)) for d in detector.detect(image)]
    upright_photo = any(f.upright for f in found)
    if turns == "never" or (turns == "no_upright_face" and upright_photo):
        return found
    min_score = TURNED_MIN_SCORE if upright_photo else 0.0  # a photo stored turned: its turned copies are the photo
    for k in TURNS:
        turned = np.ascontiguousarray(np.rot90(image, k))
        found += [FoundFace(_turned_back(d, k, turned.shape), k, shows_upright(d)) for d in detector.detect(turned)
                  if d.score >= min_score]
    kept: list[FoundFace] = []
    for face in sorted(found, key=lambda f: (f.upright, f.detection.score), reverse=True):
        if all(face.turns == other.turns or _iou(face.detection.box, other.detection.box) < SAME_FACE_IOU
               for other in kept):
            kept.append(face)
    return sorted(kept, key=lambda f: box_area(f.detection.box), reverse=True)


def cut_by_edge_faces(detector: FaceAligner, image: np.ndarray, found: list[FoundFace]) -> list[FoundFace]:
    """Faces cut by an edge of the photo, as stored, that are not among `found`: searched in the photo extended by its
    mirror image beyond every edge (EDGE_MIRROR), where the part of such a face in the photo and its mirror image make
    a whole face. A detection counts when its box reaches past an edge with at least EDGE_MIN_VISIBLE of it in the
    photo, and does not lie on a face already found (half of the smaller box); its box and landmarks are in the photo's
    coordinates, reaching past the edge."""
    height, width = image.shape[:2]
    pad = int(round(EDGE_MIRROR * min(height, width)))
    if pad < 1:
        return []
    mirrored = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    cut: list[FoundFace] = []
    for detection in detector.detect(mirrored):
        box = tuple(float(v) - pad for v in detection.box)
        inside = box_area((max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)))
        area = box_area(box)
        if area <= 0 or inside == area or inside < EDGE_MIN_VISIBLE * area:
            continue
        if any(_overlap(box, other.detection.box) >= 0.5 for other in [*found, *cut]):
            continue
        moved = Detection(box, detection.score, np.asarray(detection.landmarks, dtype=np.float64) - pad)
        cut.append(FoundFace(moved, 0, shows_upright(moved), cut_by_edge=True))
    return cut


def _overlap(a, b) -> float:
    """The area two boxes share, over the smaller one's."""
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    smaller = min(box_area(a), box_area(b))
    return inter / smaller if smaller > 0 else 0.0


def unturn_box(box, turns: int, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """An (x1, y1, x2, y2) box of a photo turned `turns` quarter turns (its shape `shape`), in the photo before."""
    corners = unturn_points(np.reshape(box, (2, 2)), turns, shape)
    return tuple(float(v) for v in (*corners.min(axis=0), *corners.max(axis=0)))


def _turned_back(detection: Detection, turns: int, shape: tuple[int, ...]) -> Detection:
    """A detection of the photo turned `turns` quarter turns (its shape `shape`), in the photo as stored."""
    return Detection(unturn_box(detection.box, turns, shape), detection.score,
                     unturn_points(detection.landmarks, turns, shape))


def _iou(a, b) -> float:
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def lies_turned(landmarks: np.ndarray) -> bool:
    """Whether a face's landmarks (eyes, nose, mouth corners) put its mouth beside or above its eyes: more than 45
    degrees off upright."""
    eyes, mouth = np.mean(landmarks[:2], axis=0), np.mean(landmarks[3:5], axis=0)
    down = mouth - eyes
    return not down[1] > abs(down[0])


def frontality(landmarks: np.ndarray) -> float:
    """min(t, 1 - t) for the nose's position t along the eye-to-eye axis: 0.5 for a frontal face, 0 or less when the
    nose is at or beyond an eye."""
    lm = np.asarray(landmarks, dtype=np.float64)
    axis = lm[1] - lm[0]
    length = float(axis @ axis)
    if length == 0.0:
        return 0.0
    t = float((lm[2] - lm[0]) @ axis) / length
    return min(t, 1.0 - t)


def plan_faces(detections: list[Detection], settings: PhotoSettings,
               cut_by_edge: list[bool] | None = None) -> list[PhotoFace]:
    """What happens to each detected face (in the order given: largest first from FaceAligner.detect); those marked
    in `cut_by_edge` (found only past the photo's edge, half their landmarks in its mirror image) are covered."""
    faces = []
    cut_by_edge = cut_by_edge or [False] * len(detections)
    for index, (det, cut) in enumerate(zip(detections, cut_by_edge)):
        landmarks = np.asarray(det.landmarks, dtype=np.float64)
        x1, y1, x2, y2 = (float(v) for v in det.box)
        side = min(x2 - x1, y2 - y1)
        quad, reason = None, ""
        try:
            quad = ffhq_quad(landmarks)
            quad_side = float(np.hypot(*(quad[3] - quad[0])))
            if not QUAD_TO_BOX[0] * side <= quad_side <= QUAD_TO_BOX[1] * side:
                reason = "alignment_failed"
        except ValueError:
            reason = "alignment_failed"
        if cut:
            reason = "cut_by_edge"
        elif not reason and side < settings.min_anonymize_size:
            reason = "too_small"
        elif not reason and frontality(landmarks) < settings.min_frontality:
            reason = "profile"
        faces.append(PhotoFace(index=index, box=(x1, y1, x2, y2), score=float(det.score), landmarks=landmarks,
                               quad=quad, action=settings.cover if reason else "anonymize", reason=reason))
    return faces
