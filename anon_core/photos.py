"""`falco anonymize --mode photo`: every face of every photo anonymized in place.

For each photo (any size, any number of faces): MTCNN finds all faces down to `photo.min_face_size`;
anon_core.photo_faces decides for each whether the method anonymizes it or a cover hides it; the faces to anonymize
are FFHQ-aligned at the generator's resolution, anonymized by the method in batches of `batch_size` faces taken
across photos (pairing, inversion, optimization: anon_core.pipeline.anonymize_images), generated from their codes
and pasted back (anon_core.compose). A photo is written when its last face is done: same size as the input, lossless
PNG by default, no metadata carried over (EXIF, GPS). Pixels away from every face keep their exact values.

Memory holds the photos whose faces are still queued (about one batch of faces) and no crop of a real face is
written to disk; the faces found in each photo (boxes and landmarks) are kept (anon_core.photo_detections), so a
photo is searched once. A stopped run, rerun with the same arguments, takes its finished batches from the journal
(anon_core.journal: the codes; their images are generated again) and redoes the rest; a run over a folder that
changed since (photos added, removed, renamed or replaced) takes each face an earlier run finished from its journal
by the face's key (its aligned crop and the settings: anon_core.reuse), so only the new faces are optimized.
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from anon_core.acceleration import resolved_for
from anon_core.atomic import atomic_path, write_bytes_atomic
from anon_core.compose import changed_pixels, cover_box, paste_face
from anon_core.data.align import FaceAligner, warp_quad
from anon_core.data.colour import TONE_RULE
from anon_core.data.datasets import load_dataset
from anon_core.data.image_io import (MAX_PIXELS, MIN_SIDE, ImageRejected, deepen, displayed_size, encode_png,
                                     flattened, load_deep_grey, load_rgb, read_listed, stores_grey)
from anon_core.data.scan import ScannedFile
from anon_core.errors import FalcoError
from anon_core.fake_pool import POOL_SEEDS, FakePool, check_pool_fits, generate
from anon_core.folders import (MANIFEST_EVERY_S, TakeOver, check_output_folder, check_separate, exclusive,
                               previous_inputs, remove_outputs)
from anon_core.hashing import prune_by_digest
from anon_core.ingest import dataset_files, io_workers, named_files, output_names, remove_alignment_crops
from anon_core.journal import Journal, run_batches, run_key
from anon_core.loss_curves import mean_losses, write_losses_csv
from anon_core.optimize import LOSS_NAMES
from anon_core.params import FalcoParams
from anon_core.photo_detections import DETECTION_CACHE, FoundFaces, search_key
from anon_core.photo_faces import (DETECTION_RULE, FALLBACK_REASONS, PhotoFace, PhotoSettings,
                                   cut_by_edge_faces, find_faces, plan_faces)
from anon_core.pipeline import batch_codes, key_settings
from anon_core.prefetch import WriteBehind, read_ahead
from anon_core.profiles import Networks, build_networks
from anon_core.progress import Progress, progress_bar
from anon_core.reuse import KEY, StoredRows, row_keys
from anon_core.stages import build_pool, check_params_fit, resolve_device

__all__ = ["PHOTO_MANIFEST_COLUMNS", "PhotoSummary", "anonymize_photos", "parse_numbers",
           "read_photo_manifest"]

PHOTO_MANIFEST_COLUMNS = (
    "input",  # relative path of the photo under the input folder
    "output",  # relative path of the written photo under OUTPUT_DIR/images ("" when rejected)
    "kind",  # photo: one row per file; face: one row per detected face, after its photo's row
    "face",  # index of the face in its photo, largest box first ("" on photo rows)
    "status",  # photo rows: ok | rejected, pending until the photo is written; face rows: anonymized | covered
    "reason",  # photo rows: the rejection's code; face rows: why it was covered (FALLBACK_REASONS)
    "detail",  # human sentence for the reason; of a photo row, what reading it did (turned, frames or alpha lost)
    "faces",  # photo rows: faces detected
    "sha256",  # photo rows: hex sha256 of the input file's bytes ("" when it could not be read)
    "box",  # face rows: x1 y1 x2 y2 in photo pixels
    "score",  # face rows: the detector's face probability
    "landmarks",  # face rows: 10 numbers, (x, y) of eyes, nose and mouth corners
    "cover",  # face rows: pixelate | blur for covered faces ("" when anonymized)
    "latent_index",  # face rows: row in latents.npy of an anonymized face
    "fake_index",  # paired fake in the pool
    "fake_similarity",  # cosine of real and fake FaRL embeddings
    "identity_similarity",  # cosine of real and anonymized identity embeddings after optimization
)
JPEG_QUALITY = 95
READ_AHEAD_PIXELS = 96_000_000
"""Pixels of the photos read ahead of the networks at once (besides one photo, however large): each holds its
decoded pixels, and while its faces are searched, MTCNN's pyramid and the photo extended by its mirror image (about
50 bytes a pixel at the peak, on the CPU). Four 24 MP photos, or eight 12 MP ones for a GPU's eight readers."""
TURNED_NOTE = "found with the photo turned"  # in the detail of a photo some of whose faces were found turned


