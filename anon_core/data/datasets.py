"""One table for every input dataset: CelebA-HQ, LFW, or any folder with an optional CSV of labels.

Reference: no code to port; the file formats are those the datasets ship, as read by their users' loaders
(switchablenorms/CelebAMask-HQ's README and files, torchvision's CelebA/LFW loaders, scikit-learn's
``fetch_lfw_pairs``):

CelebA-HQ, as users hold it from the CelebAMask-HQ download (root = the folder holding these):
  ``CelebA-HQ-img/<0..29999>.jpg`` (or ``data/``): images named by CelebA-HQ index, 0-based.
  ``CelebAMask-HQ-attribute-anno.txt``: line 1 the image count, line 2 the 40 attribute names, then
  ``<index>.jpg`` and 40 values of 1 / -1 per line (whitespace-separated; read as 1 / 0).
  ``CelebA-HQ-to-CelebA-mapping.txt``: a header ``idx orig_idx orig_file``, then e.g. ``0 119613 119614.jpg``
  (CelebA-HQ index, 0-based CelebA index, CelebA file name); progressive_growing_of_gans' ``image_list.txt``
  (same columns plus md5s) is read the same way.
  From CelebA itself (optional; looked for in the root, ``Anno/`` and ``Eval/``): ``list_eval_partition.txt``
  (``<celeba file> 0|1|2`` = train/val/test) and ``identity_CelebA.txt`` (``<celeba file> <identity number>``),
  both joined through the mapping's ``orig_file``. Without the partition file the split comes from CelebA's
  documented contiguous ranges (files 1-162770 train, 162771-182637 val, 182638-202599 test), with a warning.
LFW, as distributed (root = the folder holding ``lfw/``, ``lfw-deepfunneled/``, ``lfw_funneled/`` or
  ``lfw-funneled/``, or that image folder itself): ``<Person_Name>/<Person_Name>_0001.jpg``; identity = the
  person's folder name. Optional beside the images (root, image folder, or the image folder's parent):
  ``peopleDevTrain.txt`` / ``peopleDevTest.txt`` (line 1 a count, then ``name n_images``) give split
  train/test; ``people.txt`` (line 1 the fold count 10, then per fold a count line and ``name n_images``
  lines) gives ``fold`` 0-9; ``pairs.txt`` is read by :func:`read_lfw_pairs`.
Any folder: every file under it (recursively, via ``scan_folder``); labels only from the CSV.
"auto" picks CelebA-HQ or LFW only when their image folder is there by name AND content (most of the first 20
files named ``<integer>.<ext>``; most of the first 20 sub-folders holding ``<folder name>_NNNN.<ext>``), else
"folder"; annotation files alone never decide it.

CSV manifest (``labels_csv``, any kind): a ``relpath`` or ``file`` column (POSIX path relative to the image
root), optional ``identity``, ``split`` (train/val/test) and CelebA attribute columns (1/0, 1/-1 or
true/false). Its non-empty values override the layout's. Rows naming files that are not there, and columns
we do not use, become warnings (``df.attrs["warnings"]``), never errors.

Result: one row per file, sorted by relpath: ``relpath``, ``path``, ``identity``, ``split`` (LFW adds
``fold``), the known attribute columns in CelebA's order (nullable Int8 0/1), then ``sha256``,
``duplicate_of``, ``skip_reason`` from ``scan_folder``. ``df.attrs`` holds ``kind``, ``image_root``,
``annotations`` (key -> file used) and ``warnings``.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from anon_core.celeba import CELEBA_ATTRIBUTES
from anon_core.data.scan import printable, scan_folder
from anon_core.errors import FalcoError

__all__ = [
    "CELEBA_ATTRIBUTES",
    "DATASET_SPECS",
    "KINDS",
    "AnnotationSpec",
    "DatasetError",
    "DatasetSpec",
    "detect_kind",
    "load_dataset",
    "read_lfw_pairs",
    "read_lfw_people",
]

log = logging.getLogger(__name__)


SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_PARTITION_CODES = {"0": "train", "1": "val", "2": "test"}  # list_eval_partition.txt
# CelebA's partition by 1-based file number (list_eval_partition.txt is exactly these ranges).
_CELEBA_RANGES = ((162770, "train"), (182637, "val"), (202599, "test"))
_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "-1", "false", "no"}


class DatasetError(FalcoError, ValueError):
    """A dataset folder, annotation file or labels CSV that cannot be read as the chosen layout."""


# ------------------------------------------------------------------------------------------- the spec table
@dataclass(frozen=True)
class AnnotationSpec:
    """One annotation file a layout may carry."""

    key: str                  # name used by the labeler and in df.attrs["annotations"]
    names: tuple[str, ...]    # accepted file names, first found wins
    required: bool            # missing -> DatasetError naming it and `expected`
    expected: str             # the format, in one line, for error messages


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one layout: where its images and annotation files are, and how to turn them into labels."""

    kind: str
    title: str
    image_dirs: tuple[str, ...]      # image-root candidates under the root, first existing wins; "." = the root
    image_hint: str                  # what the image folder should look like, for error messages
    annotation_dirs: tuple[str, ...]  # extra folders (under the root) searched for annotation files
    annotations: tuple[AnnotationSpec, ...]
    # (table of relpath rows, found annotation files, warnings list) -> label columns indexed by relpath
    labeler: Callable[[pd.DataFrame, dict[str, Path], list[str]], pd.DataFrame]
    # does a candidate folder hold this layout's images? (None: any folder); also what "auto" detects
    looks_like: Callable[[Path], bool] | None = None


