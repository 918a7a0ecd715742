"""What needs no server: the Celery settings both sides read from the environment, the errors a user meets before
a cluster exists, and `falco cluster down`'s rule of stopping only the processes it started."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from orchestration.celery_queue import GPU_STEP, celery_settings, executor_config
from orchestration.cli import main
from orchestration.local_cluster import LocalCluster, _alive


def test_the_worker_and_the_executor_need_the_broker_and_say_so(monkeypatch, capsys):
    monkeypatch.delenv("FALCO_BROKER_URL", raising=False)
    assert main(["worker", "--queues", "gpu"]) == 2
    assert "FALCO_BROKER_URL" in capsys.readouterr().err
    monkeypatch.setenv("FALCO_BROKER_URL", "amqp://guest@localhost//")
    assert main(["worker"]) == 2
    assert "must be a Redis URL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["worker", "--queues", "gpus"])
    assert exit_.value.code == 2 and "cpu, gpu" in capsys.readouterr().err


def test_steps_are_acknowledged_late_with_the_visibility_timeout_of_the_environment(monkeypatch):
    monkeypatch.setenv("FALCO_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("FALCO_VISIBILITY_TIMEOUT", "600")
    settings = celery_settings()
    assert settings["task_acks_late"] and settings["task_reject_on_worker_lost"]
    assert settings["broker_transport_options"]["visibility_timeout"] == 600
    assert settings["task_default_queue"] == "cpu" and GPU_STEP["dagster-celery/queue"] == "gpu"
    assert executor_config()["backend"] == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("FALCO_VISIBILITY_TIMEOUT", "soon")
    from anon_core.errors import FalcoError

    with pytest.raises(FalcoError, match="FALCO_VISIBILITY_TIMEOUT"):
        celery_settings()


def test_a_celery_pipeline_without_a_broker_stops_before_any_run(monkeypatch, tmp_path, capsys, lfw_faces):
    from pipeline_helpers import write_faces

    monkeypatch.delenv("FALCO_BROKER_URL", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    write_faces(tmp_path / "faces", lfw_faces[:2])
    code = main(["pipeline", "--input", str(tmp_path / "faces"), "--storage", str(tmp_path / "store"),
                 "--executor", "celery"])
    assert code == 2 and "FALCO_BROKER_URL" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_a_celery_pipeline_whose_broker_is_down_says_so(monkeypatch, tmp_path, capsys, lfw_faces):
    from orchestration.local_cluster import free_port
    from pipeline_helpers import write_faces

    monkeypatch.setenv("FALCO_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    write_faces(tmp_path / "faces", lfw_faces[:2])
    code = main(["pipeline", "--input", str(tmp_path / "faces"), "--storage", str(tmp_path / "store"),
                 "--executor", "celery"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Redis broker" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


def test_cluster_down_stops_only_the_processes_it_started(tmp_path, capsys):
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # `ours` as recorded by LocalCluster; `stranger` has a PID that was recorded for another program (reused).
        (tmp_path / "cluster.json").write_text(json.dumps({"ports": {}, "processes": {
            "worker-cpu": {"pid": ours.pid, "match": "time.sleep(60)"},
            "redis": {"pid": stranger.pid, "match": "redis-server"}}}))
        assert main(["cluster", "down", "--root", str(tmp_path)]) == 0
        ours.wait(timeout=10)
        assert "worker-cpu" in capsys.readouterr().out
        time.sleep(0.2)
        assert _alive(stranger.pid)
        assert LocalCluster(tmp_path).processes == {}
        assert main(["cluster", "down", "--root", str(tmp_path)]) == 0
        assert "nothing was running" in capsys.readouterr().out
    finally:
        for process in (ours, stranger):
            process.send_signal(signal.SIGKILL)
            process.wait()


def test_the_ui_code_location_sends_its_runs_to_the_workers_with_falco_executor(monkeypatch):
    from orchestration.graph import build_definitions
    from orchestration.resources import networks_from_env, storage_from_env

    monkeypatch.setenv("FALCO_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("FALCO_EXECUTOR", "celery")
    defs = build_definitions(storage_from_env(), networks_from_env())
    assert defs.resolve_job_def("anonymize").executor_def.name == "celery"
    monkeypatch.delenv("FALCO_EXECUTOR")
    defs = build_definitions(storage_from_env(), networks_from_env())
    assert defs.resolve_job_def("anonymize").executor_def.name != "celery"


def test_a_worker_whose_own_falco_variables_are_broken_still_runs_falco_pipelines_steps(tmp_path, monkeypatch):
    """`falco cluster up` in a shell with FALCO_PARAMS=params.yaml (relative) gave that to its workers, which start in
    the cluster's folder: every later `falco pipeline --executor celery` failed on the workers ("parameter file
    params.yaml not found"), whatever its own --params, because rebuilding its job imported the code location,
    which read the worker's variables. The job is rebuilt from `orchestration.graph`, which reads none."""
    monkeypatch.chdir(tmp_path)
    code = ("import sys\n"
            "from orchestration.graph import job_for\n"
            "config = {'storage': {'root': sys.argv[1], 'input_dir': sys.argv[1]}, 'networks': {'profile': 'tiny'},"
            " 'mlflow': {}}\n"
            "assert job_for('prepare', config).name == 'prepare'\n"
            "assert 'orchestration.definitions' not in sys.modules\n")
    env = {**os.environ, "FALCO_PARAMS": "params.yaml", "FALCO_INPUT": "nowhere"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_relative_path_variables_name_the_files_of_the_folder_they_were_set_in(tmp_path, monkeypatch):
    """A relative FALCO_INPUT/FALCO_STORAGE/FALCO_PARAMS reached other processes (a worker started in the cluster's
    folder, the runs `falco pipeline` launches) as it was, naming other files there."""
    from orchestration.local_cluster import absolute_path_variables
    from orchestration.resources import networks_from_env, storage_from_env

    monkeypatch.chdir(tmp_path)
    for name, value in (("FALCO_INPUT", "faces"), ("FALCO_STORAGE", "store"), ("FALCO_PARAMS", "p.yaml")):
        monkeypatch.setenv(name, value)
    storage, networks = storage_from_env(), networks_from_env()
    assert (storage.input_dir, storage.root, networks.params_path) == \
        (str(tmp_path / "faces"), str(tmp_path / "store"), str(tmp_path / "p.yaml"))
    assert absolute_path_variables() == {"FALCO_INPUT": str(tmp_path / "faces"), "FALCO_PARAMS": str(tmp_path / "p.yaml")}


def test_cluster_up_refuses_a_params_file_that_is_not_there_before_starting_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FALCO_PARAMS", "params.yaml")
    assert main(["cluster", "up", "--root", str(tmp_path / "cluster")]) == 2
    assert f"FALCO_PARAMS = 'params.yaml': {tmp_path / 'params.yaml'} is not a file" in capsys.readouterr().err
    assert not (tmp_path / "cluster").exists()


def test_a_step_whose_resources_differ_from_the_settings_its_run_was_launched_with_stops_naming_them(tmp_path,
                                                                                                   lfw_faces):
    """The celery executor tags a run with its launcher's settings (orchestration.launch_settings); a worker started
    with other FALCO_* variables rebuilt the run's resources from those, and read another input without a word. Here
    the tag stands for a launcher whose FALCO_INPUT was another folder."""
    from orchestration.graph import build_definitions
    from orchestration.launch_settings import tag_name
    from orchestration.resources import NetworksResource, StorageResource
    from orchestration.tracking import MlflowResource
    from pipeline_helpers import fast_params, instance_at, write_faces

    write_faces(tmp_path / "faces", lfw_faces[:1])
    storage = StorageResource(root=str(tmp_path / "store"), input_dir=str(tmp_path / "faces"))
    networks = NetworksResource(params_path=str(fast_params(tmp_path / "params.yaml")))
    defs = build_definitions(storage, networks, MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    with instance_at(tmp_path / "home") as instance:
        result = defs.resolve_job_def("observe_settings").execute_in_process(
            instance=instance, raise_on_error=False,
            tags={tag_name("storage", "input_dir"): "/data/other", tag_name("networks", "profile"): "tiny"})
        assert not result.success
        message = " ".join(str(getattr(e.event_specific_data, "error", "")) for e in result.all_events
                           if e.event_type_value in ("STEP_FAILURE", "RESOURCE_INIT_FAILURE"))
        assert f"FALCO_INPUT (storage.input_dir) is '{tmp_path / 'faces'}' here but '/data/other' where the run was " \
               "launched" in message
        assert "FALCO_PROFILE" not in message  # the same on both sides
        same = defs.resolve_job_def("observe_settings").execute_in_process(  # the device is where a step runs:
            instance=instance, tags={tag_name("storage", "input_dir"): str(tmp_path / "faces"),  # a gpu worker's
                                     tag_name("networks", "device"): "cuda"})                  # may differ
        assert same.success


def test_cluster_down_stops_a_postgres_server_whose_start_was_interrupted(tmp_path, capsys):
    """`falco cluster up` killed while `pg_ctl start` waited recorded the data folder but not the server's PID:
    `down` said "nothing was running", deleted the folder under the running server and left it holding its port."""
    data = tmp_path / "falco-postgres-x"
    (data / "db").mkdir(parents=True)
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "postgres", "-D", str(data)],
                              start_new_session=True)  # stands for the postmaster: its command line names postgres
    try:
        (data / "db" / "postmaster.pid").write_text(f"{server.pid}\n{data / 'db'}\n")
        (tmp_path / "cluster.json").write_text(json.dumps({"ports": {}, "processes": {},
                                                           "postgres_data": str(data)}))
        assert main(["cluster", "down", "--root", str(tmp_path)]) == 0
        assert server.wait(timeout=30) is not None
        assert "stopped: postgres" in capsys.readouterr().out
        assert not data.exists() and LocalCluster(tmp_path).postgres_data is None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
