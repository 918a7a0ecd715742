"""Photo mode vs. aligned mode on the same faces, same params, same machine, one run.

Photo mode (`anonymize_photos`) gets the sample photos (anon_core.data.sample.build_sample_photos: group.png with
7 faces, portrait.jpg with one, no_face.png). Aligned mode (`anonymize_folder(..., align=True)`) gets each face that
photo mode anonymized, cut out of its photo as its own PNG: a square of CROP_SCALE x the box's side around the
detector's box (clipped to the photo), so it sees one face per image. Both get the same params (profile, pool size,
steps, batch size), and each call builds its own networks and fake pool, as a user's run does: that start-up is
part of each mode's cost.

Each mode runs on the photos as they are (x1) and with `--copies` copies of group.png (and their crops), so the
per-face cost is also given as the difference of the two (seconds added per face added), which leaves the start-up
out. Each of the four runs is repeated (`--repeats`, the modes interleaved) and the fastest kept, since on a shared
2-core machine any other process slows whichever run it meets. Then, on the same photos and crops, the steps that
differ between the modes, timed alone: MTCNN detection on the whole photos (photo mode) vs. on the crops (aligned
mode), cutting the FFHQ crops, photo mode's pasting of the generated faces back (`compose.paste_face`) and its PNG
encoding of the whole photos; and the start-up alone (networks and fake pool, built as each call builds them).

    .venv/bin/python bench/photo_vs_aligned.py [--profile tiny] [--steps 50] [--pool-size 1000] [--batch-size 32]
        [--copies 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from anon_core.compose import paste_face
from anon_core.data.align import FaceAligner, ffhq_quad, warp_quad
from anon_core.data.image_io import encode_png, load_rgb
from anon_core.data.sample import build_sample_photos
from anon_core.params import load_params
from anon_core.photo_faces import PhotoSettings
from anon_core.photos import anonymize_photos, parse_numbers, read_photo_manifest
from anon_core.pipeline import anonymize_folder
from anon_core.profiles import build_networks
from anon_core.stages import build_pool

CROP_SCALE = 2.2  # crop side / box side: FFHQ's crop is about 1.6-2.2x an MTCNN box (photo_faces.QUAD_TO_BOX)


def make_photos(folder: Path, copies: int) -> None:
    """The sample photos, plus copies - 1 more copies of group.png under other names."""
    build_sample_photos(folder)
    for k in range(1, copies):
        shutil.copyfile(folder / "group.png", folder / f"group_copy{k}.png")


def cut_faces(photo_out: Path, photo_in: Path, crops: Path) -> int:
    """Each face photo mode anonymized (its manifest), cut from its input photo into `crops` as a PNG; the count.

    A text chunk names the source, so crops of identical copies differ in bytes (same pixels): aligned mode's
    alignment cache, keyed by the file's sha256, would otherwise skip detecting the copies."""
    manifest = read_photo_manifest(photo_out)
    faces = manifest[(manifest["kind"] == "face") & (manifest["status"] == "anonymized")]
    crops.mkdir(parents=True, exist_ok=True)
    images: dict[str, np.ndarray] = {}
    for row in faces.itertuples():
        image = images.setdefault(row.input, load_rgb(photo_in / row.input))
        x1, y1, x2, y2 = parse_numbers(row.box, (4,))
        half = CROP_SCALE * max(x2 - x1, y2 - y1) / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        h, w = image.shape[:2]
        top, bottom = max(int(round(cy - half)), 0), min(int(round(cy + half)), h)
        left, right = max(int(round(cx - half)), 0), min(int(round(cx + half)), w)
        info = PngImagePlugin.PngInfo()
        info.add_text("source", f"{row.input} face {row.face}")
        Image.fromarray(image[top:bottom, left:right]).save(
            crops / f"{Path(row.input).stem}_face{row.face}.png", pnginfo=info)
    return len(faces)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process), all cores; the machine's from /proc/stat (Linux)."""
    with open("/proc/stat") as fh:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fh.readline().split()[1:9])
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def timed_run(fn, seconds: list[float], others: list[float]):
    """fn's result; appends its wall seconds to `seconds` and the CPU seconds other processes used meanwhile to
    `others` (a run that shared the cores with them is slower by more than that: both modes run 2 threads)."""
    machine, own = cpu_seconds()
    out, wall = timed(fn)
    machine_end, own_end = cpu_seconds()
    seconds.append(wall)
    others.append(max(machine_end - machine - (own_end - own), 0.0))
    return out