# ------------------------------------------------------------------------------------------- small readers
def _read_lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return [line.split() for line in text.splitlines() if line.strip()]


def _bad(path: Path, line_no: int, what: str, expected: str) -> DatasetError:
    return DatasetError(f"{path}, line {line_no}: {what}; expected {expected}")


def _read_two_columns(path: Path, expected: str) -> dict[str, str]:
    """``<file> <value>`` lines (a header line whose first token is not a file name is skipped)."""
    out: dict[str, str] = {}
    for number, tokens in enumerate(_read_lines(path), start=1):
        if len(tokens) == 1 and "," in tokens[0]:  # Kaggle's CSV variant: image_id,partition
            tokens = tokens[0].split(",")
        if number == 1 and not re.search(r"\.\w+$", tokens[0]):
            continue
        if len(tokens) != 2:
            raise _bad(path, number, f"{len(tokens)} fields", expected)
        out[tokens[0]] = tokens[1]
    return out


def _celeba_number(orig_file: str) -> int | None:
    stem = PurePosixPath(orig_file).stem
    return int(stem) if stem.isdigit() else None


# ------------------------------------------------------------------------------------------- CelebA-HQ
def _read_celebahq_attributes(path: Path) -> dict[int, list[int]]:
    expected = "line 1 a count, line 2 the 40 CelebA attribute names, then '<index>.jpg' and 40 values of 1/-1"
    lines = _read_lines(path)
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise _bad(path, 1, "no image count", expected)
    names = lines[1]
    if tuple(names) != CELEBA_ATTRIBUTES:
        missing = sorted(set(CELEBA_ATTRIBUTES) - set(names))
        raise _bad(path, 2, f"attribute names differ from CelebA's 40 (missing {missing[:5]})", expected)
    rows: dict[int, list[int]] = {}
    for number, tokens in enumerate(lines[2:], start=3):
        stem = PurePosixPath(tokens[0]).stem
        if len(tokens) != 41 or not stem.isdigit() or any(v not in ("1", "-1") for v in tokens[1:]):
            raise _bad(path, number, f"cannot read {' '.join(tokens[:3])} ...", expected)
        rows[int(stem)] = [1 if v == "1" else 0 for v in tokens[1:]]
    if len(rows) != int(lines[0][0]):
        raise _bad(path, 1, f"count says {lines[0][0]} images but {len(rows)} rows follow", expected)
    return rows


