"""GAN inversion: real images -> W+ codes of the generator.

FALCO inverts with e4e (an encoder trained for one generator). `OptimizationInverter` works for any generator,
including the seeded `tiny` one for which no encoder exists: it starts every image at w_avg in W+ and fits the
code to the image's pixels with Adam. Each image's loss depends only on its own code, so batches do not
interact.
"""

from __future__ import annotations

from typing import Protocol

import torch

from anon_core.progress import progress_bar


class Inverter(Protocol):
    def invert(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, R, R] images in [-1, 1] at the generator's resolution -> W+ codes [B, num_ws, w_dim]."""
        ...


class OptimizationInverter:
    def __init__(self, generator: torch.nn.Module, steps: int, lr: float, show_progress: bool = False):
        """steps, lr: params.yaml's `inversion:` section (anon_core.params.InversionParams)."""
        self.generator = generator
        self.steps = steps
        self.lr = lr
        self.show_progress = show_progress

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        g = self.generator
        w_avg = g.w_avg.detach().float().to(images.device)
        ws = w_avg.expand(len(images), g.num_ws, -1).clone().requires_grad_(True)  # [B, num_ws, w_dim]
        optimizer = torch.optim.Adam([ws], lr=self.lr)
        target = images.float()
        for _ in progress_bar(range(self.steps), desc="invert", unit="step", enable=self.show_progress):
            per_image = (g.synthesis(ws) - target).square().flatten(1).mean(dim=1)  # [B]
            optimizer.zero_grad(set_to_none=True)
            per_image.sum().backward()
            optimizer.step()
        return ws.detach()
