"""Identity-aware pairing on LFW-like data (people with several images): does each person keep one pseudonym, and
does privacy hold? One run, side by side:

- `nearest` (the paper's pairing), `identity` (one fake per person, the paper's loss), and `identity` with the
  consistency term at each --lambdas value;
- per run, from `falco evaluate` (dlib, the recognizer whose weights ship offline): the share of same-person pairs
  of anonymized images verified as one person, the same for their real images, the share of different-person pairs
  merged, and the privacy figures (top-1 re-identification, verification against the source).

The people are made from the sample faces: each of --people faces (the astronaut and the first LFW faces) is one
person, seen in --views views (the face itself, mirrored, zoomed in 8 %, darker, brighter, turned 4 degrees). Views of one
photo are easier to match than different photos of a person, so the real rate is an upper bound of LFW's.

    .venv/bin/python bench/pseudonym_consistency.py [--people 12] [--views 4] [--steps 50] [--lambdas 1,10]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from anon_core.data.sample import build_sample_dataset
from orchestration.cli import main as falco

VIEWS = {
    "original": lambda im: im,
    "mirrored": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "zoomed": lambda im: im.crop((5, 5, im.width - 5, im.height - 5)).resize(im.size, Image.Resampling.BICUBIC),
    "darker": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "turned": lambda im: im.rotate(4, resample=Image.Resampling.BICUBIC, fillcolor=(128, 128, 128)),
}
COLUMNS = {"pseudonym/dlib/anon_same_person_match_rate": "same person, anonymized",
           "pseudonym/dlib/real_same_person_match_rate": "same person, real",
           "pseudonym/dlib/anon_other_person_match_rate": "two people merged",
           "pseudonym/dlib/anon_separation_auc": "AUC anonymized",
           "pseudonym/dlib/real_separation_auc": "AUC real",
           "reid/dlib/top1_rate": "top-1 re-id", "reid/dlib/verification_rate": "verified vs source",
           "reid/dlib/distance_to_source_median": "median distance to source"}


def people_folder(root: Path, people: int, views: int) -> Path:
    sample = root / "sample"
    faces = build_sample_dataset(sample, size=128, num_lfw=people - 1)
    rows = []
    for k, face in enumerate(faces[:people]):
        with Image.open(face) as im:
            im = im.convert("RGB")
            for name, view in list(VIEWS.items())[:views]:
                relpath = f"person_{k:02d}/{name}.png"
                (root / "in" / relpath).parent.mkdir(parents=True, exist_ok=True)
                view(im).save(root / "in" / relpath)
                rows.append({"relpath": relpath, "identity": f"person_{k:02d}"})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["relpath", "identity"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "in"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=12)
    ap.add_argument("--views", type=int, default=4, choices=range(2, len(VIEWS) + 1))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lambdas", default="1,10", help="lambda_consistency values to run with identity pairing")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="falco-pseudonym-"))
    try:
        images = people_folder(root, args.people, args.views)
        labels = root / "labels.csv"
        runs = [("nearest", "nearest", 0.0), ("identity", "identity", 0.0)]
        runs += [(f"identity, lambda_c={v}", "identity", float(v)) for v in args.lambdas.split(",") if v.strip()]
        table = []
        for label, pairing, weight in runs:
            out = root / f"out_{len(table)}"
            start = time.perf_counter()
            assert falco(["anonymize", str(images), str(out), "--labels", str(labels), "--pairing", pairing,
                          "--lambda-consistency", str(weight), "--steps", str(args.steps), "--quiet"]) == 0
            seconds = time.perf_counter() - start
            report = root / f"report_{len(table)}"
            assert falco(["evaluate", str(images), str(out), "--out", str(report), "--labels", str(labels),
                          "--no-baselines", "--recognizers", "dlib", "--quiet"]) == 0
            metrics = pd.read_csv(report / "metrics.csv").set_index("method").iloc[0]
            manifest = pd.read_csv(out / "manifest.csv")
            table.append({"run": label, "seconds": round(seconds, 1),
                          "fakes": manifest["fake_index"].nunique(),
                          **{name: metrics.get(key, np.nan) for key, name in COLUMNS.items()}})
        frame = pd.DataFrame(table)
        print(f"{args.people} people x {args.views} views = {args.people * args.views} images, tiny profile, "
              f"{args.steps} steps, dlib (distance < 0.6 = same person)")
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
