"""StyleGAN2 (config-f) generator in plain PyTorch.

Follows rosinality/stylegan2-pytorch ``model.py`` (commit bef283a), itself a port of NVIDIA's StyleGAN2 config-f:
same layer order, equalized learning rate, modulated/demodulated convolutions, up-sampling by stride-2 transposed
convolution + FIR blur, skip-connected ToRGB outputs. Submodule and parameter names are rosinality's, so a
rosinality ``g_ema`` state dict loads by name (drop its ``*.kernel`` blur buffers: ours are non-persistent); the
only extra key here is ``w_avg``. Parameters are created in rosinality's order from the global torch RNG, so the
same seed gives the same weights as rosinality's ``Generator``.

Differences from the reference, on purpose: pure-PyTorch activation and FIR ops (no CUDA extension), an explicit
``noise_mode`` instead of ``randomize_noise``, ``w_avg`` kept as a buffer, no style mixing in ``forward``, a
batched (NVIDIA's "non-fused") modulated conv for batches above one, element-wise work in the activations' dtype
(under bf16 autocast the feature maps stay bf16), and separate ``z_dim`` / ``w_dim`` and a ``channel_max`` cap
(for small test profiles).

W+ layer order (rosinality's, = NVIDIA's), ``num_ws = 2 * log2(resolution) - 2``; with ``n = log2(R) - 2`` up blocks
and block ``j = 0 .. n-1`` at resolution ``2 ** (j + 3)``, ``i = 2 * j + 1``::

    ws[:, 0]     -> conv1                  (4 x 4)
    ws[:, 1]     -> to_rgb1                (4 x 4)
    ws[:, i]     -> convs[2j]   (up-conv)  and ws[:, i] is ALSO the previous ToRGB's code (to_rgb1 for j = 0)
    ws[:, i + 1] -> convs[2j + 1]
    ws[:, i + 2] -> to_rgbs[j]             (shared with the next block's up-conv)

e.g. at 1024 px: conv1 0, to_rgb1 1, convs.0 1, convs.1 2, to_rgbs.0 3, convs.2 3, convs.3 4, to_rgbs.1 5, ...,
convs.14 15, convs.15 16, to_rgbs.7 17. Noise buffer ``noises.noise_N`` feeds conv1 (N = 0) and convs[N - 1].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anon_core.networks.forms import UP_FORMS
from anon_core.networks.precision import without_autocast
from anon_core.networks.upfirdn import Blur, Upsample

__all__ = [
    "ConstantInput",
    "EqualLinear",
    "FusedLeakyReLU",
    "Generator",
    "ModulatedConv2d",
    "NoiseInjection",
    "PixelNorm",
    "StyleGAN2Config",
    "StyledConv",
    "ToRGB",
    "fused_leaky_relu",
    "set_modulated_conv_form",
    "set_upsample_form",
]

BLUR_TAPS: tuple[int, ...] = (1, 3, 3, 1)  # config-f resampling filter
NOISE_MODES: tuple[str, ...] = ("const", "random", "none")
# rosinality's channel table; entries at >= 64 px scale with channel_multiplier.
_BASE_CHANNELS: dict[int, tuple[int, bool]] = {
    4: (512, False), 8: (512, False), 16: (512, False), 32: (512, False),
    64: (256, True), 128: (128, True), 256: (64, True), 512: (32, True), 1024: (16, True),
}  # fmt: skip


@dataclass(frozen=True)
class StyleGAN2Config:
    """Generator sizes. Defaults are FFHQ config-f at 1024 px (rosinality ``Generator(1024, 512, 8)``)."""

    resolution: int = 1024  # output side; num_ws = 2 * log2(resolution) - 2 (18 at 1024, 16 at 512, 10 at 64)
    z_dim: int = 512  # input latent size (rosinality ties it to w_dim; kept separate for small profiles)
    w_dim: int = 512  # style / W size
    mapping_layers: int = 8  # MLP depth of the mapping network
    mapping_lr_mul: float = 0.01  # equalized-lr multiplier of the mapping MLP (config-f)
    channel_multiplier: int = 2  # config-f
    channel_max: int = 512  # caps every resolution's channel count (small values make the `tiny` profile)

    def __post_init__(self) -> None:
        if self.resolution not in _BASE_CHANNELS:
            raise ValueError(
                f"StyleGAN2Config.resolution={self.resolution} is not supported; "
                f"use a power of two in {sorted(_BASE_CHANNELS)}"
            )
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_multiplier", "channel_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"StyleGAN2Config.{name}={getattr(self, name)} must be >= 1")
        if self.mapping_lr_mul <= 0:
            raise ValueError(f"StyleGAN2Config.mapping_lr_mul={self.mapping_lr_mul} must be > 0")

    @property
    def num_ws(self) -> int:
        """Number of W+ codes the synthesis network takes."""
        return 2 * int(math.log2(self.resolution)) - 2

    def channels(self, res: int) -> int:
        """Feature channels at side ``res``: rosinality's table, capped at ``channel_max``."""
        base, scaled = _BASE_CHANNELS[res]
        return min(self.channel_max, base * self.channel_multiplier if scaled else base)


