"""`falco anonymize`: the stages of anon_core.stages chained over a folder of images.

The folder is read by `anon_core.ingest` (as the `real_images` asset reads it), then its images are streamed in
batches, so memory stays bounded by one batch plus the pool's features.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from anon_core.acceleration import resolved_for
from anon_core.assignment import assign_fakes, check_identities, check_pool_holds, person_labels
from anon_core.atomic import atomic_path, write_bytes_atomic
from anon_core.prefetch import WriteBehind, batch_slices, read_parts
from anon_core.data.colour import GREY_RULE, keep_grey
from anon_core.data.datasets import load_dataset
from anon_core.data.image_files import ImageFiles
from anon_core.data.image_io import save_png
from anon_core.errors import FalcoError
from anon_core.fake_pool import POOL_SEEDS, FakePool, check_pool_fits, generate
from anon_core.folders import (MANIFEST_EVERY_S, TakeOver, changed_outputs, check_not_foreign, check_output_folder,
                               check_separate, exclusive, previous_outputs)
from anon_core.hashing import sha256_file
from anon_core.ingest import alignment_cache, check_input_folder, ingest, io_workers, planned_outputs
from anon_core.journal import Journal, run_key
from anon_core.loss_curves import mean_losses, write_losses_csv
from anon_core.optimize import LOSS_NAMES
from anon_core.params import FalcoParams
from anon_core.photo_detections import DETECTION_CACHE
from anon_core.profiles import Networks, build_networks
from anon_core.progress import Progress, progress_bar
from anon_core.reuse import KEY, METHOD_VERSION, StoredRows, input_ids, merge_rows, row_keys
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
    "status",  # ok | rejected; pending until its batch is written
    "reason",  # machine code of the rejection; of an ok row, "stretched" (not square, --no-align), "flattened" or ""
    "detail",  # human sentence about the rejection or the note
    "duplicate_of",  # input with the same bytes that came first, if any
    "sha256",  # hex sha256 of the input file's bytes ("" when it could not be read): `falco evaluate` checks REAL_DIR
    "latent_index",  # row in latents.npy
    "person",  # identity label the pairing grouped by (params.pairing: identity); "" when the image has none
    "fake_index",  # index (= seed - params.seed) of the paired fake in the pool
    "fake_similarity",  # cosine of real and fake FaRL embeddings
    "identity_similarity",  # cosine of real and anonymized identity embeddings after optimization
    "faces_seen",  # faces the aligner detected (the largest is used); -1 when not aligning
    "other_faces_covered",  # other faces inside the crop, pixelated before it was cut; -1 when not aligning
)
RESULT_COLUMNS = ("latent_index", "fake_index", "fake_similarity", "identity_similarity")  # "" for rejected rows
OUTPUT_DIGESTS = "png_sha256"  # a journal entry's sha256 of each image of its batch as written (a re-run checks them)


@dataclass
class BatchResult:
    ws: np.ndarray  # [B, num_ws, w_dim] float32
    images: np.ndarray  # [B, R, R, 3] uint8
    fake_index: np.ndarray  # [B]
    fake_similarity: np.ndarray  # [B]
    identity_similarity: np.ndarray  # [B]
    history: dict[str, np.ndarray]  # LOSS_NAMES -> [steps, B]


def anonymize_images(nets: Networks, pool: FakePool, real: np.ndarray, params: FalcoParams,
                     fakes: tuple[np.ndarray, np.ndarray] | None = None, show_progress: Progress = False
                     ) -> BatchResult:
    """Embed, pair, invert, optimize and generate for one batch of real uint8 images [B, R, R, 3] at the
    generator's resolution. `fakes`: (fake indices [B], similarities [B]) assigned beforehand over the whole set
    (pairing modes unique and identity); None pairs each image with its nearest fake (the paper's). `show_progress`:
    the optimization's steps (`anon_core.progress`)."""
    if fakes is None:
        indices, similarities = pair(embed_images(nets, real), pool, params.pairing_k)
        fakes = (indices[:, 0], similarities[:, 0])
    fake_index, fake_similarity = fakes
    w_real = invert_images(nets, params, real, show_progress=show_progress)
    result = optimize_images(nets, params, real, w_real, pool.w[fake_index], show_progress=show_progress)
    return BatchResult(
        ws=result.ws,
        images=result.images,
        fake_index=np.asarray(fake_index),
        fake_similarity=np.asarray(fake_similarity),
        identity_similarity=result.identity_similarity,
        history=result.history,
    )


# a journal batch's arrays with one entry per image, and the axis it is on
ROW_AXES = {"ws": 0, "fake_index": 0, "fake_similarity": 0, "identity_similarity": 0,
            **{f"loss_{name}": 1 for name in LOSS_NAMES}}


def key_settings(params: FalcoParams, weights: str, **extra) -> dict:
    """What every row's key (`reuse.row_keys`) hashes besides the row's own input: the method's parameters (not the
    speed settings or the batch size, which change how fast, not what), the weights, how fakes are seeded, the
    method's version, and `extra`."""
    return {"params": {k: v for k, v in params.to_dict().items() if k not in ("speed", "batch_size")},
            "weights": weights, "pool_seeds": POOL_SEEDS, "code": METHOD_VERSION, **extra}


def batch_codes(nets: Networks, pool: FakePool | None, batch: np.ndarray, params: FalcoParams, keys: np.ndarray,
                earlier: StoredRows, fakes: tuple[np.ndarray, np.ndarray] | None = None,
                show_progress: Progress = False) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    """One batch's results (ROW_AXES and each row's `reuse.KEY`), which rows were taken from `earlier` journal
    batches (the rows an earlier run finished under the same key), and the images of the others, which are
    anonymized (`fakes`: their assigned fakes, or None for the nearest; `pool` may be None when every row is found),
    None when there are none."""
    found, reused = earlier.take(keys, ROW_AXES)
    computed, images = {}, None
    if not found.all():
        todo = ~found
        done = anonymize_images(nets, pool, batch[todo], params,
                                None if fakes is None else (fakes[0][todo], fakes[1][todo]), show_progress)
        computed = {"ws": done.ws, "fake_index": done.fake_index, "fake_similarity": done.fake_similarity,
                    "identity_similarity": done.identity_similarity,
                    **{f"loss_{name}": values for name, values in done.history.items()}}
        images = done.images
    return {**merge_rows(found, reused, computed, ROW_AXES), KEY: keys}, found, images


def _batch_results(nets: Networks, pool: FakePool | None, batch: np.ndarray, params: FalcoParams, keys: np.ndarray,
                   earlier: StoredRows, fakes: tuple[np.ndarray, np.ndarray] | None, show_progress: Progress
                   ) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """`batch_codes`, with every row's image (the found rows drawn again from their codes), and how many rows
    were found."""
    result, found, computed = batch_codes(nets, pool, batch, params, keys, earlier, fakes, show_progress)
    images = np.empty(batch.shape, np.uint8)
    if computed is not None:
        images[~found] = computed
    if found.any():
        images[found] = generate(nets.generator, result["ws"][found], device=nets.device)
    return result, images, int(found.sum())


@dataclass
class RunSummary:
    output_dir: Path
    counts: Counter = field(default_factory=Counter)  # "ok" and every rejection reason
    duplicates: int = 0  # anonymized images whose file has the bytes of an earlier one (`duplicate_of`)
    resumed: int = 0  # images an earlier, stopped run with the same arguments had finished (its journal)
    reused: int = 0  # images an earlier run with other inputs had finished under the same settings (its journal)
    stretched: int = 0  # unaligned images that were not square, stretched to the generator's square
    redrawn: int = 0  # journaled images whose file was gone or not the bytes written (damaged, replaced by hand)

    @property
    def ok(self) -> int:
        return self.counts["ok"]

    def describe(self) -> str:
        rejected = {k: v for k, v in sorted(self.counts.items()) if k != "ok"}
        # what is said of the anonymized images goes beside them, not after the rejected, which "of them" would name
        of_anonymized = [f"{self.duplicates} the same file as another input: column duplicate_of in the manifest"
                         ] if self.duplicates else []
        if self.resumed:
            of_anonymized.append(f"{self.resumed} finished by an earlier run and taken from its journal")
        if self.reused:
            of_anonymized.append(f"{self.reused} the same images under the same settings as in an earlier run, "
                                 "taken from its journal")
        text = f"{self.ok} anonymized" + (f" ({'; '.join(of_anonymized)})" if of_anonymized else "")
        text += f", {sum(rejected.values())} rejected"
        if rejected:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in rejected.items()) + ")"
        if self.stretched:
            text += (f", {self.stretched} not square and stretched (reason `stretched` in the manifest; align them "
                     "instead)")
        if self.redrawn:
            text += (f"; {self.redrawn} output image(s) deleted, damaged or replaced since the journal wrote them, "
                     "drawn again from their codes")
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
    show_progress: Progress = True,
    keep_cache: bool = True,
    check_outputs: Callable[[ImageFiles, pd.DataFrame], object] | None = None,
) -> RunSummary:
    """Anonymize every image under `input_dir` (recursively) into `output_dir`.

    Writes `images/<relpath>.png`, `latents.npy` [N_ok, num_ws, w_dim] in manifest order of the ok rows,
    `manifest.csv`, `losses.csv` (per-step losses averaged over images) and `params.json`. Existing files in
    `output_dir` are overwritten, never the folder deleted; the images an earlier run's manifest lists that this
    run will not write (inputs since removed or now rejected) are removed, nothing else (`folders.remove_outputs`). The dataset is read by `anon_core.ingest.ingest` (the
    four dataset arguments: params.yaml's `data:` section, `ingest.data_settings`), as the `real_images` asset
    reads it: unreadable files and images without a face become `rejected` rows, `dataset`
    (celebahq | lfw | folder | auto) picks the layout and its labels, carried into the manifest, and `align`
    (default: on, except for CelebA-HQ, which is aligned already) FFHQ-aligns the largest face of each image. The
    ok images are then read a batch ahead of the one being optimized, and written by another thread, so the
    device is not left waiting on either. Aligned crops of the real faces are cached in `output_dir/.align_cache`
    for re-runs, or with `keep_cache=False` in a temporary folder there that the run removes. `check_outputs`, when
    given, is called once every output is written, while those crops still exist: with the real images of the ok
    rows (their aligned crops, read on indexing) and their manifest rows (`input`, `output`), in the same order
    (`falco anonymize`'s privacy check).
    """
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    check_separate(input_folder=input_dir, output_folder=output_dir)
    check_input_folder(input_dir, need_image=False)  # before the output folder is made
    check_output_folder(output_dir, input_dir)
    with exclusive(output_dir, "output folder"), alignment_cache(output_dir, keep_cache) as cache:
        if not keep_cache:  # asked for none: nor an earlier photo-mode run's faces found
            shutil.rmtree(output_dir / DETECTION_CACHE, ignore_errors=True)
        summary = _anonymize_folder(input_dir, output_dir, params, dataset, labels_csv, align, align_detector, device,
                                    show_progress, cache, check_outputs)
        shutil.rmtree(output_dir / DETECTION_CACHE, ignore_errors=True)  # of the photos of an earlier photo-mode run
        return summary


