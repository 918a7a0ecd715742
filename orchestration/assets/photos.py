"""Group `photos`: photo mode in the graph. The input folder's photos in shards, then per (shard, variant) every face
of every photo anonymized in place (anon_core.photos, as `falco anonymize --mode photo` does), with the shared fake
pool and its features."""

from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from orchestration.assets.settings import reuses_rows
from orchestration.celery_queue import GPU_STEP as GPU
from orchestration.io_manager import claim, stored_files
from orchestration.metadata import png_markdown, table
from orchestration.partitions import (BY_VARIANT, context_shard, context_variant, photo_shards, register_partitions,
                                      shard_key, variant_photo_shards)
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import MlflowResource

GROUP = "photos"


def photo_folder(storage: StorageResource, variant: str, shard: str) -> Path:
    """Where one (shard, variant) partition writes its photos, manifest and codes."""
    return storage.asset_dir("anonymized_photos", variant) / shard


@dg.asset(group_name=GROUP, code_version="1", deps=["input_images", "ingest_settings"])  # shard_size
def input_photos(context: dg.AssetExecutionContext, storage: StorageResource, networks: NetworksResource,
                 mlflow: MlflowResource) -> pd.DataFrame:
    """Every file of the input folder as a photo (relative path, sha256, why it will not be read), in shards of
    `pipeline.shard_size` photos; registers the shards (`photo_shards`). Nothing is decoded here."""
    from anon_core.data.datasets import load_dataset
    from anon_core.hashing import prune_by_digest
    from anon_core.ingest import dataset_files
    from anon_core.photo_detections import DETECTION_CACHE

    size = networks.shard_size()
    with mlflow.asset_run(context, networks, {"shard_size": size}) as run:
        files = dataset_files(load_dataset("folder", Path(storage.input_dir), None))
        frame = pd.DataFrame({"input": [f.relpath for f in files], "sha256": [f.sha256 or "" for f in files],
                              "skip_reason": [f.skip_reason or "" for f in files],
                              "shard": [shard_key(i // size) for i in range(len(files))]})
        register_partitions(context.instance, photo_shards, sorted(set(frame["shard"])), delete_others=True)
        # the faces found in photos since removed from the input go (kept for the others, shared by every variant)
        prune_by_digest(Path(storage.root) / DETECTION_CACHE, set(frame["sha256"]) - {""})
        run.log_metrics({"num_files": len(frame)})
    context.add_output_metadata({**run.metadata, "input_dir": dg.MetadataValue.path(storage.input_dir),
                                 "num_files": len(frame), "num_shards": int(frame["shard"].nunique()),
                                 "shard_size": size})
    return frame


# code_version 2: faces cut by the photo's edge are covered, toned black-and-white photos get toned faces
@dg.asset(group_name=GROUP, code_version="2", partitions_def=variant_photo_shards, op_tags=GPU,
          deps=[dg.AssetDep("variant_settings", partition_mapping=BY_VARIANT), "photo_settings"])
def anonymized_photos(
    context: dg.AssetExecutionContext, input_photos: pd.DataFrame, fake_pool: Mapping, fake_features: np.ndarray,
    storage: StorageResource, networks: NetworksResource, mlflow: MlflowResource,
) -> pd.DataFrame:
    """One shard's photos with every face anonymized (or covered, with the reason) under one variant's settings:
    `anonymized_photos/<variant>/<shard>/images/`, beside its `manifest.csv` (a row per photo and per face),
    `latents.npy` and `losses.csv`. The value is that manifest."""
    import time

    from anon_core.acceleration import resolved_for
    from anon_core.fake_pool import FakePool
    from anon_core.folders import RUN_RECORD
    from anon_core.photo_detections import DETECTION_CACHE
    from anon_core.photos import anonymize_photos, read_photo_manifest
    from evaluation.figures import grid_png

    variant, shard = context_variant(context), context_shard(context)
    photos = input_photos[input_photos["shard"] == shard]
    requested, settings = networks.params(variant), networks.photo()
    with mlflow.asset_run(context, networks, requested) as run:
        nets = networks.networks()
        params = resolved_for(nets, requested)
        run.log_resolved(requested, params)
        out = photo_folder(storage, variant, shard)
        context.log.info(f"{variant} {shard}: {len(photos)} photos, {params.optimization.steps} steps, "
                         f"m = {params.optimization.margin}, on {nets.device}")
        pool = FakePool(seeds=np.asarray(fake_pool["seeds"]), w=np.asarray(fake_pool["w"]),
                        features=np.asarray(fake_features))
        claim(context, storage.root)  # the shard's folder is rewritten from here on
        start = time.perf_counter()
        # a face whose photo moved here from another shard (photos added or removed before it) is taken by its key
        # from that shard's journal, whose earlier batches stay until every shard of the variant is made
        others = [d for d in storage.asset_dir("anonymized_photos").glob("*/*") if d.is_dir() and d != out]
        summary = anonymize_photos(Path(storage.input_dir), out, params, settings, nets=nets, pool=pool,
                                   relpaths=photos["input"].tolist(), other_runs=others,
                                   show_progress=lambda line: context.log.info(f"{variant} {shard}: {line}"),
                                   keep_earlier_batches=True, reuse=reuses_rows(context),
                                   detection_cache=Path(storage.root) / DETECTION_CACHE)
        seconds = time.perf_counter() - start
        context.log.info(f"{variant} {shard}: {summary.describe()}")  # with the faces taken from journals
        manifest = read_photo_manifest(out)
        written = manifest.loc[manifest["kind"] == "photo", "output"]
        stored_files(context, storage.root, [*(out / name for name in ("manifest.csv", *RUN_RECORD)),
                                             *(out / "images" / name for name in written if name)])
        faces = manifest[manifest["kind"] == "face"]
        figures = {"num_photos": summary.photos, "num_faces": summary.faces, "faces_anonymized": summary.anonymized,
                   "faces_covered": sum(summary.covered.values()), "photos_rejected": sum(summary.rejected.values()),
                   "faces_per_second": summary.faces / seconds if seconds else 0.0,
                   "faces_from_journal": summary.resumed + summary.reused,  # finished by an earlier run: not optimized
                   "photos_found_earlier": summary.found_earlier}  # their faces from the detection cache: not searched
        reasons = faces[faces["status"] == "covered"].groupby("reason").size().reset_index(name="faces")
        run.log_metrics(figures)
        run.log_table(reasons, "covered_faces.csv")
    preview = _preview(out, manifest)
    context.add_output_metadata({
        **run.metadata, "variant": variant, "folder": dg.MetadataValue.path(str(out)), **figures,
        "covered": table(reasons), "summary": summary.describe(),
        **({"preview": png_markdown(grid_png([preview], cell=160), "anonymized photos")} if preview is not None else {}),
    })
    return manifest


def _preview(out: Path, manifest: pd.DataFrame, count: int = 4, side: int = 160) -> np.ndarray | None:
    """Up to `count` written photos with faces, letterboxed into `side` px squares: uint8 [n, side, side, 3]."""
    from PIL import Image

    names = manifest[(manifest["kind"] == "photo") & (manifest["status"] == "ok") & (manifest["faces"] != "0")]
    tiles = []
    for name in names["output"].head(count):
        with Image.open(out / "images" / name) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            tile = Image.new("RGB", (side, side), (255, 255, 255))
            tile.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
            tiles.append(np.asarray(tile))
    return np.stack(tiles) if tiles else None
