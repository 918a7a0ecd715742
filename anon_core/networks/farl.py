"""FaRL image encoder: the CLIP ViT-B/16 visual tower that FALCO uses for pairing and the attribute loss.

Follows openai/CLIP `clip/model.py` (`VisionTransformer`, `ResidualAttentionBlock`, `QuickGELU`, the fp32
`LayerNorm`). FaRL (FacePerceiver/FaRL) is that same network with face-pretrained weights; FALCO loads
`FaRL-Base-Patch16-LAIONFace20M-ep64.pth` (`state_dict` key) into CLIP ViT-B/16 and keeps `.visual`. Parameter
names here are CLIP's, so the checkpoint's `visual.*` entries, with the prefix removed, load by name:

    conv1.weight                    [width, 3, patch, patch]  (no bias)
    class_embedding                 [width]
    positional_embedding            [1 + grid^2, width]
    ln_pre.{weight,bias}
    transformer.resblocks.N.ln_1 / attn.in_proj_weight [3*width, width] / attn.in_proj_bias [3*width] /
        attn.out_proj.{weight,bias} / ln_2 / mlp.c_fc [4*width, width] / mlp.c_proj [width, 4*width]
    ln_post.{weight,bias}
    proj                            [width, output_dim]

Differences from the reference, none of which changes the maths: attention is written out with
`F.scaled_dot_product_attention` on batch-first tensors (CLIP calls `nn.MultiheadAttention` on sequence-first
ones; the packed q/k/v order and the 1/sqrt(head_dim) scale are the same), and the input normalization lives
in `preprocess` so callers pass generator-range images. FALCO's official code fed FaRL un-normalized images
(resized with torchvision's antialiased bilinear `Resize`); this module always applies CLIP's mean/std and
resizes bicubically as CLIP's own preprocessing does (see DESIGN.md section 2).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anon_core.networks.resample import separable_resample

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipResize", "ViTConfig", "FaRLEncoder"]

# CLIP's image normalization (openai/CLIP `clip/clip.py` `_transform`), applied to [0, 1] RGB.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipResize:
    """CLIP's resize to `size` px: bicubic, align_corners=False, antialiased when shrinking (as PIL's is)."""

    size: int

    def __call__(self, x: Tensor) -> Tensor:
        return self._bicubic(x, (self.size, self.size))

    def axis_map(self, x: Tensor, axis: str) -> Tensor:  # resample.AxisMap: the same op along one axis
        return self._bicubic(x, (1, self.size))

    def _bicubic(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        shrinking = x.shape[-1] > self.size
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrinking)


@dataclass(frozen=True)
class ViTConfig:
    """Sizes of a CLIP-style vision transformer; the defaults are ViT-B/16, the FaRL-Base network."""

    input_resolution: int = 224  # square input side the positional embedding was trained for
    patch_size: int = 16  # side of each patch (conv1 kernel and stride); grid = input_resolution // patch_size
    width: int = 768  # token dimension
    layers: int = 12  # residual attention blocks
    heads: int = 12  # attention heads; CLIP uses width // 64
    output_dim: int = 512  # size of the projected embedding (`proj` columns)

    def __post_init__(self) -> None:
        if self.input_resolution % self.patch_size != 0:
            raise ValueError(
                f"ViTConfig: input_resolution={self.input_resolution} is not a multiple of "
                f"patch_size={self.patch_size}; pick sizes where the patches tile the image exactly."
            )
        if self.width % self.heads != 0:
            raise ValueError(
                f"ViTConfig: width={self.width} is not divisible by heads={self.heads}; "
                "pick heads that divide width (CLIP uses width // 64)."
            )

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.input_resolution // self.patch_size


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in at least float32 and cast back, as CLIP does for half-precision weights."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """CLIP's GELU approximation, x * sigmoid(1.702 x); the weights were trained with it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameter names and packed q/k/v layout."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows: q, then k, then v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's init
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3 * width)
        qkv = qkv.view(batch, length, 3, self.heads, head_dim)  # (B, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, Dh), scale 1/sqrt(Dh)
        out = out.transpose(1, 2).reshape(batch, length, width)  # (B, L, width)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks, named `resblocks` as in CLIP."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resblocks(x)


class FaRLEncoder(nn.Module):
    """CLIP ViT image tower taking [-1, 1] images; returns the projected embedding and the last block's tokens.

    Weights come from the caller (`load_state_dict` with FaRL's `visual.*` keys minus the prefix); the seeded
    initialization only makes an untrained model produce non-degenerate tokens. Move it with `.to(device, dtype)`.
    """

    resize_form: ClassVar[str] = "interpolate"  # resample.RESIZE_FORMS; set_resize_form changes it per instance

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        scale = width**-0.5  # CLIP's std for the embeddings and the projection
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(config.grid**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.output_dim))
        # Constant normalization, kept out of checkpoints so FaRL's state dict loads with strict=True.
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        """[B, 3, H, H] images in [-1, 1] -> [B, 3, R, R] CLIP-normalized input, R = config.input_resolution.

        Steps: [-1, 1] -> [0, 1]; bicubic resize to R (ClipResize; as two matrix products when ``resize_form``
        is "matmul"); subtract CLIP_MEAN, divide by CLIP_STD. Differentiable throughout.
        """
        _check_square_rgb(images, "FaRLEncoder")
        size = self.config.input_resolution
        x = (images + 1.0) / 2.0
        if x.shape[-1] != size:
            resize = ClipResize(size)
            x = separable_resample(x, resize) if self.resize_form == "matmul" else resize(x)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Encode [-1, 1] images of any square size.

        Returns (embedding [B, output_dim] = ln_post(class token) @ proj, not normalized;
                 tokens [B, 1 + grid^2, width] = output of the last transformer block, before ln_post).
        """
        x = self.preprocess(images).to(self.conv1.weight.dtype)
        x = self.conv1(x)  # (B, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid^2, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, width)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + grid^2, width)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        tokens = self.transformer(x)  # (B, 1 + grid^2, width)
        embedding = self.ln_post(tokens[:, 0, :]) @ self.proj  # (B, output_dim)
        return embedding, tokens

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalized embedding [B, output_dim] (the pairing feature)."""
        embedding, _ = self.forward(images)
        return F.normalize(embedding, dim=-1)


def _check_square_rgb(images: Tensor, who: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(
            f"{who}: expected square RGB images [B, 3, H, H] in [-1, 1], got shape {tuple(images.shape)}; "
            "align and crop faces to a square first."
        )
