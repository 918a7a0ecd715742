"""ArcFace identity encoder: the IR-SE50 backbone that FALCO's identity loss uses.

Follows TreB1eN/InsightFace_Pytorch `model.py` (`Backbone(50, drop_ratio, mode='ir_se')`, `bottleneck_IR_SE`,
`SEModule`) and its copy in pSp/e4e `models/encoders/model_irse.py`, which FALCO ships as `lib/arcface.py` and
`lib/id_loss.py`. Module names match, so `model_ir_se50.pth` loads by name:

    input_layer.{0: Conv2d 3->C0 3x3 no bias, 1: BatchNorm2d, 2: PReLU}
    body.N  (units in order; the first unit of every stage has stride 2)
        shortcut_layer: MaxPool2d(1, stride) when in == depth (no parameters),
                        else {0: Conv2d 1x1 stride no bias, 1: BatchNorm2d}
        res_layer: {0: BatchNorm2d(in), 1: Conv2d(in, depth, 3, 1, 1), 2: PReLU(depth),
                    3: Conv2d(depth, depth, 3, stride, 1), 4: BatchNorm2d(depth), 5: SEModule(fc1, fc2)}
    output_layer.{0: BatchNorm2d, 1: Dropout, 2: Flatten, 3: Linear(C * s * s, D), 4: BatchNorm1d(D)}

The stage-0 input width is the stem's width (`stage_channels[0]`), as in the reference (64 -> 64). Output is
L2-normalized. Input preparation is pSp's `IDLoss`: images at 256 px (pSp area-pools its 1024 px output with
`AdaptiveAvgPool2d(256)`), crop rows 35:223 and columns 32:220, area-pool to 112. FALCO's own code reaches 256 px
with torchvision's antialiased bilinear `Resize` instead; this module follows pSp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from anon_core.networks.resample import separable_resample

__all__ = ["PSP_SIZE", "PSP_CROP", "IRSEConfig", "ArcFaceEncoder", "PspCropPool"]

# pSp IDLoss preparation: work at 256 px, keep the face box [top:bottom, left:right].
PSP_SIZE = 256
PSP_CROP: tuple[int, int, int, int] = (35, 223, 32, 220)  # (top, bottom, left, right), Python slice bounds


@dataclass(frozen=True)
class PspCropPool:
    """pSp IDLoss's resampling to `size` px, one axis at a time (resample.AxisMap): to PSP_SIZE (adaptive average
    pooling when larger, bilinear when smaller), the PSP_CROP rows or columns, adaptive average pooling to `size`."""

    size: int

    def axis_map(self, x: Tensor, axis: str) -> Tensor:
        if x.shape[-1] > PSP_SIZE:
            x = F.adaptive_avg_pool2d(x, (1, PSP_SIZE))
        elif x.shape[-1] < PSP_SIZE:
            x = F.interpolate(x, size=(1, PSP_SIZE), mode="bilinear", align_corners=False)
        top, bottom, left, right = PSP_CROP
        start, stop = (top, bottom) if axis == "rows" else (left, right)
        return F.adaptive_avg_pool2d(x[..., start:stop], (1, self.size))


@dataclass(frozen=True)
class IRSEConfig:
    """Sizes of an IR-SE backbone; the defaults are IR-SE50 as trained for `model_ir_se50.pth`."""

    stage_channels: tuple[int, ...] = (64, 128, 256, 512)  # output channels of each stage
    stage_blocks: tuple[int, ...] = (3, 4, 14, 3)  # IR-SE50; IR-SE100 is (3, 13, 30, 3), IR-SE152 (3, 8, 36, 3)
    embedding_dim: int = 512  # identity embedding size
    input_size: int = 112  # network input side; every stage halves it, so it must divide by 2 ** stages
    drop_ratio: float = 0.6  # dropout before the linear layer (pSp/FALCO use 0.6; inactive in eval mode)
    se_reduction: int = 16  # squeeze-excitation channel reduction

    def __post_init__(self) -> None:
        if len(self.stage_channels) != len(self.stage_blocks) or not self.stage_channels:
            raise ValueError(
                f"IRSEConfig: stage_channels={self.stage_channels} and stage_blocks={self.stage_blocks} "
                "must be non-empty and of equal length (one entry per stage)."
            )
        if any(b < 1 for b in self.stage_blocks):
            raise ValueError(f"IRSEConfig: stage_blocks={self.stage_blocks} needs at least one unit per stage.")
        if any(c < self.se_reduction for c in self.stage_channels):
            raise ValueError(
                f"IRSEConfig: stage_channels={self.stage_channels} has a stage narrower than "
                f"se_reduction={self.se_reduction}, which leaves the SE bottleneck with zero channels; "
                "widen the stage or lower se_reduction."
            )
        if self.input_size % self.downsampling != 0:
            raise ValueError(
                f"IRSEConfig: input_size={self.input_size} is not divisible by {self.downsampling} "
                f"(2 ** {len(self.stage_blocks)} stride-2 stages); use e.g. 112."
            )

    @property
    def downsampling(self) -> int:
        """Total stride of the body."""
        return 2 ** len(self.stage_blocks)

    @property
    def feature_size(self) -> int:
        """Side of the last feature map (7 for 112 px input)."""
        return self.input_size // self.downsampling


class SEModule(nn.Module):
    """Squeeze-excitation gate: x * sigmoid(fc2(relu(fc1(mean_hw(x))))), 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # (B, C, 1, 1)
        return x * gate


