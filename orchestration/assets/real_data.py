"""Group `real_data`: the real images (ingested and validated, rejects kept as rows), their FaRL features and their
W+ inversions, shared by every variant."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np

from anon_core.artifacts import ImageSet, KeyedArray
from orchestration.assets.settings import inversion_settings, reuse_context, reuses_rows
from orchestration.celery_queue import GPU_STEP as GPU
from orchestration.io_manager import REAL_FACES, keyed_array
from orchestration.metadata import table
from orchestration.partitions import image_shards, register_partitions, shard_key
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import MlflowResource

GROUP = "real_data"


# The face detector of the alignment runs on the GPU. Its priority puts it before the fake pool, which checks the
# pool's size against it before replacing the stored one.
@dg.asset(group_name=GROUP, code_version="3", deps=["input_images", "ingest_settings"], metadata={REAL_FACES: True},
          op_tags={**GPU, "dagster/priority": "1"})
def real_images(context: dg.AssetExecutionContext, storage: StorageResource, networks: NetworksResource,
                mlflow: MlflowResource) -> Iterator[dg.Output[ImageSet]]:
    """Every file of the dataset (`anon_core.ingest`, as `falco anonymize` reads it): its face FFHQ-aligned (or as
    it is) at the generator's resolution (crops cached privately in `<storage>/.align_cache`), and one row per file with its status (`ok`/`rejected`), reason, output
    name, shard, labels and `key` (`anon_core.reuse`: its input's sha256 and how it was read; a crop stored under
    its key is not written again). Registers the shards: `pipeline.shard_size` ok images each."""
    from anon_core.ingest import CACHE_FOLDER, ingest, io_workers
    from anon_core.reuse import KEY, input_ids, row_keys

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 10) == 0:
            context.log.info(f"read {done}/{total} files")

    shard_size = networks.shard_size()
    with mlflow.asset_run(context, networks, {"data": networks.data(), "shard_size": shard_size}) as run:
        nets = networks.networks()
        ingested = ingest(Path(storage.input_dir), nets.generator.config.resolution, **networks.data(),
                          cache_dir=Path(storage.root) / CACHE_FOLDER, device=nets.device, on_file=progress)
        frame, ok = ingested.table.assign(shard=""), ingested.table["status"] == "ok"
        if not ok.any():
            from anon_core.errors import FalcoError

            reasons = ", ".join(f"{r}: {n}" for r, n in frame["reason"].value_counts().items())
            raise FalcoError(f"no usable image in {storage.input_dir}: its {len(frame)} file(s) were all rejected "
                             f"({reasons}); point --input at a folder of face images")
        people = check_pairing_fits(networks, frame[ok])  # now, not after the pool and the inversions are made
        frame.loc[ok, "shard"] = [shard_key(i // shard_size) for i in range(int(ok.sum()))]
        # what decided each crop: a crop already stored under its key is neither read nor written again
        frame[KEY] = ""
        frame.loc[ok, KEY] = row_keys(reuse_context(context, networks, storage), input_ids(frame.loc[ok, "sha256"]))
        register_partitions(context.instance, image_shards, sorted(set(frame.loc[ok, "shard"])), delete_others=True)
        counts = frame.groupby(["status", "reason"]).size().reset_index(name="files")
        run.log_metrics({"num_files": len(frame), "num_ok": int(ok.sum()), "num_rejected": int((~ok).sum())})
        run.log_table(counts, "counts.csv")  # reasons only: file names stay in the storage
        # Yielded inside the MLflow run, which ends once the IO manager has stored the images (anonymized_images)
        yield dg.Output(ImageSet(table=frame, images=ingested.images(workers=io_workers(nets.device))), metadata={
            **run.metadata, "input_dir": dg.MetadataValue.path(storage.input_dir), "dataset": ingested.dataset,
            "alignment": ingested.alignment or "none", "labels": ", ".join(ingested.labels) or "none",
            "num_files": len(frame), "num_ok": int(ok.sum()), "num_rejected": int((~ok).sum()),
            "num_people": people,  # what identity pairing gives a fake each (fake_pool checks its size against it)
            "num_shards": int(frame.loc[ok, "shard"].nunique()), "shard_size": shard_size, "counts": table(counts),
            "rejects": table(frame.loc[~ok, ["input", "reason", "detail"]])})


def check_pairing_fits(networks: NetworksResource, ok) -> int:
    """FalcoError when the pairing cannot be made for these ok images (`pairs` checks again, for a pairing changed
    later): identity pairing without any identity label, or a unique/identity pairing with fewer fakes than
    images/people. Returns the number of people (each unlabelled image its own)."""
    from anon_core.assignment import check_identities, check_pool_size, count_people

    params = networks.params()
    identity = ok["identity"].to_numpy() if "identity" in ok.columns else None
    check_identities(params.pairing, identity, networks.data()["labels_csv"])
    people = count_people(identity, len(ok))
    check_pool_size(params.pairing, params.pool_size, len(ok), people)
    return people


@dg.asset(group_name=GROUP, code_version="2", op_tags=GPU,
          metadata={REAL_FACES: True})  # FaRL embeddings of real faces: stored readable by their owner only
def real_features(context: dg.AssetExecutionContext, real_images: ImageSet, networks: NetworksResource,
                  mlflow: MlflowResource) -> np.ndarray:
    """FaRL embeddings of the ok real images, L2-normalized: [N_ok, D], in real_images order."""
    from anon_core.stages import embed_images

    with mlflow.asset_run(context, networks) as run:
        features = embed_images(networks.networks(), real_images.images)
        run.log_metrics({"num_images": len(features)})
    context.add_output_metadata({**run.metadata, "shape": str(features.shape)})
    return features


@dg.asset(group_name=GROUP, code_version="2", deps=["inversion_settings"], op_tags=GPU,
          metadata={REAL_FACES: True})  # the generator redraws the real faces from these codes
def real_inversions(context: dg.AssetExecutionContext, real_images: ImageSet, storage: StorageResource,
                    networks: NetworksResource, mlflow: MlflowResource) -> KeyedArray:
    """W+ codes of the ok real images: [N_ok, num_ws, w_dim] (e4e, or the optimization inverter for `tiny`). An image
    that the stored value inverted under the same settings (the same input bytes, alignment, inversion and weights)
    keeps its codes, so new data inverts only the images it adds."""
    from anon_core.data.image_files import take
    from anon_core.reuse import StoredRows, input_ids, merge_rows, row_keys
    from anon_core.stages import invert_images

    params = networks.params()
    keys = row_keys(reuse_context(context, networks, storage, inversion=inversion_settings(networks, storage)),
                    input_ids(real_images.named["sha256"]))
    stored = keyed_array(context.instance, storage.root, context.asset_key, "ws") if reuses_rows(context) else None
    found, reused = StoredRows([stored] if stored is not None else []).take(keys, {"ws": 0})
    todo = np.flatnonzero(~found)
    with mlflow.asset_run(context, networks, {"inversion": params.to_dict()["inversion"]}) as run:
        context.log.info(f"{len(todo)} of {len(keys)} images to invert; the others' codes are stored already")
        computed = {"ws": invert_images(networks.networks(), params, take(real_images.images, todo),
                                        show_progress=context.log.info)} \
            if len(todo) or not found.any() else {}
        ws = merge_rows(found, reused, computed, {"ws": 0})["ws"]
        run.log_metrics({"num_images": len(ws), "num_inverted": len(todo), "num_reused": int(found.sum())})
    context.add_output_metadata({**run.metadata, "shape": str(ws.shape), "method": params.inversion.method,
                                 "num_inverted": len(todo), "num_reused": int(found.sum())})
    return KeyedArray(ws, keys)
