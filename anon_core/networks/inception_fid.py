"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph as ported by pytorch-fid): pool3 2048-d features.

Reference implementation: mseitzer/pytorch-fid `src/pytorch_fid/inception.py` (commit b9c18118): `fid_inception_v3()`
builds torchvision's `inception_v3(num_classes=1008, aux_logits=False)` (pytorch/vision
`torchvision/models/inception.py`, checked against the 0.11.1 wheel) and swaps in `FIDInceptionA/C/E_1/E_2`, then
loads `pt_inception-2015-12-05-6726825d.pth` strictly; `InceptionV3([3])` returns the final average pool.
Differences from torchvision's Inception, all in the mixed blocks' pooling branch:
  A (Mixed_5b/c/d), C (Mixed_6b..e), E_1 (Mixed_7b): 3x3/1 average pool with count_include_pad=False
  E_2 (Mixed_7c): 3x3/1 MAX pool (TensorFlow's graph has it; pytorch-fid keeps it)
Key layout (torchvision's): `Conv2d_1a_3x3.conv.weight`, `Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var}`,
..., `Mixed_7c.branch_pool.bn.running_var`, `fc.weight` [1008, 2048], `fc.bias`; BatchNorm eps 0.001; no AuxLogits.

Input: images in [-1, 1], resized bilinearly (align_corners=False) to 299 x 299 as pytorch-fid's
`resize_input=True` does (pytorch-fid scales [0, 1] input to [-1, 1] after resizing, which is the same map).
clean-fid instead resizes with PIL bicubic before the network ("clean" mode); ours is its "legacy_pytorch" mode.
The weights are not offline: `load_fid_inception` raises MissingWeightsError with the download address.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anon_core.hashing import sha256_file
from anon_core.checkpoint_file import read_checkpoint
from anon_core.errors import MissingWeightsError
from anon_core.networks.resnet50 import CheckpointMismatchError, check_state_dict

__all__ = [
    "FID_INCEPTION_FILE",
    "FID_INCEPTION_SHA256_PREFIX",
    "FID_INCEPTION_URL",
    "FID_INPUT_SIZE",
    "FID_RESIZE_MODE",
    "FIDInceptionV3",
    "load_fid_inception",
]

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_INCEPTION_FILE}"
FID_INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries its sha256's first digits
FID_STORE_NAME = "fid-inception"  # entry in anon_core.model_store
FID_INPUT_SIZE = 299
FID_RESIZE_MODE = "legacy_pytorch"  # clean-fid's name for pytorch-fid's bilinear-to-299 preprocessing
FID_FEATURE_DIM = 2048


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 0.001) -> relu; keys `conv.weight`, `bn.*`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: Tensor) -> Tensor:
    """TensorFlow's 3x3/1 SAME average pool: padded zeros are not counted."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | TF avg pool-1x1."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max pool 3x3/2."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorized 7x7 convolutions (Mixed_6b..e); TF avg pool branch."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool 3x3/2."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs (Mixed_7b: TF avg pool branch; Mixed_7c: max pool branch)."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"FIDInceptionE: pool={pool!r}, expected 'avg' (Mixed_7b) or 'max' (Mixed_7c)")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = _avg_pool_tf(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """FID Inception-v3; `forward(images [-1, 1] [N, 3, H, W]) -> pool3 features [N, 2048]`.

    `fc` (1008 classes) is kept only so the published state dict loads strictly; features never use it.
    Move it with `.to(device, dtype)`; load weights with `load_fid_inception`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(FID_FEATURE_DIM, 1008)

    def prepare(self, images: Tensor) -> Tensor:
        """[-1, 1] images -> bilinear (align_corners=False) 299 x 299, still [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3: expected RGB images [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        x = images.to(self.fc.weight.dtype)
        if tuple(x.shape[-2:]) != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        return x

    def forward(self, images: Tensor) -> Tensor:
        x = self.prepare(images)  # (N, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)  # ends (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # adaptive average pool to 1x1: (N, 2048)




def load_fid_inception(
    path: Path | str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[FIDInceptionV3, str]:
    """Load pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a flat state dict) strictly.

    Returns the network (eval mode, frozen) and the file's sha256. Whether the weights are the official ones is
    the caller's question: `sha256.startswith(FID_INCEPTION_SHA256_PREFIX)`; only then may a distance computed
    on its features be called FID. `path` defaults to the model store's `fid-inception`.
    """
    from anon_core.model_store import how_to_get, model_path

    path = Path(path) if path is not None else model_path(FID_STORE_NAME)
    if not path.is_file():
        raise MissingWeightsError(
            f"FID Inception weights not found: {path}. They are not available offline: {how_to_get(FID_STORE_NAME)}; "
            f"or download {FID_INCEPTION_FILE} from {FID_INCEPTION_URL} and pass its path."
        )
    state = read_checkpoint(path, resave="torch.save(model.state_dict(), path)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(
            f"{path}: expected a flat state dict of tensors (pytorch-fid's {FID_INCEPTION_FILE}), got "
            f"{type(state).__name__}; download the file from {FID_INCEPTION_URL}."
        )
    model = FIDInceptionV3()
    model.load_state_dict(check_state_dict(state, model.state_dict(), path), strict=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model, sha256_file(path)
