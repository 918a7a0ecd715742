"""The CelebA-HQ protocol's attribute classifier around a dataset: which rows train and test it, its settings from
params.yaml's `attribute_classifier:` section, its weights as a stored value, and its metrics on the anonymized
test split (evaluation.attributes holds the network, the training loop and the scores).

Data without CelebA attribute labels (LFW, a plain folder) follows the paper's LFW protocol ("similarly to the case
of CelebA-HQ"): the classifier learns the attribute predictors' pseudo-labels of the real train split (Anycost
GAN's 40 attributes and Talk-to-Edit's 5, one output each) and is scored on the anonymized test split against the
real images' pseudo-labels (`training_frame`). Data with neither gets an explicit `skipped` result with the reason,
so the rest of the evaluation runs unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import torch

from anon_core.artifacts import Weights
from anon_core.celeba import CELEBA_ATTRIBUTES
from anon_core.data.image_files import take
from anon_core.errors import ParamsError
from anon_core.params import coerce_value
from evaluation.attributes import (
    ClassifierConfig,
    accuracy,
    build_classifier,
    classifier_labels,
    classifier_utility,
    config_dict,
    train_attribute_classifier,
)
from evaluation.image_sets import ImageSetLike

NAME = "attribute_classifier"  # the predictor name of its rows in the attribute tables and metric names
VARIED = "varied_attributes"  # its metric: attributes it gave the real test images both labels of
CELEBA_LABELS, PSEUDO_LABELS = "celeba labels", "pseudo-labels"  # what the classifier learns
SPLIT_TENTHS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}  # for rows the dataset leaves out


_FIELD_TYPES = {"width": "int", "image_size": "int", "batch_size": "int", "epochs": "int", "lr": "float",
                "weight_decay": "float", "hflip": "bool", "seed": "int"}  # besides layers and max_steps


def classifier_config(values: dict[str, Any], source: str = "params.yaml") -> ClassifierConfig:
    """ClassifierConfig from the `attribute_classifier:` section (every field given), checked."""
    known = [f.name for f in fields(ClassifierConfig)]
    unknown, missing = sorted(set(values) - set(known)), sorted(set(known) - set(values))
    if unknown or missing:
        raise ParamsError(f"{source}: attribute_classifier: " + "; ".join(
            part for part in (f"unknown key(s) {', '.join(unknown)}" if unknown else "",
                              f"missing key(s) {', '.join(missing)}" if missing else "") if part)
                          + f" (keys: {', '.join(known)})")
    where = f"{source}: attribute_classifier."
    layers = values["layers"]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ParamsError(f"{where}layers = {layers!r} must be a list of block counts, e.g. [3, 4, 6, 3]")
    config = ClassifierConfig(**{
        **{k: coerce_value(values[k], _FIELD_TYPES[k], where + k) for k in known if k not in ("layers", "max_steps")},
        "layers": tuple(coerce_value(n, "int", f"{where}layers") for n in layers),
        "max_steps": None if values["max_steps"] is None else coerce_value(values["max_steps"], "int",
                                                                            f"{where}max_steps")})
    problems = [f"{k} = {getattr(config, k)} must be >= 1" for k in ("epochs", "batch_size", "image_size")
                if getattr(config, k) < 1]
    if config.lr <= 0:
        problems.append(f"lr = {config.lr} must be > 0")
    if problems:
        raise ParamsError(f"{source}: attribute_classifier: " + "; ".join(problems))
    return config


def labelled_attributes(frame: pd.DataFrame) -> list[str]:
    """The label columns of a table that hold labels: CelebA's attributes in CelebA's order, or the
    `<predictor>/<attribute>` pseudo-label columns of `training_frame`."""
    celeba = [a for a in CELEBA_ATTRIBUTES if a in frame.columns and frame[a].notna().any()]
    return celeba or [c for c in frame.columns if "/" in c and frame[c].notna().any()]


def training_frame(frame: pd.DataFrame, pseudo_labels: pd.DataFrame | None) -> tuple[pd.DataFrame, str]:
    """(the table the classifier is trained and scored on, which labels it holds): `frame` itself when it has
    CelebA attribute labels with a train split (the CelebA-HQ protocol); else, given the attribute predictors'
    pseudo-labels of the real images (`attribute_pseudo_labels`), `frame` with those as its label columns (the LFW
    protocol) and every row without a split placed in train/val/test (80/10/10) by a hash of its identity (or its
    image when unlabelled), so one person's images stay in one split and the split never changes."""
    if skip_reason(frame) is None or pseudo_labels is None or not len(pseudo_labels):
        return frame, CELEBA_LABELS
    labels = pseudo_labels.set_index("image")
    columns = [c for c in labels.columns if not c.endswith("_prob")]
    out = frame.drop(columns=[c for c in CELEBA_ATTRIBUTES if c in frame.columns])
    out = out.join(labels[columns].astype(float), on="image")
    given = out["split"] if "split" in out.columns else pd.Series(None, index=out.index, dtype="string")
    owner = out["identity"].fillna(out["image"]) if "identity" in out.columns else out["image"]
    out["split"] = [s if isinstance(s, str) and s else _split_of(str(o)) for s, o in zip(given, owner)]
    return out, PSEUDO_LABELS


