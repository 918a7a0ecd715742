"""`falco worker` (a Celery worker of the `celery` executor) and `falco cluster up|down|demo` (the whole cluster on
this machine: orchestration.local_cluster)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from orchestration.cli_types import given_path, whole_number


def _queues(text: str) -> str:
    from orchestration.celery_queue import QUEUES

    names = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: queues are a comma-separated list of {', '.join(QUEUES)}")
    return ",".join(names)


def _run_worker(args: argparse.Namespace) -> int:
    from orchestration.celery_queue import make_celery_app

    if args.concurrency < 1:
        print("falco: error: --concurrency must be >= 1", file=sys.stderr)
        return 2
    app = make_celery_app()  # FalcoError (exit 2) without FALCO_BROKER_URL
    name = args.name or f"{args.queues.replace(',', '+')}-{os.getpid()}@%h"
    # One process taking one step at a time keeps its networks from step to step and dies with the step it runs; more
    # than one: that many pool processes, each keeping its own networks (no limit on the steps a process takes).
    # (solo's banner says the machine's CPU count as its concurrency unless told its one)
    pool = ["--pool", "solo"] if args.concurrency == 1 else ["--pool", "prefork"]
    pool += ["--concurrency", str(args.concurrency)]
    app.worker_main(["worker", "--queues", args.queues, "--hostname", name, *pool, "--loglevel", args.loglevel,
                     "--without-gossip", "--without-mingle"])
    return 0


def _run_cluster(args: argparse.Namespace) -> int:
    from orchestration.local_cluster import LocalCluster

    cluster = LocalCluster(args.root)
    if args.action == "down":
        stopped = cluster.stop()
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'} ({cluster.root})")
        return 0
    from orchestration.local_cluster import DEFAULT_ROOT

    down = "falco cluster down" + ("" if Path(args.root).resolve() == Path(DEFAULT_ROOT).resolve()
                                   else f" --root {args.root}")
    if cluster.processes:
        print(f"falco: error: a cluster is recorded in {cluster.state_file}; run `{down}` first", file=sys.stderr)
        return 2
    if args.action == "up":
        settings = _worker_settings()  # before anything starts: a bad params file would fail every UI run
        try:
            env = cluster.start()
            cluster.start_worker("cpu", "cpu")
            cluster.start_worker("gpu", "gpu")
        except BaseException:  # nothing half-started stays behind
            cluster.stop()
            raise
        print("cluster up: PostgreSQL, Redis, MLflow, one cpu and one gpu worker. In another shell:")
        for key, value in env.items():
            print(f"  export {key}={value}")
        print(f"  falco pipeline --executor celery ...    # `{down}` stops it all")
        print("`falco pipeline` hands its own settings to the workers. Runs launched from the UI take the workers' "
              "(this shell's): " + ", ".join(f"{k}={v}" for k, v in settings.items()) + "; start `dagster dev` "
              "with the same and FALCO_EXECUTOR=celery (a run launched with others stops at its first step, naming "
              "them).")
        return 0
    from orchestration.cluster_demo import run_demo

    return run_demo(cluster, Path(args.input).resolve(), args.profile)


def _worker_settings() -> dict[str, str]:
    """The settings the workers will give the runs launched from the UI (this shell's FALCO_* variables, paths made
    absolute), checked: a params file that cannot be read is a FalcoError now, not a failure of every such run."""
    from anon_core.errors import FalcoError
    from orchestration.resources import networks_from_env, storage_from_env

    storage, networks = storage_from_env(), networks_from_env()
    if networks.params_path and not Path(networks.params_path).is_file():
        raise FalcoError(f"FALCO_PARAMS = {os.environ['FALCO_PARAMS']!r}: {networks.params_path} is not a file; export "
                         "the params.yaml the workers should read for runs launched from the UI, or unset it (the "
                         "project's)")
    networks.params()
    networks.pipeline()
    if not Path(storage.input_dir).is_dir():
        print(f"falco: warning: FALCO_INPUT {storage.input_dir} is not a folder: runs launched from the UI will "
              "find no images (`falco pipeline --input` gives its own)", file=sys.stderr)
    return {"FALCO_INPUT": storage.input_dir, "FALCO_PROFILE": networks.profile, "FALCO_DEVICE": networks.device,
            "FALCO_PARAMS": str(networks.params_file)}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("worker", help="a Celery worker taking the steps of the `celery` executor (README: "
                              "Cluster); needs FALCO_BROKER_URL and the instance's DAGSTER_HOME")
    p.add_argument("--queues", type=_queues, default="cpu", help="gpu, cpu or cpu,gpu (default: cpu)")
    p.add_argument("--concurrency", type=whole_number, default=1,
                   help="steps at once (default 1: one process; the networks load once and stay for later steps)")
    p.add_argument("--name", default=None, help="worker name, as the run's events show it (default: "
                   "<queues>-<pid>@<host>)")
    p.add_argument("--loglevel", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(run=_run_worker)

    p = subparsers.add_parser("cluster", help="PostgreSQL, Redis, an MLflow server and workers on this machine "
                              "(`make cluster-demo`, `make cluster-down`)")
    p.add_argument("action", choices=("up", "down", "demo"),
                   help="up: start it (and print the environment to use it); down: stop what is recorded; demo: up, "
                        "the demo graph through the workers, its checks, down")
    p.add_argument("--root", type=given_path, default=None,
                   help="where its state, logs and shared storage go (default: "
                   ".cluster/ in the project)")
    p.add_argument("--input", default="data/sample/images", help="demo: the images (default: data/sample/images)")
    p.add_argument("--profile", default="tiny", help="demo: network profile (default: tiny)")
    p.set_defaults(run=lambda args: _run_cluster(_with_root(args)))


def _with_root(args: argparse.Namespace) -> argparse.Namespace:
    from orchestration.local_cluster import DEFAULT_ROOT

    args.root = args.root or DEFAULT_ROOT
    return args
