"""The partitions of the asset graph: image shards (so a backfill or a resumed run redoes only the missing ones) and
variants (named sets of optimization settings, `anon_core.variants`), which coexist side by side.

- `anonymized_latents`, `anonymized_images` and their checks: one partition per (shard, variant), e.g.
  `shard-00003|m0.9` (a Dagster multi-partition key: dimensions in alphabetical order, joined by "|");
- the per-variant evaluation assets: one partition per variant;
- everything upstream (fake pool, real data, pairs) is shared by all variants, so it is not partitioned;
- photo mode's `anonymized_photos`: one partition per (photo shard, variant), its shards registered by
  `input_photos`.

`real_images` registers the shards of the current dataset; the driver (and `falco pipeline`) registers the variants
it runs. A variant added by hand in the UI ("Add partition") must be a name params.yaml defines or one made of
values (m0.7, m0.5_steps20).
"""

from __future__ import annotations

import re
import warnings

import dagster as dg

image_shards = dg.DynamicPartitionsDefinition(name="image_shards")
photo_shards = dg.DynamicPartitionsDefinition(name="photo_shards")  # photo mode: groups of photos (input_photos)
variants = dg.DynamicPartitionsDefinition(name="variants")
variant_shards = dg.MultiPartitionsDefinition({"shard": image_shards, "variant": variants})
variant_photo_shards = dg.MultiPartitionsDefinition({"shard": photo_shards, "variant": variants})
with warnings.catch_warnings():  # a beta API of Dagster 1.13, the documented mapping for this
    warnings.simplefilter("ignore", dg.BetaWarning)
    # From a (shard, variant) partition to its variant, and from a variant to all of its shards.
    BY_VARIANT = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="variant")


SHARD_KEY = re.compile(r"shard-\d{5,}")  # what shard_key makes


def shard_key(index: int) -> str:
    return f"shard-{index:05d}"


def variant_shard_key(variant: str, shard: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"shard": shard, "variant": variant})


def split_key(partition_key: str | None, partitions_def: dg.PartitionsDefinition | None) -> tuple[str | None, str | None]:
    """(variant, shard) of a partition key of an asset partitioned by `partitions_def`; None for what it lacks."""
    if partition_key is None or partitions_def is None:
        return None, None
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        keys = partitions_def.get_partition_key_from_str(str(partition_key)).keys_by_dimension
        return keys["variant"], keys["shard"]
    if partitions_def == variants:
        return str(partition_key), None
    return None, str(partition_key)


PARTITION_TAG = "dagster/partition"  # a run's partition key; "dagster/partition/<dimension>" its parts


def check_run_partition(context: dg.AssetExecutionContext) -> None:
    """FalcoError, before any work, when an unpartitioned asset runs in a run for a partition (a selection of assets
    of both kinds launched for a partition): Dagster's own error ("Attempting to access partitions def for asset
    ..., but it is not partitioned") came at the end of the step's work and named no way out. (The other way round,
    a partitioned step in a run without a partition, Dagster stops while it reads the step's input versions, before
    any of our code runs: "Cannot access partition_key for a non-partitioned run".) Every job of
    orchestration.jobs holds one kind only, so a whole job launches as it is."""
    from dagster._core.errors import DagsterInvalidPropertyError

    from anon_core.errors import FalcoError

    try:
        job, tags = f"the {context.run.job_name} job", context.run.tags
    except DagsterInvalidPropertyError:  # invoked directly (tests)
        job, tags = "the job", None
    names = ", ".join(sorted(k.to_user_string() for k in context.selected_asset_keys))
    partitions_def = context.assets_def.partitions_def
    given = {t[len(PARTITION_TAG) + 1:]: v for t, v in (tags or {}).items() if t.startswith(PARTITION_TAG + "/")}
    if partitions_def is not None and given and PARTITION_TAG not in tags:
        # named by per-dimension tags alone (`dagster job execute --tags`): the step sees its partition, the IO
        # manager's context none, so its value was stored unpartitioned (`all.npz`) and the next step failed on it
        example = "|".join(given[d] for d in sorted(given))  # Dagster's multi-partition key: values by dimension name
        raise FalcoError(f"{names} is partitioned, and this run of {job} names its partition by the per-dimension "
                         f"tags {', '.join(f'{PARTITION_TAG}/{d}' for d in sorted(given))} alone, which Dagster's "
                         f"IO managers do not see (its values would be stored as unpartitioned ones): launch it with "
                         f"the tag {PARTITION_TAG}={example} (`dagster job execute ... --tags "
                         f"'{{\"{PARTITION_TAG}\": \"{example}\"}}'`), or from the UI's partition picker (nothing "
                         "was written)")
    if partitions_def is not None or not context.has_partition_key:
        return
    raise FalcoError(f"{names} is not partitioned, and this run of {job} is for a partition: launch it without "
                     "one, apart from the partitioned assets (the jobs evaluate_references and evaluate_report hold "
                     "the evaluation's unpartitioned assets, evaluate the per-variant ones), or run `falco stage "
                     "evaluate`, which launches them so")


def context_variant(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> str:
    """The variant of the partition being materialized (or checked): a variant key, or a (shard, variant) key."""
    key = context.partition_key
    if isinstance(key, dg.MultiPartitionKey) or "|" in key:  # variant names never hold "|"
        return variant_shards.get_partition_key_from_str(str(key)).keys_by_dimension["variant"]
    return key


def context_shard(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> str:
    """The shard of the (shard, variant) partition being materialized (or checked)."""
    return variant_shards.get_partition_key_from_str(str(context.partition_key)).keys_by_dimension["shard"]


def register_partitions(instance: dg.DagsterInstance, partitions: dg.DynamicPartitionsDefinition,
                        keys: list[str], delete_others: bool = False) -> None:
    """Add the `keys` that are missing (and, with `delete_others`, delete the ones not in `keys`)."""
    existing = set(instance.get_dynamic_partitions(partitions.name))
    if delete_others:
        for stale in sorted(existing - set(keys)):
            instance.delete_dynamic_partition(partitions.name, stale)
    new = [k for k in dict.fromkeys(keys) if k not in existing]
    if new:
        instance.add_dynamic_partitions(partitions.name, new)
