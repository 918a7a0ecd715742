"""MKL's conditional numerical reproducibility (MKL_CBWR) on the CPU, side by side in one run: how many distinct
results repeated identical forward + backward passes of the identity network (dlib's ResNet, what `tiny` and the
privacy checks run) give, and what each pass costs. With two threads MKL's sgemm split some small products (the
last residual block's 3x3 convs, 256 channels on 2 x 2 positions) between the threads in an order that changed
from call to call, so two runs of the same command gave different codes (photo mode: one face in four).

MKL reads MKL_CBWR once per process, so each mode runs in a process of its own.

    .venv/bin/python bench/mkl_reproducibility.py [--repeats 30] [--threads 2] [--out mkl.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("off", "AUTO", "AUTO,STRICT")


def measure(repeats: int, threads: int) -> dict:
    """In this process: distinct (descriptor, gradient) digests over `repeats` passes at batch 1, and the median
    seconds per pass at batch 1 and 8."""
    import torch

    from anon_core.profiles import build_networks

    torch.set_num_threads(threads)
    nets = build_networks("tiny")
    generator = torch.Generator().manual_seed(0)
    images = {n: torch.rand(n, 3, 64, 64, generator=generator) * 2 - 1 for n in (1, 8)}
    results: dict = {"threads": torch.get_num_threads()}
    for batch, x0 in images.items():
        digests, seconds = set(), []
        for i in range(repeats + 2):
            x = x0.clone().requires_grad_(True)
            start = time.perf_counter()
            out = nets.identity(x)
            out.pow(2).sum().backward()
            if i >= 2:
                seconds.append(time.perf_counter() - start)
            digests.add(hashlib.sha1(out.detach().numpy().tobytes() + x.grad.numpy().tobytes()).hexdigest())
        results[f"batch{batch}"] = {"distinct": len(digests), "ms": 1000 * statistics.median(seconds)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.repeats, args.threads)))
        return
    rows = {}
    for mode in MODES:
        env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} | ({} if mode == "off" else {"MKL_CBWR": mode})
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--repeats", str(args.repeats),
                               "--threads", str(args.threads)], env=env, capture_output=True, text=True, check=True)
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rows["off"]
    print(f"dlib identity network, forward + backward, {args.threads} threads, {args.repeats} passes per batch size")
    print(f"{'MKL_CBWR':<12} {'distinct b1':>11} {'distinct b8':>11} {'ms b1':>8} {'ms b8':>8} {'b1 vs off':>9} "
          f"{'b8 vs off':>9}")
    for mode, row in rows.items():
        b1, b8 = row["batch1"], row["batch8"]
        print(f"{mode:<12} {b1['distinct']:>11} {b8['distinct']:>11} {b1['ms']:>8.1f} {b8['ms']:>8.1f} "
              f"{base['batch1']['ms'] / b1['ms']:>8.2f}x {base['batch8']['ms'] / b8['ms']:>8.2f}x")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
