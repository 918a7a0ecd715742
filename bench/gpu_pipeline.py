"""The whole pipeline's stages on one device, and CelebA-HQ end to end projected from the measured rates.

Seeded networks of a profile (speed does not depend on the weights) on `--device`, real images generated from
seeded codes, and the same stage functions the pipeline runs (anon_core.stages):

  pool          the fake pool: generation + FaRL features (`build_pool`), fakes/s
  features      FaRL features of the real images (`embed_images`), images/s
  inversion     the profile's inverter (e4e for ffhq1024; `invert_images`), images/s
  pairing       the assignment at full size on random unit features (`assign_fakes`, --pairing), measured whole
  optimization  FALCO's optimization with the defaults (`optimize_images`, params' steps), images/s
  writing       the final generation from the codes + PNG writing in `io_workers` threads, as `falco anonymize`
                writes (`generate`, `WriteBehind`, `save_png`), images/s

The projection counts `--reals` images (CelebA-HQ: 30,000) and `--pool` fakes (the paper's 60,000) at these rates,
and names the slowest stage other than the optimization when it is more than 10% of the total (the issue's rule).
Writes --out (JSON) and prints a table.

    .venv/bin/python bench/gpu_pipeline.py --profile ffhq1024 --device cuda      # on a GPU machine
    .venv/bin/python bench/gpu_pipeline.py --profile tiny --images 16 --pool-sample 64 --pair-reals 3000 \\
        --pair-fakes 6000                                                         # the CPU check of the script
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anon_core.assignment import assign_fakes  # noqa: E402
from anon_core.batch_size import resolve_batch_size  # noqa: E402
from anon_core.data.image_io import save_png  # noqa: E402
from anon_core.fake_pool import generate, sample_fake_pool  # noqa: E402
from anon_core.ingest import io_workers  # noqa: E402
from anon_core.networks.e4e import E4EEncoder, E4EInverter  # noqa: E402
from anon_core.params import load_params  # noqa: E402
from anon_core.prefetch import WriteBehind  # noqa: E402
from anon_core.profiles import build_networks  # noqa: E402
from anon_core.stages import build_pool, embed_images, invert_images, optimize_images, resolve_device  # noqa: E402


def synchronized(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work):
    synchronized(device)
    start = time.perf_counter()
    result = work()
    synchronized(device)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ffhq1024")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=256, help="real images timed in the per-image stages")
    parser.add_argument("--pool-sample", type=int, default=1024, help="fakes timed in the pool stage")
    parser.add_argument("--pair-reals", type=int, default=30000, help="real images of the pairing (CelebA-HQ)")
    parser.add_argument("--pair-fakes", type=int, default=60000, help="fakes of the pairing (the paper's pool)")
    parser.add_argument("--pairing", default="nearest", choices=("nearest", "unique"))
    parser.add_argument("--reals", type=int, default=30000, help="images of the projected dataset (CelebA-HQ)")
    parser.add_argument("--pool", type=int, default=60000, help="fakes of the projected pool")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("gpu_pipeline.json"))
    args = parser.parse_args()

    device = resolve_device(args.device)
    nets = build_networks(args.profile, device=device, weights="seeded")
    if "e4e" not in nets.extra and nets.profile.e4e is not None:
        # Seeded weights carry no encoder; e4e's cost does not depend on its weights, so time the architecture seeded
        # (profile's e4e sizes) as the official checkpoint would build it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(nets.profile.weight_seed + 3)
            encoder = E4EEncoder(nets.profile.e4e)
        nets.extra["e4e"] = E4EInverter(encoder.to(device).eval().requires_grad_(False),
                                        num_ws=nets.generator.config.num_ws)
    params = load_params(args.profile)
    record = {"profile": args.profile, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or "cpu", "torch": torch.__version__, "stages": {}}

    def note(stage: str, count: int, seconds: float, unit: str) -> None:
        record["stages"][stage] = {"count": count, "seconds": seconds, "per_s": count / seconds, "unit": unit}
        print(f"{stage:13s} {count:6d} {unit:7s} in {seconds:8.2f} s: {count / seconds:9.2f} {unit}/s", flush=True)

    # Real images: generated from seeded codes (a fixed seed apart from the pool's), at the generator's resolution.
    codes = sample_fake_pool(nets.generator, args.images, seed=12345, psi=0.7, device=device).w
    images = generate(nets.generator, codes, device=device)
    build_pool(nets, params.replace(pool_size=min(16, args.pool_sample)), show_progress=False)  # warm-up

    _, seconds = timed(device, lambda: build_pool(nets, params.replace(pool_size=args.pool_sample),
                                                  show_progress=False))
    note("pool", args.pool_sample, seconds, "fakes")
    _, seconds = timed(device, lambda: embed_images(nets, images))
    note("features", len(images), seconds, "images")
    w_real, seconds = timed(device, lambda: invert_images(nets, params, images))
    note("inversion", len(images), seconds, "images")

    rng = np.random.default_rng(0)
    dim = nets.farl.config.output_dim
    real = rng.standard_normal((args.pair_reals, dim), dtype=np.float32)
    fake = rng.standard_normal((args.pair_fakes, dim), dtype=np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    fake /= np.linalg.norm(fake, axis=1, keepdims=True)
    _, seconds = timed(device, lambda: assign_fakes(real, fake, args.pairing))
    note("pairing", args.pair_reals, seconds, "images")

    w_fake = codes[rng.permutation(len(codes))]
    # Once per process, not per image: `batch_size: auto`'s probe, then a 2-step batch that warms cuDNN's and the
    # allocator's first calls (the first timing of 128 images on an H200 counted them: 1.86 images/s, half the rate)
    batch, seconds = timed(device, lambda: resolve_batch_size(nets, params))
    record["once_per_process"] = {"batch_probe_s": seconds, "batch_size": batch}
    warm = load_params(args.profile, **{"optimization.steps": 2})
    _, seconds = timed(device, lambda: optimize_images(nets, warm, images[:batch], w_real[:batch], w_fake[:batch],
                                                       batch_size=batch, keep_images=False))
    record["once_per_process"]["warm_up_batch_s"] = seconds
    print(f"once per process: batch_size auto -> {batch} in {record['once_per_process']['batch_probe_s']:.2f} s, "
          f"a 2-step warm-up batch in {seconds:.2f} s", flush=True)
    result, seconds = timed(device, lambda: optimize_images(nets, params, images, w_real, w_fake, batch_size=batch,
                                                            keep_images=False))
    note("optimization", len(images), seconds, "images")

    workers = io_workers(device)
    with tempfile.TemporaryDirectory() as folder:
        def write() -> None:  # as falco anonymize writes: PNG encoding in io_workers threads behind the generator
            with WriteBehind(workers) as writer:
                for i, image in enumerate(generate(nets.generator, result.ws, device=device)):
                    writer.submit(save_png, Path(folder) / f"{i:06d}.png", image)

        _, seconds = timed(device, write)
    note("writing", len(images), seconds, "images")
    record["stages"]["writing"]["threads"] = workers

    # Projection: the pairing as measured, scaled by the real x fake pairs it compares when its sizes differ.
    counts = {"pool": args.pool, "features": args.reals, "inversion": args.reals, "optimization": args.reals,
              "writing": args.reals}
    hours = {stage: counts[stage] / record["stages"][stage]["per_s"] / 3600 for stage in counts}
    pairs_ratio = (args.reals * args.pool) / (args.pair_reals * args.pair_fakes)
    hours["pairing"] = record["stages"]["pairing"]["seconds"] * pairs_ratio / 3600
    total = sum(hours.values())
    record["projection"] = {"reals": args.reals, "pool": args.pool, "hours": hours, "total_hours": total}
    print(f"\nprojected: {args.reals:,} images, a pool of {args.pool:,} fakes, on {record['device']}")
    print("| stage | hours | share |\n| --- | --- | --- |")
    for stage, value in sorted(hours.items(), key=lambda kv: -kv[1]):
        print(f"| {stage} | {value:.3f} | {value / total:.1%} |")
    print(f"| total | {total:.3f} | 100% |")
    others = {stage: value for stage, value in hours.items() if stage != "optimization"}
    slowest = max(others, key=others.get)
    record["slowest_other_stage"] = {"stage": slowest, "share": others[slowest] / total}
    if others[slowest] > 0.1 * total:
        print(f"the slowest stage besides the optimization, {slowest}, is {others[slowest] / total:.1%} of the "
              "total (more than 10%: the one to fix)")
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
