"""FLOPs of one FALCO latent-optimization step per image, per network, forward and backward.

One step (anon_core.optimize.anonymize_batch) is: synthesize G(w) from the W+ code with layers [layer_start,
layer_stop) trainable, embed the image with ArcFace (identity loss) and FaRL (attribute loss), back-propagate the
summed loss to the trainable layers only (every network frozen), Adam update. The backward pass is split per
network by differentiating in stages: d loss / d image through ArcFace and through FaRL separately, then that
image gradient through the generator to the code. Counted with torch.utils.flop_counter.FlopCounterMode, which
counts matrix multiplies, convolutions and attention (2 FLOPs per multiply-add) and nothing element-wise (the
losses, activations, FIR filters' elementwise work and Adam are below its radar, and small). A frozen network's
backward computes input gradients only, so it costs about one forward, not two. The generator is the exception:
its modulated convolution weights are functions of the code, so every layer whose code requires grad also costs a
weight-style gradient. `anonymize_batch` passes per-layer codes (`compose_layer_codes`) in which only the trainable
layers require grad; the script also counts the step as it was before, with one composed W+ tensor requiring grad
(`compose_ws`), and reports both.

Seeded weights of the profile's architectures (FLOPs do not depend on the weights). `--device meta` (the default)
counts on shape-only tensors in seconds, with attention decomposed into counted matmuls. `--device cpu` runs the
real arithmetic (minutes at 1024 px) and gives the same numbers except attention: FlopCounterMode (torch 2.13) has
no formula for the CPU flash-attention kernel that SDPA picks there, so FaRL's 1.4 GFLOP forward / 2.9 GFLOP
backward of attention go uncounted (on CUDA the flash / efficient kernels are counted).

One image per step: the work per image does not depend on the batch (the modulated convolutions run the batch as
conv groups), but FlopCounterMode's weight-gradient formula ignores `groups` and would count that term B times.

    .venv/bin/python bench/flops.py [--profile ffhq1024] [--device meta] [--out bench/flops.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from anon_core.optimize import attribute_loss, compose_layer_codes, compose_ws, identity_loss
from anon_core.params import load_params
from anon_core.profiles import ProfileSpec, build_networks

NETWORKS = ("generator", "arcface", "farl")
CODE_LAYOUTS = {
    "per_layer": compose_layer_codes,  # what anonymize_batch does: only the trainable layers' codes require grad
    "one_tensor": compose_ws,  # before: one composed W+ tensor, every layer's code requires grad
}


class Counter:
    """FLOP totals and per-op counts under (network, pass) labels."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], int] = {}
        self.by_op: dict[tuple[str, str], dict[str, int]] = {}

    @contextlib.contextmanager
    def count(self, network: str, direction: str) -> Iterator[None]:
        mode = FlopCounterMode(display=False)
        with mode:
            yield
        self.totals[network, direction] = mode.get_total_flops()
        self.by_op[network, direction] = {str(op): int(n) for op, n in mode.get_flop_counts()["Global"].items()}


