"""Attribute preservation: pseudo-labels, real-vs-anonymized agreement, accuracy, and the CelebA-HQ classifier.

Protocol (FALCO, after CIAGAN; see DESIGN.md section 5):
- LFW has no attribute labels: both the real and the anonymized images are pseudo-labelled by pre-trained CelebA
  predictors (`anon_core.networks.attribute_predictors`: Anycost GAN's 40 attributes, Talk-to-Edit's five), and
  the agreement per attribute is the fraction of images whose anonymized label equals the real one.
- CelebA-HQ has its 40 labels: a classifier trained on the real train split is evaluated on the real and on the
  anonymized test split (accuracy against the ground truth); a small drop means the attributes survived.
The classifier is torchvision's ResNet layout (`anon_core.networks.resnet50`; ResNet-50 by default, any depth/width
by config), trained from scratch with BCE-with-logits and Adam on [-1, 1] images resized to `image_size`. On the
CPU it trains and labels with one torch thread (`single_cpu_thread`), so its weights and numbers do not depend on
the machine's thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from anon_core.errors import FalcoError
from anon_core.networks.attribute_predictors import CELEBA_ATTRIBUTES
from anon_core.networks.resnet50 import ResNet, ResNetConfig
from evaluation.image_sets import ImageSetLike, read_parts
from evaluation.quality import image_batches

__all__ = [
    "AttributeFileError",
    "AttributePredictor",
    "ClassifierConfig",
    "LABEL_BATCH_SIZE",
    "accuracy",
    "agreement",
    "build_classifier",
    "classifier_labels",
    "classifier_utility",
    "config_dict",
    "pseudo_labels",
    "read_celeba_attributes",
    "single_cpu_thread",
    "train_attribute_classifier",
]


LABEL_BATCH_SIZE = 32  # images per forward pass of a pseudo-labelling predictor


class AttributePredictor(Protocol):
    """What `pseudo_labels` needs; both predictors in anon_core.networks.attribute_predictors satisfy it."""

    name: str
    attributes: tuple[str, ...]

    def scores(self, images: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]: ...


def _ids(ids: Sequence[str] | None, n: int) -> pd.Index:
    if ids is None:
        return pd.Index([f"{i:06d}" for i in range(n)], name="image")
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} images")
    return pd.Index([str(i) for i in ids], name="image")


@torch.no_grad()
def pseudo_labels(
    images: ImageSetLike | Tensor,
    predictor: AttributePredictor,
    ids: Sequence[str] | None = None,
    batch_size: int = LABEL_BATCH_SIZE,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Label images with a pre-trained predictor.

    `images`: uint8 [N, H, W, 3] (a set read batch by batch) or [-1, 1] [N, 3, H, W] aligned faces. Returns one
    row per image (index `image`: `ids`, default zero-padded positions), for each attribute a bool column `<attr>`
    and a float column `<attr>_prob` (P(present)); `df.attrs["predictor"]` names the predictor.
    """
    probs: dict[str, list[np.ndarray]] = {a: [] for a in predictor.attributes}
    labels: dict[str, list[np.ndarray]] = {a: [] for a in predictor.attributes}
    n = 0
    for batch in image_batches(images, batch_size, device):
        batch_probs, batch_labels = predictor.scores(batch)
        for a in predictor.attributes:
            probs[a].append(batch_probs[a].float().cpu().numpy())
            labels[a].append(batch_labels[a].cpu().numpy())
        n += len(batch)
    columns: dict[str, np.ndarray] = {}
    for a in predictor.attributes:
        columns[a] = np.concatenate(labels[a]).astype(bool) if n else np.zeros(0, bool)
        columns[f"{a}_prob"] = np.concatenate(probs[a]).astype(np.float32) if n else np.zeros(0, np.float32)
    frame = pd.DataFrame(columns, index=_ids(ids, n))
    frame.attrs["predictor"] = predictor.name
    return frame


def _label_columns(frame: pd.DataFrame, attributes: Sequence[str] | None) -> list[str]:
    names = list(attributes) if attributes is not None else [c for c in frame.columns if not c.endswith("_prob")]
    missing = [a for a in names if a not in frame.columns]
    if missing:
        raise ValueError(f"attribute columns {missing} are not in the label table (columns: {list(frame.columns)})")
    return names


def _aligned(first: pd.DataFrame, second: pd.DataFrame, what: str) -> pd.DataFrame:
    """`second` reordered to `first`'s index; both must hold exactly the same images."""
    only_first = first.index.difference(second.index)
    only_second = second.index.difference(first.index)
    if len(only_first) or len(only_second) or first.index.has_duplicates:
        raise ValueError(
            f"{what}: the two tables must label the same images once each; only in the first: "
            f"{list(only_first[:5])}, only in the second: {list(only_second[:5])}, "
            f"duplicated: {first.index.has_duplicates}"
        )
    return second.loc[first.index]


