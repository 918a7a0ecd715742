"""The Dagster code location: `dagster dev -m orchestration.definitions` (or `make ui`).

`defs` takes its resources from the environment (FALCO_STORAGE, FALCO_INPUT, FALCO_PROFILE, FALCO_DEVICE,
FALCO_PARAMS, FALCO_EXECUTOR), so the UI and a `falco pipeline` run with the same settings see the same storage
and, through $DAGSTER_HOME, the same instance. `falco pipeline` launches its jobs from `orchestration.graph` with
explicit settings instead, and never imports this module.
"""

from orchestration.graph import build_definitions
from orchestration.resources import networks_from_env, storage_from_env

defs = build_definitions(storage_from_env(), networks_from_env())
