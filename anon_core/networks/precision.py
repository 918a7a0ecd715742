"""Ops that must stay in float32 (or float64) whatever autocast the caller runs under."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["without_autocast"]


def without_autocast(device_type: str) -> AbstractContextManager:
    """Autocast off for a few float32 ops (a no-op where autocast does not exist, e.g. the meta device)."""
    return torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else nullcontext()
