"""`batch_size: auto`: the largest batch whose optimization step fits in the GPU's free memory.

A step's peak memory above what is already allocated (the networks' weights) grows linearly with the batch: each
image brings its own activations, kept for the backward pass. Two measured steps, at batches 2 and 3 (a batch of
one runs the generator's grouped convolutions, not the batched ones of every larger batch), give that line, peak(b) = fixed + per_image * b; the chosen batch is the largest b whose predicted peak stays within a
fraction of the free memory (the margin covers allocator fragmentation and cuDNN workspaces), capped. Each probe
runs its step twice and measures the second: the first call of a shape also allocates one-off buffers (cuBLAS's
workspace, cuDNN's algorithm search) that made batch 1 look bigger than batch 2 on an H100. The chosen batch then
runs one step for real; if that runs out of memory the batch shrinks until one does. Without a GPU there is no
device memory to measure and `speed.auto_cpu_batch_size` is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from anon_core.acceleration import resolve_amp
from anon_core.errors import FalcoError
from anon_core.fake_pool import broadcast_ws
from anon_core.optimize import anonymize_batch
from anon_core.params import AUTO, FalcoParams

PROBE_BATCHES = (2, 3)
GIB = 2**30


def fit_batch_size(step_peak: Callable[[int], int], free_bytes: int, fraction: float, cap: int) -> int:
    """The largest batch in [1, cap] whose step fits in `fraction` of `free_bytes`, extrapolating linearly from
    `step_peak(b)` (bytes one step needs above what is allocated already) at the PROBE_BATCHES."""
    (b1, b2) = PROBE_BATCHES
    p1, p2 = step_peak(b1), step_peak(b2)
    per_image = max((p2 - p1) / (b2 - b1), 1.0)
    fixed = max(p1 - per_image * b1, 0.0)
    budget = fraction * free_bytes - fixed
    if budget < per_image:
        raise FalcoError(
            f"one image's optimization step needs {(fixed + per_image) / GIB:.2f} GiB of GPU memory but only "
            f"{fraction:.0%} of {free_bytes / GIB:.2f} GiB free may be used; free the GPU or lower the resolution "
            "(profile), or set speed.auto_memory_fraction higher in params.yaml"
        )
    return int(min(cap, budget // per_image))


def cuda_step(nets, params: FalcoParams) -> Callable[[int], None]:
    """A function batch -> None that runs one optimization step of `nets` at that batch (eagerly, with params'
    autocast) on a batch made from the generator's average code."""
    g = nets.generator
    one_step = dataclasses.replace(params.optimization, steps=1)
    amp_dtype = resolve_amp(params.speed.amp, nets.device)

    def run_step(batch: int) -> None:
        w = broadcast_ws(g.w_avg.float().expand(batch, -1), g.num_ws)  # [B, num_ws, w_dim]
        with torch.no_grad():
            images = g.synthesis(w).float()
        anonymize_batch(g, nets.identity, nets.farl, images, w, w[:, 0], one_step, amp_dtype=amp_dtype,
                        return_images=False)

    return run_step


def cuda_step_peak(nets, params: FalcoParams) -> Callable[[int], int]:
    """A function batch -> bytes that one optimization step of `nets` at that batch allocates on the GPU above
    what was allocated before (measured with torch.cuda.max_memory_allocated, eagerly, with params' autocast)."""
    device = nets.device
    run_step = cuda_step(nets, params)

    def peak(batch: int) -> int:
        run_step(batch)  # first call of this shape: one-off allocations, not the step's own memory
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run_step(batch)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    return peak


SHRINK = 0.85  # a chosen batch whose step runs out of memory is retried at this share of its size


def confirm_batch_size(run_step: Callable[[int], object], batch: int) -> int:
    """`batch`, or the largest smaller one (shrinking by SHRINK) whose step runs without running out of GPU
    memory; a FalcoError when not even one image's step does."""
    while True:
        try:
            run_step(batch)
            return batch
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch == 1:
                raise FalcoError("one image's optimization step does not fit in the GPU's free memory; free the "
                                 "GPU or lower the resolution (profile)") from None
            batch = max(1, min(batch - 1, int(batch * SHRINK)))


def resolve_batch_size(nets, params: FalcoParams) -> int:
    """params.batch_size, with "auto" replaced by the largest batch that fits the GPU (CPU: auto_cpu_batch_size)."""
    if params.batch_size != AUTO:
        return int(params.batch_size)
    speed = params.speed
    if nets.device.type != "cuda":
        return speed.auto_cpu_batch_size
    run_step, step_peak = cuda_step(nets, params), cuda_step_peak(nets, params)
    try:
        peaks = {b: step_peak(b) for b in PROBE_BATCHES}  # measured before reading the free memory they leave
    except torch.cuda.OutOfMemoryError:  # a small GPU: the largest batch below the probes that runs
        torch.cuda.empty_cache()
        return confirm_batch_size(run_step, PROBE_BATCHES[0] - 1)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(nets.device)
    chosen = fit_batch_size(peaks.__getitem__, free, speed.auto_memory_fraction, speed.auto_max_batch_size)
    return confirm_batch_size(run_step, chosen)  # one step, not a measured pair
