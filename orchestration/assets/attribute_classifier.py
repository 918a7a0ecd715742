"""Group `evaluation`: the CelebA attribute classifier of the paper's CelebA-HQ protocol, trained on the real train
split; `add_classifier_metrics_` applies it to the real and the anonymized test split for `evaluation_metrics`.

Data without CelebA attribute labels (LFW, a plain folder) or without a train split gets an explicit skipped
result, so the rest of the graph runs unchanged.
"""

import json
from dataclasses import fields

import dagster as dg
import numpy as np
import pandas as pd

from anon_core.celeba import CELEBA_ATTRIBUTES
from anon_core.errors import ParamsError
from orchestration.io_manager import ImageSet, Weights
from orchestration.metadata import table
from orchestration.resources import NetworksResource
from orchestration.tracking import MlflowResource

GROUP = "evaluation"
NAME = "attribute_classifier"  # the predictor name of its rows in the attribute tables and metric names
SECTION = "attribute_classifier"  # of params.yaml
LOG_EVERY = 50  # training steps per MLflow write


class AttributeClassifierConfig(dg.Config):
    """Overrides of params.yaml's `attribute_classifier:` section; None keeps the file's value."""

    epochs: int | None = None
    lr: float | None = None  # Adam
    batch_size: int | None = None
    image_size: int | None = None  # side the images are resized to for training and testing

    def overrides(self) -> dict:
        return {k: getattr(self, k) for k in ("epochs", "lr", "batch_size", "image_size")}