def _read_celebahq_mapping(path: Path) -> dict[int, str]:
    expected = "a header 'idx orig_idx orig_file', then e.g. '0 119613 119614.jpg'"
    lines = _read_lines(path)
    header = lines[0] if lines else []
    if "idx" not in header or "orig_file" not in header:
        raise _bad(path, 1, f"header {header[:5]}", expected)
    i_idx, i_file = header.index("idx"), header.index("orig_file")
    out: dict[int, str] = {}
    for number, tokens in enumerate(lines[1:], start=2):
        if len(tokens) < len(header) or not tokens[i_idx].isdigit():
            raise _bad(path, number, f"cannot read {' '.join(tokens[:3])}", expected)
        out[int(tokens[i_idx])] = tokens[i_file]
    return out


def _label_celebahq(table: pd.DataFrame, found: dict[str, Path], warnings: list[str]) -> pd.DataFrame:
    hq_index = {}
    for relpath in table["relpath"]:
        pure = PurePosixPath(relpath)
        if len(pure.parts) == 1 and pure.stem.isdigit():
            hq_index[relpath] = int(pure.stem)
    attributes = _read_celebahq_attributes(found["attributes"])
    labels = pd.DataFrame(index=pd.Index(table["relpath"], name="relpath"))
    values = [attributes.get(hq_index.get(r, -1)) for r in labels.index]
    unlabeled = sum(v is None for v in values)
    if unlabeled:
        warnings.append(f"{unlabeled} file(s) under the image folder have no row in {found['attributes'].name} "
                        "(names other than <index>.jpg, or indices it does not list); their attributes are empty")
    for column, name in enumerate(CELEBA_ATTRIBUTES):
        labels[name] = pd.array([None if v is None else v[column] for v in values], dtype="Int8")

    if "mapping" not in found:
        warnings.append("CelebA-HQ-to-CelebA-mapping.txt not found: split and identity are left empty")
        return labels
    mapping = _read_celebahq_mapping(found["mapping"])
    orig = [mapping.get(hq_index.get(r, -1)) for r in labels.index]
    if "partition" in found:
        partition = _read_two_columns(found["partition"], "'<celeba file> 0|1|2' per line")
        codes = [partition.get(f) if f else None for f in orig]
        labels["split"] = pd.array([_PARTITION_CODES.get(c) if c else None for c in codes], dtype="string")
    else:
        warnings.append("list_eval_partition.txt not found: split taken from CelebA's documented file ranges")
        labels["split"] = pd.array([_celeba_range_split(f) for f in orig], dtype="string")
    if "identity" in found:
        identity = _read_two_columns(found["identity"], "'<celeba file> <identity number>' per line")
        labels["identity"] = pd.array([identity.get(f) if f else None for f in orig], dtype="string")
    return labels


def _celeba_range_split(orig_file: str | None) -> str | None:
    number = _celeba_number(orig_file) if orig_file else None
    if number is None:
        return None
    for last, split in _CELEBA_RANGES:
        if 1 <= number <= last:
            return split
    return None


