"""The one driver of the asset graph: `falco pipeline`, `falco stage` (and so `dvc repro`) and the tests launch the
named jobs of orchestration/jobs.py through the Dagster instance at $DAGSTER_HOME, as the UI does, with the job's
executor (params.yaml `pipeline.executor`); every run shows in the UI as `prepare`, `anonymize` or `evaluate`, tagged
with its variant and shard.

A pipeline run:
1. registers the variants to run (params.yaml `sweep:`, or the command line's) as partitions, checking that each
   resolves to valid settings before anything starts;
2. runs `observe_settings`, so Dagster sees what changed in params.yaml, the flags and the input folder;
3. runs `prepare`, `anonymize` (one run per variant and shard) and `evaluate` (the references, one run per
   variant, the report), each selecting only what Dagster reports missing or stale and what follows from it
   (orchestration.staleness); `fresh` re-makes everything. A killed run therefore resumes where it stopped.

The blocking privacy check fails a shard's run when dlib still matches too many of its images to their sources
(params.yaml `checks:`). Such a variant is still evaluated: a sweep measures variants that keep identity on
purpose (m close to 1), and the evaluation is what shows how much; the summary names it, and its images must not be
released. The check runs again when its bound changes. Any other failure stops what depends on it (that variant's
evaluation and the report), not the other variants.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.jobs import ANONYMIZE, EVALUATION_REFERENCES, PREPARE, REPORT, VARIANT_EVALUATION
from orchestration.partitions import image_shards, register_partitions, variant_shard_key, variants
from orchestration.resources import PROJECT_ROOT, NetworksResource, StorageResource
from orchestration.tracking import MlflowResource

DEFAULT_DAGSTER_HOME = PROJECT_ROOT / ".dagster_home"
STAGES = ("prepare", "anonymize", "evaluate")


@dataclass
class PipelineSummary:
    variants: list[str]
    ran: list[str] = field(default_factory=list)  # "prepare", "anonymize m0.5 shard-00000", "evaluate m0.5", ...
    skipped: list[str] = field(default_factory=list)  # the same, up to date
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # variants not evaluated: one of their shards failed
    privacy_failed: dict[str, list[str]] = field(default_factory=dict)  # variant -> shards that failed the check
    run_ids: list[str] = field(default_factory=list)


def dagster_instance() -> dg.DagsterInstance:
    """The persistent instance at $DAGSTER_HOME (default: <project>/.dagster_home), created if needed."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(DEFAULT_DAGSTER_HOME)))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():  # no telemetry, and no "join the community" pop-up in the UI
        config.write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    return dg.DagsterInstance.get()


def _config(storage: StorageResource, networks: NetworksResource, mlflow: MlflowResource) -> dict[str, Any]:
    """The resources as plain settings: what every process of a run rebuilds them from (definitions.job_for)."""
    return {name: {k: v for k, v in resource.model_dump().items() if v is not None}
            for name, resource in (("storage", storage), ("networks", networks), ("mlflow", mlflow))}


def run_pipeline(
    storage: StorageResource,
    networks: NetworksResource,
    variants_to_run: Sequence[str] | None = None,
    instance: dg.DagsterInstance | None = None,
    fresh: bool = False,
    stages: Sequence[str] = STAGES,
    mlflow: MlflowResource | None = None,
    log: Callable[[str], None] = print,
    log_level: str = "INFO",
) -> PipelineSummary:
    """Run the `stages` of the graph for `variants_to_run` (default: the sweep of params.yaml, or of `networks`'
    `sweep` override), materializing only what is missing or stale. See the module docstring."""
    from orchestration.definitions import build_definitions

    if variants_to_run:  # rebuilt, not model_copy'd: Dagster initializes a resource from its constructor config
        networks = NetworksResource(**{**networks.model_dump(), "sweep_variants": list(variants_to_run)})
    wanted = networks.sweep()
    check_settings(storage, networks, wanted)  # a bad parameter or variant fails here, before any run starts
    mlflow = mlflow or MlflowResource()
    defs = build_definitions(storage, networks, mlflow)
    graph = defs.resolve_asset_graph()
    instance = instance or dagster_instance()
    mlflow.ensure_experiment()  # once, before parallel steps would race to create it
    register_partitions(instance, variants, wanted)
    summary = PipelineSummary(variants=wanted)
    driver = _Driver(instance, graph, _config(storage, networks, mlflow), summary, fresh, log, log_level)

    driver.run("observe_settings", "settings", None, None)
    if "prepare" in stages and not driver.materialize("prepare", "prepare", PREPARE.resolve(graph)):
        return summary
    shards = instance.get_dynamic_partitions(image_shards.name)
    if "anonymize" in stages:
        bound = float(networks.setting("checks", "privacy_max_match_share"))
        for variant in wanted:
            for shard in shards:
                driver.anonymize(variant, shard, bound)
    if "evaluate" in stages:
        driver.evaluate(wanted)
    return summary


