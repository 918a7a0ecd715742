"""What each evaluation metric is and which direction is better: one table, read by the report and the README.

Names follow one convention: a rate is a share of anonymized images (0..1); a recognizer's comparison of an image
with its source is named by its unit (`distance_to_source_*` for dlib, where a larger distance is more private;
`cosine_to_source_*` for the cosine recognizers, where a smaller cosine is more private); quality metrics are
distances between feature distributions (lower = closer to the real images).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class MetricMeaning:
    pattern: str  # a regular expression over metric names; <r> stands for a recognizer, <p> a predictor
    meaning: str
    better: str  # "lower = more private", "higher = more utility", ...
    example: str  # a name it matches, for the tables


GLOSSARY: tuple[MetricMeaning, ...] = (
    MetricMeaning(r"reid/[^/]+/top(\d+)_rate", "share of anonymized images whose own source (or, with identity "
                  "labels, any image of the same person) is among the k real faces the recognizer finds most alike",
                  "lower = more private", "reid/dlib/top1_rate"),
    MetricMeaning(r"reid/[^/]+/verification_rate", "share of anonymized images the recognizer verifies as the same "
                  "person as their source (its threshold, below)", "lower = more private",
                  "reid/dlib/verification_rate"),
    MetricMeaning(r"reid/dlib/worst_shard_verification_rate", "the pipeline's: the largest share of one shard's "
                  "images dlib verifies as their source; the blocking privacy check judges each shard, so the release "
                  "rule (report, `falco runs compare`) judges this as well as the whole set's", "lower = more private",
                  "reid/dlib/worst_shard_verification_rate"),
    MetricMeaning(r"reid/[^/]+/pass_rate", "share of anonymized images neither verified against their source nor "
                  "ranked first (the privacy check's 'passed')", "higher = more private", "reid/dlib/pass_rate"),
    MetricMeaning(r"reid/[^/]+/(distance|cosine)_to_source_std", "spread (standard deviation) of the recognizer's "
                  "distance (or cosine) between each anonymized image and its source: how evenly the variant "
                  "anonymizes, not how much", "-", "reid/dlib/distance_to_source_std"),
    MetricMeaning(r"reid/[^/]+/distance_to_source_\w+", "distribution (mean, min, percentiles, max) of the "
                  "recognizer's distance between each anonymized image and its source", "higher = more private",
                  "reid/dlib/distance_to_source_median"),
    MetricMeaning(r"reid/[^/]+/cosine_to_source_\w+", "distribution (mean, min, percentiles, max) of the "
                  "cosine similarity between each "
                  "anonymized image's embedding and its source's", "lower = more private",
                  "reid/facenet_vggface2/cosine_to_source_median"),
    MetricMeaning(r"reid/[^/]+/images", "anonymized images compared with the real gallery", "-",
                  "reid/dlib/images"),
    MetricMeaning(r"detection/[^/]+/rate", "share of anonymized images in which the detector still finds a face",
                  "higher = more utility (still a face)", "detection/mtcnn/rate"),
    MetricMeaning(r"quality/(fid|fd)_\w+", "Fréchet distance between the real and the anonymized images' feature "
                  "distributions (fid_inception: the official FID; fd_<x>: another extractor, not comparable with "
                  "FID)", "lower = more utility", "quality/fd_dlib"),
    MetricMeaning(r"quality/(kid|kd)_\w+", "kernel (polynomial MMD) distance between the same distributions",
                  "lower = more utility", "quality/kd_dlib"),
    MetricMeaning(r"attributes/[^/]+/mean_agreement", "share of (image, attribute) pairs for which the attribute "
                  "predictor gives the anonymized image the label it gives the real one", "higher = more utility",
                  "attributes/anycost/mean_agreement"),
    MetricMeaning(r"attributes/attribute_classifier/mean_accuracy_(real|anon)", "the CelebA attribute classifier "
                  "(trained on the real train split) on the test split: mean accuracy against the labels, on the "
                  "real images and on their anonymized versions", "higher = more utility",
                  "attributes/attribute_classifier/mean_accuracy_anon"),
    MetricMeaning(r"attributes/attribute_classifier/test_images", "the test images the attribute classifier was "
                  "scored on (a handful: its figures are noise)", "-", "attributes/attribute_classifier/test_images"),
    MetricMeaning(r"attributes/attribute_classifier/varied_attributes", "the attributes to which the classifier gave "
                  "the real test images both labels (0: it learned none, and its agreement cannot tell methods "
                  "apart)", "-", "attributes/attribute_classifier/varied_attributes"),
    MetricMeaning(r"pseudonym/[^/]+/anon_same_person_match_rate", "with identity labels: share of pairs of anonymized "
                  "images of one person that the recognizer verifies as the same person (a consistent pseudonym; "
                  "identity-aware pairing)", "higher = more utility (identity structure kept)",
                  "pseudonym/dlib/anon_same_person_match_rate"),
    MetricMeaning(r"pseudonym/[^/]+/real_same_person_match_rate", "the same share for the real images of those "
                  "pairs: what the recognizer achieves on the real data", "- (reference)",
                  "pseudonym/dlib/real_same_person_match_rate"),
    MetricMeaning(r"pseudonym/[^/]+/anon_other_person_match_rate", "share of pairs of anonymized images of two "
                  "different people verified as one person (identities merged)", "lower = more utility",
                  "pseudonym/dlib/anon_other_person_match_rate"),
    MetricMeaning(r"pseudonym/[^/]+/anon_separation_auc", "probability that a pair of anonymized images of one person "
                  "is more alike to the recognizer than a pair of two people (ROC AUC; 0.5: the anonymized set "
                  "keeps no identity structure, 1: one distinct pseudonym per person), threshold-free",
                  "higher = more utility (identity structure kept)", "pseudonym/dlib/anon_separation_auc"),
    MetricMeaning(r"pseudonym/[^/]+/real_separation_auc", "the same on the real images of those pairs",
                  "- (reference)", "pseudonym/dlib/real_separation_auc"),
    MetricMeaning(r"pseudonym/[^/]+/pairs", "same-person pairs compared (all of them, up to 100,000 drawn)",
                  "-", "pseudonym/dlib/pairs"),
    MetricMeaning(r"pseudonym/[^/]+/other_pairs", "different-person pairs compared: as many as the same-person pairs, "
                  "drawn without repeats, or every one there is when there are fewer (few pairs: the rates and the "
                  "AUC take only a few values)", "-", "pseudonym/dlib/other_pairs"),
    MetricMeaning(r"num_images", "images evaluated", "-", "num_images"),
)


def meaning_of(metric: str) -> MetricMeaning | None:
    """The glossary row whose pattern matches `metric` in full, or None."""
    return next((m for m in GLOSSARY if re.fullmatch(m.pattern, metric)), None)


def better_of(metric: str) -> str:
    """The direction of `metric` ("lower = more private", ...), or "" when the glossary has no row for it."""
    found = meaning_of(metric)
    return found.better if found else ""


def shown_number(value) -> str:
    """How every table a person reads (report.md, report.html, `falco runs compare`) writes a value: a float to 4
    significant digits of its exact value (0.91875 is 0.9187), so one number reads the same everywhere, a whole
    number (an image count) in full; "-" when missing. The aligned report's metrics.csv, metrics.json and MLflow
    keep every digit."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) < 1e15:  # a count stored as a float (30000.0): every digit
            return str(int(value))
        return f"{float(value):.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame, index: bool = True) -> str:
    """`frame` as a markdown table with its numbers as `shown_number` writes them (tabulate would reformat them)."""
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in frame.columns]
    align = (["left"] if index else []) + ["right" if n else "left" for n in numeric]
    text = frame.astype(object).map(shown_number)
    return text.to_markdown(index=index, disable_numparse=True, colalign=align)


def with_direction(metrics_by_row: pd.DataFrame) -> pd.DataFrame:
    """A table whose rows are metrics (index named `metric`), with a last column `better` saying which way is better."""
    out = metrics_by_row.copy()
    out.index.name = "metric"
    return out.assign(better=[better_of(str(m)) for m in out.index])