# ------------------------------------------------------------------------------------------- LFW
def read_lfw_people(path: Path) -> pd.DataFrame:
    """``people.txt`` / ``peopleDevTrain.txt`` / ``peopleDevTest.txt`` -> columns name, n_images, fold.

    ``fold`` (Int8) is the 0-based fold of the 10-fold ``people.txt``; <NA> in the single-list files.
    """
    path = Path(path)
    expected = "line 1 a count (or the fold count), then 'name n_images' lines (a count line before each fold)"
    lines = _read_lines(path)
    if not lines or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise _bad(path, 1, "no leading count", expected)
    folded = any(len(t) == 1 for t in lines[1:])
    rows, fold = [], -1
    for number, tokens in enumerate(lines[1:], start=2):
        if len(tokens) == 1 and tokens[0].isdigit() and folded:
            fold += 1
            continue
        if len(tokens) != 2 or not tokens[1].isdigit():
            raise _bad(path, number, f"cannot read {' '.join(tokens)}", expected)
        rows.append((tokens[0], int(tokens[1]), fold if folded else None))
    if folded and fold + 1 != int(lines[0][0]):
        raise _bad(path, 1, f"says {lines[0][0]} folds but {fold + 1} follow", expected)
    if not folded and len(rows) != int(lines[0][0]):
        raise _bad(path, 1, f"says {lines[0][0]} people but {len(rows)} follow", expected)
    return pd.DataFrame({
        "name": pd.array([r[0] for r in rows], dtype="string"),
        "n_images": pd.array([r[1] for r in rows], dtype="Int64"),
        "fold": pd.array([r[2] for r in rows], dtype="Int8"),
    })


