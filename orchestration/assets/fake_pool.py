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