@dataclass
class PhotoSummary:
    output_dir: Path
    photos: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> photos
    anonymized: int = 0  # faces
    covered: Counter = field(default_factory=Counter)  # reason -> faces
    resumed: int = 0  # faces whose batch an earlier run with the same arguments finished
    reused: int = 0  # faces an earlier run over other photos finished under the same settings (the same crop)
    below_min_face_size: int = 0  # photos whose shorter side is under photo.min_face_size: no face can be found
    min_face_size: int = 0
    turned: int = 0  # photos with faces found only with the photo turned (stored sideways or upside down, or lying)
    found_earlier: int = 0  # photos read whose faces an earlier search found (the detection cache): not searched
    faceless: list[str] = field(default_factory=list)  # photos read in which no face was found, written unchanged

    @property
    def faces(self) -> int:
        return self.anonymized + sum(self.covered.values())

    @classmethod
    def from_manifest(cls, output_dir: Path, manifest: pd.DataFrame) -> PhotoSummary:
        """What a finished run's manifest.csv (`read_photo_manifest`) records; the faces taken from a journal and
        the photos below photo.min_face_size are not in it, so they count 0."""
        photos, faces = manifest[manifest["kind"] == "photo"], manifest[manifest["kind"] == "face"]
        read = photos[photos["status"] == "ok"]
        covered = faces[faces["status"] == "covered"]
        return cls(output_dir=Path(output_dir), photos=len(photos),
                   rejected=Counter(photos.loc[photos["status"] == "rejected", "reason"]),
                   anonymized=int((faces["status"] == "anonymized").sum()), covered=Counter(covered["reason"]),
                   turned=int(read["detail"].str.contains(TURNED_NOTE, regex=False).sum()),
                   faceless=read.loc[read["faces"] == "0", "input"].tolist())

    def describe(self) -> str:
        read = self.photos - sum(self.rejected.values())  # the rejected files are counted after, as files
        text = f"{self.faces} face(s) in {read} photo(s): {self.anonymized} anonymized"
        covered = sum(self.covered.values())
        text += f", {covered} covered"
        if covered:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.covered.items())) + ")"
        if self.rejected:
            text += f"; {sum(self.rejected.values())} file(s) rejected (" + ", ".join(
                f"{k}: {v}" for k, v in sorted(self.rejected.items())) + ")"
        if self.resumed:
            text += f"; {self.resumed} face(s) taken from an earlier run's journal"
        if self.reused:
            text += (f"; {self.reused} face(s) the same as in an earlier run under the same settings, taken from its "
                     "journal")
        if self.found_earlier:
            text += f"; {self.found_earlier} photo(s) not searched again, their faces as an earlier search of the same bytes found them (in an earlier run, or of an identical file in this one)"
        if self.turned:
            text += (f"; {self.turned} photo(s) with faces {TURNED_NOTE} (stored sideways or upside down, or a face "
                     "lying; manifest.csv's detail)")
        if self.faceless:
            shown = ", ".join(self.faceless[:3]) + (", ..." if len(self.faceless) > 3 else "")
            text += (f"; {len(self.faceless)} photo(s) in which no face was found, written unchanged ({shown}): look "
                     "at them, a face the detector missed is not anonymized")
        if self.below_min_face_size:
            text += (f"; {self.below_min_face_size} photo(s) smaller than photo.min_face_size ({self.min_face_size} "
                     "px) on their shorter side, where no face can be found: lower --min-face-size")
        return text


