"""A step that runs longer than the visibility timeout, on the real cluster (orchestration.local_cluster).

Redis hands an unacknowledged step out again once the timeout has passed, even while a live worker runs it; the
worker took the copy once it had finished the step and ran it again, as often as each run outlasted the timeout (in
CI, at a 30 s timeout on a busy machine, a 10 s step ran four times, 151 s, 109 s, 42 s..., while the run waited).
Here the steps that take seconds outlast a 2 s timeout and are handed out again: each must run once (before: those
ran twice), the copies dropped by the worker (Celery's `worker_deduplicate_successful_tasks`)."""

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from orchestration.local_cluster import LocalCluster, servers_installed
from pipeline_helpers import fast_params, write_faces

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not servers_installed(), reason="Debian's postgresql and redis-server are not "
                                 "installed (.ci/run and `make cluster-demo` install them)")]

VISIBILITY_S = 2


def test_a_step_longer_than_the_visibility_timeout_runs_once_and_the_run_ends(tmp_path, lfw_faces, monkeypatch):
    write_faces(tmp_path / "faces", lfw_faces[:4], broken=False)
    fast_params(tmp_path / "params.yaml", tiny={"optimization": {"steps": 20}})
    monkeypatch.setenv("FALCO_VISIBILITY_TIMEOUT", str(VISIBILITY_S))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        for key, value in cluster.start().items():
            monkeypatch.setenv(key, value)
        cluster.start_worker("cpu", "cpu")
        cluster.start_worker("gpu", "gpu")
        command = [str(Path(sys.executable).with_name("falco")), "stage", "{stage}", "--input",
                   str(tmp_path / "faces"), "--storage", str(cluster.shared / "store"), "--params",
                   str(tmp_path / "params.yaml"), "--variant", "default", "--executor", "celery"]
        for stage in ("prepare", "anonymize"):
            done = subprocess.run([a.replace("{stage}", stage) for a in command], env=os.environ.copy(),
                                  capture_output=True, text=True, timeout=600)  # before: never ended
            assert done.returncode == 0, done.stdout + done.stderr
        logs = {name: (cluster.logs / f"worker-{name}.log").read_text(errors="replace") for name in ("cpu", "gpu")}
    finally:
        cluster.stop()
    received = Counter(re.findall(r"Task execute_plan\[([0-9a-f-]+)\] received", logs["cpu"] + logs["gpu"]))
    ran = Counter(re.findall(r"Task execute_plan\[([0-9a-f-]+)\] succeeded", logs["cpu"] + logs["gpu"]))
    assert set(ran) == set(received) and max(ran.values()) == 1, ran  # every step ran, none twice
    assert max(received.values()) > 1, received  # though steps of seconds were handed out again (then dropped)
