"""Stored values put back from elsewhere (`dvc checkout`, `dvc exp apply`, a copy): recorded by Dagster again.

Each stored value names the run that wrote it (io_manager: `.<stem>.run`). Where that is not the run of its asset
partition's latest materialization, the files are not what the instance records, and the driver makes the value
again (UNRECORDED). DVC puts back an experiment's outputs from its cache, files and run names alike: then the
writer is an earlier materialization of the same partition that this instance recorded, and the files are exactly
what it made. That materialization is reported again (a runless event with its data version, code version, input
versions and metadata, tagged with its run), so that Dagster's lineage and staleness follow the files: nothing the
files hold is made again, and what differs from the settings now observed is stale. The driver tags its MLflow runs
as put back (`tracking.RESTORED_AT_TAG`), so that they are the current ones there too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import dagster as dg

from orchestration.io_manager import RESTORED_TAG, latest_materialization, recorded_run, writer_of

LOOKBACK = 1000  # earlier materializations (or check evaluations) of one partition searched for the writer's run


class Restored(NamedTuple):
    asset: dg.AssetKey
    partition: str | None
    run_id: str  # the Dagster run that made it

    def __str__(self) -> str:
        return f"{self.asset.to_user_string()}{f' [{self.partition}]' if self.partition else ''}"


def record_restored_values(instance: dg.DagsterInstance, graph, root: str) -> list[Restored]:
    """Report again the materialization of every stored value whose writer is an earlier materialization of its
    partition than the latest; return each. Its checks' evaluations stay those its run made
    (`staleness.latest_check` reads them): Dagster keeps one runless evaluation per check and partition, so a
    second restore of a partition could not report them again."""
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
        restored.append(Restored(key, partition, writer))
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
