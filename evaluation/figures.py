"""Figures shared by the Dagster metadata and the report: image grids and loss curves, as PNG bytes."""

from __future__ import annotations

import io

import numpy as np

from anon_core.data.image_io import encode_png


def image_grid(columns: list[np.ndarray], cell: int = 96, pad: int = 2) -> np.ndarray:
    """Columns of uint8 images [N, H, W, 3] (e.g. fake | anonymized) -> one uint8 grid, N rows, one column each."""
    from PIL import Image

    if not columns or any(len(c) != len(columns[0]) for c in columns):
        raise ValueError("image_grid needs columns of equal length")
    rows, cols = len(columns[0]), len(columns)
    grid = np.full((rows * (cell + pad) + pad, cols * (cell + pad) + pad, 3), 255, np.uint8)
    for c, column in enumerate(columns):
        for r, image in enumerate(column):
            tile = np.asarray(Image.fromarray(image).resize((cell, cell), Image.Resampling.BICUBIC))
            y, x = pad + r * (cell + pad), pad + c * (cell + pad)
            grid[y : y + cell, x : x + cell] = tile
    return grid


def grid_png(columns: list[np.ndarray], cell: int = 96) -> bytes:
    return encode_png(image_grid(columns, cell=cell))


def loss_curve_png(history: dict[str, np.ndarray], title: str = "optimization loss") -> bytes:
    """history: name -> [steps, N] per-image losses; plots the mean over images per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    for name, values in history.items():
        values = np.asarray(values)
        ax.plot(np.arange(len(values)), values.mean(axis=1) if values.ndim == 2 else values, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over images)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
