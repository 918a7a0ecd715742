"""The fake pool: seeded latent codes, their truncated W codes, and the features of their images.

Sample i is drawn from its own seed, `seed * SEED_STRIDE + i` (`pool_seeds`), so any fake can be regenerated alone
from its seed, a pool of N is the first N samples of any larger pool with the same seed, and the pools of two
seeds share no fake up to SEED_STRIDE fakes each. (With `seed + i`, seeds 0 and 1 shared all fakes but one, so a
sweep over seeds measured no variance: nearest pairing picked the same fakes. Seed 0's pool is the same under both.)
torch's CPU generator keeps only the low 32 bits of a seed (2**32 draws what 0 draws), hence the pool seed's range,
`anon_core.params.MAX_SEED`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from anon_core.data.colour import keep_grey
from anon_core.data.image_io import to_uint8
from anon_core.data.mapped_images import MappedImages
from anon_core.prefetch import batch_slices
from anon_core.progress import Progress, progress_bar


@dataclass
class FakePool:
    seeds: np.ndarray  # [N] int64, the seed of each sample
    w: np.ndarray  # [N, w_dim] float32, truncated W codes (broadcast to W+ when used)
    features: np.ndarray | None = None  # [N, D] float32, L2-normalized FaRL embeddings

    def __len__(self) -> int:
        return len(self.seeds)


SEED_STRIDE = 2**20
"""Seeds between the first fakes of two consecutive pool seeds: pools of up to 2**20 (1,048,576) fakes, 17 times the
paper's, never overlap, and with seeds below 2**12 every fake's seed is a distinct 32-bit number."""
POOL_SEEDS = f"seed * {SEED_STRIDE} + i"  # how fakes are seeded, in a journal's key (a run stopped under `seed + i`
# starts over)


def pool_seeds(seed: int, size: int) -> np.ndarray:
    """The per-fake seeds of a pool: [size] int64, `seed * SEED_STRIDE + i`."""
    return np.int64(seed) * np.int64(SEED_STRIDE) + np.arange(size, dtype=np.int64)


def sample_z(seeds: np.ndarray, z_dim: int) -> torch.Tensor:
    """z ~ N(0, I) with one torch.Generator per seed: [N, z_dim] float32 on the CPU."""
    z = torch.empty(len(seeds), z_dim)
    for row, seed in enumerate(seeds):
        z[row] = torch.randn(z_dim, generator=torch.Generator().manual_seed(int(seed)))
    return z


@torch.no_grad()
def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable); None where it does not say."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_pool_fits(size: int, w_dim: int, feature_dim: int) -> None:
    """FalcoError when a pool of `size` fakes (its W codes and features, float32) cannot fit in the memory this
    machine has available: one line before it is drawn, not numpy's allocation error after a run began."""
    from anon_core.errors import FalcoError

    needed, available = size * (w_dim + feature_dim) * 4, available_memory()
    if available is not None and needed > available:
        raise FalcoError(f"a fake pool of {size:,} takes {needed / 2**30:.1f} GiB of memory (its codes and features), "
                         f"and this machine has {available / 2**30:.1f} GiB available; lower pool_size (the paper "
                         "uses 60,000)")


def sample_fake_pool(
    generator: torch.nn.Module,
    size: int,
    seed: int,
    psi: float,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> FakePool:
    """Map `size` seeded z to W and truncate toward w_avg (paper: psi = 0.7)."""
    check_pool_fits(size, generator.config.w_dim, 0)
    seeds = pool_seeds(seed, size)
    w = np.empty((size, generator.config.w_dim), dtype=np.float32)
    for part in batch_slices(size, batch_size):
        z = sample_z(seeds[part], generator.config.z_dim).to(device)
        w[part] = generator.truncate(generator.mapping(z), psi).float().cpu().numpy()
    return FakePool(seeds=seeds, w=w)


def broadcast_ws(w: torch.Tensor, num_ws: int) -> torch.Tensor:
    """[B, w_dim] -> [B, num_ws, w_dim] (W -> W+)."""
    return w.unsqueeze(1).expand(-1, num_ws, -1).contiguous()


@torch.no_grad()
def embed_fake_pool(
    pool: FakePool,
    generator: torch.nn.Module,
    embed: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    show_progress: Progress = True,
) -> np.ndarray:
    """Generate every fake image and embed it: [N, D] float32. Images are not kept (regenerate from seeds)."""
    features: list[np.ndarray] = []
    parts = batch_slices(len(pool), batch_size)
    for part in progress_bar(parts, desc="fake pool", unit="batch", enable=show_progress):
        ws = broadcast_ws(torch.from_numpy(pool.w[part]).to(device), generator.num_ws)
        features.append(embed(generator.synthesis(ws)).float().cpu().numpy())
    pool.features = np.concatenate(features).astype(np.float32)
    return pool.features


@torch.no_grad()
def generate(
    generator: torch.nn.Module, ws: np.ndarray | torch.Tensor, device: torch.device | str = "cpu", batch_size: int = 16
) -> np.ndarray:
    """Images for W+ codes [N, num_ws, w_dim] or W codes [N, w_dim]: uint8 [N, R, R, 3] (`to_uint8` of the
    generator's [-1, 1] output), converted batch by batch so that float images never exist for the whole set."""
    ws = torch.as_tensor(ws, dtype=torch.float32)
    if ws.ndim == 2:
        ws = broadcast_ws(ws, generator.num_ws)
    resolution = generator.config.resolution
    out = np.empty((len(ws), resolution, resolution, 3), np.uint8)
    for part in batch_slices(len(ws), batch_size):
        out[part] = to_uint8(generator.synthesis(ws[part].to(device)))
    return out


def generated_images(generator: torch.nn.Module, ws: np.ndarray, index: np.ndarray,
                     device: torch.device | str = "cpu", grey: np.ndarray | None = None) -> MappedImages:
    """Images of the generator for the codes `ws[index]` (W [N, w_dim] or W+ [N, num_ws, w_dim]), generated on
    indexing: row i is `generate(generator, ws[index[i]])`, made grey where `grey` [N] is true (anonymized faces of
    black-and-white sources, `colour.keep_grey`). Read in batches of a multiple of `generate`'s own batch size (16),
    the images are bit for bit those of generating every row at once."""
    resolution = generator.config.resolution
    grey = np.zeros(len(index), bool) if grey is None else np.asarray(grey, bool)
    return MappedImages(lambda rows, grey_rows: keep_grey(generate(generator, ws[rows], device=device), grey_rows),
                        [np.asarray(index), grey], (resolution, resolution, 3), name="generated")
