"""`falco runs compare`: the evaluation runs of an MLflow experiment side by side, with the parameters that differ.

Reads what `orchestration.tracking` logged: every nested run of the asset `evaluation_metrics` is one evaluation
of the whole anonymized set. Like `mlflow runs compare` in the MLflow UI, but in the terminal and limited to the
parameters that changed, so the cause of a metric's change is on the same line.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

EVALUATION_ASSET = "evaluation_metrics"


def compare_table(runs: list, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per run (oldest first): run name, start time, Dagster run id, the params whose values differ
    between the runs, then the metrics (`metrics`, or every metric the runs logged)."""
    if not runs:
        return pd.DataFrame()
    params = pd.DataFrame([r.data.params for r in runs])
    differing = [c for c in sorted(params.columns) if params[c].fillna("<unset>").nunique() > 1]
    names = sorted({k for r in runs for k in r.data.metrics}) if not metrics else list(metrics)
    rows = []
    for run, (_, p) in zip(runs, params.iterrows()):
        rows.append({
            "run": run.info.run_name or run.info.run_id[:8],
            "mlflow_run_id": run.info.run_id,
            "started": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M:%S"),
            "dagster_run_id": run.data.tags.get("dagster_run_id", "")[:8],
            **{f"param:{c}": p.get(c) for c in differing},
            **{m: run.data.metrics.get(m, float("nan")) for m in names},
        })
    return pd.DataFrame(rows)


def find_evaluation_runs(tracking_uri: str | None, experiment: str) -> list:
    """The experiment's `evaluation_metrics` runs, oldest first. Raises FalcoError when there is no experiment."""
    from anon_core.errors import FalcoError
    from orchestration.tracking import ASSET_TAG, MlflowResource

    client = MlflowResource(tracking_uri=tracking_uri, experiment=experiment).client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise FalcoError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}; run `falco pipeline` first, "
                         "or pass --experiment NAME / --tracking-uri URI")
    return client.search_runs([found.experiment_id], filter_string=f"tags.{ASSET_TAG} = '{EVALUATION_ASSET}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)


def _run_compare(args: argparse.Namespace) -> int:
    runs = find_evaluation_runs(args.tracking_uri, args.experiment)
    if not runs:
        print(f"no {EVALUATION_ASSET} runs in experiment {args.experiment!r}", file=sys.stderr)
        return 1
    frame = compare_table(runs, args.metric)
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    elif args.format == "markdown":
        print(frame.to_markdown(index=False))
    else:
        with pd.option_context("display.max_columns", None, "display.width", 250, "display.max_colwidth", 40):
            print(frame.to_string(index=False))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    runs = subparsers.add_parser("runs", help="MLflow runs of the pipeline")
    sub = runs.add_subparsers(dest="runs_command", required=True)
    p = sub.add_parser("compare", help="evaluation runs side by side with the parameters that differ")
    p.add_argument("--experiment", default="falco", help="MLflow experiment (default: falco)")
    p.add_argument("--metric", action="append", default=None, metavar="M",
                   help="metric to show (repeatable; default: every metric the runs logged)")
    p.add_argument("--format", choices=("table", "csv", "markdown"), default="table")
    p.add_argument("--tracking-uri", default=None,
                   help="default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db")
    p.set_defaults(run=_run_compare)
