"""The whole cluster on one machine, without Docker: PostgreSQL (the Dagster instance and MLflow's store), Redis (the
Celery broker), an MLflow server and `falco worker`s, each a process this module starts, records in
`<root>/cluster.json` (name, PID, what its command line holds) and stops by that PID. `make cluster-demo` and the
tests use it; `falco cluster down` stops what an interrupted run left (a PID whose command line no longer matches is
not touched).

PostgreSQL refuses to run as root: as root its data folder goes to a private folder under /tmp owned by the
`postgres` user, and its server runs as that user. The Debian packages (postgresql, redis-server) are installed
when missing, as root, as .ci/run installs Chromium.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from anon_core.errors import FalcoError
from orchestration.resources import PROJECT_ROOT

DEFAULT_ROOT = PROJECT_ROOT / ".cluster"
DAGSTER_YAML = PROJECT_ROOT / "deploy" / "cluster" / "dagster.yaml"
HOST = "127.0.0.1"
DEBIAN_PACKAGES = ("postgresql", "redis-server")
USER = "falco"  # the PostgreSQL role, trusted on 127.0.0.1 only
DATABASES = ("dagster", "mlflow")


def postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def servers_installed() -> bool:
    return all((postgres_bin("initdb"), postgres_bin("pg_ctl"), shutil.which("redis-server")))


def install_servers() -> None:
    """Debian's PostgreSQL and Redis, when missing (as root; otherwise one message with the command)."""
    if servers_installed():
        return
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES]
    if os.geteuid() != 0:
        raise FalcoError(f"PostgreSQL and Redis are not installed; run `sudo {' '.join(command)}` and try again")
    print("installing Debian's postgresql and redis-server (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait(ready, what: str, pid: int, log: Path, timeout: float = 120.0) -> None:
    """Until ready(); a FalcoError with the log's end when the process `pid` ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        if ready():
            return
        time.sleep(0.3)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
    why = f"did not start within {timeout:.0f} s" if _alive(pid) else "exited at start"
    raise FalcoError(f"{what} {why} (log: {log})\n{tail}")


# Paths a worker reads from its environment for the runs launched from the UI (orchestration.resources)
PATH_VARIABLES = ("FALCO_INPUT", "FALCO_PARAMS", "FALCO_MODELS")


def absolute_path_variables() -> dict[str, str]:
    """This process's PATH_VARIABLES that are set, as absolute paths (a worker starts in the cluster's root, where a
    relative one would name another file)."""
    return {name: os.path.abspath(os.path.expanduser(os.environ[name])) for name in PATH_VARIABLES
            if os.environ.get(name, "").strip()}


class LocalCluster:
    """The processes of one local cluster, recorded in `root/cluster.json`. `start()` starts the servers,
    `start_worker()` a worker, `stop()` everything recorded; `env()` is what a client or a worker needs."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(root).resolve()
        self.state_file = self.root / "cluster.json"
        self.logs = self.root / "logs"
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.ports: dict[str, int] = state.get("ports", {})
        self.processes: dict[str, dict] = state.get("processes", {})  # name -> {"pid", "match"}
        self.postgres_data: str | None = state.get("postgres_data")

    # -- what clients see ---------------------------------------------------------------------------------------------
    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def shared(self) -> Path:
        """Stands for the shared storage of a real cluster (NFS, an object-store mount): assets, MLflow artifacts."""
        return self.root / "shared"

    def postgres_url(self, database: str) -> str:
        # psycopg2 (what dagster-postgres installs): SQLAlchemy 2.1's plain postgresql:// asks for psycopg 3.
        return f"postgresql+psycopg2://{USER}@{HOST}:{self.ports['postgres']}/{database}"

    def env(self) -> dict[str, str]:
        return {"DAGSTER_HOME": str(self.dagster_home), "FALCO_DAGSTER_PG_URL": self.postgres_url("dagster"),
                "FALCO_BROKER_URL": f"redis://{HOST}:{self.ports['redis']}/0",
                "MLFLOW_TRACKING_URI": f"http://{HOST}:{self.ports['mlflow']}",
                # the shared storage: a run launched from the UI takes it from each worker's environment
                "FALCO_STORAGE": str(self.shared / "pipeline")}

    # -- starting -----------------------------------------------------------------------------------------------------
    def start(self) -> dict[str, str]:
        """PostgreSQL, Redis and the MLflow server, on free ports of 127.0.0.1; the Dagster home. Returns env()."""
        install_servers()
        for folder in (self.logs, self.shared, self.dagster_home):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DAGSTER_YAML, self.dagster_home / "dagster.yaml")
        self.ports = {name: free_port() for name in ("postgres", "redis", "mlflow")}
        self._save()
        self._start_postgres()
        self._start_redis()
        self._start_mlflow()
        return self.env()

    def _start_postgres(self) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        data = Path(tempfile.mkdtemp(prefix="falco-postgres-"))
        self.postgres_data = str(data)
        self._save()
        if as_postgres:
            shutil.chown(data, "postgres", "postgres")
        log = data / "postgres.log"  # where the postgres user can write (the folders above `root` may be private)
        subprocess.run([*as_postgres, postgres_bin("initdb"), "-D", str(data / "db"), "-U", USER, "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        options = f"-p {self.ports['postgres']} -k {data} -c listen_addresses={HOST} -c fsync=off"
        subprocess.run([*as_postgres, postgres_bin("pg_ctl"), "-D", str(data / "db"), "-l", str(log), "-o", options,
                        "-w", "-t", "60", "start"], check=True, stdout=subprocess.DEVNULL)
        pid = int((data / "db" / "postmaster.pid").read_text().split()[0])
        self._record("postgres", pid, "postgres")
        for database in DATABASES:
            subprocess.run([postgres_bin("createdb") or "createdb", "-h", HOST, "-p", str(self.ports["postgres"]),
                            "-U", USER, database], check=True)

    def _start_redis(self) -> None:
        folder = self.root / "redis"
        folder.mkdir(exist_ok=True)
        port = self.ports["redis"]
        pid = self._spawn("redis", ["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                                    "--appendonly", "no", "--dir", str(folder)], "redis-server")
        _wait(lambda: _redis_ping(port), "Redis", pid, self.logs / "redis.log", 30)

    def _start_mlflow(self) -> None:
        port = self.ports["mlflow"]
        # MLflow's artifact root: on the shared storage, or an object store (s3://bucket/path, with boto3 installed
        # and MLFLOW_S3_ENDPOINT_URL / AWS_* set for an S3-compatible one) named by FALCO_MLFLOW_ARTIFACTS.
        artifacts = os.environ.get("FALCO_MLFLOW_ARTIFACTS") or self.shared / "mlflow-artifacts"
        if not str(artifacts).startswith(("s3://", "gs://", "wasbs://")):
            Path(artifacts).mkdir(parents=True, exist_ok=True)
        pid = self._spawn("mlflow", [str(Path(sys.executable).with_name("mlflow")), "server",
                                     "--backend-store-uri", self.postgres_url("mlflow"),
                               "--artifacts-destination", str(artifacts), "--host", HOST, "--port", str(port),
                               "--workers", "1"], "mlflow")
        _wait(lambda: _http_ok(f"http://{HOST}:{port}/health"), "the MLflow server", pid, self.logs / "mlflow.log",
              180)

    def start_worker(self, queues: str, name: str, concurrency: int = 1, env: Mapping[str, str] | None = None) -> int:
        """`falco worker --queues QUEUES` named `name@<host>`, with env() and this process's path variables made
        absolute (a worker runs in `root`); returns its PID once it takes steps."""
        command = [str(Path(sys.executable).with_name("falco")), "worker", "--queues", queues, "--name", f"{name}@%h",
                   "--concurrency", str(concurrency)]
        pid = self._spawn(f"worker-{name}", command, "worker", env={**absolute_path_variables(), **self.env(),
                                                                    **(env or {})})
        log = self.logs / f"worker-{name}.log"
        _wait(lambda: " ready." in log.read_text(errors="replace"), f"worker {name}", pid, log, 120)
        return pid

    def _spawn(self, name: str, command: list[str], match: str, env: Mapping[str, str] | None = None) -> int:
        log = open(self.logs / f"{name}.log", "ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})}, start_new_session=True, cwd=self.root)
        log.close()
        self._record(name, process.pid, match)
        return process.pid

    def _record(self, name: str, pid: int, match: str) -> None:
        self.processes[name] = {"pid": pid, "match": match}
        self._save()

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = {"ports": self.ports, "processes": self.processes, "postgres_data": self.postgres_data}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    # -- stopping -----------------------------------------------------------------------------------------------------
    def pid(self, name: str) -> int | None:
        entry = self.processes.get(name)
        return entry["pid"] if entry and self._ours(entry) else None

    def kill(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Send `sig` to the process `name` and its group; wait until it is gone (SIGKILL after `timeout`)."""
        entry = self.processes.pop(name, None)
        self._save()
        if entry is None or not self._ours(entry):
            return
        pid = entry["pid"]
        _signal(pid, sig)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)

    def stop(self) -> list[str]:
        """Stop every recorded process (workers, the MLflow server, Redis, then PostgreSQL); returns their names."""
        order = sorted(self.processes, key=lambda n: (n == "postgres", n in ("redis", "mlflow"), n))
        for name in order:
            # PostgreSQL's fast shutdown is SIGINT to the postmaster; it ends its own children.
            self.kill(name, signal.SIGINT if name == "postgres" else signal.SIGTERM)
        if "postgres" not in order and (pid := self._unrecorded_postgres()):  # `up` stopped in `pg_ctl start`
            self._record("postgres", pid, "postgres")
            self.kill("postgres", signal.SIGINT)
            order.append("postgres")
        if self.postgres_data and Path(self.postgres_data).is_dir():
            shutil.rmtree(self.postgres_data, ignore_errors=True)
        self.postgres_data = None
        if self.state_file.exists():  # `down` where nothing was ever started leaves no state behind
            self._save()
        return order

    def _unrecorded_postgres(self) -> int | None:
        """The PID of a PostgreSQL server running on this cluster's data folder that was never recorded (its start
        was interrupted after the server came up), or None."""
        if not self.postgres_data:
            return None
        try:
            pid = int((Path(self.postgres_data) / "db" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) and "postgres" in _command_line(pid) else None

    def _ours(self, entry: dict) -> bool:
        return _alive(entry["pid"]) and entry["match"] in _command_line(entry["pid"])


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, just ended: reaped
            return False
    except ChildProcessError:  # not our child (or reaped already)
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat")
    try:  # a zombie (ended, not yet reaped by its parent) is gone for our purposes
        return state.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _signal(pid: int, sig: int) -> None:
    """To the process group the process leads (what _spawn starts), else to the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
