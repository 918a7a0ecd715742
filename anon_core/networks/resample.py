"""Separable linear resampling run as two matrix products.

The identity and attribute networks see each generated image through a fixed linear map: FaRL's antialiased
bicubic resize (1024 -> 224 px), ArcFace's pooling + crop + pooling (pSp's IDLoss, 1024 -> 112 px). Both are
separable: per channel the output is ``R @ X @ C^T``, with ``R`` [out_h, H] and ``C`` [out_w, W] the maps along
the rows and the columns. PyTorch's CUDA kernel for the antialiased resize loops over the whole 2-D window of
every output pixel and accumulates its backward with atomic adds; as two matrix products the same map runs on
GEMM kernels forward and backward (the backward of a product is two products).

The matrices are read off the reference op itself, one axis at a time: ``axis_map(x, axis)`` takes a batch of
unit vectors [L, 1, 1, L] (as one-pixel-high images) and returns their images [L, 1, 1, L'], the matrix's columns.
(Along the height of one-pixel-wide images instead, PyTorch 2.13's antialiased bicubic kernel on the CPU returns
wrong values: not a layout to read matrices from.)
So the "matmul" form computes the same weighted sums as the reference ("interpolate") form, in another order: equal
to float rounding (tests/test_resample.py checks both directions in float64).
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch
from torch import Tensor, nn

from anon_core.networks.forms import RESIZE_FORMS
from anon_core.networks.precision import without_autocast

__all__ = ["RESIZE_FORMS", "AxisMap", "axis_matrix", "resample_matrices", "separable_resample", "set_resize_form"]

AXES: tuple[str, ...] = ("rows", "cols")


class AxisMap(Protocol):
    """A separable linear resampling, one axis at a time (hashable: its matrices are cached by it)."""

    def axis_map(self, x: Tensor, axis: str) -> Tensor:
        """[N, 1, 1, L] -> [N, 1, 1, L']: the map along `axis` ("rows" or "cols") of an L-pixel side, applied
        along the last dimension."""
        ...


def axis_matrix(spec: AxisMap, size: int, axis: str) -> Tensor:
    """The [L', size] float64 matrix of `spec` along `axis` for a `size`-pixel side (column i: the image of e_i)."""
    basis = torch.eye(size, dtype=torch.float64).reshape(size, 1, 1, size)
    with torch.no_grad():
        responses = spec.axis_map(basis, axis)  # [size, 1, 1, L']
    return responses[:, 0, 0, :].t().contiguous()


@functools.lru_cache(maxsize=16)
def resample_matrices(spec: AxisMap, size: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(R, C) of `spec` for a size x size image, on `device` in `dtype` (built once per spec, size, device, dtype:
    the step must not copy them to the device each time)."""
    rows, cols = (axis_matrix(spec, size, axis).to(device=device, dtype=dtype) for axis in AXES)
    return rows, cols


def separable_resample(x: Tensor, spec: AxisMap) -> Tensor:
    """[B, C, H, H] -> [B, C, L'_rows, L'_cols]: ``R @ x @ C^T`` per channel, in float32 at least (autocast off, as
    the reference resize runs in the image's float32), differentiable in x."""
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"separable_resample expects square images [B, C, H, H], got shape {tuple(x.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    rows, cols = resample_matrices(spec, x.shape[-1], x.device, dtype)
    with without_autocast(x.device.type):
        return torch.matmul(torch.matmul(rows, x.to(dtype)), cols.t())


def set_resize_form(module: nn.Module, form: str) -> None:
    """Run the input resize of every network in `module` that has one (``resize_form``) as its reference op
    ("interpolate", the default) or as two matrix products ("matmul")."""
    if form not in RESIZE_FORMS:
        raise ValueError(f"unknown resize form {form!r}; use one of {RESIZE_FORMS}")
    for sub in module.modules():
        if hasattr(sub, "resize_form"):
            sub.resize_form = form