def read_lfw_pairs(path: Path, ext: str = ".jpg") -> pd.DataFrame:
    """``pairs.txt`` / ``pairsDevTrain.txt`` / ``pairsDevTest.txt`` -> one row per pair.

    Columns: name1, n1, name2, n2, same (bool), fold (Int8; <NA> for the single-fold Dev files), relpath1,
    relpath2 (``<name>/<name>_<nnnn><ext>`` relative to the LFW image folder). Line 1 is ``folds n`` (10 300)
    or ``n``; then ``name n1 n2`` (same person) or ``name1 n1 name2 n2`` (different people) lines.
    """
    path = Path(path)
    expected = "line 1 'folds n' or 'n', then 'name n1 n2' or 'name1 n1 name2 n2' lines"
    lines = _read_lines(path)
    if not lines or not 1 <= len(lines[0]) <= 2 or not all(t.isdigit() for t in lines[0]):
        raise _bad(path, 1, "no 'folds n' header", expected)
    per_fold = int(lines[0][-1]) * 2 if len(lines[0]) == 2 else None  # same + different pairs per fold
    rows = []
    for number, tokens in enumerate(lines[1:], start=2):
        if len(tokens) == 3 and tokens[1].isdigit() and tokens[2].isdigit():
            rows.append((tokens[0], int(tokens[1]), tokens[0], int(tokens[2]), True))
        elif len(tokens) == 4 and tokens[1].isdigit() and tokens[3].isdigit():
            rows.append((tokens[0], int(tokens[1]), tokens[2], int(tokens[3]), False))
        else:
            raise _bad(path, number, f"cannot read {' '.join(tokens)}", expected)
    total = int(lines[0][0]) * per_fold if per_fold else 2 * int(lines[0][0])  # n same + n different
    if len(rows) != total:
        raise _bad(path, 1, f"header promises {total} pairs but {len(rows)} follow", expected)
    frame = pd.DataFrame(rows, columns=["name1", "n1", "name2", "n2", "same"])
    frame = frame.astype({"name1": "string", "name2": "string", "n1": "Int64", "n2": "Int64", "same": bool})
    fold = [i // per_fold for i in range(len(rows))] if per_fold else [None] * len(rows)
    frame["fold"] = pd.array(fold, dtype="Int8")
    for k in ("1", "2"):
        frame[f"relpath{k}"] = pd.array(
            [f"{name}/{name}_{n:04d}{ext}" for name, n in zip(frame[f"name{k}"], frame[f"n{k}"])], dtype="string")
    return frame


def _lfw_identity(relpath: str) -> str | None:
    """The person: the folder directly under the image folder, also for a file in a sub-folder of it (sorted by
    year, say), which would otherwise give two people's `2019/` one identity."""
    parts = PurePosixPath(relpath).parts
    return parts[0] if len(parts) >= 2 else None


def _label_lfw(table: pd.DataFrame, found: dict[str, Path], warnings: list[str]) -> pd.DataFrame:
    labels = pd.DataFrame(index=pd.Index(table["relpath"], name="relpath"))
    identity = [_lfw_identity(r) for r in labels.index]
    labels["identity"] = pd.array(identity, dtype="string")
    split: dict[str, str] = {}
    for key, value in (("people_train", "train"), ("people_test", "test")):
        if key in found:
            split.update({name: value for name in read_lfw_people(found[key])["name"]})
    if split:
        labels["split"] = pd.array([split.get(i) if i else None for i in identity], dtype="string")
    fold: dict[str, int] = {}
    if "people" in found:
        people = read_lfw_people(found["people"])
        fold = {n: int(f) for n, f in zip(people["name"], people["fold"]) if not pd.isna(f)}
    labels["fold"] = pd.array([fold.get(i) if i else None for i in identity], dtype="Int8")
    nested = sum(len(PurePosixPath(r).parts) > 2 for r in labels.index)
    if nested:
        warnings.append(f"{nested} file(s) in a sub-folder of a person's folder: each is taken as that person")
    stray = sum(i is None for i in identity)
    if stray:
        warnings.append(f"{stray} file(s) directly in the LFW image folder, not in a person's folder: no identity")
    return labels


_LFW_FILE = re.compile(r"(.+)_\d{4}\.\w+")
_SAMPLE = 20  # entries looked at when guessing a layout


def _looks_like_lfw_images(folder: Path) -> bool:
    """True when most of the first sub-folders hold ``<folder name>_NNNN.<ext>`` files (LFW's naming)."""
    try:
        subdirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")][:_SAMPLE]
        hits = 0
        for sub in subdirs:
            names = [f.name for f in sorted(sub.iterdir())[:3]]
            hits += any((m := _LFW_FILE.fullmatch(n)) is not None and m.group(1) == sub.name for n in names)
    except OSError:
        return False
    return bool(subdirs) and 2 * hits >= len(subdirs)


def _looks_like_celebahq_images(folder: Path) -> bool:
    """True when most of the first files are named by an integer index (``0.jpg``, ``29999.jpg``)."""
    try:
        names = [f.name for f in sorted(folder.iterdir()) if not f.name.startswith(".")][:_SAMPLE]
    except OSError:
        return False
    hits = sum(PurePosixPath(n).stem.isdigit() for n in names)
    return bool(names) and 2 * hits >= len(names)


def _label_folder(table: pd.DataFrame, found: dict[str, Path], warnings: list[str]) -> pd.DataFrame:
    return pd.DataFrame(index=pd.Index(table["relpath"], name="relpath"))


DATASET_SPECS: dict[str, DatasetSpec] = {
    "celebahq": DatasetSpec(
        kind="celebahq",
        title="CelebA-HQ (CelebAMask-HQ layout)",
        image_dirs=("CelebA-HQ-img", "data"),
        image_hint="CelebA-HQ-img/ (or data/) holding 0.jpg ... 29999.jpg",
        annotation_dirs=("Anno", "Eval"),
        annotations=(
            AnnotationSpec("attributes", ("CelebAMask-HQ-attribute-anno.txt",), True,
                           "line 1 a count, line 2 the 40 attribute names, then '<index>.jpg' and 40 values 1/-1"),
            AnnotationSpec("mapping", ("CelebA-HQ-to-CelebA-mapping.txt", "image_list.txt"), False,
                           "header 'idx orig_idx orig_file', then '0 119613 119614.jpg' lines"),
            AnnotationSpec("partition", ("list_eval_partition.txt", "list_eval_partition.csv"), False,
                           "'<celeba file> 0|1|2' lines"),
            AnnotationSpec("identity", ("identity_CelebA.txt",), False, "'<celeba file> <identity number>' lines"),
        ),
        labeler=_label_celebahq,
        looks_like=_looks_like_celebahq_images,
    ),
    "lfw": DatasetSpec(
        kind="lfw",
        title="LFW (Labeled Faces in the Wild)",
        image_dirs=("lfw", "lfw-deepfunneled", "lfw_funneled", "lfw-funneled", "."),
        image_hint="lfw/ (or lfw-deepfunneled/, lfw_funneled/) holding <Person_Name>/<Person_Name>_0001.jpg",
        annotation_dirs=(),
        annotations=(
            AnnotationSpec("pairs", ("pairs.txt",), False, "'10 300', then 'name n1 n2' / 'name1 n1 name2 n2'"),
            AnnotationSpec("people", ("people.txt",), False, "'10', then per fold a count and 'name n' lines"),
            AnnotationSpec("people_train", ("peopleDevTrain.txt",), False, "a count, then 'name n' lines"),
            AnnotationSpec("people_test", ("peopleDevTest.txt",), False, "a count, then 'name n' lines"),
            AnnotationSpec("pairs_train", ("pairsDevTrain.txt",), False, "a count, then pair lines"),
            AnnotationSpec("pairs_test", ("pairsDevTest.txt",), False, "a count, then pair lines"),
        ),
        labeler=_label_lfw,
        looks_like=_looks_like_lfw_images,
    ),
    "folder": DatasetSpec(
        kind="folder",
        title="any folder",
        image_dirs=(".",),
        image_hint="a folder of images (searched recursively)",
        annotation_dirs=(),
        annotations=(),
        labeler=_label_folder,
    ),
}
KINDS = tuple(DATASET_SPECS)


# ------------------------------------------------------------------------------------------- generic loader
def detect_kind(root: Path) -> str:
    """The layout of ``root``: the first spec whose image folder is found there (by name and content), else
    "folder". Annotation files play no part, so a stray ``pairs.txt`` does not make a folder LFW."""
    root = Path(root)
    for spec in DATASET_SPECS.values():
        if spec.looks_like is not None and _find_image_root(spec, root) is not None:
            return spec.kind
    return "folder"


def _find_image_root(spec: DatasetSpec, root: Path) -> Path | None:
    for name in spec.image_dirs:
        candidate = root if name == "." else root / name
        if candidate.is_dir() and (spec.looks_like is None or spec.looks_like(candidate)):
            return candidate
    return None


def _image_root(spec: DatasetSpec, root: Path) -> Path:
    found = _find_image_root(spec, root)
    if found is not None:
        return found
    raise DatasetError(f"{root} is not a {spec.title} folder: expected {spec.image_hint}. Pass the folder that "
                       "holds it, or --dataset folder to read any folder of images.")


def _find_annotations(spec: DatasetSpec, root: Path, image_root: Path) -> dict[str, Path]:
    dirs = [root, *(root / d for d in spec.annotation_dirs), image_root]
    if image_root == root:
        dirs.append(root.parent)
    found: dict[str, Path] = {}
    for ann in spec.annotations:
        hit = next((d / name for name in ann.names for d in dirs if (d / name).is_file()), None)
        if hit is not None:
            found[ann.key] = hit
        elif ann.required:
            looked = ", ".join(str(d) for d in dict.fromkeys(dirs))
            raise DatasetError(f"{spec.title}: {ann.names[0]} not found (looked in {looked}); expected a file with "
                               f"{ann.expected}. Put it in {root}, or use --dataset folder with --labels CSV.")
    return found


def _normalise_relpath(value: str) -> str:
    text = value.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def _read_labels_csv(path: Path, known: set[str], warnings: list[str], image_root: Path | None = None) -> pd.DataFrame:
    """The CSV manifest -> label columns (identity, split, attributes) indexed by relpath (relative to
    `image_root`, the layout's image folder, which the warnings name)."""
    folder = f"the image folder {image_root}" if image_root is not None else "the image folder"
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DatasetError(f"labels CSV {path} {what}; pass an existing CSV file to --labels")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except UnicodeDecodeError as exc:  # a spreadsheet's "CSV" in Latin-1 or Windows-1252
        raise DatasetError(f"labels CSV {path} is not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r}); "
                           "save it as UTF-8 (a spreadsheet's \"CSV UTF-8\") and run again") from exc
    except (ValueError, OSError) as exc:
        raise DatasetError(f"cannot read labels CSV {path}: {exc}") from exc
    by_name: dict[str, list[str]] = {}
    for column in raw.columns:
        by_name.setdefault(column.strip().lower(), []).append(column)
    clashing = [names for names in by_name.values() if len(names) > 1]
    if clashing:  # else the last one silently won: a person split across pseudonyms
        raise DatasetError(f"labels CSV {path} has columns {' and '.join(map(repr, clashing[0]))}, which name the same "
                           "label (case and spaces aside); keep one")
    columns = {c.strip().lower(): c for c in raw.columns}
    key = columns.get("relpath") or columns.get("file")
    if key is None:
        raise DatasetError(f"labels CSV {path} has no 'relpath' or 'file' column (columns: {list(raw.columns)}); "
                           "add one holding each image's path relative to the image folder")
    # a path typed in one Unicode form names the file saved in the other (macOS writes decomposed names)
    by_form = {unicodedata.normalize("NFC", k): k for k in known}
    relpaths = [r if r in known else by_form.get(unicodedata.normalize("NFC", r), r)
                for r in map(_normalise_relpath, raw[key])]
    duplicated = sorted(r for r, n in Counter(relpaths).items() if n > 1)
    if duplicated:
        raise DatasetError(f"labels CSV {path} lists these files more than once: {duplicated[:5]}; keep one row each")
    labels = pd.DataFrame(index=pd.Index(relpaths, name="relpath"))
    by_lower = {a.lower(): a for a in CELEBA_ATTRIBUTES}
    unused = []
    for column in raw.columns:
        name = column.strip()
        values = [v.strip() for v in raw[column]]
        if column == key:
            continue
        if name.lower() == "identity":
            labels["identity"] = pd.array([v or None for v in values], dtype="string")
        elif name.lower() == "split":
            bad = sorted({v for v in values if v and v.lower() not in _SPLIT_ALIASES})
            if bad:
                raise DatasetError(f"labels CSV {path}: column split holds {bad[:5]}; use train, val or test")
            labels["split"] = pd.array([_SPLIT_ALIASES[v.lower()] if v else None for v in values], dtype="string")
        elif name.lower() in by_lower:
            bad = sorted({v for v in values if v and v.lower() not in _TRUE | _FALSE})
            if bad:
                raise DatasetError(f"labels CSV {path}: attribute {name} holds {bad[:5]}; use 1/0, 1/-1 or true/false")
            labels[by_lower[name.lower()]] = pd.array(
                [None if not v else int(v.lower() in _TRUE) for v in values], dtype="Int8")
        else:
            unused.append(name)
    if unused:
        warnings.append(f"labels CSV {path.name}: columns not used (not identity, split or a CelebA attribute): "
                        f"{unused[:10]}")
    unknown = [r for r in relpaths if r not in known]
    if unknown:
        warnings.append(f"labels CSV {path.name}: {len(unknown)} row(s) name files that are not in {folder} "
                        f"(relpaths are relative to it), ignored: {unknown[:5]}")
    missing = len(known - set(relpaths))
    if missing:
        warnings.append(f"labels CSV {path.name}: {missing} file(s) in {folder} have no row; they keep only "
                        "what the layout gives them (an LFW person folder's identity), else no labels")
    return labels[[r in known for r in relpaths]]


def check_layout(kind: str, root: Path, labels_csv: Path | None = None) -> tuple[str, bool | None]:
    """Before any work, from names alone (no image is read or hashed): DatasetError for a folder that is not the
    layout `kind` names (`--dataset lfw` on a plain folder) or an unreadable labels CSV; else (the layout, whether
    the labels CSV gives any of the folder's files an identity: None without a CSV)."""
    root = Path(root).expanduser().absolute()
    kind = detect_kind(root) if kind == "auto" else kind
    if kind not in DATASET_SPECS:
        raise DatasetError(f"unknown dataset kind {kind!r}; use one of {', '.join(KINDS)} or auto")
    image_root = _image_root(DATASET_SPECS[kind], root)
    if labels_csv is None:
        return kind, None
    known = {f.relpath for f in scan_folder(image_root, digests=False)}
    labels = _read_labels_csv(Path(labels_csv), known, [], image_root)
    return kind, "identity" in labels.columns and bool(labels["identity"].notna().any())


def load_dataset(kind: str, root: Path, labels_csv: Path | None = None) -> pd.DataFrame:
    """Read a dataset folder as one row per file (see the module docstring for layouts and columns).

    ``kind``: "celebahq", "lfw", "folder" or "auto" (:func:`detect_kind`). Raises :class:`DatasetError` for
    a missing folder, a layout that does not match ``kind``, or an unreadable annotation file.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder; pass the dataset's root")
    if kind == "auto":
        kind = detect_kind(root)
    if kind not in DATASET_SPECS:
        raise DatasetError(f"unknown dataset kind {kind!r}; use one of {', '.join(KINDS)} or auto")
    spec = DATASET_SPECS[kind]
    image_root = _image_root(spec, root)
    found = _find_annotations(spec, root, image_root)
    warnings: list[str] = []

    # realpath, not Path.resolve: a link loop in the folder is a rejected row (scan_folder's), not a RuntimeError
    skip = {os.path.realpath(p) for p in found.values()}
    if labels_csv is not None:
        skip.add(os.path.realpath(labels_csv))
    files = [f for f in scan_folder(image_root) if os.path.realpath(f.path) not in skip]
    if not files:
        raise DatasetError(f"{image_root} holds no files; expected {spec.image_hint}")
    table = pd.DataFrame({
        "relpath": pd.array([f.relpath for f in files], dtype="string"),
        "path": pd.array([printable(str(f.path)) for f in files], dtype="string"),  # an unreadable name's escaped
    })
    labels = spec.labeler(table, found, warnings)
    if labels_csv is not None:
        extra = _read_labels_csv(Path(labels_csv), set(table["relpath"]), warnings, image_root)
        for column in extra.columns:
            given = extra[column].reindex(labels.index)
            labels[column] = given if column not in labels else given.where(given.notna(), labels[column])

    out = table.set_index("relpath", drop=False)
    # one person whatever Unicode form their name was typed or saved in: `José` composed in a CSV, decomposed in a
    # folder name copied from macOS
    out["identity"] = labels["identity"].map(lambda name: unicodedata.normalize("NFC", name), na_action="ignore") \
        .astype("string") if "identity" in labels else pd.array([None] * len(out), dtype="string")
    out["split"] = labels["split"] if "split" in labels else pd.array([None] * len(out), dtype="string")
    if "fold" in labels:
        out["fold"] = labels["fold"]
    for name in CELEBA_ATTRIBUTES:
        if name in labels:
            out[name] = labels[name].astype("Int8")
    out["sha256"] = pd.array([f.sha256 for f in files], dtype="string")
    out["duplicate_of"] = pd.array([f.duplicate_of for f in files], dtype="string")
    out["skip_reason"] = pd.array([f.skip_reason for f in files], dtype="string")
    out = out.reset_index(drop=True).sort_values("relpath", kind="stable", ignore_index=True)
    out.attrs.update(kind=kind, image_root=str(image_root), warnings=warnings,
                     annotations={k: str(v) for k, v in found.items()})
    for message in warnings:
        log.warning("%s: %s", spec.title, message)
    return out
