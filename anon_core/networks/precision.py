"""Ops that must stay in float32 (or float64) whatever autocast the caller runs under."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["without_autocast"]


def without_autocast(device_type: str) -> AbstractContextManager:
    """Autocast off for a few float32 ops (a no-op where autocast does not exist, e.g. the meta device).

    Under torch.compile the availability check is skipped (compiled code runs on CUDA or the CPU, which have
    autocast): torch 2.11's dynamo cannot trace it, and the graph break it made inside every modulated conv and
    up-sampling weight sent the compiled step into recompilations (measured on an H200: 10x slower than eager)."""
    if torch.compiler.is_compiling() or torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()
