"""Materialize the whole graph in-process through Dagster, resuming where a previous run stopped.

`falco pipeline` (and `make demo`) call `run_pipeline`. It records into the Dagster instance at `$DAGSTER_HOME`
(the one `make ui` shows), in three kinds of runs: one `prepare` run (fake pool, real data, pairs), one run per
image shard (latents, images and their checks), and one `evaluate` run. Every run is tagged with a fingerprint
of what determines the results (profile, device, resolved parameters, the input files' hashes, the assets' code
versions); a step whose latest materialization carries the current fingerprint is skipped, so a run killed in
the middle resumes without redoing finished shards, and a change of data or parameters redoes everything.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from orchestration.jobs import ANONYMIZE, EVALUATE, PREPARE
from orchestration.partitions import image_shards
from orchestration.resources import PROJECT_ROOT, NetworksResource, StorageResource

FINGERPRINT_TAG = "falco/fingerprint"
DEFAULT_DAGSTER_HOME = PROJECT_ROOT / ".dagster_home"


@dataclass
class PipelineSummary:
    fingerprint: str
    ran: list[str] = field(default_factory=list)  # "prepare", shard keys, "evaluate"
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def dagster_instance() -> dg.DagsterInstance:
    """The persistent instance at $DAGSTER_HOME (default: <project>/.dagster_home), created if needed."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(DEFAULT_DAGSTER_HOME)))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.get()


def fingerprint(storage: StorageResource, networks: NetworksResource, assets: list, run_config: dict | None) -> str:
    from anon_core.data.scan import scan_folder

    files = [(f.relpath, f.sha256) for f in scan_folder(Path(storage.input_dir))]
    code_versions = {
        key.to_user_string(): version
        for a in assets
        for key, version in a.code_versions_by_key.items()
    }
    record = {
        "profile": networks.profile,
        "device": networks.device,
        "weights": networks.weights,
        "params": networks.params().to_dict(),
        "files": files,
        "code_versions": code_versions,
        "run_config": run_config or {},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _latest_tag(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> str | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        return None
    run = instance.get_run_by_id(records[0].run_id)
    return run.tags.get(FINGERPRINT_TAG) if run else None


def run_pipeline(
    storage: StorageResource,
    networks: NetworksResource,
    instance: dg.DagsterInstance | None = None,
    fresh: bool = False,
    run_config: dict | None = None,
    log_level: str = "INFO",
    log=print,
    mlflow=None,
) -> PipelineSummary:
    """mlflow: an orchestration.tracking.MlflowResource; None: the default (see build_definitions)."""
    from orchestration.definitions import build_definitions

    defs = build_definitions(storage, networks, mlflow)
    assets = list(defs.assets)
    checks = list(defs.asset_checks)
    instance = instance or dagster_instance()
    summary = PipelineSummary(fingerprint=fingerprint(storage, networks, assets, run_config))
    tags = {FINGERPRINT_TAG: summary.fingerprint}
    resources = defs.resources
    resources["mlflow"].ensure_experiment()  # once, before parallel steps would race to create it

    graph = defs.resolve_asset_graph()

    def materialize(name: str, selection: dg.AssetSelection, partition: str | None = None) -> bool:
        selected = {key.to_user_string() for key in selection.resolve(graph)}
        ops = {op: cfg for op, cfg in (run_config or {}).get("ops", {}).items() if op in selected}
        result = dg.materialize(
            [*assets, *checks],
            selection=selection,
            partition_key=partition,
            instance=instance,
            resources=resources,
            run_config={"ops": ops, "loggers": {"console": {"config": {"log_level": log_level}}}},
            tags=tags,
            raise_on_error=False,
        )
        (summary.ran if result.success else summary.failed).append(name)
        log(f"{name}: {'done' if result.success else 'FAILED'} (run {result.run_id})")
        return result.success

    upstream = ["fake_pool", "fake_features", "real_images", "real_features", "real_inversions", "pairs"]
    if not fresh and all(_latest_tag(instance, k) == summary.fingerprint for k in upstream):
        summary.skipped.append("prepare")
        log("prepare: up to date, skipped")
    elif not materialize("prepare", PREPARE):
        return summary

    for shard in instance.get_dynamic_partitions(image_shards.name):
        if not fresh and _latest_tag(instance, "anonymized_images", shard) == summary.fingerprint:
            summary.skipped.append(shard)
            continue
        materialize(shard, ANONYMIZE, partition=shard)
    if summary.skipped and summary.skipped != ["prepare"]:
        log(f"{len([s for s in summary.skipped if s != 'prepare'])} shard(s) up to date, skipped")

    if summary.failed:
        log("evaluation not run: a shard failed (see the runs above in the Dagster UI)")
        return summary
    if EVALUATE.resolve(graph):
        materialize("evaluate", EVALUATE)
    return summary
