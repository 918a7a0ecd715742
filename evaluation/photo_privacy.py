"""Privacy of photo mode, face by face: does dlib's recognizer still match each face of an output photo to the same
face of the input photo?

Each face row of a photo-mode manifest (anon_core.photos) is cut out of the input photo and out of the output photo
along the same FFHQ crop, the one its input landmarks give (for a face whose landmarks gave none, a square around
its box of the same scale), at :data:`CROP_SIZE` px; dlib's descriptor of each crop (on its own chip region,
evaluation.recognizers) is compared: a distance below 0.6 is dlib's "same person". Anonymized and covered faces are
measured alike, except a face in whose input crop dlib's own face detector finds no face (`measured` false): dlib
has no face to recognise there. Its descriptors of such crops came out close to anything: a helmet's ring MTCNN took
for a face, pixelated, against the ring 0.44-0.57, while every covered face that detector sees measured 0.69-0.82
(photo mode's sample and 28 variants of it: sepia, noisy scans, cut by the edge); a spoon and wood grain MTCNN took
for faces (scores 0.70-0.97) and anonymized, generated faces against the spoon 0.47-0.53. The share of matched
faces among the measured ones is what the blocking check and `falco evaluate` bound
(`checks.privacy_max_match_share`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from anon_core.data.align import ffhq_quad, warp_quad
from anon_core.data.image_io import ImageRejected, displayed_size, load_rgb, read_listed
from anon_core.errors import FalcoError
from anon_core.folders import check_finished, check_separate, exclusive, missing_outputs
from anon_core.hashing import sha256_file
from anon_core.photos import parse_numbers, read_photo_manifest
from evaluation.privacy import detect_faces
from evaluation.recognizers import Recognizer, build_recognizer
from evaluation.report_folder import PHOTO_REPORT_TITLE

CROP_SIZE = 256
BOX_QUAD_SCALE = 1.9
"""Side of the square used for a face without an FFHQ crop, as a multiple of its box's longer side (FFHQ's crop
is about 1.6-2.2x an MTCNN box)."""


def face_quad(landmarks: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The FFHQ crop of a face's landmarks, or an axis-aligned square around its box when they give none."""
    try:
        return ffhq_quad(landmarks)
    except ValueError:
        x1, y1, x2, y2 = box
        half = max(x2 - x1, y2 - y1) * BOX_QUAD_SCALE / 2.0
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        return np.array([[cx - half, cy - half], [cx - half, cy + half], [cx + half, cy + half],
                         [cx + half, cy - half]])


