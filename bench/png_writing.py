"""PNG writing of the anonymized images: one thread (how `falco anonymize` wrote before) vs the write-behind
threads it uses now (anon_core.prefetch.WriteBehind), side by side in one run.

The images are the sample faces (data/sample/images, `make demo` builds them) upscaled to --size with bicubic
resampling, so the encoder sees face-like content rather than noise or flat colour. Each configuration writes the
same --images files into a fresh temporary folder, atomically, as the run does (`save_png`).

    .venv/bin/python bench/png_writing.py                  # 1024 px, 1 thread vs 2, 4, 8 (up to the cores)
    .venv/bin/python bench/png_writing.py --size 512 --images 64

A GPU that anonymizes R images/s needs at least R x (seconds per image on one thread) encoding threads' worth of
cores beside it; the printed "keeps up with" column is that rate.

Second table: zlib's level and strategy on one thread (`image_io.PNG_COMPRESS_LEVEL`, `PNG_ZLIB_STRATEGY`; Pillow's
default is level 6 with the default strategy), seconds and bytes per image, side by side for three kinds of content:
the sample faces (blown up from 250 px, so smoother than a camera's or the generator's 1024 px), photographs
(scikit-image's astronaut, blown up from 512 px, and a 1024 px crop of its retina photograph) and smooth noise (what
`gpu_pipeline.py`'s seeded networks draw). Every encoding is decoded and compared: all are lossless.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anon_core.data.image_io import (IMAGE_EXTENSIONS, PNG_COMPRESS_LEVEL, PNG_ZLIB_STRATEGY,  # noqa: E402
                                     encode_png, save_png)
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


def photographs(size: int) -> list[np.ndarray]:
    """Camera content: the astronaut resized to `size`, and a size x size crop of the retina photograph (1411 px)."""
    from skimage import data

    astronaut = np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC))
    retina = data.retina()
    top = max(0, (retina.shape[0] - size) // 2)
    crop = retina[top:top + size, top:top + size]
    return [astronaut, np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))]


ENCODINGS = {  # name -> Pillow's PNG options
    "level 6 (Pillow's default, before)": {"compress_level": 6},
    "level 1": {"compress_level": 1},
    "level 6, run-length strategy": {"compress_level": 6, "compress_type": zlib.Z_RLE},
}


def encode_cost(images: list[np.ndarray], options: dict) -> tuple[float, float]:
    """(seconds, bytes) per image with Pillow's PNG `options`, one thread; each result decoded and compared."""
    seconds, size = 0.0, 0
    for image in images:
        buffer = io.BytesIO()
        start = time.perf_counter()
        Image.fromarray(image).save(buffer, format="PNG", **options)
        seconds += time.perf_counter() - start
        size += buffer.tell()
        if not np.array_equal(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")), image):
            raise SystemExit(f"{options} did not round-trip")
    return seconds / len(images), size / len(images)


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

    in_use = {"compress_level": PNG_COMPRESS_LEVEL, "compress_type": PNG_ZLIB_STRATEGY}
    assert encode_png(images[0]) == _encoded(images[0], in_use), "encode_png writes with image_io's PNG_COMPRESS_LEVEL and PNG_ZLIB_STRATEGY"
    print(f"\nPNG encoding, one thread (in use: level {PNG_COMPRESS_LEVEL}, strategy {PNG_ZLIB_STRATEGY})")
    print("| images | encoding | s/image | MB/image | speed vs Pillow's default | size vs Pillow's default |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for name, sample in (("sample faces", images[:8]), ("photographs", photographs(args.size)),
                         ("smooth noise", noisy_images(4, args.size))):
        costs = {encoding: encode_cost(sample, options) for encoding, options in ENCODINGS.items()}
        base_seconds, base_size = next(iter(costs.values()))
        for encoding, (seconds, size) in costs.items():
            print(f"| {name} | {encoding} | {seconds:.4f} | {size / 1e6:.2f} | {base_seconds / seconds:.2f}x | "
                  f"{size / base_size:.2f}x |", flush=True)


def _encoded(image: np.ndarray, options: dict) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", **options)
    return buffer.getvalue()

if __name__ == "__main__":
    main()