def check_settings(storage: StorageResource, networks: NetworksResource, wanted: Sequence[str]) -> None:
    """Read every setting the assets will read (what the settings sources observe), so a bad value in params.yaml,
    the flags or a variant is one ParamsError before anything runs."""
    from orchestration.assets import settings

    for read in settings.SETTINGS_READERS:
        read(networks, storage)
    for name in wanted:
        settings.variant_settings(networks, name)
    bound = networks.setting("checks", "privacy_max_match_share")
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound != bound:
        from anon_core.errors import ParamsError

        raise ParamsError(f"{networks.params_file}: checks.privacy_max_match_share = {bound!r} must be a share of "
                          "images (a number; 0.05 allows 5% of a shard's images to be matched to their source)")


class _Driver:
    def __init__(self, instance, graph, config, summary: PipelineSummary, fresh: bool, log, log_level: str) -> None:
        self.instance, self.graph, self.config, self.summary, self.fresh, self.log = \
            instance, graph, config, summary, fresh, log
        self.run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}

    def run(self, job: str, label: str, selection: list[dg.AssetKey] | None, partition: str | None,
            checks: set[dg.AssetCheckKey] | None = None) -> bool:
        """Execute `job` (for `partition`, limited to `selection`, or to the asset `checks` alone) through the
        instance; record how it went."""
        reconstructable = dg.build_reconstructable_job("orchestration.definitions", "job_for",
                                                       reconstructable_args=(job, self.config))
        if checks:
            reconstructable = reconstructable.get_subset(asset_selection=set(), asset_check_selection=checks)
        tags = {}
        if partition is not None:
            partitions_def = self.graph.get(selection[0] if selection else next(iter(checks)).asset_key).partitions_def
            tags = dict(partitions_def.get_tags_for_partition_key(partition))
        result = dg.execute_job(reconstructable, self.instance, run_config=self.run_config, tags=tags,
                                asset_selection=selection or None)
        self.summary.run_ids.append(result.run_id)
        if job != "observe_settings":
            (self.summary.ran if result.success else self.summary.failed).append(label)
            self.log(f"{label}: {'done' if result.success else 'FAILED'} (Dagster run {result.run_id[:8]})")
        elif not result.success:
            raise RuntimeError(f"observing the settings failed (Dagster run {result.run_id}); see it in the UI")
        return result.success

    def materialize(self, job: str, label: str, keys, partition: str | None = None,
                    checks: set[dg.AssetCheckKey] | None = None) -> bool:
        """Run `job` for what of `keys` is missing or stale (and follows from it), else for the asset `checks` to run
        again; True when that went well."""
        from orchestration.staleness import to_run

        keys = sorted(keys, key=lambda k: k.to_user_string())
        selection = to_run(self.instance, self.graph, keys, partition, self.fresh)
        if not selection and not checks:
            self.summary.skipped.append(label)
            return True
        return self.run(job, label, selection, partition, None if selection else checks)

    def anonymize(self, variant: str, shard: str, bound: float) -> None:
        from orchestration.checks import PRIVACY_CHECK
        from orchestration.staleness import latest_check

        partition = str(variant_shard_key(variant, shard))
        check = dg.AssetCheckKey(dg.AssetKey("anonymized_images"), PRIVACY_CHECK)
        before = latest_check(self.instance, check, partition)
        # Images that are up to date are checked again when the check never ran on them or ran with another bound.
        again = {check} if before is None or before.get("bound") != bound else set()
        label = f"anonymize {variant} {shard}"
        self.materialize("anonymize", label, ANONYMIZE.resolve(self.graph), partition, again)
        outcome = latest_check(self.instance, check, partition)
        if outcome is None:  # the latents or the images were not made
            self.summary.blocked += [variant] if variant not in self.summary.blocked else []
        elif not outcome["passed"]:
            if label in self.summary.failed:  # the run failed on the check alone: it ran, and the pipeline goes on
                self.summary.failed.remove(label)
                self.summary.ran.append(label)
            self.summary.privacy_failed.setdefault(variant, []).append(shard)
            self.log(f"{label}: PRIVACY CHECK FAILED: dlib matches {outcome.get('matched_share', float('nan')):.0%} "
                     f"of its images to their sources (bound {bound:.0%})")

    def evaluate(self, wanted: list[str]) -> None:
        if not self.materialize("evaluate", "evaluate references", EVALUATION_REFERENCES.resolve(self.graph)):
            return
        for variant in wanted:
            if variant not in self.summary.blocked:
                self.materialize("evaluate", f"evaluate {variant}", VARIANT_EVALUATION.resolve(self.graph), variant)
        if self.summary.blocked or self.summary.failed:
            self.log("report not made: it compares every variant of the sweep, and not all were evaluated")
            return
        self.materialize("evaluate", "report", REPORT.resolve(self.graph))