def face_privacy(input_dir: Path, output_dir: Path, recognizer: Recognizer | None = None,
                 kept: Path | None = None) -> pd.DataFrame:
    """One row per face of a photo-mode output: input, face, status, reason, `dlib_distance` (input face vs output
    face at the input's landmarks), `measured` (false for a face, anonymized or covered, in whose input crop dlib's
    detector finds no face) and `matched` (measured, and distance < 0.6).

    `kept`: a folder where each photo's verdicts are kept (`KeptVerdicts`), and taken from for a photo whose input
    and output files and faces are those they were made for: such a photo is not decoded nor measured again. The
    number of such photos is the table's `attrs["photos_checked_earlier"]`."""
    manifest = read_photo_manifest(output_dir)
    faces = manifest[manifest["kind"] == "face"].reset_index(drop=True)
    dlib = recognizer or build_recognizer("dlib")
    verdicts = KeptVerdicts(kept, dlib) if kept is not None else None
    photos = manifest[manifest["kind"] == "photo"]
    photo_sha = dict(zip(photos["input"], photos["sha256"])) if "sha256" in photos else {}
    table = faces[["input", "face", "status", "reason"]]
    found = np.zeros((len(faces), 3))  # distance, measured, matched, row by row
    real_crops, out_crops, measured_now = [], [], []  # (rows' places, rows, sha256s of photo and output) per photo
    earlier = 0
    for photo, rows in faces.groupby("input", sort=False):
        here = rows.index.to_numpy()
        output = Path(output_dir) / "images" / rows["output"].iloc[0]
        written = output.read_bytes() if output.is_file() else None  # hashed and measured alike: one read
        output_sha = hashlib.sha256(written).hexdigest() if verdicts is not None and written is not None else None
        taken = verdicts.get(photo_sha.get(photo), output_sha, rows) if verdicts is not None else None
        if taken is not None:
            found[here] = taken
            earlier += 1
            continue
        source = Path(input_dir) / photo
        try:  # the photo the run read (its listed digest), whose faces the manifest's boxes are
            real = load_rgb(source, data=read_listed(source, photo_sha.get(photo) or None))
        except ImageRejected as rejected:
            raise FalcoError(f"{rejected.detail.rstrip('.')}; the privacy check measures each face against the "
                             "photo the run anonymized: run the command again") from None
        anonymized = load_rgb(output, data=written)
        if anonymized.shape != real.shape:
            raise _resized(Path(output_dir), rows["output"].iloc[0], anonymized.shape[1::-1], photo,
                           real.shape[1::-1])
        for row in rows.itertuples():
            quad = face_quad(parse_numbers(row.landmarks, (5, 2)), parse_numbers(row.box, (4,)))
            real_crops.append(warp_quad(real, quad, CROP_SIZE))
            out_crops.append(warp_quad(anonymized, quad, CROP_SIZE))
        measured_now.append((here, rows, photo_sha.get(photo), output_sha))
    if real_crops:
        distances, matched = dlib.match_pairs(np.stack(out_crops), np.stack(real_crops))
        measured = detect_faces(real_crops, "dlib_hog", upsample=1).detected  # anonymized and covered alike
        made = np.stack([distances, measured, matched], axis=1)
        done = 0
        for here, rows, sha, output_sha in measured_now:
            found[here] = made[done:done + len(rows)]
            done += len(rows)
            if verdicts is not None:
                verdicts.put(sha, output_sha, rows, found[here])
    measured = found[:, 1].astype(bool)
    table = table.assign(dlib_distance=found[:, 0], measured=measured, matched=found[:, 2].astype(bool) & measured)
    table.attrs["photos_checked_earlier"] = earlier
    return table


VERDICTS_VERSION = "1"
"""Bump whenever the same photos and faces would be measured otherwise (the crops, the recognizer's use); the kept
verdicts of older versions then miss."""


class KeptVerdicts:
    """The privacy check's verdicts on each photo's faces (dlib's distance, whether dlib's detector sees the input's
    face, whether matched: three numbers per face, no descriptor), kept in `folder` by the input photo's sha256
    (`hashing.DigestEntries`, pruned with the detection cache it lives in). An entry counts for the output file
    (its sha256) and the faces (index, box, landmarks as the manifest writes them) it was made for, under the same
    recognizer weights and versions: an output replaced or edited since, or faces found otherwise, is measured
    again."""

    def __init__(self, folder: Path, recognizer: Recognizer) -> None:
        import PIL
        import dlib
        import torch

        from anon_core.hashing import DigestEntries
        from anon_core.reuse import context_digest

        weights = sha256_file(recognizer.weights_file) if recognizer.weights_file is not None else None
        key = context_digest({"recognizer": recognizer.name, "weights": weights, "crop": CROP_SIZE,
                              "box_quad_scale": BOX_QUAD_SCALE, "device": recognizer.device.type,
                              "version": VERDICTS_VERSION, "dlib": dlib.__version__, "pillow": PIL.__version__,
                              "torch": torch.__version__})
        self.entries = DigestEntries(folder, f"privacy-{key[:16]}")
        self.usable = weights is not None  # a recognizer not read from a file cannot be told from another

    @staticmethod
    def _faces(rows: pd.DataFrame) -> list[list[str]]:
        return [[str(face), str(box), str(landmarks)] for face, box, landmarks in
                zip(rows["face"], rows["box"], rows["landmarks"])]

    def get(self, sha256: str | None, output_sha256: str | None, rows: pd.DataFrame) -> np.ndarray | None:
        """[N, 3] (distance, measured, matched) of the photo's face `rows`, or None on a miss."""
        record = self.entries.read(sha256) if self.usable and output_sha256 else None
        try:
            if record is None or record["output"] != output_sha256 or record["faces"] != self._faces(rows):
                return None
            verdicts = np.array([[float(d), m, t] for d, m, t in record["verdicts"]], dtype=np.float64)
            if verdicts.shape != (len(rows), 3) or not all(
                    isinstance(m, bool) and isinstance(t, bool) for _, m, t in record["verdicts"]) or \
                    not np.all(np.isfinite(verdicts[:, 0]) & (verdicts[:, 0] >= 0)):
                return None
            return verdicts
        except (ValueError, KeyError, TypeError):
            return None

    def put(self, sha256: str | None, output_sha256: str | None, rows: pd.DataFrame, verdicts: np.ndarray) -> None:
        if self.usable and output_sha256:
            self.entries.write(sha256, {"output": output_sha256, "faces": self._faces(rows), "verdicts": [
                [float(d), bool(m), bool(t)] for d, m, t in verdicts]})