def classifier_config(networks: NetworksResource, overrides: dict | None = None):
    """evaluation.attributes.ClassifierConfig from params.yaml's `attribute_classifier:` section (with the
    resource profile's entry applied), then the non-None `overrides`."""
    from anon_core.params import DEFAULT_PARAMS_PATH
    from evaluation.attributes import ClassifierConfig

    source = networks.params_path or DEFAULT_PARAMS_PATH
    values = networks.section(SECTION)
    values |= {k: v for k, v in (overrides or {}).items() if v is not None}
    known = [f.name for f in fields(ClassifierConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ParamsError(f"{source}: {SECTION}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if "layers" in values:
        values["layers"] = tuple(int(n) for n in values["layers"])
    config = ClassifierConfig(**values)
    problems = [f"{k} = {getattr(config, k)} must be >= 1" for k in ("epochs", "batch_size", "image_size")
                if getattr(config, k) < 1]
    if config.lr <= 0:
        problems.append(f"lr = {config.lr} must be > 0")
    if problems:
        raise ParamsError(f"{source}: {SECTION}: " + "; ".join(problems))
    return config


def labelled_attributes(frame: pd.DataFrame) -> list[str]:
    """The CelebA attribute columns of a real_images table that hold labels, in CelebA's order."""
    return [a for a in CELEBA_ATTRIBUTES if a in frame.columns and frame[a].notna().any()]


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


def _skipped(reason: str) -> Weights:
    return Weights(arrays={}, metadata={"status": "skipped", "reason": reason})


def _skip_reason(attributes: list[str], train: np.ndarray) -> str | None:
    if not attributes:
        return ("skipped: no CelebA attribute labels (give a CelebA-HQ folder with CelebAMask-HQ-attribute-anno.txt, "
                "or a labels CSV with attribute columns such as Smiling)")
    if not len(train):
        return ("skipped: no image of the train split has every attribute labelled (CelebA-HQ needs "
                "CelebA-HQ-to-CelebA-mapping.txt for its split; a labels CSV needs a split column)")
    return None


@dg.asset(group_name=GROUP, code_version="1", op_tags={"falco/device": "gpu"})
def attribute_classifier(
    context: dg.AssetExecutionContext,
    config: AttributeClassifierConfig,
    real_images: ImageSet,
    networks: NetworksResource,
    mlflow: MlflowResource,
) -> Weights:
    """A ResNet classifier of the CelebA attributes, trained from scratch on the real train split (settings:
    params.yaml's `attribute_classifier:`), stored as safetensors with its config; per-attribute accuracy on the
    real val split in the metadata. Skipped (status `skipped`) when the data has no attribute labels."""
    from anon_core.data.image_files import take
    from anon_core.stages import resolve_device
    from evaluation.attributes import accuracy, classifier_labels, config_dict, train_attribute_classifier

    frame = real_images.named
    attributes = labelled_attributes(frame)
    train = labelled_rows(frame, "train", attributes)
    reason = _skip_reason(attributes, train)
    if reason is not None:
        context.log.info(reason)
        context.add_output_metadata({"status": "skipped", "reason": reason})
        return _skipped(reason)

    settings = classifier_config(networks, config.overrides())
    device = resolve_device(networks.device)
    val = labelled_rows(frame, "val", attributes)
    context.log.info(f"training on {len(train)} images ({len(attributes)} attributes), {settings.epochs} epochs")
    with mlflow.asset_run(context, networks, {SECTION: config_dict(settings)}) as run:
        pending: list[dict] = []

        def log(entry: dict | None) -> None:  # None: flush
            if entry is not None:
                pending.append(entry)
            if pending and (entry is None or len(pending) >= LOG_EVERY):
                run.log_histories({"train/loss": [e["loss"] for e in pending]}, first_step=pending[0]["step"])
                pending.clear()

        model, history = train_attribute_classifier(
            take(real_images.images, train), ground_truth(frame, train, attributes).to_numpy(), settings, device, log
        )
        log(None)
        truth = ground_truth(frame, val, attributes)
        predicted = classifier_labels(model, take(real_images.images, val), settings.image_size, device)
        val_table = accuracy(pd.DataFrame(predicted, index=truth.index, columns=attributes), truth).reset_index()
        losses = pd.DataFrame(history)
        by_epoch = losses.groupby("epoch")["loss"].mean()
        summary = {
            "train_loss_first_epoch": float(by_epoch.iloc[0]),
            "train_loss_last_epoch": float(by_epoch.iloc[-1]),
            "train_seconds": float(losses["seconds"].iloc[-1]),
            "val_mean_accuracy": float(val_table["accuracy"].mean()) if len(val) else float("nan"),
        }
        run.log_metrics({**summary, **{f"val_accuracy/{r.attribute}": r.accuracy for r in val_table.itertuples()}})
        run.log_table(val_table, "val_accuracy.csv")
    context.add_output_metadata(
        {**run.metadata, "status": "trained", "num_train": len(train), "num_val": len(val),
         "num_attributes": len(attributes), "steps": len(history), "device": str(device), **summary,
         "val_accuracy": table(val_table)}
    )
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return Weights(arrays=arrays, metadata={
        "status": "trained", "attributes": json.dumps(attributes), "config": json.dumps(config_dict(settings)),
        "num_train": str(len(train)),
    })


def load_classifier(weights: Weights, device: "torch.device | str" = "cpu"):
    """(model, ClassifierConfig, attribute names) of a trained `attribute_classifier` value."""
    import torch

    from evaluation.attributes import ClassifierConfig, build_classifier

    values = json.loads(weights.metadata["config"])
    config = ClassifierConfig(**{**values, "layers": tuple(values["layers"])})
    attributes = json.loads(weights.metadata["attributes"])
    model = build_classifier(config, len(attributes))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.arrays.items()})
    return model.to(device).eval(), config, attributes


def add_classifier_metrics_(
    result: "MethodResult",
    weights: Weights,
    real_images: ImageSet,
    anonymized: "np.ndarray | ImageFiles",
    rows: np.ndarray,
    device: "torch.device | str" = "cpu",
) -> str:
    """Apply the classifier to the labelled real test images and to their anonymized versions (`anonymized[i]` is
    made from real row `rows[i]`): adds per-attribute rows (predictor `attribute_classifier`, with `accuracy_real`,
    `accuracy_anon`, `drop`, `agreement`) to `result.attributes` and their means to `result.metrics`
    (an evaluation.suite.MethodResult). Returns what was done, for the metadata."""
    from anon_core.data.image_files import take
    from evaluation.attributes import classifier_utility

    if weights.metadata.get("status") != "trained":
        return weights.metadata.get("reason", "skipped")
    model, config, attributes = load_classifier(weights, device)
    frame = real_images.named
    source = {int(r): i for i, r in enumerate(rows)}
    test = np.array([r for r in labelled_rows(frame, "test", attributes) if r in source], dtype=np.int64)
    if not len(test):
        return "not evaluated: no anonymized image of the test split has every attribute labelled"
    scores = classifier_utility(model, take(real_images.images, test), take(anonymized, [source[r] for r in test]),
                                ground_truth(frame, test, attributes), config, device)
    scores = scores.reset_index()
    scores.insert(0, "predictor", NAME)
    result.attributes = scores if result.attributes is None else pd.concat([result.attributes, scores],
                                                                            ignore_index=True)
    result.metrics |= {f"attributes/{NAME}/mean_{c}": float(scores[c].mean())
                       for c in ("accuracy_real", "accuracy_anon", "agreement")}
    return f"evaluated on {len(test)} test images"
