"""FaceNet identity network: Inception-ResNet-v1 with a 512-d L2-normalized embedding.

Reference implementation: timesler/facenet-pytorch 2.6.0, ``models/inception_resnet_v1.py`` (a port of David
Sandberg's TensorFlow ``facenet`` models ``20180402-114759`` trained on VGGFace2 and ``20180408-102900`` trained
on CASIA-WebFace). Module names match the reference, so the published files load by name (the reference's
Block17 and Block8 are both our FactorizedBlock):

    conv2d_1a, conv2d_2a, conv2d_2b   BasicConv2d {conv: Conv2d no bias, bn: BatchNorm2d eps 1e-3}
    maxpool_3a, conv2d_3b, conv2d_4a, conv2d_4b
    repeat_1.{0..4}   Block35 (256 ch, scale 0.17)   branch0, branch1.{0,1}, branch2.{0,1,2}, conv2d (bias)
    mixed_6a          branch0, branch1.{0,1,2}, branch2 = max pool           -> 896 ch
    repeat_2.{0..9}   Block17 (896 ch, scale 0.10)   branch0, branch1.{0,1,2}, conv2d
    mixed_7a          branch0.{0,1}, branch1.{0,1}, branch2.{0,1,2}, branch3 = max pool -> 1792 ch
    repeat_3.{0..4}   Block8 (1792 ch, scale 0.20), block8 = Block8(scale 1.0, no final ReLU)
    avgpool_1a -> dropout -> last_linear (1792 -> 512, no bias) -> last_bn (BatchNorm1d eps 1e-3) -> L2 norm
    logits            Linear(512, classes) of the training classifier: 8631 (VGGFace2) or 10575 (CASIA)

Input: 160 x 160 RGB faces, pixels p in 0..255 whitened as (p - 127.5) / 128 (facenet-pytorch's
``fixed_image_standardization``). ``forward`` takes that whitened tensor, as the reference does; ``embed`` takes
[-1, 1] face crops of any size and does the preparation itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anon_core.checkpoint_file import read_checkpoint
from anon_core.errors import FalcoError, MissingWeightsError

__all__ = [
    "FACENET_INPUT_SIZE",
    "FACENET_WEIGHTS",
    "FaceNetWeights",
    "InceptionResnetV1",
    "facenet_key_shapes",
    "load_facenet",
    "whiten",
]

FACENET_INPUT_SIZE = 160  # the networks were trained on 160 x 160 MTCNN crops
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, kept by the reference port


@dataclass(frozen=True)
class FaceNetWeights:
    """One published checkpoint of facenet-pytorch's v2.2.9 release."""

    file: str  # file name in the model store
    num_classes: int  # rows of `logits.weight` (the training set's identities)
    lfw_accuracy: float  # as reported by facenet-pytorch's README
    url: str  # where a user can fetch it (not reachable from this workplace's machines)


_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
FACENET_WEIGHTS: dict[str, FaceNetWeights] = {
    "vggface2": FaceNetWeights("20180402-114759-vggface2.pt", 8631, 0.9965, _RELEASE + "20180402-114759-vggface2.pt"),
    "casia-webface": FaceNetWeights(
        "20180408-102900-casia-webface.pt", 10575, 0.9905, _RELEASE + "20180408-102900-casia-webface.pt"
    ),
}


