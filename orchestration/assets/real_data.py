"""Group `real_data`: the real images (ingested and validated, rejects kept as rows), their FaRL features and
their W+ inversions."""


import warnings
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
) -> dg.Output[ImageSet]:
    """Every file of the dataset: its faces FFHQ-aligned (or as they are) at the generator's resolution, and one
    row per file with its status (`ok`/`rejected`), reason, output name, shard and labels. Registers the shards.
    Its data version is the md5 of the `.dvc` file tracking the input folder (orchestration/data_version.py)."""
    from anon_core.data.align import AlignmentCache, FaceAligner
    from anon_core.data.datasets import load_dataset
    from anon_core.data.image_files import ImageFiles
    from anon_core.pipeline import read_workers
    from anon_core.stages import align_cache_dir, check_inputs, dataset_files, label_columns, output_names
    from orchestration.data_version import data_version

    input_dir = Path(config.input_dir or storage.input_dir)
    dataset = load_dataset(config.dataset, input_dir, Path(config.labels_csv) if config.labels_csv else None)
    files = dataset_files(dataset)
    names = output_names(files)
    nets = networks.networks()
    resolution = nets.generator.config.resolution
    align = config.align if config.align is not None else dataset.attrs.get("kind") != "celebahq"
    aligner = FaceAligner(resolution, config.align_detector, device=nets.device) if align else None
    cache = AlignmentCache(align_cache_dir())
    # The images stay on disk (the input files or their aligned crops) until the IO manager writes them.
    workers = read_workers(nets.device)
    rows, sources = [], []
    for done, checked in enumerate(check_inputs(files, aligner, cache, workers), start=1):
        f = checked.file
        row = {"input": f.relpath, "image": "", "status": "ok", "reason": "", "detail": "",
               "duplicate_of": f.duplicate_of or "", "sha256": f.sha256 or "", "shard": "",
               "faces_seen": checked.faces_seen}
        if checked.rejected is not None:
            row.update(status="rejected", reason=checked.rejected.reason, detail=checked.rejected.detail)
        else:
            sources.append(checked.source)
            row["image"] = names[f.relpath]
        rows.append(row)
        if done % max(1, len(files) // 10) == 0:
            context.log.info(f"read {done}/{len(files)} files")
    frame = pd.DataFrame(rows, columns=["input", "image", "status", "reason", "detail", "duplicate_of", "sha256",
                                        "shard", "faces_seen"])
    labels = label_columns(dataset)
    if labels:
        frame = frame.join(dataset.set_index("relpath")[labels], on="input")
    ok = frame.index[frame["status"] == "ok"]
    shard_size = _shard_size(config, networks)
    frame.loc[ok, "shard"] = [shard_key(i // shard_size) for i in range(len(ok))]
    _register_shards(context, sorted(set(frame.loc[ok, "shard"])))

    version, version_source = data_version(input_dir, [(f.relpath, f.sha256 or "") for f in files])
    counts = frame.groupby(["status", "reason"]).size().reset_index(name="files")
    context.add_output_metadata(
        {
            "input_dir": dg.MetadataValue.path(str(input_dir)),
            "data_version": version,
            "data_version_source": version_source,
            "dataset": dataset.attrs.get("kind", config.dataset),
            "alignment": aligner.settings if aligner else "none",
            "labels": ", ".join(labels) or "none",
            "num_files": len(frame),
            "num_ok": len(ok),
            "num_rejected": int((frame["status"] == "rejected").sum()),
            "num_shards": int(frame.loc[ok, "shard"].nunique()),
            "shard_size": shard_size,
            "counts": table(counts),
            "rejects": table(frame.loc[frame["status"] == "rejected", ["input", "reason", "detail"]]),
        }
    )
    image_set = ImageSet(table=frame, images=ImageFiles(sources, resolution, workers=workers))
    with warnings.catch_warnings():  # `data_version` is Dagster's beta API for versions a source asset reports
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.Output(image_set, data_version=dg.DataVersion(version))


def _shard_size(config: RealImagesConfig, networks: NetworksResource) -> int:
    """The run config's shard_size, else params.yaml's `pipeline.shard_size` for the profile."""
    from anon_core.errors import ParamsError
    from anon_core.params import DEFAULT_PARAMS_PATH

    size = config.shard_size if config.shard_size is not None else networks.section("pipeline").get("shard_size", 16)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        where = "run config real_images.shard_size" if config.shard_size is not None else \
            f"{networks.params_path or DEFAULT_PARAMS_PATH}: pipeline.shard_size"
        raise ParamsError(f"{where} = {size!r} must be a whole number of images >= 1")
    return size


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
