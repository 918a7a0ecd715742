"""Faces cut by a photo's edge: how many photo mode finds without and with its search in the photo extended by its
mirror image (`anon_core.photo_faces.cut_by_edge_faces`), what that search adds on photos whose faces are all inside,
and what it costs.

1. Cut faces: each source face of `bench/photo_detection_recall.py` (the astronaut's and 10 LFW crops), pasted with a
   face box of `--size` px on a background, the photo then cropped so that one edge (left, right, top, bottom) cuts
   off that share of the face's box. A face counts as found when a detection's box, clipped to the photo, overlaps
   the clipped true box with IoU >= 0.4.
2. False detections: that script's composed photos (faces 16 to 600 px, none cut by an edge) at `--canvas` widths;
   every face the edge search adds there is a false one (photo mode would cover a patch of background, and the
   privacy check would count it as a face still matched). Also the time of the edge search beside `find_faces`
   (`photo.turns: always`, the default).

3. With `--memory WxH`: the peak resident memory (above the loaded networks, each in its own process, one thread) of
   MTCNN over the sample astronaut resized to that size, and of the edge search over it (2.25x its pixels).

    .venv/bin/python bench/photo_edge_faces.py [--size 128] [--canvas 640 1280] [--backgrounds coffee noise]
    .venv/bin/python bench/photo_edge_faces.py --memory 9600x6400   # 64 MP, MAX_PIXELS
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
from PIL import Image

from anon_core.data.align import FaceAligner
from anon_core.data.sample import _soft_ellipse
from anon_core.photo_faces import cut_by_edge_faces, find_faces
from photo_detection_recall import BACKGROUNDS, background, compose, iou, sources  # bench/, the script's folder

CUTS = (0.2, 0.35, 0.5, 0.6, 0.7)  # share of the face's box beyond the edge
EDGES = ("left", "right", "top", "bottom")


def cut_photo(face: np.ndarray, rel: np.ndarray, size: int, kind: str, edge: str, cut: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 640 x 427 photo with the face (box `size` px) in the middle, cropped at `edge` through its box so that `cut`
    of the box's width (or height) is gone; the true box in the cropped photo's coordinates."""
    width, height = 640, 427
    photo = background(kind, width, height, rng)
    side = int(round(size / np.sqrt((rel[2] - rel[0]) * (rel[3] - rel[1]))))
    x, y = (width - side) // 2, (height - side) // 2
    pasted = np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC), np.float32)
    alpha = _soft_ellipse(side)[:, :, None]
    under = photo[y:y + side, x:x + side].astype(np.float32)
    photo[y:y + side, x:x + side] = np.rint(under + (pasted - under) * alpha).astype(np.uint8)
    box = np.array([x, y, x, y]) + rel * side
    bw, bh = box[2] - box[0], box[3] - box[1]
    if edge == "left":
        left = int(round(box[0] + cut * bw))
        return photo[:, left:], box - [left, 0, left, 0]
    if edge == "right":
        return photo[:, :int(round(box[2] - cut * bw))], box
    if edge == "top":
        top = int(round(box[1] + cut * bh))
        return photo[top:], box - [0, top, 0, top]
    return photo[:int(round(box[3] - cut * bh))], box


PEAK = """
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
from skimage.data import astronaut
from anon_core.data.align import FaceAligner
from anon_core.photo_faces import cut_by_edge_faces
torch.set_num_threads(1)
width, height, edge = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "edge"
photo = np.asarray(Image.fromarray(astronaut()).resize((width, height), Image.Resampling.BICUBIC))
detector = FaceAligner(256, "mtcnn", min_face_size=16)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
found = cut_by_edge_faces(detector, photo, []) if edge else detector.detect(photo)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "above_networks_mib": (peak - before) / 1024}))
"""


def peak_memory(size: str) -> None:
    width, height = (int(v) for v in size.split("x"))
    for what in ("detect", "edge"):
        done = subprocess.run([sys.executable, "-c", PEAK, str(width), str(height), what], check=True,
                              capture_output=True, text=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{size} {'MTCNN on the photo' if what == 'detect' else 'the edge search'}: "
              f"{measured['above_networks_mib']:.0f} MiB above the networks, {measured['seconds']:.1f} s")


def clipped(box, shape) -> np.ndarray:
    height, width = shape[:2]
    return np.array([max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)], dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="face box side, px")
    parser.add_argument("--canvas", type=int, nargs="+", default=[640, 1280], help="composed photos' widths, px")
    parser.add_argument("--backgrounds", nargs="+", default=["coffee", "noise"], choices=BACKGROUNDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", metavar="WxH", help="only measure the peak memory at this photo size")
    args = parser.parse_args()
    if args.memory:
        peak_memory(args.memory)
        return
    faces, rng = sources(), np.random.default_rng(args.seed)
    detector = FaceAligner(256, "mtcnn", min_face_size=16)

    found = defaultdict(lambda: [0, 0, 0])  # cut -> [found before, found with the edge search, faces]
    for cut in CUTS:
        for name, (face, rel) in faces.items():
            for kind in args.backgrounds:
                for edge in EDGES:
                    photo, box = cut_photo(face, rel, args.size, kind, edge, cut, rng)
                    truth = clipped(box, photo.shape)
                    plain = find_faces(detector, photo, "never")
                    extra = cut_by_edge_faces(detector, photo, plain)
                    hit = [iou(truth, clipped(f.detection.box, photo.shape)) >= 0.4 for f in plain]
                    hit_extra = [iou(truth, clipped(f.detection.box, photo.shape)) >= 0.4 for f in extra]
                    found[cut][0] += any(hit)
                    found[cut][1] += any(hit) or any(hit_extra)
                    found[cut][2] += 1
    print(f"faces cut by an edge ({args.size} px box, {len(faces)} faces x {len(args.backgrounds)} backgrounds x 4 "
          "edges):")
    print("| share of the box cut off | found before | found with the edge search | faces |")
    print("| --- | --- | --- | --- |")
    for cut, (before, after, total) in found.items():
        print(f"| {cut:.0%} | {before} | {after} | {total} |")

    false, photos, seconds = 0, 0, [0.0, 0.0]
    for width in args.canvas:
        for kind in BACKGROUNDS:
            photo, _ = compose(width, kind, faces, rng)
            started = time.perf_counter()
            kept = find_faces(detector, photo, "always")
            seconds[0] += time.perf_counter() - started
            started = time.perf_counter()
            extra = cut_by_edge_faces(detector, photo, kept)
            seconds[1] += time.perf_counter() - started
            false += len(extra)
            photos += 1
            for f in extra:
                print(f"  false: {width} px {kind}: box {np.round(f.detection.box).astype(int).tolist()}, "
                      f"score {f.detection.score:.2f}")
    print(f"composed photos with no face cut ({photos}, widths {args.canvas}): {false} false detections from the edge "
          f"search; detection {seconds[0]:.1f} s (photo.turns: always), edge search {seconds[1]:.1f} s "
          f"(+{seconds[1] / seconds[0]:.0%})")


if __name__ == "__main__":
    main()
