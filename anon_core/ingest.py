"""Ingest: a dataset folder -> one row per file (ok or rejected, with its reason and labels) and, for each ok file,
where its image is (the file itself, or its FFHQ-aligned crop in the alignment cache).

The one reading of a dataset that both the `real_images` asset and `falco anonymize` use. Each file is read (and
aligned into the cache) in worker threads to validate it, then dropped, so a set of any size is listed without
holding its images; `Ingested.images` gives them back as an `ImageFiles` read on indexing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch

from anon_core.data.align import AlignmentCache, FaceAligner
from anon_core.data.colour import is_grey
from anon_core.data.datasets import load_dataset
from anon_core.data.image_files import ImageFiles
from anon_core.data.image_io import ImageRejected, flattened, load_rgb, read_listed
from anon_core.data.scan import ScannedFile, output_relpath
from anon_core.params import SECTION_KEYS
from anon_core.prefetch import read_ahead

TABLE_COLUMNS = (
    "input",  # relative path under the input folder
    "image",  # relative path of its output image (`.png`); "" when rejected
    "status",  # ok | rejected
    "reason",  # machine code of the rejection; of an ok row, of its note ("stretched", else "flattened"), else ""
    "detail",  # human sentence about the rejection or the note
    "duplicate_of",  # input with the same bytes that came first, if any
    "sha256",  # of the input file
    "faces_seen",  # faces the aligner detected (the largest is used); -1 when not aligning or rejected
    "other_faces_covered",  # other faces inside the crop, pixelated before it was cut; -1 when not aligning
    "grey",  # its image is black and white (three equal channels): its anonymized face is written grey too
)


@dataclass
class Ingested:
    table: pd.DataFrame  # TABLE_COLUMNS, then the dataset's label columns; one row per file, in file order
    sources: list[Path]  # where the image of each ok row is, in table order
    resolution: int  # side the images are read at
    dataset: str  # the layout: celebahq | lfw | folder
    alignment: str | None  # the aligner's settings string; None when the images are used as they are
    labels: list[str] = field(default_factory=list)  # label columns that hold at least one value
    warnings: list[str] = field(default_factory=list)  # what the dataset reader noticed (labels CSV rows, ...)

    @property
    def ok(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "ok"].reset_index(drop=True)

    def images(self, workers: int = 4) -> ImageFiles:
        """The ok rows' images, uint8 [N_ok, R, R, 3], decoded when indexed; an input file read as it is must still
        hold the bytes it was listed with (an aligned crop is the run's own)."""
        listed = [d if isinstance(d, str) and d else None for d in self.ok["sha256"]] if self.alignment is None \
            else None
        return ImageFiles(self.sources, self.resolution, workers=workers, sha256s=listed)


DATASET_KINDS = ("auto", "celebahq", "lfw", "folder")


def data_settings(section: dict[str, Any], params_file: Path) -> dict[str, Any]:
    """params.yaml's `data:` section (with its overrides) as `ingest`'s keyword arguments, checked; a relative
    `labels_csv` is relative to the params file's folder."""
    from anon_core.data.align import DETECTORS
    from anon_core.errors import ParamsError

    keys = SECTION_KEYS["data"]
    missing = [k for k in keys if k not in section]
    if missing:
        raise ParamsError(f"{params_file}: data.{', data.'.join(missing)} missing; add it (see the project's params.yaml)")
    values = {k: section[k] for k in keys}
    problems = []
    if values["dataset"] not in DATASET_KINDS:
        problems.append(f"data.dataset = {values['dataset']!r} must be one of {', '.join(DATASET_KINDS)}")
    if values["align_detector"] not in DETECTORS:
        problems.append(f"data.align_detector = {values['align_detector']!r} must be one of {', '.join(DETECTORS)}")
    if values["align"] is not None and not isinstance(values["align"], bool):
        problems.append(f"data.align = {values['align']!r} must be true, false or null")
    if values["labels_csv"] is not None:
        labels = Path(values["labels_csv"])
        values["labels_csv"] = labels if labels.is_absolute() else Path(params_file).resolve().parent / labels
        if not values["labels_csv"].is_file():
            problems.append(f"data.labels_csv = {values['labels_csv']} is not a file")
    if problems:
        raise ParamsError(f"{params_file}: " + "; ".join(problems))
    return values


CACHE_FOLDER = ".align_cache"  # inside a run's output folder or the pipeline's storage
_TEMPORARY_CACHE = ".align_cache-tmp-"


def remove_alignment_crops(folder: Path, kept: bool = True) -> None:
    """Remove the aligned crops of real faces that aligned runs left in `folder` (whose lock the caller holds): the
    temporary folders of killed `keep=False` runs, and with `kept` the `.align_cache` kept for re-runs."""
    for leftover in Path(folder).glob(_TEMPORARY_CACHE + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if kept:
        shutil.rmtree(Path(folder) / CACHE_FOLDER, ignore_errors=True)


@contextlib.contextmanager
def alignment_cache(folder: Path, keep: bool = True) -> Iterator[Path]:
    """Where a run keeps the aligned crops of the real faces: `<folder>/.align_cache`, beside the run's outputs and
    kept for re-runs; with `keep=False` a private temporary folder inside `folder`, removed when the run ends (and
    the `.align_cache` an earlier run kept there, at the start). The caller holds `folder`'s lock, so leftovers of a
    killed `keep=False` run are removed here too. Real faces are never cached outside the folder the user gave."""
    folder = Path(folder)
    remove_alignment_crops(folder, kept=False)
    if keep:
        yield folder / CACHE_FOLDER
        return
    # a cache an earlier run kept here goes too: asked for none, the user expects none, not the crops of inputs
    # deleted since (a kept cache loses those only when a run uses it)
    shutil.rmtree(folder / CACHE_FOLDER, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=_TEMPORARY_CACHE, dir=folder))  # 0700
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def check_input_folder(input_dir: Path, need_image: bool = True) -> None:
    """FalcoError, before any work, when `input_dir` is missing, not a folder, or holds no file that starts like an
    image this project reads (a quick look at file headers, stopping at the first image; `ingest` checks each).
    With `need_image=False`, any (non-hidden) file will do: `falco anonymize` lists the others as rejected rows."""
    from anon_core.data.image_io import is_image_file
    from anon_core.errors import FalcoError

    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FalcoError(f"input folder {input_dir} does not exist or is not a folder; pass the folder that holds "
                         "your images")
    seen = 0
    for folder, subfolders, names in os.walk(input_dir):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                seen += 1
                if not need_image or is_image_file(Path(folder) / name):
                    return
    raise FalcoError(f"no image in {input_dir}: none of its {seen} file(s) is a JPEG, PNG, WebP, BMP or TIFF "
                     "file; give a folder of face images")


def check_dataset_layout(pairing: str, input_dir: Path, dataset: str, labels_csv: Path | str | None) -> None:
    """FalcoError, before any work and from file names alone (`datasets.check_layout`), for a folder that is not
    the layout `dataset` names, an unreadable labels CSV, and identity pairing over a folder no label can come from:
    a plain folder layout (an LFW folder's person folders and a CelebA-HQ identity file give labels) with no labels
    CSV, or one that gives none of its files an identity."""
    from anon_core.assignment import check_identities
    from anon_core.data.datasets import check_layout

    if not Path(input_dir).is_dir():
        return  # check_input_folder's to say
    kind, labelled = check_layout(dataset, Path(input_dir), None if labels_csv is None else Path(labels_csv))
    if pairing == "identity" and kind == "folder" and not labelled:
        check_identities(pairing, None if labels_csv is None else [None], labels_csv)


def io_workers(device: torch.device | str) -> int:
    """Threads that decode and align images ahead of the networks, or encode and write their outputs behind them:
    one on a CPU, whose cores run the networks; up to 8 with a GPU, so that reading and writing keep up with it."""
    return 1 if torch.device(device).type != "cuda" else max(1, min(8, os.cpu_count() or 1))


def ingest(
    input_dir: Path,
    resolution: int,
    dataset: str,
    labels_csv: Path | None,
    align: bool | None,
    align_detector: str,
    cache_dir: Path,
    device: torch.device | str = "cpu",
    on_file: Callable[[int, int], None] | None = None,
    table: pd.DataFrame | None = None,
    names: dict[str, str] | None = None,
) -> Ingested:
    """Read every file of the dataset under `input_dir` (layout `dataset`: celebahq | lfw | folder | auto, plus a
    labels CSV; these four come from params.yaml's `data:` section, `data_settings`). `align` (default: on, except
    for CelebA-HQ, which is aligned already) FFHQ-aligns the largest face of each image at `resolution`, caching the
    crops in `cache_dir` (see `alignment_cache`; the crops of files no longer in the folder are removed from it).
    Unreadable files and images without a face become `rejected` rows; `on_file` is called with (files done, files
    in all) as they are checked. `table`: the `load_dataset` table of these arguments where the caller read it
    already (every file hashed), so the folder is not scanned twice; `names`: its `planned_outputs`, where the caller
    has them (each file's header read once)."""
    if table is None:
        table = load_dataset(dataset, Path(input_dir), labels_csv)
    files = dataset_files(table)
    kind = table.attrs.get("kind", dataset)
    if align is None:
        align = kind != "celebahq"
    aligner = FaceAligner(resolution, align_detector, device=device) if align else None
    cache = AlignmentCache(cache_dir)
    names = planned_outputs(table) if names is None else names
    rows, sources = [], []
    for done, checked in enumerate(check_inputs(files, aligner, cache, io_workers(device)), start=1):
        f = checked.file
        row = {"input": f.relpath, "image": "", "status": "ok", "reason": "", "detail": "",
               "duplicate_of": f.duplicate_of or "", "sha256": f.sha256 or "", "faces_seen": checked.faces_seen,
               "other_faces_covered": checked.others_covered, "grey": checked.grey}
        if checked.rejected is not None:
            row.update(status="rejected", reason=checked.rejected.reason, detail=f.named(checked.rejected.detail))
        else:
            row["image"] = names[f.relpath]
            sources.append(checked.source)
            notes = checked.notes
            if checked.size[0] != checked.size[1]:  # only unaligned images can be (aligned crops are square)
                width, height = checked.size
                row.update(reason="stretched", detail="; ".join([
                    f"{f.relpath}: {width} x {height}, not square: stretched to {resolution} x {resolution}, which "
                    "distorts the face; align it (drop --no-align / data.align: false) or crop it square", *notes]))
            elif notes:
                row.update(reason="flattened", detail=f"{f.relpath}: {'; '.join(notes)}")
        rows.append(row)
        if on_file is not None:
            on_file(done, len(files))
    cache.prune({f.sha256 for f in files if f.sha256})  # the crops of inputs since removed go
    frame = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    labels = label_columns(table)
    if labels:
        frame = frame.join(table.set_index("relpath")[labels], on="input")
    return Ingested(frame, sources, resolution, kind, aligner.settings if aligner else None, labels,
                    list(table.attrs.get("warnings", [])))


def dataset_files(table: pd.DataFrame) -> list[ScannedFile]:
    """The rows of a `load_dataset` table as scanned files (same order)."""
    return [
        ScannedFile(Path(r.path), r.relpath, _str_or_none(r.sha256), _str_or_none(r.duplicate_of),
                    _str_or_none(r.skip_reason))
        for r in table.itertuples()
    ]


def label_columns(table: pd.DataFrame) -> list[str]:
    """The label columns of a dataset table (identity, split, attributes) that hold at least one value."""
    skip = {"relpath", "path", "sha256", "duplicate_of", "skip_reason"}
    return [c for c in table.columns if c not in skip and table[c].notna().any()]


def read_input(f: ScannedFile, aligner: FaceAligner | None,
               cache: AlignmentCache | None) -> tuple[np.ndarray, int, int]:
    """One scanned file -> (uint8 [H, W, 3], faces seen, other faces covered). With an aligner the image is the
    FFHQ-aligned crop of the largest face (cached by file hash); raises ImageRejected with the reason (e.g.
    "no_face")."""
    if f.skip_reason:
        raise ImageRejected(f.skip_reason, f.skip_detail())
    if aligner is None:
        return load_rgb(f.path, data=read_listed(f.path, f.sha256)), -1, -1
    face = aligner.align_cached(f.path, f.sha256 or "", cache, name=f.relpath)
    return face.image, face.faces_seen, face.others_covered


@dataclass
class CheckedInput:
    file: ScannedFile
    source: Path | None  # where its image is: the input file, or its aligned crop in the cache; None if rejected
    faces_seen: int  # faces the aligner detected; -1 when not aligning or rejected
    others_covered: int = -1  # other faces pixelated inside the crop; -1 when not aligning or rejected
    rejected: ImageRejected | None = None
    size: tuple[int, int] = (0, 0)  # (width, height) of its image
    notes: tuple[str, ...] = ()  # what reading it as one RGB image left out (`image_io.flattened`)
    grey: bool = False  # its image has three equal channels (anon_core.data.colour)


def check_inputs(
    files: list[ScannedFile], aligner: FaceAligner | None, cache: AlignmentCache, workers: int
) -> Iterator[CheckedInput]:
    """Each file read (and aligned into `cache`) in `workers` threads, in order, to validate it, then dropped:
    only where its image is stays, so a set of any size can be listed without holding its images."""
    def read(f: ScannedFile):
        return read_input(f, aligner=aligner, cache=cache), tuple(flattened(f.path))

    for f, reading in read_ahead(read, files, workers, depth=2 * workers):
        try:
            (image, faces_seen, others_covered), notes = reading.result()
        except ImageRejected as rejected:
            yield CheckedInput(f, None, -1, rejected=rejected)
            continue
        yield CheckedInput(f, cache.image_path(f.sha256, aligner.settings) if aligner else f.path, faces_seen,
                           others_covered, size=(image.shape[1], image.shape[0]), notes=notes, grey=is_grey(image))


def _str_or_none(value) -> str | None:
    return None if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) or value == "" else str(value)


