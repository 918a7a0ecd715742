"""The Dagster code location: `dagster dev -m orchestration.definitions` (or `make ui`).

Resources come from the environment (FALCO_STORAGE, FALCO_INPUT, FALCO_PROFILE, FALCO_DEVICE, FALCO_PARAMS), so
the UI and `falco pipeline` see the same storage and the same instance ($DAGSTER_HOME).
"""

import warnings

import dagster as dg

from orchestration.assets import anonymization, attribute_classifier, evaluation, fake_pool, real_data
from orchestration.io_manager import FalcoIOManager
from orchestration.jobs import ALL_JOBS, executor
from orchestration.resources import NetworksResource, StorageResource, networks_from_env, storage_from_env
from orchestration.tracking import MlflowResource

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)  # partitioned asset checks are a preview feature
    from orchestration.checks import ALL_CHECKS

ASSETS = dg.load_assets_from_modules([fake_pool, real_data, anonymization, attribute_classifier, evaluation])


def build_definitions(
    storage: StorageResource, networks: NetworksResource, mlflow: MlflowResource | None = None
) -> dg.Definitions:
    """mlflow: None tracks to $MLFLOW_TRACKING_URI, else to <project>/mlflow.db."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=ALL_JOBS,
        executor=executor,
        resources={"io_manager": FalcoIOManager(root=storage.root), "storage": storage, "networks": networks,
                   "mlflow": mlflow or MlflowResource()},
    )


defs = build_definitions(storage_from_env(), networks_from_env())