def _anonymize_folder(input_dir, output_dir, params, dataset, labels_csv, align, align_detector, device,
                      show_progress, align_cache, check_outputs) -> RunSummary:
    device = resolve_device(device)
    nets = build_networks(params.profile, device=device)
    check_params_fit(nets, params)
    resolution = nets.generator.config.resolution
    reading = progress_bar(None, desc="read", unit="file", enable=show_progress)

    def on_file(done: int, total: int) -> None:
        reading.total = total
        reading.update(1)

    labels_sha256 = sha256_file(labels_csv) if labels_csv is not None else None  # the identities as ingest read them
    files = load_dataset(dataset, input_dir, labels_csv)
    check_identities(params.pairing, files["identity"], labels_csv)  # before the alignment, as the pool below
    names = planned_outputs(files)
    # before ingest writes the alignment cache: a user's own file where an output goes stops the run
    check_not_foreign(output_dir, set(names.values()) - previous_outputs(output_dir))
    ingested = ingest(input_dir, resolution, dataset, labels_csv, align, align_detector, align_cache, device, on_file,
                      table=files, names=names)
    reading.close()
    table = ingested.table
    if table.empty:
        raise FalcoError(f"{input_dir} holds no files to anonymize")
    requested_batch_size = params.batch_size
    params = resolved_for(nets, params)  # "auto" -> what fits this device, what it means there
    extra = {"dataset": ingested.dataset, "aligned": ingested.alignment is not None,
             "batch_size_requested": requested_batch_size, "alignment": ingested.alignment,
             "dataset_warnings": ingested.warnings}
    persons = _persons(table, params.pairing)
    ok_rows = np.flatnonzero((table["status"] == "ok").to_numpy())
    check_identities(params.pairing, persons[ok_rows], labels_csv)  # the labelled images may all be rejected
    check_pool_holds(params.pairing, params.pool_size, len(ok_rows), persons[ok_rows])  # before any fake is made
    check_pool_fits(params.pool_size, nets.generator.config.w_dim, nets.farl.config.output_dim)  # and before any write
    # who is who decides the pairing: a changed labels CSV is another run, not its journal's; the images of a run
    # written by another GREY_RULE are written again (their codes are taken by key, as any earlier run's)
    journal = Journal(output_dir, run_key({"params": params.to_dict(), "weights": nets.weights, **extra,
                                           "pool_seeds": POOL_SEEDS, "images": GREY_RULE,
                                           "files": table[["input", "sha256", "status"]].values.tolist(),
                                           "persons": persons.tolist()}), start=False)
    ok = ingested.ok
    grey = ok["grey"].to_numpy(bool)  # black-and-white inputs, whose faces are written grey
    manifest = table.rename(columns={"image": "output"})
    manifest = manifest.assign(person=persons, **{name: "" for name in RESULT_COLUMNS})
    manifest = manifest[[*MANIFEST_COLUMNS, *ingested.labels]]
    manifest.loc[ok_rows, "status"] = "pending"  # until its batch is finished; `output` names its image already
    parts = batch_slices(len(ok), params.batch_size)
    results: list[dict[str, np.ndarray] | None] = [journal.finished(i) for i in range(len(parts))]
    todo = [i for i, r in enumerate(results) if r is None]
    # Images that a run with other inputs finished (its batches are still in the journal) under the same settings
    # are taken from there, by their keys: new images added to a folder are the only ones optimized.
    earlier = StoredRows(journal.earlier() if todo else [])
    settings = key_settings(params, nets.weights, aligned=extra["aligned"], alignment=extra["alignment"])
    last_write = [float("-inf")]
    bar = progress_bar(None, desc="anonymize", unit="image", total=len(ok), enable=show_progress)
    take_over = TakeOver(output_dir, journal, set(ok["image"]), lambda: _write_manifest(output_dir, manifest))

    def finish(index: int, result: dict[str, np.ndarray], images: np.ndarray | None) -> None:
        """Write a batch's images, then its journal entry, then the manifest with its rows done (writer thread)."""
        take_over()
        part = parts[index]
        if images is not None:
            images = keep_grey(images, grey[part])
            digests = [""] * (part.stop - part.start)

            def write(i: int, name: str) -> None:
                digests[i] = save_png(output_dir / "images" / name, images[i])

            for i, name in enumerate(ok["image"][part]):
                png_writer.submit(write, i, name)
            png_writer.wait()  # the journal names a batch done only once its images are on disk
            journal.record(index, {**result, OUTPUT_DIGESTS: np.array(digests, dtype=str)})
        rows = ok_rows[part]
        manifest.loc[rows, "status"] = "ok"
        manifest.loc[rows, "latent_index"] = [str(i) for i in range(part.start, part.stop)]
        manifest.loc[rows, "fake_index"] = [str(int(i)) for i in result["fake_index"]]
        manifest.loc[rows, "fake_similarity"] = [f"{v:.6f}" for v in result["fake_similarity"]]
        manifest.loc[rows, "identity_similarity"] = [f"{v:.6f}" for v in result["identity_similarity"]]
        if time.monotonic() - last_write[0] >= MANIFEST_EVERY_S:  # valid at every moment: unfinished rows say
            _write_manifest(output_dir, manifest)  # `pending`; the end of the run writes it whole
            last_write[0] = time.monotonic()
        bar.update(part.stop - part.start)

    assigned = None
    if todo and params.pairing != "nearest":  # one assignment over the whole set, before any batch
        pool = build_pool(nets, params, show_progress=show_progress)
        features = embed_images(nets, ingested.images(workers=io_workers(device)))
        fake_index, fake_similarity, _ = assign_fakes(features, pool.features, params.pairing, persons[ok_rows])
        assigned = (fake_index, fake_similarity)
        keys = row_keys(settings, input_ids(ok["sha256"]), fake_index)  # its fake, chosen with the others'
    else:  # its nearest fake, which the image and the pool's settings decide
        keys = row_keys(settings, input_ids(ok["sha256"]))
        missing = any(key not in earlier for i in todo for key in keys[parts[i]].tolist())
        pool = build_pool(nets, params, show_progress=show_progress) if missing else None
    reused, redrawn = [0], [0]
    # `finish` runs batch after batch in one thread (the manifest's rows, the journal's order); each batch's PNGs are
    # encoded by `png_writer`'s threads side by side
    with WriteBehind(io_workers(device)) as png_writer, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="falco-finish") as writer:
        # a journaled batch is finished, but its images may have been deleted, damaged or replaced since: drawn
        # again from its codes
        writes = []
        for i, r in enumerate(results):
            if r is not None:
                changed = changed_outputs(output_dir, ok["image"][parts[i]], r.get(OUTPUT_DIGESTS))
                redrawn[0] += len(changed)
                writes.append(writer.submit(finish, i, r, generate(nets.generator, r["ws"], device=device)
                                            if changed else None))
        images = ingested.images(workers=io_workers(device))
        for index, (_, batch) in zip(todo, read_parts(images, [parts[i] for i in todo])):
            part = parts[index]
            results[index], batch_images, taken = _batch_results(
                nets, pool, batch, params, keys[part], earlier,
                None if assigned is None else (assigned[0][part], assigned[1][part]), show_progress)
            reused[0] += taken
            writes.append(writer.submit(finish, index, results[index], batch_images))
            for write in writes:  # a batch that could not be written stops the run now, not after every batch
                if write.done() and write.exception() is not None:
                    write.result()
        for write in writes:
            write.result()  # raises the first failed write, if any
    take_over()  # where no batch was written (no usable image)
    bar.close()

    latents = [r["ws"] for r in results]
    histories = [{name: r[f"loss_{name}"] for name in LOSS_NAMES} for r in results]
    labels = {"labels_csv": str(Path(labels_csv).resolve()) if labels_csv is not None else None,  # for evaluate
              "labels_sha256": labels_sha256}
    _write_outputs(output_dir, manifest, latents, histories, params, nets, device, input_dir, extra | labels)
    journal.end()  # the batches of earlier runs: this run's own batches hold the images it took from them
    duplicates = int(((table["duplicate_of"] != "") & (table["status"] == "ok")).sum())
    summary = RunSummary(output_dir=output_dir, duplicates=duplicates,
                         resumed=len(ok) - sum(parts[i].stop - parts[i].start for i in todo), reused=reused[0],
                         redrawn=redrawn[0])
    summary.counts.update(table["reason"].where(table["status"] != "ok", "ok"))
    summary.stretched = int(((table["status"] == "ok") & (table["reason"] == "stretched")).sum())
    if check_outputs is not None:
        check_outputs(ingested.images(workers=io_workers(device)), ok.rename(columns={"image": "output"}))
    return summary


def _persons(table, pairing: str) -> np.ndarray:
    """Per row, the identity label the pairing groups by: the dataset's `identity` label in identity mode, "" for
    rows without one (each such image is its own person) and in the other modes."""
    if pairing != "identity" or "identity" not in table.columns:
        return np.full(len(table), "", dtype=object)
    return person_labels(table["identity"])


def _write_manifest(output_dir: Path, manifest) -> None:
    with atomic_path(output_dir / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False, encoding="utf-8")


def _write_outputs(output_dir, manifest, latents, histories, params, nets, device, input_dir, extra) -> None:
    _write_manifest(output_dir, manifest)
    num_ws, w_dim = nets.generator.num_ws, nets.generator.config.w_dim
    stacked = np.concatenate(latents) if latents else np.zeros((0, num_ws, w_dim), dtype=np.float32)
    with atomic_path(output_dir / "latents.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, stacked.astype(np.float32))
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
