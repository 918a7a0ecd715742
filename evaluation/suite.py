"""The evaluation protocol in one place: privacy, attribute preservation and quality of one anonymized set, and
of the baselines through the same code, so the report puts them in one table (DESIGN.md section 5).

Image sets may be far larger than memory (CelebA-HQ: 30,000 faces at 1024 px, 94 GB decoded): each set is read
once, batch by batch (`read_set`), every network and detector gets each batch in turn, and only per-image results
(embeddings, features, face counts, labels) are kept. Baselines are made on the fly from the real sources
(`evaluation.baselines.baseline_images`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from anon_core.data.image_files import take
from anon_core.progress import Progress, progress_bar
from evaluation.attributes import LABEL_BATCH_SIZE, agreement, pseudo_labels
from evaluation.baselines import BASELINES, baseline_images
from evaluation.image_sets import ImageSetLike, batch_slices, read_parts
from evaluation.privacy import (DETECTORS, DetectionResult, combine_tables, detect_faces, pseudonym_consistency,
                                reidentification_report)
from evaluation.quality import (FEATURE_BATCH_SIZE, MIN_IMAGES_FOR_DISTANCES, FeatureExtractor, compare_features,
                                feature_statistics, features)
from evaluation.recognizers import Recognizer

if TYPE_CHECKING:
    from evaluation.output_store import OutputStore


@dataclass
class MethodResult:
    method: str  # "falco" or a baseline name
    metrics: dict[str, float]
    per_image: pd.DataFrame  # privacy per image: every recognizer's similarity, rank, pass/fail; detections
    attributes: pd.DataFrame | None = None  # per attribute agreement with the real images' labels
    quality: dict = field(default_factory=dict)
    images_read: int | None = None  # how many of its images the networks read (the others' outputs were stored)


def build_attribute_predictors(seeded: bool, device: torch.device | str = "cpu") -> list:
    """Anycost GAN's and Talk-to-Edit's CelebA attribute predictors with their published weights, or (for the
    seeded `tiny` profile, where those weights are absent) the same heads on a small seeded backbone, named
    `<name>_seeded` so that their labels are never mistaken for real pseudo-labels."""
    from anon_core.errors import MissingWeightsError
    from anon_core.networks.attribute_predictors import (
        AnycostAttributePredictor,
        TalkToEditAttributePredictor,
        load_anycost_predictor,
        load_talk_to_edit_predictor,
    )
    from anon_core.networks.resnet50 import ResNetConfig

    try:
        return [load_anycost_predictor(device=device), load_talk_to_edit_predictor(device=device)]
    except MissingWeightsError:
        if not seeded:
            raise
    small = ResNetConfig(layers=(1, 1, 1, 1), width=8)
    predictors = []
    for seed, cls in enumerate((AnycostAttributePredictor, TalkToEditAttributePredictor)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = cls(small) if cls is AnycostAttributePredictor else cls(small, stem_dim=32, head_dim=16)
        net.name = f"{cls.name}_seeded"
        predictors.append(net.to(device).eval().requires_grad_(False))
    return predictors


@dataclass
class SetOutputs:
    """What the suite keeps of one image set: per-image results only."""

    embeddings: dict[str, np.ndarray]  # recognizer name -> [N, D]
    faces: dict[str, DetectionResult]  # detector -> faces found per image
    features: np.ndarray | None  # [N, dim] of the quality feature extractor
    labels: dict[str, pd.DataFrame]  # predictor name -> its pseudo_labels table
    extractor: str | None = None  # the name of the extractor of `features`

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every per-image output as a dict of arrays, one row per image, as the pipeline's `real_gallery` and the
        parts of `evaluation.output_store` keep them: `embedding_<recognizer>`, `features` (with its `extractor`'s
        name, a 0-d array), `faces_<detector>` and `label:<predictor>:<column>` per column of its pseudo_labels
        table."""
        arrays = {f"{EMBEDDING}{name}": e for name, e in self.embeddings.items()}
        if self.features is not None:
            arrays |= {"features": self.features, "extractor": np.array(self.extractor or "")}
        arrays |= {f"{FACES}{name}": found.faces for name, found in self.faces.items()}
        for name, frame in self.labels.items():
            arrays |= {f"{LABEL}{name}:{column}": frame[column].to_numpy() for column in frame.columns}
        return arrays

    @classmethod
    def from_arrays(cls, arrays, ids: Sequence[str] | None = None) -> SetOutputs:
        """`to_arrays`' dict (or a stored one) back; `ids`: the label tables' row names (default "0", "1", ...)."""
        names = list(arrays)
        labels: dict[str, pd.DataFrame] = {}
        for name in names:
            if name.startswith(LABEL):
                predictor, column = name.removeprefix(LABEL).split(":", 1)
                labels.setdefault(predictor, {})[column] = np.asarray(arrays[name])
        for predictor, columns in labels.items():
            n = len(next(iter(columns.values())))
            index = pd.Index([str(i) for i in (range(n) if ids is None else ids)], name="image")
            labels[predictor] = pd.DataFrame(columns, index=index)
            labels[predictor].attrs["predictor"] = predictor
        return cls(embeddings={n.removeprefix(EMBEDDING): np.asarray(arrays[n]) for n in names if n.startswith(EMBEDDING)},
                   faces={n.removeprefix(FACES): DetectionResult(n.removeprefix(FACES), np.asarray(arrays[n]))
                          for n in names if n.startswith(FACES)},
                   features=np.asarray(arrays["features"]) if "features" in names else None, labels=labels,
                   extractor=str(arrays["extractor"]) if "extractor" in names else None)


