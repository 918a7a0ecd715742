"""FIR up-sampling and blur in plain PyTorch (upsample -> pad -> FIR filter -> downsample).

Follows the semantics of NVIDIA's ``upfirdn2d`` as used by rosinality/stylegan2-pytorch (``op/upfirdn2d.py``,
``model.py``: ``make_kernel``, ``Upsample``, ``Blur``), written with ordinary torch ops only: no custom CUDA
kernels, nothing compiled at import. The FIR kernels are fixed filters, so they are NON-persistent buffers: they
follow ``.to(device, dtype)`` but stay out of state dicts (rosinality's checkpoints do carry them as ``*.kernel``;
a loader drops those keys).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Blur", "Upsample", "make_fir_kernel", "upfirdn2d"]


def make_fir_kernel(taps: Sequence[float]) -> Tensor:
    """2-D FIR kernel from 1-D taps (outer product), normalized to sum 1; float32, shape [K, K]."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    if k.ndim != 1 or k.numel() == 0:
        raise ValueError(f"FIR taps must be a non-empty 1-D sequence, got {taps!r}")
    k2 = k[None, :] * k[:, None]  # [K, K]
    return k2 / k2.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Up-sample by zero insertion, pad, filter with ``kernel`` (true convolution), then keep every ``down``-th pixel.

    x: [B, C, H, W]; kernel: [K, K]; pad = (before, after), applied to both spatial axes (negative values crop).
    Output side: (H * up + pad[0] + pad[1] - K) // down + 1.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])  # zeros after every pixel: [B, C, H, up, W, up]
        x = x.reshape(batch, channels, height * up, width * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0) : x.shape[2] - max(-p1, 0), max(-p0, 0) : x.shape[3] - max(-p1, 0)]
    k = kernel.shape[-1]
    # Flip: F.conv2d is a correlation; upfirdn2d is a convolution. Depthwise, same filter for every channel.
    weight = torch.flip(kernel, [0, 1]).to(dtype=x.dtype).reshape(1, 1, k, k).expand(channels, 1, k, k)
    x = F.conv2d(x, weight, groups=channels)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


class Upsample(nn.Module):
    """2x (or ``factor``x) FIR up-sampling that keeps the signal's gain (rosinality ``Upsample``)."""

    kernel: Tensor

    def __init__(self, taps: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        kernel = make_fir_kernel(taps) * factor**2  # zero insertion divides the gain by factor**2
        self.register_buffer("kernel", kernel, persistent=False)
        p = kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    """FIR low-pass filter with explicit padding (rosinality ``Blur``); used after a stride-2 transposed conv."""

    kernel: Tensor

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        kernel = make_fir_kernel(taps) * upsample_factor**2
        self.register_buffer("kernel", kernel, persistent=False)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)
