"""Speed of FALCO's latent optimization on one GPU, official-style loop vs. our batched fp32 / bf16 / compiled step.

One run, no arguments needed, under 5 minutes on an H100: seeded `ffhq1024` networks (the paper's architectures;
speed does not depend on the weights), real images generated from seeded codes, and the same step code
(`anon_core.optimize.anonymize_batch`) in every configuration:

  a   official-style loop: one image at a time (batch 1), float32, default memory format
  b   batched float32: batch B (default: `batch_size: auto` for float32, so every configuration fits), with
      channels-last identity network on CUDA
  c_grouped  c with the generator's modulated convolutions run as per-sample conv groups (the only path before
      the batched one; isolates what it brings)
  c   batched bf16 autocast (codes and Adam state float32), channels-last
  c'  the defaults' forms (as d) + torch.compile of the step (inductor on CUDA; aot_eager on a CPU, where inductor
      takes many minutes)
  c_channels_last  c with the generator's feature maps channels-last as well
  c_polyphase  c_channels_last (the defaults' settings: bf16, channels-last) with the generator's batched
      up-sampling convs run as 4 polyphase stride-1 convs + pixel shuffle instead of a 6 x 6 stride-2 transposed conv
      (`set_upsample_form`); the default stays "transposed" (an H200 measured polyphase 0.88x)
  c_matmul_resize  c_channels_last with the identity and attribute networks' input resize run as two matrix
      products (`set_resize_form(..., "matmul")`, equal to the reference ops) instead of PyTorch's antialiased
      bicubic / adaptive pooling kernels (the default on CUDA, `resize_form: auto`, since an H200 measured 1.06x)
  c_compiled_blocks  c_channels_last (or c) with regional compilation: each repeated block of the three networks
      (styled convs, ToRGBs, FaRL's attention blocks, ArcFace's units) through torch.compile (`compile_blocks_`),
      the rest eager; its first step shows what compiling costs against c''s
  d   the defaults: c at the batch they pick (`batch_size: auto` measured under bf16) with params.yaml's up-sampling
      and resize forms, what a pipeline run gets (c' and d take the generator layout of whichever of c /
      c_channels_last was faster)

Each configuration runs `--warmup` untimed steps, then `--steps` timed ones (torch.cuda.synchronize after every
step; the first step, which includes compilation, is reported separately). Reported per configuration: seconds
per step, image-steps/s, images/s for a whole optimization (params' 50 steps), peak GPU memory
(torch.cuda.max_memory_allocated), achieved TFLOP/s = GFLOP per image-step (bench/flops.json, counted by
bench/flops.py) x images x steps / time, and its share of the GPU's dense bf16 peak (for fp32 runs too, so the
shares compare). Also the bf16-vs-fp32 difference of the final losses (b vs c: same weights, images and steps)
and the speed of the identity network alone with and without channels-last. On CUDA, the GPU kernels of two steps
of c are profiled (torch.profiler): the slowest kernels and their share of the GPU time. Last, one batch (d's) runs
the whole optimization as the pipeline does (`whole_optimization`: every step, from uint8 images to codes).

Writes bench/gpu_anonymize.json after every configuration (a run cut short keeps what it measured) and prints
the ratios. A time budget (`--budget-s`) skips what would not fit; compilation is interrupted when it runs out.

    .venv/bin/python bench/gpu_anonymize.py                       # on a GPU machine
    PYTHONPATH=. python3 bench/gpu_anonymize.py                   # where the image's python3 holds CUDA torch
    .venv/bin/python bench/gpu_anonymize.py --profile tiny        # the CPU check of the same code path
    .venv/bin/python bench/gpu_anonymize.py --device cpu --resolution 256 --batch-size 2 --warmup 1 --steps 1 \\
        --loop-images 1 --out /tmp/check.json                      # ffhq networks with a 256 px generator, on CPU
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/flops.py, the FLOP counter

from anon_core.acceleration import (  # noqa: E402
    accelerate_networks_,
    autocast,
    channels_last_,
    compile_blocks_,
    set_memory_format_,
)
from anon_core.batch_size import resolve_batch_size  # noqa: E402
from anon_core.fake_pool import broadcast_ws, sample_fake_pool  # noqa: E402
from anon_core.networks.forms import resolve_resize_form  # noqa: E402
from anon_core.networks.resample import set_resize_form  # noqa: E402
from anon_core.networks.stylegan2 import set_modulated_conv_form, set_upsample_form  # noqa: E402
from anon_core.prefetch import batch_slices  # noqa: E402
from anon_core.optimize import LOSS_NAMES, anonymize_batch  # noqa: E402
from anon_core.params import load_params  # noqa: E402
from anon_core.profiles import get_profile, build_networks  # noqa: E402

FLOPS_JSON = Path(__file__).with_name("flops.json")
# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, without sparsity), by device-name substrings.
BF16_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H200",), 989.0),
    (("H100", "PCIe"), 756.0),
    (("H100", "HBM3"), 989.0),  # "NVIDIA H100 80GB HBM3" is the SXM board
    (("H100", "SXM"), 989.0),
    (("A100",), 312.0),
)
BF16_RELATIVE_TOLERANCE = 0.08  # the stated bf16-vs-fp32 tolerance of tests/test_mixed_precision.py


class OutOfBudget(Exception):
    """Raised by the alarm when the time budget runs out (torch.compile may wrap it in its own error)."""


def bf16_peak_tflops(device: torch.device) -> tuple[str, float | None]:
    """The device's name and its dense bf16 peak (None when the name is not in the table, e.g. a CPU)."""
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    for parts, peak in BF16_PEAK_TFLOPS:
        if all(p in name for p in parts):
            return name, peak
    return name, None


