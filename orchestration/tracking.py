"""MLflow tracking of the Dagster assets: one MLflow run per Dagster run, one nested run per materialization.

Follows the layout of `dagster-mlflow` (a resource that opens the run of the current Dagster run, found by a
`dagster_run_id` tag) but talks to `mlflow.MlflowClient` with an explicit tracking URI instead of MLflow's global
"active run", so parallel steps and tests never share state. MLflow is imported lazily: loading the Dagster
definitions does not import it.

Every nested run carries the provenance tags (house rule 10): Dagster run id, asset key, partition, code version,
git commit, the input read (`input_dir`, its `data_version`: the hash of its files that the `input_images`
observation recorded last, and `dvc_md5`: what the `.dvc` file covering it records), sha256 of each weight file used
("seeded" for seeded profiles), profile and device. Images that show real faces are only logged when `log_real_faces` is true.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
import numpy as np
from dagster._core.errors import DagsterExecutionInterruptedError
import pandas as pd

from orchestration.resources import PROJECT_ROOT, NetworksResource

DAGSTER_RUN_TAG = "dagster_run_id"
ASSET_TAG = "asset_key"
PARTITION_TAG = "partition"
VARIANT_TAG = "variant"
SHARD_TAG = "shard"
SHARDS_TAG = "num_shards"  # an evaluation's: it read the shards shard-00000 .. of its variant, this many
METHOD_TAG = "method"  # a baseline's name on its run
LAUNCHED_BY = "falco/launched_by"  # Dagster run tag: "<host>:<pid>" of the driver process that executes the run
RESTORED_AT_TAG = "falco.restored_at"
"""On the runs of a value put back (`dvc checkout`, `dvc exp apply`) and recorded again (orchestration.restored): when,
in ms since the epoch. From then on the run is the current one of its asset and partition, as if just made
(`current_since`): `falco runs compare` showed another experiment's evaluation, made later, beside the report of the
one put back."""
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3 opens an experiment in its GenAI view (traces) unless it is tagged as model development, where the runs
# table and the comparison of runs are.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MODEL_TRAINING_VIEW = "workflowType=machine_learning"  # MLflow 3.17's UI opens in its GenAI view without it
MLFLOW_UI = "http://127.0.0.1:5000"  # what `make mlflow-ui` serves for the default SQLite store
# With a tracking server MLflow prints two links per run it ends (dozens per pipeline); `falco pipeline` prints one.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
DEFAULT_DB = PROJECT_ROOT / "mlflow.db"
DEFAULT_EXPERIMENT = "falco"
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")  # the characters MLflow accepts in metric/param names


def current_since(run) -> int:
    """When an MLflow run's value became the current one (ms): its start, or when it was put back (RESTORED_AT_TAG)."""
    return max(run.info.start_time or 0, int(run.data.tags.get(RESTORED_AT_TAG) or 0))


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b": "value"}; lists and scalars become strings (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def metric_name(name: str) -> str:
    return _METRIC_NAME.sub("_", name)