# --- activation ---------------------------------------------------------------------------------------------------


def fused_leaky_relu(x: Tensor, bias: Tensor | None = None, negative_slope: float = 0.2) -> Tensor:
    """``leaky_relu(x + bias) * sqrt(2)`` with ``bias`` [C] added on dim 1 (rosinality's CPU ``fused_leaky_relu``)."""
    if bias is not None:  # in x's dtype: a float32 bias would promote a bf16 feature map (twice the memory traffic)
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))  # [1, C, 1, ...]
    return F.leaky_relu(x, negative_slope) * math.sqrt(2.0)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias + scaled leaky ReLU (parameter ``bias`` [C], zeros at init)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class PixelNorm(nn.Module):
    """Normalize each vector to unit mean square over dim 1."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x.square(), dim=1, keepdim=True) + 1e-8)


# --- equalized learning rate --------------------------------------------------------------------------------------


class EqualLinear(nn.Module):
    """Linear layer with equalized lr: weights stored ~N(0, 1/lr_mul^2), scaled by lr_mul/sqrt(in_dim) in forward."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activate={self.activate}"


# --- modulated convolution ----------------------------------------------------------------------------------------


class ModulatedConv2d(nn.Module):
    """Style-modulated conv (StyleGAN2 weight (de)modulation).

    ``weight`` is [1, out, in, k, k] (rosinality layout); ``modulation`` maps a W code to per-input-channel scales
    (bias 1 at init). With ``upsample`` it is a stride-2 transposed conv followed by a [1, 3, 3, 1] blur.

    Two equal formulations (``fused``; None picks by batch): "fused" builds one weight per sample and runs the batch
    as conv groups (rosinality's only path; cheapest for one sample), "batched" scales the input channels by the
    style, runs one ordinary conv over the whole batch with the shared weight, and scales the output channels by
    the demodulation coefficients (NVIDIA's non-fused path). For a batch, the batched form runs dense tensor-core
    convolutions and its code gradient is element-wise, where the grouped form needs a per-sample weight gradient.
    The batched up-sampling conv also folds the blur into its weight: a stride-2 transposed conv with the 3 x 3
    kernel convolved with the 4 x 4 filter (6 x 6) equals the transposed conv followed by the blur, and replaces a
    depthwise filtering pass over the largest feature maps (a fifth of an H100 step) by tensor-core work.

    ``up_form`` (``set_upsample_form``) picks how the batched path runs that up-sampling conv: "transposed" (the
    default) is the stride-2 transposed conv with the 6 x 6 blur-folded kernel, which cuDNN runs on non-tensor-core
    kernels; "polyphase" computes the same thing as one stride-1 ``conv2d`` with ``4 * out`` output channels and a
    pixel shuffle. Output pixel (2a + py, 2b + px) only sees every other tap of the folded kernel, so each of the
    four phases (py, px) is an ordinary conv of the input with a 3 x 3 sub-kernel of it (for config-f; other even
    blur filters give other windows, zero taps where one phase has fewer). Same sums of the same products, in
    another order (equal to float rounding); the per-sample fused path is not affected.

    ``gain`` scales the output (folded into the weight or the demodulation coefficients, so it costs no pass);
    ``add`` (broadcastable, e.g. [1, out, H, W]) is added after, in the same pass as the demodulation.
    """

    fused: bool | None = None  # None: fused for a batch of one, batched otherwise
    up_form: str = "transposed"  # UP_FORMS: the batched up-sampling conv as a transposed conv or 4 polyphase convs

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_taps: Sequence[float] = BLUR_TAPS,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_taps) - factor) - (kernel_size - 1)
            pad = ((p + 1) // 2 + factor - 1, p // 2 + 1)
            if pad[0] != pad[1]:  # the batched path folds the blur into a transposed conv, which crops evenly
                raise ValueError(f"blur_taps {tuple(blur_taps)} pad unevenly ({pad}); use an even number of taps")
            self.blur = Blur(blur_taps, pad=pad, upsample_factor=factor)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, {self.kernel_size}, "
            f"demodulate={self.demodulate}, upsample={self.upsample}"
        )

    def forward(self, x: Tensor, style: Tensor, gain: float = 1.0, add: Tensor | None = None) -> Tensor:
        s = self.modulation(style)  # [B, in]
        fused = self.fused if self.fused is not None else x.shape[0] == 1
        if fused:
            out = self._fused(x, s, gain)
            return out if add is None else out + add.to(out.dtype)
        return self._batched(x, s, gain, add)

    def _fused(self, x: Tensor, s: Tensor, gain: float) -> Tensor:
        batch, in_ch, height, width = x.shape
        out_ch, k = self.out_channels, self.kernel_size
        weight = self.scale * self.weight * s.reshape(batch, 1, in_ch, 1, 1)  # [B, out, in, k, k]
        if self.demodulate:
            demod = torch.rsqrt(weight.square().sum(dim=(2, 3, 4)) + 1e-8)  # [B, out]
            weight = weight * (demod * gain).reshape(batch, out_ch, 1, 1, 1)
        elif gain != 1.0:
            weight = weight * gain
        x = x.reshape(1, batch * in_ch, height, width)  # samples become conv groups
        if self.upsample:
            # conv_transpose2d wants [in, out, k, k] per group: [B, out, in, k, k] -> [B * in, out, k, k]
            weight = weight.transpose(1, 2).reshape(batch * in_ch, out_ch, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, padding=0, groups=batch)
            out = out.reshape(batch, out_ch, out.shape[2], out.shape[3])  # [B, out, 2H + k - 2, 2W + k - 2]
            return self.blur(out)  # [B, out, 2H, 2W]
        weight = weight.reshape(batch * out_ch, in_ch, k, k)  # [B * out, in, k, k]
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.reshape(batch, out_ch, height, width)

    def _batched(self, x: Tensor, s: Tensor, gain: float, add: Tensor | None) -> Tensor:
        batch = x.shape[0]
        weight = self.scale * self.weight[0]  # [out, in, k, k], shared by the batch
        x = x * s.to(x.dtype).reshape(batch, -1, 1, 1)
        if self.upsample and self.up_form == "polyphase":
            out = self._polyphase_up(x, weight)
        elif self.upsample:
            out = F.conv_transpose2d(x, self._blurred_up_weight(weight), stride=2, padding=self.blur_fold_padding)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if not self.demodulate:  # ToRGB: no per-sample scaling to share a pass with
            out = out * gain if gain != 1.0 else out
            return out if add is None else out + add.to(out.dtype)
        # 1 / |w * s| per output channel, in float32 at least whatever the autocast: sum_i s_i^2 sum_kk w_oikk^2
        precise = torch.promote_types(weight.dtype, torch.float32)
        with without_autocast(x.device.type):
            energy = s.to(precise).square() @ weight.to(precise).square().sum(dim=(2, 3)).t()  # [B, out]
        coef = (torch.rsqrt(energy + 1e-8) * gain).to(out.dtype).reshape(batch, -1, 1, 1)
        if add is None:
            return out * coef
        # addcmul's output takes its first input's layout: keep a channels-last feature map channels-last
        layout = torch.channels_last if out.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return torch.addcmul(add.to(out.dtype).contiguous(memory_format=layout), out, coef)

    @property
    def blur_fold_padding(self) -> int:
        """conv_transpose2d's padding for the blur-folded kernel: the blur's leading pad, counted from the far side
        of its filter (2 for config-f: a 6 x 6 kernel gives exactly 2H, like transposed conv + blur)."""
        return self.blur.kernel.shape[0] - 1 - self.blur.pad[0]

    def _blurred_up_weight(self, weight: Tensor) -> Tensor:
        """[out, in, k, k] -> the transposed conv's [in, out, k + K - 1, k + K - 1] weight: each k x k kernel fully
        convolved with the K x K blur filter, in float32 at least."""
        out_ch, in_ch, k, _ = weight.shape
        fir = self.blur.kernel
        precise = torch.promote_types(weight.dtype, torch.float32)
        with without_autocast(weight.device.type):
            kernels = weight.to(precise).transpose(0, 1).reshape(in_ch * out_ch, 1, k, k)
            fir = fir.to(precise).flip([0, 1]).reshape(1, 1, *fir.shape)  # conv2d correlates; flip to convolve
            kernels = F.conv2d(kernels, fir, padding=fir.shape[-1] - 1)  # full convolution
        return kernels.reshape(in_ch, out_ch, *kernels.shape[-2:]).to(weight.dtype)

    def _polyphase_up_weight(self, weight: Tensor) -> tuple[Tensor, int]:
        """[out, in, k, k] -> the [out * 4, in, n, n] conv2d weight of the four output phases (channel
        o * 4 + py * 2 + px, pixel_shuffle's order) and the conv's padding; see _polyphase_taps. The taps are picked
        from _blurred_up_weight's kernel (its dtype handling; picking them is exact) by slicing only (no index
        tensor, so no host-to-device copy in the step)."""
        blurred = self._blurred_up_weight(weight)  # [in, out, K, K], conv_transpose2d's layout
        in_ch, out_ch, size, _ = blurred.shape
        starts, n, pad, conv_pad = _polyphase_taps(size, self.blur_fold_padding)
        flipped = F.pad(blurred, (pad, pad, pad, pad)).flip([2, 3])
        stop = 2 * n - 1  # n taps, every other one
        phases = [flipped[:, :, sy : sy + stop : 2, sx : sx + stop : 2] for sy in starts for sx in starts]
        poly = torch.stack(phases, dim=2)  # [in, out, py * 2 + px, n, n]
        return poly.permute(1, 2, 0, 3, 4).reshape(out_ch * 4, in_ch, n, n), conv_pad

    def _polyphase_up(self, x: Tensor, weight: Tensor) -> Tensor:
        """The transposed up-sampling conv (blur folded) as 4 stride-1 phase convs + pixel shuffle: [B, in, H, W] ->
        [B, out, 2H, 2W], channels-last when the conv's output is (as conv_transpose2d's is for such an input)."""
        poly, conv_pad = self._polyphase_up_weight(weight)
        return _pixel_shuffle_2(F.conv2d(x, poly, padding=conv_pad))  # conv: [B, out * 4, H, W]


