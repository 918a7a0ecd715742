"""Peak memory of MTCNN on large photos: P-Net over each pyramid level in one pass against in strips of rows
(`anon_core.networks.mtcnn.PNET_STRIP_ROWS`), side by side, each detection in its own process so its peak resident
memory is its own. The photo is the sample astronaut (scikit-image's) resized to each size, so it holds one face.

Prints, per size, the peak resident memory above the loaded networks, the seconds, the ratio of the two forms, and
whether they found the same faces (boxes to 1e-3 px); writes a JSON.

    PYTHONPATH=. python3 bench/mtcnn_memory.py --sizes 3000x2000 6000x4000 --out bench/results/mtcnn_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ONE_PASS = 1 << 30  # output rows per pass: every level in one

DETECT = """
import json, resource, sys, time
import numpy as np, torch
import anon_core.networks.mtcnn as mtcnn
from PIL import Image
from skimage.data import astronaut
torch.set_num_threads(1)
width, height, rows = (int(v) for v in sys.argv[1:4])
mtcnn.PNET_STRIP_ROWS = rows
photo = np.asarray(Image.fromarray(astronaut()).resize((width, height), Image.Resampling.BICUBIC))
detector = mtcnn.MTCNN(min_face_size=16)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
found = detector.detect(photo)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "above_networks_mib": (peak - before) / 1024,
                  "boxes": [list(map(float, d.box)) for d in found]}))
"""


def detect(width: int, height: int, rows: int) -> dict:
    done = subprocess.run([sys.executable, "-c", DETECT, str(width), str(height), str(rows)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from anon_core.networks.mtcnn import PNET_STRIP_ROWS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["3000x2000", "6000x4000"], help="WIDTHxHEIGHT of each photo")
    parser.add_argument("--out", type=Path, default=Path("bench/results/mtcnn_memory.json"))
    args = parser.parse_args()
    results = []
    print(f"{'photo':>11} | {'one pass MiB':>12} | {'strips MiB':>10} | {'ratio':>5} | {'one pass s':>10} | "
          f"{'strips s':>8} | same faces")
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        whole, strips = detect(width, height, ONE_PASS), detect(width, height, PNET_STRIP_ROWS)
        same = len(whole["boxes"]) == len(strips["boxes"]) and all(
            abs(a - b) < 1e-3 for x, y in zip(whole["boxes"], strips["boxes"]) for a, b in zip(x, y))
        results.append({"size": size, "strip_rows": PNET_STRIP_ROWS, "one_pass": whole, "strips": strips,
                        "same_faces": same})
        print(f"{size:>11} | {whole['above_networks_mib']:12.0f} | {strips['above_networks_mib']:10.0f} | "
              f"{whole['above_networks_mib'] / max(strips['above_networks_mib'], 1):5.1f} | "
              f"{whole['seconds']:10.1f} | {strips['seconds']:8.1f} | {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
