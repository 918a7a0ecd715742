"""Seeded weights and inputs shared by the network tests (the parity fixtures were recorded with these)."""

import numpy as np
import torch


def fill_deterministic_(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every floating-point state entry from a seeded generator, in sorted key order.

    Independent of the module's own init, so the same weights can be loaded into the reference code.
    """
    generator = torch.Generator().manual_seed(seed)
    values = {}
    for name, tensor in sorted(module.state_dict().items()):
        if not tensor.is_floating_point():  # BatchNorm's num_batches_tracked
            values[name] = torch.zeros_like(tensor)
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if tensor.ndim >= 2:
            values[name] = noise / tensor[0].numel() ** 0.5
        elif name.endswith("running_var"):
            values[name] = 1 + 0.25 * noise.abs()
        elif name.endswith("weight"):
            values[name] = 0.75 + 0.25 * noise
        else:
            values[name] = 0.1 * noise
    module.load_state_dict(values)


def seeded_images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def seeded_state_dict(keys_shapes: list[tuple[str, list[int]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Fill every key from one seeded generator in sorted key order (the rule the fixtures were recorded with)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(keys_shapes):
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros(shape, dtype=torch.long)
            continue
        noise = torch.randn(shape, generator=generator)
        if len(shape) >= 2:
            out[name] = noise / float(np.prod(shape[1:])) ** 0.5
        elif name.endswith("running_var"):
            out[name] = 1 + 0.25 * noise.abs()
        elif name.endswith("running_mean"):
            out[name] = 0.1 * noise
        elif name.endswith("weight"):
            out[name] = 0.75 + 0.25 * noise
        else:
            out[name] = 0.1 * noise
    return out
