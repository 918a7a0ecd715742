"""The identity and attribute networks' input resize, reference op vs two matrix products, side by side in one run:
forward + backward of FaRL's antialiased bicubic 1024 -> 224 and of ArcFace's pSp pooling + crop 1024 -> 112, per
image, on the device the step runs on. The step runs them on the generator's float32 output, under bf16 autocast
on CUDA; so does this.

    .venv/bin/python bench/resize_forms.py [--device cuda] [--batch 32] [--repeats 10] [--out resize.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from anon_core.acceleration import resolve_amp
from anon_core.networks.arcface import ArcFaceEncoder, IRSEConfig
from anon_core.networks.farl import FaRLEncoder, ViTConfig
from anon_core.networks.resample import RESIZE_FORMS, set_resize_form


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_resize(prepare, images: torch.Tensor, amp_dtype, repeats: int) -> float:
    """Seconds per call of forward + backward of `prepare` (median of `repeats`, after 2 untimed calls)."""
    probe = None
    times = []
    for i in range(repeats + 2):
        x = images.detach().requires_grad_(True)
        synchronize(images.device)
        start = time.perf_counter()
        with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = prepare(x)
        probe = torch.ones_like(out) if probe is None else probe
        out.backward(probe)
        synchronize(images.device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--side", type=int, default=1024, help="the generator's output side")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()

    device = torch.device(args.device)
    amp_dtype = resolve_amp("auto", device)
    torch.manual_seed(0)
    images = (torch.rand(args.batch, 3, args.side, args.side, device=device) * 2 - 1)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)  # a channels-last generator's output
    # only the resize runs: the networks' weights are never touched
    networks = {"farl_bicubic_224": (FaRLEncoder(ViTConfig()), "preprocess"),
                "arcface_psp_112": (ArcFaceEncoder(IRSEConfig()), "prepare")}
    record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "batch": args.batch, "side": args.side, "amp": str(amp_dtype), "ms_per_image": {}, "ratios": {}}
    for name, (net, method) in networks.items():
        net.to(device)
        per_form = {}
        for form in RESIZE_FORMS:
            set_resize_form(net, form)
            seconds = time_resize(getattr(net, method), images, amp_dtype, args.repeats)
            per_form[form] = 1000 * seconds / args.batch
        record["ms_per_image"][name] = per_form
        record["ratios"][name] = per_form["interpolate"] / per_form["matmul"]
        print(f"{name:<18} forward + backward, ms/image: interpolate {per_form['interpolate']:.3f}   "
              f"matmul {per_form['matmul']:.3f}   interpolate/matmul {record['ratios'][name]:.2f}x", flush=True)
    print(f"({record['device']}, batch {args.batch}, {args.side} px, autocast {amp_dtype})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
