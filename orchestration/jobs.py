"""Jobs and the executor.

- `prepare`: everything before the per-shard optimization (fake pool, real data, pairs).
- `gpu_anonymization`: the per-shard optimization and images; its runs ask Kubernetes for one GPU each
  (`dagster-k8s/config`), so with the `k8s_job_executor` every shard runs in its own GPU pod (docs/deployment.md).
- `gpu_attribute_classifier`: the CelebA attribute classifier trained on the real train split (needs only
  `real_images`), in a GPU pod like the shards. Run it before `evaluate`, which reads it.
- `evaluate`: metrics and the report. (`falco pipeline` and the DVC `evaluate` stage materialize EVALUATE, the
  whole group, so they train the classifier in the same step.)
The default executor runs steps in parallel processes but at most one step tagged `falco/device: gpu` at a
time, so two steps never share one GPU.
"""

import dagster as dg


PREPARE = dg.AssetSelection.groups("fake_pool", "real_data") | dg.AssetSelection.assets("pairs")
ANONYMIZE = dg.AssetSelection.assets("anonymized_latents", "anonymized_images")
EVALUATE = dg.AssetSelection.groups("evaluation")
CLASSIFIER = dg.AssetSelection.assets("attribute_classifier")

GPU_POD = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"node_selector": {"nvidia.com/gpu.present": "true"}},
}

prepare_job = dg.define_asset_job("prepare", selection=PREPARE)
gpu_anonymization_job = dg.define_asset_job(
    "gpu_anonymization",
    selection=ANONYMIZE,
    tags={"dagster-k8s/config": GPU_POD},
)
gpu_attribute_classifier_job = dg.define_asset_job(
    "gpu_attribute_classifier",
    selection=CLASSIFIER,
    tags={"dagster-k8s/config": GPU_POD},
)
evaluate_job = dg.define_asset_job("evaluate", selection=EVALUATE - CLASSIFIER)

executor = dg.multiprocess_executor.configured(
    {"max_concurrent": 2, "tag_concurrency_limits": [{"key": "falco/device", "value": "gpu", "limit": 1}]}
)

ALL_JOBS = [prepare_job, gpu_anonymization_job, gpu_attribute_classifier_job, evaluate_job]
