"""What the pipeline tests share: a few real faces in a folder, a params.yaml made fast (tiny, 40 fakes, 2 steps,
shards of 3), the driver run against a given instance, and counts of what each run materialized."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import yaml
from PIL import Image

from orchestration.driver import run_pipeline
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import MlflowResource

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ("fake_pool", "fake_features", "real_images", "real_features", "real_inversions", "pairs",
          "anonymized_latents", "anonymized_images", "real_gallery", "attribute_pseudo_labels", "attribute_classifier",
          "baseline_metrics", "baseline_attributes", "evaluation_metrics", "per_image_privacy", "attribute_agreement",
          "anonymization_report")


def instance_at(home: Path) -> dg.DagsterInstance:
    """A persistent Dagster instance in `home` (created, telemetry off)."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


def write_faces(folder: Path, faces: np.ndarray, broken: bool = True) -> Path:
    """faces[i] as `Person A/img_<i>.png`, plus an empty `broken.jpg` (a rejected row) unless `broken` is false."""
    (folder / "Person A").mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(faces):
        Image.fromarray(face).save(folder / "Person A" / f"img_{i}.png")
    if broken:
        (folder / "broken.jpg").write_bytes(b"")
    return folder


def fast_params(path: Path, **changes) -> Path:
    """The project's params.yaml with tiny made fast; `changes` are top-level sections or profile keys to set
    (`checks={...}`, `variants={...}`, `tiny={"pool_size": 50}` merges into the tiny profile)."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = data["profiles"]["tiny"]
    tiny.update(pool_size=40, optimization={**tiny.get("optimization", {}), "steps": 2},
                inversion={"method": "optimization", "steps": 2})
    data["pipeline"]["profiles"]["tiny"].update(shard_size=3)
    data["evaluation"]["baselines"] = ["blur"]
    data["attribute_classifier"]["profiles"]["tiny"]["epochs"] = 1
    for key, value in changes.items():
        if key == "tiny":
            for k, v in value.items():
                tiny[k] = {**tiny.get(k, {}), **v} if isinstance(v, dict) else v
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def run(root: Path, instance: dg.DagsterInstance, variants=None, params: Path | None = None, **kw):
    """The driver on `root`/faces into `root`/store, tracked in `root`/mlflow.db."""
    storage = StorageResource(root=str(root / "store"), input_dir=str(root / "faces"))
    networks = NetworksResource(params_path=str(params or root / "params.yaml"), overrides=kw.pop("overrides", {}))
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return run_pipeline(storage, networks, variants, instance=instance, mlflow=mlflow,
                        log=kw.pop("log", lambda *_: None), **kw)


def materializations(instance: dg.DagsterInstance) -> Counter:
    """How many times each asset (partition) was materialized: {(asset, partition or None): count}."""
    counts: Counter = Counter()
    for name in ASSETS:
        for record in instance.fetch_materializations(dg.AssetKey(name), limit=10_000).records:
            counts[(name, record.partition_key)] += 1
    return counts


def made_since(before: Counter, after: Counter) -> dict[str, set]:
    """{asset: the partitions (None when unpartitioned) materialized between two `materializations` counts}."""
    made: dict[str, set] = {}
    for (name, partition), count in after.items():
        if count > before.get((name, partition), 0):
            made.setdefault(name, set()).add(partition)
    return made


def stopped_at_call(function, call: int, error: BaseException):
    """`function`, raising `error` at its `call`-th call instead: a stop (Ctrl-C, a crash) in the middle of a run."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise error
        return function(*args, **kwargs)

    return wrapped