@lru_cache(maxsize=1)
def _recorded_in(instance: dg.DagsterInstance, dagster_run_id: str) -> set[tuple[str, str]]:
    """(asset, partition or "") of every materialization Dagster recorded in a run."""
    records = instance.all_logs(dagster_run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    events = [record.dagster_event for record in records]
    return {(event.asset_key.to_user_string(), event.partition or "")
            for event in events if event is not None and event.asset_key is not None}


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """`git rev-parse HEAD` of the project, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


INPUT_TAGS = ("input_dir", "data_version", "dvc_md5", "labels_sha256")  # which input a run read; `falco runs compare`
# checks them


def _latest_observation(instance: dg.DagsterInstance, asset: str):
    record = instance.get_latest_data_version_record(dg.AssetKey(asset), is_source=True)
    return record.asset_observation if record is not None else None


# `dvc exp run` names its experiment to each stage's command in these variables; the driver tags its Dagster runs
# with them (`dvc_experiment_tags`), and every MLflow run of such a run carries them without the prefix
DVC_EXPERIMENT_TAGS = {"DVC_EXP_NAME": "falco/dvc_experiment", "DVC_EXP_BASELINE_REV": "falco/dvc_baseline_rev"}


def dvc_experiment_tags(environ: Mapping[str, str]) -> dict[str, str]:
    """The Dagster run tags naming the DVC experiment a command runs in (none outside `dvc exp run`)."""
    return {tag: environ[name] for name, tag in DVC_EXPERIMENT_TAGS.items() if environ.get(name)}


def _dvc_experiment(context: dg.AssetExecutionContext) -> dict[str, str]:
    """The MLflow tags of the DVC experiment the step's run belongs to (`dvc_experiment`, `dvc_baseline_rev`)."""
    return _dvc_tags(_run_tags(context))


def _dvc_tags(run_tags: Mapping[str, str]) -> dict[str, str]:
    return {tag.removeprefix("falco/"): run_tags[tag] for tag in DVC_EXPERIMENT_TAGS.values() if tag in run_tags}


def _parent_tags(variant: str | None, shard: str | None, run_tags: Mapping[str, str]) -> dict[str, str]:
    """The tags of a Dagster run's MLflow run besides its id: its variant, shard and DVC experiment."""
    return {**_dvc_tags(run_tags), **({VARIANT_TAG: variant} if variant else {}),
            **({SHARD_TAG: shard} if shard else {})}


def input_provenance(instance: dg.DagsterInstance) -> dict[str, str]:
    """The input a step read, as the last observations in `instance` recorded it: `input_images`' folder, its data
    version (the hash of every file's path and sha256, so it names exactly the images read) and the md5 that DVC
    records for it ("not tracked by DVC" when no `.dvc` file covers it); `ingest_settings`' labels CSV's sha256 ("none"
    without one: the folder's own identities), which sets the identities that pairing and the pseudonym figures use.
    "unobserved" when nothing observed them (an asset materialized on its own, outside `falco pipeline` and the UI's
    jobs)."""
    provenance = dict.fromkeys(INPUT_TAGS, "unobserved")
    images = _latest_observation(instance, "input_images")
    if images is not None:
        provenance |= {"input_dir": str(getattr(images.metadata.get("input_dir"), "value", "unobserved")),
                       "data_version": images.tags.get("dagster/data_version", "unobserved"),
                       "dvc_md5": str(getattr(images.metadata.get("dvc_md5"), "value", "unobserved"))}
    ingest = _latest_observation(instance, "ingest_settings")
    labels = getattr(ingest.metadata.get("labels_sha256"), "value", None) if ingest is not None else None
    if labels is not None:  # the observation's metadata holds each value as JSON
        provenance["labels_sha256"] = json.loads(labels) or "none"
    return provenance


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    from anon_core.model_store import sha256_file

    return sha256_file(Path(path))


def weight_hashes(networks: NetworksResource) -> dict[str, str]:
    """{file name: sha256} of the weight files the profile uses that exist ({"all": "seeded"} stands for the
    seeded networks), plus dlib's descriptor file where it is the identity network."""
    from anon_core.profiles import get_profile

    spec = get_profile(networks.profile)
    weights = networks.weights or spec.default_weights
    files: dict[str, Path] = {}
    if weights == "seeded":
        hashes = {"all": "seeded"}
    else:
        from anon_core import model_store

        hashes = {}
        files = {name: model_store.model_path(name) for name in model_store.profile_weights(networks.profile)}
    if spec.identity_network == "dlib":
        from anon_core.networks.dlib_resnet import DLIB_MODEL_FILE, default_dlib_model_path

        files[DLIB_MODEL_FILE] = default_dlib_model_path()
    for name, path in files.items():
        if path.is_file():
            stat = path.stat()
            hashes[name] = _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)
    return hashes


