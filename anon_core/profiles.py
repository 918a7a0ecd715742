"""Profiles: one named set of networks and sizes, and the function that builds them.

`ffhq1024` and `ffhq512` are the paper's networks at full size (official weights from the model store, or
seeded weights of the same architecture for benchmarks); `tiny` is the embedded default, the same architectures
at small width and resolution with seeded weights, so the whole method runs on a laptop CPU with no download.
`tiny`'s output is not a face.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from anon_core.errors import FalcoError
from anon_core.inversion import Inverter, OptimizationInverter
from anon_core.networks.arcface import ArcFaceEncoder, IRSEConfig
from anon_core.networks.e4e import TINY_E4E, E4EConfig
from anon_core.networks.farl import FaRLEncoder, ViTConfig
from anon_core.networks.stylegan2 import Generator, StyleGAN2Config
from anon_core.params import InversionParams

WEIGHT_SOURCES = ("official", "seeded")


@dataclass(frozen=True)
class ProfileSpec:
    name: str
    generator: StyleGAN2Config
    farl: ViTConfig
    identity: IRSEConfig
    default_weights: str  # "official" (model store) or "seeded"
    e4e: E4EConfig | None = None  # e4e sizes (the official encoder exists for FFHQ 1024; tiny has sizes only)
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
            note="StyleGAN2 config-f FFHQ 1024 px, e4e, FaRL ViT-B/16, ArcFace IR-SE50 (the paper's setting)",
        ),
        ProfileSpec(
            name="ffhq512",
            generator=StyleGAN2Config(resolution=512),
            farl=ViTConfig(),
            identity=IRSEConfig(),
            default_weights="official",
            e4e=E4EConfig(),
            note="StyleGAN2 config-f FFHQ 512 px (GenForce), e4e, FaRL ViT-B/16, ArcFace IR-SE50",
        ),
        ProfileSpec(
            name="tiny",
            generator=StyleGAN2Config(resolution=64, z_dim=128, w_dim=128, mapping_layers=4, channel_max=16),
            farl=ViTConfig(input_resolution=64, patch_size=8, width=128, layers=4, heads=4, output_dim=128),
            identity=IRSEConfig(
                stage_channels=(16, 32, 64, 128), stage_blocks=(1, 1, 1, 1), embedding_dim=128, input_size=64
            ),
            default_weights="seeded",
            e4e=TINY_E4E,
            note="seeded small networks for CPU demos and tests; its images are not faces",
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
    identity: ArcFaceEncoder
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
    and then moved); "official" loads the checkpoints from the model store. Default: the profile's own.
    """
    spec = profile if isinstance(profile, ProfileSpec) else get_profile(profile)
    weights = weights or spec.default_weights
    if weights not in WEIGHT_SOURCES:
        raise FalcoError(f"weights = {weights!r} must be one of {WEIGHT_SOURCES}")
    if weights == "official":
        from anon_core import model_store
        from anon_core.checkpoints import load_official_networks

        names = {"generator": f"stylegan2_{spec.name}", "e4e": "e4e_ffhq_encode", "farl": "farl_ep64",
                 "arcface": "arcface_ir_se50"}
        found = model_store.require(names.values())  # one error listing every missing file and its fetch command
        loaded = load_official_networks(spec, {role: found[n] for role, n in names.items()}, device)
        return Networks(profile=spec, generator=loaded.generator, farl=loaded.farl, identity=loaded.identity,
                        device=torch.device(device), weights=weights, extra={"e4e": loaded.inverter})
    seed = spec.weight_seed
    generator = _seeded(lambda: Generator(spec.generator), seed)
    generator.compute_w_avg_(seed=seed)
    farl = _seeded(lambda: FaRLEncoder(spec.farl), seed + 1)
    identity = _seeded(lambda: ArcFaceEncoder(spec.identity), seed + 2)
    device = torch.device(device)
    for net in (generator, farl, identity):
        net.to(device).eval().requires_grad_(False)
    return Networks(profile=spec, generator=generator, farl=farl, identity=identity, device=device, weights=weights)
