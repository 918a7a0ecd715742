"""The one driver of the asset graph: `falco pipeline`, `falco stage` (and so `dvc repro`) and the tests launch the
named jobs of orchestration/jobs.py through the Dagster instance at $DAGSTER_HOME, as the UI does, with the job's
executor (params.yaml `pipeline.executor`); every run shows in the UI under its job (`prepare`, `anonymize`,
`evaluate_references`, `evaluate`, `evaluate_report`), tagged with its variant and shard.

A pipeline run:
1. registers the variants to run (params.yaml `sweep:`, or the command line's) as partitions, checking that each
   resolves to valid settings before anything starts;
2. runs `observe_settings`, so Dagster sees what changed in params.yaml, the flags and the input folder;
3. runs `prepare`, `anonymize` (one run per variant and shard) and the evaluate stage (`evaluate_references`,
   `evaluate` once per variant, `evaluate_report`), each selecting only what Dagster reports missing or stale and what follows from it
   (orchestration.staleness); `fresh` re-makes everything. A killed run therefore resumes where it stopped.

The blocking privacy check fails a shard's run when dlib still matches too many of its images to their sources
(params.yaml `checks:`). Such a variant is still evaluated: a sweep measures variants that keep identity on
purpose (m close to 1), and the evaluation is what shows how much; the summary names it, and its images must not be
released. The check runs again when its bound changes. Any other failure stops what depends on it (that variant's
evaluation and the report), not the other variants.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from anon_core.atomic import write_bytes_atomic
from anon_core.errors import FalcoError
from anon_core.folders import PIPELINE_STORAGE_MARK, check_separate, exclusive, one_at_a_time
from anon_core.journal import end_latest_run
from orchestration import stop_request
from orchestration.assets.settings import FRESH_TAG
from orchestration.io_manager import make_private, prune_moved_rows, prune_shards, prune_unregistered_shards
from orchestration.jobs import (ANONYMIZE, ANONYMIZE_PHOTOS, EVALUATION_REFERENCES, PREPARE, PREPARE_PHOTOS, REPORT,
                                VARIANT_EVALUATION)
from orchestration.partitions import image_shards, photo_shards, register_partitions, variant_shard_key, variants
from orchestration.pipeline_stages import MODES, STAGES
from orchestration.resources import PROJECT_ROOT, NetworksResource, StorageResource
from orchestration.run_ends import LAUNCHED_BY
from orchestration.tracking import MlflowResource, dvc_experiment_tags

DEFAULT_DAGSTER_HOME = PROJECT_ROOT / ".dagster_home"
ORPHANS_OLDER_THAN_S = 900.0  # a temporary file in the storage untouched this long has no writer left


@dataclass
class PipelineSummary:
    variants: list[str]
    ran: list[str] = field(default_factory=list)  # "prepare", "anonymize m0.5 shard-00000", "evaluate m0.5", ...
    skipped: list[str] = field(default_factory=list)  # the same, up to date
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # variants not evaluated: one of their shards failed
    privacy_failed: dict[str, list[str]] = field(default_factory=dict)  # variant -> shards that failed the check
    errors: dict[str, str] = field(default_factory=dict)  # failed label -> the error that failed its run
    run_ids: list[str] = field(default_factory=list)


def dagster_home() -> Path:
    """$DAGSTER_HOME (default, and when it is empty: <project>/.dagster_home), absolute: a relative one is taken from
    the current folder (Dagster itself accepts only absolute ones), and set so in the environment, as the run's
    processes and Dagster's own code will read it. Nothing is made."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def dagster_instance() -> dg.DagsterInstance:
    """The persistent instance at `dagster_home()`, created if needed."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():  # no telemetry, and no "join the community" pop-up in the UI
        config.write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    return dg.DagsterInstance.get()


@contextmanager
def at_log_level(instance: dg.DagsterInstance, log_level: str) -> Iterator[dg.DagsterInstance]:
    """`instance`, or where its dagster.yaml sets no `python_logs: python_log_level`, the same instance with that
    level at `log_level`: Dagster's logger in a step's own process, which has no job to configure it, prints at
    that level, not at DEBUG (the multiprocess executor's `STEP_WORKER_STARTED` line per step). The runs' processes
    get the instance by reference, level included; its events are recorded whatever the level, and its dagster.yaml
    is left as it is."""
    if instance.is_ephemeral or instance.python_log_level is not None:
        yield instance
        return
    ref = instance.get_ref()
    python_logs = {**(ref.settings.get("python_logs") or {}), "python_log_level": log_level}
    with dg.DagsterInstance.from_ref(ref._replace(settings={**ref.settings, "python_logs": python_logs})) as leveled:
        yield leveled


def _config(storage: StorageResource, networks: NetworksResource, mlflow: MlflowResource) -> dict[str, Any]:
    """The resources as plain settings: what every process of a run rebuilds them from (definitions.job_for)."""
    return {name: {k: v for k, v in resource.model_dump().items() if v is not None}
            for name, resource in (("storage", storage), ("networks", networks), ("mlflow", mlflow))}


def run_pipeline(
    storage: StorageResource,
    networks: NetworksResource,
    variants_to_run: Sequence[str] | None = None,
    instance: dg.DagsterInstance | None = None,
    fresh: bool = False,
    stages: Sequence[str] = STAGES,
    mlflow: MlflowResource | None = None,
    log: Callable[[str], None] = print,
    log_level: str = "INFO",
    mode: str = "aligned",
) -> PipelineSummary:
    """Run the `stages` of the graph for `variants_to_run` (default: the sweep of params.yaml, or of `networks`'
    `sweep` override), materializing only what is missing or stale. See the module docstring. The input folder,
    the storage and the Dagster home may not contain one another, and one pipeline at a time holds the storage.

    `mode="photo"` runs photo mode's jobs instead: `prepare_photos`, then `anonymize_photos` per variant and photo
    shard, each with its blocking per-face privacy check (photo mode has no evaluate stage: that check is its
    measure)."""
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r} must be one of {MODES}")
    if variants_to_run:  # rebuilt, not model_copy'd: Dagster initializes a resource from its constructor config
        networks = NetworksResource(**{**networks.model_dump(), "sweep_variants": list(variants_to_run)})
    wanted = networks.sweep()
    check_settings(storage, networks, wanted)  # a bad parameter or variant fails here, before any run starts
    mlflow = mlflow or MlflowResource()
    # Every process of a run, on any machine, tracks to the store and experiment this driver resolved, not to its own
    # environment's.
    mlflow = MlflowResource(**{**mlflow.model_dump(), "tracking_uri": mlflow.uri(), "experiment": mlflow.experiment_name()})
    # the checks come before the instance is made: a refused command leaves no Dagster home behind
    home = instance.root_directory if instance is not None else dagster_home()
    check_separate(input_folder=storage.input_dir, storage=storage.root, dagster_home=home)
    if "prepare" not in stages and not Path(storage.root).is_dir():  # refused before anything is made (its lock)
        summary = PipelineSummary(variants=wanted, failed=["prepare"])
        summary.errors["prepare"] = _unprepared(f"has not run on this storage ({storage.root} does not exist)", mode)
        return summary
    if "prepare" in stages:
        from anon_core.ingest import check_dataset_layout, check_input_folder

        check_input_folder(Path(storage.input_dir))  # a folder without images fails here, not inside a run
        if mode == "aligned":  # the layout and labels, from names (photo mode reads any folder, pairs by nearest)
            data = networks.data()
            check_dataset_layout(networks.params().pairing, Path(storage.input_dir), data["dataset"],
                                  data["labels_csv"])
    if networks.pipeline()["executor"] == "celery":
        from orchestration.celery_queue import queues_without_worker

        # The broker's address and reachability, and a forgotten worker that would leave the run waiting silently.
        for queue in queues_without_worker():
            log(f"no worker answered for the Celery queue {queue!r}: its steps wait until one does (`falco worker "
                f"--queues {queue}` on a machine that shares the storage; a busy worker answers only after its step)")
    mlflow.check_store()  # a server that does not answer stops the command now, not after minutes of MLflow's retries
    instance = instance or dagster_instance()
    # a second pipeline on this storage is refused, not interleaved; workers of other machines may write into it
    with exclusive(Path(storage.root), "storage", orphans_older_than_s=ORPHANS_OLDER_THAN_S):
        if not instance.is_ephemeral:
            bind_instance_and_storage(Path(instance.root_directory), Path(storage.root), fresh)
        for run_id, status in end_abandoned_runs(instance, mlflow):
            log(f"Dagster run {run_id[:8]} was left {status} by a falco process that ended: marked failed")
        with at_log_level(instance, log_level) as leveled:
            return _run(storage, networks, wanted, leveled, fresh, stages, mlflow, log, log_level, mode)


def _run(storage, networks, wanted, instance, fresh, stages, mlflow, log, log_level, mode) -> PipelineSummary:
    from orchestration.graph import build_definitions

    defs = build_definitions(storage, networks, mlflow)
    graph = defs.resolve_asset_graph()
    mlflow.ensure_experiment()  # once, before parallel steps would race to create it
    register_partitions(instance, variants, wanted)
    if not fresh:
        from orchestration.restored import record_restored_values

        restored = record_restored_values(instance, graph, storage.root)
        at_ms = int(time.time() * 1000)
        for value in restored:
            mlflow.mark_restored(value.run_id, value.asset.to_user_string(), value.partition, at_ms)
        if restored:
            shown = ", ".join(map(str, restored[:4])) + (f" and {len(restored) - 4} more" if len(restored) > 4 else "")
            log(f"recorded again {len(restored)} stored value(s) an earlier run of this instance made, put back since "
                f"(`dvc checkout`, `dvc exp apply`, a copy): {shown}")
    tightened, refused = make_private(storage.root, graph)
    if tightened:
        log(f"made the stored real faces of {', '.join(tightened)} readable by their owner only (0700 folders, 0600 "
            "files), as this version writes them")
    for why in refused:
        log(f"warning: could not make stored real faces readable by their owner only: {why}; change their mode "
            "yourself (chmod -R go-rwx), or delete the storage")
    summary = PipelineSummary(variants=wanted)
    driver = _Driver(instance, graph, _config(storage, networks, mlflow), summary, fresh, log, log_level, mlflow)
    pipeline = networks.pipeline()
    if pipeline["executor"] == "celery":  # the workers run the partitions side by side
        driver.parallel_runs = pipeline["max_concurrent"]

    if not driver.run("observe_settings", "observe settings", None, None):
        return summary
    if "prepare" not in stages and not driver.prepared((PREPARE_PHOTOS if mode == "photo" else PREPARE).resolve(graph),
                                                       mode):
        return summary
    if mode == "photo":
        bound = networks.privacy_bound()
        if "prepare" in stages and not driver.materialize("prepare_photos", "prepare photos",
                                                          PREPARE_PHOTOS.resolve(graph)):
            return summary
        if "anonymize" in stages:
            shards = instance.get_dynamic_partitions(photo_shards.name)
            driver.anonymize_all([(variant, shard) for variant in wanted for shard in shards], bound, photos=True)
            for variant in wanted:  # the photos of shards no longer registered (fewer photos than before)
                base = storage.asset_dir("anonymized_photos", variant)
                if base.is_dir() and not any(label.startswith(f"anonymize photos {variant} ")
                                             for label in summary.failed):
                    for folder in (d for d in base.iterdir() if d.is_dir()):
                        end_latest_run(folder)  # each shard holds its own faces: the batches kept for others go
                removed = prune_unregistered_shards(base, shards)
                if removed:
                    log(f"anonymized_photos {variant}: removed {', '.join(removed)} (shards no longer in the input)")
        return summary
    if "prepare" in stages and not driver.materialize("prepare", "prepare", PREPARE.resolve(graph)):
        return summary
    shards = instance.get_dynamic_partitions(image_shards.name)
    if "anonymize" in stages:
        bound = networks.privacy_bound()
        driver.anonymize_all([(variant, shard) for variant in wanted for shard in shards], bound)
        for variant in wanted:  # the images of inputs since removed, and of shards no longer registered
            if not any(label.startswith(f"anonymize {variant} ") for label in summary.failed):
                # every shard holds its own rows now: those kept for moved images, and the values of shards no
                # longer registered (the input shrank), are no longer a source of them
                prune_moved_rows(storage.asset_dir("anonymized_latents", variant))
                prune_unregistered_shards(storage.asset_dir("anonymized_latents", variant), shards)
            removed = prune_shards(storage.asset_dir("anonymized_images", variant), shards)
            if removed:
                tables = [name for name in removed if not name.startswith("images/")]
                log(f"anonymized_images {variant}: removed the tables of shards no longer registered ({len(tables)}) "
                    f"and {len(removed) - len(tables)} image(s) that no shard lists (of inputs removed or rejected, or "
                    "written by a run stopped before its shard's table)")
    if "evaluate" in stages:
        driver.evaluate(wanted, shards)
    return summary


def _unprepared(state: str, mode: str) -> str:
    """The refusal of a later stage run alone while the prepare stage `state` (has not run, is not up to date)."""
    flag = " --mode photo" if mode == "photo" else ""
    return (f"the prepare stage {state}; run `falco stage prepare{flag}` with the same options first, or `falco "
            f"pipeline{flag}`, which runs every stage (nothing was run)")


INTERRUPTED = "DagsterExecutionInterruptedError"  # how a run that Ctrl-C stopped ends (its step error's class)
CHECK_FAILED = "DagsterAssetCheckFailedError"  # how a run whose blocking (privacy) check failed ends


INSTANCE_MARK = "falco_storage.json"  # in the Dagster home: the pairing with the storage its records describe
STORAGE_MARK = PIPELINE_STORAGE_MARK  # in the storage: the pairing with the Dagster home that records its files
PAIRING_LOCK = ".falco_pairing.lock"  # in the Dagster home: one pairing check at a time


def bind_instance_and_storage(dagster_home: Path, storage: Path, fresh: bool) -> None:
    """An instance's records describe the files of one storage, and a storage's files the records of one instance.
    With another pairing Dagster would call an asset up to date from records of files that this storage does not
    hold (a crash when the step reading them runs) or holds from other settings (a silently wrong result). So the
    first run pairs the two (the same random id in a mark in each folder, which survives moving or copying both),
    and a later run that pairs either with another is refused (FalcoError) unless `fresh`: that re-makes
    everything into this storage under this instance, so it pairs them anew."""
    # Two first runs on two new storages under one new instance hold only their own storage's lock: the instance's
    # pairing lock makes the second one read the first one's mark (and be refused) instead of pairing too.
    with one_at_a_time(dagster_home / PAIRING_LOCK):
        home_mark, storage_mark = _read_mark(dagster_home / INSTANCE_MARK), _read_mark(storage / STORAGE_MARK)
        paired = home_mark is not None and storage_mark is not None and home_mark["id"] == storage_mark["id"]
        if paired or fresh or home_mark is None and storage_mark is None:
            pair = {"id": home_mark["id"] if paired else uuid.uuid4().hex, "storage": str(storage.resolve()),
                    "dagster_home": str(dagster_home.resolve())}  # where they are now (they may have moved together)
            for path, mark in ((dagster_home / INSTANCE_MARK, home_mark), (storage / STORAGE_MARK, storage_mark)):
                if mark != pair:
                    write_bytes_atomic(path, json.dumps(pair).encode())
            return
    fix = f"add --fresh to re-make everything into {storage} under this instance (nothing was run)"
    if home_mark is not None and home_mark["storage"] == str(storage.resolve()):  # the storage was removed or replaced
        raise FalcoError(
            f"the Dagster instance {dagster_home} records the pipeline of the storage {storage} as it was, but that "
            f"storage was removed or replaced since (it lacks the mark the instance wrote there): the records would "
            f"call values up to date that it does not hold. Put the storage back, or use a Dagster home of its own "
            f"(DAGSTER_HOME=<new folder>), or {fix}")
    if home_mark is not None:
        raise FalcoError(
            f"the Dagster instance {dagster_home} records the pipeline of another storage ({home_mark['storage']}), "
            f"not of {storage}: its records would call values up to date that {storage} does not hold, or holds "
            f"from other settings. Use that storage, or a Dagster home of this storage's own "
            f"(DAGSTER_HOME=<new folder>), or {fix}")
    raise FalcoError(
        f"the storage {storage} holds the values that another Dagster instance records "
        f"({storage_mark['dagster_home']}), not {dagster_home}: run with that DAGSTER_HOME, or give this instance a "
        f"storage of its own (--storage <new folder>), or {fix}")


def _read_mark(path: Path) -> dict[str, str] | None:
    """A pairing mark ({"id", "storage", "dagster_home"}); None when there is none or it cannot be read."""
    try:
        mark = json.loads(path.read_text())
        return mark if all(isinstance(mark.get(k), str) for k in ("id", "storage", "dagster_home")) else None
    except (OSError, ValueError, AttributeError):
        return None


def end_abandoned_runs(instance: dg.DagsterInstance, mlflow: MlflowResource) -> list[tuple[str, str]]:
    """Runs this host's drivers made whose process is gone (killed mid-run, or stopped between making a run and
    starting it) stay STARTED or NOT_STARTED for ever: report them failed, and end their MLflow runs as KILLED.
    Returns the id and the status each was left in."""
    import socket

    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    ended = []
    runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING,
                                                  DagsterRunStatus.NOT_STARTED]))
    for run in runs:
        host, _, pid = run.tags.get(LAUNCHED_BY, "").rpartition(":")
        if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
            continue
        last = _last_event_ms(instance, run.run_id)  # before the failure below adds one of now
        instance.report_run_failed(run, f"the falco process that ran it (PID {pid}) ended before the run did: "
                                        "killed")
        mlflow.end_dagster_run(run.run_id, "KILLED", instance=instance, end_ms=last)
        ended.append((run.run_id, run.status.value))
    return ended


def _last_event_ms(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """When the run last did something (its latest Dagster event), in ms; None without events: a killed run's MLflow
    runs end then, not when the next driver finds them (a 1.5 s step read as 22 s, or as hours)."""
    records = instance.get_records_for_run(run_id, ascending=False, limit=1).records
    return int(records[0].event_log_entry.timestamp * 1000) if records else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def step_error(instance: dg.DagsterInstance, run_id: str) -> str:
    """What failed a run, in one line: the innermost error of its first failed step (a FalcoError's own words)."""
    from dagster._core.events import DagsterEventType

    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        error = record.event_log_entry.dagster_event.step_failure_data.error
        while error.cause is not None:
            error = error.cause
        text = error.message.strip().splitlines()[-1] if error.message.strip() else error.cls_name
        prefix, _, rest = text.partition(": ")
        if prefix.rsplit(".", 1)[-1] == error.cls_name and rest:  # "anon_core.errors.FalcoError: <its words>"
            ours = prefix.startswith(("anon_core.", "evaluation.", "orchestration."))  # our errors say it all
            text = rest if ours else f"{error.cls_name}: {rest}"
        elif error.cls_name == CHECK_FAILED:  # its last line names the check alone
            text = f"{CHECK_FAILED}: {text}"
        return f"{record.event_log_entry.step_key}: {text}"
    run = instance.get_run_by_id(run_id)
    return f"the run ended {run.status.value if run else 'unknown'} (see it in the Dagster UI)"


def check_settings(storage: StorageResource, networks: NetworksResource, wanted: Sequence[str]) -> None:
    """Read every setting the assets will read (what the settings sources observe), so a bad value in params.yaml,
    the flags or a variant is one ParamsError before anything runs."""
    from anon_core.profiles import get_profile
    from anon_core.stages import check_layers_fit
    from orchestration.assets import settings
    from orchestration.section_checks import check_sections

    networks.pipeline()  # with the command's flags and variables, which name themselves in its error
    for read in settings.SETTINGS_READERS:
        read(networks, storage)
    defined = networks.section("variants")
    for name in [*defined, *wanted]:  # every definition, not only the variants this run makes
        # what settings.variant_settings reads; then its W+ layers against the profile's sizes (no network is built)
        params = networks.params(name)
        check_layers_fit(params, get_profile(params.profile).generator.num_ws,
                         f"{networks.params_file}, variants: {name}" if name in defined else str(networks.params_file))
    networks.privacy_bound()
    check_sections(networks.params_path, networks.profile)  # then every profile's, as the file says


@dataclass(frozen=True)
class Launch:
    """One run to execute: `job` for `partition`, limited to `selection`, or to the asset `checks` alone."""

    job: str
    label: str
    selection: tuple[dg.AssetKey, ...]
    partition: str | None = None
    checks: frozenset[dg.AssetCheckKey] = frozenset()


def execute(launch: Launch, config: dict[str, Any], run_config: dict, tags: dict[str, str],
            instance: dg.DagsterInstance | dg.InstanceRef) -> tuple[str, bool]:
    """Execute a launch through the instance (given by reference in a process of a pool); (run id, success)."""
    if not isinstance(instance, dg.DagsterInstance):
        with dg.DagsterInstance.from_ref(instance) as opened:
            return execute(launch, config, run_config, tags, opened)
    reconstructable = dg.build_reconstructable_job("orchestration.graph", "job_for",
                                                   reconstructable_args=(launch.job, config))
    if launch.checks:
        reconstructable = reconstructable.get_subset(asset_selection=set(), asset_check_selection=set(launch.checks))
    result = dg.execute_job(reconstructable, instance, run_config=run_config, tags=tags,
                            asset_selection=list(launch.selection) or None)
    return result.run_id, result.success


def end_with_parent(signum: int | None = None, parent: int | None = None) -> None:
    """This process gets `signum` (default SIGKILL) when its parent ends (Linux's parent-death signal). A process of
    the partition runs' pool ends when the driver does: a killed driver leaves no run going on without it, and the
    next driver finds the run's launcher gone (end_abandoned_runs) and makes the partition again. A `falco stage`
    that DVC runs gets SIGTERM, so a stopped `dvc repro` stops it as Ctrl-C does. `parent`: the parent's pid, noted
    when this process started, for a parent that ended before this call (else: taken as ended when this process
    belongs to init, which misses a subreaper's orphans)."""
    import ctypes
    import signal

    signum = signal.SIGKILL if signum is None else signum
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent if parent is not None else os.getppid() == 1:  # it ended before the line above
        os.kill(os.getpid(), signum)


class _Driver:
    def __init__(self, instance, graph, config, summary: PipelineSummary, fresh: bool, log, log_level: str,
                 mlflow: MlflowResource) -> None:
        self.instance, self.graph, self.config, self.summary, self.fresh, self.log, self.mlflow = \
            instance, graph, config, summary, fresh, log, mlflow
        self.run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
        self.parallel_runs = 1  # partition runs in flight at once (celery executor: pipeline.max_concurrent)
        import socket

        self.launched_by = {LAUNCHED_BY: f"{socket.gethostname()}:{os.getpid()}", **dvc_experiment_tags(os.environ)}
        if fresh:  # the assets take no row from earlier runs (orchestration.assets.settings.reuses_rows)
            self.launched_by[FRESH_TAG] = "true"

    def run(self, job: str, label: str, selection: list[dg.AssetKey] | None, partition: str | None,
            checks: set[dg.AssetCheckKey] | None = None) -> bool:
        """Execute `job` (for `partition`, limited to `selection`, or to the asset `checks` alone) through the
        instance; record how it went."""
        return self.run_all([Launch(job, label, tuple(selection or ()), partition, frozenset(checks or ()))])[0]

    def run_all(self, launches: list[Launch]) -> list[bool]:
        """Execute the launches, `parallel_runs` at a time, and record each; whether each went well. Side by side,
        each runs in a process of its own: Dagster's in-process execution configures logging per run, which
        deadlocks between threads."""
        tagged = [(launch, self._tags(launch)) for launch in launches]
        if self.parallel_runs <= 1 or len(launches) <= 1:  # each recorded as it ends: Ctrl-C stops the next ones
            return [self._record(launch, *execute(launch, self.config, self.run_config, tags, self.instance))
                    for launch, tags in tagged]
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(self.parallel_runs, len(launches)), initializer=end_with_parent,
                                     initargs=(None, os.getpid()),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(execute, launch, self.config, self.run_config, tags, self.instance.get_ref())
                           for launch, tags in tagged]
                results = [future.result() for future in futures]
        return [self._record(launch, run_id, success) for launch, (run_id, success) in zip(launches, results)]

    def _tags(self, launch: Launch) -> dict[str, str]:
        tags = dict(self.launched_by)
        if launch.partition is not None:
            key = launch.selection[0] if launch.selection else next(iter(launch.checks)).asset_key
            tags |= dict(self.graph.get(key).partitions_def.get_tags_for_partition_key(launch.partition))
        return tags

    def _record(self, launch: Launch, run_id: str, success: bool) -> bool:
        self.summary.run_ids.append(run_id)
        label = launch.label
        if success:
            self.mlflow.end_dagster_run(run_id, "FINISHED")  # the run's own end
            if launch.job != "observe_settings":
                self.summary.ran.append(label)
                self.log(f"{label}: done (Dagster run {run_id[:8]})")
            # Between a run's steps Dagster only notes a stop signal, raising it at the next step, and forgets it
            # when the run ends first: the command would go on to its next runs (`timeout`'s SIGTERM ignored)
            if stop_request.requested():
                raise KeyboardInterrupt
            return True
        self.summary.failed.append(label)
        self.summary.errors[label] = step_error(self.instance, run_id)
        # Ctrl-C: Dagster ended the run as failed (or the step's library turned the interrupt into another error)
        if INTERRUPTED in self.summary.errors[label] or stop_request.requested():
            self.mlflow.end_dagster_run(run_id, "KILLED", self.log, self.instance)
            raise KeyboardInterrupt
        self.mlflow.end_dagster_run(run_id, "FAILED", self.log, self.instance)
        if CHECK_FAILED not in self.summary.errors[label]:  # a failed privacy check gets its own line (_record_check)
            self.log(f"{label}: FAILED (Dagster run {run_id[:8]}): {self.summary.errors[label]}")
        return False

    def plan(self, job: str, label: str, keys, partition: str | None = None,
             checks: set[dg.AssetCheckKey] | None = None) -> Launch | None:
        """The run of `job` for what of `keys` is missing or stale (and follows from it), else for the asset `checks`
        to run again; None (recorded as up to date) when there is nothing to do."""
        from orchestration.staleness import statuses, to_run

        keys = sorted(keys, key=lambda k: k.to_user_string())
        root = self.config["storage"]["root"]
        status = statuses(self.instance, self.graph, keys, partition, root)
        for key in (k for k in keys if status[k] == "INCOMPLETE" and not self.fresh):
            self.log(f"{label}: {self._gone(key, partition)}; making it again")
        selection = to_run(self.instance, self.graph, keys, partition, self.fresh, root, status)
        if not selection and not checks:
            self.summary.skipped.append(label)
            return None
        return Launch(job, label, tuple(selection), partition, frozenset(() if selection else checks))

    def _gone(self, key: dg.AssetKey, partition: str | None) -> str:
        """What of an INCOMPLETE value is gone, for the log: `<asset> <partition>: N file(s) of its stored value in
        <folder> are gone (names)`."""
        from orchestration.io_manager import missing_files, value_location

        partitions_def = self.graph.get(key).partitions_def
        partition = partition if partitions_def else None
        gone = missing_files(self.instance, self.config["storage"]["root"], key, partitions_def, partition)
        base, stem = value_location(self.config["storage"]["root"], key, partitions_def, partition)
        name = f"{key.to_user_string()}{f' {partition}' if partition else ''}"
        if gone == [f".{stem}.run"]:  # its writer file went with it: the value is gone whole
            return f"{name}: its stored value in {base} is gone"
        shown = ", ".join(gone[:3]) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
        return f"{name}: {len(gone)} file(s) of its stored value in {base} are gone ({shown})"

    def materialize(self, job: str, label: str, keys, partition: str | None = None,
                    checks: set[dg.AssetCheckKey] | None = None) -> bool:
        """`plan`, then run it; True when that went well (or nothing was to do)."""
        launch = self.plan(job, label, keys, partition, checks)
        return launch is None or self.run_all([launch])[0]

    def anonymize_all(self, partitions: list[tuple[str, str]], bound: float, photos: bool = False) -> None:
        """Each (variant, shard) partition of the anonymization (`photos`: of photo mode) that is missing or stale,
        `parallel_runs` at a time, and its privacy check (again when it never ran on the images or ran with another
        bound)."""
        from orchestration.checks import PHOTO_PRIVACY_CHECK, PRIVACY_CHECK
        from orchestration.staleness import latest_check

        asset, check_name, job, selection = ("anonymized_photos", PHOTO_PRIVACY_CHECK, "anonymize_photos",
                                             ANONYMIZE_PHOTOS) if photos else \
            ("anonymized_images", PRIVACY_CHECK, "anonymize", ANONYMIZE)
        check = dg.AssetCheckKey(dg.AssetKey(asset), check_name)
        keys = selection.resolve(self.graph)
        planned = []
        for variant, shard in partitions:
            partition = str(variant_shard_key(variant, shard))
            before = latest_check(self.instance, check, partition)
            again = {check} if before is None or before.get("bound") != bound else set()
            label = f"{job.replace('_', ' ')} {variant} {shard}"
            planned.append((variant, shard, partition, label, self.plan(job, label, keys, partition, again)))
        self.run_all([launch for *_, launch in planned if launch is not None])
        for variant, shard, partition, label, _ in planned:
            self._record_check(variant, shard, label, bound, latest_check(self.instance, check, partition), photos)

    def prepared(self, keys, mode: str) -> bool:
        """Whether every value of the prepare stage is up to date, for a command that runs later stages alone
        (`falco stage anonymize`, `evaluate`): they read the stored values as they are, so a fake pool of other
        settings, or none at all, would give images paired otherwise than recorded, or no images and a "done". Else
        one failure naming the stage to run."""
        from orchestration.staleness import statuses

        status = statuses(self.instance, self.graph, sorted(keys, key=lambda k: k.to_user_string()), None,
                          self.config["storage"]["root"])
        behind = [f"{key.to_user_string()} {value.lower()}" for key, value in status.items() if value != "FRESH"]
        if not behind:
            return True
        self.summary.failed.append("prepare")
        causes = {"STALE": "stale: its settings or the input changed since it ran", "MISSING": "missing: not made",
                  "UNRECORDED": "unrecorded: its run stopped before Dagster recorded it",
                  "INCOMPLETE": "incomplete: files of its stored value were deleted"}
        why = "; ".join(text for value, text in causes.items() if value in status.values())
        state = ("has not run on this storage" if all(v == "MISSING" for v in status.values()) else
                 f"is not up to date ({', '.join(behind)}; {why})")
        self.summary.errors["prepare"] = _unprepared(state, mode)
        return False

    def _block_if_not_anonymized(self, variant: str, shards: Sequence[str]) -> None:
        """Evaluating a variant whose anonymization is missing or stale for a shard (its settings, or an upstream
        value such as the fake pool, changed since; e.g. `falco stage evaluate` run alone) would report numbers of
        images made otherwise than the report says: block it, naming the stage to run."""
        from orchestration.staleness import partition_statuses

        keys = ANONYMIZE.resolve(self.graph)
        partitions = {str(variant_shard_key(variant, shard)): shard for shard in shards}
        for partition, status in partition_statuses(self.instance, self.graph, keys, list(partitions),
                                                    self.config["storage"]["root"]).items():
            shard = partitions[partition]
            behind = sorted(f"{key.to_user_string()} {value.lower()}" for key, value in status.items()
                            if value != "FRESH")
            if behind:
                self.summary.blocked.append(variant)
                self.log(f"evaluate {variant}: not evaluated: in {shard}, {', '.join(behind)} (its settings or an "
                         "upstream value changed since it was made, its run stopped before it was recorded, or files "
                         "of it were deleted); run "
                         "`falco stage anonymize` with the same options first, or `falco pipeline`")
                return

    def _record_check(self, variant: str, shard: str, label: str, bound: float, outcome: dict | None,
                      photos: bool) -> None:
        if outcome is None:  # the latents or the images were not made
            self.summary.blocked += [variant] if variant not in self.summary.blocked else []
        elif not outcome["passed"]:
            if label in self.summary.failed:  # the run failed on the check alone: it ran, and the pipeline goes on
                self.summary.failed.remove(label)
                self.summary.ran.append(label)
            self.summary.privacy_failed.setdefault(variant, []).append(shard)
            # one decimal and the bound as given: a 6.25% share beside a 0.06 bound read "6% (bound 6%)"
            self.log(f"{label}: PRIVACY CHECK FAILED: dlib matches {outcome.get('matched_share', float('nan')):.1%} "
                     f"of its {'faces' if photos else 'images'} to their sources (bound {bound:g})")

    def evaluate(self, wanted: list[str], shards: Sequence[str]) -> None:
        if not self.materialize("evaluate_references", "evaluate references", EVALUATION_REFERENCES.resolve(self.graph)):
            return
        for variant in wanted:
            if variant not in self.summary.blocked:
                self._block_if_not_anonymized(variant, shards)
            if variant not in self.summary.blocked:
                self.materialize("evaluate", f"evaluate {variant}", VARIANT_EVALUATION.resolve(self.graph), variant)
        if self.summary.blocked or self.summary.failed:
            self.log("report not made: it compares every variant of the sweep, and not all were evaluated")
            return
        self.materialize("evaluate_report", "report", REPORT.resolve(self.graph))