def _as_bool(values: pd.Series) -> np.ndarray:
    """CelebA's -1/1, 0/1 or bool labels -> bool."""
    return values.to_numpy().astype(np.float64) > 0


def _compare_labels(first: pd.DataFrame, second: pd.DataFrame, names: list[str], score: str,
                    rates: tuple[str, str]) -> pd.DataFrame:
    """Per attribute: the share of images whose two labels are equal (`score`), `n`, and each table's positive
    rate (named `rates`); tables already aligned by image id."""
    rows = []
    for a in names:
        x, y = _as_bool(first[a]), _as_bool(second[a])
        empty = float("nan")
        rows.append({"attribute": a, score: float((x == y).mean()) if len(x) else empty, "n": len(x),
                     rates[0]: float(x.mean()) if len(x) else empty, rates[1]: float(y.mean()) if len(y) else empty})
    return pd.DataFrame(rows).set_index("attribute")


def agreement(real: pd.DataFrame, anon: pd.DataFrame, attributes: Sequence[str] | None = None) -> pd.DataFrame:
    """Per attribute: fraction of images whose anonymized label equals the real one, with both positive rates.

    `real` / `anon`: `pseudo_labels` tables over the same image ids (matched by index, any order).
    Returns a table indexed by attribute with `agreement`, `n`, `real_positive_rate`, `anon_positive_rate`.
    """
    names = _label_columns(real, attributes)
    anon = _aligned(real, anon, "agreement")
    return _compare_labels(real, anon, names, "agreement", ("real_positive_rate", "anon_positive_rate"))


