"""What needs to run, as Dagster's own versioning says: an asset (partition) is to run when Dagster reports it
MISSING or STALE (its code version changed, or an input's data version did: a settings source, or an upstream
asset re-made with other inputs), and so is everything downstream of it within the same run, since Dagster marks
an asset stale only once its input has actually been re-made.

Dagster computes the statuses with `CachingStaleStatusResolver`, what its UI shows as "Stale" and "Missing"; it is
not part of Dagster's public API, so this module is the one place that touches it (dagster is pinned).
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.loader import LoadingContext
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus


class _Loading(LoadingContext):
    """The request-scoped cache Dagster's resolver reads the instance through."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._instance = instance
        self._loaders = {}

    @property
    def instance(self) -> dg.DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict:
        return self._loaders


def statuses(instance: dg.DagsterInstance, graph, keys: Sequence[dg.AssetKey], partition: str | None = None,
             storage_root: str | None = None) -> dict[dg.AssetKey, str]:
    """Dagster's status of each asset (partition): "FRESH", "STALE" or "MISSING"; with `storage_root`,
    "UNRECORDED" for a fresh one whose stored value is not the one the instance records (io_manager.unrecorded: a
    run stopped between writing it and Dagster recording it), and "INCOMPLETE" for a fresh one whose stored files are
    gone in part or whole (io_manager.missing_files: deleted by hand)."""
    return partition_statuses(instance, graph, keys, [partition], storage_root)[partition]


def partition_statuses(instance: dg.DagsterInstance, graph, keys: Sequence[dg.AssetKey],
                       partitions: Sequence[str | None],
                       storage_root: str | None = None) -> dict[str | None, dict[dg.AssetKey, str]]:
    """`statuses` for several partitions, through one resolver (it caches what the partitions share upstream)."""
    from orchestration.io_manager import stored_state

    resolver = CachingStaleStatusResolver(instance, graph, loading_context=_Loading(instance))

    def status(key: dg.AssetKey, partition: str | None) -> str:
        value = resolver.get_status(key, partition).value
        if value != StaleStatus.FRESH.value or storage_root is None:
            return value
        partitions_def = graph.get(key).partitions_def
        state = stored_state(instance, storage_root, key, partitions_def, partition if partitions_def else None)
        return state or value

    return {partition: {key: status(key, partition) for key in keys} for partition in partitions}


def to_run(instance: dg.DagsterInstance, graph, keys: Sequence[dg.AssetKey], partition: str | None = None,
           fresh: bool = False, storage_root: str | None = None,
           status: dict[dg.AssetKey, str] | None = None) -> list[dg.AssetKey]:
    """The assets among `keys` to materialize for `partition`: the missing, stale and (with `storage_root`)
    unrecorded or incomplete ones (all with `fresh`), and everything among `keys` downstream of them; the outputs of
    one op go together. `status`: `statuses` of `keys` if already at hand."""
    status = status if status is not None else statuses(instance, graph, keys, partition, storage_root)
    chosen = {k for k in keys if fresh or status[k] != StaleStatus.FRESH.value}
    grew = True
    while grew:
        grew = False
        for key in keys:
            node = graph.get(key)  # execution_set_asset_keys: the assets its op makes (a multi-asset's outputs)
            if key not in chosen and (node.parent_keys & chosen or node.execution_set_asset_keys & chosen):
                chosen.add(key)
                grew = True
    return [k for k in keys if k in chosen]


def latest_check(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str) -> dict | None:
    """The outcome of `check` on the latest materialization of its asset's `partition`: {"passed": bool, **its
    metadata values}; None when it has not run on that materialization (in its run, or in a later one)."""
    from orchestration.io_manager import recorded_run
    from orchestration.restored import LOOKBACK

    latest = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=check.asset_key, asset_partitions=[partition]), limit=1).records
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [check], partition_filter=PartitionKeyFilter(key=partition)).get(check)
    if not latest or record is None or record.event is None:
        return None
    if record.run_id != latest[0].run_id and record.create_timestamp < latest[0].timestamp:
        made_by = recorded_run(latest[0])
        if made_by == latest[0].run_id:  # an evaluation of an earlier materialization
            return None
        # a value put back (orchestration.restored): the evaluation its own run made of it
        history = instance.event_log_storage.get_asset_check_execution_history(
            check, limit=LOOKBACK, partition_filter=PartitionKeyFilter(key=partition))
        record = next((r for r in history if r.run_id == made_by and r.event is not None), None)
        if record is None:
            return None
    evaluation = record.event.dagster_event.event_specific_data
    if record.status not in (AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED):
        return None
    return {"passed": record.status == AssetCheckExecutionRecordStatus.SUCCEEDED,
            **{k: getattr(v, "value", v) for k, v in (evaluation.metadata or {}).items()}}
