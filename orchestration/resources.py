"""Dagster resources: where things are stored, and the profile (networks, parameters) on one device.

Both are plain config, so a run's resources are rebuilt anywhere from a few strings: the UI builds them from the
environment (FALCO_STORAGE, FALCO_INPUT, FALCO_PROFILE, FALCO_DEVICE, FALCO_PARAMS), `falco pipeline` from its
flags (orchestration.driver).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = PROJECT_ROOT / "outputs" / "pipeline"
DEFAULT_INPUT = PROJECT_ROOT / "data" / "sample" / "images"


def asset_dir(root: Path | str, asset: str, variant: str | None = None) -> Path:
    """The folder of an asset's stored values: `<root>/<asset>`, and `<root>/<asset>/<variant>` for a variant's
    partitions. The IO manager, the assets that write files and the CLI all name paths through this."""
    return Path(root) / asset / variant if variant else Path(root) / asset


class StorageResource(dg.ConfigurableResource):
    """Roots of the pipeline's files. `root` holds every asset's values (the IO manager writes there)."""

    root: str = str(DEFAULT_STORAGE)
    input_dir: str = str(DEFAULT_INPUT)  # the real images to anonymize

    def asset_dir(self, asset: str, variant: str | None = None) -> Path:
        return asset_dir(self.root, asset, variant)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from orchestration.launch_settings import check_launch_settings

        check_launch_settings(context, "storage", self)


class NetworksResource(dg.ConfigurableResource):
    """The profile: which networks, on which device, with which parameter file and overrides of it.

    `overrides` are dotted keys set on the command line (`{"pool_size": 40, "pipeline.shard_size": 3}`): the method's
    keys apply to the parameters, `<section>.<key>` to a section of the file. The networks are built once per process
    (lazily, so Dagster can load definitions without torch).
    """

    profile: str = "tiny"
    device: str = "cpu"
    weights: str | None = None  # "seeded" or "official"; None: the profile's own
    params_path: str | None = None  # None: the project's params.yaml
    overrides: dict[str, Any] = {}
    # Who set each override and the device, as the user named it ({"pipeline.shard_size": "--shard-size", "device":
    # "FALCO_DEVICE"}): an error about one of them names it, not the params file.
    sources: dict[str, str] = {}
    sweep_variants: list[str] = []  # the variants to run and compare; empty: params.yaml's `sweep:`

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from orchestration.launch_settings import check_launch_settings

        check_launch_settings(context, "networks", self)

    @property
    def params_file(self) -> Path:
        from anon_core.params import DEFAULT_PARAMS_PATH

        return Path(self.params_path) if self.params_path else DEFAULT_PARAMS_PATH

    def params(self, variant: str | None = None):
        """The resolved parameters (anon_core.params.FalcoParams), with `variant`'s optimization overrides."""
        from anon_core.params import load_params, split_overrides

        method, _ = split_overrides(self.overrides)
        sources = dict(self.sources)
        if variant is not None:
            from_variant = self.variant_overrides(variant)
            method |= from_variant
            if variant in self.section("variants"):  # a named one: an error names it and its file
                sources |= {key: f"{self.params_file}: variants: {variant}: {key.rsplit('.', 1)[-1]}"
                            for key in from_variant}
            else:  # a name made of values: the command line's flags (--margin, --steps, ...), else the file's `sweep:`
                sources |= {key: f"--{key.rsplit('.', 1)[-1].replace('_', '-')}" if self.sweep_variants
                            else f"{self.params_file}: sweep: {key.rsplit('.', 1)[-1]}" for key in from_variant}
        return load_params(self.profile, self.params_path, sources=sources, **method)

    def section(self, name: str) -> dict[str, Any]:
        """A section of the params file other than the method's (`data`, `pipeline`, `checks`, ...), with this
        profile's entry and the overrides applied."""
        from anon_core.params import load_section, split_overrides

        _, sections = split_overrides(self.overrides)
        return load_section(name, self.profile, self.params_path, sections)

    def variant_overrides(self, name: str) -> dict[str, Any]:
        from anon_core.variants import variant_overrides

        return variant_overrides(name, self.section("variants"), str(self.params_file))

    def sweep(self) -> list[str]:
        """The variants to run and compare: `sweep_variants` (the command line's), else the `sweep:` section's."""
        from anon_core.variants import canonical_name, sweep_variants

        from anon_core.errors import ParamsError

        if self.sweep_variants:
            return list(dict.fromkeys(canonical_name(v) for v in self.sweep_variants))
        try:
            return sweep_variants(self.section("sweep"))
        except ParamsError as err:  # the file's `sweep:` section, named as its other sections' errors name it
            raise ParamsError(f"{self.params_file}: {err}") from None

    def setting(self, section: str, key: str) -> Any:
        """One required key of a section; ParamsError naming the file when it is missing."""
        from anon_core.errors import ParamsError

        values = self.section(section)
        if key not in values:
            raise ParamsError(f"{self.params_file}: {section}.{key} is missing; add it (see the project's params.yaml)")
        return values[key]

    def flag(self, section: str, key: str) -> bool:
        """One required true/false key of a section; ParamsError naming the file for anything else (a misspelt
        `flase` is not true)."""
        from anon_core.params import coerce_value

        return coerce_value(self.setting(section, key), "bool", f"{self.params_file}: {section}.{key}")

    def privacy_bound(self) -> float:
        """checks.privacy_max_match_share, checked (anon_core.params.privacy_bound)."""
        from anon_core.params import privacy_bound

        with self._naming_sources():
            return privacy_bound(self.section("checks"), self.params_file)

    def data(self) -> dict[str, Any]:
        """How to read the dataset: the `data:` section, checked (keyword arguments of anon_core.ingest.ingest)."""
        from anon_core.ingest import data_settings

        with self._naming_sources():
            return data_settings(self.section("data"), self.params_file)

    def photo(self):
        """Photo mode's settings: the `photo:` section, checked (anon_core.photo_faces.PhotoSettings)."""
        from anon_core.photo_faces import photo_settings

        with self._naming_sources():
            return photo_settings(self.section("photo"), self.params_file)

    def pipeline(self) -> dict[str, Any]:
        """The `pipeline:` section (shard_size, executor, max_concurrent), checked (anon_core.params.pipeline_settings);
        an error names the flag or variable that set a bad value ($FALCO_EXECUTOR, --shard-size)."""
        from anon_core.params import pipeline_settings

        with self._naming_sources():
            return pipeline_settings(self.section("pipeline"), self.params_file)

    def shard_size(self) -> int:
        return self.pipeline()["shard_size"]

    def networks(self):
        return _build_networks(self.profile, self.device, self.weights)

    def _naming_sources(self):
        """Errors of the checks inside name the flag (or variable) that set a bad value, else the params file."""
        from anon_core.params import naming_sources

        return naming_sources(self.params_file, self.overrides, self.sources)

    def check_device(self) -> None:
        """FalcoError, before any run starts, when `device` is not one falco runs on, or one this machine lacks; with
        the celery executor other machines run the networks, so there only its form is checked."""
        from anon_core.stages import parse_device, resolve_device

        check = parse_device if self.pipeline()["executor"] == "celery" else resolve_device
        check(self.device, self.sources.get("device", "networks.device"))


