"""The faces found in each photo, kept so that a photo searched once is not searched again: MTCNN over a 24-megapixel
photo, turned four ways and extended by its mirror image, takes about a minute on a CPU, decoding it a fraction of
a second. A rerun over an unchanged folder, a folder with photos added, and every variant of a sweep (the search does
not depend on the method's parameters) read the faces from here.

An entry is one JSON file per photo and search: `<folder>/<sha[:2]>/<sha>.<key>.json`, the photo file's sha256 and
`search_key` (everything besides the file's bytes that decides what is found), holding the photo's size and each
face as `photo_faces.find_faces` and `cut_by_edge_faces` gave it (box, score, landmarks as float64, the quarter turns
it was found at, whether it showed upright, whether it was found past an edge). JSON writes a float64 in the fewest
digits that read back to the same value, so an entry gives the photo's faces bit for bit. Written atomically once the
photo is searched. Each entry holds the sha256 of the rest of it (`check`): an entry that does not match it (a
damaged disk block, a hand edit), a face whose numbers are not finite or not in range, another photo's, search's or
size's entry is a miss, and the photo is searched again (an entry trusted as it stands would decide which faces are
replaced in every later run, and no check afterwards sees a face left out of it).

No pixels are kept: boxes and landmarks only (beside them, under a key of their own, `falco anonymize` keeps its
privacy check's verdicts: evaluation.photo_privacy.KeptVerdicts; both are `hashing.DigestEntries`). The owner of the
folder removes the entries of photos no longer among its inputs (`hashing.prune_by_digest`): `anonymize_photos` at
the end of a run into its own output folder, the pipeline's `input_photos` asset in its storage.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from anon_core.hashing import DigestEntries, sha256_file
from anon_core.networks.mtcnn import WEIGHT_FILES, Detection, mtcnn_weights_dir
from anon_core.photo_faces import DETECTION_RULE, FoundFace, PhotoSettings
from anon_core.reuse import context_digest

__all__ = ["DETECTION_CACHE", "FoundFaces", "search_key"]

DETECTION_CACHE = ".detection_cache"  # in a photo-mode output folder, or the pipeline's storage
VERSION = "1"
"""Bump whenever the same photo and settings would give other faces (the detector's code, not its rules: those are
DETECTION_RULE's); the older entries then miss."""


def search_key(settings: PhotoSettings, device: torch.device | str) -> str:
    """What decides a photo's faces besides its bytes: the detection rule, the smallest face searched for, when the
    photo is searched turned, MTCNN's weight files, the kind of device (a GPU's float sums may place a box a hair
    elsewhere), and the versions of the decoder and of torch (another libjpeg or another conv kernel may move a pixel
    or a float)."""
    import PIL

    folder = mtcnn_weights_dir()
    weights = {name: sha256_file(folder / name) if (folder / name).is_file() else "missing"  # MTCNN says so itself
               for name in sorted(WEIGHT_FILES.values())}
    record = {"rule": DETECTION_RULE, "min_face_size": settings.min_face_size, "turns": settings.turns,
              "weights": weights,
              "device": torch.device(device).type, "version": VERSION, "pillow": PIL.__version__,
              "torch": torch.__version__}
    return context_digest(record)[:16]


class FoundFaces:
    """The entries of one search key (`search_key`) in `folder`."""

    def __init__(self, folder: Path, key: str) -> None:
        self.entries = DigestEntries(folder, key)

    def get(self, sha256: str | None, shape: tuple[int, ...]) -> list[FoundFace] | None:
        """The faces of the photo with this digest and `shape` ([H, W, ...] as decoded), or None on a miss."""
        record = self.entries.read(sha256)
        try:
            if record is None or record["size"] != list(shape[:2]):
                return None
            return [_face(face, shape) for face in record["faces"]]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return None

    def put(self, sha256: str | None, shape: tuple[int, ...], faces: list[FoundFace]) -> None:
        """Keep the faces found in the photo with this digest and `shape`."""
        self.entries.write(sha256, {"size": list(shape[:2]), "faces": [
            {"box": [float(v) for v in face.detection.box], "score": float(face.detection.score),
             "landmarks": np.asarray(face.detection.landmarks, dtype=np.float64).ravel().tolist(),
             "turns": int(face.turns), "upright": bool(face.upright), "cut_by_edge": bool(face.cut_by_edge)}
            for face in faces]})


def _face(face: dict, shape: tuple[int, ...]) -> FoundFace:
    """An entry's face in a photo of `shape`; ValueError or TypeError for one a search cannot have given (its box and
    landmarks within the photo extended by its own size beyond each edge, wider than the mirror searched)."""
    score, turns, upright, cut = face["score"], face["turns"], face["upright"], face["cut_by_edge"]
    if not (isinstance(score, float) and 0.0 <= score <= 1.0 and type(turns) is int and turns in (0, 1, 2, 3)
            and isinstance(upright, bool) and isinstance(cut, bool)):
        raise ValueError("a face out of range")
    box = _numbers(face["box"], 4)
    landmarks = np.asarray(_numbers(face["landmarks"], 10)).reshape(5, 2)
    height, width = shape[:2]
    points = np.vstack([np.reshape(box, (2, 2)), landmarks])
    if not (box[0] < box[2] and box[1] < box[3] and np.all(np.abs(points - [width / 2, height / 2])
                                                           <= [1.5 * width, 1.5 * height])):
        raise ValueError("a face beyond the photo")
    return FoundFace(Detection(box=box, score=score, landmarks=landmarks), turns=turns, upright=upright,
                     cut_by_edge=cut)


def _numbers(values: list, count: int) -> tuple[float, ...]:
    numbers = tuple(float(v) for v in values)
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{count} finite numbers expected")
    return numbers
