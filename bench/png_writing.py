"""PNG writing of the anonymized images: one thread (how `falco anonymize` wrote before) vs the write-behind
threads it uses now (anon_core.prefetch.WriteBehind), side by side in one run.

The images are the sample faces (data/sample/images, `make demo` builds them) upscaled to --size with bicubic
resampling, so the encoder sees face-like content rather than noise or flat colour. Each configuration writes the
same --images files into a fresh temporary folder, atomically, as the run does (`save_png`).

    .venv/bin/python bench/png_writing.py                  # 1024 px, 1 thread vs 2, 4, 8 (up to the cores)
    .venv/bin/python bench/png_writing.py --size 512 --images 64

A GPU that anonymizes R images/s needs at least R x (seconds per image on one thread) encoding threads' worth of
cores beside it; the printed "keeps up with" column is that rate.

Second table: zlib's compression level (`image_io.PNG_COMPRESS_LEVEL`; Pillow's default is 6) on one thread, seconds
and bytes per image, for the faces and for seeded-generator-like content (smooth noise, what `gpu_pipeline.py`'s
seeded networks draw), side by side.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anon_core.data.image_io import IMAGE_EXTENSIONS, PNG_COMPRESS_LEVEL, save_png  # noqa: E402
from anon_core.prefetch import WriteBehind  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "images"


def sample_faces(count: int, size: int) -> list[np.ndarray]:
    files = sorted(p for p in SAMPLE.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"no sample faces in {SAMPLE}: run `make demo` (or `falco sample`) first")
    faces = []
    for path in (files * (count // len(files) + 1))[:count]:
        with Image.open(path) as image:
            faces.append(np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC)))
    return faces


def write_all(images: list[np.ndarray], workers: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        if workers == 0:  # the previous writer: one thread, one image after the other
            for i, image in enumerate(images):
                save_png(Path(folder) / f"{i:06d}.png", image)
        else:
            with WriteBehind(workers) as writer:
                for i, image in enumerate(images):
                    writer.submit(save_png, Path(folder) / f"{i:06d}.png", image)
        return time.perf_counter() - start


def noisy_images(count: int, size: int) -> list[np.ndarray]:
    """Smooth noise: 16 px blocks of random colour plus pixel noise, a seeded generator's kind of output."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        blocks = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(blocks).resize((size, size), Image.BICUBIC), np.int16)
        out.append(np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8))
    return out


def encode_cost(images: list[np.ndarray], level: int) -> tuple[float, float]:
    """(seconds, bytes) per image at zlib level `level`, one thread."""
    start, size = time.perf_counter(), 0
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=level)
        size += buffer.tell()
    return (time.perf_counter() - start) / len(images), size / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()

    images = sample_faces(args.images, args.size)
    cores = os.cpu_count() or 1
    configs = [0] + [n for n in (1, 2, 4, 8, 16) if n <= cores]
    write_all(images[:2], 1)  # warm-up: imports, the temporary folder's file system
    print(f"{args.images} images of {args.size} px, {cores} cores")
    print("| writer | s/image | images/s | vs one thread |\n| --- | --- | --- | --- |")
    base = None
    for workers in configs:
        rate = args.images / write_all(images, workers)
        base = base or rate
        name = "one thread (before)" if workers == 0 else f"WriteBehind({workers})"
        print(f"| {name} | {1 / rate:.4f} | {rate:.2f} | {rate / base:.2f}x |", flush=True)

    print(f"\nPNG compression level, one thread (the level in use: {PNG_COMPRESS_LEVEL})")
    print("| images | level | s/image | MB/image | speed vs level 6 | size vs level 6 |\n| --- | --- | --- | --- | --- | --- |")
    for name, sample in (("faces", images[:8]), ("smooth noise", noisy_images(8, args.size))):
        costs = {level: encode_cost(sample, level) for level in (6, 3, 1)}
        for level, (seconds, size) in costs.items():
            print(f"| {name} | {level} | {seconds:.4f} | {size / 1e6:.2f} | {costs[6][0] / seconds:.2f}x | "
                  f"{size / costs[6][1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
