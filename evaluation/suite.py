"""The evaluation protocol in one place: privacy, attribute preservation and quality of one anonymized set, and
of the baselines through the same code, so the report puts them in one table (DESIGN.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from evaluation.attributes import agreement, pseudo_labels
from evaluation.baselines import BASELINES, apply_baseline
from evaluation.privacy import DETECTORS, combine_tables, detect_faces, evaluate_reidentification
from evaluation.quality import FeatureExtractor, compare_features, feature_statistics, features
from evaluation.recognizers import Recognizer


@dataclass
class MethodResult:
    method: str  # "falco" or a baseline name
    metrics: dict[str, float]
    per_image: pd.DataFrame  # privacy per image: every recognizer's similarity, rank, pass/fail; detections
    attributes: pd.DataFrame | None = None  # per attribute agreement with the real images' labels
    quality: dict = field(default_factory=dict)


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


def real_pseudo_labels(real: np.ndarray, predictors: list, ids: list[str], device="cpu") -> dict[str, pd.DataFrame]:
    return {p.name: pseudo_labels(real, p, ids=ids, device=device) for p in predictors}


def evaluate_method(
    method: str,
    anonymized: np.ndarray,
    real: np.ndarray,
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
) -> MethodResult:
    """All metrics of one anonymized set (uint8 [N, H, W, 3], row i made from real[source_index[i]]).

    What depends on the real set alone can be passed in, computed once for many sets: `real_features`,
    `real_statistics` (their `feature_statistics`), `gallery_embeddings` (per recognizer) and `real_labels`."""
    metrics: dict[str, float] = {}
    reports = [
        evaluate_reidentification(
            r, anonymized, real, source_index, gallery_identity, names=names,
            gallery_embeddings=(gallery_embeddings or {}).get(r.name),
        )
        for r in recognizers
    ]
    for report in reports:
        metrics |= report.metrics()
    per_image = combine_tables(reports)
    for detector in DETECTORS:
        found = detect_faces(anonymized, detector, device=device)
        metrics[f"detection/{detector}/rate"] = found.rate
        per_image[f"detected/{detector}"] = found.detected

    quality = compare_features(real_features, features(anonymized, extractor), extractor,
                               kid_subset_size=min(1000, len(real)), real_statistics=real_statistics)
    metrics |= {f"quality/{k}": v for k, v in quality.metrics().items()}

    table = None
    if predictors:
        ids = names or [str(i) for i in range(len(anonymized))]
        parts = []
        for p in predictors:
            anon_labels = pseudo_labels(anonymized, p, ids=ids, device=device)
            real_rows = real_labels[p.name].iloc[source_index].set_axis(anon_labels.index)
            part = agreement(real_rows, anon_labels).reset_index().rename(columns={"index": "attribute"})
            part.insert(0, "predictor", p.name)
            parts.append(part)
            metrics[f"attributes/{p.name}/mean_agreement"] = float(part["agreement"].mean())
        table = pd.concat(parts, ignore_index=True)
    return MethodResult(method, metrics, per_image, table, quality.as_dict())


@dataclass
class AnonymizedSet:
    """One anonymized image set to evaluate against the real gallery (e.g. one run of `falco anonymize`)."""

    method: str  # its row label in the summary: "falco", or a run label such as "m=0.5"
    images: np.ndarray  # uint8 [N, H, W, 3]
    source_index: np.ndarray  # int [N]: row i was made from real[source_index[i]]
    names: list[str] | None = None  # per-image names for the per-image tables


def evaluate_runs(
    runs: list[AnonymizedSet],
    real: np.ndarray,
    recognizers: list[Recognizer],
    extractor: FeatureExtractor,
    baselines: tuple[str, ...] = (),
    fakes: np.ndarray | None = None,
    **kwargs,
) -> list[MethodResult]:
    """Every set in `runs`, then every baseline, through `evaluate_method` with the real gallery embedded once.
    The baselines are applied to the real sources of the first set (`fakes`: its paired fakes, for "swap")."""
    real_features = features(real, extractor)
    gallery = {r.name: r.embed(real) for r in recognizers}
    common = dict(recognizers=recognizers, extractor=extractor, real_features=real_features,
                  real_statistics=feature_statistics(real_features), gallery_embeddings=gallery, **kwargs)
    results = [evaluate_method(run.method, run.images, real, run.source_index, names=run.names, **common)
               for run in runs]
    first = runs[0]
    sources = real[first.source_index]
    for name in baselines:
        images = apply_baseline(name, sources, fakes=fakes if BASELINES[name].needs_fakes else None)
        results.append(evaluate_method(name, images, real, first.source_index, names=first.names, **common))
    return results


def evaluate_with_baselines(
    anonymized: np.ndarray,
    real: np.ndarray,
    fakes: np.ndarray,
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
