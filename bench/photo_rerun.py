"""A photo-mode rerun over the same photos: with the faces found kept (`.detection_cache`, the default) against a
search of every photo again (`keep_detections=False`, what every rerun did before), same photos, same machine, one
run; then the privacy check `falco anonymize` runs after it, with each photo's verdicts kept (what it does now)
against measuring every face again (what it did before).

The photos: the sample photos (anon_core.data.sample.build_sample_photos: group.png with 7 faces, portrait.jpg,
no_face.png) and group.png enlarged to `--large-side` px on its longer side (Lanczos), standing for a camera's photo,
where the search (MTCNN over the photo, turned three ways besides and extended by its mirror image) costs most. The
networks and the fake pool are built once and shared by every run, so each time is the run's own work: reading,
searching (or not), generating the faces from the journal's codes, pasting, writing. Each rerun is repeated
(`--repeats`, the two kinds interleaved) and the fastest kept. The reruns' outputs are compared byte for byte.

    .venv/bin/python bench/photo_rerun.py [--profile tiny] [--steps 5] [--large-side 4000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from anon_core.data.sample import build_sample_photos
from anon_core.params import load_params
from anon_core.photo_faces import PhotoSettings
from anon_core.photos import anonymize_photos
from anon_core.profiles import build_networks
from anon_core.stages import build_pool


def make_photos(folder: Path, large_side: int) -> None:
    build_sample_photos(folder)
    with Image.open(folder / "group.png") as group:
        scale = large_side / max(group.size)
        group.convert("RGB").resize((round(group.width * scale), round(group.height * scale)),
                                    Image.Resampling.LANCZOS).save(folder / "large.jpg", quality=92)


def outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted((folder / "images").rglob("*"))
            if p.is_file()} | {name: (folder / name).read_bytes() for name in ("manifest.csv", "latents.npy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pool-size", type=int, default=64)
    parser.add_argument("--large-side", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    params = load_params(args.profile, pool_size=args.pool_size, **{"optimization.steps": args.steps})
    nets = build_networks(params.profile)
    pool = build_pool(nets, params, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        photos, out = Path(tmp) / "photos", Path(tmp) / "out"
        make_photos(photos, args.large_side)
        pixels = 0
        for path in photos.iterdir():
            with Image.open(path) as image:
                pixels += image.width * image.height

        def run(keep: bool) -> tuple[float, object]:
            start = time.perf_counter()
            summary = anonymize_photos(photos, out, params, PhotoSettings(), nets=nets, pool=pool,
                                       show_progress=False, keep_detections=keep)
            return time.perf_counter() - start, summary

        first, summary = run(True)
        print(f"{len(list(photos.iterdir()))} photos, {pixels / 1e6:.1f} MP, {summary.faces} faces; "
              f"first run (every photo searched): {first:.1f} s")
        kept, searched, written = [], [], {}
        for _ in range(args.repeats):
            seconds, summary = run(False)
            assert summary.found_earlier == 0
            searched.append(seconds)
            written["searched"] = outputs(out)
            run(True)  # puts the cache back (the run above removed it), not timed
            seconds, summary = run(True)
            assert summary.found_earlier == summary.photos - sum(summary.rejected.values())
            kept.append(seconds)
            written["kept"] = outputs(out)
        measured, taken, tables = check_privacy(photos, out, args.repeats)
    same = written["searched"] == written["kept"]
    print(f"rerun, every photo searched again: {min(searched):.1f} s (fastest of {args.repeats})")
    print(f"rerun, faces from the detection cache: {min(kept):.1f} s (fastest of {args.repeats})")
    print(f"ratio: {min(searched) / min(kept):.1f}x; outputs byte-identical: {same}")
    agree = all(a[["input", "face", "measured", "matched"]].equals(b[["input", "face", "measured", "matched"]]) and
                np.allclose(a["dlib_distance"], b["dlib_distance"], atol=1e-5) for a, b in zip(tables, tables[1:]))
    print(f"privacy check, every face measured again: {min(measured):.2f} s; with the kept verdicts: "
          f"{min(taken):.2f} s (fastest of {args.repeats}); ratio {min(measured) / min(taken):.1f}x; the same "
          f"verdicts: {agree}")


def check_privacy(photos: Path, out: Path, repeats: int) -> tuple[list[float], list[float], list]:
    """The privacy check of the run in `out`, timed measuring every face and taking the kept verdicts (after one
    untimed check that keeps them), interleaved; the recognizer built once, as the check's own start is the same for
    both."""
    from anon_core.photo_detections import DETECTION_CACHE
    from evaluation.photo_privacy import face_privacy
    from evaluation.recognizers import build_recognizer

    dlib = build_recognizer("dlib")
    tables = [face_privacy(photos, out, dlib, kept=out / DETECTION_CACHE)]
    measured, taken = [], []
    for _ in range(repeats):
        for times, kept in ((measured, None), (taken, out / DETECTION_CACHE)):
            start = time.perf_counter()
            tables.append(face_privacy(photos, out, dlib, kept=kept))
            times.append(time.perf_counter() - start)
    assert tables[-1].attrs["photos_checked_earlier"] == tables[-1]["input"].nunique()
    return measured, taken, tables


if __name__ == "__main__":
    main()
