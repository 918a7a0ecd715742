"""e4e encoder: real face images -> W+ codes of StyleGAN2, the inversion FALCO uses.

Follows omertov/encoder4editing (commit 99ea505) `models/encoders/psp_encoders.py` (`Encoder4Editing`,
`GradualStyleBlock`), `models/encoders/helpers.py` (IR-SE units, `_upsample_add`) and `models/psp.py` (adding
`latent_avg`), as copied into chi0tzp/FALCO (cvpr23). Module names match the reference, so the `encoder.*`
entries of `e4e_ffhq_encode.pt`, with the prefix removed, load by name (see `anon_core.checkpoints.load_e4e`):

    input_layer.{0: Conv2d 3->C0 3x3 no bias, 1: BatchNorm2d, 2: PReLU}
    body.N               IR-SE units (anon_core.networks.arcface.BottleneckIRSE), IR-SE50: 3 + 4 + 14 + 3
    styles.N.convs.{0, 2, ...}  Conv2d(.., 3, stride 2, pad 1) + LeakyReLU(0.01), log2(side) of them, to 1 x 1
    styles.N.linear      rosinality EqualLinear(w_dim, w_dim) (weight * 1/sqrt(in), no activation)
    latlayer1 / latlayer2  1x1 convs lifting stage-3 / stage-2 features to the last stage's width (FPN)
    latent_avg           [n_styles, w_dim] buffer: pSp adds it to the encoder output (`start_from_latent_avg`)

Forward, as the reference in its `Inference` stage: c1, c2, c3 are the outputs of stages 2, 3, 4 (body indices
6, 20, 23 in IR-SE50; sides input/4, input/8, input/16). w0 = styles[0](c3) is copied to every layer and
layer i adds styles[i](features) with features c3 for i < 3, p2 = up(c3) + latlayer1(c2) for 3 <= i < 7,
p1 = up(p2) + latlayer2(c1) from 7 on (`up`: bilinear, align_corners=True, to the lateral's size).

Differences from the reference, none of which changes the maths: the backbone's stage widths and depths and the
W width are configurable (for the seeded `tiny` profile), the deltas are stacked instead of added in place, the
encoder resizes its input to `input_size` itself, and `latent_avg` lives in the module. FALCO's `invert.py`
resizes aligned images to 256 px with torchvision's antialiased bilinear `Resize`; `resize_mode` names that
choice ("bilinear-antialias", the default) or area pooling ("area", pSp's `face_pool`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anon_core.networks.arcface import ir_se_trunk
from anon_core.networks.stylegan2 import EqualLinear

__all__ = ["COARSE_STOP", "MIDDLE_STOP", "RESIZE_MODES", "E4EConfig", "E4EEncoder", "E4EInverter", "TINY_E4E"]

COARSE_STOP = 3  # layers [0, 3) read c3 (the reference's `coarse_ind`)
MIDDLE_STOP = 7  # layers [3, 7) read p2, layers >= 7 read p1 (`middle_ind`)
RESIZE_MODES: tuple[str, ...] = ("bilinear-antialias", "area")


@dataclass(frozen=True)
class E4EConfig:
    """Sizes of an e4e encoder; the defaults are `e4e_ffhq_encode.pt` (IR-SE50, 18 x 512 W+ for 1024 px)."""

    n_styles: int = 18  # W+ layers: 2 * log2(generator resolution) - 2 (18 at 1024 px, 16 at 512 px)
    w_dim: int = 512  # W width of the generator the encoder was trained for
    stage_channels: tuple[int, int, int, int] = (64, 128, 256, 512)  # IR-SE stage widths; the last is the FPN width
    stage_blocks: tuple[int, int, int, int] = (3, 4, 14, 3)  # IR-SE50 units per stage
    input_size: int = 256  # the encoder's input side (trained at 256 px); images are resized to it
    se_reduction: int = 16  # squeeze-excitation channel reduction of the IR-SE units
    resize_mode: str = "bilinear-antialias"  # how other sizes reach input_size; one of RESIZE_MODES

    def __post_init__(self) -> None:
        if self.n_styles < 1:
            raise ValueError(f"E4EConfig.n_styles={self.n_styles} must be >= 1 (18 for a 1024 px generator)")
        if len(self.stage_channels) != 4 or len(self.stage_blocks) != 4 or min(self.stage_blocks) < 1:
            raise ValueError(
                f"E4EConfig: stage_channels={self.stage_channels} and stage_blocks={self.stage_blocks} need four "
                "stages with at least one unit each (e4e reads the outputs of stages 2, 3 and 4)"
            )
        if min(self.stage_channels) < self.se_reduction:
            raise ValueError(
                f"E4EConfig: stage_channels={self.stage_channels} has a stage narrower than "
                f"se_reduction={self.se_reduction}; widen it or lower se_reduction"
            )
        side = self.input_size // 16
        if self.input_size % 16 or side < 2 or side & (side - 1):
            raise ValueError(
                f"E4EConfig.input_size={self.input_size} must be 16 times a power of two >= 2 (e.g. 256), so every "
                "style block pools its feature map to exactly 1 x 1"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"E4EConfig.resize_mode={self.resize_mode!r} is not one of {RESIZE_MODES}")

    def feature_side(self, layer: int) -> int:
        """Side of the feature map that W+ layer `layer` reads: input/16 (c3), input/8 (p2) or input/4 (p1)."""
        if layer < COARSE_STOP:
            return self.input_size // 16
        if layer < MIDDLE_STOP:
            return self.input_size // 8
        return self.input_size // 4


# Small widths for CPU tests and the seeded `tiny` profile (its generator: 64 px, 10 x 128 W+).
TINY_E4E = E4EConfig(n_styles=10, w_dim=128, stage_channels=(16, 32, 64, 128), stage_blocks=(1, 1, 1, 1),
                     input_size=64)  # fmt: skip


class GradualStyleBlock(nn.Module):
    """Stride-2 3x3 convs with LeakyReLU(0.01) down to 1 x 1, then an equalized linear layer: [B, w_dim]."""

    def __init__(self, in_channels: int, out_channels: int, side: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        layers: list[nn.Module] = []
        for i in range(int(math.log2(side))):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)  # [B, out, 1, 1]
        return self.linear(x.reshape(-1, self.out_channels))  # [B, out]


def _upsample_add(x: Tensor, lateral: Tensor) -> Tensor:
    """Bilinear (align_corners=True) resize of `x` to the lateral's size, plus the lateral (the reference's FPN)."""
    return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class E4EEncoder(nn.Module):
    """e4e: [-1, 1] face images [B, 3, H, H] -> W+ codes [B, n_styles, w_dim] (encoder output + latent_avg).

    Weights come from the caller (`anon_core.checkpoints.load_e4e`, or a seeded init for tests); use it in eval
    mode (BatchNorm statistics). Move it with `.to(device, dtype)`.
    """

    latent_avg: Tensor

    def __init__(self, config: E4EConfig) -> None:
        super().__init__()
        self.config = config
        self.input_layer, self.body = ir_se_trunk(config.stage_channels, config.stage_blocks, config.se_reduction)
        ends = [n - 1 for n in itertools.accumulate(config.stage_blocks)]  # last unit of each stage
        self._taps = (ends[1], ends[2], ends[3])  # body indices of c1, c2, c3 (6, 20, 23 in IR-SE50)
        width = config.stage_channels[-1]
        self.styles = nn.ModuleList(
            GradualStyleBlock(width, config.w_dim, config.feature_side(i)) for i in range(config.n_styles)
        )
        self.latlayer1 = nn.Conv2d(config.stage_channels[2], width, 1)
        self.latlayer2 = nn.Conv2d(config.stage_channels[1], width, 1)
        self.register_buffer("latent_avg", torch.zeros(config.n_styles, config.w_dim))

    def resize(self, images: Tensor) -> Tensor:
        """[B, 3, H, H] -> [B, 3, S, S], S = config.input_size, by `config.resize_mode` (identity when H == S)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(
                f"E4EEncoder: expected square RGB images [B, 3, H, H] in [-1, 1], got shape {tuple(images.shape)}; "
                "align and crop faces to a square first"
            )
        size = self.config.input_size
        if images.shape[-1] == size:
            return images
        if self.config.resize_mode == "area" and images.shape[-1] > size:
            return F.adaptive_avg_pool2d(images, size)
        shrinking = images.shape[-1] > size
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)

    def encode(self, images: Tensor) -> Tensor:
        """The encoder alone (no latent_avg): [B, 3, H, H] in [-1, 1] -> [B, n_styles, w_dim]."""
        x = self.input_layer(self.resize(images).to(self.latent_avg.dtype))
        taps: list[Tensor] = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._taps:
                taps.append(x)
        c1, c2, c3 = taps  # sides input/4, input/8, input/16
        n = self.config.n_styles
        w0 = self.styles[0](c3)  # [B, w_dim]
        deltas = [torch.zeros_like(w0)]
        features = c3
        for i in range(1, n):
            if i == COARSE_STOP:
                features = p2 = _upsample_add(c3, self.latlayer1(c2))
            elif i == MIDDLE_STOP:
                features = _upsample_add(p2, self.latlayer2(c1))
            deltas.append(self.styles[i](features))
        return w0.unsqueeze(1) + torch.stack(deltas, dim=1)  # [B, n_styles, w_dim]

    def forward(self, images: Tensor) -> Tensor:
        """[-1, 1] images [B, 3, H, H] -> W+ codes [B, n_styles, w_dim] = encode(images) + latent_avg."""
        return self.encode(images) + self.latent_avg