def _resized(folder: Path, output: str, size, photo: str, real_size) -> FalcoError:
    return FalcoError(f"{folder}: images/{output} is {size[0]} x {size[1]} px but its input {photo} is {real_size[0]} "
                      f"x {real_size[1]}: not the photo `falco anonymize --mode photo` wrote (its faces would be cut "
                      "at the wrong places); re-run it into this folder")


def write_face_privacy(privacy: pd.DataFrame, folder: Path) -> Path:
    """`face_privacy.csv` beside a photo-mode run's manifest (atomically)."""
    from anon_core.atomic import atomic_path

    path = Path(folder) / "face_privacy.csv"
    with atomic_path(path) as tmp:
        privacy.to_csv(tmp, index=False, float_format="%.4f")
    return path


PRIVACY_CHECK = "privacy_check"
"""The key of a `falco anonymize` run's params.json that holds its privacy check: "pending" while dlib checks the
outputs (a run stopped then leaves it so), then the check's figures."""


def record_privacy_check(folder: Path, privacy: pd.DataFrame | None = None, bound: float | None = None) -> None:
    """Write into `folder`'s params.json the state of its run's privacy check: "pending" (no `privacy`), else what
    face_privacy.csv's table `privacy` says against the release `bound` (given with it)."""
    import json

    from anon_core.atomic import write_bytes_atomic
    from evaluation.report import fails_release

    path = Path(folder) / "params.json"
    record = json.loads(path.read_text())
    if privacy is None:
        record[PRIVACY_CHECK] = "pending"
    else:
        share = match_share(privacy)
        record[PRIVACY_CHECK] = {"measured": measured_faces(privacy), "matched": int(privacy["matched"].sum()),
                                 "match_share": share, "bound": bound, "passed": not fails_release(share, bound),
                                 "table": "face_privacy.csv"}
    write_bytes_atomic(path, json.dumps(record, indent=2, sort_keys=True).encode())


def unfinished_privacy_check(record: dict) -> bool:
    """Whether the privacy check of the run whose params.json is `record` was stopped before it wrote its verdict."""
    return record.get(PRIVACY_CHECK) == "pending"


def measured_faces(privacy: pd.DataFrame) -> int:
    """How many rows of a face_privacy.csv table dlib measured (every row of a table without `measured`)."""
    return int(privacy["measured"].sum()) if "measured" in privacy else len(privacy)


def match_share(privacy: pd.DataFrame) -> float:
    """Share of the measured faces dlib still matches to their source (0 when there is none)."""
    measured = measured_faces(privacy)
    return float(privacy["matched"].sum() / measured) if measured else 0.0


def unmeasured_note(privacy: pd.DataFrame) -> str:
    """", N box(es) ... not counted" when dlib's detector saw no face in some faces' input crops."""
    left_out = len(privacy) - measured_faces(privacy)
    return (f"; {left_out} box(es) not counted: dlib's detector finds no face in their input (`measured` in "
            "face_privacy.csv)") if left_out else ""


def measured_distances(privacy: pd.DataFrame) -> pd.Series:
    """dlib's distances of the measured faces."""
    return privacy["dlib_distance"][privacy["measured"]] if "measured" in privacy else privacy["dlib_distance"]


def photo_run_summary(privacy: pd.DataFrame, bound: float) -> dict[str, float | int | bool]:
    """One run's per-face figures: faces by status, the matched share, dlib distances, and whether it passes the
    bound."""
    from evaluation.report import fails_release

    distances = measured_distances(privacy)
    share = match_share(privacy)
    return {"faces": len(privacy), "faces_anonymized": int((privacy["status"] == "anonymized").sum()),
            "faces_covered": int((privacy["status"] == "covered").sum()), "faces_measured": measured_faces(privacy),
            "matched_faces": int(privacy["matched"].sum()), "matched_share": share,
            "dlib_distance_median": float(distances.median()) if len(distances) else float("nan"),
            "dlib_distance_min": float(distances.min()) if len(distances) else float("nan"),
            "passes_bound": not fails_release(share, bound)}