def _split_of(owner: str) -> str:
    tenth = int(hashlib.sha256(owner.encode()).hexdigest()[:8], 16) % 10
    return next(split for split, tenths in SPLIT_TENTHS.items() if tenth in tenths)


def labelled_rows(frame: pd.DataFrame, split: str, attributes: list[str]) -> np.ndarray:
    """Positions of the rows of `split` whose every attribute in `attributes` is labelled."""
    if "split" not in frame.columns or not attributes:
        return np.zeros(0, dtype=np.int64)
    chosen = (frame["split"] == split).fillna(False).to_numpy(dtype=bool)
    return np.flatnonzero(chosen & frame[attributes].notna().all(axis=1).to_numpy())


def ground_truth(frame: pd.DataFrame, rows: np.ndarray, attributes: list[str]) -> pd.DataFrame:
    """Bool labels of `rows`, indexed by image name."""
    values = frame.loc[rows, attributes].to_numpy(dtype=np.float64) > 0  # CelebA's 1/0 (or 1/-1)
    return pd.DataFrame(values, index=pd.Index(frame.loc[rows, "image"], name="image"), columns=attributes)


def skip_reason(frame: pd.DataFrame) -> str | None:
    """Why no classifier can be trained on this table (the ok rows of real_images, or `training_frame`'s), or
    None."""
    attributes = labelled_attributes(frame)
    if not attributes:
        return ("skipped: no CelebA attribute labels and no pseudo-labels (give a CelebA-HQ folder with "
                "CelebAMask-HQ-attribute-anno.txt, or a labels CSV with attribute columns such as Smiling)")
    if not len(labelled_rows(frame, "train", attributes)):
        return ("skipped: no image of the train split has every attribute labelled (CelebA-HQ needs "
                "CelebA-HQ-to-CelebA-mapping.txt for its split; a labels CSV needs a split column)")
    return None


def skipped(reason: str) -> Weights:
    return Weights(arrays={}, metadata={"status": "skipped", "reason": reason})


@dataclass
class TrainedClassifier:
    weights: Weights
    summary: dict[str, float]  # first/last epoch loss, seconds, mean val accuracy
    val_accuracy: pd.DataFrame  # attribute, accuracy, ... on the real val split
    num_train: int
    num_val: int
    steps: int  # optimizer steps taken