def count_step(profile: str, device: str, codes: str = "per_layer", spec: ProfileSpec | None = None) -> dict:
    """FLOPs of one step for one image, by network and pass, plus the whole step counted at once as a check.

    codes: "per_layer" (the step as anonymize_batch runs it) or "one_tensor" (one grad-requiring W+ tensor).
    spec: networks other than `profile`'s (e.g. a smaller generator), with `profile`'s parameters."""
    compose = CODE_LAYOUTS[codes]
    batch = 1
    nets = build_networks(spec or profile, device="cpu", weights="seeded")
    for net in (nets.generator, nets.identity, nets.farl):
        net.to(device)
    params = load_params(profile).optimization
    g, start, stop = nets.generator, params.layer_start, params.layer_stop
    gen = torch.Generator().manual_seed(0)
    w_real = torch.randn(batch, g.num_ws, g.config.w_dim, generator=gen).to(device)  # [B, num_ws, w_dim]
    w_fake = torch.randn(batch, g.num_ws, g.config.w_dim, generator=gen).to(device)
    with torch.no_grad():
        real = g.synthesis(w_real)
        real_identity = nets.identity(real)
        real_tokens = nets.farl(real)[1]
    trainable = w_fake[:, start:stop].clone().requires_grad_(True)  # the only leaf with a gradient

    c = Counter()
    with c.count("generator", "forward"):
        images = g.synthesis(compose(w_real, trainable, start, stop))
    x = images.detach().requires_grad_(True)  # cut here so each network's backward is counted alone
    with c.count("arcface", "forward"):
        id_term = params.lambda_id * identity_loss(nets.identity(x), real_identity, params.margin)
    with c.count("farl", "forward"):
        attr_term = params.lambda_attr * attribute_loss(nets.farl(x)[1], real_tokens)
    with c.count("arcface", "backward"):
        (grad_id,) = torch.autograd.grad(id_term.sum(), x)
    with c.count("farl", "backward"):
        (grad_attr,) = torch.autograd.grad(attr_term.sum(), x)
    with c.count("generator", "backward"):
        images.backward(grad_id + grad_attr)
    assert trainable.grad is not None and trainable.grad.shape == (batch, stop - start, g.config.w_dim)

    # Cross-check: the step as anonymize_batch writes it, counted whole.
    trainable.grad = None
    with c.count("whole step", "forward+backward"):
        images = g.synthesis(compose(w_real, trainable, start, stop))
        per_image = params.lambda_id * identity_loss(nets.identity(images), real_identity, params.margin)
        per_image = per_image + params.lambda_attr * attribute_loss(nets.farl(images)[1], real_tokens)
        per_image.sum().backward()

    per_image_flops = {
        net: {d: c.totals[net, d] / batch for d in ("forward", "backward")} for net in NETWORKS
    }  # fmt: skip
    for row in per_image_flops.values():
        row["total"] = row["forward"] + row["backward"]
    total = sum(row["total"] for row in per_image_flops.values())
    whole = c.totals["whole step", "forward+backward"] / batch
    return {
        "profile": profile,
        "resolution": g.config.resolution,
        "trainable_layers": [start, stop],
        "steps": params.steps,
        "batch": batch,
        "device": device,
        "codes": codes,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "counted_ops": "matmul / conv / attention via torch.utils.flop_counter.FlopCounterMode; 2 FLOPs per MAC",
        "flops_per_image": per_image_flops,
        "step_total_per_image": total,
        "whole_step_counted_together_per_image": whole,
        "optimization_total_per_image": total * params.steps,
        "by_op": {f"{net}/{d}": ops for (net, d), ops in c.by_op.items()},
    }


def print_table(result: dict) -> None:
    rows = result["flops_per_image"]
    total = result["step_total_per_image"]
    print(f"FLOPs of one optimization step per image, profile {result['profile']} "
          f"({result['resolution']} px, W+ layers {result['trainable_layers'][0]}..{result['trainable_layers'][1] - 1} "
          f"trainable), device {result['device']}")
    print(f"{'network':<10} {'forward GFLOP':>14} {'backward GFLOP':>15} {'total GFLOP':>12} {'share':>7}")
    for net, row in rows.items():
        print(f"{net:<10} {row['forward'] / 1e9:>14.1f} {row['backward'] / 1e9:>15.1f} {row['total'] / 1e9:>12.1f} "
              f"{row['total'] / total:>7.1%}")
    fwd = sum(r["forward"] for r in rows.values())
    bwd = sum(r["backward"] for r in rows.values())
    print(f"{'step':<10} {fwd / 1e9:>14.1f} {bwd / 1e9:>15.1f} {total / 1e9:>12.1f} {1:>7.0%}")
    print(f"whole step counted in one pass: {result['whole_step_counted_together_per_image'] / 1e9:.1f} GFLOP; "
          f"{result['steps']} steps: {result['optimization_total_per_image'] / 1e12:.2f} TFLOP per image")


def print_saving(result: dict, before: dict) -> None:
    old, new = before["step_total_per_image"], result["step_total_per_image"]
    gen_old, gen_new = (r["flops_per_image"]["generator"]["backward"] for r in (before, result))
    print(f"before (one W+ tensor requiring grad): {old / 1e9:.1f} GFLOP per image-step, generator backward "
          f"{gen_old / 1e9:.1f}; now (per-layer codes): {new / 1e9:.1f}, generator backward {gen_new / 1e9:.1f} "
          f"({old / new:.2f}x fewer FLOPs per step)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ffhq1024")
    ap.add_argument("--device", default="meta", help="meta (shapes only, fast) or cpu / cuda (real arithmetic)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("flops.json"))
    args = ap.parse_args()
    result = count_step(args.profile, args.device)
    before = count_step(args.profile, args.device, codes="one_tensor")
    result["before_per_layer_codes"] = {
        key: before[key] for key in ("flops_per_image", "step_total_per_image", "optimization_total_per_image")
    }
    print_table(result)
    print_saving(result, before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