# ----------------------------------------------------------------------------------------------- blocks
class BasicConv2d(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d (eps 1e-3) -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride: int, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    """Inception-ResNet-A on the 35 x 35 grid (17 x 17 at 160 px): relu(x + scale * conv2d(cat(branches)))."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(256, 32, 1, 1)
        self.branch1 = nn.Sequential(BasicConv2d(256, 32, 1, 1), BasicConv2d(32, 32, 3, 1, 1))
        self.branch2 = nn.Sequential(
            BasicConv2d(256, 32, 1, 1), BasicConv2d(32, 32, 3, 1, 1), BasicConv2d(32, 32, 3, 1, 1)
        )
        self.conv2d = nn.Conv2d(96, 256, 1, 1)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)  # (B, 96, H, W)
        return self.relu(self.conv2d(mixed) * self.scale + x)


class FactorizedBlock(nn.Module):
    """Inception-ResNet-B / -C: a 1 x k then k x 1 factorized branch beside a 1 x 1 one,
    relu(x + scale * conv2d(cat(branches))); the last -C block has no ReLU."""

    def __init__(self, channels: int, width: int, kernel: int, scale: float, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        pad = kernel // 2
        self.branch0 = BasicConv2d(channels, width, 1, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(channels, width, 1, 1),
            BasicConv2d(width, width, (1, kernel), 1, (0, pad)),
            BasicConv2d(width, width, (kernel, 1), 1, (pad, 0)),
        )
        self.conv2d = nn.Conv2d(2 * width, channels, 1, 1)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat((self.branch0(x), self.branch1(x)), 1)  # (B, 2 * width, H, W)
        return self.relu(self.conv2d(mixed) * self.scale + x)


def block17(scale: float) -> FactorizedBlock:
    """Inception-ResNet-B: 896 channels, 1x7 / 7x1."""
    return FactorizedBlock(896, 128, 7, scale)


def block8(scale: float, relu: bool = True) -> FactorizedBlock:
    """Inception-ResNet-C: 1792 channels, 1x3 / 3x1."""
    return FactorizedBlock(1792, 192, 3, scale, relu)


class Mixed6a(nn.Module):
    """Reduction-A: 256 -> 384 + 256 + 256 = 896 channels, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, 2)
        self.branch1 = nn.Sequential(
            BasicConv2d(256, 192, 1, 1), BasicConv2d(192, 192, 3, 1, 1), BasicConv2d(192, 256, 3, 2)
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)  # (B, 896, H', W')


class Mixed7a(nn.Module):
    """Reduction-B: 896 -> 384 + 256 + 256 + 896 = 1792 channels, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 384, 3, 2))
        self.branch1 = nn.Sequential(BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 256, 3, 2))
        self.branch2 = nn.Sequential(
            BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 256, 3, 1, 1), BasicConv2d(256, 256, 3, 2)
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)  # (B, 1792, ..)


# ----------------------------------------------------------------------------------------------- network
def whiten(pixels: Tensor) -> Tensor:
    """facenet-pytorch's ``fixed_image_standardization``: pixels in 0..255 -> (p - 127.5) / 128."""
    return (pixels - 127.5) / 128.0


