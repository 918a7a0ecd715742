"""`falco anonymize`: the stages of anon_core.stages chained over a folder of images.

The real images are streamed in batches, so memory stays bounded by one batch plus the pool's features.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import platform
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from anon_core.batch_size import resolve_batch_size
from anon_core.data.image_io import ImageRejected, save_png
from anon_core.data.align import AlignmentCache, FaceAligner
from anon_core.data.datasets import load_dataset
from anon_core.errors import FalcoError
from anon_core.fake_pool import FakePool
from anon_core.optimize import LOSS_NAMES
from anon_core.params import FalcoParams
from anon_core.prefetch import read_ahead
from anon_core.profiles import Networks, build_networks
from anon_core.progress import progress_bar
from anon_core.stages import (
    align_cache_dir,
    build_pool,
    check_params_fit,
    dataset_files,
    embed_images,
    invert_images,
    label_columns,
    optimize_images,
    output_names,
    pair,
    read_input,
    resize_images,
    resolve_device,
)

MANIFEST_COLUMNS = (
    "input",  # relative path under the input folder
    "output",  # relative path under OUTPUT_DIR/images ("" when rejected)
    "status",  # ok | rejected
    "reason",  # machine code of the rejection ("" when ok)
    "detail",  # human sentence about the rejection
    "duplicate_of",  # input with the same bytes that came first, if any
    "latent_index",  # row in latents.npy
    "fake_index",  # index (= seed - params.seed) of the paired fake in the pool
    "fake_similarity",  # cosine of real and fake FaRL embeddings
    "identity_similarity",  # cosine of real and anonymized identity embeddings after optimization
    "faces_seen",  # faces the aligner detected (the largest is used); -1 when not aligning
)


@dataclass
class BatchResult:
    ws: np.ndarray  # [B, num_ws, w_dim] float32
    images: np.ndarray  # [B, R, R, 3] uint8
    fake_index: np.ndarray  # [B]
    fake_similarity: np.ndarray  # [B]
    identity_similarity: np.ndarray  # [B]
    history: dict[str, np.ndarray]  # LOSS_NAMES -> [steps, B]


def anonymize_images(nets: Networks, pool: FakePool, images: list[np.ndarray], params: FalcoParams) -> BatchResult:
    """Embed, pair, invert, optimize and generate for one batch of real uint8 images (any size)."""
    real = resize_images(images, nets.generator.config.resolution)
    indices, similarities = pair(embed_images(nets, real), pool, params.pairing_k)
    nearest = indices[:, 0]
    w_real = invert_images(nets, params, real)
    result = optimize_images(nets, params, real, w_real, pool.w[nearest])
    return BatchResult(
        ws=result.ws,
        images=result.images,
        fake_index=nearest,
        fake_similarity=similarities[:, 0],
        identity_similarity=result.identity_similarity,
        history=result.history,
    )


def read_workers(device: torch.device) -> int:
    """Threads that decode and align images ahead of the optimization: one on a CPU, whose cores run the networks;
    up to 8 with a GPU, so that reading keeps up with it."""
    return 1 if device.type != "cuda" else max(1, min(8, os.cpu_count() or 1))


@dataclass
class RunSummary:
    output_dir: Path
    counts: Counter = field(default_factory=Counter)  # "ok" and every rejection reason
    duplicates: int = 0

    @property
    def ok(self) -> int:
        return self.counts["ok"]

    def describe(self) -> str:
        rejected = {k: v for k, v in sorted(self.counts.items()) if k != "ok"}
        text = f"{self.ok} anonymized, {sum(rejected.values())} rejected"
        if rejected:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in rejected.items()) + ")"
        if self.duplicates:
            text += f", {self.duplicates} duplicate file(s) noted in the manifest"
        return text


def anonymize_folder(
    input_dir: Path,
    output_dir: Path,
    params: FalcoParams,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
    dataset: str = "auto",
    labels_csv: Path | None = None,
    align: bool | None = None,
    align_detector: str = "mtcnn",
    align_cache: Path | None = None,
) -> RunSummary:
    """Anonymize every image under `input_dir` (recursively) into `output_dir`.

    Writes `images/<relpath>.png`, `latents.npy` [N_ok, num_ws, w_dim] in manifest order of the ok rows,
    `manifest.csv`, `losses.csv` (per-step losses averaged over images) and `params.json`. Existing files in
    `output_dir` are overwritten, never the folder deleted. Unreadable files and images without a face become
    `rejected` rows. `dataset` (celebahq | lfw | folder | auto) picks the layout and its labels, which are
    carried into the manifest; `align` (default: on, except for CelebA-HQ, which is aligned already) FFHQ-aligns
    the largest face of each image first. Files are read and aligned in worker threads ahead of the batch being
    optimized, and images are written by another thread, so the device is not left waiting on either.
    """
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if output_dir == input_dir or input_dir in output_dir.parents:
        raise FalcoError(f"output folder {output_dir} must not be inside the input folder {input_dir}")
    device = resolve_device(device)
    table = load_dataset(dataset, input_dir, labels_csv)
    files = dataset_files(table)
    if not files:
        raise FalcoError(f"{input_dir} holds no files to anonymize")
    labels = label_columns(table)
    label_rows = table.set_index("relpath")[labels] if labels else None

    nets = build_networks(params.profile, device=device)
    check_params_fit(nets, params)
    requested_batch_size = params.batch_size
    params = params.replace(batch_size=resolve_batch_size(nets, params))  # "auto" -> what fits this device
    pool = build_pool(nets, params, show_progress=show_progress)
    names = output_names(files)
    if align is None:
        align = table.attrs.get("kind") != "celebahq"
    aligner = FaceAligner(nets.generator.config.resolution, align_detector, device=device) if align else None
    cache = AlignmentCache(align_cache or align_cache_dir())
    summary = RunSummary(output_dir=output_dir)
    rows: list[dict] = []
    latents: list[np.ndarray] = []
    histories: list[dict[str, np.ndarray]] = []
    pending: list[tuple[dict, np.ndarray]] = []
    writes: list[Future] = []

    def flush() -> None:
        if not pending:
            return
        batch_rows = [row for row, _ in pending]
        result = anonymize_images(nets, pool, [image for _, image in pending], params)
        for i, row in enumerate(batch_rows):
            writes.append(writer.submit(save_png, output_dir / "images" / row["output"], result.images[i]))
            row.update(
                latent_index=sum(len(x) for x in latents) + i,
                fake_index=int(result.fake_index[i]),
                fake_similarity=f"{result.fake_similarity[i]:.6f}",
                identity_similarity=f"{result.identity_similarity[i]:.6f}",
            )
        latents.append(result.ws)
        histories.append(result.history)
        bar.update(len(pending))
        pending.clear()

    read = functools.partial(read_input, aligner=aligner, cache=cache)
    bar = progress_bar(None, desc="anonymize", unit="img", total=len(files), enable=show_progress)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="falco-write") as writer:
        for f, reading in read_ahead(read, files, read_workers(device), depth=2 * params.batch_size):
            row = {c: "" for c in MANIFEST_COLUMNS} | {"input": f.relpath, "duplicate_of": f.duplicate_of or ""}
            if label_rows is not None:
                row |= {c: ("" if pd.isna(v) else v) for c, v in label_rows.loc[f.relpath].items()}
            summary.duplicates += f.duplicate_of is not None
            rows.append(row)
            try:
                image, row["faces_seen"] = reading.result()
            except ImageRejected as rejected:
                row.update(status="rejected", reason=rejected.reason, detail=rejected.detail)
                summary.counts[rejected.reason] += 1
                bar.update(1)
                continue
            row.update(status="ok", output=names[f.relpath])
            summary.counts["ok"] += 1
            pending.append((row, image))
            if len(pending) == params.batch_size:
                flush()
        flush()
        for write in writes:
            write.result()  # raises the first failed write, if any
    bar.close()

    columns = [*MANIFEST_COLUMNS, *labels]
    extra = {"dataset": table.attrs.get("kind", dataset), "aligned": bool(align),
             "batch_size_requested": requested_batch_size,
             "alignment": aligner.settings if aligner else None, "dataset_warnings": table.attrs.get("warnings", [])}
    _write_outputs(output_dir, rows, columns, latents, histories, params, nets, device, input_dir, extra)
    return summary


def _write_outputs(output_dir, rows, columns, latents, histories, params, nets, device, input_dir, extra) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    num_ws, w_dim = nets.generator.num_ws, nets.generator.config.w_dim
    stacked = np.concatenate(latents) if latents else np.zeros((0, num_ws, w_dim), dtype=np.float32)

    def write_latents(path: Path) -> None:
        with open(path, "wb") as fh:
            np.save(fh, stacked.astype(np.float32))

    _atomic_write(output_dir / "latents.npy", write_latents)

    def write_manifest(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    _atomic_write(output_dir / "manifest.csv", write_manifest)

    def write_losses(path: Path) -> None:
        steps = params.optimization.steps
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("step", *LOSS_NAMES))
            for step in range(steps):
                means = [np.concatenate([h[name][step] for h in histories]).mean() if histories else float("nan")
                         for name in LOSS_NAMES]
                writer.writerow((step, *(f"{m:.6f}" for m in means)))

    _atomic_write(output_dir / "losses.csv", write_losses)
    record = {
        "params": params.to_dict(),
        "profile_weights": nets.weights,
        "device": str(device),
        "input_dir": str(input_dir),
        "num_ws": num_ws,
        "w_dim": w_dim,
        "resolution": nets.generator.config.resolution,
        **extra,
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
    }
    _atomic_write(output_dir / "params.json", lambda p: p.write_text(json.dumps(record, indent=2, sort_keys=True)))


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)
