"""Official checkpoint formats -> our networks, by key tables, with one clear error per bad file.

Formats and the reference code that defines them (the parity fixtures in tests/fixtures/parity were recorded by
running these references; tests/test_checkpoints.py holds the loaders to them):

- GenForce StyleGAN2 (`stylegan2_ffhq1024.pth`, `stylegan2_ffhq512.pth`; top level `generator_smooth`, else
  `generator`): genforce/genforce `models/stylegan2_generator.py` (as copied into chi0tzp/FALCO
  `models/genforce/`). Same maths as rosinality's, other names and parameterization:
  conv weights [out, in, k, k] (ours [1, out, in, k, k]); up-convs flip their kernel spatially inside forward
  (rosinality does not, so we store it flipped); the modulation adds a constant 1 outside `style.bias`
  (rosinality folds it into `modulation.bias`); `noise_strength` is 0-d (ours [1]); ToRGB bias [3] (ours
  [1, 3, 1, 1]); `truncation.w_avg` is our `w_avg`. Weight scaling (wscale = gain / sqrt(fan_in) * lr_mul, bias *
  lr_mul, lr_mul 0.01 in the mapping) equals rosinality's equalized lr, so weights and biases copy as they are.
  Its FIR `kernel` buffers are constants and are dropped (ours are non-persistent).
- rosinality StyleGAN2 (`stylegan2-ffhq-config-f.pt`; `g_ema`, `latent_avg`): rosinality/stylegan2-pytorch
  `model.py`. Our names; its blur `kernel` buffers are dropped; `w_avg` = `latent_avg`.
- e4e (`e4e_ffhq_encode.pt`; `state_dict` with `encoder.*` and `decoder.*`, `latent_avg`, `opts`):
  omertov/encoder4editing `models/psp.py`. `encoder.*` -> `anon_core.networks.e4e.E4EEncoder` (our names are its
  names), `latent_avg` -> the encoder's `latent_avg`; `decoder.*` is a rosinality generator.
- FaRL (`FaRL-Base-Patch16-LAIONFace20M-ep64.pth`; `state_dict` = a whole CLIP model): `visual.*` minus the prefix
  -> `FaRLEncoder` (openai/CLIP names); the text tower and the rest are ignored, as FaRL's `strict=False` does.
- ArcFace (`model_ir_se50.pth`, a plain TreB1eN state dict) -> `ArcFaceEncoder` by name. BatchNorm
  `num_batches_tracked` may be absent (files saved before PyTorch 0.4.1).

Every file is read with `torch.load(path, map_location="cpu", weights_only=True)`: no file is unpickled. A key
table maps each checkpoint key to (our key, a named transform); every missing key, unexpected key and shape
mismatch of a file is reported in one `CheckpointError` that names the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from anon_core.checkpoint_file import CheckpointError, read_checkpoint
from anon_core.errors import FalcoError, MissingWeightsError
from anon_core.networks.arcface import ArcFaceEncoder, IRSEConfig
from anon_core.networks.e4e import E4EConfig, E4EEncoder, E4EInverter
from anon_core.networks.farl import FaRLEncoder, ViTConfig
from anon_core.networks.stylegan2 import Generator, StyleGAN2Config

__all__ = [
    "GENERATOR_FORMATS",
    "OFFICIAL_ROLES",
    "CheckpointError",
    "OfficialNetworks",
    "Rule",
    "e4e_encoder_table",
    "genforce_table",
    "load_arcface",
    "load_e4e",
    "load_e4e_decoder",
    "load_farl",
    "load_generator",
    "load_genforce_stylegan2",
    "load_official_networks",
    "load_rosinality_stylegan2",
    "rosinality_table",
]

GENERATOR_FORMATS: tuple[str, ...] = ("auto", "genforce", "rosinality", "e4e")
OFFICIAL_ROLES: tuple[str, ...] = ("generator", "e4e", "farl", "arcface")  # keys of load_official_networks' paths
_SHOWN = 8  # keys listed per kind of problem in an error message


class _Transform(NamedTuple):
    apply: Callable[[Tensor], Tensor]  # checkpoint tensor -> our tensor
    source_shape: Callable[[tuple[int, ...]], tuple[int, ...]]  # our shape -> the shape the file must have


_TRANSFORMS: dict[str, _Transform] = {
    "copy": _Transform(lambda t: t, lambda s: s),
    # GenForce conv [out, in, k, k] -> [1, out, in, k, k]
    "unsqueeze0": _Transform(lambda t: t.unsqueeze(0), lambda s: s[1:]),
    # GenForce up-conv: it flips the kernel (dims k, k) in forward before conv_transpose2d; rosinality does not
    "flip_unsqueeze0": _Transform(lambda t: t.flip(-2, -1).unsqueeze(0), lambda s: s[1:]),
    # GenForce's style = dense(w) + 1 (additional_bias); rosinality's modulation bias starts at 1 instead
    "plus_one": _Transform(lambda t: t + 1.0, lambda s: s),
    # GenForce noise_strength 0-d -> NoiseInjection.weight [1]
    "scalar_to_1": _Transform(lambda t: t.reshape(1), lambda s: ()),
    # GenForce ToRGB bias [3] -> [1, 3, 1, 1]
    "rgb_bias": _Transform(lambda t: t.reshape(1, -1, 1, 1), lambda s: (s[1],)),
}


@dataclass(frozen=True)
class Rule:
    """Where one checkpoint entry goes."""

    target: str | None  # our state-dict key; None: a constant of the reference (FIR kernel), checked and dropped
    transform: str = "copy"  # a key of _TRANSFORMS
    required: bool = True  # False: may be absent (dropped constants; num_batches_tracked, then zero)


# StyleGAN2's up-sampling FIR filter, the one our Generator builds: outer([1, 3, 3, 1]) normalized to sum 1, times
# the up-sampling factor squared (4). Both references store it as a buffer ([4, 4] or [1, 1, 4, 4]); a file holding
# another filter was trained with a generator we do not reproduce.
UPSAMPLE_FIR = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 16
FIR_RULE = Rule(None, required=False)


KeyTable = dict[str, Rule]  # checkpoint key -> rule


# --------------------------------------------------------------------------------------------- key tables
def genforce_table(config: StyleGAN2Config) -> KeyTable:
    """GenForce `StyleGAN2Generator` (architecture 'skip', const input) keys -> our Generator's keys."""
    table: KeyTable = {"truncation.w_avg": Rule("w_avg"), "synthesis.early_layer.const": Rule("input.input")}
    for i in range(config.mapping_layers):
        table[f"mapping.dense{i}.weight"] = Rule(f"style.{i + 1}.weight")  # style.0 is the PixelNorm
        table[f"mapping.dense{i}.bias"] = Rule(f"style.{i + 1}.bias")

    def modulated(src: str, dst: str, conv_transform: str) -> None:
        table[f"{src}.weight"] = Rule(f"{dst}.conv.weight", conv_transform)
        table[f"{src}.style.weight"] = Rule(f"{dst}.conv.modulation.weight")
        table[f"{src}.style.bias"] = Rule(f"{dst}.conv.modulation.bias", "plus_one")

    # layer N (N = 0: the 4 x 4 conv; odd N: up-convs) -> conv1 / convs[N - 1]; its noise -> noises.noise_N
    for n in range(config.num_ws - 1):
        dst = "conv1" if n == 0 else f"convs.{n - 1}"
        up = n % 2 == 1
        modulated(f"synthesis.layer{n}", dst, "flip_unsqueeze0" if up else "unsqueeze0")
        table[f"synthesis.layer{n}.bias"] = Rule(f"{dst}.activate.bias")
        table[f"synthesis.layer{n}.noise_strength"] = Rule(f"{dst}.noise.weight", "scalar_to_1")
        table[f"synthesis.layer{n}.noise"] = Rule(f"noises.noise_{n}")
        if up:
            table[f"synthesis.layer{n}.filter.kernel"] = FIR_RULE
    # output K (ToRGB at 4 * 2**K px) -> to_rgb1 / to_rgbs[K - 1]
    for k in range(config.num_ws // 2):
        dst = "to_rgb1" if k == 0 else f"to_rgbs.{k - 1}"
        modulated(f"synthesis.output{k}", dst, "unsqueeze0")
        table[f"synthesis.output{k}.bias"] = Rule(f"{dst}.bias", "rgb_bias")
    table["synthesis.upsample.kernel"] = FIR_RULE
    return table


def rosinality_table(config: StyleGAN2Config, prefix: str = "") -> KeyTable:
    """rosinality `Generator` keys (optionally under `prefix`, e.g. "decoder.") -> ours: same names, kernels dropped."""
    with torch.device("meta"):
        names = Generator(config).state_dict().keys()
    table: KeyTable = {prefix + key: Rule(key) for key in names if key != "w_avg"}
    for j in range(config.num_ws // 2 - 1):
        table[f"{prefix}convs.{2 * j}.conv.blur.kernel"] = FIR_RULE
        table[f"{prefix}to_rgbs.{j}.upsample.kernel"] = FIR_RULE
    return table


def _same_names_table(model: nn.Module, prefix: str = "", skip: tuple[str, ...] = ()) -> KeyTable:
    """`prefix + key` -> key for every state entry of `model` (num_batches_tracked optional)."""
    return {
        prefix + key: Rule(key, required=not key.endswith("num_batches_tracked"))
        for key in model.state_dict()
        if key not in skip
    }


def e4e_encoder_table(config: E4EConfig) -> KeyTable:
    """e4e checkpoint `encoder.*` keys -> our E4EEncoder's keys (`latent_avg` comes from the checkpoint's top level)."""
    with torch.device("meta"):
        encoder = E4EEncoder(config)
    return _same_names_table(encoder, "encoder.", skip=("latent_avg",))


# --------------------------------------------------------------------------------------------- machinery
def _section(obj: Any, path: Path, keys: tuple[str, ...], what: str) -> dict[str, Tensor]:
    """The first of `keys` present at the checkpoint's top level, as a state dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict; it is not a {what} checkpoint")
    for key in keys:
        if isinstance(obj.get(key), Mapping):
            return dict(obj[key])
    top = ", ".join(map(str, list(obj)[:_SHOWN])) or "nothing"
    raise CheckpointError(
        f"{path} has none of the entries {', '.join(keys)} that a {what} checkpoint holds (its top level has: "
        f"{top}); check that this is the right file"
    )


def _is_upsample_fir(value: Any) -> bool:
    if not (isinstance(value, Tensor) and value.numel() == 16 and value.is_floating_point()):
        return False
    if value.is_meta:  # a layout check without values (tests of the full-size key tables)
        return True
    return torch.allclose(value.detach().reshape(4, 4).double().cpu(), UPSAMPLE_FIR.double(), atol=1e-6)


def _shown(value: Any) -> str:
    if not isinstance(value, Tensor):
        return f"a {type(value).__name__}"
    head = ", ".join(f"{v:.4g}" for v in value.detach().flatten()[:4].tolist())
    return f"{list(value.shape)} starting {head}"


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"{len(items)} {label}: {shown}{more}"


def _convert(state: Mapping[str, Tensor], table: KeyTable, model: nn.Module, path: Path, what: str,
             ignore_prefixes: tuple[str, ...] = (), fix: str = "", external: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Map `state` through `table` into a state dict for `model`; one CheckpointError lists every problem.

    ignore_prefixes: checkpoint keys that are not this model's (another network in the same file).
    external: our keys the caller fills from outside the state dict (w_avg, latent_avg).
    """
    expected = model.state_dict()
    missing = [key for key, rule in table.items() if rule.required and key not in state]
    unexpected = sorted(key for key in state if key not in table and not key.startswith(ignore_prefixes))
    mismatched: list[str] = []
    out: dict[str, Tensor] = {}
    for key, rule in table.items():
        if rule is FIR_RULE:
            if key in state and not _is_upsample_fir(state[key]):
                mismatched.append(f"{key} is not StyleGAN2's [1, 3, 3, 1] up-sampling filter (x4): "
                                  f"{_shown(state[key])}")
            continue
        want = expected[rule.target]
        if key not in state:  # only optional entries get here without an error
            out[rule.target] = torch.zeros_like(want, device="cpu")
            continue
        value = state[key]
        transform = _TRANSFORMS[rule.transform]
        need = transform.source_shape(tuple(want.shape))
        if not isinstance(value, Tensor) or tuple(value.shape) != need:
            got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            mismatched.append(f"{key} is {got}, expected {list(need)}")
            continue
        out[rule.target] = transform.apply(value).to(want.dtype)
    if missing or unexpected or mismatched:
        problems = [
            _listing(label, items)
            for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", mismatched))
            if items
        ]  # fmt: skip
        raise CheckpointError(f"{path} does not fit {what}: {'; '.join(problems)}. {fix}".rstrip())
    uncovered = set(expected) - set(out) - set(external)
    assert not uncovered, f"key table leaves {sorted(uncovered)} unset"  # a bug in a table, not in the file
    return out


def _new(build: Callable[[], nn.Module]) -> nn.Module:
    """An empty model to load into: built on the meta device (no init work) unless it has non-persistent buffers,
    which only its constructor computes; then built normally, without touching the caller's RNG."""
    with torch.device("meta"):
        model = build()
    if {name for name, _ in model.named_buffers()} - set(model.state_dict()):
        with torch.random.fork_rng(devices=[]):
            return build()
    return model.to_empty(device="cpu")


def _finish(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    model.load_state_dict(state, strict=True)
    return model.eval()


def _generator_fix(config: StyleGAN2Config) -> str:
    return (f"The profile expects a {config.resolution} px generator ({config.num_ws} W+ layers of {config.w_dim}); "
            "check that the file is that generator or choose the profile that matches the file.")


# --------------------------------------------------------------------------------------------- generators
def _genforce_from(obj: Any, path: Path, config: StyleGAN2Config) -> Generator:
    state = _section(obj, path, ("generator_smooth", "generator"), "GenForce StyleGAN2")
    model = _new(lambda: Generator(config))
    converted = _convert(state, genforce_table(config), model, path, "a GenForce StyleGAN2 generator",
                         fix=_generator_fix(config))
    return _finish(model, converted)


def load_genforce_stylegan2(path: str | Path, config: StyleGAN2Config) -> Generator:
    """GenForce StyleGAN2 checkpoint (`generator_smooth`, else `generator`) -> our Generator (CPU, eval)."""
    return _genforce_from(read_checkpoint(path), Path(path), config)


def _rosinality_w_avg(latent_avg: Any, config: StyleGAN2Config, path: Path) -> Tensor:
    if not isinstance(latent_avg, Tensor) or latent_avg.ndim == 0 or latent_avg.shape[-1] != config.w_dim:
        got = list(latent_avg.shape) if isinstance(latent_avg, Tensor) else type(latent_avg).__name__
        raise CheckpointError(f"{path}: latent_avg is {got}; expected [{config.w_dim}] or [layers, {config.w_dim}]")
    return latent_avg.reshape(-1, config.w_dim).float().mean(dim=0)  # e4e repeats it per layer: identical rows


def _rosinality_generator(path: Path, state: dict[str, Tensor], latent_avg: Any, config: StyleGAN2Config,
                          prefix: str, what: str, ignore: tuple[str, ...] = ()) -> Generator:
    model = _new(lambda: Generator(config))
    converted = _convert(state, rosinality_table(config, prefix), model, path, what, ignore_prefixes=ignore,
                         fix=_generator_fix(config), external=("w_avg",))
    if latent_avg is None:  # rosinality's own training checkpoints: w_avg as its mean_latent computes it
        _finish(model, converted | {"w_avg": torch.zeros(config.w_dim)})
        model.compute_w_avg_()
        return model
    return _finish(model, converted | {"w_avg": _rosinality_w_avg(latent_avg, config, path)})


def _rosinality_from(obj: Any, path: Path, config: StyleGAN2Config) -> Generator:
    state = _section(obj, path, ("g_ema",), "rosinality StyleGAN2")
    return _rosinality_generator(path, state, obj.get("latent_avg"), config, "", "a rosinality StyleGAN2 generator")


def load_rosinality_stylegan2(path: str | Path, config: StyleGAN2Config) -> Generator:
    """rosinality checkpoint (`g_ema`, `latent_avg`) -> our Generator (CPU, eval).

    `w_avg` is the file's `latent_avg`; a file without one (a rosinality training checkpoint) gets the mean of
    10,000 mapped z ~ N(0, I) (seed 0), as rosinality's `mean_latent` computes it.
    """
    return _rosinality_from(read_checkpoint(path), Path(path), config)


def _e4e_parts(obj: Any, path: Path) -> tuple[dict[str, Tensor], Mapping[str, Any]]:
    """(state dict, opts) of an e4e/pSp checkpoint; refuses pSp encoders of another type."""
    if isinstance(obj, Mapping) and "state_dict" not in obj and any(str(k).startswith("encoder.") for k in obj):
        state = dict(obj)  # a bare state dict, as pSp's get_keys also accepts
    else:
        state = _section(obj, path, ("state_dict",), "e4e")
    opts = obj.get("opts") if isinstance(obj.get("opts"), Mapping) else {}
    kind = opts.get("encoder_type", "Encoder4Editing")
    if kind != "Encoder4Editing":
        raise CheckpointError(
            f"{path} holds a pSp '{kind}' encoder (opts.encoder_type); only 'Encoder4Editing' (e4e) is supported: "
            "its keys look alike but its forward differs, so it would give wrong codes"
        )
    return state, opts


def load_e4e(path: str | Path, config: E4EConfig | None = None) -> E4EEncoder:
    """e4e checkpoint -> our E4EEncoder (CPU, eval) with the file's `latent_avg`; the `decoder.*` part is ignored.

    config: the expected sizes; None infers n_styles and w_dim from the file's `encoder.styles.N` entries and takes
    the other sizes from E4EConfig's defaults (IR-SE50, 256 px input).
    """
    path = Path(path)
    obj = read_checkpoint(path)
    state, opts = _e4e_parts(obj, path)
    if config is None:
        heads = [k for k in state if k.startswith("encoder.styles.") and k.endswith(".linear.weight")]
        if not heads:
            raise CheckpointError(f"{path} has no encoder.styles.N entries; it is not an e4e encoder checkpoint")
        config = E4EConfig(n_styles=len(heads), w_dim=int(state[heads[0]].shape[0]))
    model = _new(lambda: E4EEncoder(config))
    converted = _convert(state, e4e_encoder_table(config), model, path,
                         f"an e4e encoder ({config.n_styles} x {config.w_dim} W+)", ignore_prefixes=("decoder.",),
                         fix="Check that the file is e4e's e4e_ffhq_encode.pt (or an e4e encoder of these sizes).",
                         external=("latent_avg",))
    latent_avg = obj.get("latent_avg")
    if latent_avg is None:
        if opts.get("start_from_latent_avg", True):
            raise CheckpointError(
                f"{path} has no latent_avg although its encoder was trained to add it (opts.start_from_latent_avg); "
                "the codes would be off-centre: use the complete checkpoint"
            )
        latent_avg = torch.zeros(config.n_styles, config.w_dim)
    if not isinstance(latent_avg, Tensor) or latent_avg.ndim == 0 or latent_avg.shape[-1] != config.w_dim or \
            latent_avg.numel() not in (config.w_dim, config.n_styles * config.w_dim):
        got = list(latent_avg.shape) if isinstance(latent_avg, Tensor) else type(latent_avg).__name__
        raise CheckpointError(
            f"{path}: latent_avg is {got}; expected [{config.n_styles}, {config.w_dim}] or [{config.w_dim}]"
        )
    layered = latent_avg.reshape(-1, config.w_dim).expand(config.n_styles, -1)  # [n_styles, w_dim]
    return _finish(model, converted | {"latent_avg": layered.float()})


def _e4e_decoder_from(obj: Any, path: Path, config: StyleGAN2Config) -> Generator:
    state, _ = _e4e_parts(obj, path)
    return _rosinality_generator(path, state, obj.get("latent_avg"), config, "decoder.",
                                 "the generator (decoder) of an e4e checkpoint", ignore=("encoder.",))


def load_e4e_decoder(path: str | Path, config: StyleGAN2Config) -> Generator:
    """The generator inside an e4e checkpoint (`decoder.*`, rosinality names) -> our Generator (CPU, eval);
    `w_avg` = the file's `latent_avg` (one row of it: e4e stores the mean latent repeated per layer)."""
    return _e4e_decoder_from(read_checkpoint(path), Path(path), config)


_GENERATOR_READERS: dict[str, Callable[[Any, Path, StyleGAN2Config], Generator]] = {
    "genforce": _genforce_from,
    "rosinality": _rosinality_from,
    "e4e": _e4e_decoder_from,
}
_FORMAT_MARKERS: tuple[tuple[str, str], ...] = (  # top-level key -> format, first match wins
    ("generator_smooth", "genforce"), ("generator", "genforce"), ("g_ema", "rosinality"), ("state_dict", "e4e"),
)


def load_generator(path: str | Path, config: StyleGAN2Config, fmt: str = "auto") -> Generator:
    """A StyleGAN2 checkpoint of any supported format -> our Generator (CPU, eval).

    fmt: one of GENERATOR_FORMATS; "auto" picks it from the file's top-level keys (`generator_smooth`/`generator`:
    GenForce, `g_ema`: rosinality, `state_dict`: e4e's decoder).
    """
    path = Path(path)
    if fmt not in GENERATOR_FORMATS:
        raise CheckpointError(f"generator format {fmt!r} is not one of {GENERATOR_FORMATS}")
    obj = read_checkpoint(path)
    if fmt == "auto":
        top = {str(key) for key in obj} if isinstance(obj, Mapping) else set()
        fmt = next((name for marker, name in _FORMAT_MARKERS if marker in top), "")
        if not fmt:
            raise CheckpointError(
                f"{path} is not a StyleGAN2 checkpoint this project reads (top level: "
                f"{', '.join(sorted(top)[:_SHOWN]) or 'none'}); expected GenForce (generator_smooth / generator), "
                "rosinality (g_ema) or e4e (state_dict)"
            )
    return _GENERATOR_READERS[fmt](obj, path, config)


# --------------------------------------------------------------------------------------------- encoders
def load_farl(path: str | Path, config: ViTConfig = ViTConfig()) -> FaRLEncoder:
    """FaRL checkpoint (`state_dict` holding a whole CLIP model) -> FaRLEncoder from its `visual.*` entries; the
    other entries (text tower, logit_scale, ...) are not ours and are ignored."""
    path = Path(path)
    whole = _section(read_checkpoint(path), path, ("state_dict",), "FaRL")
    state = {key: value for key, value in whole.items() if key.startswith("visual.")}
    if not state:
        raise CheckpointError(
            f"{path} has no visual.* entries (it starts with: {', '.join(list(whole)[:_SHOWN]) or 'nothing'}); a FaRL "
            "checkpoint holds a CLIP model whose image tower is under visual.*"
        )
    model = _new(lambda: FaRLEncoder(config))
    converted = _convert(state, _same_names_table(model, "visual."), model, path,
                         f"FaRL's ViT (width {config.width}, {config.layers} layers, patch {config.patch_size})",
                         fix="Check that the file is FaRL-Base-Patch16 (a CLIP ViT-B/16) for this profile.")
    return _finish(model, converted)


def load_arcface(path: str | Path, config: IRSEConfig = IRSEConfig()) -> ArcFaceEncoder:
    """TreB1eN ArcFace state dict (`model_ir_se50.pth`; also accepted under a `state_dict` key) -> ArcFaceEncoder."""
    path = Path(path)
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict; it is not an ArcFace checkpoint")
    model = _new(lambda: ArcFaceEncoder(config))
    converted = _convert(dict(obj), _same_names_table(model), model, path,
                         f"ArcFace IR-SE (stages {config.stage_blocks}, {config.embedding_dim}-d)",
                         fix="Check that the file is TreB1eN's model_ir_se50.pth (IR-SE50, 112 px).")
    return _finish(model, converted)


# --------------------------------------------------------------------------------------------- a profile's set
@dataclass
class OfficialNetworks:
    """A profile's networks from official checkpoints, frozen (eval, no grad) on one device."""

    generator: Generator
    e4e: E4EEncoder
    inverter: E4EInverter
    farl: FaRLEncoder
    identity: ArcFaceEncoder


def load_official_networks(profile_spec: Any, paths: Mapping[str, str | Path], device: torch.device | str = "cpu",
                           e4e_config: E4EConfig | None = None) -> OfficialNetworks:
    """Load a profile's official checkpoints and freeze them on `device`.

    profile_spec: an `anon_core.profiles.ProfileSpec` (its `generator`, `farl` and `identity` configs are used;
    with `identity_network` "dlib" no "arcface" path is needed: dlib's trained descriptor is the identity network).
    paths: OFFICIAL_ROLES -> file, e.g. {"generator": .../stylegan2_ffhq1024.pth, "e4e": .../e4e_ffhq_encode.pt,
    "farl": .../FaRL-Base-Patch16-LAIONFace20M-ep64.pth, "arcface": .../model_ir_se50.pth}; the generator's format
    is detected from the file. The e4e inverter keeps the generator's number of W+ layers (see E4EInverter).
    e4e_config: the e4e sizes; default the spec's `e4e` attribute if it has one, else inferred from the file
    (n_styles and w_dim; IR-SE50 backbone).
    """
    dlib_identity = getattr(profile_spec, "identity_network", "arcface") == "dlib"
    absent = [role for role in OFFICIAL_ROLES if role not in paths and not (role == "arcface" and dlib_identity)]
    if absent:
        raise CheckpointError(f"load_official_networks needs a path for {', '.join(absent)} "
                              f"(paths has: {', '.join(paths) or 'nothing'})")
    gen_config: StyleGAN2Config = profile_spec.generator
    generator = load_generator(paths["generator"], gen_config)
    e4e = load_e4e(paths["e4e"], e4e_config or getattr(profile_spec, "e4e", None))
    if e4e.config.w_dim != gen_config.w_dim:
        raise CheckpointError(
            f"{paths['e4e']} makes {e4e.config.w_dim}-d codes but the {profile_spec.name} generator takes "
            f"{gen_config.w_dim}-d ones; use the e4e encoder trained for this generator"
        )
    farl = load_farl(paths["farl"], profile_spec.farl)
    device = torch.device(device)
    if dlib_identity:
        from anon_core.identity import load_dlib_identity

        identity = load_dlib_identity(device)
    else:
        identity = load_arcface(paths["arcface"], profile_spec.identity)
    for net in (generator, e4e, farl, identity):
        net.to(device).eval().requires_grad_(False)
    inverter = E4EInverter(e4e, num_ws=gen_config.num_ws)
    return OfficialNetworks(generator=generator, e4e=e4e, inverter=inverter, farl=farl, identity=identity)