def planned_outputs(table: pd.DataFrame) -> dict[str, str]:
    """Input relpath -> output name (relative to `images/`) that `ingest` gives the files of a `load_dataset` table,
    known before any image is decoded: a superset of a run's outputs (some of these files may still be rejected)."""
    return output_names(named_files(dataset_files(table)))


def named_files(files: list[ScannedFile]) -> list[ScannedFile]:
    """The files that get an output name (`output_names`): those that may be read, whose header is of an image
    format this project reads. A file that is no image (`x.gif`, `notes.txt`) is rejected without taking the name
    of an image beside it (`x.png` would otherwise be written as `x.png.png`)."""
    from anon_core.data.image_io import is_image_file

    return [f for f in files if f.skip_reason is None and is_image_file(f.path)]


def output_names(files: list[ScannedFile]) -> dict[str, str]:
    """Input relpath -> output relpath (`.png`), no two alike and none a folder another output goes in. `a.jpg` and
    `a.png` in one folder would collide, and so would `a.jpg` with a folder `a.png/`; a `.png` input keeps its
    name, and the other file (the file, against a folder; the later one, between two non-PNG files) keeps its
    original extension in the name (`a.jpg.png`), or, were that taken too, a number (`a.jpg~2.png`). Outputs keep
    their input's folders, so the folders of the outputs are those of the inputs."""
    folders = {parent.as_posix() for f in files for parent in PurePosixPath(f.relpath).parents}
    names: dict[str, str] = {}
    taken: set[str] = set()
    # PNG inputs first: `a.png` keeps its name and `a.jpg` beside it becomes `a.jpg.png`, whatever the name order
    for f in sorted(files, key=lambda f: output_relpath(f.relpath) != f.relpath):
        name, number = _within_name_max(output_relpath(f.relpath)), 1
        while name in taken or name in folders:
            name = _within_name_max(f.relpath + (".png" if number == 1 else f"~{number}.png"))
            number += 1
        taken.add(name)
        names[f.relpath] = name
    return names


NAME_MAX = 255
"""Bytes in a file name on Linux's and macOS's file systems (ext4, XFS, Btrfs, APFS)."""


def _within_name_max(relpath: str) -> str:
    """`relpath`, or where its file name is longer than NAME_MAX bytes (a 252-byte `x.jpg` whose output is
    `x.jpg.png`), the name cut to fit and told apart by a digest of the whole name: `xxx~1a2b3c4d.png`."""
    path = PurePosixPath(relpath)
    if len(path.name.encode()) <= NAME_MAX:
        return relpath
    tail = f"~{hashlib.sha256(path.name.encode()).hexdigest()[:8]}{path.suffix}"
    stem = path.name.encode()[: NAME_MAX - len(tail.encode())].decode("utf-8", "ignore")
    return path.with_name(stem + tail).as_posix()