@dataclass
class AssetRun:
    """The nested MLflow run of one materialization; log through it, then put `metadata` on the asset."""

    client: Any  # mlflow.MlflowClient
    run_id: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    log_real_faces: bool
    log_per_image: bool = False
    ui_url: str | None = None  # the MLflow UI's address, for links to the run
    skipped: list[str] = field(default_factory=list)  # artefacts withheld (real faces, per-image tables)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_resolved(self, requested: Any, resolved: Any) -> None:
        """Log, as `resolved.<name>`, each setting of `resolved` (a FalcoParams) that differs from the `requested` one
        logged when the run opened: what `auto` meant on this device (batch size, amp, resize form). MLflow keeps a
        logged parameter's first value, so the request stays as the user wrote it and both can be compared."""
        asked, used = flatten(requested.to_dict()), flatten(resolved.to_dict())
        differing = {f"resolved.{k}": v for k, v in used.items() if asked.get(k) != v}
        if differing:
            self.log_params(differing)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Finite values only (MLflow cannot compare NaN); names are made MLflow-safe."""
        self.log_histories({k: [v] for k, v in metrics.items()}, first_step=step)

    def log_histories(self, histories: dict[str, Any], first_step: int = 0) -> None:
        """name -> per-step values; step i is logged as step `first_step + i`."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, first_step + i)
                 for k, values in histories.items() for i, v in enumerate(np.asarray(values, float).ravel())
                 if math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)

    def log_image(self, png: bytes, artifact_file: str, real_faces: bool = False) -> None:
        """A PNG; one that shows real faces is withheld unless the resource's `log_real_faces` is true."""
        if real_faces and not self.log_real_faces:
            self.skipped.append(artifact_file)
            return
        self.log_bytes(png, artifact_file)

    def log_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        self.log_bytes(frame.to_csv(index=False).encode(), artifact_file)

    def log_per_image_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        """A table with one row per image, only when the resource's `log_per_image` is true, and then with its file
        and person names replaced by their hashes (`hashed_names`)."""
        if not self.log_per_image:
            self.skipped.append(artifact_file)
            return
        self.log_table(hashed_names(frame), artifact_file)

    @property
    def url(self) -> str | None:
        if not self.ui_url:
            return None
        return f"{self.ui_url}/#/experiments/{self.experiment_id}/runs/{self.run_id}?{MODEL_TRAINING_VIEW}"

    @property
    def metadata(self) -> dict[str, dg.MetadataValue]:
        meta = {"mlflow_run_id": dg.MetadataValue.text(self.run_id),
                "mlflow_parent_run_id": dg.MetadataValue.text(self.parent_run_id)}
        if self.url:
            meta["mlflow_run"] = dg.MetadataValue.url(self.url)
        return meta


NAME_COLUMNS = ("name", "input", "image", "output", "identity")  # file paths and person names