class InceptionResnetV1(nn.Module):
    """FaceNet embedding network (no classifier head: the published ``logits.*`` are dropped on load).

    ``forward(x)``: whitened [B, 3, 160, 160] -> L2-normalized [B, 512], exactly the reference's
    ``classify=False`` path. ``embed(images)``: [-1, 1] face crops [B, 3, H, W] -> [B, 512], via ``prepare``.
    Move it with ``.to(device, dtype)``; use it in eval mode (dropout and batch statistics off).
    """

    def __init__(self, dropout_prob: float = 0.6) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, 2)
        self.conv2d_2a = BasicConv2d(32, 32, 3, 1)
        self.conv2d_2b = BasicConv2d(32, 64, 3, 1, 1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3, 1)
        self.conv2d_4b = BasicConv2d(192, 256, 3, 2)
        self.repeat_1 = nn.Sequential(*(Block35(0.17) for _ in range(5)))
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*(block17(0.10) for _ in range(10)))
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*(block8(0.20) for _ in range(5)))
        self.block8 = block8(1.0, relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)
        self.last_linear = nn.Linear(1792, 512, bias=False)
        self.last_bn = nn.BatchNorm1d(512, eps=BN_EPS)

    @staticmethod
    def prepare(images: Tensor, size: int = FACENET_INPUT_SIZE) -> Tensor:
        """[-1, 1] face crops [B, 3, H, W] -> whitened [B, 3, size, size].

        Values are clamped to [-1, 1] (what a saved uint8 image holds), mapped to pixels (x + 1) * 127.5 and
        whitened, i.e. x * 127.5 / 128. Resizing, when H, W != size: bilinear with antialiasing, which is what
        PIL's ``Image.BILINEAR`` does in facenet-pytorch's ``extract_face``. Differentiable.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FaceNet expects RGB images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
        x = images.clamp(-1.0, 1.0)
        if tuple(x.shape[2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return whiten((x + 1.0) * 127.5)

    def forward(self, x: Tensor) -> Tensor:
        """Whitened [B, 3, 160, 160] -> L2-normalized embeddings [B, 512]."""
        x = self.maxpool_3a(self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x))))  # (B, 64, 38, 38) at 160 px
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(x)))  # (B, 256, 17, 17)
        x = self.repeat_1(x)  # (B, 256, 17, 17)
        x = self.repeat_2(self.mixed_6a(x))  # (B, 896, 8, 8)
        x = self.block8(self.repeat_3(self.mixed_7a(x)))  # (B, 1792, 3, 3)
        x = self.dropout(self.avgpool_1a(x)).flatten(1)  # (B, 1792)
        x = self.last_bn(self.last_linear(x))  # (B, 512)
        return F.normalize(x, p=2, dim=1)

    def embed(self, images: Tensor) -> Tensor:
        """[-1, 1] face crops [B, 3, H, W] -> L2-normalized embeddings [B, 512]."""
        return self(self.prepare(images).to(self.last_linear.weight.dtype))


# ----------------------------------------------------------------------------------------------- loading
_OPTIONAL_SUFFIX = ".num_batches_tracked"  # present in files saved by PyTorch >= 0.4.1, unused in eval mode
_LOGITS = ("logits.weight", "logits.bias")


def facenet_key_shapes(num_classes: int | None = 8631) -> list[tuple[str, tuple[int, ...]]]:
    """Keys and shapes of a published checkpoint, in the model's order (without ``num_batches_tracked``).

    ``num_classes``: rows of the ``logits`` layer (8631 VGGFace2, 10575 CASIA-WebFace); None leaves it out.
    """
    with torch.device("meta"):  # shapes only, no initialization work
        state = InceptionResnetV1().state_dict()
    items = [(k, tuple(v.shape)) for k, v in state.items() if not k.endswith(_OPTIONAL_SUFFIX)]
    if num_classes is not None:
        items += [("logits.weight", (num_classes, 512)), ("logits.bias", (num_classes,))]
    return items


def _check_state_dict(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Strict key/shape check against the reference layout; returns the embedding weights only."""
    expected = dict(facenet_key_shapes(None))
    with torch.device("meta"):
        optional = {k for k in InceptionResnetV1().state_dict() if k.endswith(_OPTIONAL_SUFFIX)}
    present_logits = [k for k in _LOGITS if k in state]
    unexpected = sorted(set(state) - set(expected) - optional - set(_LOGITS))
    missing = sorted(set(expected) - set(state))
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})")
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[:3]})")
    for key in sorted(set(expected) & set(state)):
        if tuple(state[key].shape) != expected[key]:
            problems.append(f"{key} has shape {tuple(state[key].shape)}, expected {expected[key]}")
            break
    if len(present_logits) == 1:
        problems.append(f"only {present_logits[0]} is present; logits.weight and logits.bias come together")
    elif present_logits:
        rows = state["logits.weight"].shape
        if len(rows) != 2 or rows[1] != 512 or tuple(state["logits.bias"].shape) != (rows[0],):
            problems.append(
                f"logits.weight {tuple(rows)} / logits.bias {tuple(state['logits.bias'].shape)} are not "
                "[classes, 512] / [classes]"
            )
    if problems:
        raise FalcoError(
            f"{path} is not a facenet-pytorch InceptionResnetV1 state dict: {'; '.join(problems)}. Use the "
            f"published files {', '.join(w.file for w in FACENET_WEIGHTS.values())} (flat state dicts)."
        )
    return {k: v for k, v in state.items() if k in expected or k in optional}


def load_facenet(
    path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> InceptionResnetV1:
    """Load a published FaceNet checkpoint (``20180402-114759-vggface2.pt`` or ``20180408-102900-casia-webface.pt``).

    The file is a flat state dict, read with ``weights_only=True``. Every key and shape is checked against the
    reference layout; the classifier ``logits.*`` (8631 or 10575 rows) is checked for consistency and dropped,
    since embeddings do not use it. Returns the network in eval mode with frozen parameters.
    """
    path = Path(path)
    if not path.is_file():
        names = " or ".join(f"{w.file} ({w.url})" for w in FACENET_WEIGHTS.values())
        raise MissingWeightsError(f"FaceNet weights not found at {path}; download {names} and pass its path.")
    state = read_checkpoint(path, resave="torch.save(model.state_dict(), path)")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FalcoError(f"{path} does not hold a flat state dict of tensors (got {type(state).__name__})")
    model = InceptionResnetV1()
    model.load_state_dict(_check_state_dict(state, path), strict=False)  # the check above is the strict one
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