@dataclass
class _Read:
    """A photo as read (`_PhotoRun._read`): its pixels with the covers applied, its faces and the aligned crops of
    those to anonymize, all in the photo as stored."""

    image: np.ndarray  # uint8 [H, W, 3]
    faces: list[PhotoFace]
    crops: list[np.ndarray]  # of the faces to anonymize, in order
    turns: list[int]  # the quarter turns of the photo each face was found in (`find_faces`)
    left_out: list[str]  # what the decoding left out (`image_io.flattened`)
    grey: bool  # the file stores grey pixels (`image_io.stores_grey`)
    deep: np.ndarray | None  # a 16-bit grey file's own levels (`image_io.load_deep_grey`)
    searched: bool  # its faces were searched for, not found in the detection cache


@dataclass
class _Photo:
    """A photo on its way: its pixels with the covers applied, its faces, and the faces still waiting."""

    row: int  # index in the file list
    file: ScannedFile
    output: str
    image: np.ndarray  # uint8 [H, W, 3], covers applied; anonymized faces pasted in as they come
    faces: list[PhotoFace]
    waiting: int  # anonymized faces not pasted yet
    grey: bool  # the file stores grey pixels: written grey (`write_photo`)
    deep: np.ndarray | None = None  # uint16 [H, W]: a 16-bit grey file's own levels, written back at that depth


def anonymize_photos(input_dir: Path, output_dir: Path, params: FalcoParams, settings: PhotoSettings,
                     device: str | torch.device = "cpu", show_progress: Progress = True, nets: Networks | None = None,
                     pool: FakePool | None = None, relpaths: list[str] | None = None,
                     other_runs: Sequence[Path] = (), keep_earlier_batches: bool = False,
                     reuse: bool = True, detection_cache: Path | None = None,
                     keep_detections: bool = True) -> PhotoSummary:
    """Anonymize every face of every image under `input_dir` (recursively; only `relpaths` when given) into
    `output_dir`. `nets` and `pool` (with its features): networks and fake pool already built (the Dagster assets'),
    else built here on `device`. `other_runs`: output folders of other runs (the pipeline's other shards) whose
    journals hold faces to take by key, as this folder's earlier runs do; `keep_earlier_batches`: leave this folder's
    earlier batches for them (`journal.end_latest_run` removes them later), rather than removing them at the end.
    `reuse`: False optimizes every face, taking nothing from any journal (`falco pipeline --fresh`; the faces found
    in each photo are still read from the detection cache, as aligned mode's crops are from the alignment cache:
    a search gives the same faces). The faces found in each photo are kept (anon_core.photo_detections) in
    `detection_cache` (the caller's, e.g. shared by a sweep's variants, and pruned by it), by default in
    `output_dir/.detection_cache`, pruned to this run's photos at its end; `keep_detections=False` keeps none (and
    removes that folder). An aligned run's `.align_cache` in `output_dir` goes once the run is done (or at the start
    with `keep_detections=False`): no output of the folder comes from those crops of real faces any more.

    Writes `images/<relpath>` (PNG, or with `settings.output_format == "same"` JPEG inputs as JPEG), `manifest.csv`
    (PHOTO_MANIFEST_COLUMNS: a row per photo and a row per face), `latents.npy` (codes of the anonymized faces, in
    `latent_index` order), `losses.csv` and `params.json`. Unreadable files become rejected photo rows; a photo
    without a face is written unchanged (its pixels, without the file's metadata)."""
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    check_separate(input_folder=input_dir, output_folder=output_dir)
    check_output_folder(output_dir, input_dir)
    if params.pairing != "nearest":
        raise FalcoError(f"pairing = {params.pairing!r}: photo mode pairs each face with its nearest fake (faces in "
                         "photos carry no identity labels); use --pairing nearest")
    nets = nets or build_networks(params.profile, device=resolve_device(device))
    files = dataset_files(load_dataset("folder", input_dir, None))
    if relpaths is not None:
        wanted = set(relpaths)
        files = [f for f in files if f.relpath in wanted]
    if not files:
        raise FalcoError(f"{input_dir} holds no files to anonymize" + (" among the ones asked for" if relpaths else ""))
    own_cache = output_dir / DETECTION_CACHE
    with exclusive(output_dir, "output folder"):
        # a killed aligned --no-cache run's crops of real faces; with --no-cache, the kept ones too (asked for none)
        remove_alignment_crops(output_dir, kept=not keep_detections)
        if not keep_detections:
            shutil.rmtree(own_cache, ignore_errors=True)
        cache = None if not keep_detections else FoundFaces(
            detection_cache or own_cache, search_key(settings, nets.device))
        run = _PhotoRun(input_dir, output_dir, params, settings, nets, pool, files, show_progress, other_runs, reuse,
                        cache)
        summary = run.run(end_journal=not keep_earlier_batches)
        if cache is not None and detection_cache is None:
            prune_by_digest(cache.entries.folder, {f.sha256 for f in files if f.sha256})  # of photos since removed
        remove_alignment_crops(output_dir)  # an earlier aligned run's: no output here comes from them any more
        return summary