def hashed_names(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each name column's values replaced by the first 16 hex digits of their SHA-256: rows still join
    across runs (one file hashes alike everywhere) but name no one. Whoever can guess a name (an LFW person) can
    recompute its hash, so these are pseudonyms, not anonymous."""
    out = frame.copy()
    for column in NAME_COLUMNS:
        if column in out.columns:
            out[column] = [v if pd.isna(v) else hashlib.sha256(str(v).encode()).hexdigest()[:16] for v in out[column]]
    return out


def end_runs(client, run_ids: list[str], status: str, warn) -> None:
    """End MLflow runs as `status` where a step failed or was stopped (`ended_or_warned`)."""
    with ended_or_warned(client, status, warn):
        for run_id in run_ids:
            client.set_terminated(run_id, status)


@contextmanager
def ended_or_warned(client, status: str, warn):
    """Around recording a failed or stopped end in MLflow: a tracking store that cannot take it (down, locked) is one
    `warn` line, so the failure or the stop is what the user sees; the runs stay RUNNING there."""
    from mlflow.exceptions import MlflowException

    drop_pooled_connections(client)  # the stop may have landed inside a query
    try:
        yield
    except MlflowException as error:
        warn(f"MLflow did not record the runs as {status}: {str(error).splitlines()[0]}")


def drop_pooled_connections(client) -> None:
    """Close the SQLite connections MLflow keeps for reuse. A stop (Ctrl-C, SIGTERM) among the rows of a query leaves
    that connection inside its read, and a write reusing it failed with "database is locked" after a 20 s wait; new
    connections write beside such a read (the store keeps a write-ahead log, `mlflow_store`). Stores other than
    SQLAlchemy's (a server) have no engine: nothing to do."""
    engine = getattr(getattr(getattr(client, "_tracking_client", None), "store", None), "engine", None)
    if engine is not None:
        engine.dispose()


def _short_reason(text: str) -> str:
    """An MLflow client error in a few words: a connection's own cause ("Connection refused", "Read timed out", a
    name that does not resolve) rather than urllib3's retry wrapper around it, cut at MLflow's URL; else its first
    sentence, at most 200 characters, cut between words."""
    caused = re.search(r"\(Caused by \w+\((.*)\)\)\s*$", text, re.S)
    if caused:
        inner = caused.group(1).rsplit("): ", 1)[-1]
        errno = re.search(r"\w+Error\(\d+, '([^']+)'\)", inner)  # ProtocolError(('Connection aborted.', ...))
        return "no answer: " + (errno.group(1) if errno else inner.strip("'\""))
    first = text.split(". ")[0]
    return first if len(first) <= 200 else first[:200].rsplit(" ", 1)[0] + " ..."


class MlflowResource(dg.ConfigurableResource):
    """Where the MLflow runs go. Call `ensure_experiment()` once before parallel steps start (the runner does)."""

    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db
    experiment: str | None = None  # None: $MLFLOW_EXPERIMENT_NAME, else "falco"
    artifact_location: str | None = None  # None: `mlruns/` beside a sqlite database (<project>/mlruns by default);
    # a server picks its own
    log_real_faces: bool = False  # privacy by default: images of real faces never leave the storage
    log_per_image: bool = False  # per-image tables (names hashed) go to MLflow only when true
    ui: str | None = MLFLOW_UI  # the MLflow UI serving a SQLite store, for the links in Dagster's metadata

    def uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"

    def experiment_name(self) -> str:
        return self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT

    def ui_url(self) -> str | None:
        """Where a browser finds the runs: the server itself, `ui` for a file store (`make mlflow-ui` by default)."""
        uri = self.uri()
        if uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
        return self.ui.rstrip("/") if self.ui else None

    def client(self):
        from mlflow import MlflowClient

        from orchestration.mlflow_store import ready_sqlite_store

        ready_sqlite_store(self.uri())  # a SQLite store is made whole before anything uses it
        return MlflowClient(tracking_uri=self.uri())

    def check_store(self):
        """The experiment as the store holds it (an MLflow Experiment, or None when there is none yet), read with one
        try and a 15 s timeout (MLflow's defaults retry an unreachable server for minutes); FalcoError in one line when
        the store cannot be used: a server that does not answer, a malformed URI, a store MLflow refuses. Commands ask
        it once before their work, so a wrong address stops them at once; later requests keep MLflow's retries."""
        from anon_core.errors import FalcoError

        uri = self.uri()
        quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
        before = {name: os.environ.get(name) for name in quick}
        os.environ.update({name: value for name, value in quick.items() if before[name] is None})  # the user's win
        try:
            found = self.client().get_experiment_by_name(self.experiment_name())
        except FalcoError:  # the store's own diagnosis (mlflow_store: a file that is not an MLflow database)
            raise
        except Exception as err:  # MlflowException, a refused URI scheme, the database driver's own errors
            reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise FalcoError(f"cannot use the MLflow store {uri}: {_short_reason(reason)}; start that server, "
                             "or set MLFLOW_TRACKING_URI (falco runs: --tracking-uri) to a sqlite:///PATH database or "
                             "the http(s):// address of a running MLflow server") from None
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
        if found is not None and found.lifecycle_stage == "deleted":  # MLflow refuses runs in it, step by step
            raise FalcoError(f"the MLflow experiment {found.name!r} (id {found.experiment_id}) at {uri} was deleted; "
                             f"restore it (MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id "
                             f"{found.experiment_id}) or use another one (MLFLOW_EXPERIMENT_NAME=NAME; falco runs: "
                             "--experiment NAME)")
        return found

    def experiment_url(self) -> str | None:
        """The experiment's page in the MLflow UI (see `ui_url`), or None when no UI address is known."""
        ui = self.ui_url()
        return f"{ui}/#/experiments/{self.ensure_experiment()}?{MODEL_TRAINING_VIEW}" if ui else None

    def _artifact_location(self) -> str | None:
        if self.artifact_location:
            return Path(self.artifact_location).resolve().as_uri()
        uri = self.uri()
        if uri.startswith("sqlite:///"):  # next to the database: <project>/mlruns for the default one
            return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
        return None  # a server (or another store) picks its own

    def ensure_experiment(self) -> str:
        """The experiment's id, created if missing (idempotent, safe against a concurrent creator)."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        found = client.get_experiment_by_name(self.experiment_name())
        if found is not None:
            if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older version: MLflow 3 would open it as GenAI
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        try:
            return client.create_experiment(self.experiment_name(), artifact_location=self._artifact_location(),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # another process created it in between
            found = client.get_experiment_by_name(self.experiment_name())
            if found is None:
                raise
            return found.experiment_id

    def parent_run(self, dagster_run_id: str, name: str | None = None, start_time: int | None = None,
                   tags: Mapping[str, str] | None = None) -> str:
        """The MLflow run of a Dagster run (tag `dagster_run_id`), created on first use (named `name`, started at
        `start_time` ms, the Dagster run's start, with `tags` besides)."""
        client = self.client()
        experiment_id = self.ensure_experiment()
        lock = Path(tempfile.gettempdir()) / f"falco-mlflow-{hashlib.sha1(self.uri().encode()).hexdigest()[:12]}.lock"
        with lock.open("w") as handle:  # steps of one run in parallel processes on this host create one parent
            fcntl.flock(handle, fcntl.LOCK_EX)
            runs = client.search_runs([experiment_id], filter_string=f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}'",
                                      order_by=["attributes.start_time ASC"])
            parents = [r for r in runs if PARENT_TAG not in r.data.tags]
            if parents:
                return parents[0].info.run_id
            run = client.create_run(experiment_id, start_time=start_time, run_name=name or f"dagster-{dagster_run_id[:8]}",
                                    tags={DAGSTER_RUN_TAG: dagster_run_id, "git_commit": git_commit(), **(tags or {})})
            return run.info.run_id

    @contextmanager
    def asset_run(
        self, context: dg.AssetExecutionContext, networks: NetworksResource, params: Any = None,
        method: str | None = None, asset: dg.AssetKey | None = None, shown_variants: Sequence[str] = (),
    ) -> Iterator[AssetRun]:
        """A nested run `<asset> <variant> <shard>` (or `<asset> <method>` for one of several methods an asset
        evaluates) under the Dagster run's MLflow run `<job> <variant> <shard>`, tagged with its provenance and
        with `params` (a FalcoParams or a dict) logged. It starts when the Dagster step started (its STEP_START
        event); assets open it before their work, so MLflow shows it RUNNING while they work, and it ends when the
        block exits: FINISHED, FAILED, or KILLED where Ctrl-C or SIGTERM stopped the work.
        `asset`: which output of a multi-asset the run is about (default: the asset being materialized);
        `shown_variants`: variants whose settings it logs or shows without reading them (`settings.check_observed`)."""
        from orchestration.assets.settings import check_observed
        from orchestration.partitions import check_run_partition, split_key

        check_run_partition(context)
        check_observed(context, networks, shown_variants)  # before a run is opened for work recorded as another's
        client = self.client()
        experiment_id = self.ensure_experiment()
        key = asset or context.asset_key
        asset = key.to_user_string()
        partition = str(context.partition_key) if context.has_partition_key else ""
        variant, shard = split_key(partition or None, context.assets_def.partitions_def)
        where = " ".join(p for p in (variant, shard) if p)
        job, run_id = _job_and_run(context)
        step_start, run_start = _started_ms(context)
        dvc_tags = _dvc_experiment(context)
        parent = self.parent_run(run_id, f"{job} {where}".strip(), run_start,
                                 _parent_tags(variant, shard, _run_tags(context)))
        # The driver ends a run it launched with the Dagster run's end, a killed one's next driver as KILLED: until
        # then it is RUNNING (ended with each step, it showed FINISHED while a later step worked, and after a kill -9
        # between steps). Launched otherwise (the UI, `dagster job execute`), each step ends it, and puts it back.
        by_driver = LAUNCHED_BY in _run_tags(context)
        # (a parent that an earlier step of this run ended FAILED or KILLED keeps that end: so will the run)
        ended_badly = not by_driver and client.get_run(parent).info.status in ("FAILED", "KILLED")
        if not by_driver and not ended_badly:
            client.update_run(parent, status="RUNNING")
        tags = {
            DAGSTER_RUN_TAG: run_id, ASSET_TAG: asset, PARTITION_TAG: partition, PARENT_TAG: parent,
            VARIANT_TAG: variant or "", SHARD_TAG: shard or "", METHOD_TAG: method or "",
            "code_version": str(context.assets_def.code_versions_by_key.get(key) or "none"),
            "git_commit": git_commit(), **dvc_tags, **input_provenance(context.instance), "profile": networks.profile,
            "device": networks.device,
            **{f"weights_sha256.{name}": digest for name, digest in weight_hashes(networks).items()},
        }
        name = f"{asset} {method or where}".strip()
        created = client.create_run(experiment_id, start_time=step_start, run_name=name, tags=tags)
        run = AssetRun(client, created.info.run_id, parent, experiment_id, self.uri(), self.log_real_faces,
                       self.log_per_image, self.ui_url())
        status = "FAILED"
        try:
            if params is not None:
                resolved = params if isinstance(params, dict) else params.to_dict()
                run.log_params(resolved)
                run.log_bytes(json.dumps(resolved, indent=2, sort_keys=True, default=str).encode(), "params.json")
            yield run
            status = "FINISHED"
        except (KeyboardInterrupt, DagsterExecutionInterruptedError):  # Ctrl-C or SIGTERM: stopped, not failed
            status = "KILLED"
            raise
        finally:
            ended = [run.run_id] if by_driver or ended_badly else [run.run_id, parent]
            if status == "FINISHED":
                for run_id in ended:
                    client.set_terminated(run_id, status)
            else:  # an error or a stop is what the step reports, not a tracking server that cannot record its end
                end_runs(client, ended, status, context.log.warning)
            if run.skipped:
                context.log.info(f"not logged to MLflow (real faces, or per-image rows; log_real_faces and "
                                 f"log_per_image are false): {run.skipped}")

    def end_dagster_run(self, dagster_run_id: str, status: str, warn=logging.getLogger(__name__).warning,
                        instance: dg.DagsterInstance | None = None, end_ms: int | None = None) -> None:
        """Give the MLflow run of a Dagster run (if it has one) the Dagster run's real end: FINISHED, FAILED or
        KILLED, and its nested runs still RUNNING (their step never ended) KILLED or FAILED. (Each nested run of a run
        the driver did not launch also ends its parent; a run launched from the UI gets its real end from
        orchestration.run_ends' sensors.) With the `instance`, a failed or stopped run that has none gets one
        (`_parent_of_untracked`), and a nested run
        that ended FINISHED for a value Dagster never recorded (the run stopped after the asset's work, while its
        value was being stored) ends like the Dagster run too: the value is made again, and that run's metrics are
        not of a recorded value. A failed or stopped end that the store cannot record is one `warn` line. `end_ms`:
        when the runs ended (a killed process's last sign of life; default: now)."""
        client = self.client()
        with nullcontext() if status == "FINISHED" else ended_or_warned(client, status, warn):
            found = client.get_experiment_by_name(self.experiment_name())
            runs = [] if found is None else client.search_runs(
                [found.experiment_id], filter_string=f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}'")
            ended = "KILLED" if status == "KILLED" else "FAILED"
            recorded = None if status == "FINISHED" or instance is None else _recorded_in(instance, dagster_run_id)
            if recorded is not None and found is not None and all(PARENT_TAG in r.data.tags for r in runs):
                self._parent_of_untracked(instance, dagster_run_id, ended, end_ms)

            def end(run, how: str, at: int | None = end_ms) -> None:
                at = None if at is None else max(at, run.info.start_time or 0)
                client.set_terminated(run.info.run_id, how, end_time=at)

            for run in runs:
                if PARENT_TAG not in run.data.tags:
                    end(run, status)
                elif run.info.status == "RUNNING":  # a step that was still running when its process was killed
                    end(run, ended)
                elif recorded is not None and run.info.status == "FINISHED" and ASSET_TAG in run.data.tags and (
                        run.data.tags[ASSET_TAG], run.data.tags.get(PARTITION_TAG, "")) not in recorded:
                    end(run, ended, run.info.end_time)  # it did end then; only its status was wrong

    def _parent_of_untracked(self, instance: dg.DagsterInstance, dagster_run_id: str, status: str,
                             end_ms: int | None = None) -> None:
        """The MLflow run of a Dagster run that failed or was stopped before any asset opened one (while loading
        its inputs, say), ended `status`: every run of a job that materializes assets has one."""
        dagster_run = instance.get_run_by_id(dagster_run_id)
        if dagster_run is None or dagster_run.job_name == "observe_settings" or \
                dagster_run.asset_selection is not None and not dagster_run.asset_selection:  # checks alone
            return
        tags = dagster_run.tags
        if "dagster/partition/variant" in tags:  # a (shard, variant) partition
            variant, shard = tags["dagster/partition/variant"], tags.get("dagster/partition/shard", "")
        else:  # a variant's, or none
            variant, shard = tags.get("dagster/partition", ""), ""
        record = instance.get_run_record_by_id(dagster_run_id)
        start = int(record.start_time * 1000) if record is not None and record.start_time else None
        parent = self.parent_run(dagster_run_id, " ".join(p for p in (dagster_run.job_name, variant, shard) if p),
                                 start, _parent_tags(variant, shard, tags))
        self.client().set_terminated(parent, status, end_time=None if end_ms is None else max(end_ms, start or 0))

    def previous_metrics(self, run: AssetRun, asset: str, variant: str = "") -> dict[str, float] | None:
        """Final metrics of the latest earlier finished nested run of `asset` (and `variant`) in this experiment, or
        None (a stopped or failed one logged none)."""
        runs = run.client.search_runs(
            [run.experiment_id], filter_string=f"tags.{ASSET_TAG} = '{asset}' and tags.{VARIANT_TAG} = '{variant}' "
                                               "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1000,
        )
        earlier = sorted((r for r in runs if r.info.run_id != run.run_id), key=current_since, reverse=True)
        return dict(earlier[0].data.metrics) if earlier else None

    def mark_restored(self, dagster_run_id: str, asset: str, partition: str | None, at_ms: int) -> int:
        """Tag the runs that logged `asset` (`partition`) in Dagster run `dagster_run_id` as put back at `at_ms`
        (RESTORED_AT_TAG); how many there were (none where that run tracked to another experiment or store)."""
        client = self.client()
        found = client.get_experiment_by_name(self.experiment_name())
        if found is None:
            return 0
        runs = [r for r in client.search_runs(
            [found.experiment_id], filter_string=f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}' and "
                                                 f"tags.{ASSET_TAG} = '{asset}'", max_results=1000)
                if r.data.tags.get(PARTITION_TAG, "") == (partition or "")]
        for run in runs:
            client.set_tag(run.info.run_id, RESTORED_AT_TAG, str(at_ms))
        return len(runs)


