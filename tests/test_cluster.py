"""The cluster with real servers on 127.0.0.1 (orchestration.local_cluster): the Dagster instance and the MLflow
server on PostgreSQL, the Celery executor through Redis to a `cpu` and a `gpu` worker (the "gpu" one on the CPU).

The graph through the workers gives the same codes and images as the in-process run; steps tagged for the GPU ran on
the gpu worker (the run's events say so), which built its networks once; the MLflow runs are in the server with
their tags; a gpu worker killed with SIGKILL in the middle of a shard loses nothing: a new worker takes the shard
once the visibility timeout passes, and the outputs equal the uninterrupted run's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from orchestration.celery_queue import queues_without_worker
from orchestration.cluster_demo import misplaced, step_placements, untracked
from orchestration.local_cluster import LocalCluster, servers_installed
from orchestration.resources import DEFAULT_INPUT, NetworksResource, StorageResource
from orchestration.tracking import MlflowResource
from conftest import torch_threads
from pipeline_helpers import fast_params, instance_at, run, write_faces

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not servers_installed(), reason="Debian's postgresql and redis-server are not "
                                 "installed (.ci/run and `make cluster-demo` install them)")]

# A killed worker's step is handed on after it; a step that runs longer is handed out again while it runs (Celery on
# Redis): at 30 s, a machine busy with other work made a 10 s step take 151 s, the gpu worker ran it four times over
# and then died inside Celery ("cannot unpack non-iterable ExceptionInfo"), and the run waited for a worker.
VISIBILITY_S = 90
STAGES = ("prepare", "anonymize")
GPU_STEPS = {"fake_pool", "fake_features", "real_images", "real_features", "real_inversions", "anonymized_latents",
             "anonymized_images"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FALCO_VISIBILITY_TIMEOUT", str(VISIBILITY_S))
        # the workers' outputs are compared bit for bit with the in-process run's: with two threads, MKL's sgemm
        # rounds some of dlib's small products differently from run to run (docs/anonymize.md), and 30 steps carry
        # that into other codes; the killed-worker test failed so on a busy machine
        env.setenv("OMP_NUM_THREADS", "1")
        try:
            for key, value in cluster.start().items():
                env.setenv(key, value)
            cluster.start_worker("cpu", "cpu")
            cluster.start_worker("gpu", "gpu")
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, lfw_faces):
    """7 faces in shards of 4, 30 steps (a shard takes long enough to be killed in), and the in-process run of
    them: the reference."""
    root = tmp_path_factory.mktemp("inputs")
    write_faces(root / "faces", lfw_faces[:7], broken=False)
    fast_params(root / "params.yaml", tiny={"optimization": {"steps": 30}})
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("shard_size: 3", "shard_size: 4"))
    with instance_at(root / "home") as instance, torch_threads(1):  # as the workers
        summary = run(root, instance, ["default"], stages=STAGES)
    assert not summary.failed, summary.errors
    return root


def _through_celery(cluster: LocalCluster, inputs: Path, store: str):
    from orchestration.driver import run_pipeline

    storage = StorageResource(root=str(cluster.shared / store), input_dir=str(inputs / "faces"))
    networks = NetworksResource(params_path=str(inputs / "params.yaml"), overrides={"pipeline.executor": "celery"})
    mlflow = MlflowResource(tracking_uri=cluster.env()["MLFLOW_TRACKING_URI"])
    instance = dg.DagsterInstance.from_config(str(cluster.dagster_home))
    summary = run_pipeline(storage, networks, ["default"], instance=instance, mlflow=mlflow, stages=STAGES,
                           log=lambda *_: None)
    return instance, summary


@pytest.fixture(scope="module")
def celery_run(cluster, inputs):
    instance, summary = _through_celery(cluster, inputs, "store")
    assert not summary.failed, summary.errors
    return instance, summary


def _outputs(store: Path) -> dict[str, object]:
    """Every file the anonymization wrote: the codes' arrays, the images' bytes."""
    found = {}
    for path in sorted((store / "anonymized_latents").rglob("*.npz")):
        with np.load(path) as data:
            found[str(path.relative_to(store))] = {k: data[k] for k in data.files}
    for path in sorted((store / "anonymized_images").rglob("*.png")):
        found[str(path.relative_to(store))] = path.read_bytes()
    return found


def _assert_same_outputs(store: Path, reference: Path) -> None:
    mine, theirs = _outputs(store), _outputs(reference)
    assert sorted(mine) == sorted(theirs) and any(k.endswith(".npz") for k in mine)
    for name, value in theirs.items():
        if isinstance(value, dict):
            assert value.keys() == mine[name].keys()
            for key in value:
                np.testing.assert_array_equal(mine[name][key], value[key], err_msg=f"{name}:{key}")
        else:
            assert mine[name] == value, name


def test_the_graph_through_celery_equals_the_in_process_run(cluster, inputs, celery_run):
    _assert_same_outputs(cluster.shared / "store", inputs / "store")


def test_the_workers_take_the_clusters_shared_storage_for_runs_launched_from_the_ui(cluster):
    """`falco cluster up` printed FALCO_STORAGE for the UI's shell but did not give it to the workers: a run launched
    from the UI read and wrote the project's local outputs/pipeline on them, not the cluster's storage."""
    for name in ("worker-cpu", "worker-gpu"):
        environ = Path(f"/proc/{cluster.pid(name)}/environ").read_bytes().split(b"\0")
        assert f"FALCO_STORAGE={cluster.shared / 'pipeline'}".encode() in environ, name


def test_a_ui_run_launched_with_other_settings_than_the_workers_stops_naming_them(cluster, inputs, tmp_path):
    """A run launched from the code location (the UI's path) with FALCO_INPUT set where it was launched ran on
    workers started without it: they read their own input and wrote the cluster's storage, and the run succeeded.
    The celery executor tags the run with the launcher's settings, and the workers' steps stop on the difference."""
    env = {**os.environ, **cluster.env(), "FALCO_EXECUTOR": "celery", "FALCO_INPUT": str(inputs / "faces"),
           "FALCO_STORAGE": str(cluster.shared / "pipeline")}
    done = subprocess.run([str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m",
                           "orchestration.definitions", "-j", "observe_settings"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    instance = dg.DagsterInstance.from_config(str(cluster.dagster_home))
    [last] = instance.get_runs(limit=1)
    assert last.job_name == "observe_settings" and last.tags["falco/storage.input_dir"] == str(inputs / "faces")
    errors = " ".join(e.user_message for e in instance.all_logs(last.run_id) if e.level >= 40)  # ERROR lines
    assert f"FALCO_INPUT (storage.input_dir) is '{DEFAULT_INPUT}' here but '{inputs / 'faces'}' where the run was " \
           "launched" in errors, done.stdout[-3000:] + done.stderr[-3000:]
    observed = {e.step_key for e in instance.all_logs(last.run_id) if e.dagster_event and
                e.dagster_event.event_type_value == "ASSET_OBSERVATION"}
    assert "input_images" not in observed  # the workers' own input was not read (steps that use no storage may run)


def test_gpu_steps_ran_on_the_gpu_worker_which_built_its_networks_once(cluster, celery_run):
    instance, summary = celery_run
    placements = step_placements(instance, summary.run_ids)
    assert misplaced(placements) == []
    ran = {p["step"]: p for p in placements}
    assert GPU_STEPS <= set(ran)
    for step, placement in ran.items():
        expected = "gpu" if step in GPU_STEPS else "cpu"
        assert placement["queue"] == expected and placement["workers"][0].startswith(f"{expected}@"), placement
    on_cpu = {s for s, p in ran.items() if p["queue"] == "cpu"}
    assert "pairs" in on_cpu and {"ingest_settings", "variant_settings"} <= on_cpu  # the settings' observations
    assert queues_without_worker() == []  # both workers answer
    log = (cluster.logs / "worker-gpu.log").read_text()
    assert log.count("networks of profile tiny built") == 1  # for every one of its steps


def test_mlflow_runs_land_in_the_server_with_their_tags(cluster, celery_run):
    from mlflow import MlflowClient

    instance, summary = celery_run
    uri = cluster.env()["MLFLOW_TRACKING_URI"]
    assert untracked(instance, summary.run_ids, uri) == []
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("falco")
    latents = client.search_runs([experiment.experiment_id], "tags.asset_key = 'anonymized_latents'")
    shards = {r.data.tags["shard"] for r in latents if r.data.tags["dagster_run_id"] in summary.run_ids}
    assert shards == {"shard-00000", "shard-00001"}
    for r in latents:
        assert r.data.tags["variant"] == "default"
        assert r.data.tags["partition"] == f"{r.data.tags['shard']}|default"
        assert r.info.status == "FINISHED"
    # The artifacts went through the server to its artifact root on the shared storage.
    ours = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("dagster_run_id") in summary.run_ids]
    logged = [(r.info.run_id, a.path) for r in ours for a in client.list_artifacts(r.info.run_id)]
    assert logged
    root = cluster.shared / "mlflow-artifacts" / experiment.experiment_id
    assert all((root / run_id / "artifacts" / path).exists() for run_id, path in logged)


def test_a_gpu_worker_killed_mid_shard_loses_nothing(cluster, inputs, celery_run):
    instance = dg.DagsterInstance.from_config(str(cluster.dagster_home))
    env = {**os.environ, **cluster.env()}
    command = [str(Path(sys.executable).with_name("falco")), "stage", "{stage}", "--input", str(inputs / "faces"),
               "--storage", str(cluster.shared / "killed"), "--params", str(inputs / "params.yaml"),
               "--variant", "default", "--executor", "celery", "--fresh"]
    prepare = subprocess.run([a.replace("{stage}", "prepare") for a in command], env=env, capture_output=True,
                             text=True, timeout=600)
    assert prepare.returncode == 0, prepare.stderr
    since = time.time()
    anonymize = subprocess.Popen([a.replace("{stage}", "anonymize") for a in command], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_id = _wait_for_step_on(instance, "anonymized_latents", "gpu@", since)
        time.sleep(1.0)
        cluster.kill("worker-gpu", signal.SIGKILL)
        assert "gpu" in queues_without_worker()  # what `falco pipeline` warns about before its runs
        cluster.start_worker("gpu", "gpu-2")
        output, _ = anonymize.communicate(timeout=600)
    finally:
        anonymize.kill()
    assert anonymize.returncode == 0, output
    killed = [p for p in step_placements(instance, [run_id]) if p["step"] == "anonymized_latents"]
    assert [w.split("@")[0] for w in killed[0]["workers"]] == ["gpu", "gpu-2"]  # taken again by the new worker
    assert (f"step anonymized_latents was handed out again after FALCO_VISIBILITY_TIMEOUT ({VISIBILITY_S} s): the "
            "worker that took it died") in (cluster.logs / "worker-gpu-2.log").read_text(errors="replace")
    assert misplaced(step_placements(instance, [run_id])) == []
    _assert_same_outputs(cluster.shared / "killed", inputs / "store")


def _wait_for_step_on(instance: dg.DagsterInstance, step: str, worker: str, since: float, timeout: float = 300) -> str:
    """The id of the run, started after `since`, whose `step` a worker named `worker...` began."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in instance.get_run_records(dg.RunsFilter(job_name="anonymize",
                                                             created_after=_utc(since))):
            for placement in step_placements(instance, [record.dagster_run.run_id]):
                if placement["step"] == step and any(w.startswith(worker) for w in placement["workers"]):
                    return record.dagster_run.run_id
        time.sleep(0.2)
    raise AssertionError(f"no worker {worker} began {step} within {timeout} s")


def _utc(seconds: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, tz=timezone.utc)
