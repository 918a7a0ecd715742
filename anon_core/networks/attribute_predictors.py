"""Pre-trained CelebA attribute predictors used to pseudo-label faces (LFW has no attribute labels).

Reference implementations:
- Anycost GAN, mit-han-lab/anycost-gan (commit ffb09fde): `models/__init__.py::get_pretrained('attribute-predictor')`
  builds `torchvision.models.resnet50()` with `fc = Linear(2048, 40 * 2)` and loads `attribute_predictor.pt`'s
  `state_dict`; `metrics/attribute_consistency.py` and `tools/extract_edit_directions.py` feed it generator
  images clamped to [-1, 1] and resized to 256 px (bilinear, align_corners=True; no ImageNet normalization), view
  the logits as [N, 40, 2], take `argmax` over the last axis as the label and `softmax(...)[:, :, 1]` as the
  probability of the attribute being present. Attribute order: `attr_list` in those files (= CELEBA_ATTRIBUTES).
- Talk-to-Edit, yumingj/Talk-to-Edit (commit 72c45e10): `models/archs/attribute_predictor_arch.py` (`resnet50`
  with `attr_file=configs/attributes_5.json`): torchvision's ResNet-50 backbone without fc, `stem = fc_block(2048,
  512)` (Linear + BatchNorm1d + ReLU; dropout rate 0 so no dropout module), one head per attribute named
  `'classifier' + zfill(2)(CelebA 1-based index) + name` = `Sequential(fc_block(512, 256), Linear(256, 6))`.
  `models/base_model.py` and `quantitative_results.py` load `predictor_128.pth.tar` / `eval_predictor.pth.tar`
  with `load_state_dict(checkpoint['state_dict'], strict=True)` into a plain (not DataParallel) model, so the
  published files carry no `module.` prefix (we strip one anyway if every key has it). Input: 128 px RGB in
  [0, 1] (`ToTensor`), ImageNet mean/std; `models/utils.py::transform_image` area-resizes to 128 px.
  We follow the evaluation path (`quantitative_results.load_image_predictor`): [0, 1] exactly, without
  `transform_image`'s extra +0.5/255 offset. Six fine-grained levels per attribute (CelebA-Dialog); the repo
  defines no binary reduction, ours is TALK_TO_EDIT_REDUCTION below.

Common interface: `predict(images [-1, 1] NCHW) -> {attribute: P(present) [N]}`,
`labels(images) -> {attribute: bool [N]}`, `scores(images)` -> both from one forward pass; `name`, `attributes`.
Neither set of weights is offline; the loaders raise MissingWeightsError naming the file and where to get it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anon_core.celeba import CELEBA_ATTRIBUTES
from anon_core.checkpoint_file import read_checkpoint
from anon_core.errors import MissingWeightsError
from anon_core.networks.resnet50 import RESNET50, CheckpointMismatchError, ResNet, ResNetConfig, check_state_dict

__all__ = [
    "CELEBA_ATTRIBUTES",
    "ANYCOST_FILE",
    "ANYCOST_URL",
    "TALK_TO_EDIT_FILES",
    "TALK_TO_EDIT_HEADS",
    "TALK_TO_EDIT_LEVELS",
    "TALK_TO_EDIT_REDUCTION",
    "AnycostAttributePredictor",
    "TalkToEditAttributePredictor",
    "load_anycost_predictor",
    "load_talk_to_edit_predictor",
]


ANYCOST_FILE = "attribute_predictor.pt"
ANYCOST_URL = "https://hanlab18.mit.edu/projects/anycost-gan/files/attribute_predictor.pt"
ANYCOST_INPUT_SIZE = 256

TALK_TO_EDIT_FILES = ("predictor_128.pth.tar", "eval_predictor.pth.tar")  # editing-time / evaluation-time
TALK_TO_EDIT_SOURCE = "the Talk-to-Edit README's pretrained-models link (github.com/yumingj/Talk-to-Edit)"
TALK_TO_EDIT_INPUT_SIZE = 128
TALK_TO_EDIT_LEVELS = 6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Talk-to-Edit's heads (configs/attributes_5.json): attribute -> head module name.
TALK_TO_EDIT_HEADS: dict[str, str] = {
    name: f"classifier{CELEBA_ATTRIBUTES.index(name) + 1:02d}{name}"
    for name in ("Bangs", "Eyeglasses", "No_Beard", "Smiling", "Young")
}

# OUR binary reduction of Talk-to-Edit's six levels (meanings from the repo's
# language/templates/attr_wise_caption_templates.json): the CelebA attribute is present when the argmax level is
# in the set; P(present) is the softmax mass on those levels.
TALK_TO_EDIT_REDUCTION: dict[str, frozenset[int]] = {
    # 0 "no bangs at all", 1..5 very short .. extremely long bangs
    "Bangs": frozenset({1, 2, 3, 4, 5}),
    # 0 "not wearing any eyeglasses", 1 rimless, 2-3 thin/thick frame, 4-5 sunglasses (CelebA's Eyeglasses
    # includes sunglasses)
    "Eyeglasses": frozenset({1, 2, 3, 4, 5}),
    # the head rates beard length: 0 "doesn't have any beard", 1 stubble .. 5 very long beard; No_Beard = level 0
    "No_Beard": frozenset({0}),
    # 0 "looks serious with no smile", 1 corners of the mouth turned up .. 5 laughing
    "Smiling": frozenset({1, 2, 3, 4, 5}),
    # the head rates age: 0 child, 1 teenager, 2 young adult / "in his thirties", 3 forties / middle age,
    # 4 fifties-sixties, 5 seventies-eighties. Cut: Young when level <= 2. CelebA's Young is a binary "looks
    # young" label; level 2 is the last one the templates still call young ("a young adult"), level 3 the first
    # they call middle-aged, so the cut sits between them. A different cut shifts Young's positive rate.
    "Young": frozenset({0, 1, 2}),
}


def _resize(images: Tensor, size: int, **kwargs) -> Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [N, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), **kwargs)


class AnycostAttributePredictor(ResNet):
    """Anycost GAN's CelebA attribute predictor: torchvision ResNet-50 with `fc = Linear(2048, 80)`.

    `forward` is the raw network on prepared input (logits [N, 80]); the methods below take [-1, 1] images.
    Keys are torchvision's (`conv1.weight`, ..., `fc.bias`), exactly the checkpoint's `state_dict`.
    `backbone` exists only so tests can build a narrow copy; the published weights need RESNET50.
    """

    name = "anycost"
    attributes: tuple[str, ...] = CELEBA_ATTRIBUTES

    def __init__(self, backbone: ResNetConfig = RESNET50) -> None:
        super().__init__(ResNetConfig(layers=backbone.layers, width=backbone.width, num_classes=2 * 40))

    def prepare(self, images: Tensor) -> Tensor:
        """[-1, 1] images of any size -> clamped, bilinear (align_corners=True) 256 px, still in [-1, 1]."""
        x = images.to(self.conv1.weight.dtype).clamp(-1.0, 1.0)
        return _resize(x, ANYCOST_INPUT_SIZE, mode="bilinear", align_corners=True)

    def pair_logits(self, images: Tensor) -> Tensor:
        """[-1, 1] images [N, 3, H, W] -> logits [N, 40, 2] (index 1 = present)."""
        return self(self.prepare(images)).view(-1, 40, 2)  # (N, 80) -> (N, 40, 2)

    @staticmethod
    def probabilities_from_logits(logits: Tensor) -> Tensor:
        """Logits [N, 40, 2] -> P(present) [N, 40] (softmax over the pair, as Anycost's boundary extraction)."""
        return torch.softmax(logits, dim=-1)[..., 1]

    @staticmethod
    def labels_from_logits(logits: Tensor) -> Tensor:
        """Logits [N, 40, 2] -> bool [N, 40]: argmax over the pair == 1 (a tie counts as absent, like argmax)."""
        return logits.argmax(dim=-1) == 1

    def scores(self, images: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """[-1, 1] images -> ({attribute: P(present) [N]}, {attribute: bool [N]}) from one forward pass."""
        logits = self.pair_logits(images)  # (N, 40, 2)
        probs, present = self.probabilities_from_logits(logits), self.labels_from_logits(logits)  # (N, 40) each
        return (
            {name: probs[:, i] for i, name in enumerate(self.attributes)},
            {name: present[:, i] for i, name in enumerate(self.attributes)},
        )

    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """[-1, 1] images -> {attribute: P(present) [N]} for the 40 CelebA attributes."""
        return self.scores(images)[0]

    def labels(self, images: Tensor) -> dict[str, Tensor]:
        """[-1, 1] images -> {attribute: bool [N]} by argmax over each logit pair."""
        return self.scores(images)[1]


class _FCBlock(nn.Module):
    """Talk-to-Edit's `fc_block` with drop_rate 0: relu(bn(fc(x))); keys `fc.*`, `bn.*`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.fc(x)))


class TalkToEditAttributePredictor(ResNet):
    """Talk-to-Edit's predictor: ResNet-50 backbone -> `stem` -> five 6-level heads (`classifier06Bangs`, ...)."""

    name = "talk_to_edit"
    attributes: tuple[str, ...] = tuple(TALK_TO_EDIT_HEADS)

    def __init__(self, backbone: ResNetConfig = RESNET50, stem_dim: int = 512, head_dim: int = 256) -> None:
        super().__init__(ResNetConfig(layers=backbone.layers, width=backbone.width, num_classes=None))
        self.stem = _FCBlock(self.config.feature_dim, stem_dim)
        for module_name in TALK_TO_EDIT_HEADS.values():
            self.add_module(module_name, nn.Sequential(_FCBlock(stem_dim, head_dim), nn.Linear(head_dim, 6)))
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("input_mean", mean, persistent=False)  # constants: not in checkpoints
        self.register_buffer("input_std", std, persistent=False)

    def prepare(self, images: Tensor) -> Tensor:
        """[-1, 1] images -> [0, 1] (clamped), area-resized to 128 px, ImageNet-normalized."""
        x = ((images.to(self.input_mean.dtype) + 1.0) / 2.0).clamp(0.0, 1.0)
        x = _resize(x, TALK_TO_EDIT_INPUT_SIZE, mode="area")
        return (x - self.input_mean) / self.input_std

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """Prepared input (see `prepare`) -> {attribute: level logits [N, 6]}, as the reference's forward."""
        x = self.stem(self.features(x))  # (N, stem_dim)
        return {name: getattr(self, module_name)(x) for name, module_name in TALK_TO_EDIT_HEADS.items()}

    def level_logits(self, images: Tensor) -> dict[str, Tensor]:
        """[-1, 1] images [N, 3, H, W] -> {attribute: level logits [N, 6]}."""
        return self(self.prepare(images))

    @staticmethod
    def reduce(level_logits: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Level logits -> (P(present) [N], bool label [N]) per attribute, by TALK_TO_EDIT_REDUCTION.

        Softmax (not the repo's `exp` without max-subtraction); label from the argmax level, as the repo's
        `output_to_label`; probability = softmax mass on the present levels.
        """
        probs, labels = {}, {}
        for name, logits in level_logits.items():
            present = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            present[sorted(TALK_TO_EDIT_REDUCTION[name])] = True
            probs[name] = torch.softmax(logits, dim=-1)[:, present].sum(dim=-1)
            labels[name] = present[logits.argmax(dim=-1)]
        return probs, labels

    def scores(self, images: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """[-1, 1] images -> ({attribute: P(present) [N]}, {attribute: bool [N]}) from one forward pass."""
        return self.reduce(self.level_logits(images))

    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """[-1, 1] images -> {attribute: P(present) [N]} (softmax mass on the present levels)."""
        return self.scores(images)[0]

    def labels(self, images: Tensor) -> dict[str, Tensor]:
        """[-1, 1] images -> {attribute: bool [N]} (argmax level in the present set)."""
        return self.scores(images)[1]


@dataclass(frozen=True)
class _Format:
    """Where a checkpoint comes from and where its state dict sits."""

    what: str  # the network, for messages
    source: str  # where a user gets the file
    accepted_names: tuple[str, ...]  # the published file names
    store_name: str  # its entry in anon_core.model_store (the default path)
    state_key: str = "state_dict"  # the checkpoint entry holding the weights


_ANYCOST = _Format("Anycost GAN attribute predictor", ANYCOST_URL, (ANYCOST_FILE,), "anycost-attribute-predictor")
_TALK_TO_EDIT = _Format(
    "Talk-to-Edit attribute predictor", TALK_TO_EDIT_SOURCE, TALK_TO_EDIT_FILES, "talk-to-edit-eval-predictor"
)


def _read_state_dict(path: Path | str | None, fmt: _Format) -> tuple[Path, dict[str, Tensor]]:
    from anon_core.model_store import how_to_get, model_path

    path = Path(path) if path is not None else model_path(fmt.store_name)
    if not path.is_file():
        raise MissingWeightsError(
            f"{fmt.what} weights not found: {path}. They are not available offline: {how_to_get(fmt.store_name)}; "
            f"or download {' or '.join(fmt.accepted_names)} from {fmt.source} and pass its path."
        )
    checkpoint = read_checkpoint(path, resave=f"torch.save({{'{fmt.state_key}': torch.load(path, "
                                              f"weights_only=False)['{fmt.state_key}']}}, path)")
    if isinstance(checkpoint, Mapping) and fmt.state_key in checkpoint:
        state = checkpoint[fmt.state_key]
    elif isinstance(checkpoint, Mapping) and all(isinstance(v, Tensor) for v in checkpoint.values()):
        state = checkpoint  # a bare state dict (e.g. re-saved by a user)
    else:
        raise CheckpointMismatchError(
            f"{path}: not a {fmt.what} checkpoint (expected a dict with a '{fmt.state_key}' entry); "
            f"use {' or '.join(fmt.accepted_names)} from {fmt.source}."
        )
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return path, dict(state)


def _finish(model: nn.Module, path: Path, state: dict[str, Tensor], device, dtype) -> None:
    model.load_state_dict(check_state_dict(state, model.state_dict(), path), strict=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)


def load_anycost_predictor(
    path: Path | str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    backbone: ResNetConfig = RESNET50,
) -> AnycostAttributePredictor:
    """Load `attribute_predictor.pt` (its `state_dict`, torchvision keys) strictly; eval mode, frozen.

    `path` defaults to the model store's `anycost-attribute-predictor`.
    """
    model = AnycostAttributePredictor(backbone)
    _finish(model, *_read_state_dict(path, _ANYCOST), device, dtype)
    return model


def load_talk_to_edit_predictor(
    path: Path | str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    backbone: ResNetConfig = RESNET50,
) -> TalkToEditAttributePredictor:
    """Load `predictor_128.pth.tar` or `eval_predictor.pth.tar` (`state_dict` key) strictly; eval mode, frozen.

    `path` defaults to the model store's `talk-to-edit-eval-predictor` (the one Talk-to-Edit evaluates with).
    """
    model = TalkToEditAttributePredictor(backbone)
    _finish(model, *_read_state_dict(path, _TALK_TO_EDIT), device, dtype)
    return model