def _started_ms(context: dg.AssetExecutionContext) -> tuple[int | None, int | None]:
    """(when this step started, when its Dagster run started) in ms since the epoch, from the instance; None for
    an asset called as a function (MLflow then uses the current time)."""
    from dagster._core.errors import DagsterInvalidPropertyError

    try:
        run_id = context.run.run_id
    except DagsterInvalidPropertyError:
        return None, None
    step = str(context.op_execution_context.op_handle)
    starts = [r.event_log_entry.timestamp for r in context.instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.STEP_START).records if r.event_log_entry.step_key == step]
    record = context.instance.get_run_record_by_id(run_id)
    run_start = record.start_time if record is not None else None
    return (int(max(starts) * 1000) if starts else None), (int(run_start * 1000) if run_start else None)


def _run_tags(context: dg.AssetExecutionContext) -> Mapping[str, str]:
    """The Dagster run's tags; none for an asset called as a function."""
    from dagster._core.errors import DagsterInvalidPropertyError

    try:
        return context.run.tags
    except DagsterInvalidPropertyError:
        return {}


def _job_and_run(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """(job name, run id) of the run; ("direct", "EPHEMERAL") for an asset called as a function
    (build_asset_context), which runs in none."""
    from dagster._core.errors import DagsterInvalidPropertyError

    try:
        return context.run.job_name, context.run.run_id
    except DagsterInvalidPropertyError:
        return "direct", "EPHEMERAL"


def delta_table(previous: dict[str, float] | None, current: dict[str, float]) -> pd.DataFrame:
    """metric | previous | current | change, for the metrics present now."""
    rows = []
    for name, value in sorted(current.items()):
        before = (previous or {}).get(metric_name(name), float("nan"))
        rows.append({"metric": name, "previous": before, "current": value, "change": value - before})
    return pd.DataFrame(rows, columns=["metric", "previous", "current", "change"])

