"""`falco anonymize`: the stages of anon_core.stages chained over a folder of images.

The folder is read by `anon_core.ingest` (as the `real_images` asset reads it), then its images are streamed in
batches, so memory stays bounded by one batch plus the pool's features.
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anon_core.atomic import atomic_path, write_bytes_atomic
from anon_core.batch_size import resolve_batch_size
from anon_core.data.image_files import read_batches
from anon_core.data.image_io import save_png
from anon_core.errors import FalcoError
from anon_core.fake_pool import FakePool
from anon_core.ingest import ingest, read_workers
from anon_core.loss_curves import mean_losses, write_losses_csv
from anon_core.params import FalcoParams
from anon_core.profiles import Networks, build_networks
from anon_core.progress import progress_bar
from anon_core.stages import (
    build_pool,
    check_params_fit,
    embed_images,
    invert_images,
    optimize_images,
    pair,
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
RESULT_COLUMNS = ("latent_index", "fake_index", "fake_similarity", "identity_similarity")  # "" for rejected rows


@dataclass
class BatchResult:
    ws: np.ndarray  # [B, num_ws, w_dim] float32
    images: np.ndarray  # [B, R, R, 3] uint8
    fake_index: np.ndarray  # [B]
    fake_similarity: np.ndarray  # [B]
    identity_similarity: np.ndarray  # [B]
    history: dict[str, np.ndarray]  # LOSS_NAMES -> [steps, B]


def anonymize_images(nets: Networks, pool: FakePool, real: np.ndarray, params: FalcoParams) -> BatchResult:
    """Embed, pair, invert, optimize and generate for one batch of real uint8 images [B, R, R, 3] at the
    generator's resolution."""
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
    dataset: str,
    labels_csv: Path | None,
    align: bool | None,
    align_detector: str,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
    align_cache: Path | None = None,
) -> RunSummary:
    """Anonymize every image under `input_dir` (recursively) into `output_dir`.

    Writes `images/<relpath>.png`, `latents.npy` [N_ok, num_ws, w_dim] in manifest order of the ok rows,
    `manifest.csv`, `losses.csv` (per-step losses averaged over images) and `params.json`. Existing files in
    `output_dir` are overwritten, never the folder deleted. The dataset is read by `anon_core.ingest.ingest` (the
    four dataset arguments: params.yaml's `data:` section, `ingest.data_settings`), as the `real_images` asset
    reads it: unreadable files and images without a face become `rejected` rows, `dataset`
    (celebahq | lfw | folder | auto) picks the layout and its labels, carried into the manifest, and `align`
    (default: on, except for CelebA-HQ, which is aligned already) FFHQ-aligns the largest face of each image. The
    ok images are then read a batch ahead of the one being optimized, and written by another thread, so the
    device is not left waiting on either.
    """
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if output_dir == input_dir or input_dir in output_dir.parents:
        raise FalcoError(f"output folder {output_dir} must not be inside the input folder {input_dir}")
    device = resolve_device(device)
    nets = build_networks(params.profile, device=device)
    check_params_fit(nets, params)
    resolution = nets.generator.config.resolution
    reading = progress_bar(None, desc="read", unit="file", enable=show_progress)

    def on_file(done: int, total: int) -> None:
        reading.total = total
        reading.update(1)

    ingested = ingest(input_dir, resolution, dataset, labels_csv, align, align_detector, device, align_cache, on_file)
    reading.close()
    table = ingested.table
    if table.empty:
        raise FalcoError(f"{input_dir} holds no files to anonymize")
    requested_batch_size = params.batch_size
    params = params.replace(batch_size=resolve_batch_size(nets, params))  # "auto" -> what fits this device
    pool = build_pool(nets, params, show_progress=show_progress)
    ok = ingested.ok
    images = ingested.images(workers=read_workers(device))
    columns = {name: [""] * len(table) for name in RESULT_COLUMNS}
    ok_rows = np.flatnonzero((table["status"] == "ok").to_numpy())
    latents: list[np.ndarray] = []
    histories: list[dict[str, np.ndarray]] = []
    writes: list[Future] = []
    bar = progress_bar(None, desc="anonymize", unit="img", total=len(ok), enable=show_progress)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="falco-write") as writer:
        for part, batch in read_batches(images, params.batch_size):
            result = anonymize_images(nets, pool, batch, params)
            for i, position in enumerate(range(len(ok))[part]):
                row = ok_rows[position]
                writes.append(writer.submit(save_png, output_dir / "images" / ok["image"][position], result.images[i]))
                columns["latent_index"][row] = position
                columns["fake_index"][row] = int(result.fake_index[i])
                columns["fake_similarity"][row] = f"{result.fake_similarity[i]:.6f}"
                columns["identity_similarity"][row] = f"{result.identity_similarity[i]:.6f}"
            latents.append(result.ws)
            histories.append(result.history)
            bar.update(len(batch))
        for write in writes:
            write.result()  # raises the first failed write, if any
    bar.close()

    manifest = table.rename(columns={"image": "output"}).drop(columns=["sha256"]).assign(**columns)
    manifest = manifest[[*MANIFEST_COLUMNS, *ingested.labels]]
    extra = {"dataset": ingested.dataset, "aligned": ingested.alignment is not None,
             "batch_size_requested": requested_batch_size, "alignment": ingested.alignment,
             "dataset_warnings": ingested.warnings}
    _write_outputs(output_dir, manifest, latents, histories, params, nets, device, input_dir, extra)
    summary = RunSummary(output_dir=output_dir, duplicates=int((table["duplicate_of"] != "").sum()))
    summary.counts.update(table["reason"].where(table["status"] != "ok", "ok"))
    return summary


def _write_outputs(output_dir, manifest, latents, histories, params, nets, device, input_dir, extra) -> None:
    num_ws, w_dim = nets.generator.num_ws, nets.generator.config.w_dim
    stacked = np.concatenate(latents) if latents else np.zeros((0, num_ws, w_dim), dtype=np.float32)
    with atomic_path(output_dir / "latents.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, stacked.astype(np.float32))
    with atomic_path(output_dir / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False, encoding="utf-8")
    write_losses_csv(output_dir / "losses.csv", mean_losses(histories, params.optimization.steps))
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
    write_bytes_atomic(output_dir / "params.json", json.dumps(record, indent=2, sort_keys=True).encode())
