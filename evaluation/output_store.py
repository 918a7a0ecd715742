"""The evaluation networks' per-image outputs (`suite.SetOutputs`: embeddings, quality features, face counts,
pseudo-labels) kept on disk by image key (`anon_core.reuse.KEY`: what decided the image), so that an image evaluated
before is not read again: after new data a variant's evaluation reads only the images the data added, and a variant
defined like another (the same images under the same keys) reads none.

A store keeps one folder per set of networks (`networks_signature`: their names, their weights, how they read an
image), holding parts `<time>-<random>.npz`: `SetOutputs.to_arrays` of some images and their `key`s. A part is
written whole (`anon_core.atomic`), so a process killed mid-write leaves all of it or none, and evaluations running
at once write parts of their own. A part that cannot be read is skipped (its images are read again).

`forget` removes kept outputs by key: a store of real faces' outputs holds only the images its owner still
evaluates (their identity embeddings are biometric data; an image removed from the data takes them with it).

An output taken from the store is the one computed when its image was first read, in that read's batches; reading
the image again in other batches could differ in the last bits (batched convolutions round differently), so the
metrics of a set read in several goes equal those of one read to float32 rounding, not to the last bit."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from anon_core.atomic import atomic_path
from anon_core.data.image_files import take
from anon_core.errors import FalcoError
from anon_core.progress import Progress
from anon_core.reuse import UNREADABLE
from evaluation.baselines import real_source
from evaluation.image_sets import ImageSetLike
from evaluation.quality import FeatureExtractor
from evaluation.recognizers import Recognizer
from evaluation.suite import SetOutputs, read_set

OUTPUTS_VERSION = "1"  # bump when what the suite computes of an image changes (a crop, a preparation, a detector)
KEYS = "key"  # a part's array of image keys
SIGNATURE_LENGTH = 16  # hex digits of a networks folder's name (`networks_signature`)


def networks_signature(recognizers: Sequence[Recognizer] = (), extractor: FeatureExtractor | None = None,
                       detectors: Sequence[str] = (), predictors: Sequence = ()) -> str:
    """A name for what these networks make of an image: each recognizer's name, crop and weight file (its size and
    modification time), the extractor's name, weights and input, the detectors, and each predictor's name,
    attributes and parameters."""
    def file_stamp(path: Path | None) -> list | None:
        if path is None or not Path(path).is_file():
            return None
        st = Path(path).stat()
        return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]

    described = {
        "version": OUTPUTS_VERSION,
        "recognizers": [[r.name, r.crop, file_stamp(r.weights_file)] for r in recognizers],
        "extractor": None if extractor is None else [extractor.name, extractor.weights_sha256, extractor.input_size,
                                                     extractor.resize],
        "detectors": list(detectors),
        "predictors": [[p.name, list(p.attributes), parameters_digest(p)] for p in predictors],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:SIGNATURE_LENGTH]


def parameters_digest(module) -> str | None:
    """A digest of a network's parameters and buffers (None for what is not an nn.Module)."""
    if not isinstance(module, torch.nn.Module):
        return None
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class OutputStore:
    """Per-image outputs of the evaluation networks under `root`, by image key (see the module's doc). `private`:
    parts readable by their owner only (outputs of real faces: identity embeddings are biometric data). `reuse`:
    False reads every image (and keeps what it read, which newer reads then take)."""

    def __init__(self, root: Path | str, private: bool = False, reuse: bool = True) -> None:
        self.root = Path(root)
        self.private = private
        self.reuse = reuse

    def read(
        self,
        images: ImageSetLike,
        keys: Sequence[str | None],
        recognizers: Sequence[Recognizer] = (),
        extractor: FeatureExtractor | None = None,
        detectors: Sequence[str] = (),
        predictors: Sequence = (),
        ids: Sequence[str] | None = None,
        device: torch.device | str = "cpu",
        batch_size: int | None = None,
        show_progress: Progress = False,
        desc: str = "read",
    ) -> tuple[SetOutputs, int]:
        """`read_set`'s outputs of `images` (row i made under `keys[i]`; None: not known, always read, never
        kept), and how many images were read: only those whose key the store does not hold; their outputs are
        kept for the next read. `show_progress`, `desc`: the reading's progress (`read_set`)."""
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        networks = dict(recognizers=recognizers, extractor=extractor, detectors=detectors, predictors=predictors,
                        device=device, batch_size=batch_size)
        folder = self.root / networks_signature(recognizers, extractor, detectors, predictors)
        ids = [str(i) for i in range(len(images))] if ids is None else [str(i) for i in ids]
        arrays, found = self._stored(folder, keys) if self.reuse else ({}, np.zeros(len(keys), bool))
        missing = np.flatnonzero(~found)
        # rows of one key (the swap baseline's images of one shared fake) are read once: each gets the outputs the
        # store keeps for the key, so a later evaluation that takes them from the store gives the same numbers
        first: dict[str, int] = {}
        source = np.array([first.setdefault(keys[i], n) if keys[i] is not None else n
                           for n, i in enumerate(missing)], dtype=np.int64)  # missing row -> the one read for it
        unique = np.unique(source)  # positions in `missing`, in order
        read = missing[unique]
        if len(read):
            subset = images if len(read) == len(images) else take(images, read)
            fresh = read_set(subset, ids=[ids[i] for i in read], show_progress=show_progress, desc=desc,
                             **networks).to_arrays()
            spread = np.searchsorted(unique, source)  # each missing row -> its row of `fresh`
            for name, values in fresh.items():
                _put(arrays, name, missing, _rows(values, spread), len(images))
            self._keep(folder, [keys[i] for i in read], fresh)
        elif not len(images):
            raise ValueError("no images to evaluate")
        return SetOutputs.from_arrays(arrays, ids), len(read)

    def _stored(self, folder: Path, keys: Sequence[str | None]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The stored outputs of the rows whose key a part holds (newer parts first), and which rows those are."""
        wanted: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if key is not None:
                wanted.setdefault(key, []).append(i)
        arrays: dict[str, np.ndarray] = {}
        found = np.zeros(len(keys), bool)
        for part in sorted(folder.glob("*.npz"), reverse=True) if wanted else []:
            try:
                with np.load(part, allow_pickle=False) as data:
                    rows = [(i, row) for row, key in enumerate(data[KEYS].tolist())
                            for i in wanted.get(key, ()) if not found[i]]
                    if not rows:
                        continue
                    here, there = np.array(rows).T
                    values = {name: data[name] for name in data.files if name != KEYS}
            except FileNotFoundError:  # replaced by another process's `forget` since it was listed
                continue
            except UNREADABLE as err:
                # Parts are written under a temporary name and renamed whole, so a *.npz that does not read as one
                # was damaged since (a disk error, a hand): removed, so it costs one warning, not one per read. An
                # error of the file system itself (permissions, a network mount) leaves it in place.
                damaged = not isinstance(err, OSError)
                if damaged:
                    part.unlink(missing_ok=True)
                warnings.warn(f"{part}: not read ({err}){'; removed' if damaged else ''}; its images are evaluated "
                              "again", stacklevel=2)
                continue
            if arrays and set(values) != set(arrays):  # another layout than the parts read so far: not used
                continue
            for name, stored in values.items():
                _put(arrays, name, here, _rows(stored, there), len(keys))
            found[here] = True
        return arrays, found

    def forget(self, drop: Callable[[str], bool]) -> int:
        """Remove the kept outputs of every key for which `drop` is true, in the folders of all networks: a part
        holding only such keys is deleted, one holding some is written again without them (keeping its name's time,
        so it keeps its place among the parts) before the old one goes. Returns how many rows were removed. Parts
        that cannot be read are left to `read`'s warning; other subfolders (a store inside this one) are not
        touched."""
        removed = 0
        for folder in self._folders():
            for part in sorted(folder.glob("*.npz")):
                try:
                    with np.load(part, allow_pickle=False) as data:
                        keys = data[KEYS]
                        gone = np.fromiter((drop(key) for key in keys.tolist()), dtype=bool, count=len(keys))
                        if not gone.any():
                            continue
                        kept = {} if gone.all() else {name: _rows(data[name], ~gone) for name in data.files}
                except UNREADABLE:  # gone meanwhile (another process's forget), or damaged: `read` warns of it
                    continue
                try:
                    if kept:
                        replacement = part.with_name(f"{part.name.split('-')[0]}-{secrets.token_hex(4)}.npz")
                        with atomic_path(replacement, self.private) as tmp, open(tmp, "wb") as fh:
                            np.savez(fh, **kept)
                    part.unlink(missing_ok=True)
                except (OSError, FalcoError) as err:  # a read-only or full disk: said, and the evaluation stands
                    warnings.warn(f"{part}: the outputs of {int(gone.sum())} image(s) no longer evaluated could not "
                                  f"be removed ({err}); delete {self.root} to remove them", stacklevel=2)
                    continue
                removed += int(gone.sum())
            with contextlib.suppress(OSError):  # only if empty
                folder.rmdir()
        return removed

    def keep_only_real(self, real_keys: Sequence[str | None]) -> int:
        """Remove every kept output but those of these real images and of the baselines made from their pixels
        (`baselines.real_source`): a real images' store holds only the faces still in the data. Returns how many
        rows were removed."""
        live = set(real_keys) - {None}
        return self.forget(lambda key: real_source(key) not in live)

    def _folders(self) -> list[Path]:
        """The networks folders of this store (named by `networks_signature`)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and len(p.name) == SIGNATURE_LENGTH
                      and all(c in "0123456789abcdef" for c in p.name))

    def _keep(self, folder: Path, keys: list[str | None], arrays: dict[str, np.ndarray]) -> None:
        """A new part with the outputs of the rows that have a key (each key once); one that cannot be written is a
        warning, not a failed evaluation."""
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is not None:
                first.setdefault(key, i)
        if not first:
            return
        rows = np.fromiter(first.values(), dtype=np.int64)
        part = {KEYS: np.asarray(list(first), dtype=str),
                **{name: _rows(values, rows) for name, values in arrays.items()}}
        path = folder / f"{time.time_ns():020d}-{secrets.token_hex(4)}.npz"
        try:
            with atomic_path(path, self.private) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **part)
        except (OSError, FalcoError) as err:  # a full disk, say: the evaluation itself is done and stands
            warnings.warn(f"the outputs of {len(rows)} image(s) could not be kept in {folder} ({err}); the next "
                          "evaluation reads them again", stacklevel=3)


def _rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """values[rows] of a per-row array; a 0-d value (a name) as it is."""
    return values if values.ndim == 0 else values[rows]


def _put(arrays: dict[str, np.ndarray], name: str, rows: np.ndarray, values: np.ndarray, n: int) -> None:
    """arrays[name][rows] = values, the array made [n, ...] on first use; a 0-d value (a name) is kept as it is."""
    if values.ndim == 0:
        arrays[name] = values
        return
    if name not in arrays:
        arrays[name] = np.empty((n, *values.shape[1:]), values.dtype)
    arrays[name][rows] = values