@lru_cache(maxsize=2)
def _build_networks(profile: str, device: str, weights: str | None):
    import logging

    from anon_core.profiles import build_networks
    from anon_core.stages import resolve_device

    nets = build_networks(profile, device=resolve_device(device), weights=weights)
    # A `falco worker`'s log shows this once per process: later steps reuse the networks.
    logging.getLogger("falco").info("networks of profile %s built on %s in process %d", profile, nets.device,
                                    os.getpid())
    return nets


def _env_path(name: str) -> str | None:
    """A path variable as an absolute path (a relative one is of the folder the process started in, which a run's
    other processes need not share), or None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    return os.path.abspath(os.path.expanduser(value)) if value else None


def storage_from_env() -> StorageResource:
    return StorageResource(root=_env_path("FALCO_STORAGE") or str(DEFAULT_STORAGE),
                           input_dir=_env_path("FALCO_INPUT") or str(DEFAULT_INPUT))


def networks_from_env() -> NetworksResource:
    executor = os.environ.get("FALCO_EXECUTOR")  # the UI's runs on the cluster's workers: celery
    return NetworksResource(
        profile=os.environ.get("FALCO_PROFILE", "tiny"),
        device=os.environ.get("FALCO_DEVICE", "cpu"),
        params_path=_env_path("FALCO_PARAMS"),
        overrides={"pipeline.executor": executor} if executor else {},
        sources={**({"device": "FALCO_DEVICE"} if "FALCO_DEVICE" in os.environ else {}),
                 **({"pipeline.executor": "FALCO_EXECUTOR"} if executor else {})},
    )
