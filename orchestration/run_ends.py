"""The MLflow run of a Dagster run launched outside falco's driver (the UI's Launchpad or Materialize, a re-execution,
`dagster job launch`) ends with the Dagster run's real status, through run status sensors that the daemon evaluates
(`make ui` and `dagster dev` start one; so does a cluster's `dagster-daemon`). Without them such a run's MLflow run
ended with its last step: FINISHED after a failed privacy check, or after one step failed while another finished.

The driver (`falco pipeline`, `falco stage`) ends its own runs itself (orchestration.driver: a Ctrl-C's run is
KILLED in MLflow where Dagster says FAILURE), and tags them `falco/launched_by`, so these sensors leave them alone.
"""

from __future__ import annotations

import dagster as dg

from orchestration.tracking import LAUNCHED_BY, MlflowResource
MLFLOW_STATUS = {dg.DagsterRunStatus.SUCCESS: "FINISHED", dg.DagsterRunStatus.FAILURE: "FAILED",
                 dg.DagsterRunStatus.CANCELED: "KILLED"}


def _run_end_sensor(run_status: dg.DagsterRunStatus, mlflow_status: str) -> dg.SensorDefinition:
    @dg.run_status_sensor(run_status=run_status, name=f"mlflow_run_end_{run_status.value.lower()}",
                          default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10,
                          description=f"Ends the MLflow run of a Dagster run that ended {run_status.value} as "
                                      f"{mlflow_status} (runs launched by `falco pipeline` end theirs themselves)")
    def end_mlflow_run(context: dg.RunStatusSensorContext, mlflow: MlflowResource):
        run = context.dagster_run
        if LAUNCHED_BY in run.tags:
            return dg.SkipReason(f"run {run.run_id[:8]} was launched by falco, which ended its MLflow run")
        mlflow.end_dagster_run(run.run_id, mlflow_status, context.log.warning, context.instance)
        return None

    return end_mlflow_run


RUN_END_SENSORS = [_run_end_sensor(status, mlflow_status) for status, mlflow_status in MLFLOW_STATUS.items()]
