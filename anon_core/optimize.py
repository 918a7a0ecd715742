"""FALCO's latent optimization, batched.

The anonymized code is W+ in which layers [layer_start, layer_stop) (3..7 in the paper) are trainable and start
from the paired fake's code, while every other layer stays at the real image's inversion. The loss of one image is

    lambda_id   * | <f(x_anon), f(x_real)> - m |                          (f: L2-normalized identity embedding)
  + lambda_attr * sum over tokens t of mean_c | F_t(x_anon) - F_t(x_real) |  (F: FaRL's last-block tokens)
  [+ lambda_consistency * (1 - <f(x_anon), f(G(w_fake))>)]                (ours, off by default)

and a batch minimizes the SUM of its images' losses with Adam. Since each image's loss depends only on its own
code and Adam's update is element-wise, every image gets the update it would get if optimized alone: exactly in
float64 (`tests/test_optimize.py` holds the code to that); in float32 the networks' kernels sum in an order that
depends on the batch's size, and the steps carry that rounding into other codes (as with another thread count), so
results are bit-identical for the same batches, not across batch sizes or batch companions.

The bracketed term is not the paper's: it pulls each anonymized identity toward the identity of its paired fake's
own image. With identity-aware pairing (anon_core.assignment.identity_fakes) every image of one person starts from
the same fake, so the term gives them one shared pseudonym, while the first term keeps each away from the real
person. It is added to the `identity` loss of the history; at 0 (the default) it is not computed at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from anon_core.acceleration import autocast
from anon_core.errors import FalcoError
from anon_core.params import OptimizationParams
from anon_core.progress import progress_bar

IdentityNet = Callable[[torch.Tensor], torch.Tensor]  # [-1, 1] images -> L2-normalized [B, D]
AttributeNet = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # -> (embedding, tokens [B, T, C])

LOSS_NAMES = ("identity", "attribute", "total")


def identity_loss(anon_embedding: torch.Tensor, real_embedding: torch.Tensor, margin: float) -> torch.Tensor:
    """|cos(f(x_anon), f(x_real)) - m| per image: [B]. Inputs are L2-normalized [B, D]."""
    return ((anon_embedding * real_embedding).sum(dim=1) - margin).abs()


def consistency_loss(anon_embedding: torch.Tensor, fake_embedding: torch.Tensor) -> torch.Tensor:
    """1 - cos(f(x_anon), f(G(w_fake))) per image: [B]. Inputs are L2-normalized [B, D]."""
    return 1.0 - (anon_embedding * fake_embedding).sum(dim=1)


def attribute_loss(anon_tokens: torch.Tensor, real_tokens: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of the mean absolute feature difference, per image: [B]. Inputs [B, T, C]."""
    return (anon_tokens - real_tokens).abs().mean(dim=2).sum(dim=1)


@dataclass
class OptimizationResult:
    ws: torch.Tensor  # [B, num_ws, w_dim] on the CPU (float32, or float64 for float64 inputs)
    images: torch.Tensor | None  # [B, 3, R, R] on the CPU, G(ws), unclamped (None when not asked for)
    identity_similarity: np.ndarray  # [B] cosine of f(x_anon) and f(x_real) after the last step
    history: dict[str, np.ndarray]  # LOSS_NAMES -> [steps, B], weighted per-image losses before each update


def compose_ws(w_real: torch.Tensor, trainable: torch.Tensor, layer_start: int, layer_stop: int) -> torch.Tensor:
    """Insert the trainable layers into the fixed inversion code: [B, num_ws, w_dim]."""
    return torch.cat([w_real[:, :layer_start], trainable, w_real[:, layer_stop:]], dim=1)


def compose_layer_codes(
    w_real: torch.Tensor, trainable: torch.Tensor, layer_start: int, layer_stop: int
) -> list[torch.Tensor]:
    """The same code as `compose_ws`, as num_ws per-layer [B, w_dim] codes for `Generator.synthesis`.

    Only the trainable layers' codes require grad, so for a batch of one (grouped modulated convolutions) the
    backward pass skips the weight-style gradient of every convolution driven by a fixed layer (at 1024 px that
    halves the generator's backward FLOPs, see bench/flops.py); one composed tensor would make every layer's code
    require grad. Batches of more run batched convolutions, whose code gradients are element-wise anyway.
    """
    fixed = w_real.unbind(1)
    return [*fixed[:layer_start], *trainable.unbind(1), *fixed[layer_stop:]]


