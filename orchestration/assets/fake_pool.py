"""Group `fake_pool`: the seeded fake pool and its FaRL features, shared by every variant."""

from collections.abc import Mapping

import dagster as dg
import numpy as np

from orchestration.celery_queue import GPU_STEP as GPU
from orchestration.resources import NetworksResource
from orchestration.tracking import MlflowResource

GROUP = "fake_pool"


@dg.asset(group_name=GROUP, code_version="3", deps=["fake_pool_settings"], op_tags=GPU)
def fake_pool(context: dg.AssetExecutionContext, networks: NetworksResource, mlflow: MlflowResource) -> dict:
    """N seeded latent codes mapped to W and truncated toward w_avg: `seeds` [N], `w` [N, w_dim]."""
    from anon_core.fake_pool import sample_fake_pool

    params = networks.params()
    check_pool_holds_real_images(context, params)  # before this pool replaces the stored one
    settings = {"pool_size": params.pool_size, "seed": params.seed, "truncation_psi": params.truncation_psi}
    with mlflow.asset_run(context, networks, settings) as run:
        nets = networks.networks()
        pool = sample_fake_pool(nets.generator, params.pool_size, params.seed, params.truncation_psi,
                                device=nets.device)
        run.log_metrics({"num_fakes": len(pool)})
    context.add_output_metadata({**run.metadata, "num_fakes": len(pool), "seed": params.seed,
                                 "truncation_psi": params.truncation_psi, "profile": params.profile,
                                 "w_dim": int(pool.w.shape[1])})
    return {"seeds": pool.seeds, "w": pool.w}


def check_pool_holds_real_images(context: dg.AssetExecutionContext, params) -> None:
    """FalcoError when the pairing cannot give the real images distinct fakes from a pool of this size, before the
    pool is made, in a run that pairs them (`pairs` or `real_images` selected: not photo mode's, which pairs by
    nearest): against `real_images` as this run made it (it runs first: its priority), or as last stored when this
    run does not make it. Without this, `pairs` refused only after the stored pool had been replaced."""
    from anon_core.assignment import check_pool_size
    from anon_core.errors import FalcoError
    from orchestration.io_manager import latest_materialization

    from dagster._core.errors import DagsterInvalidPropertyError

    if params.pairing == "nearest":
        return
    try:
        selected = context.job_def.asset_layer.selected_asset_keys
    except DagsterInvalidPropertyError:  # invoked directly (tests): no run, nothing stored to check against
        return
    key = dg.AssetKey("real_images")
    if not {key, dg.AssetKey("pairs")} & set(selected):
        return
    latest = latest_materialization(context.instance, key, None)
    if key in selected and (latest is None or latest.run_id != context.run.run_id):
        failed = context.instance.get_records_for_run(context.run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if any(r.event_log_entry.step_key == "real_images" for r in failed.records):
            raise FalcoError("not made: real_images failed in this run (its error comes first); the stored pool is "
                             "kept")
        return  # real_images still runs beside this step (another worker): `pairs` checks the pool
    metadata = latest.asset_materialization.metadata if latest is not None else {}
    people = metadata["num_people"].value if "num_people" in metadata else None
    if "num_ok" not in metadata or (params.pairing == "identity" and people is None):
        return  # (identity pairing on a value stored before num_people: `pairs` checks)
    images = metadata["num_ok"].value
    try:
        check_pool_size(params.pairing, params.pool_size, images, images if people is None else people,
                        f" of real_images (run {latest.run_id[:8]})")
    except FalcoError as error:
        raise FalcoError(f"{error}; the stored pool is kept") from None


@dg.asset(group_name=GROUP, code_version="2", op_tags=GPU)
def fake_features(context: dg.AssetExecutionContext, fake_pool: Mapping, networks: NetworksResource,
                  mlflow: MlflowResource) -> np.ndarray:
    """FaRL embeddings of every fake image, L2-normalized: [N, D]. The images are regenerated from the codes."""
    from anon_core.fake_pool import FakePool, embed_fake_pool

    with mlflow.asset_run(context, networks) as run:
        nets = networks.networks()
        pool = FakePool(seeds=fake_pool["seeds"], w=fake_pool["w"])
        features = embed_fake_pool(pool, nets.generator, nets.farl.embed, device=nets.device,
                                   show_progress=context.log.info)
        run.log_metrics({"num_fakes": len(features)})
    context.add_output_metadata({**run.metadata, "shape": str(features.shape)})
    return features