def train_on_real(frame: pd.DataFrame, images: ImageSetLike, config: ClassifierConfig,
                  device: torch.device | str = "cpu", log=None, labels: str = CELEBA_LABELS) -> TrainedClassifier:
    """Train on the real train split of `frame` (the ok rows of real_images, or `training_frame`'s table; `images`
    in the same order) and score the real val split. `labels` (CELEBA_LABELS or PSEUDO_LABELS) is recorded with the
    weights. `log` gets every training step's entry."""
    attributes = labelled_attributes(frame)
    train = labelled_rows(frame, "train", attributes)
    val = labelled_rows(frame, "val", attributes)
    model, history = train_attribute_classifier(
        take(images, train), ground_truth(frame, train, attributes).to_numpy(), config, device, log)
    truth = ground_truth(frame, val, attributes)
    predicted = classifier_labels(model, take(images, val), config.image_size, device)
    val_table = accuracy(pd.DataFrame(predicted, index=truth.index, columns=attributes), truth).reset_index()
    losses = pd.DataFrame(history)
    by_epoch = losses.groupby("epoch")["loss"].mean()
    summary = {
        "train_loss_first_epoch": float(by_epoch.iloc[0]),
        "train_loss_last_epoch": float(by_epoch.iloc[-1]),
        "train_seconds": float(losses["seconds"].iloc[-1]),
        "val_mean_accuracy": float(val_table["accuracy"].mean()) if len(val) else float("nan"),
    }
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    weights = Weights(arrays=arrays, metadata={"status": "trained", "attributes": json.dumps(attributes),
                                               "config": json.dumps(config_dict(config)), "num_train": str(len(train)),
                                               "labels": labels})
    return TrainedClassifier(weights, summary, val_table, len(train), len(val), len(history))


def load_classifier(weights: Weights, device: torch.device | str = "cpu"):
    """(model, ClassifierConfig, attribute names) of a trained `attribute_classifier` value."""
    values = json.loads(weights.metadata["config"])
    config = ClassifierConfig(**{**values, "layers": tuple(values["layers"])})
    attributes = json.loads(weights.metadata["attributes"])
    model = build_classifier(config, len(attributes))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.arrays.items()})
    return model.to(device).eval(), config, attributes


def classifier_scores(weights: Weights, frame: pd.DataFrame, real: ImageSetLike, anonymized: ImageSetLike,
                      rows: np.ndarray, device: torch.device | str = "cpu") -> tuple[pd.DataFrame | None, str]:
    """The classifier applied to the labelled real test images (the ok rows of real_images, `real` in the same
    order) and to their anonymized versions (`anonymized[i]` is made from real row `rows[i]`): per-attribute rows
    (predictor `attribute_classifier`: `accuracy_real`, `accuracy_anon`, `drop`, `agreement`, ...), or None, and
    what was done."""
    if weights.metadata.get("status") != "trained":
        return None, weights.metadata.get("reason", "skipped")
    model, config, attributes = load_classifier(weights, device)
    source = {int(r): i for i, r in enumerate(rows)}
    test = np.array([r for r in labelled_rows(frame, "test", attributes) if r in source], dtype=np.int64)
    if not len(test):
        return None, "not evaluated: no anonymized image of the test split has every attribute labelled"
    scores = classifier_utility(model, take(real, test), take(anonymized, [source[r] for r in test]),
                                ground_truth(frame, test, attributes), config, device).reset_index()
    scores.insert(0, "predictor", NAME)
    return scores, f"evaluated on {len(test)} test images"


def add_classifier_scores(result, weights: Weights, frame: pd.DataFrame, real: ImageSetLike,
                          images: ImageSetLike, rows: np.ndarray, device: torch.device | str = "cpu") -> str:
    """`classifier_scores` of a method's `images` (made from the real `rows`) added to its `result`
    (`evaluation.suite.MethodResult`): its per-attribute rows and its summary metrics, for a variant and a baseline
    alike, so that both are points of the privacy-vs-utility scatter on the classifier's axis. Returns what was
    done."""
    scores, done = classifier_scores(weights, frame, real, images, rows, device)
    if scores is not None:
        result.attributes = pd.concat([t for t in (result.attributes, scores) if t is not None], ignore_index=True)
        result.metrics |= classifier_metrics(scores)
    return done


def classifier_metrics(scores: pd.DataFrame) -> dict[str, float]:
    """The summary metrics of `classifier_scores`' table: mean accuracy on real and anonymized, mean agreement, the
    test images it was scored on, and the attributes for which it gave the real test images both labels (`VARIED`:
    at 0 it gave every image one label per attribute, and agrees with itself on any image, a black mask's too)."""
    varied = ((scores["real_positive_rate"] > 0) & (scores["real_positive_rate"] < 1)).sum()
    return {**{f"attributes/{NAME}/mean_{c}": float(scores[c].mean())
               for c in ("accuracy_real", "accuracy_anon", "agreement")},
            f"attributes/{NAME}/test_images": float(scores["n"].max()), f"attributes/{NAME}/{VARIED}": float(varied)}