class BottleneckIRSE(nn.Module):
    """Improved-residual unit with SE (`bottleneck_IR_SE`): shortcut(x) + res_layer(x)."""

    def __init__(self, in_channels: int, depth: int, stride: int, se_reduction: int) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)  # pure subsampling
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, se_reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_se_trunk(
    stage_channels: tuple[int, ...], stage_blocks: tuple[int, ...], se_reduction: int
) -> tuple[nn.Sequential, nn.Sequential]:
    """The IR-SE `input_layer` (3x3 conv, BN, PReLU) and `body` (stride 2 at each stage's first unit), with the
    reference key names; shared by ArcFace and e4e's backbone."""
    stem = stage_channels[0]
    input_layer = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem))
    units: list[nn.Module] = []
    in_channels = stem
    for depth, blocks in zip(stage_channels, stage_blocks, strict=True):
        for i in range(blocks):
            units.append(BottleneckIRSE(in_channels, depth, 2 if i == 0 else 1, se_reduction))
            in_channels = depth
    return input_layer, nn.Sequential(*units)


class ArcFaceEncoder(nn.Module):
    """IR-SE backbone taking [-1, 1] face images of any square size; returns L2-normalized embeddings.

    Weights come from the caller (`load_state_dict` with `model_ir_se50.pth`); use it in eval mode as a frozen
    loss network. Move it with `.to(device, dtype)`.
    """

    resize_form: ClassVar[str] = "interpolate"  # resample.RESIZE_FORMS; set_resize_form changes it per instance

    def __init__(self, config: IRSEConfig) -> None:
        super().__init__()
        self.config = config
        last = config.stage_channels[-1]
        self.input_layer, self.body = ir_se_trunk(config.stage_channels, config.stage_blocks, config.se_reduction)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(last),
            nn.Dropout(config.drop_ratio),
            nn.Flatten(),  # (B, C * s * s), channel-major as the reference's view()
            nn.Linear(last * config.feature_size**2, config.embedding_dim),
            nn.BatchNorm1d(config.embedding_dim),
        )

    def prepare(self, images: Tensor) -> Tensor:
        """pSp IDLoss input: [B, 3, H, H] in [-1, 1] -> [B, 3, input_size, input_size].

        To 256 px (adaptive average pooling when larger, bilinear with align_corners=False when smaller), crop
        rows 35:223 and columns 32:220 (188 px), adaptive average pooling to `input_size`. Values stay in
        [-1, 1], the range the network was trained on. With ``resize_form`` "matmul" the steps after the first
        pooling (a cheap pass over the large image, kept) run as two small matrix products (PspCropPool).
        """
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(
                f"ArcFaceEncoder: expected square RGB images [B, 3, H, H] in [-1, 1], got shape "
                f"{tuple(images.shape)}; align and crop faces to a square first."
            )
        x = images
        if x.shape[-1] > PSP_SIZE:
            x = F.adaptive_avg_pool2d(x, PSP_SIZE)
        if self.resize_form == "matmul":
            return separable_resample(x, PspCropPool(self.config.input_size))
        if x.shape[-1] < PSP_SIZE:
            x = F.interpolate(x, size=(PSP_SIZE, PSP_SIZE), mode="bilinear", align_corners=False)
        top, bottom, left, right = PSP_CROP
        x = x[:, :, top:bottom, left:right]  # (B, 3, 188, 188)
        return F.adaptive_avg_pool2d(x, self.config.input_size)  # (B, 3, input_size, input_size)

    def forward(self, images: Tensor) -> Tensor:
        """[-1, 1] images [B, 3, H, H] -> L2-normalized embeddings [B, embedding_dim]."""
        x = self.prepare(images).to(self.input_layer[0].weight.dtype)
        x = self.input_layer(x)
        x = self.body(x)  # (B, C_last, s, s)
        x = self.output_layer(x)  # (B, embedding_dim)
        return F.normalize(x, dim=1)
