"""How the networks run on a device, without changing what the method computes: the autocast dtype of mixed
precision, the channels-last memory format of convolutional networks and the compilation of their repeated blocks.

Mixed precision keeps the W+ codes and Adam's state in float32 ("master" copies) and runs the frozen networks
under `torch.autocast`; `tests/test_mixed_precision.py` bounds how far the final losses move. Channels-last
stores 4-D activations as [N, H, W, C], the layout in which cuDNN's tensor-core convolution kernels run without
transposes; on the CPU it changes the kernels but not the results (beyond float rounding).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from anon_core.networks.arcface import BottleneckIRSE
from anon_core.networks.farl import ResidualAttentionBlock
from anon_core.networks.forms import resolve_resize_form
from anon_core.networks.resample import set_resize_form
from anon_core.networks.stylegan2 import StyledConv, ToRGB, set_upsample_form
from anon_core.params import AMP_MODES, SpeedParams


CUDA_ALLOCATOR_CONFIG = "expandable_segments:True"


def prefer_expandable_cuda_memory() -> None:
    """Let PyTorch's CUDA allocator grow its segments in place (PYTORCH_CUDA_ALLOC_CONF), unless the user configured
    the allocator (that variable, or PYTORCH_ALLOC_CONF, its newer name) or CUDA has started (the allocator reads
    it once). Optimization steps at 1024 px allocate GiB-sized activations of changing sizes; with fixed segments
    an H100 had 15 GiB reserved but unusable when a float32 step ran out of memory."""
    # PyTorch's CUDA allocator reads PYTORCH_CUDA_ALLOC_CONF before PYTORCH_ALLOC_CONF: setting the old name would
    # hide the user's CUDA options (e.g. backend:cudaMallocAsync) given under the new one
    user_set = any(name in os.environ for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"))
    if not user_set and not torch.cuda.is_initialized():
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = CUDA_ALLOCATOR_CONFIG


def resolve_amp(mode: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of `speed.amp` on `device`: torch.bfloat16 or None (float32 throughout)."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp = {mode!r} must be one of {AMP_MODES}")
    if mode == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else None
    return torch.bfloat16 if mode == "bf16" else None


def resolved_for(nets, params):
    """`params` with the settings that `auto` leaves to the device written as what they are there: `batch_size`
    (measured), `speed.amp` (bf16 or off) and `speed.resize_form`. A run records and keys these, so `auto` and the
    setting it means share a journal (they compute the same)."""
    from anon_core.batch_size import resolve_batch_size

    amp = "bf16" if resolve_amp(params.speed.amp, nets.device) is not None else "off"
    return params.replace(batch_size=resolve_batch_size(nets, params), **{
        "speed.amp": amp, "speed.resize_form": resolve_resize_form(params.speed.resize_form, nets.device.type)})


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """`torch.autocast` with `dtype` on `device`'s type, or nothing when dtype is None."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def set_memory_format_(module: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Store `module`'s 4-D parameters and buffers in `memory_format`, in place; returns it. Other ranks stay as
    they are (`module.to(memory_format=...)` refuses the generator's 5-D modulated-conv weights)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.ndim == 4:
            tensor.data = tensor.data.contiguous(memory_format=memory_format)
    return module


def channels_last_(module: nn.Module) -> nn.Module:
    """Store `module`'s 4-D parameters and buffers channels-last, in place; returns it.

    Convolutions then produce channels-last outputs whatever the input's layout (PyTorch follows the weight's
    memory format), so the whole convolutional trunk runs in that layout. In the generator, the channels-last
    constant input carries the layout through the batched modulated convolutions.
    """
    return set_memory_format_(module, torch.channels_last)


def convolutional_networks(nets) -> list[nn.Module]:
    """The networks of a `profiles.Networks` that channels-last can speed up: the generator (its batched modulated
    convolutions; 1.10x per optimization step on an H100, bench/RESULTS.md), the identity network (an IR-SE or
    ResNet trunk) and the e4e encoder when there is one. FaRL has one patch convolution, so it is left as it is."""
    modules = [nets.generator, nets.identity]
    e4e = nets.extra.get("e4e")
    if isinstance(getattr(e4e, "encoder", None), nn.Module):
        modules.append(e4e.encoder)
    return [m for m in modules if isinstance(m, nn.Module)]


def accelerate_networks_(nets, speed: SpeedParams) -> None:
    """Apply `speed` to `nets` in place (idempotent): channels-last convolutional networks when asked and the device
    is CUDA (where it helps), the generator's up-sampling form and the identity and attribute networks' resize form,
    and regional compilation of their blocks when asked and the whole step is not compiled."""
    if speed.channels_last and nets.device.type == "cuda":
        for module in convolutional_networks(nets):
            channels_last_(module)
    set_upsample_form(nets.generator, speed.upsample_form)
    for net in (nets.identity, nets.farl):
        set_resize_form(net, resolve_resize_form(speed.resize_form, nets.device.type))
    backend = "inductor" if speed.compile_blocks and not speed.compile else None
    for net in (nets.generator, nets.identity, nets.farl):
        compile_blocks_(net, backend)


# The blocks that the three networks repeat: the generator's styled convs and ToRGB layers, FaRL's attention blocks,
# ArcFace's bottleneck units. Their element-wise work (modulation, demodulation, noise, bias, activations, norms) is
# what a compiler fuses into few kernels; the convolutions and matrix products stay library calls.
REPEATED_BLOCKS: tuple[type[nn.Module], ...] = (StyledConv, ToRGB, ResidualAttentionBlock, BottleneckIRSE)
# Graphs one block type may need: a styled conv alone varies in input dtype (the float32 constant input vs bf16
# feature maps), in which of its input and code take gradients (layers before, at and after the trainable ones),
# up-sampling or not, and grad mode (the final synthesis): about 20 of torch.compile's default 8 (past which it
# silently runs the block eagerly).
BLOCK_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=None)
def _compiled_forward(block_type: type[nn.Module], backend: str, mode: str | None) -> Callable:
    """One torch.compile of `block_type.forward` per backend and mode, shared by every block of the type (taken as
    its first argument): blocks of equal shapes reuse one graph, and sizes that vary become dynamic after a
    recompilation."""
    return torch.compile(block_type.forward, backend=backend, mode=mode)


