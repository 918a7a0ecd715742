"""Stored values put back from elsewhere (`dvc checkout`, `dvc exp apply`, a copy): recorded by Dagster again.

Each stored value names the run that wrote it (io_manager: `.<stem>.run`). Where that is not the run of its asset
partition's latest materialization, the files are not what the instance records, and the driver makes the value
again (UNRECORDED). DVC puts back an experiment's outputs from its cache, files and run names alike: then the
writer is an earlier materialization of the same partition that this instance recorded, and the files are exactly
what it made. That materialization is reported again (a runless event with its data version, code version, input
versions and metadata, tagged with its run), with its checks' evaluations, so that Dagster's lineage and staleness
follow the files: nothing the files hold is made again, and what differs from the settings now observed is stale.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from orchestration.io_manager import RESTORED_TAG, latest_materialization, recorded_run, writer_of

LOOKBACK = 1000  # earlier materializations of one partition searched for the writer (each sweep adds one)
_ENDED = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}


def record_restored_values(instance: dg.DagsterInstance, graph, root: str) -> list[str]:
    """Report again the materialization (and its checks' evaluations) of every stored value whose writer is an
    earlier materialization of its partition than the latest; return "<asset> [<partition>]" for each."""
    restored = []
    for key, partitions_def, partition in _stored_values(instance, graph):
        writer = writer_of(root, key, partitions_def, partition)
        latest = latest_materialization(instance, key, partition) if writer else None
        if latest is None or recorded_run(latest) == writer:
            continue
        earlier = next((r for r in instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
            limit=LOOKBACK).records if recorded_run(r) == writer), None)
        if earlier is None:  # a run stopped before Dagster recorded it: made again, as before
            continue
        made = earlier.asset_materialization
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=key, partition=partition, description=made.description, metadata=made.metadata,
            tags={**(made.tags or {}), RESTORED_TAG: writer}))
        for check in graph.get_check_keys_for_assets({key}):
            evaluation = _evaluation_of(instance, check, partition, writer)
            if evaluation is not None:
                instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                    asset_key=key, check_name=check.name, passed=evaluation.passed, metadata=evaluation.metadata,
                    severity=evaluation.severity, description=evaluation.description, blocking=evaluation.blocking,
                    partition=partition))
        restored.append(f"{key.to_user_string()}{f' [{partition}]' if partition else ''}")
    return restored


def _stored_values(instance: dg.DagsterInstance, graph) -> Iterator[tuple[dg.AssetKey, object, str | None]]:
    """(asset, its partitions definition, partition or None) of every partition the instance knows."""
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        partitions_def = graph.get(key).partitions_def
        if partitions_def is None:
            yield key, None, None
            continue
        for partition in partitions_def.get_partition_keys(dynamic_partitions_store=instance):
            yield key, partitions_def, partition


def _evaluation_of(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str | None, run_id: str):
    """The evaluation `check` gave in run `run_id` (or in the run a restored evaluation names) for `partition`."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check, limit=LOOKBACK, partition_filter=PartitionKeyFilter(key=partition) if partition else None)
    for record in history:
        if record.status in _ENDED and record.event is not None and record.run_id == run_id:
            return record.event.dagster_event.event_specific_data
    return None
