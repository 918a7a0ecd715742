"""The method's stages as plain functions of arrays: data -> features -> pairs -> latents -> images.

Both the `falco anonymize` command (anon_core.pipeline) and the Dagster assets (orchestration.assets) call
these, so the two paths cannot drift apart. Images cross stage boundaries as uint8 [N, R, R, 3] at the
generator's resolution, as arrays or as `ImageFiles` (the same left on disk, read a batch ahead of the
networks); tensors live only inside a stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from anon_core.acceleration import accelerate_networks_, resolve_amp
from anon_core.batch_size import resolve_batch_size
from anon_core.data.image_files import ImageFiles, read_batches
from anon_core.data.image_io import to_tensor, to_uint8
from anon_core.errors import FalcoError
from anon_core.fake_pool import FakePool, embed_fake_pool, sample_fake_pool
from anon_core.optimize import LOSS_NAMES, anonymize_batch
from anon_core.pairing import nearest_fakes
from anon_core.params import FalcoParams
from anon_core.profiles import Networks
from anon_core.progress import Progress, progress_bar


ImageSource = np.ndarray | ImageFiles


DEVICE_TYPES = ("cpu", "cuda")  # what the networks run on; torch's other device types (mps, meta, ...) are not


def parse_device(device: str | torch.device, source: str = "--device") -> torch.device:
    """The torch device `device` names, when it is one falco runs on; its form only, not whether this machine has it
    (a Celery head hands the networks to other machines). `source` names where the value came from in the error."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):  # torch's own message lists every backend it was built to know
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise FalcoError(f"{source} {device}: not a device this machine has; use cpu or cuda[:N]")
    return parsed


def resolve_device(device: str | torch.device, source: str = "--device") -> torch.device:
    """`parse_device`, and a FalcoError when this machine has no such device: check it before any work starts."""
    parsed = parse_device(device, source)
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise FalcoError(f"{source} {device} was asked for, but no CUDA device is visible to torch; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise FalcoError(f"{source} {device}: this machine has {count} CUDA device(s); use cuda:N with N < {count}, "
                         "or cpu")
    return parsed


def check_params_fit(nets: Networks, params: FalcoParams) -> None:
    check_layers_fit(params, nets.generator.num_ws)


def check_layers_fit(params: FalcoParams, num_ws: int, where: str = "the params file (--params)") -> None:
    """FalcoError when the optimized W+ layers reach past the generator's `num_ws` (`where`: what sets them)."""
    if params.optimization.layer_stop > num_ws:
        raise FalcoError(f"optimization.layer_stop = {params.optimization.layer_stop} exceeds the {num_ws} W+ layers "
                         f"of profile {params.profile!r}; lower it in {where}")


# -- data -------------------------------------------------------------------------------------------------------


def resize_images(images: list[np.ndarray], size: int) -> np.ndarray:
    """uint8 images -> uint8 [N, size, size, 3] (Pillow bicubic, as to_tensor does)."""
    return to_uint8(to_tensor(images, size)) if images else np.zeros((0, size, size, 3), np.uint8)


# -- features and pairs -----------------------------------------------------------------------------------------


def build_pool(nets: Networks, params: FalcoParams, batch_size: int = 64, show_progress: Progress = True) -> FakePool:
    """The seeded fake pool and its FaRL embeddings."""
    pool = sample_fake_pool(nets.generator, params.pool_size, params.seed, params.truncation_psi, device=nets.device)
    embed_fake_pool(
        pool, nets.generator, nets.farl.embed, device=nets.device, batch_size=batch_size, show_progress=show_progress
    )
    return pool