def _turned_notes(turns: list[int]) -> list[str]:
    """The photo row's note on its faces found only with the photo turned (`turns`: each face's quarter turns)."""
    if not any(turns):
        return []
    angles = " or ".join(str(90 * k) for k in sorted(set(turns) - {0}))
    return [f"{sum(k != 0 for k in turns)} of its {len(turns)} face(s) {TURNED_NOTE} {angles} degrees "
            "counter-clockwise (stored sideways or upside down, or lying); the photo is written as stored"]


class _PhotoRun:
    def __init__(self, input_dir, output_dir, params, settings, nets, pool, files, show_progress,
                 other_runs=(), reuse=True, found_faces: FoundFaces | None = None) -> None:
        self.input_dir, self.output_dir, self.settings, self.device = input_dir, output_dir, settings, nets.device
        self.show_progress = show_progress
        self.nets = nets
        check_params_fit(self.nets, params)
        if pool is None:  # drawn at the first batch of faces: whether it fits is checked here, before any write
            check_pool_fits(params.pool_size, nets.generator.config.w_dim, nets.farl.config.output_dim)
        self.requested_batch_size = params.batch_size
        self.params = resolved_for(self.nets, params)
        self.resolution = self.nets.generator.config.resolution
        self.detector = FaceAligner(self.resolution, "mtcnn", device=self.device,
                                    min_face_size=settings.min_face_size)
        self.files = files
        self.pixels = {f.relpath: _read_cost(f) for f in files}  # what reading each photo costs
        self.outputs = _output_names(self.files, settings.output_format)
        self.journal = Journal(output_dir, run_key({
            "mode": "photo", "params": self.params.to_dict(), "weights": self.nets.weights,
            "pool_seeds": POOL_SEEDS, "detection": DETECTION_RULE, "paste": TONE_RULE,
            "photo": settings.to_dict(), "files": [[f.relpath, f.sha256, f.skip_reason] for f in self.files]}),
            start=False)
        # A run stopped by an earlier falco named no output for a photo it rejected, while the image an earlier run
        # wrote for that photo stayed until the end of the run: it is still falco's
        rejected_before = {self.outputs[name] for name in previous_inputs(output_dir, "rejected") if name in self.outputs}
        self.take_over = TakeOver(output_dir, self.journal, set(self.outputs.values()), self._write_manifest,
                                  also_earlier=rejected_before)
        # a face's codes are decided by its aligned crop and these: its key in every run's journal batches
        self.face_context = key_settings(self.params, self.nets.weights, mode="photo")
        # the batches of runs over other photos or settings here; those of `other_runs` are read only when a face
        # is not found here (a shard's photos moved), not when the shard's own faces are all here (a new cover)
        self.earlier = StoredRows(self.journal.earlier() if reuse else [])
        self.other_runs = list(other_runs) if reuse else []
        self.reuse = reuse
        self.found_faces = found_faces
        self.pool = pool
        self.rows: dict[int, list[dict]] = {}  # file index -> its manifest rows (photo row first)
        self.results: list[dict[str, np.ndarray]] = []  # per batch, in order
        self.written: set[int] = set()  # file indices whose photo is on disk (added by the writer's threads)
        self.last_manifest = float("-inf")
        self.summary = PhotoSummary(output_dir=output_dir, min_face_size=settings.min_face_size)

    # -- reading ---------------------------------------------------------------------------------------------
    def _read(self, f: ScannedFile) -> _Read:
        """Decode, detect, plan, apply the covers and cut out the faces to anonymize (worker thread), all of it in
        the photo as stored."""
        if f.skip_reason:
            raise ImageRejected(f.skip_reason, f.skip_detail())
        data = read_listed(f.path, f.sha256)  # everything below reads these bytes, those its digest names
        image = load_rgb(f.path, data=data)
        found = self.found_faces.get(f.sha256, image.shape) if self.found_faces else None
        searched = found is None
        if searched:
            found = find_faces(self.detector, image, self.settings.turns)
            found += cut_by_edge_faces(self.detector, image, found)
            if self.found_faces is not None:
                self.found_faces.put(f.sha256, image.shape, found)
        faces = plan_faces([face.detection for face in found], self.settings, [face.cut_by_edge for face in found])
        crops = []
        for face in faces:
            if face.anonymized:
                crops.append(warp_quad(image, face.quad, self.resolution))
        covered = image
        for face in faces:
            if not face.anonymized:
                covered = cover_box(covered, face.box, face.action)
        grey = stores_grey(f.path, data)
        return _Read(covered, faces, crops, [face.turns for face in found], flattened(f.path, data), grey,
                     load_deep_grey(f.path, data) if grey else None, searched)

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, end_journal: bool = True) -> PhotoSummary:
        # counted in pixels, what reading a photo costs (decoding, and MTCNN over it turned and mirrored): counted
        # in photos, a folder of large and small photos got an hour's time left after its first large one
        reading = progress_bar(None, desc="read", unit="pixel", total=sum(self.pixels.values()), unit_scale=True,
                               enable=self.show_progress)
        self.bar = progress_bar(None, desc="anonymize", unit="face", enable=self.show_progress)
        workers = io_workers(self.device)
        with WriteBehind(workers) as self.writer:
            self._run(reading, workers)
        self.bar.close()  # the inner bar first: closed the other way round, tqdm leaves the cursor past its line
        reading.close()
        self.take_over()  # where nothing was written (every photo rejected)
        self._write_outputs()
        written = {r["output"] for rows in self.rows.values() for r in rows if r["kind"] == "photo" and r["output"]}
        remove_outputs(self.output_dir, self.take_over.previous - written)  # e.g. of photos rejected this time
        if end_journal:
            self.journal.end()  # the batches of runs with other settings
        return self.summary

    def _run(self, reading, workers: int) -> None:
        """Read every photo, cover or queue its faces, anonymize the queue a batch at a time, and write each photo
        once all its faces are done."""
        waiting: dict[int, _Photo] = {}
        queue: list[tuple[int, int, np.ndarray]] = []  # (file index, face index, aligned crop)
        ahead = read_ahead(self._read, self.files, workers, depth=2 * workers,
                           weight=lambda f: self.pixels[f.relpath], budget=READ_AHEAD_PIXELS)
        for row, (f, reading_future) in enumerate(ahead):
            self.summary.photos += 1
            try:
                read = reading_future.result()
            except ImageRejected as rejected:
                self._count_read(reading, row, f)
                stale = {self.outputs.get(f.relpath)} & self.take_over.previous
                if stale:  # the earlier run's image of this photo goes before any manifest lists the photo rejected
                    self.take_over()
                    remove_outputs(self.output_dir, stale)
                self.summary.rejected[rejected.reason] += 1
                self.rows[row] = [self._photo_row(f, "", "rejected", rejected.reason, f.named(rejected.detail), -1)]
                continue
            self._count_read(reading, row, f)
            image, faces, crops = read.image, read.faces, read.crops
            self.summary.found_earlier += not read.searched
            if min(image.shape[:2]) < self.settings.min_face_size:
                self.summary.below_min_face_size += 1
            photo = _Photo(row, f, self.outputs[f.relpath], image, faces, waiting=len(crops), grey=read.grey,
                           deep=read.deep)
            notes = _turned_notes(read.turns) + read.left_out
            detail = f"{f.relpath}: {'; '.join(notes)}" if notes else ""
            self.summary.turned += any(read.turns)
            if not faces:
                self.summary.faceless.append(f.relpath)
            self.rows[row] = [self._photo_row(f, photo.output, "ok", "", detail, len(faces)),
                              *(self._face_row(photo, face) for face in faces)]
            if self.take_over.done and time.monotonic() - self.last_manifest >= MANIFEST_EVERY_S:
                self._write_manifest()
            for face in faces:
                if not face.anonymized:
                    self.summary.covered[face.reason] += 1
            if not crops:
                self._write(photo)
                continue
            waiting[row] = photo
            self.bar.total = (self.bar.total or 0) + len(crops)
            queue += [(row, face.index, crop) for face, crop in zip((x for x in faces if x.anonymized), crops)]
            while len(queue) >= self.params.batch_size:
                self._anonymize(queue[: self.params.batch_size], waiting)
                queue = queue[self.params.batch_size:]
        if queue:
            self._anonymize(queue, waiting)

    def _count_read(self, reading, row: int, f: ScannedFile) -> None:
        reading.set_postfix_str(f"{row + 1}/{len(self.files)} photos", refresh=False)
        reading.update(self.pixels[f.relpath])

    def _anonymize(self, items: list[tuple[int, int, np.ndarray]], waiting: dict[int, _Photo]) -> None:
        """One batch of faces: anonymized (or taken from the journal), generated, pasted into their photos; the
        photos that are complete are written."""
        index = len(self.results)
        crops = np.stack([crop for _, _, crop in items])
        keys = row_keys(self.face_context, list(crops))
        result = self.journal.finished(index) if self.reuse else None
        if result is not None and not np.array_equal(result.get(KEY), keys):
            # the batch holds other faces (the photos' faces were found otherwise): it and the later ones give their
            # faces by key, not by place
            self.earlier = StoredRows([*self.earlier.stored, *self.journal.set_aside(index)])
            result = None
        if result is None:
            missing = not all(key in self.earlier for key in keys.tolist())
            if missing and self.other_runs:
                self.earlier = StoredRows([*self.earlier.stored, *(b for run in self.other_runs
                                                                   for b in run_batches(run))])
                self.other_runs = []
                missing = not all(key in self.earlier for key in keys.tolist())
            if missing and self.pool is None:
                self.pool = build_pool(self.nets, self.params, show_progress=self.show_progress)
            result, found, _ = batch_codes(self.nets, self.pool, crops, self.params, keys, self.earlier,
                                           show_progress=self.show_progress)
            self.summary.reused += int(found.sum())
            self.take_over()
            self.journal.record(index, result)
        else:
            self.summary.resumed += len(items)
        self.results.append(result)
        first_latent = sum(len(r["ws"]) for r in self.results[:-1])
        generated = generate(self.nets.generator, result["ws"], device=self.device)
        for i, (row, face_index, _) in enumerate(items):
            photo = waiting[row]
            face = photo.faces[face_index]
            photo.image = paste_face(photo.image, generated[i], face.quad)
            self.rows[row][1 + face_index].update(
                latent_index=str(first_latent + i), fake_index=str(int(result["fake_index"][i])),
                fake_similarity=f"{result['fake_similarity'][i]:.6f}",
                identity_similarity=f"{result['identity_similarity'][i]:.6f}")
            self.summary.anonymized += 1
            photo.waiting -= 1
            if photo.waiting == 0:
                self._write(waiting.pop(row))
        self.bar.update(len(items))

    # -- writing ---------------------------------------------------------------------------------------------
    def _write(self, photo: _Photo) -> None:
        """Hand a finished photo to the writer's threads (a 12-megapixel PNG takes seconds to encode); the manifest
        calls it done once it is on disk."""
        def write() -> None:
            deep = None if photo.deep is None else \
                (photo.deep, changed_pixels(photo.deep.shape, photo.faces, self.resolution))
            write_photo(self.output_dir / "images" / photo.output, photo.image, grey=photo.grey, deep=deep)
            self.written.add(photo.row)

        self.take_over()
        self.writer.submit(write)

    def _photo_row(self, f: ScannedFile, output: str, status: str, reason: str, detail: str, faces: int) -> dict:
        return {"input": f.relpath, "output": output, "kind": "photo", "status": status, "reason": reason,
                "detail": detail, "faces": str(faces) if faces >= 0 else "", "sha256": f.sha256 or ""}

    def _face_row(self, photo: _Photo, face: PhotoFace) -> dict:
        """The face's row; its box and landmarks in the photo as stored."""
        box, landmarks = face.box, face.landmarks
        return {
            "input": photo.file.relpath, "output": photo.output, "kind": "face", "face": str(face.index),
            "status": "anonymized" if face.anonymized else "covered", "reason": face.reason,
            "detail": FALLBACK_REASONS.get(face.reason, ""),
            "box": " ".join(f"{v:.1f}" for v in box), "score": f"{face.score:.4f}",
            "landmarks": " ".join(f"{v:.2f}" for v in landmarks.ravel()),
            "cover": "" if face.anonymized else face.action,
        }

    def _write_manifest(self) -> None:
        """manifest.csv as of now: the rows of every photo written or rejected, a `pending` row (with the output it
        will have) for each other photo."""
        written = set(self.written)  # a copy: the writer's threads add to it
        rows = []
        for index, f in enumerate(self.files):
            done = self.rows.get(index)
            if done is not None and (index in written or done[0]["status"] == "rejected"):
                rows += done
            else:
                rows.append(self._photo_row(f, self.outputs.get(f.relpath, ""), "pending", "", "", -1))
        manifest = pd.DataFrame(rows, columns=list(PHOTO_MANIFEST_COLUMNS), dtype=object).fillna("")
        with atomic_path(self.output_dir / "manifest.csv") as tmp:
            manifest.to_csv(tmp, index=False, encoding="utf-8")
        self.last_manifest = time.monotonic()

    def _write_outputs(self) -> None:
        self._write_manifest()  # every photo is written by now
        g = self.nets.generator
        ws = [r["ws"] for r in self.results]
        stacked = np.concatenate(ws) if ws else np.zeros((0, g.num_ws, g.config.w_dim), np.float32)
        with atomic_path(self.output_dir / "latents.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, stacked.astype(np.float32))
        histories = [{name: r[f"loss_{name}"] for name in LOSS_NAMES} for r in self.results]
        write_losses_csv(self.output_dir / "losses.csv", mean_losses(histories, self.params.optimization.steps))
        record = {
            "mode": "photo", "params": self.params.to_dict(), "photo": self.settings.to_dict(),
            "batch_size_requested": self.requested_batch_size, "profile_weights": self.nets.weights,
            "device": str(self.device), "input_dir": str(self.input_dir), "num_ws": g.num_ws,
            "w_dim": g.config.w_dim, "resolution": self.resolution,
            "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        }
        write_bytes_atomic(self.output_dir / "params.json", json.dumps(record, indent=2, sort_keys=True).encode())


def _read_cost(f: ScannedFile) -> int:
    """The photo's pixels from its header; 1 for a file that will be rejected unread (its header unreadable, or its
    size out of `load_rgb`'s bounds): it costs next to nothing."""
    size = None if f.skip_reason else displayed_size(f.path)
    if not size or min(size) < MIN_SIDE or size[0] * size[1] > MAX_PIXELS:
        return 1
    return size[0] * size[1]


def _output_names(files: list[ScannedFile], output_format: str) -> dict[str, str]:
    """Input relpath -> output relpath, for the files `ingest.named_files` names: `.png` (ingest.output_names), or
    with "same" JPEG inputs keep their name."""
    names = output_names(named_files(files))
    if output_format == "same":
        for f in files:
            if f.relpath in names and Path(f.relpath).suffix.lower() in (".jpg", ".jpeg"):
                names[f.relpath] = f.relpath
    return names


def read_photo_manifest(output_dir: Path) -> pd.DataFrame:
    """The manifest of a photo-mode run, every column as text ("" for empty)."""
    path = Path(output_dir) / "manifest.csv"
    if not path.is_file():
        raise FalcoError(f"{path} not found: is {output_dir} the output folder of `falco anonymize --mode photo`?")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("kind", "face", "box", "landmarks") if c not in frame.columns]
    if missing:
        raise FalcoError(f"{path} has no {', '.join(missing)} column(s): it was not written by photo mode")
    return frame


def parse_numbers(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray([float(v) for v in text.split()], dtype=np.float64).reshape(shape)


def write_photo(path: Path, image: np.ndarray, grey: bool = False,
                deep: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Write an output photo atomically: JPEG (quality JPEG_QUALITY, no chroma subsampling) for a .jpg/.jpeg
    name, lossless PNG otherwise; `grey` (a grey input: its faces were pasted in its tone, `compose`) writes one
    grey channel, the pixels' luma (exact where the three channels are equal). `deep`, (a 16-bit grey input's own
    levels, the pixels its faces changed), writes a PNG at 16 bits, the input's levels everywhere else
    (`image_io.deepen`)."""
    if grey:
        image = np.asarray(Image.fromarray(image).convert("L"))  # [H, W]
        if deep is not None and path.suffix.lower() not in (".jpg", ".jpeg"):
            image = deepen(image, *deep)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
        write_bytes_atomic(path, buffer.getvalue())
    else:
        write_bytes_atomic(path, encode_png(image))