def step_losses(
    generator: torch.nn.Module,
    identity_net: IdentityNet,
    attribute_net: AttributeNet,
    w_real: torch.Tensor,
    trainable: torch.Tensor,
    real_identity: torch.Tensor,
    real_tokens: torch.Tensor,
    params: OptimizationParams,
    amp_dtype: torch.dtype | None,
    fake_identity: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass of one step: the weighted identity and attribute terms of each image, [B] each, in the
    dtype of the real images' embeddings. `fake_identity` (f(G(w_fake)), [B, D]) adds the consistency term to the
    identity term."""
    master = real_identity.dtype
    with autocast(w_real.device, amp_dtype):
        images = generator.synthesis(compose_layer_codes(w_real, trainable, params.layer_start, params.layer_stop))
        anon_identity = identity_net(images).to(master)
        id_term = params.lambda_id * identity_loss(anon_identity, real_identity, params.margin)
        if fake_identity is not None:
            id_term = id_term + params.lambda_consistency * consistency_loss(anon_identity, fake_identity)
        attr_term = params.lambda_attr * attribute_loss(attribute_net(images)[1].to(master), real_tokens)
    return id_term, attr_term


@functools.cache
def compiled_step_losses(backend: str = "inductor") -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`step_losses` through torch.compile with `backend` (built once per backend; it compiles on first call, and
    again for a new batch shape or network, which torch.compile's guards detect). Its backward is compiled too
    (AOTAutograd). "inductor" generates fused kernels (minutes of compilation at 1024 px, far longer on a CPU);
    "aot_eager" traces the same graphs and runs them with the eager kernels (a cheap check that the step compiles).
    """
    return torch.compile(step_losses, backend=backend, dynamic=False)


def check_finite(ws: torch.Tensor, similarity: torch.Tensor, params: OptimizationParams) -> None:
    """FalcoError when the optimization left any image's codes, or its image (seen through its identity similarity),
    not finite: a learning rate or loss weight so large that float32 overflowed. Its images would be NaN."""
    broken = ~(torch.isfinite(ws).flatten(1).all(dim=1) & torch.isfinite(similarity))
    if broken.any():
        raise FalcoError(
            f"the optimization diverged: after {params.steps} step(s) the codes or images of {int(broken.sum())} of "
            f"{len(broken)} image(s) are not finite numbers (NaN or infinite); optimization.lr = {params.lr:g} (the "
            f"paper's is 0.01) or a loss weight (lambda_id {params.lambda_id:g}, lambda_attr {params.lambda_attr:g}, "
            f"lambda_consistency {params.lambda_consistency:g}) is far too large: lower it (nothing was written for "
            "this batch)")


def anonymize_batch(
    generator: torch.nn.Module,
    identity_net: IdentityNet,
    attribute_net: AttributeNet,
    real_images: torch.Tensor,
    w_real: torch.Tensor,
    w_fake: torch.Tensor,
    params: OptimizationParams,
    amp_dtype: torch.dtype | None = None,
    compile_backend: str | None = None,
    show_progress: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    return_images: bool = True,
    on_step_queued: Callable[[int], None] | None = None,
) -> OptimizationResult:
    """Optimize a batch of anonymized codes. The networks must be frozen (parameters without grad): only the
    trainable layers of the codes get gradients.

    Args:
        real_images: [B, 3, R, R] real images in [-1, 1] at the generator's resolution.
        w_real: [B, num_ws, w_dim] the real images' inversions (kept outside the trainable layers).
        w_fake: [B, w_dim] or [B, num_ws, w_dim] the paired fakes' codes (start of the trainable layers).
        amp_dtype: run the networks under autocast with this dtype (e.g. torch.bfloat16); the codes and Adam's
            state stay float32.
        compile_backend: run the step's forward and backward through torch.compile with this backend
            (`compiled_step_losses`; "inductor" is torch.compile's default); None runs it eagerly.
        on_step: called after every step with the step index and the batch-summed losses (waits for the step).
        on_step_queued: called with the step index once the step's work is queued, without waiting for the
            device (on a GPU, the count may run ahead of the device by what its launch queue holds): for
            progress reports.
        return_images: copy the final images to the CPU (False: `images` is None, for callers that regenerate
            them later; at 1024 px the copy is 12 MB per image).
    """
    device = real_images.device
    num_ws = w_real.shape[1]
    start, stop = params.layer_start, params.layer_stop
    if not 0 <= start < stop <= num_ws:
        raise ValueError(f"trainable layers [{start}, {stop}) do not fit a generator with {num_ws} W+ layers")
    if w_fake.ndim == 2:
        w_fake = w_fake.unsqueeze(1).expand(-1, num_ws, -1)
    master = torch.promote_types(w_real.dtype, torch.float32)  # codes and Adam state: float32 at least
    w_real = w_real.to(device=device, dtype=master)
    trainable = w_fake[:, start:stop].to(device=device, dtype=master).clone().requires_grad_(True)

    with torch.no_grad(), autocast(device, amp_dtype):
        real_identity = identity_net(real_images).to(master)
        real_tokens = attribute_net(real_images)[1].to(master)
        fake_identity = None
        if params.lambda_consistency > 0:  # the paired fakes' own images: G(w_fake) in every layer
            fake_identity = identity_net(generator.synthesis(w_fake.to(device=device, dtype=master))).to(master)

    losses = compiled_step_losses(compile_backend) if compile_backend else step_losses
    optimizer = torch.optim.Adam([trainable], lr=params.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=params.milestone_steps(), gamma=params.gamma)
    # Kept on the device and copied once at the end: a per-step copy would make the host wait for every step.
    history = torch.zeros((params.steps, len(LOSS_NAMES), len(real_images)), dtype=torch.float32, device=device)

    for step in progress_bar(range(params.steps), desc="optimize", unit="step", enable=show_progress):
        id_term, attr_term = losses(generator, identity_net, attribute_net, w_real, trainable, real_identity,
                                    real_tokens, params, amp_dtype, fake_identity)
        per_image = id_term + attr_term  # [B]
        optimizer.zero_grad(set_to_none=True)
        per_image.sum().backward()
        optimizer.step()
        scheduler.step()
        history[step] = torch.stack((id_term, attr_term, per_image)).detach().float()
        if on_step_queued is not None:
            on_step_queued(step)
        if on_step is not None:
            on_step(step, {name: float(value) for name, value in zip(LOSS_NAMES, history[step].sum(dim=1).tolist())})

    with torch.no_grad(), autocast(device, amp_dtype):
        ws = compose_ws(w_real, trainable.detach(), start, stop)
        images = generator.synthesis(ws).to(master)
        similarity = (identity_net(images).to(master) * real_identity).sum(dim=1)
    check_finite(ws, similarity, params)
    history_np = history.cpu().numpy()
    return OptimizationResult(
        ws=ws.cpu(),
        images=images.cpu() if return_images else None,
        identity_similarity=similarity.cpu().numpy(),
        history={name: np.ascontiguousarray(history_np[:, i]) for i, name in enumerate(LOSS_NAMES)},
    )