def step_gflop(profile: str, spec) -> tuple[float, str]:
    """GFLOP per image per optimization step: bench/flops.json when it counts these networks, else counted now."""
    if FLOPS_JSON.is_file():
        record = json.loads(FLOPS_JSON.read_text())
        if record.get("profile") == profile and record.get("resolution") == spec.generator.resolution:
            return record["step_total_per_image"] / 1e9, str(FLOPS_JSON.name)
    from flops import count_step

    return count_step(profile, "meta", spec=spec)["step_total_per_image"] / 1e9, "bench/flops.py count_step (meta)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(nets, images, w_real, w_fake, params, warmup: int, amp_dtype, compile_backend) -> dict:
    """One anonymize_batch call of warmup + timed steps; times every step's end (after a device sync)."""
    device = nets.device
    ends: list[float] = []

    def on_step(step: int, losses: dict[str, float]) -> None:
        synchronize(device)
        ends.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    result = anonymize_batch(nets.generator, nets.identity, nets.farl, images, w_real, w_fake, params,
                             amp_dtype=amp_dtype, compile_backend=compile_backend, on_step=on_step,
                             return_images=False)
    timed = len(ends) - warmup
    return {
        "batch": len(images),
        "s_per_step": (ends[-1] - ends[warmup - 1]) / timed,
        "first_step_s": ends[0] - start,  # real images' embeddings + the first step (+ compilation)
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "final_losses": {name: float(result.history[name][-1].sum()) for name in LOSS_NAMES},
    }


def kernel_profile(run_steps, top: int = 15) -> dict:
    """The GPU kernels of `run_steps()`: total GPU time and the `top` kernels by their own GPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_steps()
        torch.cuda.synchronize()

    def own_us(event) -> float:
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)

    events = [e for e in prof.key_averages() if own_us(e) > 0]
    total = sum(own_us(e) for e in events)
    rows = sorted(events, key=own_us, reverse=True)[:top]
    return {"gpu_ms": total / 1e3,
            "kernels": [{"name": e.key[:160], "calls": e.count, "ms": own_us(e) / 1e3, "share": own_us(e) / total}
                        for e in rows]}


def whole_optimization(nets, profile: str, images: torch.Tensor, w_real: torch.Tensor, w_fake: torch.Tensor) -> dict:
    """What the `anonymized_latents` asset runs, with the profile's params unchanged (all optimization steps,
    autocast, channels-last, no compile) on one batch: `stages.optimize_images` from uint8 images to codes, timed
    like a shard (`measure_throughput`)."""
    from anon_core.acceleration import measure_throughput
    from anon_core.data.image_io import to_uint8
    from anon_core.stages import optimize_images

    params = load_params(profile, batch_size=len(images))
    uint8 = to_uint8(images.float())
    with measure_throughput(nets.device) as took:
        optimize_images(nets, params, uint8, w_real.cpu().numpy(), w_fake.cpu().numpy(), keep_images=False)
    return {"images": len(images), "steps": params.optimization.steps, "amp": params.speed.amp,
            "channels_last": params.speed.channels_last} | took.metrics(len(images), params.optimization.steps)


def summarize(run: dict, gflop: float, peak_tflops: float | None, steps_per_image: int) -> dict:
    image_steps_per_s = run["batch"] / run["s_per_step"]
    tflops = gflop * image_steps_per_s / 1e3
    return run | {
        "image_steps_per_s": image_steps_per_s,
        "images_per_s": image_steps_per_s / steps_per_image,  # whole optimizations of `steps_per_image` steps
        "achieved_tflops": tflops,
        "share_of_bf16_peak": tflops / peak_tflops if peak_tflops else None,
    }


def host_cpu() -> str:
    """The host CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compile_break_even(compiled: dict, eager: dict, steps_per_image: int) -> dict:
    """Images a process must optimize (params' steps each) before compiling has paid for itself: the compilation
    (the compiled configuration's first step less one ordinary step) over the time each image saves. A pipeline
    compiles once per partition run (one process per shard; inductor's on-disk cache may make later ones cheaper)."""
    overhead_s = compiled["first_step_s"] - compiled["s_per_step"]
    saved_s = steps_per_image * (1 / eager["image_steps_per_s"] - 1 / compiled["image_steps_per_s"])
    return {"compile_overhead_s": overhead_s, "saved_s_per_image": saved_s,
            "break_even_images": overhead_s / saved_s if saved_s > 0 else None}


