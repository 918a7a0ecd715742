"""The settings every step of a run must share (storage, input, profile, params file, ...), carried to the
Celery workers with the run.

A `falco pipeline` run hands its settings to every worker in the job it launches (orchestration.graph.job_for). A run
launched from the UI cannot: each worker rebuilds it from the code location, that is from its own FALCO_* variables,
and a worker started with other ones read another input or wrote another storage without a word. So the `celery`
executor, in the process that launched the run, tags the run with the settings it resolved (`falco/storage.root`,
...), and each step's resources, on the worker, stop the step when theirs differ, naming the variables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import dagster as dg

from anon_core.errors import FalcoError

TAG_PREFIX = "falco/"
# (resource, field) -> what sets it for a run launched from the UI
SETTINGS: dict[tuple[str, str], str] = {
    ("storage", "root"): "FALCO_STORAGE",
    ("storage", "input_dir"): "FALCO_INPUT",
    ("networks", "profile"): "FALCO_PROFILE",
    ("networks", "params_path"): "FALCO_PARAMS",
    ("networks", "weights"): "the profile's weights",
    ("networks", "overrides"): "the launcher's overrides",
    ("networks", "sweep_variants"): "the launcher's variants",
}
# Where a step runs has no bearing on what it computes (the device is not versioned either, orchestration.assets.
# settings): a cpu worker may have FALCO_DEVICE=cpu beside gpu workers with cuda, and the executor is the launcher's.
IGNORED_OVERRIDES = ("pipeline.executor",)


def tag_name(resource: str, field: str) -> str:
    return f"{TAG_PREFIX}{resource}.{field}"


def _text(field: str, value: Any) -> str:
    if field == "overrides":
        value = {k: v for k, v in (value or {}).items() if k not in IGNORED_OVERRIDES}
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def launch_tags(resources: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """{tag: value} of the settings in `resources` ({resource name: its resolved config})."""
    return {tag_name(resource, field): _text(field, resources[resource].get(field))
            for resource, field in SETTINGS if resource in resources}


def check_launch_settings(context: dg.InitResourceContext | None, resource: str, values: Any) -> None:
    """FalcoError when the run was tagged by its launcher with settings of `resource` other than those of `values`
    (this process's resource of that name): a worker started with other FALCO_* variables than the process that
    launched a run from the UI."""
    run = getattr(context, "run", None) if context is not None else None
    if run is None:
        return
    differing = []
    for (name, field), source in SETTINGS.items():
        tag = tag_name(name, field)
        if name != resource or tag not in run.tags:
            continue
        mine = _text(field, getattr(values, field))
        if run.tags[tag] != mine:
            differing.append(f"{source} ({resource}.{field}) is {mine or 'unset'!r} here but "
                             f"{run.tags[tag] or 'unset'!r} where the run was launched")
    if differing:
        message = ("this worker's settings differ from those of the process that launched the run: "
                   + "; ".join(differing) + ". The steps of a run launched from the UI take each worker's FALCO_* "
                   "variables: start the workers with the launcher's (`falco cluster down`, export them, `falco "
                   "cluster up`), or launch with `falco pipeline --executor celery`, which hands its own settings to "
                   "every worker")
        if context.log is not None:  # dagster-celery passes on only the outer "Error executing resource_fn"
            context.log.error(message)
        raise FalcoError(message)


def celery_executor_tagging_launch_settings() -> dg.ExecutorDefinition:
    """dagster-celery's executor (same name, config and behaviour) that first tags the run with `launch_tags` of
    its resolved resources, in the process that launched it."""
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor

    class TaggingCeleryExecutor(CeleryExecutor):
        def execute(self, plan_context, execution_plan):
            from dagster._core.system_config.objects import ResolvedRunConfig

            job = plan_context.reconstructable_job.get_definition()
            resolved = ResolvedRunConfig.build(job, plan_context.run_config).resources  # defaults + the run's config
            tags = launch_tags({name: dict(resolved[name].config or {}) for name in ("storage", "networks")
                                if name in resolved})
            plan_context.instance.add_run_tags(plan_context.run_id, tags)
            return super().execute(plan_context, execution_plan)

    @dg.executor(name="celery", config_schema=CELERY_CONFIG, requirements=dg.multiple_process_executor_requirements())
    def celery_executor(init_context):
        config = init_context.executor_config
        return TaggingCeleryExecutor(broker=config.get("broker"), backend=config.get("backend"),
                                     config_source=config.get("config_source"), include=config.get("include"),
                                     retries=RetryMode.from_config(config["retries"]))

    return celery_executor
