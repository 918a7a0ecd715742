"""Dagster resources: where things are stored, and the networks of one profile on one device."""


import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = PROJECT_ROOT / "outputs" / "pipeline"
DEFAULT_INPUT = PROJECT_ROOT / "data" / "sample" / "images"


class StorageResource(dg.ConfigurableResource):
    """Roots of the pipeline's files. `root` holds every asset's values (the IO manager writes there)."""

    root: str = str(DEFAULT_STORAGE)
    input_dir: str = str(DEFAULT_INPUT)  # the real images to anonymize

    def path(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)


class NetworksResource(dg.ConfigurableResource):
    """The profile: which networks, on which device, with which hyper-parameter file.

    The networks are built once per process (lazily, so Dagster can load definitions without torch).
    """

    profile: str = "tiny"
    device: str = "cpu"
    weights: str | None = None  # "seeded" or "official"; None: the profile's own
    params_path: str | None = None  # None: the project's params.yaml

    def params(self, **overrides: Any):
        from anon_core.params import load_params

        return load_params(self.profile, self.params_path, **overrides)

    def section(self, name: str) -> dict[str, Any]:
        """A top-level section of the params file other than the method's (`checks`, `pipeline`, ...), with this
        profile's entry applied."""
        from anon_core.params import load_section

        return load_section(name, self.profile, self.params_path)

    def networks(self):
        return _build_networks(self.profile, self.device, self.weights)


@lru_cache(maxsize=2)
def _build_networks(profile: str, device: str, weights: str | None):
    from anon_core.pipeline import resolve_device
    from anon_core.profiles import build_networks

    return build_networks(profile, device=resolve_device(device), weights=weights)


def storage_from_env() -> StorageResource:
    return StorageResource(
        root=os.environ.get("FALCO_STORAGE", str(DEFAULT_STORAGE)),
        input_dir=os.environ.get("FALCO_INPUT", str(DEFAULT_INPUT)),
    )


def networks_from_env() -> NetworksResource:
    return NetworksResource(
        profile=os.environ.get("FALCO_PROFILE", "tiny"),
        device=os.environ.get("FALCO_DEVICE", "cpu"),
        params_path=os.environ.get("FALCO_PARAMS") or None,
    )