def compile_blocks_(module: nn.Module, backend: str | None = "inductor", mode: str | None = None) -> int:
    """Regional compilation: run every REPEATED_BLOCKS block in `module` through torch.compile with `backend` (and
    inductor's `mode`, e.g. "max-autotune-no-cudagraphs" to let it pick Triton convolution templates with the
    element-wise work fused into them), or eagerly again with None. In place; returns the number of blocks.

    It compiles the graphs of a few small block types instead of the whole step (`speed.compile`) and fuses the
    blocks' element-wise work, not the networks' glue nor the losses. Safe to deepcopy: a copy's blocks call the
    copy."""
    blocks = [block for block in module.modules() if isinstance(block, REPEATED_BLOCKS)]
    if backend is not None:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, BLOCK_RECOMPILE_LIMIT)
    for block in blocks:
        vars(block).pop("forward", None)  # back to the class's eager forward
        if backend is not None:
            block.forward = functools.partial(_compiled_forward(type(block), backend, mode), block)
    return len(blocks)


@dataclass
class Throughput:
    """Wall time of a stretch of work on a device (synchronized at both ends) and its peak device memory."""

    seconds: float = 0.0
    peak_memory_gib: float | None = None  # CUDA only: torch.cuda.max_memory_allocated over the stretch

    def metrics(self, images: int, steps: int) -> dict[str, float]:
        """`images` optimized for `steps` steps each: images/s, seconds per image, image-steps/s, peak memory."""
        seconds = max(self.seconds, 1e-9)
        out = {"images_per_second": images / seconds, "seconds_per_image": seconds / max(images, 1),
               "image_steps_per_second": images * steps / seconds, "seconds": self.seconds}
        return out | ({"peak_gpu_memory_gib": self.peak_memory_gib} if self.peak_memory_gib is not None else {})


@contextmanager
def measure_throughput(device: torch.device | str) -> Iterator[Throughput]:
    """Time the body on `device`; CUDA work is synchronized first and last, so queued kernels count."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    record = Throughput()
    start = time.perf_counter()
    yield record
    if cuda:
        torch.cuda.synchronize(device)
        record.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    record.seconds = time.perf_counter() - start
