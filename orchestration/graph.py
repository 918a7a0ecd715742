"""The asset graph's Dagster definitions from explicit settings: `build_definitions` (what the code location and the
tests build), and `job_for`, the job `falco pipeline` launches, rebuilt from its settings in every process its
executor starts (a Celery worker included). Nothing here reads the environment, so importing it on a worker cannot
fail or change a run over that worker's own FALCO_* variables; the code location (`orchestration.definitions`) does.
"""

import warnings
from typing import Any

import dagster as dg

from orchestration.console_log import console_logger
from orchestration.io_manager import FalcoIOManager
from orchestration.jobs import build_executor, jobs_for
from orchestration.log_tails import start_log_tails_in_their_own_group
from orchestration.resources import NetworksResource, StorageResource
from orchestration.run_ends import RUN_END_SENSORS
from orchestration.step_process import end_with_parent
from orchestration.tracking import MlflowResource

with warnings.catch_warnings():  # observable source assets are a beta, partitioned asset checks a preview feature
    warnings.simplefilter("ignore", dg.BetaWarning)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    from orchestration.assets import anonymization, evaluation, fake_pool, photos, real_data, report, settings
    from orchestration.checks import ALL_CHECKS

ASSETS = [*settings.ALL_SETTINGS, *dg.load_assets_from_modules([fake_pool, real_data, anonymization, evaluation,
                                                                  report, photos])]


def build_definitions(
    storage: StorageResource, networks: NetworksResource, mlflow: MlflowResource | None = None
) -> dg.Definitions:
    """mlflow: None tracks to $MLFLOW_TRACKING_URI, else to <project>/mlflow.db."""
    pipeline = networks.pipeline()  # read and checked once
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=jobs_for(pipeline["executor"]),
        sensors=RUN_END_SENSORS,
        executor=build_executor(pipeline["executor"], pipeline["max_concurrent"]),
        resources={"io_manager": FalcoIOManager(root=storage.root), "storage": storage, "networks": networks,
                   "mlflow": mlflow or MlflowResource()},
        loggers={"console": console_logger},
    )


def definitions_for(config: dict[str, Any]) -> dg.Definitions:
    """Definitions from the plain settings `orchestration.driver.PipelineConfig.to_dict()` gives."""
    return build_definitions(StorageResource(**config["storage"]), NetworksResource(**config["networks"]),
                             MlflowResource(**config["mlflow"]))


def job_for(name: str, config: dict[str, Any]) -> dg.JobDefinition:
    """The job `name` with the resources of `config` (dagster.build_reconstructable_job's reconstructor), in every
    process that runs its steps; there, a Ctrl-C does not reach Dagster's log mirrors (orchestration.log_tails), and
    a step's own process ends with the falco process that started it (orchestration.step_process)."""
    start_log_tails_in_their_own_group()
    end_with_parent()
    return definitions_for(config).resolve_job_def(name)