def parts(photo_in: Path, photo_out: Path, crops: Path, resolution: int) -> dict[str, float]:
    """Seconds of the steps that differ between the modes, each alone, on the photos and crops of one run."""
    detector = FaceAligner(resolution, "mtcnn", min_face_size=PhotoSettings().min_face_size)  # photo mode's
    aligner = FaceAligner(resolution, "mtcnn")  # aligned mode's (MTCNN's default smallest face)
    by_name = {p.name: load_rgb(p) for p in sorted(photo_in.iterdir())}
    photos = list(by_name.values())
    crop_images = [load_rgb(p) for p in sorted(crops.iterdir())]
    manifest = read_photo_manifest(photo_out)
    faces = manifest[(manifest["kind"] == "face") & (manifest["status"] == "anonymized")]
    quads = [(row.input, ffhq_quad(parse_numbers(row.landmarks, (5, 2)))) for row in faces.itertuples()]
    generated = np.full((resolution, resolution, 3), 128, np.uint8)  # the cost of pasting does not depend on it
    out: dict[str, float] = {}
    _, out["detect photos"] = timed(lambda: [detector.detect(p) for p in photos])
    _, out["detect crops"] = timed(lambda: [aligner.detect(c) for c in crop_images])
    _, out["warp from photos"] = timed(lambda: [warp_quad(by_name[n], q, resolution) for n, q in quads])
    _, out["paste into photos"] = timed(lambda: [paste_face(by_name[n], generated, q) for n, q in quads])
    _, out["encode photos"] = timed(lambda: [encode_png(p) for p in photos])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--pool-size", type=int, default=1000, help="fakes (tiny's default 1000)")
    ap.add_argument("--batch-size", type=int, default=32, help="faces per batch (tiny's default 32)")
    ap.add_argument("--copies", type=int, default=3, help="copies of group.png in the second run of each mode")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each mode and input; the fastest is kept")
    args = ap.parse_args()
    if args.copies < 2:
        ap.error(f"--copies {args.copies}: use 2 or more, so the second run has more faces than the first")

    params = load_params(args.profile, pool_size=args.pool_size, batch_size=args.batch_size,
                         **{"optimization.steps": args.steps})
    settings = PhotoSettings()
    work = Path(tempfile.mkdtemp(prefix="falco-photo-vs-aligned-"))
    print(f"profile {args.profile}, pool {params.pool_size}, {params.optimization.steps} steps, batch "
          f"{params.batch_size}, device cpu, {torch.get_num_threads()} threads; every call builds its own networks "
          "and fake pool (part of each mode's seconds)")
    try:
        # Untimed: both modes once with 1 step and a small pool, so neither timed run pays first-call costs (lazy
        # imports, the detector's and the identity network's weights read from disk, torch's first kernels).
        warm = params.replace(pool_size=min(params.pool_size, 100), **{"optimization.steps": 1})
        make_photos(work / "warm" / "photos", 1)
        anonymize_photos(work / "warm" / "photos", work / "warm" / "photo_out", warm, settings, device="cpu",
                         show_progress=False)
        cut_faces(work / "warm" / "photo_out", work / "warm" / "photos", work / "warm" / "crops")
        anonymize_folder(work / "warm" / "crops", work / "warm" / "aligned_out", warm, dataset="folder",
                         labels_csv=None, align=True, align_detector="mtcnn", device="cpu", show_progress=False,
                         keep_cache=False)
        n, t, other = {}, {}, {}  # (mode, copies) -> faces anonymized; -> seconds of each repeat; -> others' CPU s
        inputs = {}  # copies -> (photos, photo mode's output, crops) of the first repeat
        alone: dict[str, list[float]] = {}  # step timed alone -> seconds of each repeat
        for rep in range(args.repeats):  # the modes interleaved, so a slow spell of the machine hits both
            for copies in (1, args.copies):
                tag = f"x{copies}"
                photo_in, crops = work / tag / "photos", work / tag / "crops"
                photo_out, aligned_out = work / tag / f"photo_out{rep}", work / tag / f"aligned_out{rep}"  # new
                if rep == 0:  # folders each time: a run into an old one would take its batches from the journal
                    make_photos(photo_in, copies)
                summary = timed_run(lambda: anonymize_photos(photo_in, photo_out, params, settings, device="cpu",
                                                             show_progress=False),
                                    t.setdefault(("photo", copies), []), other.setdefault(("photo", copies), []))
                if rep == 0:
                    cut = cut_faces(photo_out, photo_in, crops)
                    inputs[copies] = (photo_in, photo_out, crops)
                folder = timed_run(lambda: anonymize_folder(
                    crops, aligned_out, params, dataset="folder", labels_csv=None, align=True,
                    align_detector="mtcnn", device="cpu", show_progress=False, keep_cache=False),
                                   t.setdefault(("aligned", copies), []), other.setdefault(("aligned", copies), []))
                if rep == 0:
                    n["photo", copies], n["aligned", copies] = summary.anonymized, folder.ok
                    print(f"{tag}: {sum(1 for _ in photo_in.iterdir())} photos: photo mode {summary.describe()}; "
                          f"aligned mode on {cut} crops: {folder.describe()}")
                    if folder.ok != summary.anonymized:
                        print(f"  COUNTS DIFFER: photo mode anonymized {summary.anonymized} faces, aligned mode "
                              f"{folder.ok}; the rates below are per face each mode anonymized")
            # the start-up and the steps that differ, alone, once per repeat (so they too keep their fastest)
            nets, seconds = timed(lambda: build_networks(params.profile, device="cpu"))
            alone.setdefault("networks", []).append(seconds)
            _, seconds = timed(lambda: build_pool(nets, params, show_progress=False))
            alone.setdefault("fake pool", []).append(seconds)
            resolution = nets.generator.config.resolution
            for name, seconds in parts(*inputs[args.copies], resolution).items():
                alone.setdefault(name, []).append(seconds)
        for key, values in t.items():
            print(f"  {key[0]:7s} x{key[1]}: " + ", ".join(f"{v:.1f}" for v in values) + " s  (other processes' CPU "
                  "meanwhile: " + ", ".join(f"{v:.1f}" for v in other[key]) + " s)")
        best = {key: min(values) for key, values in t.items()}  # the least disturbed of the repeats

        print(f"min of {args.repeats} runs         {'photo faces':>11s} {'s':>7s} {'faces/s':>8s}   "
              f"{'aligned faces':>13s} {'s':>7s} {'faces/s':>8s}   photo/aligned s per face")
        rows = [(f"x{c} (with start-up)", n["photo", c], best["photo", c], n["aligned", c], best["aligned", c])
                for c in (1, args.copies)]
        rows.append((f"x{args.copies} - x1 (per added face)",
                     *(v for mode in ("photo", "aligned") for v in (n[mode, args.copies] - n[mode, 1],
                                                                    best[mode, args.copies] - best[mode, 1]))))
        for name, n_p, t_p, n_a, t_a in rows:
            print(f"{name:28s} {n_p:11d} {t_p:7.1f} {n_p / t_p:8.3f}   {n_a:13d} {t_a:7.1f} {n_a / t_a:8.3f}   "
                  f"{(t_p / n_p) / (t_a / n_a):.2f}x")
        per_face = {mode: (best[mode, args.copies] - best[mode, 1]) / (n[mode, args.copies] - n[mode, 1])
                    for mode in ("photo", "aligned")}
        print("start-up (x1 s - x1 faces * s per added face): " + ", ".join(
            f"{mode} {best[mode, 1] - n[mode, 1] * per_face[mode]:.1f} s" for mode in ("photo", "aligned")))
        first = {name: min(values) for name, values in alone.items()}
        print(f"start-up alone, as each call does it: networks {first['networks']:.1f} s + fake pool of "
              f"{params.pool_size} {first['fake pool']:.1f} s")
        photo_in, _, crops = inputs[args.copies]
        print(f"on the x{args.copies} inputs ({sum(1 for _ in photo_in.iterdir())} photos, "
              f"{n['photo', args.copies]} faces, {sum(1 for _ in crops.iterdir())} crops), each step alone, fastest "
              f"of {args.repeats}:")
        for name, values in alone.items():
            if name not in ("networks", "fake pool"):
                print(f"  {name:18s} {first[name]:6.2f} s  (" + ", ".join(f"{v:.2f}" for v in values) + ")")
        extra = first["detect photos"] - first["detect crops"] + first["paste into photos"]
        print(f"photo mode's extra steps (detect photos - detect crops + paste): {extra:+.2f} s; photo mode took "
              f"{best['photo', args.copies] - best['aligned', args.copies]:+.2f} s more than aligned mode at "
              f"x{args.copies} (it also encodes the whole photos: {first['encode photos']:.2f} s, where aligned "
              f"mode writes {n['aligned', args.copies]} {resolution} px PNGs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