class E4EInverter:
    """The `anon_core.inversion.Inverter` protocol over an e4e encoder (one forward pass, no optimization).

    num_ws: the generator's W+ layer count. When it is below the encoder's `n_styles` the first `num_ws` codes are
    kept (e4e's own inference script does this to use an 18-layer encoder with a 16-layer generator); they drive
    the same layers up to the smaller generator's resolution. More layers than the encoder makes is an error.
    batch_size: images per forward pass (bounds memory); None encodes the batch at once.
    """

    def __init__(self, encoder: E4EEncoder, num_ws: int | None = None, batch_size: int | None = None) -> None:
        n_styles = encoder.config.n_styles
        if num_ws is not None and not 1 <= num_ws <= n_styles:
            raise ValueError(
                f"E4EInverter: the generator takes {num_ws} W+ layers but the e4e encoder makes {n_styles}; use an "
                "encoder trained for this generator resolution"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"E4EInverter: batch_size={batch_size} must be >= 1")
        self.encoder = encoder
        self.num_ws = num_ws or n_styles
        self.batch_size = batch_size

    @torch.no_grad()
    def invert(self, images: Tensor) -> Tensor:
        """[B, 3, R, R] images in [-1, 1] at the generator's resolution -> W+ codes [B, num_ws, w_dim], float32."""
        if len(images) == 0:
            return images.new_zeros(0, self.num_ws, self.encoder.config.w_dim, dtype=torch.float32)
        step = self.batch_size or len(images)
        parts = [self.encoder(images[i : i + step])[:, : self.num_ws] for i in range(0, len(images), step)]
        return torch.cat(parts).float()
