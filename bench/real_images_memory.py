"""Peak memory of ingesting a dataset at 1024 px: the `real_images` asset of the `ffhq1024` profile (seeded
weights; only the resolution matters here) materialized on folders of N CelebA-HQ-sized JPEGs, each in its own
process so its peak resident memory is its own.

The images stay on disk (the input file, or the aligned crop in the cache) and the IO manager encodes them one at
a time, so the peak should not grow with N; holding the set in memory would add N x 3 MB (N x 12 MB more while
resizing in float32). Prints the peak per N and the growth per image, and writes a JSON.

    PYTHONPATH=. python3 bench/real_images_memory.py --sizes 48 192
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 1024


def write_faces(folder: Path, count: int) -> None:
    """`count` smooth 1024 px JPEGs (a gradient with noise), about as costly to decode as CelebA-HQ's."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, SIDE, dtype=np.float32)
    base = np.stack([ramp[None, :].repeat(SIDE, 0), ramp[:, None].repeat(SIDE, 1), np.full((SIDE, SIDE), 90.0)], -1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        noisy = np.clip(base + rng.normal(0, 12, base.shape) + i % 50, 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i:05d}.jpg", quality=90)


def materialize(folder: Path, store: Path) -> dict:
    """Child process: materialize real_images on `folder`; report the peak RSS and the images stored."""
    import dagster as dg

    from orchestration.assets.real_data import real_images
    from orchestration.io_manager import FalcoIOManager
    from orchestration.resources import NetworksResource, StorageResource

    start = time.perf_counter()
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [real_images],
            instance=instance,
            resources={"storage": StorageResource(root=str(store), input_dir=str(folder)),
                       "networks": NetworksResource(profile="ffhq1024", weights="seeded"),
                       "io_manager": FalcoIOManager(root=str(store))},
            run_config={"ops": {"real_images": {"config": {"align": False, "dataset": "folder"}}}},
        )
    assert result.success
    stored = len(list((store / "real_images" / "images").glob("*.png")))
    return {"seconds": time.perf_counter() - start, "stored": stored,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 192])
    parser.add_argument("--out", type=Path, default=Path("bench/real_images_memory.json"))
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(materialize(*args.child)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"faces_{n}"
            write_faces(folder, n)
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(Path(tmp) / f"store_{n}")],
                                 check=True, capture_output=True, text=True)
            row = {"images": n, "decoded_set_mb": n * SIDE * SIDE * 3 / 2**20, **json.loads(out.stdout.splitlines()[-1])}
            rows.append(row)
            print(f"N={n:5d}: peak RSS {row['peak_rss_mb']:7.0f} MB (the decoded set alone: "
                  f"{row['decoded_set_mb']:6.0f} MB), {row['seconds']:.1f} s, {row['stored']} PNGs stored")
    small, large = rows[0], rows[-1]
    growth = (large["peak_rss_mb"] - small["peak_rss_mb"]) / max(1, large["images"] - small["images"])
    print(f"peak RSS grows {growth:.2f} MB per image (an image decoded is {SIDE * SIDE * 3 / 2**20:.0f} MB)")
    args.out.write_text(json.dumps({"rows": rows, "growth_mb_per_image": growth}, indent=2))


if __name__ == "__main__":
    main()
