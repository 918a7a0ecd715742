"""Group `real_data`: the real images (ingested and validated, rejects kept as rows), their FaRL features and
their W+ inversions."""


from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from orchestration.config import RealImagesConfig
from orchestration.io_manager import ImageSet
from orchestration.metadata import table
from orchestration.partitions import image_shards, shard_key
from orchestration.resources import NetworksResource, StorageResource

GROUP = "real_data"


@dg.asset(group_name=GROUP, code_version="1")
def real_images(
    context: dg.AssetExecutionContext, config: RealImagesConfig, storage: StorageResource, networks: NetworksResource
) -> ImageSet:
    """Every file under the input folder: readable images resized to the generator's resolution, and one row per
    file with its status (`ok`/`rejected`), reason, output name and shard. Registers the image shards."""
    from anon_core.data.image_io import ImageRejected
    from anon_core.data.scan import scan_folder
    from anon_core.stages import output_names, read_input, resize_images

    input_dir = Path(config.input_dir or storage.input_dir)
    files = scan_folder(input_dir)
    names = output_names(files)
    rows, images = [], []
    for f in files:
        row = {"input": f.relpath, "image": "", "status": "ok", "reason": "", "detail": "",
               "duplicate_of": f.duplicate_of or "", "sha256": f.sha256 or "", "shard": ""}
        try:
            images.append(read_input(f))
            row["image"] = names[f.relpath]
        except ImageRejected as rejected:
            row.update(status="rejected", reason=rejected.reason, detail=rejected.detail)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["input", "image", "status", "reason", "detail", "duplicate_of", "sha256", "shard"])
    ok = frame.index[frame["status"] == "ok"]
    frame.loc[ok, "shard"] = [shard_key(i // config.shard_size) for i in range(len(ok))]
    _register_shards(context, sorted(set(frame.loc[ok, "shard"])))

    resolution = networks.networks().generator.config.resolution
    counts = frame.groupby(["status", "reason"]).size().reset_index(name="files")
    context.add_output_metadata(
        {
            "input_dir": dg.MetadataValue.path(str(input_dir)),
            "num_files": len(frame),
            "num_ok": len(ok),
            "num_rejected": int((frame["status"] == "rejected").sum()),
            "num_shards": int(frame.loc[ok, "shard"].nunique()),
            "counts": table(counts),
            "rejects": table(frame.loc[frame["status"] == "rejected", ["input", "reason", "detail"]]),
        }
    )
    return ImageSet(table=frame, images=resize_images(images, resolution))


def _register_shards(context: dg.AssetExecutionContext, keys: list[str]) -> None:
    instance = context.instance
    existing = set(instance.get_dynamic_partitions(image_shards.name))
    for stale in sorted(existing - set(keys)):
        instance.delete_dynamic_partition(image_shards.name, stale)
    new = [k for k in keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(image_shards.name, new)


@dg.asset(group_name=GROUP, code_version="1", op_tags={"falco/device": "gpu"})
def real_features(context: dg.AssetExecutionContext, real_images: ImageSet, networks: NetworksResource) -> np.ndarray:
    """FaRL embeddings of the ok real images, L2-normalized: [N_ok, D], in real_images order."""
    from anon_core.stages import embed_images

    features = embed_images(networks.networks(), real_images.images)
    context.add_output_metadata({"shape": str(features.shape)})
    return features


@dg.asset(group_name=GROUP, code_version="1", op_tags={"falco/device": "gpu"})
def real_inversions(context: dg.AssetExecutionContext, real_images: ImageSet, networks: NetworksResource) -> np.ndarray:
    """W+ codes of the ok real images: [N_ok, num_ws, w_dim] (e4e, or the optimization inverter for `tiny`)."""
    from anon_core.stages import invert_images

    params = networks.params()
    ws = invert_images(networks.networks(), params, real_images.images)
    context.add_output_metadata({"shape": str(ws.shape), "method": params.inversion.method})
    return ws
