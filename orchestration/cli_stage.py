"""`falco stage NAME`: materialize one stage of the Dagster asset graph in-process (what `dvc repro` runs).

Each stage is an asset selection of orchestration/definitions.py; the assets it does not select are read from the
storage folder, where the stages before it wrote them (dvc.yaml declares those folders as deps and outs). Runs are
recorded in the Dagster instance at $DAGSTER_HOME, like `falco pipeline`. The `anonymize` stage also writes
`losses.csv` (mean loss per step, for `dvc plots`) and the `evaluate` stage `metrics.json` (FALCO's row of the
evaluation table, for `dvc metrics`), both in the storage root.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

STAGES: dict[str, tuple[str, ...]] = {
    "ingest": ("real_images",),
    "fake_pool": ("fake_pool",),
    "features": ("fake_features", "real_features"),
    "invert": ("real_inversions",),
    "pairs": ("pairs",),
    "anonymize": ("anonymized_latents", "anonymized_images"),
    "evaluate": ("attribute_classifier", "attribute_pseudo_labels", "evaluation_metrics", "anonymization_report"),
}
METRICS_FILE = "metrics.json"
LOSSES_FILE = "losses.csv"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stage", help="materialize one stage of the asset graph (the commands of dvc.yaml)")
    p.add_argument("name", choices=list(STAGES), metavar="NAME", help=", ".join(STAGES))
    p.add_argument("--input", type=Path, default=None, help="folder of real images (default: $FALCO_INPUT or "
                   "data/sample/images)")
    p.add_argument("--storage", type=Path, default=None, help="where asset values go (default: $FALCO_STORAGE or "
                   "outputs/pipeline)")
    p.add_argument("--params", type=Path, default=None, help="params.yaml with the defaults (default: $FALCO_PARAMS "
                   "or the project's)")
    p.add_argument("--profile", default=None, help="default: $FALCO_PROFILE or tiny")
    p.add_argument("--device", default=None, help="default: $FALCO_DEVICE or cpu")
    p.add_argument("--log-level", default="INFO", help="Dagster console log level (DEBUG shows every event)")
    p.set_defaults(run=run_stage)


def run_stage(args: argparse.Namespace) -> int:
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.resources import NetworksResource, StorageResource, networks_from_env, storage_from_env
    from orchestration.runner import dagster_instance

    env_storage, env_networks = storage_from_env(), networks_from_env()
    storage = StorageResource(
        root=str(args.storage.resolve()) if args.storage else env_storage.root,
        input_dir=str(args.input.resolve()) if args.input else env_storage.input_dir,
    )
    networks = NetworksResource(
        profile=args.profile or env_networks.profile,
        device=args.device or env_networks.device,
        params_path=str(args.params.resolve()) if args.params else env_networks.params_path,
    )
    if args.name == "ingest" and not Path(storage.input_dir).is_dir():
        print(f"falco: error: input folder {storage.input_dir} does not exist; run `falco sample-data data/sample` "
              "(or `dvc pull data.dvc`) or pass --input DIR", file=sys.stderr)
        return 2
    networks.params()  # a bad parameter file fails here, before any run
    defs = build_definitions(storage, networks)
    instance = dagster_instance()
    selection = dg.AssetSelection.assets(*STAGES[args.name])
    partitions = [None]
    if args.name == "anonymize":
        partitions = _sync_shards(instance, Path(storage.root))
        if not partitions:
            print("falco: error: no ok real image to anonymize (see real_images/all.parquet)", file=sys.stderr)
            return 1
    for partition in partitions:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=selection,
            partition_key=partition,
            instance=instance,
            resources=defs.resources,
            run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
            raise_on_error=False,
        )
        label = f"{args.name}{' ' + partition if partition else ''}"
        print(f"{label}: {'done' if result.success else 'FAILED'} (Dagster run {result.run_id})")
        if not result.success:
            return 1
        failed = [e.asset_check_key.name for e in result.get_asset_check_evaluations()
                  if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
        if failed:  # a failed ERROR check (the blocking privacy check) stops `dvc repro` before the next stage
            print(f"{label}: asset check(s) failed: {', '.join(sorted(set(failed)))}", file=sys.stderr)
            return 1
    if args.name == "anonymize":
        write_losses_csv(Path(storage.root))
    if args.name == "evaluate":
        write_metrics_json(Path(storage.root))
    return 0


def _sync_shards(instance, root: Path) -> list[str]:
    """The shards of the stored real_images table, registered in this instance (the ingest stage may have run
    against another $DAGSTER_HOME)."""
    import pandas as pd

    from orchestration.partitions import image_shards

    table = pd.read_parquet(root / "real_images" / "all.parquet")
    shards = sorted(s for s in table["shard"].fillna("").unique() if s)
    existing = set(instance.get_dynamic_partitions(image_shards.name))
    missing = [s for s in shards if s not in existing]
    if missing:
        instance.add_dynamic_partitions(image_shards.name, missing)
    return shards


def write_losses_csv(root: Path) -> Path:
    """`losses.csv`: one row per optimization step, the mean over all images of every loss term."""
    import numpy as np
    import pandas as pd

    from anon_core.data.image_io import write_bytes_atomic

    sums: dict[str, np.ndarray] = {}
    count = 0
    for path in sorted((root / "anonymized_latents").glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as data:
            n = len(data["row"])
            for key in data.files:
                if key.startswith("loss_"):
                    values = data[key]  # [steps, K]
                    sums[key[5:]] = sums.get(key[5:], 0) + values.sum(axis=1)
            count += n
    frame = pd.DataFrame({name: total / max(count, 1) for name, total in sums.items()})
    frame.insert(0, "step", np.arange(len(frame)))
    path = root / LOSSES_FILE
    write_bytes_atomic(path, frame.to_csv(index=False).encode())
    return path


def write_metrics_json(root: Path) -> Path:
    """`metrics.json`: the numeric columns of FALCO's row of the evaluation table (NaN left out)."""
    import pandas as pd

    from anon_core.data.image_io import write_bytes_atomic

    table = pd.read_parquet(root / "evaluation_metrics" / "all.parquet").set_index("method")
    row = table.loc["falco"] if "falco" in table.index else table.iloc[0]
    metrics = {}
    for key, value in row.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            metrics[str(key)] = number
    metrics["num_images"] = int(len(pd.read_parquet(root / "evaluation_metrics" / "per_image.parquet")))
    path = root / METRICS_FILE
    write_bytes_atomic(path, (json.dumps({"falco": metrics}, indent=2, sort_keys=True) + "\n").encode())
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m orchestration.cli_stage NAME`: the same as `falco stage NAME`."""
    parser = argparse.ArgumentParser(prog="falco")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["stage", *(sys.argv[1:] if argv is None else argv)])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