# prefixes of `SetOutputs.to_arrays`' names: a recognizer's embeddings, a detector's face counts, a label column
EMBEDDING, FACES, LABEL = "embedding_", "faces_", "label:"


def read_set(
    images: ImageSetLike,
    recognizers: Sequence[Recognizer] = (),
    extractor: FeatureExtractor | None = None,
    detectors: Sequence[str] = (),
    predictors: Sequence = (),
    ids: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    show_progress: Progress = False,
    desc: str = "read",
) -> SetOutputs:
    """Everything the suite needs of `images`, in one pass: each batch is read (or computed) once, given to every
    recognizer, detector, the feature extractor and every predictor, and dropped. `ids`: the predictors' row
    labels (default "0", "1", ...).

    `batch_size`: images per read. The default, the least common multiple of the networks' own batch sizes, hands
    every network the very batches it would cut from the whole set, so the numbers equal those of whole-set calls
    to the last bit. `show_progress`: its batches, named `desc` (`anon_core.progress`)."""
    if not len(images):
        raise ValueError("no images to evaluate")
    if batch_size is None:
        batch_size = math.lcm(FEATURE_BATCH_SIZE, LABEL_BATCH_SIZE, *(r.batch_size for r in recognizers))
    ids = [str(i) for i in range(len(images))] if ids is None else list(ids)
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} images")
    embeddings: dict[str, list] = {r.name: [] for r in recognizers}
    faces: dict[str, list] = {d: [] for d in detectors}
    labels: dict[str, list] = {p.name: [] for p in predictors}
    feats = []
    parts = batch_slices(len(images), batch_size)
    for rows, batch in progress_bar(read_parts(images, parts), desc=desc, unit="batch", total=len(parts),
                                    enable=show_progress):
        for r in recognizers:
            embeddings[r.name].append(r.embed(batch))
        for d in detectors:
            faces[d].append(detect_faces(batch, d, device=device).faces)
        if extractor is not None:
            feats.append(features(batch, extractor))
        for p in predictors:
            labels[p.name].append(pseudo_labels(batch, p, ids=ids[rows], device=device))
    tables = {}
    for name, parts in labels.items():
        tables[name] = pd.concat(parts)
        tables[name].attrs["predictor"] = name
    return SetOutputs(
        embeddings={name: np.concatenate(parts) for name, parts in embeddings.items()},
        faces={d: DetectionResult(d, np.concatenate(parts)) for d, parts in faces.items()},
        features=np.concatenate(feats) if extractor is not None else None,
        labels=tables,
        extractor=extractor.name if extractor is not None else None,
    )


