"""Shards of real images: the anonymization assets are partitioned by them, so a backfill or a resumed run
redoes only the shards that are missing. `real_images` registers the shards of the current dataset."""

import dagster as dg

image_shards = dg.DynamicPartitionsDefinition(name="image_shards")


def shard_key(index: int) -> str:
    return f"shard-{index:05d}"
