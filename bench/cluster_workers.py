"""Two workers against one on the demo graph's shards, through the Celery executor of a local cluster (PostgreSQL,
Redis, an MLflow server: orchestration.local_cluster), measured side by side in one run.

The demo's 101 sample faces make 7 shards (tiny: 16 per shard). `prepare` runs once; then the `anonymize` stage
(every shard's codes, images and checks, all 7 partition runs in flight) is re-made with one worker, then with two.
On this machine there is no GPU, so every worker serves both queues (`--queues cpu,gpu`) and the shards' "gpu"
steps run on the CPU; both set-ups get the machine's cores (OMP/torch threads = cores / workers).

    .venv/bin/python bench/cluster_workers.py [--input data/sample/images] [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=ROOT / "data" / "sample" / "images")
    parser.add_argument("--steps", type=int, default=None, help="optimization steps (default: tiny's 50)")
    parser.add_argument("--workers", default="1,2", help="the set-ups to compare, in order")
    args = parser.parse_args()
    if not args.input.is_dir():
        sys.exit(f"{args.input} does not exist: run `falco sample-data data/sample` first")

    import dagster as dg

    from orchestration.driver import run_pipeline
    from orchestration.local_cluster import LocalCluster
    from orchestration.resources import NetworksResource, StorageResource
    from orchestration.tracking import MlflowResource

    cores = os.cpu_count() or 1
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="falco-bench-cluster-")))
    try:
        env = cluster.start()
        os.environ.update(env)
        instance = dg.DagsterInstance.get()
        storage = StorageResource(root=str(cluster.shared / "pipeline"), input_dir=str(args.input.resolve()))
        networks = NetworksResource(profile="tiny", overrides={"pipeline.executor": "celery",
                                                               "pipeline.max_concurrent": 64})
        variant = f"steps{args.steps}" if args.steps else "default"  # a variant named by its value
        mlflow = MlflowResource(tracking_uri=env["MLFLOW_TRACKING_URI"])

        def stage(name: str, fresh: bool) -> tuple[float, int]:
            start = time.perf_counter()
            summary = run_pipeline(storage, networks, [variant], instance=instance, mlflow=mlflow, fresh=fresh,
                                   stages=(name,), log=lambda *_: None)
            if summary.failed:
                sys.exit(f"{name} failed: {summary.errors}")
            return time.perf_counter() - start, len(summary.ran)

        def with_workers(count: int):
            threads = str(max(1, cores // count))
            names = [f"cpu-{count}w{i}" for i in range(count)]
            for name in names:
                cluster.start_worker("cpu,gpu", name, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
            return names, threads

        names, _ = with_workers(1)
        seconds, _ = stage("prepare", fresh=False)
        print(f"prepare (fake pool, real data, pairs) on one worker: {seconds:.1f} s", flush=True)
        for name in names:
            cluster.kill(f"worker-{name}")

        rows = []
        for count in (int(c) for c in args.workers.split(",")):
            names, threads = with_workers(count)
            seconds, runs = stage("anonymize", fresh=True)
            rows.append((count, threads, runs, seconds))
            print(f"{count} worker(s), {threads} thread(s) each: anonymize stage ({runs} partition runs) in "
                  f"{seconds:.1f} s", flush=True)
            for name in names:
                cluster.kill(f"worker-{name}")
    finally:
        cluster.stop()

    print("\n| workers | threads each | partition runs | anonymize stage (s) | shards/min | speed-up vs first |")
    print("| --- | --- | --- | --- | --- | --- |")
    for count, threads, runs, seconds in rows:
        print(f"| {count} | {threads} | {runs} | {seconds:.1f} | {60 * runs / seconds:.2f} | "
              f"{rows[0][3] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
