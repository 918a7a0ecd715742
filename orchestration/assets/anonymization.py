"""Group `anonymization`: real-to-fake pairs, then per shard the optimized latent codes and their images."""


import dagster as dg
import numpy as np
import pandas as pd

from orchestration.config import OptimizationConfig, PairsConfig
from orchestration.io_manager import ImageSet
from orchestration.metadata import png_markdown
from orchestration.partitions import image_shards
from orchestration.resources import NetworksResource
from orchestration.tracking import MlflowResource

GROUP = "anonymization"
GPU = {"falco/device": "gpu"}


class ImagesConfig(dg.Config):
    show_real_faces: bool = False  # privacy by default: the metadata grid shows fake | anonymized only


@dg.asset(group_name=GROUP, code_version="1")
def pairs(
    context: dg.AssetExecutionContext,
    config: PairsConfig,
    real_images: ImageSet,
    real_features: np.ndarray,
    fake_features: np.ndarray,
    networks: NetworksResource,
) -> pd.DataFrame:
    """Each ok real image's nearest fakes in FaRL space (cosine, exact): one row per real image."""
    from anon_core.pairing import nearest_fakes

    k = networks.params(pairing_k=config.pairing_k).pairing_k
    indices, similarities = nearest_fakes(real_features, fake_features, k=k)
    ok = real_images.named
    frame = pd.DataFrame(
        {"row": np.arange(len(ok)), "input": ok["input"], "image": ok["image"], "shard": ok["shard"],
         "fake_index": indices[:, 0], "similarity": similarities[:, 0]}
    )
    for j in range(1, k):
        frame[f"fake_index_{j}"], frame[f"similarity_{j}"] = indices[:, j], similarities[:, j]
    context.add_output_metadata(
        {"num_pairs": len(frame), "distinct_fakes": int(frame["fake_index"].nunique()),
         "mean_similarity": float(frame["similarity"].mean()) if len(frame) else float("nan")}
    )
    return frame


@dg.asset(group_name=GROUP, code_version="2", partitions_def=image_shards, op_tags=GPU)
def anonymized_latents(
    context: dg.AssetExecutionContext,
    config: OptimizationConfig,
    real_images: ImageSet,
    real_inversions: np.ndarray,
    pairs: pd.DataFrame,
    fake_pool: dict,
    networks: NetworksResource,
    mlflow: MlflowResource,
) -> dict:
    """FALCO's optimized W+ codes for one shard: `ws` [K, num_ws, w_dim], `row` (index into the ok real
    images), `identity_similarity` [K], and the per-step losses `loss_<name>` [steps, K]."""
    from anon_core.acceleration import measure_throughput
    from anon_core.batch_size import resolve_batch_size
    from anon_core.data.image_files import take
    from anon_core.stages import optimize_images
    from evaluation.figures import loss_curve_png

    nets = networks.networks()
    requested = networks.params(**config.overrides())
    params = requested.replace(batch_size=resolve_batch_size(nets, requested))  # "auto": what fits this device
    shard = pairs[pairs["shard"] == context.partition_key]
    rows = shard["row"].to_numpy()
    context.log.info(f"{context.partition_key}: optimizing {len(rows)} images, {params.optimization.steps} steps, "
                     f"batches of {params.batch_size} on {nets.device} (amp {params.speed.amp})")
    with measure_throughput(nets.device) as timing:
        result = optimize_images(
            nets,
            params,
            take(real_images.images, rows),  # read a batch ahead of the optimization, never the whole shard
            real_inversions[rows],
            fake_pool["w"][shard["fake_index"].to_numpy()],
            on_batch=lambda done, total: context.log.info(f"batch {done}/{total} done"),
            keep_images=False,  # anonymized_images regenerates them from the codes
        )
    speed = timing.metrics(len(rows), params.optimization.steps)
    final = {name: float(values[-1].mean()) for name, values in result.history.items() if len(values)}
    # The requested settings (batch_size "auto", not what it resolved to on this device) label the run in MLflow.
    with mlflow.asset_run(context, networks, requested) as run:
        run.log_histories({f"loss/{name}": values.mean(axis=1) for name, values in result.history.items()
                           if values.shape[1]})  # [steps, K] -> mean over images per step
        run.log_metrics({"mean_identity_similarity": float(result.identity_similarity.mean()) if len(rows) else
                         float("nan"), "num_images": len(rows), **{f"speed/{k}": v for k, v in speed.items()},
                         "speed/batch_size": params.batch_size})
    context.add_output_metadata(
        {
            **run.metadata,
            "num_images": len(rows),
            "steps": params.optimization.steps,
            "margin": params.optimization.margin,
            **{f"final_{name}_loss": value for name, value in final.items()},
            "mean_identity_similarity": float(result.identity_similarity.mean()) if len(rows) else float("nan"),
            "loss_curve": png_markdown(loss_curve_png(result.history), "loss curve"),
            "batch_size": params.batch_size,
            "batch_size_requested": str(requested.batch_size),
            "device": str(nets.device),
            **{f"speed_{k}": v for k, v in speed.items()},
        }
    )
    return {"ws": result.ws, "row": rows, "identity_similarity": result.identity_similarity,
            **{f"loss_{name}": values for name, values in result.history.items()}}


@dg.asset(group_name=GROUP, code_version="2", partitions_def=image_shards, op_tags=GPU)
def anonymized_images(
    context: dg.AssetExecutionContext,
    config: ImagesConfig,
    anonymized_latents: dict,
    real_images: ImageSet,
    pairs: pd.DataFrame,
    fake_pool: dict,
    networks: NetworksResource,
    mlflow: MlflowResource,
) -> ImageSet:
    """G(w_anon) for one shard, stored as PNG under the input's relative path; together the shards form the
    anonymized dataset folder `anonymized_images/images/`."""
    from anon_core.fake_pool import generate
    from evaluation.figures import grid_png
    from evaluation.image_sets import generated_images

    nets = networks.networks()
    rows = anonymized_latents["row"]
    # Generated batch by batch as the IO manager writes them, so the shard's images are never all in memory.
    images = generated_images(nets.generator, anonymized_latents["ws"], np.arange(len(rows)), device=nets.device)
    shard = pairs.set_index("row").loc[rows]
    frame = pd.DataFrame(
        {"row": rows, "input": shard["input"].to_numpy(), "image": shard["image"].to_numpy(),
         "fake_index": shard["fake_index"].to_numpy(),
         "identity_similarity": anonymized_latents["identity_similarity"], "shard": context.partition_key}
    )
    shown = slice(0, min(8, len(rows)))
    fakes = generate(nets.generator, fake_pool["w"][frame["fake_index"].to_numpy()[shown]], device=nets.device)
    columns = [fakes, images[shown]]
    if config.show_real_faces:
        columns.insert(0, real_images.images[rows[shown]])
    grid = grid_png(columns)
    with mlflow.asset_run(context, networks) as run:
        run.log_image(grid if not config.show_real_faces else grid_png(columns[1:]), "fake_anonymized_grid.png")
    context.add_output_metadata(
        {"num_images": len(rows), **run.metadata,
         "grid": png_markdown(grid, ("real | " if config.show_real_faces else "") + "fake | anonymized")}
    )
    return ImageSet(table=frame, images=images)
