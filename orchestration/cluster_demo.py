"""`make cluster-demo`: the demo graph through the Celery executor on a local cluster, and the checks that it ran
where it should have: every step on a worker of its queue, every Dagster run tracked in the MLflow server, the
anonymized images written. Stops everything it started, whatever happens."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

SUBMITTED = re.compile(r'Submitting celery task for step "(?P<step>[^"]+)" to queue "(?P<queue>[^"]+)"')


def step_placements(instance: dg.DagsterInstance, run_ids: Iterable[str]) -> list[dict]:
    """Where each step of the runs went: {run_id, step, queue, workers}, from the runs' engine events (the executor
    records the queue it submitted to, each worker the name it ran the step under: a step handed to a second worker
    after the first died lists both)."""
    from dagster._core.events import DagsterEventType

    placements = []
    for run_id in run_ids:
        steps: dict[str, dict] = {}
        for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records:
            entry = record.event_log_entry
            found = SUBMITTED.search(entry.message or "")
            if found:
                steps.setdefault(found["step"], {"run_id": run_id, "step": found["step"], "workers": []})["queue"] = \
                    found["queue"]
                continue
            data = entry.dagster_event.engine_event_data if entry.dagster_event else None
            worker = data.metadata.get("Celery worker") if data is not None and data.metadata else None
            if worker is not None and entry.step_key:
                steps.setdefault(entry.step_key, {"run_id": run_id, "step": entry.step_key, "workers": []})[
                    "workers"].append(worker.value)
        placements.extend(steps.values())
    return placements


def misplaced(placements: list[dict]) -> list[str]:
    """Steps that ran on no worker, or on one not named after their queue (`falco worker --name <queue>@...`)."""
    return [f"{p['run_id'][:8]} {p['step']} (queue {p.get('queue')}, workers {p['workers'] or 'none'})"
            for p in placements
            if not p["workers"] or not all(w.split("@")[0].split("-")[0] == p.get("queue") for w in p["workers"])]


def untracked(instance: dg.DagsterInstance, run_ids: Iterable[str], tracking_uri: str) -> list[str]:
    """Dagster runs that materialized something and have no run in the MLflow server's `falco` experiment."""
    from mlflow import MlflowClient

    from orchestration.tracking import DAGSTER_RUN_TAG

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("falco")
    tracked = set()
    if experiment is not None:
        for run in client.search_runs([experiment.experiment_id], max_results=5000):
            tracked.add(run.data.tags.get(DAGSTER_RUN_TAG))
    missing = []
    for run_id in run_ids:
        made = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        if made and run_id not in tracked:
            missing.append(run_id)
    return missing


def run_demo(cluster, input_dir: Path, profile: str) -> int:
    from orchestration.driver import run_pipeline
    from orchestration.resources import NetworksResource, StorageResource
    from orchestration.tracking import MlflowResource

    if not input_dir.is_dir():
        print(f"falco: error: {input_dir} does not exist; run `falco sample-data data/sample` first", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        print(f"starting PostgreSQL, Redis, the MLflow server and 2 workers under {cluster.root} ...", flush=True)
        env = cluster.start()
        cluster.start_worker("cpu", "cpu")
        cluster.start_worker("gpu", "gpu")
        os.environ.update(env)
        print(f"cluster up in {time.perf_counter() - start:.1f} s: " + ", ".join(f"{k}={v}" for k, v in env.items()),
              flush=True)
        instance = dg.DagsterInstance.get()
        storage = StorageResource(root=str(cluster.shared / "pipeline"), input_dir=str(input_dir))
        networks = NetworksResource(profile=profile, device="cpu", overrides={"pipeline.executor": "celery"})
        mlflow = MlflowResource(tracking_uri=env["MLFLOW_TRACKING_URI"])
        summary = run_pipeline(storage, networks, instance=instance, mlflow=mlflow)
        placements = step_placements(instance, summary.run_ids)
        problems = [f"failed: {label}: {summary.errors.get(label, '')}" for label in summary.failed]
        problems += [f"not on a worker of its queue: {step}" for step in misplaced(placements)]
        problems += [f"no MLflow run in the server for Dagster run {run_id}"
                     for run_id in untracked(instance, summary.run_ids, env["MLFLOW_TRACKING_URI"])]
        images = sorted((cluster.shared / "pipeline" / "anonymized_images").rglob("*.png"))
        if not images:
            problems.append("no anonymized image was written")
        on_gpu = sum(p.get("queue") == "gpu" for p in placements)
        print(f"{len(summary.run_ids)} Dagster runs, {len(placements)} steps through Celery ({on_gpu} on the gpu "
              f"worker, {len(placements) - on_gpu} on the cpu worker), {len(images)} anonymized images in "
              f"{cluster.shared / 'pipeline'}")
        for problem in problems:
            print(f"CHECK FAILED: {problem}")
        print(f"cluster demo {'FAILED' if problems else 'passed'} in {time.perf_counter() - start:.1f} s")
        return 1 if problems else 0
    finally:
        stopped = cluster.stop()
        print(f"stopped {', '.join(stopped)}")