def evaluate_method(
    method: str,
    anonymized: ImageSetLike,
    real: ImageSetLike,
    source_index: np.ndarray,
    recognizers: list[Recognizer],
    extractor: FeatureExtractor,
    real_features: np.ndarray,
    real_statistics: tuple[np.ndarray, np.ndarray] | None = None,
    gallery_identity: np.ndarray | None = None,
    gallery_embeddings: dict[str, np.ndarray] | None = None,
    predictors: list | None = None,
    real_labels: dict[str, pd.DataFrame] | None = None,
    names: list[str] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    keys: Sequence[str | None] | None = None,
    store: OutputStore | None = None,
    show_progress: Progress = False,
) -> MethodResult:
    """All metrics of one anonymized set (uint8 [N, H, W, 3], row i made from real[source_index[i]]), read once
    in batches of `batch_size` (see `read_set`); with a `store` (`evaluation.output_store`) and the images' `keys`,
    only the images whose outputs it does not hold are read.

    What depends on the real set alone can be passed in, computed once for many sets: `real_features`,
    `real_statistics` (their `feature_statistics`), `gallery_embeddings` (per recognizer) and `real_labels`.
    `show_progress`: the batches read (`anon_core.progress`)."""
    ids = names or [str(i) for i in range(len(anonymized))]
    readers = (recognizers, extractor, DETECTORS, predictors or ())
    progress = {"show_progress": show_progress, "desc": f"evaluate {method}"}
    if store is not None and keys is not None:
        anon, images_read = store.read(anonymized, keys, *readers, ids, device, batch_size, **progress)
    else:
        anon, images_read = read_set(anonymized, *readers, ids, device, batch_size, **progress), len(anonymized)
    gallery = dict(gallery_embeddings or {})
    missing = [r for r in recognizers if r.name not in gallery]
    if missing:
        gallery |= read_set(real, missing, batch_size=batch_size).embeddings
    metrics: dict[str, float] = {}
    reports = [
        reidentification_report(r, anon.embeddings[r.name], gallery[r.name], source_index, gallery_identity,
                                names=names)
        for r in recognizers
    ]
    for report in reports:
        metrics |= report.metrics()
    if gallery_identity is not None:  # labelled data: one pseudonym per person?
        person = np.asarray(gallery_identity, dtype=object)[np.asarray(source_index)]
        for r in recognizers:
            metrics |= pseudonym_consistency(r, anon.embeddings[r.name], gallery[r.name][np.asarray(source_index)],
                                             person)
    per_image = combine_tables(reports)
    for detector, found in anon.faces.items():
        metrics[f"detection/{detector}/rate"] = found.rate
        per_image[f"detected/{detector}"] = found.detected

    quality = compare_features(real_features, anon.features, extractor,
                               kid_subset_size=min(1000, len(real)), real_statistics=real_statistics)
    metrics |= {f"quality/{k}": v for k, v in quality.metrics().items()}

    table = None
    if predictors:
        parts = []
        for p in predictors:
            anon_labels = anon.labels[p.name]
            real_rows = real_labels[p.name].iloc[source_index].set_axis(anon_labels.index)
            part = agreement(real_rows, anon_labels).reset_index().rename(columns={"index": "attribute"})
            part.insert(0, "predictor", p.name)
            parts.append(part)
            metrics[f"attributes/{p.name}/mean_agreement"] = float(part["agreement"].mean())
        table = pd.concat(parts, ignore_index=True)
    return MethodResult(method, metrics, per_image, table, quality.as_dict(), images_read)


@dataclass
class AnonymizedSet:
    """One anonymized image set to evaluate against the real gallery (e.g. one run of `falco anonymize`)."""

    method: str  # its row label in the summary: "falco", or a run label such as "m=0.5"
    images: ImageSetLike  # uint8 [N, H, W, 3]: an ndarray, or an ImageFiles left on disk
    source_index: np.ndarray  # int [N]: row i was made from real[source_index[i]]
    names: list[str] | None = None  # per-image names for the per-image tables
    keys: list[str | None] | None = None  # what decided each image (anon_core.reuse.KEY), for an OutputStore