def accuracy(
    predicted: pd.DataFrame, ground_truth: pd.DataFrame, attributes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per attribute accuracy of predicted labels against ground truth (CelebA -1/1, 0/1 or bool), by image id."""
    names = _label_columns(predicted, attributes)
    truth = _aligned(predicted, ground_truth, "accuracy")
    return _compare_labels(truth, predicted, names, "accuracy", ("true_positive_rate", "predicted_positive_rate"))


class AttributeFileError(FalcoError, ValueError):
    """A CelebA attribute annotation file that cannot be parsed."""


def read_celeba_attributes(path: Path | str) -> pd.DataFrame:
    """Read `list_attr_celeba.txt` / CelebAMask-HQ's `CelebAMask-HQ-attribute-anno.txt`: bool table by file name.

    Format: first line the image count, second the 40 attribute names, then `<file> <40 values of -1/1>` per line.
    """
    path = Path(path)
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        count, names = int(lines[0][0]), lines[1]
        rows = lines[2:]
        if len(rows) != count or any(len(row) != len(names) + 1 for row in rows):
            raise ValueError(f"expected {count} rows of a file name and {len(names)} values")
        values = np.array([[int(v) for v in row[1:]] for row in rows]) > 0
    except (OSError, ValueError, IndexError) as error:
        raise AttributeFileError(
            f"{path}: not a CelebA attribute file ({error}); expected the count, the attribute names, then "
            "'<image> <-1/1 per attribute>' lines, as list_attr_celeba.txt."
        ) from None
    return pd.DataFrame(values, index=pd.Index([row[0] for row in rows], name="image"), columns=names)


@dataclass(frozen=True)
class ClassifierConfig:
    """CelebA-HQ attribute classifier training settings; the values are params.yaml's `attribute_classifier:`
    section (evaluation.attribute_classifier.classifier_config), which says why each is what it is."""

    layers: tuple[int, ...]  # ResNet blocks per stage: (3, 4, 6, 3) is ResNet-50
    width: int  # first-stage planes (64 = ResNet-50)
    image_size: int  # training/eval side
    batch_size: int
    epochs: int
    max_steps: int | None  # stop early after this many optimizer steps (None: all epochs)
    lr: float  # Adam
    weight_decay: float
    hflip: bool  # random horizontal flips: attributes are left-right symmetric
    seed: int  # initialization, data order and flips

    def backbone(self, num_classes: int) -> ResNetConfig:
        return ResNetConfig(layers=self.layers, width=self.width, num_classes=num_classes)


def build_classifier(config: ClassifierConfig, num_attributes: int = len(CELEBA_ATTRIBUTES)) -> ResNet:
    """A seeded, untrained ResNet with one logit per attribute."""
    torch.manual_seed(config.seed)
    return ResNet(config.backbone(num_attributes))


@contextmanager
def single_cpu_thread(device: torch.device | str) -> Iterator[None]:
    """One torch thread while the classifier runs on the CPU, the caller's count restored after. With more, the
    threads split BatchNorm's statistics and the weight gradients into partial sums by their count, so another
    count rounds differently and Adam carries that into other weights and labels (docs/evaluation.md). A GPU's
    result does not depend on the CPU's threads, which then keep all of theirs for preparing its batches."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _prepare(batch: Tensor, size: int) -> Tensor:
    if tuple(batch.shape[-2:]) != (size, size):
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return batch


def train_attribute_classifier(
    images: ImageSetLike,
    labels: np.ndarray,
    config: ClassifierConfig,
    device: torch.device | str = "cpu",
    log: Callable[[dict], None] | None = None,
) -> tuple[ResNet, list[dict]]:
    """Train on real images: uint8 [N, H, W, 3] (an ndarray, a np.memmap or an ImageFiles: only the batches are
    read, the next ones ahead in a thread), bool/0-1/-1-1 labels [N, A].

    Returns the model (eval mode) and the per-step history [{"step", "epoch", "loss", "seconds"}]; `log` is called
    with each entry (e.g. to log to MLflow from the orchestration layer).
    """
    targets = torch.from_numpy(np.asarray(labels).astype(np.float64) > 0).float()  # (N, A)
    if images.ndim != 4 or len(images) != len(targets):
        raise ValueError(f"{len(images)} images {images.shape} but {len(targets)} label rows")
    device = torch.device(device)
    model = build_classifier(config, targets.shape[1]).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    with single_cpu_thread(device):
        step, start = 0, time.perf_counter()
        for epoch in range(config.epochs):
            order = torch.randperm(len(images), generator=generator)
            # The epoch's batches are known now, so they are read ahead; sorted rows read a memmap fast.
            index_batches = [np.sort(order[first : first + config.batch_size].numpy())
                             for first in range(0, len(order), config.batch_size)]
            for index, batch in read_parts(images, index_batches):
                x = next(image_batches(batch, len(index), device))  # (B, 3, H, W) in [-1, 1]
                x = _prepare(x, config.image_size)
                if config.hflip:
                    flip = (torch.rand(len(index), generator=generator) < 0.5).to(device)
                    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                loss = F.binary_cross_entropy_with_logits(model(x), targets[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                entry = {"step": step, "epoch": epoch, "loss": loss.item(), "seconds": time.perf_counter() - start}
                history.append(entry)
                if log is not None:
                    log(entry)
                if config.max_steps is not None and step >= config.max_steps:
                    return model.eval(), history
        return model.eval(), history


@torch.no_grad()
def classifier_labels(
    model: ResNet,
    images: ImageSetLike | Tensor,
    image_size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """Predicted labels bool [N, A] (logit > 0) of a trained classifier."""
    model.eval()
    with single_cpu_thread(device):
        out = [(model(_prepare(batch, image_size)) > 0).cpu().numpy()
               for batch in image_batches(images, batch_size, device)]
    return np.concatenate(out) if out else np.zeros((0, model.config.num_classes or 0), bool)


def classifier_utility(
    model: ResNet,
    real_test: ImageSetLike | Tensor,
    anon_test: ImageSetLike | Tensor,
    labels: pd.DataFrame,
    config: ClassifierConfig,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Accuracy of the real-trained classifier on the real and on the anonymized test split, per attribute.

    `labels`: ground truth of the test images (rows in the order of both image arrays; columns = attributes in
    the classifier's output order). Returns `accuracy_real`, `accuracy_anon`, `drop` (= real - anon), and the
    `agreement` of the classifier's labels of each anonymized image with those of its real source, with `n`,
    `real_positive_rate` and `anon_positive_rate` (of the predicted labels) as `agreement` gives them.
    """
    attributes = list(labels.columns)
    if len(real_test) != len(labels) or len(anon_test) != len(labels):
        raise ValueError(f"{len(real_test)} real and {len(anon_test)} anonymized test images, {len(labels)} labels")
    predicted = {
        which: pd.DataFrame(
            classifier_labels(model, images, config.image_size, device), index=labels.index, columns=attributes
        )
        for which, images in (("real", real_test), ("anon", anon_test))
    }
    table = pd.DataFrame({f"accuracy_{which}": accuracy(predicted[which], labels)["accuracy"] for which in predicted})
    table["drop"] = table["accuracy_real"] - table["accuracy_anon"]
    return table.join(agreement(predicted["real"], predicted["anon"]))


def config_dict(config: ClassifierConfig) -> dict:
    """The resolved training config, to log next to its results."""
    return asdict(config)
