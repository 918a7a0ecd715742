"""The named jobs, one per stage of the method, and their executor. Every driver launches these: the UI,
`falco pipeline` / `falco stage` (orchestration.driver) and so `dvc repro`.

- `observe_settings`: observes the settings sources (what each asset reads from params.yaml and the input folder),
  so Dagster knows what is stale;
- `prepare`: what every variant shares (fake pool, real data, pairs);
- `anonymize`: one (shard, variant) partition's latents and images, and their checks;
- the evaluation, in three jobs, as a job's assets are either all partitioned or none (Dagster launches a job for
  one partition or for none, so a job holding both kinds could not be launched whole): `evaluate_references`, what
  every variant is measured against (the real gallery, pseudo-labels, the attribute classifier, the baselines);
  `evaluate`, one variant's evaluation (partitioned by variant); `evaluate_report`, the report over the variants;
- photo mode: `prepare_photos` (fake pool, the list of photos) and `anonymize_photos` (one (photo shard, variant)
  partition and its per-face privacy check).

The runs of every job but `observe_settings` ask Kubernetes for one GPU each (`dagster-k8s/config`), so with
the `K8sRunLauncher` each runs in its own GPU pod (docs/deployment.md).

The executor is params.yaml's `pipeline.executor` (built in orchestration.graph): `multiprocess` runs steps in
parallel processes, at most one tagged `falco/device: gpu` at a time, so two steps never share one GPU (and
`observe_settings` in process: `jobs_for`); `in_process` runs them one after another in the run's process; `celery`
hands each step to the `falco worker`s of its queue, `gpu` or `cpu` (orchestration.celery_queue), on any machine
that shares the storage and the instance.
"""

import warnings

import dagster as dg

from anon_core.params import PIPELINE_EXECUTORS as EXECUTORS  # re-exported: the params check's list


with warnings.catch_warnings():  # include_sources is a beta parameter of Dagster 1.13; observable sources need it
    warnings.simplefilter("ignore", dg.BetaWarning)
    SETTINGS = dg.AssetSelection.groups("settings", include_sources=True)
PREPARE = dg.AssetSelection.groups("fake_pool", "real_data") | dg.AssetSelection.assets("pairs")
ANONYMIZE = dg.AssetSelection.assets("anonymized_latents", "anonymized_images")
EVALUATION_REFERENCES = dg.AssetSelection.assets("real_gallery", "attribute_pseudo_labels", "attribute_classifier",
                                                 "baseline_metrics", "baseline_attributes")
VARIANT_EVALUATION = dg.AssetSelection.assets("evaluation_metrics", "per_image_privacy", "attribute_agreement")
REPORT = dg.AssetSelection.assets("anonymization_report")
EVALUATE = EVALUATION_REFERENCES | VARIANT_EVALUATION | REPORT
PREPARE_PHOTOS = dg.AssetSelection.groups("fake_pool") | dg.AssetSelection.assets("input_photos")
ANONYMIZE_PHOTOS = dg.AssetSelection.assets("anonymized_photos")

GPU_POD = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"node_selector": {"nvidia.com/gpu.present": "true"}},
}

observe_settings_job = dg.define_asset_job("observe_settings", selection=SETTINGS)
# Every job that runs networks asks Kubernetes for a GPU pod (docs/deployment.md); observing the settings does not.
prepare_job = dg.define_asset_job("prepare", selection=PREPARE, tags={"dagster-k8s/config": GPU_POD})
anonymize_job = dg.define_asset_job("anonymize", selection=ANONYMIZE, tags={"dagster-k8s/config": GPU_POD})
evaluate_references_job = dg.define_asset_job("evaluate_references", selection=EVALUATION_REFERENCES,
                                              tags={"dagster-k8s/config": GPU_POD})
evaluate_job = dg.define_asset_job("evaluate", selection=VARIANT_EVALUATION, tags={"dagster-k8s/config": GPU_POD})
# The report draws the fakes and the grid with the generator, so it asks for a GPU too.
evaluate_report_job = dg.define_asset_job("evaluate_report", selection=REPORT, tags={"dagster-k8s/config": GPU_POD})

# Photo mode (`falco pipeline --mode photo`): the fake pool and the list of photos, then each (shard, variant).
prepare_photos_job = dg.define_asset_job("prepare_photos", selection=PREPARE_PHOTOS,
                                         tags={"dagster-k8s/config": GPU_POD})
anonymize_photos_job = dg.define_asset_job("anonymize_photos", selection=ANONYMIZE_PHOTOS,
                                           tags={"dagster-k8s/config": GPU_POD})

ALL_JOBS = [observe_settings_job, prepare_job, anonymize_job, evaluate_references_job, evaluate_job,
            evaluate_report_job, prepare_photos_job, anonymize_photos_job]


def jobs_for(executor: str) -> list:
    """ALL_JOBS for params.yaml's `pipeline.executor`. Under `multiprocess`, observing the settings runs in process:
    its steps read params.yaml and hash the input folder, and a process per step cost 95 s for its 11 steps on 2
    cores. Under `celery` the workers observe, as they read the settings where the steps run."""
    if executor != "multiprocess":
        return ALL_JOBS
    in_process = dg.define_asset_job("observe_settings", selection=SETTINGS, executor_def=dg.in_process_executor)
    return [in_process if job is observe_settings_job else job for job in ALL_JOBS]


def build_executor(kind: str, max_concurrent: int) -> dg.ExecutorDefinition:
    """params.yaml's `pipeline.executor` (one of EXECUTORS) as a Dagster executor."""
    from anon_core.errors import ParamsError
    from orchestration.celery_queue import DEVICE_TAG

    if kind == "in_process":
        return dg.in_process_executor
    if kind == "multiprocess":
        return dg.multiprocess_executor.configured({
            "max_concurrent": int(max_concurrent),
            "tag_concurrency_limits": [{"key": DEVICE_TAG, "value": "gpu", "limit": 1}]})
    if kind == "celery":
        from orchestration.celery_queue import executor_config
        from orchestration.launch_settings import celery_executor_tagging_launch_settings

        return celery_executor_tagging_launch_settings().configured(executor_config())
    raise ParamsError(f"pipeline.executor = {kind!r} must be one of {', '.join(EXECUTORS)}")
