"""Per-step loss curves: the mean over images of each loss term at every optimization step, as a table and as the
`losses.csv` that `falco anonymize` writes and `dvc plots` reads (columns: step, identity, attribute, total)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from anon_core.atomic import write_bytes_atomic
from anon_core.optimize import LOSS_NAMES


def mean_losses(histories: Iterable[Mapping[str, np.ndarray]], steps: int) -> pd.DataFrame:
    """histories: one mapping per group of images (a batch, a shard), loss name -> [steps, K] per-image losses.
    Returns one row per step: `step` and the mean over all images of each of LOSS_NAMES (NaN with no image)."""
    sums = {name: np.zeros(steps, np.float64) for name in LOSS_NAMES}
    count = 0
    for history in histories:
        k = 0
        for name in LOSS_NAMES:
            values = np.asarray(history[name], np.float64)  # [steps, K]
            if values.shape[0] != steps:
                raise ValueError(f"a {name} loss history has {values.shape[0]} steps, expected {steps}")
            sums[name] += values.sum(axis=1)
            k = values.shape[1]
        count += k
    frame = pd.DataFrame({name: total / count if count else np.full(steps, np.nan) for name, total in sums.items()})
    frame.insert(0, "step", np.arange(steps))
    return frame


def losses_csv(table: pd.DataFrame) -> bytes:
    """A `mean_losses` table as CSV (6 decimals)."""
    return table.to_csv(index=False, float_format="%.6f").encode()


def write_losses_csv(path: Path, table: pd.DataFrame) -> Path:
    """Write a `mean_losses` table as CSV, atomically."""
    write_bytes_atomic(Path(path), losses_csv(table))
    return Path(path)


def divergence_note(table: pd.DataFrame, lr: float) -> str | None:
    """The warning a run needs when its mean total loss ended above where it started (a `mean_losses` table): the
    optimization moved the codes away from what it minimizes, the mark of a learning rate far too large. Its images
    are then noise that no recognizer matches, and its privacy figures flatter it. None for a run that converged,
    ran one step or holds no image."""
    total = table["total"].to_numpy(np.float64)
    if len(total) < 2 or not np.isfinite(total[[0, -1]]).all() or total[-1] <= total[0]:
        return None
    return (f"the mean loss rose from {total[0]:.4g} at step 0 to {total[-1]:.4g} at step {len(total) - 1}: the "
            f"optimization diverged (optimization.lr = {lr:g} is likely too large; the paper's is 0.01), so its "
            "images are not what the method makes and no recognizer matching them says they are private")


def diverged(path: Path, lr: float) -> str | None:
    """`divergence_note` of a `losses.csv` written by a run (None where there is none)."""
    return divergence_note(pd.read_csv(path), lr) if Path(path).is_file() else None
