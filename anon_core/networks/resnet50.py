"""ResNet-50 (and smaller ResNets of the same kind) with torchvision's exact module and state-dict key names.

Reference implementation: pytorch/vision `torchvision/models/resnet.py` (`ResNet`, `Bottleneck`, `resnet50`),
checked against the torchvision 0.11.1 wheel's file. torchvision does not install beside this project's torch,
so the network is written here; key names match, so torchvision-layout checkpoints load by name:

    conv1 (7x7/2, no bias) -> bn1 -> relu -> maxpool (3x3/2, pad 1)
    layer{1..4}.N.{conv1 1x1, bn1, conv2 3x3 (stride here: "ResNet v1.5"), bn2, conv3 1x1, bn3}
    layer{1..4}.0.downsample.{0: Conv2d 1x1 stride s no bias, 1: BatchNorm2d}  (first block of a stage)
    avgpool (global) -> flatten -> fc (Linear(2048, num_classes)); no fc when num_classes is None

The Anycost GAN attribute predictor is exactly `resnet50()` with `fc = Linear(2048, 80)`; Talk-to-Edit's predictor
(`models/archs/attribute_predictor_arch.py`) is a copy of this backbone with the same key names (see
`attribute_predictors.py`). `ResNetConfig` also builds narrow/shallow variants for tests and for the CelebA-HQ
attribute classifier.

The module also holds the strict key/shape check shared by the loaders of torchvision-layout checkpoints
(`check_state_dict`), so every loader reports missing/unexpected keys and shape mismatches the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from anon_core.errors import FalcoError

__all__ = ["ResNetConfig", "RESNET50", "Bottleneck", "ResNet", "CheckpointMismatchError", "check_state_dict"]


@dataclass(frozen=True)
class ResNetConfig:
    """Sizes of a bottleneck ResNet; the defaults are torchvision's resnet50 with ImageNet's 1000 classes."""

    layers: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck blocks per stage (ResNet-101: 3, 4, 23, 3)
    width: int = 64  # stem / first-stage planes; stage i has width * 2**i planes and 4x that many outputs
    num_classes: int | None = 1000  # size of `fc`; None drops `fc` and forward returns pooled features

    def __post_init__(self) -> None:
        if not self.layers or any(n < 1 for n in self.layers):
            raise ValueError(f"ResNetConfig: layers={self.layers} needs at least one block in every stage.")
        if self.width < 1:
            raise ValueError(f"ResNetConfig: width={self.width} must be positive (64 for ResNet-50).")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"ResNetConfig: num_classes={self.num_classes} must be positive or None (no fc).")

    @property
    def feature_dim(self) -> int:
        """Channels after the last stage, i.e. the pooled feature size (2048 for ResNet-50)."""
        return self.width * 2 ** (len(self.layers) - 1) * Bottleneck.expansion


RESNET50 = ResNetConfig()


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: the stride sits on the 3x3 conv): relu(bn3(conv3(...)) + shortcut)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Bottleneck ResNet in torchvision's layout. `forward`: images [B, 3, H, W] -> logits or pooled features.

    The network applies no input normalization: callers (the predictors) prepare inputs as their training did.
    Weights come from the caller; move it with `.to(device, dtype)`.
    """

    def __init__(self, config: ResNetConfig = RESNET50) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = width
        for stage, blocks in enumerate(config.layers):
            planes = width * 2**stage
            stride = 1 if stage == 0 else 2
            downsample = None
            if stride != 1 or in_channels != planes * Bottleneck.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(in_channels, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * Bottleneck.expansion),
                )
            units = [Bottleneck(in_channels, planes, stride, downsample)]
            in_channels = planes * Bottleneck.expansion
            units += [Bottleneck(in_channels, planes, 1, None) for _ in range(1, blocks)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*units))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, config.num_classes) if config.num_classes is not None else None
        for module in self.modules():  # torchvision's initialization, for training from scratch
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.config.layers))]

    def features(self, x: Tensor) -> Tensor:
        """Images [B, 3, H, W] -> globally average-pooled features [B, feature_dim]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, width, H/4, W/4)
        for stage in self.stages:
            x = stage(x)  # last: (B, feature_dim, H/32, W/32)
        return torch.flatten(self.avgpool(x), 1)  # (B, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, num_classes], or pooled features [B, feature_dim] when built without fc."""
        x = self.features(x)
        return self.fc(x) if self.fc is not None else x


class CheckpointMismatchError(FalcoError, ValueError):
    """A checkpoint whose keys or shapes differ from the network it is loaded into."""


def check_state_dict(
    state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    source: Path | str,
    optional_suffixes: tuple[str, ...] = ("num_batches_tracked",),
) -> dict[str, Tensor]:
    """Check `state` against `expected` (a module's own state dict) by key and shape; return what to load.

    Keys ending in one of `optional_suffixes` (BatchNorm's step counter, absent from old checkpoints) may be
    missing and are then taken from `expected`. Any other missing key, any unexpected key and any shape mismatch
    raise one `CheckpointMismatchError` naming the file and every offending key.
    """
    missing = [k for k in expected if k not in state and not k.endswith(optional_suffixes)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:

        def listed(title: str, items: list[str]) -> str:
            shown = ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
            return f"\n  {title}: {shown}" if items else ""

        raise CheckpointMismatchError(
            f"{source}: the checkpoint does not match the network it is loaded into."
            + listed("missing keys", missing)
            + listed("unexpected keys", unexpected)
            + listed("shape mismatches", mismatched)
            + "\nCheck that the file is the one named in the loader's docstring (not another model's weights)."
        )
    return {k: (state[k] if k in state else expected[k]) for k in expected}
