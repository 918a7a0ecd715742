"""Group `anonymization`: real-to-fake pairs (shared), then per variant and shard the optimized latent codes and
their images."""

import hashlib
import warnings
from collections.abc import Iterator, Mapping

import dagster as dg
import numpy as np
import pandas as pd

from anon_core.artifacts import ImageSet
from orchestration.assets.settings import reuse_context, reuses_rows, settings_version, variant_settings
from orchestration.celery_queue import GPU_STEP as GPU
from orchestration.io_manager import keep_dropped_rows, keyed_dicts
from orchestration.metadata import png_markdown
from orchestration.partitions import BY_VARIANT, context_shard, context_variant, variant_shards
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import MlflowResource

GROUP = "anonymization"


@dg.asset(group_name=GROUP, code_version="3", deps=["pairing_settings"])
def pairs(
    context: dg.AssetExecutionContext, real_images: ImageSet, real_features: np.ndarray, fake_features: np.ndarray,
    networks: NetworksResource, mlflow: MlflowResource,
) -> pd.DataFrame:
    """The fake of each ok real image (params.yaml `pairing`): its nearest in FaRL space (cosine, exact; the
    paper's), a distinct one per image (`unique`), or one per person, distinct across people (`identity`, by the
    dataset's identity labels; images without one are their own person; none labelled is an error). One row per
    real image, with `person`; the metadata counts the fakes shared by several images."""
    from anon_core.assignment import assign_fakes, check_identities, person_labels
    from anon_core.pairing import nearest_fakes

    params = networks.params()
    k, mode = params.pairing_k, params.pairing
    ok = real_images.named
    check_identities(mode, ok["identity"] if "identity" in ok.columns else None, networks.data()["labels_csv"])
    with mlflow.asset_run(context, networks, {"pairing_k": k, "pairing": mode}) as run:
        person = person_labels(ok["identity"] if "identity" in ok.columns and mode == "identity" else [None] * len(ok))
        fake_index, similarity, figures = assign_fakes(real_features, fake_features, mode, person)
        frame = pd.DataFrame({"row": np.arange(len(ok)), "input": ok["input"], "image": ok["image"],
                              "shard": ok["shard"], "person": person, "fake_index": fake_index,
                              "similarity": similarity})
        if k > 1:  # the further neighbours, for reference
            indices, similarities = nearest_fakes(real_features, fake_features, k=k)
            for j in range(1, k):
                frame[f"fake_index_{j}"], frame[f"similarity_{j}"] = indices[:, j], similarities[:, j]
        figures |= {"num_pairs": len(frame), "people": int(frame["person"].replace("", np.nan).nunique()),
                    "mean_similarity": float(frame["similarity"].mean()) if len(frame) else float("nan")}
        run.log_metrics({k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    context.add_output_metadata({**run.metadata, **figures})
    return frame


@dg.asset(group_name=GROUP, code_version="3", partitions_def=variant_shards, op_tags=GPU,
          deps=[dg.AssetDep("variant_settings", partition_mapping=BY_VARIANT)])
def anonymized_latents(
    context: dg.AssetExecutionContext, real_images: ImageSet, real_inversions: np.ndarray, pairs: pd.DataFrame,
    fake_pool: Mapping, storage: StorageResource, networks: NetworksResource, mlflow: MlflowResource,
) -> dg.Output[dict]:
    """FALCO's optimized W+ codes for one shard under one variant's settings: `ws` [K, num_ws, w_dim], `row` (index
    into the ok real images), `identity_similarity` [K], the per-step losses `loss_<name>` [steps, K], `key` [K]
    (`anon_core.reuse`: what decided each image's codes) and `key_context` (the digest of the settings in the keys).
    An image whose key a stored value of any shard or variant holds keeps its codes from there: new data optimizes
    only the images it adds (not under `--fresh`).

    Its data version hashes the codes and the variant's definition: Dagster's own version of a partition leaves out
    the version of the variant's settings (a partitioned source), so new settings would not reach the images and
    the evaluation; and a redefinition whose codes come out the same (a margin the loss never reached) still
    re-makes them, so the evaluation's MLflow run records the definition it now stands for."""
    from anon_core.acceleration import measure_throughput, resolved_for
    from anon_core.data.image_files import take
    from anon_core.optimize import LOSS_NAMES
    from anon_core.reuse import CONTEXT, KEY, StoredRows, context_digest, input_ids, merge_rows, row_keys
    from anon_core.stages import optimize_images
    from evaluation.figures import loss_curve_png
    from orchestration.tracking import weight_hashes

    variant = context_variant(context)
    requested = networks.params(variant)
    shard = pairs[pairs["shard"] == context_shard(context)]
    rows, fakes = shard["row"].to_numpy(), fake_pool["w"][shard["fake_index"].to_numpy()]
    settings = reuse_context(context, networks, storage, definition=variant_settings(networks, variant),
                             weights=weight_hashes(networks))
    inputs = input_ids(real_images.named["sha256"].to_numpy()[rows])
    keys = row_keys(settings, inputs, real_inversions[rows], fakes)
    # Rows stored under the same key, by any shard and any variant (one defined the same way): new data, or
    # shards re-cut by an image added before them, re-optimize only the images that are new to them.
    per_image = {"ws": 0, "identity_similarity": 0, **{f"loss_{name}": 1 for name in LOSS_NAMES}}  # row axis
    stored = keyed_dicts(storage.root, context.asset_key.path[-1]) if reuses_rows(context) else []
    found, reused = StoredRows(stored).take(keys, per_image)
    todo = np.flatnonzero(~found)
    with mlflow.asset_run(context, networks, requested) as run:  # as asked ("auto" stays "auto"), then resolved.*
        computed, params, speed, device = {}, requested, {}, "none (every image reused)"
        if len(todo) or not found.any():
            nets = networks.networks()
            params = resolved_for(nets, requested)  # "auto": what fits and what runs fastest here
            run.log_resolved(requested, params)
            device = str(nets.device)
            where = f"{variant} {context_shard(context)}"
            context.log.info(f"{where}: {len(todo)} of {len(rows)} images to optimize "
                             f"({int(found.sum())} stored already), {params.optimization.steps} steps, "
                             f"m = {params.optimization.margin}, batches of {params.batch_size} on {nets.device}")
            def batch_done(done: int, total: int) -> None:
                context.log.info(f"{where}: batch {done}/{total} done")

            with measure_throughput(nets.device) as timing:
                result = optimize_images(nets, params, take(real_images.images, rows[todo]),
                                         real_inversions[rows[todo]], fakes[todo], keep_images=False,
                                         on_batch=batch_done,
                                         show_progress=lambda line: context.log.info(f"{where}: {line}"))
            speed = timing.metrics(len(todo), params.optimization.steps)
            computed = {"ws": result.ws, "identity_similarity": result.identity_similarity,
                        **{f"loss_{name}": values for name, values in result.history.items()}}
        else:
            context.log.info(f"{variant} {context_shard(context)}: all {len(rows)} images stored already")
        value = {"row": rows, KEY: keys, CONTEXT: np.array(context_digest(settings)),
                 **merge_rows(found, reused, computed, per_image)}
        history = {name: value[f"loss_{name}"] for name in LOSS_NAMES}
        similarity = float(value["identity_similarity"].mean()) if len(rows) else float("nan")
        run.log_histories({f"loss/{name}": values.mean(axis=1) for name, values in history.items()
                           if values.shape[1]})  # [steps, K] -> mean over images per step
        run.log_metrics({"mean_identity_similarity": similarity, "num_images": len(rows), "num_optimized": len(todo),
                         "num_reused": int(found.sum()), **{f"speed/{k}": v for k, v in speed.items()},
                         "speed/batch_size": params.batch_size})
    context.add_output_metadata({
        **run.metadata, "variant": variant, "num_images": len(rows), "num_optimized": len(todo),
        "num_reused": int(found.sum()), "steps": params.optimization.steps,
        "margin": params.optimization.margin, "mean_identity_similarity": similarity,
        **{f"final_{name}_loss": float(v[-1].mean()) for name, v in history.items() if v.size},
        "loss_curve": png_markdown(loss_curve_png(history), "loss curve"), "batch_size": params.batch_size,
        "device": device, **{f"speed_{k}": v for k, v in speed.items()},
    })
    # the images this shard held before and holds no more keep their codes for the shard that holds them now
    keep_dropped_rows(storage.root, context.asset_key, context.assets_def.partitions_def, str(context.partition_key),
                      keys, context_digest(settings), per_image)
    definition = settings_version(variant_settings(networks, variant)).value.encode()
    digest = hashlib.sha256(np.ascontiguousarray(value["ws"]).tobytes() + rows.astype(np.int64).tobytes()
                            + definition).hexdigest()
    with warnings.catch_warnings():  # `data_version` is Dagster's beta API for an asset that reports its version
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.Output(value, data_version=dg.DataVersion(digest[:24]))


@dg.asset(group_name=GROUP, code_version="4", partitions_def=variant_shards, op_tags=GPU)
def anonymized_images(
    context: dg.AssetExecutionContext, anonymized_latents: Mapping, real_images: ImageSet, pairs: pd.DataFrame,
    fake_pool: Mapping, networks: NetworksResource, mlflow: MlflowResource,
) -> Iterator[dg.Output[ImageSet]]:
    """G(w_anon) for one shard of one variant, as PNG under the input's relative path: together a variant's shards
    form its anonymized dataset folder, `anonymized_images/<variant>/images/`. Each row's `key` hashes its codes'
    key (`anon_core.reuse`), so an image already written from the same codes is neither generated nor written again
    (`io_manager.unchanged_images`): new data re-writes only the images it changes."""
    from anon_core.data.colour import GREY_RULE, is_grey
    from anon_core.fake_pool import generate, generated_images
    from anon_core.reuse import KEY, METHOD_VERSION, row_keys
    from evaluation.figures import grid_png

    with mlflow.asset_run(context, networks) as run:
        nets, rows = networks.networks(), np.asarray(anonymized_latents["row"])
        named = real_images.named
        # black-and-white sources get grey faces; a table stored before `grey` was a column: from their pixels
        grey = named["grey"].to_numpy(bool)[rows] if "grey" in named else \
            np.array([is_grey(real_images.images[row]) for row in rows], bool)
        # Generated batch by batch as the IO manager writes them, so the shard's images are never all in memory.
        images = generated_images(nets.generator, anonymized_latents["ws"], np.arange(len(rows)), device=nets.device,
                                  grey=grey)
        shard = pairs.set_index("row").loc[rows]
        frame = pd.DataFrame({"row": rows, "input": shard["input"].to_numpy(), "image": shard["image"].to_numpy(),
                              "fake_index": shard["fake_index"].to_numpy(), "shard": context_shard(context),
                              "identity_similarity": anonymized_latents["identity_similarity"], "grey": grey})
        if KEY in anonymized_latents:  # (codes stored before keys were: every image is written)
            frame[KEY] = row_keys({"asset": context.asset_key.to_user_string(), "method": METHOD_VERSION,
                                   "code_version": context.assets_def.code_versions_by_key.get(context.asset_key),
                                   "images": GREY_RULE},
                                  np.asarray(anonymized_latents[KEY]).tolist(), np.where(grey, "grey", "colour"))
        shown = slice(0, min(8, len(rows)))
        columns = [generate(nets.generator, fake_pool["w"][frame["fake_index"].to_numpy()[shown]], device=nets.device),
                   images[shown]]
        real_faces = networks.flag("evaluation", "show_real_faces")
        if real_faces:
            columns.insert(0, real_images.images[rows[shown]])
        run.log_image(grid_png(columns[-2:]), "fake_anonymized_grid.png")
        # Yielded inside the MLflow run: Dagster's IO manager generates and writes the images before the generator
        # goes on, so the run ends FINISHED only once they are stored, and FAILED where that fails.
        yield dg.Output(ImageSet(table=frame, images=images), metadata={
            "variant": context_variant(context), "num_images": len(rows), "num_grey": int(grey.sum()), **run.metadata,
            "grid": png_markdown(grid_png(columns), ("real | " if real_faces else "") + "fake | anonymized")})