@torch.no_grad()
def embed_images(nets: Networks, images: ImageSource | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """L2-normalized FaRL embeddings: uint8 [N, R, R, 3] or [-1, 1] tensors [N, 3, R, R] -> [N, D] float32."""
    out = []
    for _, batch in read_batches(images, batch_size):
        out.append(nets.farl.embed(_as_tensor(batch, nets)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, nets.farl.config.output_dim), np.float32)


def pair(real_features: np.ndarray, pool: FakePool, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest fakes of each real image: indices [N, k], cosine similarities [N, k]."""
    return nearest_fakes(real_features, pool.features, k=k)


# -- latents and images -----------------------------------------------------------------------------------------


def invert_images(
    nets: Networks, params: FalcoParams, images: ImageSource, batch_size: int | None = None,
    show_progress: Progress = False,
) -> np.ndarray:
    """W+ codes of real images: uint8 [N, R, R, 3] -> float32 [N, num_ws, w_dim]."""
    inverter = nets.inverter(params.inversion)
    batch_size = batch_size or resolve_batch_size(nets, params)
    read = progress_bar(read_batches(images, batch_size), desc="invert", unit="batch", enable=show_progress,
                        total=-(-len(images) // batch_size))
    out = [inverter.invert(_as_tensor(batch, nets)).float().cpu().numpy() for _, batch in read]
    g = nets.generator
    return np.concatenate(out) if out else np.zeros((0, g.num_ws, g.config.w_dim), np.float32)


@dataclass
class Anonymized:
    ws: np.ndarray  # [N, num_ws, w_dim] float32
    images: np.ndarray | None  # [N, R, R, 3] uint8; None when not kept
    identity_similarity: np.ndarray  # [N] cosine of identity embeddings, anonymized vs real
    history: dict[str, np.ndarray]  # LOSS_NAMES -> [steps, N] per-image weighted losses


def optimize_images(
    nets: Networks,
    params: FalcoParams,
    images: ImageSource,
    w_real: np.ndarray,
    w_fake: np.ndarray,
    batch_size: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    keep_images: bool = True,
    full_batches: bool | None = None,
    show_progress: Progress = False,
) -> Anonymized:
    """FALCO's optimization for N images, in batches: real uint8 images, their inversions [N, num_ws, w_dim] and
    their paired fakes' W codes [N, w_dim] -> anonymized codes and images. `params.speed` sets autocast,
    channels-last and torch.compile. `keep_images=False` returns no images (a caller that regenerates them later
    need not hold a shard of them: 3 GB for 1,024 images at 1024 px).

    full_batches: run a short last batch at the full batch size, its rows repeated and the copies' results dropped
    (each image's optimization is independent of the others in its batch, so the results are the same). Default:
    when compiling, since a compiled step is specialized to its batch shape and a new one compiles again (87 s at
    1024 px on an H100).

    show_progress: the optimization steps of every batch (`anon_core.progress`; a batch can take minutes)."""
    check_params_fit(nets, params)
    speed = params.speed
    accelerate_networks_(nets, speed)
    amp_dtype = resolve_amp(speed.amp, nets.device)
    g, n = nets.generator, len(images)
    out = Anonymized(  # filled batch by batch: a batch's float images are dropped as soon as they are uint8
        ws=np.zeros((n, g.num_ws, g.config.w_dim), np.float32),
        images=np.zeros((n, g.config.resolution, g.config.resolution, 3), np.uint8) if keep_images else None,
        identity_similarity=np.zeros((n,), np.float32),
        history={name: np.zeros((params.optimization.steps, n), np.float32) for name in LOSS_NAMES},
    )
    batch_size = batch_size or resolve_batch_size(nets, params)
    full_batches = speed.compile if full_batches is None else full_batches
    num_batches = -(-n // batch_size)
    with progress_bar(None, desc="optimize", unit="step", total=num_batches * params.optimization.steps,
                      enable=show_progress) as steps:
        for done, (part, batch) in enumerate(read_batches(images, batch_size)):
            if num_batches > 1:
                steps.set_postfix_str(f"batch {done + 1}/{num_batches}", refresh=False)
            k, codes_real, codes_fake = len(batch), w_real[part], w_fake[part]
            if full_batches and k < batch_size:
                rows = np.arange(batch_size) % k  # the batch's rows, repeated up to the full size
                batch, codes_real, codes_fake = batch[rows], codes_real[rows], codes_fake[rows]
            result = anonymize_batch(
                nets.generator,
                nets.identity,
                nets.farl,
                _as_tensor(batch, nets),
                torch.from_numpy(np.ascontiguousarray(codes_real)).to(nets.device),
                torch.from_numpy(np.ascontiguousarray(codes_fake)).to(nets.device),
                params.optimization,
                amp_dtype=amp_dtype,
                compile_backend="inductor" if speed.compile else None,
                return_images=keep_images,
                on_step_queued=lambda _: steps.update(),
            )
            out.ws[part] = result.ws[:k].float().numpy()
            if keep_images:
                out.images[part] = to_uint8(result.images[:k].float())
            out.identity_similarity[part] = result.identity_similarity[:k]
            for name in LOSS_NAMES:
                out.history[name][:, part] = result.history[name][:, :k]
            if on_batch is not None:
                on_batch(done + 1, num_batches)
    return out


def _as_tensor(images: np.ndarray | torch.Tensor, nets: Networks) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images.to(nets.device)
    return to_tensor(images, nets.generator.config.resolution).to(nets.device)