@functools.lru_cache(maxsize=None)
def _polyphase_taps(size: int, padding: int) -> tuple[tuple[int, int], int, int, int]:
    """Polyphase form of a stride-2 conv_transpose2d with a `size`-tap kernel W and `padding`, per axis.

    y[Y] = sum_h x[h] W[k] over Y = 2h + k - padding. For output phase py (Y = 2a + py): k = 2t + py + padding and
    h = a - t, for each t with 0 <= k < size. With the union [t_lo, t_hi] of both phases' t as one window of
    n = t_hi - t_lo + 1 taps, conv2d (a correlation: y[a] = sum_j x_padded[a + j] w[j]) over the input padded by
    t_hi before and -t_lo after (H outputs per phase) takes w[j] = W[2 * (t_hi - j) + py + padding], zero where
    that index is outside W. The transposed conv gives exactly 2H outputs when size = 2 * padding + 2 (which the
    even-padding check of ModulatedConv2d ensures), and then t_lo = -t_hi: the conv pads evenly, by t_hi.

    Returns ((start_0, start_1), n, pad, t_hi): phase py's w[j] = F[start_py + 2j], F being W zero-padded by `pad`
    on both sides and flipped; t_hi is the conv's padding.
    """
    if size != 2 * padding + 2:
        raise ValueError(f"a {size}-tap transposed conv with padding {padding} does not up-sample exactly 2x")
    ts = [(k - py - padding) // 2 for py in (0, 1) for k in range(size) if (k - py - padding) % 2 == 0]
    lo, hi = min(ts), max(ts)
    assert lo == -hi, (lo, hi)  # t = (k - py - padding) / 2 spans -(padding + 1) / 2 .. (padding + 1) / 2 (rounded)
    # the W indices that the window reaches: 2 * lo + padding (phase 0, j = n - 1) .. 2 * hi + 1 + padding (phase 1,
    # j = 0), i.e. -1 .. size for an odd padding (zero taps at both ends) and 0 .. size - 1 for an even one
    pad = max(0, -(2 * lo + padding))
    last = size + 2 * pad - 1  # F[m] = W_padded[last - m] and W[k] = W_padded[k + pad]
    starts = (last - pad - 2 * hi - padding, last - pad - 2 * hi - 1 - padding)
    return starts, hi - lo + 1, pad, hi


def _pixel_shuffle_2(x: Tensor) -> Tensor:
    """F.pixel_shuffle(x, 2) ([B, 4C, H, W] -> [B, C, 2H, 2W]) that keeps a channels-last input channels-last, in one
    copy (PyTorch's may return a contiguous tensor for it, and converting after would be a second pass)."""
    batch, channels, height, width = x.shape
    if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return F.pixel_shuffle(x, 2)
    out = x.reshape(batch, channels // 4, 2, 2, height, width).permute(0, 4, 2, 5, 3, 1)  # [B, H, py, W, px, C]
    return out.contiguous().view(batch, 2 * height, 2 * width, channels // 4).permute(0, 3, 1, 2)


def set_modulated_conv_form(module: nn.Module, fused: bool | None) -> None:
    """Run every ModulatedConv2d in `module` grouped per sample (True), batched (False) or by batch size (None)."""
    for conv in module.modules():
        if isinstance(conv, ModulatedConv2d):
            conv.fused = fused


def set_upsample_form(module: nn.Module, form: str) -> None:
    """Run the batched up-sampling conv of every ModulatedConv2d in `module` as one stride-2 transposed conv
    ("transposed", the default) or as four polyphase stride-1 convs and a pixel shuffle ("polyphase")."""
    if form not in UP_FORMS:
        raise ValueError(f"unknown up-sampling form {form!r}; use one of {UP_FORMS}")
    for conv in module.modules():
        if isinstance(conv, ModulatedConv2d):
            conv.up_form = form


# --- synthesis blocks ---------------------------------------------------------------------------------------------


class NoiseInjection(nn.Module):
    """Adds ``weight * noise`` (one learned strength, zero at init); ``noise=None`` adds nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            return x
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class ConstantInput(nn.Module):
    """The learned 4 x 4 starting feature map (parameter ``input`` [1, C, 4, 4])."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)  # [B, C, 4, 4]


class StyledConv(nn.Module):
    """Modulated 3 x 3 conv -> noise injection -> bias + scaled leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None) -> Tensor:
        # leaky_relu(conv + noise + bias) * sqrt(2), in two passes over the feature map instead of four: leaky ReLU
        # is positively homogeneous, so its gain moves into the conv and onto the small noise + bias term
        gain = math.sqrt(2.0)
        shift = self.activate.bias.reshape(1, -1, 1, 1)  # [1, C, 1, 1]
        if noise is not None:
            shift = self.noise(shift, noise)  # [1 or B, C, H, W]: one map for const noise
        return F.leaky_relu(self.conv(x, style, gain=gain, add=shift * gain), 0.2)


class ToRGB(nn.Module):
    """Modulated 1 x 1 conv to RGB (no demodulation) + bias, added to the FIR-up-sampled previous RGB skip."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(BLUR_TAPS)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# --- generator ----------------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """StyleGAN2 generator: ``style`` (mapping MLP) and a synthesis network fed per-layer W+ codes.

    Build it, then move it with ``.to(device, dtype)``; parameters are drawn from the global torch RNG, so seed it
    (e.g. ``torch.manual_seed`` inside ``torch.random.fork_rng()``) for reproducible weights. See the module
    docstring for which W+ code drives which layer.
    """

    w_avg: Tensor

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        self.config = config
        self.num_ws = config.num_ws
        log_size = int(math.log2(config.resolution))
        w_dim = config.w_dim

        mapping: list[nn.Module] = [PixelNorm()]
        for i in range(config.mapping_layers):
            in_dim = config.z_dim if i == 0 else w_dim
            mapping.append(EqualLinear(in_dim, w_dim, lr_mul=config.mapping_lr_mul, activate=True))
        self.style = nn.Sequential(*mapping)

        ch4 = config.channels(4)
        self.input = ConstantInput(ch4)
        self.conv1 = StyledConv(ch4, ch4, w_dim)
        self.to_rgb1 = ToRGB(ch4, w_dim, upsample=False)

        self.num_noises = 2 * (log_size - 2) + 1
        self.noises = nn.Module()
        for n in range(self.num_noises):
            side = 2 ** ((n + 5) // 2)  # 4, 8, 8, 16, 16, ...
            self.noises.register_buffer(f"noise_{n}", torch.randn(1, 1, side, side))

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = ch4
        for level in range(3, log_size + 1):
            out_ch = config.channels(2**level)
            self.convs.append(StyledConv(in_ch, out_ch, w_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, w_dim))
            self.to_rgbs.append(ToRGB(out_ch, w_dim))
            in_ch = out_ch

        self.register_buffer("w_avg", torch.zeros(w_dim))

    def mapping(self, z: Tensor) -> Tensor:
        """z [B, z_dim] -> w [B, w_dim]."""
        if z.ndim != 2 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"Generator.mapping expects z of shape [B, {self.config.z_dim}], got {list(z.shape)}")
        return self.style(z.to(dtype=self.input.input.dtype))

    def truncate(self, w: Tensor, psi: float) -> Tensor:
        """``w_avg + psi * (w - w_avg)`` for w [B, w_dim] or [B, num_ws, w_dim]; exactly w_avg at psi = 0, w at 1."""
        if psi == 1.0:
            return w
        w_avg = self.w_avg.to(dtype=w.dtype)  # [w_dim], broadcasts over the leading dims
        return w_avg + psi * (w - w_avg)

    @torch.no_grad()
    def compute_w_avg_(self, num_samples: int = 10_000, seed: int = 0, batch_size: int = 1000) -> None:
        """Set ``w_avg`` to the mean of ``mapping(z)`` over ``num_samples`` z ~ N(0, I) drawn from ``seed``."""
        if num_samples < 1 or batch_size < 1:
            raise ValueError(
                f"compute_w_avg_ needs num_samples >= 1 and batch_size >= 1, got {num_samples} and {batch_size}"
            )
        gen = torch.Generator(device="cpu").manual_seed(seed)
        total = torch.zeros(self.config.w_dim, dtype=torch.float64, device=self.w_avg.device)
        param = self.input.input
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            z = torch.randn(n, self.config.z_dim, generator=gen).to(device=param.device, dtype=param.dtype)
            total += self.mapping(z).double().sum(dim=0)
        self.w_avg.copy_(total / num_samples)

    def _noise(self, index: int, batch: int, side: int, like: Tensor, noise_mode: str) -> Tensor | None:
        """Noise map for ``noises.noise_{index}`` ([1 or B, 1, side, side]) under ``noise_mode``; None for "none"."""
        if noise_mode == "const":
            return getattr(self.noises, f"noise_{index}").to(dtype=like.dtype)
        if noise_mode == "random":
            return torch.randn(batch, 1, side, side, device=like.device, dtype=like.dtype)
        return None

    def layer_codes(self, ws: Tensor | Sequence[Tensor]) -> list[Tensor]:
        """W+ codes as one [B, w_dim] tensor per layer (``num_ws`` of them), in the parameters' dtype.

        ``ws`` is [B, num_ws, w_dim], or already a sequence of ``num_ws`` [B, w_dim] codes. Per-layer codes let a
        caller give only some layers a gradient: a layer whose code has none needs no weight-style gradient in its
        modulated convolution, which is most of the backward pass (see bench/flops.py).
        """
        dtype = self.input.input.dtype  # a bf16 model takes fp32 codes; autograd flows through the cast
        shape = f"[B, {self.num_ws}, {self.config.w_dim}] or {self.num_ws} codes [B, {self.config.w_dim}]"
        if isinstance(ws, Tensor):
            if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.config.w_dim):
                raise ValueError(f"Generator.synthesis expects ws of shape {shape}, got {list(ws.shape)}")
            return list(ws.to(dtype=dtype).unbind(1))
        codes = list(ws)
        shapes = [tuple(c.shape) for c in codes]
        if len(codes) != self.num_ws or any(s != (shapes[0][0], self.config.w_dim) for s in shapes):
            raise ValueError(f"Generator.synthesis expects ws of shape {shape}, got codes of shapes {shapes}")
        return [c.to(dtype=dtype) for c in codes]

    def synthesis(self, ws: Tensor | Sequence[Tensor], noise_mode: str = "const") -> Tensor:
        """ws [B, num_ws, w_dim] (or ``num_ws`` codes [B, w_dim], see ``layer_codes``) -> image [B, 3, R, R],
        roughly in [-1, 1], not clamped.

        noise_mode: "const" uses the fixed ``noises.noise_N`` buffers (deterministic), "random" draws fresh noise,
        "none" adds no noise.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode={noise_mode!r} is not one of {NOISE_MODES}")
        codes = self.layer_codes(ws)
        like = codes[0]
        batch = like.shape[0]
        x = self.input(batch)
        x = self.conv1(x, codes[0], self._noise(0, batch, 4, like, noise_mode))
        skip = self.to_rgb1(x, codes[1])
        i = 1
        for j, to_rgb in enumerate(self.to_rgbs):
            side = 2 ** (j + 3)
            x = self.convs[2 * j](x, codes[i], self._noise(i, batch, side, like, noise_mode))
            x = self.convs[2 * j + 1](x, codes[i + 1], self._noise(i + 1, batch, side, like, noise_mode))
            skip = to_rgb(x, codes[i + 2], skip)
            i += 2
        return skip

    def forward(self, z: Tensor, psi: float = 1.0, noise_mode: str = "const") -> Tensor:
        """z [B, z_dim] -> image [B, 3, R, R]: mapping -> truncation toward ``w_avg`` -> same w for every layer."""
        w = self.truncate(self.mapping(z), psi)
        ws = w.unsqueeze(1).expand(-1, self.num_ws, -1)  # [B, num_ws, w_dim]
        return self.synthesis(ws, noise_mode=noise_mode)
