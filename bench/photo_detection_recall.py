"""Photo mode's face detection on composed photos whose faces are known: how many it finds, by photo and face size.

A face photo mode does not find is written as it was, so its recall is a privacy figure. Each photo is a background
(scikit-image's coffee, chelsea and rocket scaled up, a plain colour, noise) with faces pasted at known places and
sizes (the astronaut's face and 10 LFW crops, 16 to 600 px, blended in with the sample photos' soft ellipse).
A face's true box is where MTCNN boxes that source face alone on a grey canvas, scaled to where it was pasted; a
face counts as found when a detection overlaps it with IoU >= 0.4 (each detection used once). Detection runs as
photo mode runs it (`anon_core.photo_faces.find_faces` with a `FaceAligner` at `photo.min_face_size`). Then the
photos of `--sideways` backgrounds (coffee's, or all) turned a quarter turn, as a phone photo stored sideways without
an EXIF orientation: faces found and false detections under each of `photo.turns`' modes, and the time detection took.
With `--lying`, as many photos again where that share of the faces lies on its side or upside down beside upright
ones (a group photo with someone lying down): faces found of each kind under each mode.

    .venv/bin/python bench/photo_detection_recall.py [--canvas 640 1280 2000 3000] [--min-face-size 16] \
        [--sideways coffee|all|none] [--lying 0.3]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from PIL import Image

from anon_core.data.align import FaceAligner
from anon_core.data.sample import _astronaut_face, _lfw_faces, _soft_ellipse
from anon_core.photo_faces import TURN_MODES, find_faces, unturn_box

FACE_SIZES = (16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 600)
BACKGROUNDS = ("coffee", "plain", "noise", "chelsea", "rocket")
CALIBRATION = 256  # source faces are boxed alone at this size


def sources() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (the face at CALIBRATION px, its box relative to the crop), for the faces MTCNN finds alone."""
    detector = FaceAligner(256, "mtcnn", min_face_size=16)
    faces = {"astronaut": _astronaut_face(CALIBRATION)}
    faces |= {f"lfw{i}": face for i, face in enumerate(_lfw_faces(CALIBRATION, 10))}
    found = {}
    for name, face in faces.items():
        canvas = np.full((2 * CALIBRATION, 2 * CALIBRATION, 3), 128, np.uint8)
        low, high = CALIBRATION // 2, CALIBRATION // 2 + CALIBRATION
        canvas[low:high, low:high] = face
        detections = detector.detect(canvas)
        if detections:
            box = (np.asarray(detections[0].box) - CALIBRATION // 2) / CALIBRATION
            found[name] = (face, box)
    return found


def background(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "plain":
        return np.full((height, width, 3), (150, 160, 140), np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    from skimage import data

    picture = {"coffee": data.coffee, "chelsea": data.chelsea, "rocket": data.rocket}[kind]()
    return np.array(Image.fromarray(picture).resize((width, height), Image.Resampling.BICUBIC))


def turned_box(rel: np.ndarray, turns: int) -> np.ndarray:
    """A box (x1, y1, x2, y2) relative to a square crop, in the crop turned `turns` quarter turns counter-clockwise
    (np.rot90's k): each turn takes (x, y) to (y, 1 - x)."""
    corners = np.reshape(rel, (2, 2)).astype(np.float64)
    for _ in range(turns % 4):
        corners = np.stack([corners[:, 1], 1.0 - corners[:, 0]], axis=1)
    return np.concatenate([corners.min(axis=0), corners.max(axis=0)])


def compose(width: int, kind: str, faces: dict, rng: np.random.Generator,
            lying: float = 0.0) -> tuple[np.ndarray, list[dict]]:
    """A 3:2 photo `width` px wide with non-overlapping faces (3 of each size to 48 px, 2 to 128, then 1); each face
    lies on its side or upside down (turned by 90, 270 or 180 degrees) with probability `lying`."""
    height = 2 * width // 3
    photo, placed, truth = background(kind, width, height, rng), [], []
    wanted = sorted((s for s in FACE_SIZES for _ in range(3 if s <= 48 else 2 if s <= 128 else 1)), reverse=True)
    for size in wanted:
        name = list(faces)[rng.integers(len(faces))]
        face, rel = faces[name]
        side = int(round(size / np.sqrt((rel[2] - rel[0]) * (rel[3] - rel[1]))))  # the crop whose face box is `size`
        if side + 16 > height:
            continue
        for _ in range(400):
            x, y = int(rng.integers(4, width - side - 3)), int(rng.integers(4, height - side - 3))
            if all(x + side + 10 < px or px + ps + 10 < x or y + side + 10 < py or py + ps + 10 < y
                   for px, py, ps in placed):
                break
        else:
            continue
        placed.append((x, y, side))
        turns = int(rng.choice([1, 3, 2])) if lying and rng.random() < lying else 0
        pasted = np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC), np.float32)
        pasted = np.rot90(pasted, turns)
        alpha = _soft_ellipse(side)[:, :, None]
        under = photo[y:y + side, x:x + side].astype(np.float32)
        photo[y:y + side, x:x + side] = np.rint(under + (pasted - under) * alpha).astype(np.uint8)
        truth.append({"source": name, "size": size, "turns": turns,
                      "box": np.array([x, y, x, y]) + turned_box(rel, turns) * side})
    return photo, truth


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def matched(truth: list[dict], boxes: list[np.ndarray]) -> tuple[list[bool], int]:
    """Per true face, whether a detection covers it (IoU >= 0.4, each detection once); and the detections left."""
    free, hits = list(range(len(boxes))), []
    for face in truth:
        scores = [(iou(face["box"], boxes[j]), j) for j in free]
        best, j = max(scores, default=(0.0, -1))
        hits.append(best >= 0.4)
        if best >= 0.4:
            free.remove(j)
    return hits, len(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canvas", type=int, nargs="+", default=[640, 1280, 2000, 3000], help="photo widths, px")
    parser.add_argument("--min-face-size", type=int, default=16, help="photo.min_face_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sideways", choices=("coffee", "all", "none"), default="coffee",
                        help="which backgrounds' photos are also searched stored sideways")
    parser.add_argument("--lying", type=float, default=0.0,
                        help="also compose photos (as many, other draws) where this share of the faces lies on its "
                             "side or upside down beside upright ones, and search them under each photo.turns")
    args = parser.parse_args()
    faces, rng = sources(), np.random.default_rng(args.seed)
    detector = FaceAligner(256, "mtcnn", min_face_size=args.min_face_size)
    print(f"sources found alone (their true boxes): {', '.join(faces)}")
    found, seconds, false = defaultdict(list), defaultdict(list), 0
    by_source = defaultdict(list)
    turned = {mode: [0, 0, 0.0, 0] for mode in TURN_MODES}  # mode -> [faces found, faces, seconds, false detections]
    searched_turned = defaultdict(int)  # what a rule would search turned for -> upright photos that have it
    for width in args.canvas:
        for kind in BACKGROUNDS:
            photo, truth = compose(width, kind, faces, rng)
            started = time.perf_counter()
            found_upright = find_faces(detector, photo, "never")
            seconds[width].append(time.perf_counter() - started)
            upright = [f.upright for f in found_upright]
            searched_turned["no upright face"] += not any(upright)
            searched_turned["a face not upright"] += not (upright and all(upright))
            hits, left = matched(truth, [np.asarray(f.detection.box) for f in found_upright])
            false += left
            for face, hit in zip(truth, hits):
                found[(width, face["size"])].append(hit)
                by_source[face["source"]].append(hit)
            if args.sideways in ("all", kind):  # the photo stored sideways: turned a quarter turn clockwise (k = 3)
                sideways = np.ascontiguousarray(np.rot90(photo, 3))
                for mode in TURN_MODES:
                    started = time.perf_counter()
                    kept = find_faces(detector, sideways, mode)  # in the sideways photo
                    turned[mode][2] += time.perf_counter() - started
                    boxes = [np.asarray(unturn_box(f.detection.box, 3, sideways.shape)) for f in kept]
                    sideways_hits, sideways_false = matched(truth, boxes)
                    turned[mode][0] += sum(sideways_hits)
                    turned[mode][1] += len(sideways_hits)
                    turned[mode][3] += sideways_false
                    orientations = sorted({f.turns for f in kept})
                    print(f"{width} px {kind} stored sideways, photo.turns {mode}: "
                          f"{sum(sideways_hits)}/{len(truth)} (found in quarter turns {orientations})", flush=True)
            print(f"{width} px {kind}: {sum(hits)}/{len(truth)}", flush=True)
    sizes = sorted({size for _, size in found})
    print("\nfaces found, by photo width (rows) and face size (columns, px)")
    print("width  " + " ".join(f"{s:>6}" for s in sizes) + "     all  s/photo")
    for width in args.canvas:
        cells = [found.get((width, s), []) for s in sizes]
        every = [h for c in cells for h in c]
        print(f"{width:>5}  " + " ".join(f"{sum(c)}/{len(c)}".rjust(6) if c else "     -" for c in cells)
              + f" {sum(every):>3}/{len(every):<4} {np.mean(seconds[width]):6.1f}")
    every = [h for v in found.values() for h in v]
    print(f"all: {sum(every)}/{len(every)} found ({sum(every) / len(every):.1%}); {false} false detection(s)")
    print("by source face: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in by_source.items()))
    for mode, (hit, total, spent, wrong) in turned.items():
        print(f"photos stored sideways, photo.turns {mode}: {hit}/{total} faces found, {wrong} false detection(s), "
              f"detection {spent:.1f} s")
    photos = len(args.canvas) * len(BACKGROUNDS)
    # a rule searching turned copies only where a face found does not show upright would search nearly all photos
    print("upright photos with " + ", with ".join(f"{what}: {count}/{photos}"
                                                 for what, count in searched_turned.items()))
    if args.lying:
        lying_faces(args, faces, detector)


def lying_faces(args, faces: dict, detector: FaceAligner) -> None:
    """Photos where a share of the faces lies beside upright ones, searched under each of photo.turns' modes."""
    rng = np.random.default_rng(args.seed + 1)
    totals = {mode: defaultdict(float) for mode in TURN_MODES}
    print(f"\nphotos with {args.lying:.0%} of their faces lying on their side or upside down")
    for width in args.canvas:
        for kind in BACKGROUNDS:
            photo, truth = compose(width, kind, faces, rng, lying=args.lying)
            line = []
            for mode in TURN_MODES:
                started = time.perf_counter()
                kept = find_faces(detector, photo, mode)
                spent = time.perf_counter() - started
                hits, wrong = matched(truth, [np.asarray(f.detection.box) for f in kept])
                row = totals[mode]
                for face, hit in zip(truth, hits):
                    group = "lying" if face["turns"] else "upright"
                    row[f"{group}_found"] += hit
                    row[group] += 1
                row["false"] += wrong
                row["seconds"] += spent
                line.append(f"{mode} {sum(h for f, h in zip(truth, hits) if f['turns'])}")
            lying_count = sum(1 for f in truth if f["turns"])
            print(f"{width} px {kind}: lying faces found of {lying_count}: " + ", ".join(line), flush=True)
    print("| photo.turns | upright faces found | lying faces found | false detections | detection s |")
    print("| --- | --- | --- | --- | --- |")
    for mode, row in totals.items():
        print(f"| `{mode}` | {row['upright_found']:.0f}/{row['upright']:.0f} | {row['lying_found']:.0f}/"
              f"{row['lying']:.0f} | {row['false']:.0f} | {row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
