"""A margin sweep as variants of one graph vs. independent runs of the whole graph, measured side by side in one run.

A: `run_pipeline` for the variants m0, m0.5, m0.9 into one storage and one Dagster instance: the fake pool, the real
   data, the pairs, the pseudo-labels, the classifier and the baselines are made once and shared.
B: three independent runs, one per margin, each into its own storage and instance: everything is made three times,
   which is what the earlier global run fingerprint did whenever a parameter changed.
Then, on A's state: the same sweep again (everything up to date) and the sweep with one more margin (m0.7).

Prints the seconds of each, the ratio B / A, and per variant the mean identity similarity after optimization and
the dlib re-identification rate, from A's stored results. Everything runs in this process on the same networks
(built once before the clock starts), so the ratio measures the work, not start-up.

    .venv/bin/python bench/sweep.py [--input data/sample/images] [--steps N] [--pool-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MARGINS = ("m0", "m0.5", "m0.9")


def _pipeline(root: Path, input_dir: Path, variants: list[str], overrides: dict):
    import dagster as dg

    from orchestration.driver import run_pipeline
    from orchestration.resources import NetworksResource, StorageResource
    from orchestration.tracking import MlflowResource

    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    storage = StorageResource(root=str(root / "store"), input_dir=str(input_dir))
    networks = NetworksResource(overrides=overrides)
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    start = time.perf_counter()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        summary = run_pipeline(storage, networks, variants, instance=instance, mlflow=mlflow, log=lambda *_: None,
                               log_level="WARNING")
    seconds = time.perf_counter() - start
    if summary.failed:
        raise SystemExit(f"runs failed in {root}: {summary.failed}")
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=ROOT / "data" / "sample" / "images")
    parser.add_argument("--steps", type=int, default=None, help="optimization steps (default: params.yaml's)")
    parser.add_argument("--pool-size", type=int, default=None, help="fakes (default: params.yaml's, 1000 for tiny)")
    args = parser.parse_args()
    if not args.input.is_dir():
        from anon_core.data.sample import build_sample_dataset

        build_sample_dataset(args.input.parent)
    overrides = {k: v for k, v in {"optimization.steps": args.steps, "pool_size": args.pool_size}.items()
                 if v is not None}
    from orchestration.resources import NetworksResource

    NetworksResource().networks()  # built once, before any clock starts
    work = Path(tempfile.mkdtemp(prefix="falco-sweep-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    print(f"{sum(p.is_file() for p in args.input.rglob('*'))} files in {args.input}; work in {work}")

    sweep, summary = _pipeline(work / "sweep", args.input, list(MARGINS), overrides)
    print(f"A  sweep {', '.join(MARGINS)} in one graph: {sweep:7.1f} s  ({len(summary.ran)} runs)")
    independent = []
    for margin in MARGINS:
        seconds, _ = _pipeline(work / f"alone-{margin}", args.input, [margin], overrides)
        independent.append(seconds)
        print(f"B  {margin} alone, everything made again: {seconds:7.1f} s")
    print(f"B / A = {sum(independent):.1f} s / {sweep:.1f} s = {sum(independent) / sweep:.2f}x")
    again, summary = _pipeline(work / "sweep", args.input, list(MARGINS), overrides)
    print(f"A again, nothing changed: {again:.1f} s ({len(summary.ran)} runs, {len(summary.skipped)} up to date)")
    more, summary = _pipeline(work / "sweep", args.input, [*MARGINS, "m0.7"], overrides)
    print(f"A plus m0.7: {more:.1f} s ({len(summary.ran)} runs: {', '.join(summary.ran)})")

    store = work / "sweep" / "store"
    metrics = json.loads((store / "anonymization_report" / "metrics.json").read_text())
    for variant in (*MARGINS, "m0.7"):
        similarity = np.concatenate([np.load(p)["identity_similarity"]
                                     for p in sorted((store / "anonymized_latents" / variant).glob("*.npz"))])
        print(f"{variant:>5}: mean identity similarity {similarity.mean():6.3f}, dlib top-1 re-identification "
              f"{metrics[variant]['reid/dlib/top1_rate']:.3f}")


if __name__ == "__main__":
    main()