def identity_channels_last(nets, images: torch.Tensor, amp_dtype, repeats: int = 5) -> dict:
    """Forward + input-gradient of the identity network alone, default vs channels-last memory format."""
    out = {}
    default = copy.deepcopy(nets.identity).to(memory_format=torch.contiguous_format)
    for name, net in (("default", default), ("channels_last", channels_last_(copy.deepcopy(default)))):
        times = []
        for _ in range(repeats + 1):
            x = images.detach().clone().requires_grad_(True)
            synchronize(nets.device)
            start = time.perf_counter()
            with autocast(nets.device, amp_dtype):
                net(x).float().sum().backward()
            synchronize(nets.device)
            times.append(time.perf_counter() - start)
        out[f"{name}_s"] = float(np.median(times[1:]))  # the first call picks kernels
        del net
    out["speedup"] = out["default_s"] / out["channels_last_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ffhq1024")
    ap.add_argument("--resolution", type=int, default=None, help="shrink the profile's generator (a CPU check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", default="auto", help="N or auto (float32 fit on CUDA; params' CPU default)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    ap.add_argument("--loop-images", type=int, default=2, help="images run one by one in configuration a")
    ap.add_argument("--compile", choices=("auto", "inductor", "aot_eager", "off"), default="auto",
                    help="backend of c' (auto: inductor on CUDA, aot_eager on a CPU)")
    ap.add_argument("--blocks-mode", default=None,
                    help="torch.compile mode of c_compiled_blocks (e.g. max-autotune-no-cudagraphs; default: none)")
    ap.add_argument("--only", nargs="+", metavar="CONFIG", help="run only these configurations (e.g. a)")
    ap.add_argument("--budget-s", type=float, default=280.0, help="skip or stop what would run past this")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("gpu_anonymize.json"))
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be >= 1 (the first step includes one-off work)")
    t0 = time.perf_counter()
    device = torch.device(args.device)

    spec = get_profile(args.profile)
    if args.resolution:
        spec = dataclasses.replace(spec, name=f"{spec.name}@{args.resolution}",
                                   generator=dataclasses.replace(spec.generator, resolution=args.resolution))
    nets = build_networks(spec, device=device, weights="seeded")
    g = nets.generator
    params = load_params(args.profile, **{"optimization.steps": args.warmup + args.steps, "speed.amp": "off"})
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    batch = resolve_batch_size(nets, params.replace(batch_size=batch))  # auto: measured at float32, fits all
    # the batch that the defaults (amp auto = bf16 on CUDA) pick, for configuration d
    bf16_batch = resolve_batch_size(nets, load_params(args.profile, batch_size="auto", **{"speed.amp": "bf16"})) \
        if args.batch_size == "auto" else None
    n = max(batch, bf16_batch or 0, args.loop_images, 4)  # a_batch4 takes 4
    w_real = broadcast_ws(torch.from_numpy(sample_fake_pool(g, n, 1000, 0.7, device=device).w), g.num_ws).to(device)
    w_fake = torch.from_numpy(sample_fake_pool(g, n, 2000, 0.7, device=device).w).to(device)
    with torch.no_grad():
        images = torch.cat([g.synthesis(w_real[p]) for p in batch_slices(n, 4)])  # [n, 3, R, R]

    gflop, gflop_source = step_gflop(args.profile, spec)
    device_name, peak = bf16_peak_tflops(device)
    compile_backend = {"auto": "inductor" if device.type == "cuda" else "aot_eager", "off": None}.get(
        args.compile, args.compile)
    opt = params.optimization
    record = {
        "device": device_name,
        "device_type": device.type,
        "bf16_dense_peak_tflops": peak,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,  # float32 convolutions may use TF32 tensor cores
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cpu_threads": torch.get_num_threads(),
        "host_cpu": host_cpu(),  # the batch-1 loop is launch-bound (a_batch4): its speed follows the host CPU
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "profile": spec.name,
        "resolution": g.config.resolution,
        "batch_size": batch,
        "batch_size_rule": args.batch_size,
        "bf16_auto_batch_size": bf16_batch,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "loop_images": args.loop_images,
        "steps_per_optimization": load_params(args.profile).optimization.steps,
        "gflop_per_image_step": gflop,
        "gflop_source": gflop_source,
        "configurations": {},
    }
    steps_per_image = record["steps_per_optimization"]

    def save() -> None:
        record["wall_s"] = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")

    budget_hit = []

    def run(name: str, description: str, fn, may_fail: bool = False) -> None:
        elapsed = time.perf_counter() - t0
        entry = {"what": description}
        if args.only and name not in args.only:
            return
        if elapsed > args.budget_s:
            entry["skipped"] = f"time budget of {args.budget_s:.0f} s spent ({elapsed:.0f} s elapsed)"
        else:
            try:
                entry |= summarize(fn(), gflop, peak, steps_per_image)
            except torch.cuda.OutOfMemoryError as err:
                entry["error"] = f"out of GPU memory: {str(err).splitlines()[0]}"
                torch.cuda.empty_cache()
            except Exception as err:  # c' only: a compiler failure is a result to report, not a reason to stop
                if budget_hit:
                    entry["skipped"] = f"interrupted at the time budget of {args.budget_s:.0f} s"
                elif may_fail:
                    entry["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:500]}"
                else:
                    raise
        record["configurations"][name] = entry
        save()
        print(f"{name}: {json.dumps({k: v for k, v in entry.items() if k != 'final_losses'})}", flush=True)

    def loop_a() -> dict:
        runs = [timed_run(nets, images[i : i + 1], w_real[i : i + 1], w_fake[i : i + 1], opt, args.warmup, None, None)
                for i in range(args.loop_images)]
        return runs[0] | {"s_per_step": float(np.mean([r["s_per_step"] for r in runs])),
                          "peak_memory_gib": runs[0]["peak_memory_gib"]}

    def batched(amp_dtype, backend=None, size=None, fused=None, generator_channels_last=False, up_form="transposed",
                resize_form="interpolate", blocks_backend=None):
        size = size or batch

        def timed() -> dict:
            for net in (g, nets.identity, nets.farl):
                compile_blocks_(net, blocks_backend, args.blocks_mode)
            set_modulated_conv_form(g, fused)
            set_upsample_form(g, up_form)
            set_resize_form(nets.identity, resize_form)
            set_resize_form(nets.farl, resize_form)
            if generator_channels_last:
                channels_last_(g)
            try:
                return timed_run(nets, images[:size], w_real[:size], w_fake[:size], opt, args.warmup, amp_dtype,
                                 backend)
            finally:
                set_modulated_conv_form(g, None)
                set_upsample_form(g, "transposed")
                set_resize_form(nets.identity, "interpolate")
                set_resize_form(nets.farl, "interpolate")
                set_memory_format_(g, torch.contiguous_format)
                for net in (g, nets.identity, nets.farl):
                    compile_blocks_(net, None)

        return timed

    run("a", "official-style loop: batch 1, float32", loop_a)
    # the loop's kernels (per-sample grouped convs) at 4x the work: a step barely slower than a's means a's time is
    # kernel launches and Python, i.e. the host CPU, not the GPU (what separated a's 0.040 from 0.057 s/step)
    run("a_batch4", "a's kernels at batch 4: per-sample grouped convs, float32", batched(None, size=4, fused=True))
    loop = {name: record["configurations"].get(name, {}).get("s_per_step") for name in ("a", "a_batch4")}
    if None not in loop.values():
        ratio = loop["a_batch4"] / loop["a"]
        record["loop_launch_bound"] = {"step_time_batch4_over_batch1": ratio, "launch_bound": ratio < 2.0}
    accelerate_networks_(nets, dataclasses.replace(params.speed, channels_last=True))  # channels-last identity net
    set_memory_format_(g, torch.contiguous_format)  # the generator's layout is each configuration's own
    run("b", f"batched float32, batch {batch}", batched(None))
    run("c_grouped", f"c with per-sample grouped modulated convolutions, batch {batch}",
        batched(torch.bfloat16, fused=True))
    run("c", f"batched bf16 autocast, batch {batch}", batched(torch.bfloat16))
    run("c_channels_last", f"c with the generator channels-last too, batch {batch}",
        batched(torch.bfloat16, generator_channels_last=True))
    run("c_polyphase", f"c_channels_last with polyphase up-sampling convs (phase convs + pixel shuffle), batch {batch}",
        batched(torch.bfloat16, generator_channels_last=True, up_form="polyphase"))
    run("c_matmul_resize", f"c_channels_last with the networks' input resize as matrix products, batch {batch}",
        batched(torch.bfloat16, generator_channels_last=True, resize_form="matmul"))
    configs = record["configurations"]
    # d and c' run the faster generator layout of c / c_channels_last
    generator_cl = (configs.get("c_channels_last", {}).get("image_steps_per_s", 0)
                    > configs.get("c", {}).get("image_steps_per_s", 0))
    extras = not args.only  # the whole optimization, the kernel profile and the identity network's layouts
    record["generator_channels_last_in_c_compiled_and_d"] = generator_cl
    # d and c' take the defaults' forms (params.yaml's speed: section, "auto" resolved for this device)
    forms = {"up_form": params.speed.upsample_form,
             "resize_form": resolve_resize_form(params.speed.resize_form, device.type)}
    record["default_forms"] = forms
    if bf16_batch:
        run("d", f"the defaults: c at their batch (auto under bf16), {forms['up_form']} up-sampling, "
            f"{forms['resize_form']} resize, batch {bf16_batch}",
            batched(torch.bfloat16, size=bf16_batch, generator_channels_last=generator_cl, **forms))
    if extras and bf16_batch and time.perf_counter() - t0 < args.budget_s:
        record["whole_optimization"] = whole_optimization(nets, args.profile, images[:bf16_batch],
                                                          w_real[:bf16_batch], w_fake[:bf16_batch])
        set_memory_format_(g, torch.contiguous_format)  # speed.channels_last made it channels-last on CUDA
        save()
        print(f"whole_optimization: {json.dumps(record['whole_optimization'])}", flush=True)
    if extras and device.type == "cuda" and time.perf_counter() - t0 < args.budget_s:
        two_steps = dataclasses.replace(opt, steps=2)
        if generator_cl:
            channels_last_(g)
        try:
            record["kernels_of_c"] = kernel_profile(lambda: anonymize_batch(
                g, nets.identity, nets.farl, images[:batch], w_real[:batch], w_fake[:batch], two_steps,
                amp_dtype=torch.bfloat16, return_images=False))
        except Exception as err:  # the profile explains the numbers; its failure must not lose them
            record["kernels_of_c"] = {"error": f"{type(err).__name__}: {err}"[:500]}
        set_memory_format_(g, torch.contiguous_format)
        save()
    if compile_backend:
        def on_alarm(signum, frame):
            budget_hit.append(True)
            raise OutOfBudget

        remaining = int(args.budget_s - (time.perf_counter() - t0))
        if remaining > 0:
            signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(remaining)
        try:
            # the whole step first: whether `speed.compile` should be a default is the question this answers
            run("c_compiled", f"the defaults' forms + torch.compile ({compile_backend}), batch {batch}",
                batched(torch.bfloat16, compile_backend, generator_channels_last=generator_cl, **forms),
                may_fail=True)
            run("c_compiled_blocks", f"c with the networks' repeated blocks compiled ({compile_backend}), "
                f"batch {batch}",
                batched(torch.bfloat16, generator_channels_last=generator_cl, blocks_backend=compile_backend),
                may_fail=True)
        finally:
            signal.alarm(0)

    configs = record["configurations"]
    b, c = configs.get("b", {}), configs.get("c", {})
    if "final_losses" in b and "final_losses" in c:
        diffs = {k: abs(c["final_losses"][k] - b["final_losses"][k]) / max(abs(b["final_losses"][k]), 1e-12)
                 for k in LOSS_NAMES}
        record["bf16_vs_fp32"] = {
            "steps": args.warmup + args.steps,
            "relative_difference_of_final_losses": diffs,
            "tolerance": BF16_RELATIVE_TOLERANCE,
            "within_tolerance": all(d <= BF16_RELATIVE_TOLERANCE for d in diffs.values()),
        }
    if extras and time.perf_counter() - t0 < args.budget_s:
        record["identity_network_channels_last"] = identity_channels_last(nets, images[:batch], torch.bfloat16)
    speed = {k: v["image_steps_per_s"] for k, v in configs.items() if "image_steps_per_s" in v}
    pairs = (("a_batch4", "a"), ("b", "a"), ("c", "a"), ("c", "b"), ("c", "c_grouped"), ("c_compiled", "c"),
             ("c_compiled", "a"), ("c_channels_last", "c"), ("c_polyphase", "c_channels_last"),
             ("c_matmul_resize", "c_channels_last"), ("c_compiled_blocks", "c"),
             ("c_compiled_blocks", "c_channels_last"), ("d", "c"), ("d", "a"))
    record["ratios"] = {f"{x}/{y}": speed[x] / speed[y] for x, y in pairs if x in speed and y in speed}
    eager = "c_channels_last" if generator_cl else "c"
    record["compile_break_even"] = {name: compile_break_even(configs[name], configs[eager], steps_per_image)
                                    for name in ("c_compiled", "c_compiled_blocks")
                                    if "image_steps_per_s" in configs.get(name, {}) and eager in speed}
    save()

    print(f"\n{device_name} ({device.type}), profile {spec.name}, batch {batch}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, {gflop:.1f} GFLOP per image-step ({gflop_source})")
    print(f"{'config':<16} {'s/step':>8} {'img-steps/s':>12} {'img/s@' + str(steps_per_image):>9} {'TFLOP/s':>8} "
          f"{'bf16 peak':>9} {'peak GiB':>9} {'1st step s':>10}")
    for name, entry in configs.items():
        if "s_per_step" not in entry:
            print(f"{name:<16} {entry.get('skipped') or entry.get('error')}")
            continue
        share = f"{entry['share_of_bf16_peak']:.1%}" if entry["share_of_bf16_peak"] is not None else "n/a"
        mem = f"{entry['peak_memory_gib']:.2f}" if entry["peak_memory_gib"] is not None else "n/a"
        print(f"{name:<16} {entry['s_per_step']:>8.3f} {entry['image_steps_per_s']:>12.2f} {entry['images_per_s']:>9.3f} "
              f"{entry['achieved_tflops']:>8.2f} {share:>9} {mem:>9} {entry['first_step_s']:>10.1f}")
    print("ratios (image-steps/s): " + ", ".join(f"{k} {v:.2f}x" for k, v in record["ratios"].items()))
    if "bf16_vs_fp32" in record:
        d = record["bf16_vs_fp32"]
        print("bf16 vs fp32 final losses: " + ", ".join(f"{k} {v:.2%}" for k, v in
              d["relative_difference_of_final_losses"].items()) + f" (tolerance {d['tolerance']:.0%})")
    for name, even in record.get("compile_break_even", {}).items():
        images = f"{even['break_even_images']:.0f} images" if even["break_even_images"] else "never (no gain)"
        print(f"{name}: compiling costs {even['compile_overhead_s']:.1f} s, saves {even['saved_s_per_image']:.4f} s "
              f"per image: pays after {images} per process (a shard is params' pipeline.shard_size)")
    if "identity_network_channels_last" in record:
        print(f"identity network fwd+bwd, channels-last vs default: "
              f"{record['identity_network_channels_last']['speedup']:.2f}x")
    if "kernels" in record.get("kernels_of_c", {}):
        print(f"GPU kernels of 2 steps of c ({record['kernels_of_c']['gpu_ms']:.0f} ms GPU time), slowest first:")
        for k in record["kernels_of_c"]["kernels"]:
            print(f"  {k['share']:6.1%} {k['ms']:9.1f} ms {k['calls']:6d}x  {k['name'][:110]}")
    print(f"wrote {args.out} ({record['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