def check_photo_sources(real_dir: Path, folders: list[Path]) -> None:
    """Before any work: FalcoError unless `real_dir` holds, with the bytes each run read (when its manifest records
    them), every photo the runs' manifests name (evaluation.sources)."""
    import json

    from evaluation.sources import check_real_folder, scan_real_folder

    manifests = [read_photo_manifest(folder) for folder in folders]  # first: a folder that is not a photo run
    for folder, manifest in zip(folders, manifests):
        check_finished(folder, manifest)
        written = manifest.loc[(manifest["kind"] == "photo") & (manifest["status"] == "ok"), "output"]
        absent = missing_outputs(folder, written)
        if absent:
            raise FalcoError(f"{folder}: {len(absent)} photo(s) the manifest lists are missing, e.g. images/{absent[0]};"
                             " re-run `falco anonymize --mode photo` into this folder to write them again")
    current = scan_real_folder(Path(real_dir), "folder")  # photo mode reads every file of its folder
    for folder, manifest in zip(folders, manifests):
        try:
            record = json.loads((Path(folder) / "params.json").read_text())
        except (OSError, ValueError):
            record = {}
        used = manifest.loc[(manifest["kind"] == "face") | (manifest["status"] == "ok"), "input"]
        check_real_folder(Path(real_dir), Path(folder), record if isinstance(record, dict) else {}, manifest, used,
                          current)
        faces = manifest[manifest["kind"] == "face"].drop_duplicates("input")
        for photo, output in zip(faces["input"], faces["output"]):  # the sizes from the headers, before any work
            size = displayed_size(Path(folder) / "images" / output)
            real_size = displayed_size(Path(real_dir) / photo)
            if None not in (size, real_size) and size != real_size:
                raise _resized(Path(folder), output, size, photo, real_size)


def evaluate_photo_runs(real_dir: Path, folders: list[Path], out_dir: Path,
                        bounds: list[tuple[float, str]]) -> dict[str, Path]:
    """`falco evaluate` for photo-mode outputs: every face of every run checked by dlib (face_privacy) and held to its
    bound (`bounds`: (bound, where it comes from) per folder); writes `faces.csv` (a row per face and run),
    `metrics.csv` (a row per run, photo_run_summary, with its bound) and `report.md`."""
    from anon_core.atomic import write_bytes_atomic
    from evaluation.glossary import markdown_table

    out_dir = Path(out_dir)
    check_separate(real_folder=real_dir, report_folder=out_dir,
                   **{f"anonymized_folder_{i + 1}": d for i, d in enumerate(folders)})
    check_photo_sources(real_dir, folders)
    with exclusive(out_dir, "report folder"):  # one evaluate at a time writes it
        dlib = build_recognizer("dlib")
        per_face, rows = [], []
        for folder, (bound, source) in zip(folders, bounds):
            privacy = face_privacy(real_dir, folder, dlib)
            per_face.append(privacy.assign(run=str(folder)))
            rows.append({"run": str(folder), **photo_run_summary(privacy, bound), "bound": bound,
                         "bound_from": source})
        metrics = pd.DataFrame(rows)
        faces = pd.concat(per_face, ignore_index=True)
        paths = {"metrics": out_dir / "metrics.csv", "faces": out_dir / "faces.csv", "markdown": out_dir / "report.md"}
        text = [PHOTO_REPORT_TITLE, "",
                "Each face of each output photo, cut at the input's landmarks, against the same face of the input "
                "photo by dlib's recognizer (same person when the descriptor distance is below 0.6). Each run "
                "passes when its matched share is at most its bound (`bound`, from `bound_from`).", "",
                markdown_table(metrics, index=False), ""]
        write_bytes_atomic(paths["metrics"], metrics.to_csv(index=False, float_format="%.4f").encode())
        write_bytes_atomic(paths["faces"], faces.to_csv(index=False, float_format="%.4f").encode())
        write_bytes_atomic(paths["markdown"], "\n".join(text).encode())
    return paths