def evaluate_runs(
    runs: list[AnonymizedSet],
    real: ImageSetLike,
    recognizers: list[Recognizer],
    extractor: FeatureExtractor,
    baselines: tuple[str, ...] = (),
    fakes: ImageSetLike | None = None,
    batch_size: int | None = None,
    real_ids: Sequence[str] | None = None,
    baseline_index: np.ndarray | None = None,
    baseline_names: list[str] | None = None,
    real_outputs: SetOutputs | None = None,
    store: OutputStore | None = None,
    baseline_keys: Mapping[str, Sequence[str | None]] | None = None,
    real_store: OutputStore | None = None,
    **kwargs,
) -> list[MethodResult]:
    """Every set in `runs`, then every baseline, through `evaluate_method` with the real gallery embedded once.
    The baselines are made batch by batch from the real rows `baseline_index` (named `baseline_names`; default: the
    first run's sources and names), `fakes` being those rows' paired fakes (for "swap"); `batch_size`: images per
    read (see `read_set`). With `predictors` but no `real_labels`, the real set's pseudo-labels (rows named by
    `real_ids`) are made in the same read as its embeddings and features. `real_outputs` (`read_set` of `real` with the same networks):
    the real set is not read again, unless its features come from another extractor, labels are to be made, or it
    lacks a recognizer's embeddings (those alone are read). `store`: the runs' outputs kept by their images' keys
    (`evaluation.output_store`), so an image evaluated before is not read again; `baseline_keys`: per baseline, the
    keys of its images (`evaluation.baselines.baseline_keys`), so that a baseline image made before is not read
    again either; those made from real pixels (blur, pixelate, mask) are kept in `real_store` (the real images' own,
    private; without one they are read every time)."""
    if baselines and baseline_index is None:
        if not runs:
            raise ValueError("baselines need baseline_index (or a run whose sources they take)")
        baseline_index, baseline_names = runs[0].source_index, runs[0].names
    label_real = bool(kwargs.get("predictors")) and kwargs.get("real_labels") is None
    if real_outputs is None or label_real or real_outputs.extractor != extractor.name:
        real_outputs = read_set(real, recognizers, extractor, predictors=kwargs["predictors"] if label_real else (),
                                ids=real_ids, device=kwargs.get("device", "cpu"), batch_size=batch_size,
                                show_progress=kwargs.get("show_progress", False), desc="read the real images")
    if label_real:
        kwargs["real_labels"] = real_outputs.labels
    common = dict(recognizers=recognizers, extractor=extractor, real_features=real_outputs.features,
                  real_statistics=feature_statistics(real_outputs.features)
                  if len(real_outputs.features) >= MIN_IMAGES_FOR_DISTANCES else None,
                  gallery_embeddings=real_outputs.embeddings, batch_size=batch_size, **kwargs)
    results = [evaluate_method(run.method, run.images, real, run.source_index, names=run.names, keys=run.keys,
                               store=store, **common) for run in runs]
    for name in baselines:
        images = baseline_images(name, take(real, baseline_index), fakes=fakes if BASELINES[name].needs_fakes else None)
        results.append(evaluate_method(name, images, real, baseline_index, names=baseline_names,
                                       keys=(baseline_keys or {}).get(name),
                                       store=store if BASELINES[name].needs_fakes else real_store, **common))
    return results


def evaluate_with_baselines(
    anonymized: ImageSetLike,
    real: ImageSetLike,
    fakes: ImageSetLike,
    source_index: np.ndarray,
    recognizers: list[Recognizer],
    extractor: FeatureExtractor,
    baselines: tuple[str, ...] = tuple(BASELINES),
    names: list[str] | None = None,
    **kwargs,
) -> list[MethodResult]:
    """FALCO and every baseline (applied to the real sources) through `evaluate_method`."""
    falco = AnonymizedSet("falco", anonymized, source_index, names)
    return evaluate_runs([falco], real, recognizers, extractor, baselines, fakes, **kwargs)


def summary_table(results: list[MethodResult]) -> pd.DataFrame:
    """One row per method, one column per metric."""
    return pd.DataFrame([{"method": r.method, **r.metrics} for r in results]).set_index("method")
