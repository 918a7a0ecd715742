"""What needs no server: the Celery settings both sides read from the environment, the errors a user meets before
a cluster exists, and `falco cluster down`'s rule of stopping only the processes it started."""

import json
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
    from orchestration.definitions import build_definitions
    from orchestration.resources import networks_from_env, storage_from_env

    monkeypatch.setenv("FALCO_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("FALCO_EXECUTOR", "celery")
    defs = build_definitions(storage_from_env(), networks_from_env())
    assert defs.resolve_job_def("anonymize").executor_def.name == "celery"
    monkeypatch.delenv("FALCO_EXECUTOR")
    defs = build_definitions(storage_from_env(), networks_from_env())
    assert defs.resolve_job_def("anonymize").executor_def.name != "celery"
