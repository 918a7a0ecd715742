"""The asset graph through the one driver (orchestration.driver), on the tiny profile and 7 real faces in shards of 3:
named jobs with variant and shard tags, variants side by side, each staleness rule as Dagster's records show it, the
privacy check, a run killed in the middle of a shard, and the storage contract.

A module fixture runs the graph once for the variants `default` and `m0.5`; each staleness test starts from its own
copy of that state (faces, params.yaml, store, Dagster instance, MLflow database), so no test depends on another."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dagster._core.event_api import PartitionKeyFilter

from anon_core.artifacts import ImageSet
from orchestration.driver import run_pipeline
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import MlflowResource
from pipeline_helpers import fast_params, instance_at, made_since, materializations, run, write_faces
from store_checks import kept_keys

VARIANTS = ["default", "m0.5"]
SHARDS = [f"shard-{i:05d}" for i in range(3)]  # 7 readable faces in shards of 3
PREPARE = {"fake_pool", "fake_features", "real_images", "real_features", "real_inversions", "pairs"}
REFERENCES = {"real_gallery", "attribute_pseudo_labels", "attribute_classifier", "baseline_metrics", "baseline_attributes"}
PER_VARIANT = {"evaluation_metrics", "per_image_privacy", "attribute_agreement"}




@pytest.fixture(scope="module")
def base(tmp_path_factory, lfw_faces):
    root = tmp_path_factory.mktemp("base")
    write_faces(root / "faces", lfw_faces[:7])
    fast_params(root / "params.yaml")
    with instance_at(root / "home") as instance, pytest.MonkeyPatch.context() as env:
        env.setenv("FALCO_PROGRESS_EVERY_S", "0")  # every progress line of the long steps, in Dagster's log
        summary = run(root, instance, VARIANTS)
    return root, summary


@pytest.fixture
def state(base, tmp_path):
    """A copy of the base state to change: (root, instance)."""
    root = tmp_path / "state"
    shutil.copytree(base[0], root)
    with instance_at(root / "home") as instance:
        yield root, instance


def _partitions(variants=VARIANTS, shards=SHARDS) -> set[str]:
    return {f"{s}|{v}" for v in variants for s in shards}


def test_the_graph_runs_as_named_jobs_and_variants_keep_their_own_files(base):
    root, summary = base
    assert summary.failed == [] and summary.blocked == []
    assert summary.ran == ["prepare", *[f"anonymize {v} {s}" for v in VARIANTS for s in SHARDS],
                           "evaluate references", "evaluate default", "evaluate m0.5", "report"]
    with instance_at(root / "home") as instance:
        runs = instance.get_runs()
        assert {r.job_name for r in runs} == {"observe_settings", "prepare", "anonymize", "evaluate_references",
                                              "evaluate", "evaluate_report"}
        shard_runs = [r for r in runs if r.job_name == "anonymize"]
        assert {(r.tags["dagster/partition/variant"], r.tags["dagster/partition/shard"]) for r in shard_runs} == \
            {(v, s) for v in VARIANTS for s in SHARDS}
        assert {r.tags.get("dagster/partition") for r in runs if r.job_name == "evaluate"} == set(VARIANTS)
        assert {r.tags.get("dagster/partition") for r in runs if r.job_name.startswith("evaluate_")} == {None}
        assert instance.get_materialized_partitions(dg.AssetKey("anonymized_images")) == _partitions()
        assert instance.get_materialized_partitions(dg.AssetKey("evaluation_metrics")) == set(VARIANTS)
        for partition in _partitions(["default"]):
            [record] = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey("anonymized_images"), "privacy_source_match_share"), limit=1,
                partition_filter=PartitionKeyFilter(key=partition))
            metadata = record.event.dagster_event.event_specific_data.metadata
            assert record.status.value == "SUCCEEDED" and metadata["variant"].value == "default"
        # the long steps log how far they got (every update here; every 30 s by default), up to their end
        logged = {r.job_name: [] for r in runs}
        for r in runs:
            logged[r.job_name] += [e.user_message for e in instance.all_logs(r.run_id) if e.user_message]

        def finished(job: str, what: str, unit: str) -> bool:
            return any(re.match(rf"{re.escape(what)}: (\d+)/\1 {unit} \(100%\), 00:\d\d elapsed", m)
                       for m in logged[job])

        assert finished("prepare", "fake pool", "batches") and finished("prepare", "invert", "batches")
        assert all(finished("anonymize", f"{v} {s}: optimize", "steps") for v in VARIANTS for s in SHARDS)
        assert finished("evaluate_references", "read the real images", "batches")
        assert finished("evaluate_references", "evaluate blur", "batches")
        assert all(finished("evaluate", f"evaluate {v}", "batches") for v in VARIANTS)

    store = root / "store"
    for variant in VARIANTS:
        folder = store / "anonymized_images" / variant / "images"
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == \
            [f"Person A/img_{i}.png" for i in range(7)]
        assert sorted(p.name for p in (store / "anonymized_latents" / variant).iterdir()) == \
            sorted([f"{s}.npz" for s in SHARDS] + [f".{s}.{record}" for s in SHARDS for record in ("run", "files")])
        # each value, the run it is of, and its files (`.<shard>.files`: what a deletion by hand is checked against)
        assert json.loads((store / "anonymized_latents" / variant / ".shard-00000.files").read_text())["files"] == \
            ["shard-00000.npz"]
    # MLflow keeps the settings as asked ("auto") and, beside them, what they meant on this device
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    latents_runs = client.search_runs([client.get_experiment_by_name("falco").experiment_id],
                                      "tags.asset_key = 'anonymized_latents'")
    assert len(latents_runs) == len(VARIANTS) * len(SHARDS)
    for found in latents_runs:
        assert found.data.params["speed.amp"] == "auto" and found.data.params["resolved.speed.amp"] == "off"
        assert found.data.params["resolved.speed.resize_form"] == "interpolate"
        assert "resolved.optimization.margin" not in found.data.params  # only what `auto` left to the device
    first = [np.asarray(Image.open(store / "anonymized_images" / v / "images" / "Person A" / "img_0.png"))
             for v in VARIANTS]
    assert np.abs(first[0].astype(int) - first[1]).mean() > 1  # the variants' images differ
    real = pd.read_parquet(store / "real_images" / "all.parquet")
    assert real.set_index("input").loc["broken.jpg", "reason"] == "empty_file"

    report = store / "anonymization_report"
    summary_table = pd.read_csv(report / "metrics.csv").set_index("method")
    assert list(summary_table.index) == [*VARIANTS, "blur"]
    metrics = yaml.safe_load((report / "metrics.json").read_text())
    assert set(metrics) == {*VARIANTS, "blur"} and 0 <= metrics["m0.5"]["reid/dlib/top1_rate"] <= 1
    # it says what made it: the params file, the bound and every value each variant ran with (before: "params.yaml's
    # optimization section", and a one-variant report showed no setting at all)
    markdown = (report / "report.md").read_text()
    assert f"**params file**: {root / 'params.yaml'}" in markdown and "checks.privacy_max_match_share = 0.05" in markdown
    assert "the real gallery holds" not in markdown  # 7 people: ranks that mean something
    assert "**variant m0.5**: {'optimization.margin': 0.5}: steps 2, lr 0.05, margin 0.5, lambda_id 10.0" in markdown
    assert "**variant default**: the optimization section as it is: steps 2, lr 0.05, margin 0.0" in markdown
    # the release rule's share per shard (the blocking check's): the largest of the shards' shares
    per_image = pd.read_parquet(report / "per_image.parquet")
    for variant in VARIANTS:
        tables = [pd.read_parquet(store / "anonymized_images" / variant / f"{s}.parquet") for s in SHARDS]
        shares = [per_image[(per_image["run"] == variant) & per_image["name"].isin(t["image"])]["dlib/verified"].mean()
                  for t in tables]
        assert metrics[variant]["reid/dlib/worst_shard_verification_rate"] == pytest.approx(max(shares))
    for variant in VARIANTS:
        losses = pd.read_csv(report / "losses" / f"{variant}.csv")
        assert list(losses.columns) == ["step", "identity", "attribute", "total"] and len(losses) == 2
    assert set(pd.read_parquet(report / "per_image.parquet")["run"]) == set(VARIANTS)


def test_an_identical_second_run_materializes_nothing(state):
    root, instance = state
    before = materializations(instance)
    summary = run(root, instance, VARIANTS)
    assert summary.ran == [] and summary.failed == []
    assert made_since(before, materializations(instance)) == {}


def test_a_new_margin_runs_only_that_variants_anonymization_and_evaluation(state):
    root, instance = state
    before = materializations(instance)
    summary = run(root, instance, [*VARIANTS, "m0.9"])
    made = made_since(before, materializations(instance))
    assert made == {"anonymized_latents": _partitions(["m0.9"]), "anonymized_images": _partitions(["m0.9"]),
                    **{name: {"m0.9"} for name in PER_VARIANT}, "anonymization_report": {None}}
    assert summary.failed == [] and "prepare" in summary.skipped and "evaluate references" in summary.skipped
    run(root, instance, VARIANTS)  # the sweep without m0.9 again: its loss curve leaves the report (DVC plots)
    losses = root / "store" / "anonymization_report" / "losses"
    assert sorted(path.stem for path in losses.glob("*.csv")) == sorted(VARIANTS)


def test_a_run_whose_settings_were_not_observed_as_it_reads_them_is_refused(state):
    """The UI's way to a new variant (Add partition, then materialize its shards) ran before any observation of its
    settings, recorded their version as INITIAL and was never stale again: a later margin change left its images. A
    Launchpad run config overriding the margin recorded its codes as made from the observed margin. Both are refused
    before any work; observed first, the same run goes through."""
    from orchestration.graph import build_definitions
    from orchestration.driver import step_error

    root, instance = state
    storage = StorageResource(root=str(root / "store"), input_dir=str(root / "faces"))
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")

    def launch(job: str, partition: str | None = None, **overrides):
        networks = NetworksResource(params_path=str(root / "params.yaml"), overrides=overrides)
        result = build_definitions(storage, networks, mlflow).resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False)
        return result.success, None if result.success else step_error(instance, result.run_id)

    before = materializations(instance)
    instance.add_dynamic_partitions("variants", ["m0.9"])
    assert launch("anonymize", "shard-00000|m0.9") == (False, (
        "anonymized_latents: variant_settings [m0.9] has not been observed since the variant was added; Dagster would record this run's "
        "result as made from the observed settings, and a later change would not make it stale. Observe the sources "
        "first, with this run's config (the observe_settings job, or Observe sources in the UI), then launch it "
        "again (falco pipeline and falco stage observe them themselves)"))
    ok, error = launch("anonymize", "shard-00000|default", **{"optimization.margin": 0.9})
    assert not ok and error.startswith("anonymized_latents: variant_settings [default] was observed with other values than this run "
                                       "reads (this run's config sets optimization.margin): a run config that "
                                       "overrides params.yaml, or params.yaml changed since;")  # (hH: unnamed)
    ok, error = launch("prepare", None, pool_size=50)
    assert not ok and error.startswith("fake_pool: fake_pool_settings was observed with other values than this run reads "
                                       "(pool_size): ")
    # an evaluation reads no settings of its variant but logs them (MLflow): an unobserved edit left the images FRESH,
    # and they were logged with the edited value beside codes made without it; the report reads them (report_settings)
    for job, partition, source in (("evaluate", "default", "variant_evaluation: variant_settings [default]"),
                                   ("evaluate_report", None, "anonymization_report: report_settings")):
        ok, error = launch(job, partition, **{"optimization.lambda_attr": 0.2})
        assert not ok and error.startswith(f"{source} was observed with other values than this run reads"), error
    refused = {"fake_pool", "fake_features", "pairs", "anonymized_latents", "anonymized_images", "evaluation_metrics",
               "anonymization_report"}
    assert {k for k in materializations(instance) - before if k[0] in refused} == set()  # the prepare job's real
    assert launch("observe_settings") == (True, None)  # data went through: its settings were the observed ones
    before = materializations(instance)
    assert launch("anonymize", "shard-00000|m0.9") == (True, None)
    assert materializations(instance) - before == Counter({("anonymized_latents", "shard-00000|m0.9"): 1,
                                                           ("anonymized_images", "shard-00000|m0.9"): 1})


def test_a_run_named_by_per_dimension_partition_tags_alone_is_refused_before_it_stores_anything(state):
    """`dagster job execute -j anonymize --tags '{"dagster/partition/shard": ..., "dagster/partition/variant": ...}'`
    (the tags docs/pipeline.md says anonymize runs carry): the step saw its partition, Dagster's IO manager context
    none, so the codes were stored as `anonymized_latents/all.npz`, recorded without a partition, and the next step
    failed with KeyError: 'row'. Now it stops first, naming the tag that works."""
    from orchestration.graph import build_definitions
    from orchestration.driver import step_error

    root, instance = state
    storage = StorageResource(root=str(root / "store"), input_dir=str(root / "faces"))
    defs = build_definitions(storage, NetworksResource(params_path=str(root / "params.yaml")),
                             MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"))
    before = materializations(instance)
    result = defs.resolve_job_def("anonymize").execute_in_process(
        instance=instance, raise_on_error=False,
        tags={"dagster/partition/shard": "shard-00000", "dagster/partition/variant": "default"})
    assert not result.success
    assert step_error(instance, result.run_id) == (
        "anonymized_latents: anonymized_latents is partitioned, and this run of the anonymize job names its partition "
        "by the per-dimension tags dagster/partition/shard, dagster/partition/variant alone, which Dagster's IO "
        "managers do not see (its values would be stored as unpartitioned ones): launch it with the tag "
        "dagster/partition=shard-00000|default (`dagster job execute ... --tags '{\"dagster/partition\": "
        "\"shard-00000|default\"}'`), or from the UI's partition picker (nothing was written)")
    assert materializations(instance) == before
    assert not list((root / "store" / "anonymized_latents").glob("all*"))


def test_the_evaluation_jobs_launch_whole_from_the_ui(state):
    """The UI launches a whole job. One `evaluate` job held the references and the report (no partition) beside the
    per-variant assets: launched for a variant, real_gallery failed with Dagster's "Attempting to access partitions
    def for asset real_gallery, but it is not partitioned" after its work; launched without one, Dagster failed the
    variant's step ("Cannot access partition_key for a non-partitioned run"). Now each job holds one kind, and each
    launches whole; a selection of both kinds launched for a partition stops before any work, saying so."""
    from orchestration.graph import build_definitions
    from orchestration.driver import step_error

    root, instance = state
    defs = build_definitions(StorageResource(root=str(root / "store"), input_dir=str(root / "faces")),
                             NetworksResource(params_path=str(root / "params.yaml")),
                             MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"))
    before = materializations(instance)
    for job, partition in (("observe_settings", None), ("evaluate_references", None), ("evaluate", "m0.5"),
                           ("evaluate_report", None)):  # the UI's sweep is params.yaml's, not the driver's: observe
        assert defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition).success
    assert made_since(before, materializations(instance)) == {
        "real_gallery": {None}, "attribute_pseudo_labels": {None}, "attribute_classifier": {None},
        "baseline_metrics": {None}, "baseline_attributes": {None}, **{name: {"m0.5"} for name in PER_VARIANT},
        "anonymization_report": {None}}

    mixed = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey(name) for name in ("real_gallery", *PER_VARIANT)})
    before = materializations(instance)
    result = mixed.execute_in_process(instance=instance, partition_key="default", raise_on_error=False)
    assert not result.success and step_error(instance, result.run_id).startswith(
        "real_gallery: real_gallery is not partitioned, and this run of the __ASSET_JOB job is for a partition: "
        "launch it without one, apart from the partitioned assets (the jobs evaluate_references and evaluate_report "
        "hold the evaluation's unpartitioned assets, evaluate the per-variant ones), or run `falco stage evaluate`")
    assert materializations(instance) == before


def test_a_variant_whose_anonymization_is_stale_is_not_evaluated_from_the_ui(state):
    """From the UI (observe, then the evaluate job for m0.5) a variant whose optimization settings changed since its
    images were made was evaluated, and the report showed those images' numbers under the new settings; `falco
    stage evaluate` blocked it. The evaluation itself now refuses, before any work."""
    from orchestration.graph import build_definitions
    from orchestration.driver import step_error

    root, instance = state

    def launch(job: str, partition: str | None = None, **overrides):
        networks = NetworksResource(params_path=str(root / "params.yaml"), overrides=overrides)
        defs = build_definitions(StorageResource(root=str(root / "store"), input_dir=str(root / "faces")), networks,
                                 MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"))
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition,
                                                              raise_on_error=False)
        return result.success, None if result.success else step_error(instance, result.run_id)

    changed = {"optimization.lr": 0.07}
    assert launch("observe_settings", **changed) == (True, None)
    before = materializations(instance)
    ok, error = launch("evaluate", "m0.5", **changed)
    assert not ok and error.startswith("variant_evaluation: anonymized_latents [shard-00000|m0.5] stale")
    assert "materialize the anonymize job for m0.5's shards first" in error
    assert materializations(instance) == before
    assert launch("observe_settings") == (True, None)  # the settings the images were made with: fresh again
    assert launch("evaluate", "m0.5") == (True, None)


def test_a_redefined_variant_whose_codes_come_out_the_same_is_evaluated_again_under_its_new_definition(
        state, single_thread):
    """|cos - m| has the same gradient for two margins the similarity stays below, so the codes come out bit for bit
    the same; the variant's evaluation must still be re-made, or `runs compare` shows the old definition."""
    from orchestration.cli_runs import find_evaluation_runs

    root, instance = state
    latents = root / "store" / "anonymized_latents" / "keep"
    codes = []
    for margin in (0.8, 0.85):
        fast_params(root / "params.yaml", variants={"keep": {"margin": margin}})
        before = materializations(instance)
        run(root, instance, ["default", "keep"])
        codes.append([np.load(latents / f"{s}.npz")["ws"] for s in SHARDS])
        assert made_since(before, materializations(instance)) == {
            "anonymized_latents": _partitions(["keep"]), "anonymized_images": _partitions(["keep"]),
            **{name: {"keep"} for name in PER_VARIANT}, "anonymization_report": {None}}
    assert all(np.array_equal(a, b) for a, b in zip(*codes))  # the case this test is about
    [evaluation] = [r for r in find_evaluation_runs(f"sqlite:///{root / 'mlflow.db'}", None)
                    if r.data.tags.get("variant") == "keep"]
    assert float(evaluation.data.params["optimization.margin"]) == 0.85


@pytest.mark.parametrize("stage", ["anonymize", "evaluate"])
def test_a_later_stage_alone_refuses_a_prepare_stage_that_is_stale_or_never_ran(state, tmp_path, stage, monkeypatch,
                                                                                capsys):
    """`falco stage anonymize` after the pool size changed read the old pool, and logged the new size to MLflow; on a
    new storage it ran nothing and said done. Both are one failure naming `falco stage prepare`, before any run; a
    storage that does not exist is not made. The command says so in its error line alone (it also said `anonymize
    FAILED in 0.6 s: 0 run(s) done, 1 failed`, a failed run where none ran)."""
    from orchestration.cli import main

    root, instance = state
    before = materializations(instance)
    summary = run(root, instance, VARIANTS, stages=(stage,), overrides={"pool_size": 50})
    assert summary.failed == ["prepare"] and summary.ran == []
    assert "fake_pool stale" in summary.errors["prepare"] and "falco stage prepare" in summary.errors["prepare"]
    assert made_since(before, materializations(instance)) == {}
    with instance_at(tmp_path / "new_home") as new_instance:
        storage = StorageResource(root=str(tmp_path / "new_store"), input_dir=str(root / "faces"))
        networks = NetworksResource(params_path=str(root / "params.yaml"))
        summary = run_pipeline(storage, networks, VARIANTS, instance=new_instance, stages=(stage,),
                               log=lambda *_: None,
                               mlflow=MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"))
        assert summary.failed == ["prepare"] and "has not run on this storage" in summary.errors["prepare"]
        assert materializations(new_instance) == Counter()
        assert not (tmp_path / "new_store").exists()  # refused before its lock made the folder
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "cli_home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'cli.db'}")
    capsys.readouterr()
    assert main(["stage", stage, "--input", str(root / "faces"), "--storage", str(tmp_path / "cli_store"),
                 "--params", str(root / "params.yaml"), "--profile", "tiny"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("falco: error: prepare: the prepare stage has not run on "
                                                          "this storage (")
    summary = run(root, instance, VARIANTS, stages=(stage,))  # as prepared: nothing to refuse, nothing to do
    assert summary.failed == [] and summary.ran == []


def test_a_changed_optimization_setting_reruns_the_anonymization_of_every_variant_and_nothing_upstream(state,
                                                                                                   monkeypatch):
    """(Run as `dvc exp run` runs a stage's command: its MLflow runs name the DVC experiment and its baseline.)"""
    from mlflow import MlflowClient

    root, instance = state
    fast_params(root / "params.yaml", tiny={"optimization": {"steps": 3}})
    before = materializations(instance)
    monkeypatch.setenv("DVC_EXP_NAME", "three-steps")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
    run(root, instance, VARIANTS)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    tagged = client.search_runs([client.get_experiment_by_name("falco").experiment_id],
                                filter_string="tags.dvc_experiment = 'three-steps'", max_results=1000)
    assert {r.data.tags.get("asset_key") for r in tagged} >= {"anonymized_latents", "evaluation_metrics",
                                                              "anonymization_report", None}  # None: parent runs
    assert {r.data.tags["dvc_baseline_rev"] for r in tagged} == {"0123abc"}
    parents = [r for r in tagged if "asset_key" not in r.data.tags]  # a Dagster run's own: its variant and shard too
    assert {(r.info.run_name, r.data.tags.get("variant"), r.data.tags.get("shard")) for r in parents} >= {
        ("anonymize m0.5 shard-00001", "m0.5", "shard-00001"), ("evaluate m0.5", "m0.5", None)}
    made = made_since(before, materializations(instance))
    assert made == {"anonymized_latents": _partitions(), "anonymized_images": _partitions(),
                    **{name: set(VARIANTS) for name in PER_VARIANT}, "anonymization_report": {None}}
    steps = pd.read_csv(root / "store" / "anonymization_report" / "losses" / "m0.5.csv")
    assert len(steps) == 3


def test_values_put_back_as_dvc_checkout_does_are_recorded_again_not_refused_or_remade(state):
    """`dvc exp apply` / `dvc checkout` of an earlier experiment puts its params.yaml and its outputs back, each value
    with the name of the run that wrote it; Dagster's latest records were the later experiment's, so the next `dvc
    repro` (DVC: anonymize up to date) had its evaluate stage refused ("anonymized_images unrecorded,
    anonymized_latents stale"). The earlier materializations are now reported again: nothing is made again, the
    images stay those of the experiment put back, and the values are fresh under its settings."""
    from orchestration.cli_runs import evaluation_runs, open_experiment
    from orchestration.graph import build_definitions
    from orchestration.staleness import partition_statuses

    root, instance = state
    store = root / "store"
    made_again = ("anonymized_latents", "anonymized_images", *PER_VARIANT, "anonymization_report")

    def keep(name: str) -> Path:  # what DVC's cache holds of an experiment
        shutil.copytree(store, root / name)
        shutil.copy(root / "params.yaml", root / name / "params.yaml")
        return root / name

    def check_out(kept: Path) -> None:
        for folder in made_again:
            shutil.rmtree(store / folder)
            shutil.copytree(kept / folder, store / folder)
        shutil.copy(kept / "params.yaml", root / "params.yaml")

    def current_evaluations() -> dict[str, str]:  # what `falco runs compare` shows: variant -> its MLflow run
        client, experiment_id = open_experiment(f"sqlite:///{root / 'mlflow.db'}", None)
        return {r.data.tags["variant"]: r.info.run_id for r in evaluation_runs(client, experiment_id)
                if r.data.tags["asset_key"] == "evaluation_metrics"}

    first = keep("experiment_a")
    evaluated = {first: current_evaluations()}
    fast_params(root / "params.yaml", tiny={"optimization": {"steps": 3}})  # the second experiment
    run(root, instance, VARIANTS)
    assert (store / "anonymization_report" / "losses" / "m0.5.csv").read_text().count("\n") == 4  # 3 steps
    second = keep("experiment_b")
    evaluated[second] = current_evaluations()
    assert set(evaluated[first]) == set(VARIANTS) and not set(evaluated[first].values()) & set(evaluated[second].values())
    # each experiment put back in turn, the first twice: Dagster keeps one runless check evaluation per partition, so
    # reporting the checks' evaluations again failed the second restore of a partition (UNIQUE constraint failed)
    for kept in (first, second, first):
        check_out(kept)
        before, runs = materializations(instance), len(instance.get_run_records())
        logged = []
        summary = run(root, instance, VARIANTS, log=logged.append)
        assert summary.failed == [] and summary.blocked == [] and summary.ran == []
        assert len(instance.get_run_records()) == runs + 1  # the observation of the settings put back, no other run
        # reported again, each once: what the second experiment re-made (every variant's anonymization, evaluation,
        # and the report), not the values it shares with the first (fake pool, real data, evaluation references)
        assert made_since(before, materializations(instance)) == {
            "anonymized_latents": _partitions(), "anonymized_images": _partitions(),
            **{name: set(VARIANTS) for name in PER_VARIANT}, "anonymization_report": {None}}
        assert any(line.startswith("recorded again 19 stored value(s) an earlier run of this instance made")
                   for line in logged), logged
        # MLflow follows: the evaluations put back are the current ones (before: the later experiment's stayed)
        assert current_evaluations() == evaluated[kept]
    for name in ("anonymized_images", "anonymization_report"):  # the first experiment's, as put back
        restored = {p.relative_to(store): p.read_bytes() for p in (store / name).rglob("*") if p.is_file()}
        assert restored == {p.relative_to(first): p.read_bytes() for p in (first / name).rglob("*") if p.is_file()}
    graph = build_definitions(StorageResource(root=str(store), input_dir=str(root / "faces")),
                              NetworksResource(params_path=str(root / "params.yaml")),
                              MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")).resolve_asset_graph()
    keys = [dg.AssetKey("anonymized_latents"), dg.AssetKey("anonymized_images")]
    assert {v for status in partition_statuses(instance, graph, keys, sorted(_partitions()), str(store)).values()
            for v in status.values()} == {"FRESH"}


def test_a_pool_size_change_reruns_the_pool_its_features_and_the_pairs_but_not_the_real_data(state):
    root, instance = state
    before = materializations(instance)
    run(root, instance, VARIANTS, overrides={"pool_size": 50})
    made = made_since(before, materializations(instance))
    assert set(made) == {"fake_pool", "fake_features", "pairs", "anonymized_latents", "anonymized_images",
                         "baseline_metrics", "baseline_attributes", *PER_VARIANT, "anonymization_report"}
    assert made["anonymized_latents"] == _partitions()
    assert len(np.load(root / "store" / "fake_pool" / "all.npz")["w"]) == 50


def test_evaluate_alone_refuses_variants_whose_anonymization_is_stale(state, monkeypatch, capsys):
    """`falco stage evaluate` after a changed pool (prepare re-made, anonymize not run): the variants' codes come from
    the old pool, so evaluating them would report numbers the report's settings did not make. Its summary line said
    "evaluate done in ..." above "not evaluated"."""
    from orchestration.cli import main

    root, instance = state
    run(root, instance, VARIANTS, overrides={"pool_size": 50}, stages=("prepare",))
    before = materializations(instance)
    summary = run(root, instance, VARIANTS, overrides={"pool_size": 50}, stages=("evaluate",))
    assert sorted(summary.blocked) == sorted(VARIANTS)
    made = made_since(before, materializations(instance))
    assert not set(made) & {*PER_VARIANT, "anonymization_report"}  # no variant evaluated, no report
    monkeypatch.setenv("DAGSTER_HOME", str(root / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    capsys.readouterr()
    assert main(["stage", "evaluate", "--input", str(root / "faces"), "--storage", str(root / "store"), "--params",
                 str(root / "params.yaml"), "--profile", "tiny", "--pool-size", "50", "--variant", "default",
                 "--variant", "m0.5"]) == 1
    captured = capsys.readouterr()
    assert "\nevaluate incomplete in " in f"\n{captured.out}" and "not evaluated" in captured.err


def test_new_data_reruns_what_reads_the_real_images_but_not_the_fake_pool(state, lfw_faces):
    """(The new face is in colour, the others black and white: each anonymized face is drawn as its source is.)"""
    from anon_core.data.colour import is_grey

    root, instance = state
    tinted = np.clip(lfw_faces[7] * np.array([1.0, 0.8, 0.6]), 0, 255).astype(np.uint8)  # a colour photo
    Image.fromarray(tinted).save(root / "faces" / "Person A" / "img_7.png")
    before = materializations(instance)
    run(root, instance, VARIANTS)
    made = made_since(before, materializations(instance))
    assert not {"fake_pool", "fake_features"} & set(made)
    assert {"real_images", "real_features", "real_inversions", "pairs", *REFERENCES, *PER_VARIANT} <= set(made)
    assert made["anonymized_images"] == _partitions()  # 8 faces: still 3 shards, all of them new
    for variant in VARIANTS:
        written = sorted((root / "store" / "anonymized_images" / variant / "images").rglob("*.png"))
        assert len(written) == 8
        grey = {p.name: is_grey(np.asarray(Image.open(p))) for p in written}
        assert grey == {f"img_{i}.png": i != 7 for i in range(8)}


def _codes_by_input(store: Path, variant: str) -> dict[str, np.ndarray]:
    """{input path: its stored anonymized codes} over every shard of `variant`."""
    named = pd.read_parquet(store / "real_images" / "all.parquet").query("image != ''").reset_index(drop=True)
    codes = {}
    for path in (store / "anonymized_latents" / variant).glob("shard-*.npz"):
        with np.load(path) as value:
            codes |= {named["input"][row]: ws for row, ws in zip(value["row"], value["ws"])}
    return codes


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def _latest_by_partition(instance, asset: str, key: str) -> dict:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records
    latest = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        latest[record.partition_key] = record.asset_materialization.metadata[key].value
    return latest


def _latest_metadata(instance, asset: str, key: str) -> list:
    return list(_latest_by_partition(instance, asset, key).values())


def test_new_data_inverts_and_optimizes_only_the_images_it_adds(state, lfw_faces):
    """An image that sorts before the others moves every image to the next place, so every shard holds other
    images and Dagster re-runs them all; each shard takes its earlier images' inversions and codes, by the key of
    what decided them, from wherever they are stored, and optimizes only the new image. A variant defined like
    another takes that one's codes."""
    root, instance = state
    store = root / "store"
    before = {variant: _codes_by_input(store, variant) for variant in VARIANTS}
    files_before = {path: _stamp(path) for path in [*store.glob("anonymized_images/*/images/**/*.png"),
                                                   *store.glob("real_images/images/**/*.png")]}
    (root / "faces" / "Person 0").mkdir()
    Image.fromarray(lfw_faces[7]).save(root / "faces" / "Person 0" / "img_0.png")  # sorts before "Person A/..."
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"] = {**params.get("variants", {}), "like_default": {"margin": 0.0}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    summary = run(root, instance, [*VARIANTS, "like_default"])
    assert summary.failed == []
    assert _latest_metadata(instance, "real_inversions", "num_inverted") == [1]
    assert _latest_metadata(instance, "real_inversions", "num_reused") == [7]
    optimized = _latest_metadata(instance, "anonymized_latents", "num_optimized")
    assert sum(optimized) == len(VARIANTS) and len(optimized) == 3 * len(VARIANTS) + 3  # one new image per variant
    for variant in VARIANTS:
        after = _codes_by_input(store, variant)
        assert sorted(after) == sorted([*before[variant], "Person 0/img_0.png"])
        for name, ws in before[variant].items():  # the same codes, though every image moved to another shard
            np.testing.assert_array_equal(after[name], ws)
    like = _codes_by_input(store, "like_default")
    default = _codes_by_input(store, "default")
    assert all(np.array_equal(like[name], default[name]) for name in default)
    # the rows kept for the shard an image moved to are gone once every shard holds its own
    assert not list((store / "anonymized_latents").rglob(".*.moved.npz"))
    # and the images of codes that did not change are neither generated nor written again: the files stay as they
    # were (same inode and modification time), only the new image's are written (8 in the new variant's folder)
    changed = sorted(str(path.relative_to(store)) for path, stamp in files_before.items() if _stamp(path) != stamp)
    assert files_before and not changed
    assert _latest_metadata(instance, "real_images", "num_images_written") == [1]
    written = _latest_metadata(instance, "anonymized_images", "num_images_written")
    assert sorted(written) == sorted([1] * len(VARIANTS) + [0] * 2 * len(VARIANTS) + [0, 0, 0])
    # the variant defined like `default` has its images: copied from `default`'s folder, byte for byte
    assert sorted(_latest_metadata(instance, "anonymized_images", "num_images_copied")) == \
        sorted([0] * 3 * len(VARIANTS) + [3, 3, 2])
    like = sorted(store.glob("anonymized_images/like_default/images/**/*.png"))
    assert len(like) == 8 and all(path.read_bytes() == (store / "anonymized_images" / "default" / path.relative_to(
        store / "anonymized_images" / "like_default")).read_bytes() for path in like)
    assert not list(store.glob("anonymized_images/*/.*.moved.parquet"))  # every image is in its shard's table
    # the real gallery and the pseudo-labels read the new real image only; each variant's evaluation read only the
    # image it had not read before, the variant defined like `default` none
    assert _latest_metadata(instance, "real_gallery", "num_images_read") == [1]
    assert _latest_metadata(instance, "attribute_pseudo_labels", "num_images_read") == [1]
    [baselines_read] = _latest_metadata(instance, "baseline_metrics", "num_images_read")
    assert baselines_read["blur"] == 1  # the new source's blurred image; swap reads the fakes whose pairing changed
    assert oct((store / "evaluation_outputs" / "real").stat().st_mode & 0o777) == "0o700"  # identity embeddings
    # (its images are default's, under the same keys), and its numbers are default's
    assert _latest_by_partition(instance, "evaluation_metrics", "num_images_read") == \
        {"default": 1, "m0.5": 1, "like_default": 0}
    metrics = {v: pd.read_parquet(store / "evaluation_metrics" / v / "all.parquet").drop(columns="method")
               for v in ("default", "like_default")}
    pd.testing.assert_frame_equal(metrics["default"], metrics["like_default"], check_exact=True)


def test_removed_inputs_leave_no_image_behind_in_the_storage(state):
    """7 faces in shards of 3, then 3 of them removed: the shards become 2 (shard-00002 is no longer registered), and
    the stored image sets hold exactly what their tables list: no anonymized image, and no real face, of an input
    that is gone (before, they stayed in `anonymized_images/<variant>/images/`, the folder users take as the
    dataset, and the real faces in `real_images/images/`)."""
    from evaluation.baselines import made_from_real, real_source

    root, instance = state
    store = root / "store"
    real = pd.read_parquet(store / "real_images" / "all.parquet")
    removed = [f"Person A/img_{i}.png" for i in (0, 3, 6)]
    removed_keys = set(real.loc[real["input"].isin(removed), "key"])
    assert len(removed_keys) == 3 and removed_keys <= kept_keys(store / "evaluation_outputs" / "real")

    def anonymized_keys(variant: str) -> set[str]:  # the keys of the removed inputs' images in a variant's tables
        tables = pd.concat([pd.read_parquet(t) for t in (store / "anonymized_images" / variant).glob("*.parquet")])
        return set(tables.loc[tables["input"].isin(removed), "key"])

    removed_images = {v: anonymized_keys(v) for v in VARIANTS}
    assert all(len(keys) == 3 for keys in removed_images.values())
    assert set().union(*removed_images.values()) <= kept_keys(store / "evaluation_outputs")
    for name in removed:
        (root / "faces" / name).unlink()
    # `default` alone first: m0.5, not run, still holds the removed inputs' images on disk, so what the evaluation
    # made of them is kept for its next evaluation; default's go with its images
    summary = run(root, instance, ["default"])
    assert summary.failed == []
    kept_anonymized = kept_keys(store / "evaluation_outputs")
    assert not removed_images["default"] & kept_anonymized and removed_images["m0.5"] <= kept_anonymized
    summary = run(root, instance, VARIANTS)
    assert summary.failed == []
    real = pd.read_parquet(store / "real_images" / "all.parquet")
    real_names = set(real["image"].fillna("")) - {""}
    assert {p.relative_to(store / "real_images" / "images").as_posix()
            for p in (store / "real_images" / "images").rglob("*.png")} == real_names
    for variant in VARIANTS:
        folder = store / "anonymized_images" / variant
        assert sorted(p.stem for p in folder.glob("*.parquet")) == SHARDS[:2]
        listed = set(pd.concat([pd.read_parquet(t) for t in folder.glob("*.parquet")])["image"])
        assert {p.relative_to(folder / "images").as_posix() for p in (folder / "images").rglob("*.png")} == listed
        assert len(listed) == 4 and not any(name.endswith(("img_0.png", "img_3.png", "img_6.png")) for name in listed)
        latents = store / "anonymized_latents" / variant  # nor the codes of the shard no longer registered
        assert sorted(p.name for p in latents.iterdir()) == \
            [".shard-00000.files", ".shard-00000.run", ".shard-00001.files", ".shard-00001.run", "shard-00000.npz",
             "shard-00001.npz"]
    # nor what the evaluation networks made of them: the identity embeddings of the removed faces and of their
    # blurred, pixelated and masked images are gone from the private store, the remaining faces' kept
    kept_real = kept_keys(store / "evaluation_outputs" / "real")
    assert {real_source(key) for key in kept_real} == set(real.loc[real["status"] == "ok", "key"])
    assert any(made_from_real(key) for key in kept_real)
    assert not any(made_from_real(key) for key in kept_keys(store / "evaluation_outputs"))  # never beside the fakes
    # now m0.5's too; the images left were all read before
    assert not set().union(*removed_images.values()) & kept_keys(store / "evaluation_outputs")
    assert _latest_by_partition(instance, "evaluation_metrics", "num_images_read") == {"default": 0, "m0.5": 0}
    assert sum(_latest_metadata(instance, "real_gallery", "num_outputs_removed") +
               _latest_metadata(instance, "attribute_pseudo_labels", "num_outputs_removed")) >= 3 * 2


def test_fresh_remakes_everything(state):
    root, instance = state
    before = materializations(instance)
    run(root, instance, VARIANTS, fresh=True)
    made = made_since(before, materializations(instance))
    assert set(made) == PREPARE | REFERENCES | PER_VARIANT | {"anonymized_latents", "anonymized_images",
                                                              "anonymization_report"}
    # computed anew, not taken from the stored rows
    assert _latest_metadata(instance, "real_inversions", "num_inverted") == [7]
    assert sum(_latest_metadata(instance, "anonymized_latents", "num_optimized")) == 7 * len(VARIANTS)


def test_an_instance_and_a_storage_stay_paired_unless_fresh_pairs_them_anew(state):
    """The instance's records describe one storage's files: with another storage it would call values up to date
    that the storage lacks, or holds from other settings (a pool of another size), so the pairing is refused before
    any run; --fresh re-makes everything into the new storage and pairs it; the old storage is then refused."""
    from anon_core.errors import FalcoError
    from orchestration.driver import run_pipeline
    from orchestration.resources import NetworksResource, StorageResource
    from orchestration.tracking import MlflowResource

    root, instance = state
    networks = NetworksResource(params_path=str(root / "params.yaml"))
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")

    def pipeline(store: Path, on: dg.DagsterInstance, **kw):
        storage = StorageResource(root=str(store), input_dir=str(root / "faces"))
        return run_pipeline(storage, networks, ["default"], instance=on, mlflow=mlflow, log=lambda *_: None,
                            stages=("prepare",), **kw)

    runs_before = len(instance.get_runs())
    other = root / "other-store"
    with pytest.raises(FalcoError, match=f"records the pipeline of another storage .* not of {other}"):
        pipeline(other, instance)
    assert len(instance.get_runs()) == runs_before and not (other / "fake_pool").exists()  # nothing ran

    summary = pipeline(other, instance, fresh=True)
    assert summary.ran == ["prepare"] and (other / "fake_pool" / "all.npz").is_file()
    with pytest.raises(FalcoError, match=f"records the pipeline of another storage \\({other}\\)"):
        pipeline(root / "store", instance)  # its files are no longer what the records describe
    with instance_at(root / "home2") as newcomer, pytest.raises(FalcoError, match="another Dagster instance records"):
        pipeline(other, newcomer)
    assert pipeline(other, instance).ran == []  # the pair itself is up to date
    other.rename(root / "other-store.bak")  # removed (or replaced by an empty folder): named as such
    with pytest.raises(FalcoError, match=f"records the pipeline of the storage {other} as it was, but that storage "
                                         "was removed or replaced since"):
        pipeline(other, instance)


def test_two_first_pipelines_on_two_new_storages_under_one_new_instance_cannot_both_pair(tmp_path):
    """Each holds only its own storage's lock; the instance's pairing lock makes them check one after the other,
    so the second sees the first one's mark and is refused (it would otherwise pair the instance with its storage
    too, and the two would share records of different files)."""
    import threading

    from anon_core.errors import FalcoError
    from anon_core.folders import one_at_a_time
    from orchestration.driver import PAIRING_LOCK, bind_instance_and_storage

    home = tmp_path / "home"
    home.mkdir()
    outcomes = []

    def first_run(store: Path) -> None:
        store.mkdir()
        try:
            bind_instance_and_storage(home, store, fresh=False)
            outcomes.append(("paired", store.name))
        except FalcoError as err:
            outcomes.append(("refused", str(err)))

    with one_at_a_time(home / PAIRING_LOCK):  # as if a third process were in the middle of its check
        starts = [threading.Thread(target=first_run, args=(tmp_path / name,)) for name in ("a", "b")]
        for start in starts:
            start.start()
        time.sleep(0.5)
        assert all(start.is_alive() for start in starts) and not outcomes  # both wait for the lock
    for start in starts:
        start.join(30)
    assert sorted(kind for kind, _ in outcomes) == ["paired", "refused"]
    winner = next(name for kind, name in outcomes if kind == "paired")
    assert f"records the pipeline of another storage ({tmp_path / winner})" in next(
        text for kind, text in outcomes if kind == "refused")


@pytest.fixture(scope="module")
def tiny_faces() -> np.ndarray:
    """6 images of the tiny profile's generator: dlib takes its blobs for one person (distances 0.2-0.4 < 0.6), so
    every anonymized blob is still matched to its source blob and a privacy check fails for real."""
    import torch

    from anon_core.fake_pool import generate
    from anon_core.profiles import build_networks

    generator = build_networks("tiny").generator
    with torch.no_grad():
        ws = generator.mapping(torch.randn(6, generator.config.z_dim, generator=torch.Generator().manual_seed(3)))
    return generate(generator, ws.numpy())


def test_a_failed_privacy_check_is_reported_and_checked_again_when_its_bound_changes(tmp_path, tiny_faces,
                                                                                      monkeypatch, capsys):
    root, shards = tmp_path, SHARDS[:2]  # 6 faces in shards of 3
    write_faces(root / "faces", tiny_faces, broken=False)
    data = {**yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())["data"], "align": False}
    fast_params(root / "params.yaml", data=data, checks={"privacy_max_match_share": 1.0})  # anything passes
    with instance_at(root / "home") as instance:
        first = run(root, instance, VARIANTS)
        assert first.failed == [] and first.privacy_failed == {}
        fast_params(root / "params.yaml", data=data, checks={"privacy_max_match_share": 0.05})
        before = materializations(instance)
        lines = []
        summary = run(root, instance, VARIANTS, log=lines.append)
        assert summary.failed == [] and summary.privacy_failed == {v: shards for v in VARIANTS}
        # one line per shard says the check failed; the run is not also reported FAILED
        assert sum("PRIVACY CHECK FAILED: dlib matches" in line for line in lines) == 4
        assert not [line for line in lines if "FAILED (Dagster run" in line]
        # only checked again, and the report made again: it marks each variant that fails the check
        assert made_since(before, materializations(instance)) == {"anonymization_report": {None}}
        report = (root / "store" / "anonymization_report" / "report.md").read_text()
        for variant in VARIANTS:
            assert f"{variant} failed the privacy check: do not release its images. dlib still matches" in report
        records = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("anonymized_images"), "privacy_source_match_share"), limit=100)
        assert sum(r.status.value == "FAILED" for r in records) == 4
        again = run(root, instance, VARIANTS)  # same bound: not checked again
        assert again.ran == [] and again.privacy_failed == summary.privacy_failed
        # `falco pipeline` names the failed shards; its exit code says so only with --require-privacy (a release gate)
        from orchestration.cli import main

        monkeypatch.setenv("DAGSTER_HOME", str(root / "home"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        cmd = ["pipeline", "--input", str(root / "faces"), "--storage", str(root / "store"), "--params",
               str(root / "params.yaml"), "--variant", ",".join(VARIANTS)]
        assert main(cmd) == 0
        said = capsys.readouterr().err
        assert f"PRIVACY CHECK FAILED for {VARIANTS[0]} on {len(shards)} shard(s)" in said
        assert "params.yaml's checks.privacy_max_match_share = 0.05" in said and "falco: note:" not in said
        # another experiment on an up-to-date storage: nothing is made, so nothing is tracked there; said so
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere")
        assert main(cmd) == 0
        assert ("falco: note: nothing was made again, so MLflow experiment 'elsewhere' holds no evaluation of these "
                "values") in capsys.readouterr().err
        monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
        assert main([*cmd, "--require-privacy"]) == 1
        capsys.readouterr()
        # without --params (the project's params.yaml, here this one) the failure line ended in a TypeError traceback
        # and exit 1, on every default run whose check failed (the README's margin sweep)
        monkeypatch.setattr("anon_core.params.DEFAULT_PARAMS_PATH", root / "params.yaml")
        assert main([c for c in cmd if c not in ("--params", str(root / "params.yaml"))]) == 0
        said = capsys.readouterr()
        assert "0 run(s) done" in said.out and "params.yaml's checks.privacy_max_match_share = 0.05" in said.err
        # `falco runs compare` judges each variant by the report's bound, as the report does
        assert main(["runs", "compare", "--format", "csv"]) == 0
        compared = capsys.readouterr()
        frame = pd.read_csv(io.StringIO(compared.out)).set_index("variant")
        assert frame.loc[VARIANTS, "check:privacy_check"].tolist() == ["FAILED"] * len(VARIANTS)
        for variant in VARIANTS:  # judged in its worst shard, as the blocking check judges each shard
            share, worst = frame.loc[variant, ["reid/dlib/verification_rate", "reid/dlib/worst_shard_verification_rate"]]
            matched = f"{share:.1%} of its images to their own source" if worst <= share else \
                f"{worst:.1%} of the images of one of its shards to their own source ({share:.1%} of all of them)"
            assert (f"falco: warning: {variant} fails the privacy check: dlib still matches {matched}, more than "
                    "checks.privacy_max_match_share = 0.05 (the bound of the latest report on its input) allows") \
                in compared.err
            assert f"{variant} failed the privacy check: do not release its images. dlib still matches " \
                f"{matched.replace(' (', ' (distance < 0.6; ') if worst > share else matched + ' (distance < 0.6)'}" \
                in report
        assert made_since(before, materializations(instance)) == {"anonymization_report": {None}}  # the CLI
        # runs found everything up to date

        fast_params(root / "params.yaml", data=data, checks={"privacy_max_match_share": 1.0})
        third = run(root, instance, VARIANTS)
        assert third.privacy_failed == {} and len(third.ran) == 5 and third.failed == []  # 4 checks and the report
        assert "failed the privacy check" not in (root / "store" / "anonymization_report" / "report.md").read_text()
        assert main(["runs", "compare", "--format", "csv"]) == 0
        compared = capsys.readouterr()
        frame = pd.read_csv(io.StringIO(compared.out)).set_index("variant")
        assert frame.loc[VARIANTS, "check:privacy_check"].tolist() == ["passed"] * len(VARIANTS)
        assert "fails the privacy check" not in compared.err


def test_a_value_whose_run_stopped_before_dagster_recorded_it_is_made_again(state):
    """A run killed after writing a value and before Dagster recorded it (here: a `--seed 7` run's fake pool) leaves
    a value the instance does not record. Back on the recorded settings Dagster alone calls it up to date, and the
    sweep used to go on from the other seed's pool without a word."""
    from anon_core.errors import FalcoError
    from orchestration.io_manager import FalcoIOManager

    root, instance = state
    stored = root / "store" / "fake_pool" / "all.npz"
    with np.load(stored) as data:
        recorded = {k: data[k] for k in data.files}
    manager = FalcoIOManager(root=str(root / "store"))
    stopped = {k: v + 1 if v.dtype.kind == "f" else v for k, v in recorded.items()}  # another pool
    manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("fake_pool"), run_id="0badc0de-stopped"),
                          stopped)  # what the stopped run wrote, through the same writer, with no record after it
    with pytest.raises(FalcoError, match="written by Dagster run 0badc0de, which stopped before Dagster recorded it"):
        manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("fake_pool"), instance=instance))

    before = materializations(instance)
    summary = run(root, instance, VARIANTS)
    assert summary.failed == [] and "prepare" in summary.ran
    # re-made with what follows it in its run; made as recorded, so no shard is anonymized again
    assert made_since(before, materializations(instance)) == {"fake_pool": {None}, "fake_features": {None},
                                                              "pairs": {None}}
    with np.load(stored) as data:
        for key, value in recorded.items():
            np.testing.assert_array_equal(data[key], value)
    assert manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("fake_pool"), instance=instance))


def test_stored_files_deleted_by_hand_are_made_again_and_nothing_else(state):
    """A stored value Dagster records whose files were deleted (an image, the report's folder, a variant's whole
    folder) stayed up to date for Dagster: the pipeline did nothing, the report pointed at files that were not there
    and the anonymized dataset lacked images. Each is made again, with what follows it in its run only."""
    root, instance = state
    store = root / "store"
    images = store / "anonymized_images" / "m0.5"
    shard = SHARDS[1]
    victim = images / "images" / pd.read_parquet(images / f"{shard}.parquet")["image"].iloc[0]
    kept = {path: path.read_bytes() for path in images.rglob("*.png")}
    victim.unlink()
    shutil.rmtree(store / "anonymization_report")
    before, lines = materializations(instance), []
    summary = run(root, instance, VARIANTS, log=lines.append)
    assert summary.failed == []
    # the image's shard and the report; the evaluation reads the same images as before, so Dagster keeps it
    assert made_since(before, materializations(instance)) == {"anonymized_images": {f"{shard}|m0.5"},
                                                              "anonymization_report": {None}}
    assert victim.read_bytes() == kept[victim]  # the same image again: made from the recorded codes
    assert (store / "anonymization_report" / "report.md").is_file()
    assert any(f"anonymized_images {shard}|m0.5: 1 file(s) of its stored value" in line and victim.name in line
               for line in lines), lines
    assert f"report: anonymization_report: its stored value in {store / 'anonymization_report'} is gone; making it " \
           "again" in lines

    shutil.rmtree(images)  # the variant's whole folder, writer files and all
    before = materializations(instance)
    summary = run(root, instance, VARIANTS)
    assert summary.failed == []
    assert made_since(before, materializations(instance)).get("anonymized_images") == _partitions(["m0.5"])
    assert {path: path.read_bytes() for path in images.rglob("*.png")} == kept
    assert run(root, instance, VARIANTS).ran == []  # whole again: nothing more to do


def test_codes_written_whole_by_a_run_killed_before_dagster_recorded_them_are_taken_not_inverted_again(state,
                                                                                                       monkeypatch):
    """`kill -9` of `prepare` once `real_inversions` was stored, before Dagster had indexed its materialization: the
    next run inverted every image again (10 of 10), as the stored codes were not the recorded ones. Written whole
    (its files record names its writer), each row keyed by what it was computed from, they are taken."""
    from orchestration.io_manager import FalcoIOManager

    root, instance = state
    store = FalcoIOManager.handle_output
    inversions = root / "store" / "real_inversions"

    def killed_after_storing_inversions(self, context, obj):
        store(self, context, obj)
        if context.asset_key == dg.AssetKey("real_inversions"):
            raise OSError("killed")

    monkeypatch.setattr(FalcoIOManager, "handle_output", killed_after_storing_inversions)
    assert run(root, instance, VARIANTS, fresh=True).failed == ["prepare"]
    written = {p.name: p.read_bytes() for p in inversions.glob("all*.npy")}
    monkeypatch.setattr(FalcoIOManager, "handle_output", store)
    torn = root / "torn"
    shutil.copytree(root, torn, ignore=shutil.ignore_patterns("home"))
    assert run(root, instance, VARIANTS).failed == []
    [made] = instance.fetch_materializations(dg.AssetKey("real_inversions"), limit=1).records
    metadata = made.asset_materialization.metadata
    assert metadata["num_inverted"].value == 0 and metadata["num_reused"].value == 7  # every readable face
    assert {p.name: p.read_bytes() for p in inversions.glob("all*.npy")} == written
    # a pair torn by a stop (the keys of a new run beside the codes of the last) is still not taken
    (torn / "store" / "real_inversions" / ".all.run").write_text("another-run")
    from orchestration.io_manager import keyed_array

    assert keyed_array(instance, torn / "store", dg.AssetKey("real_inversions"), "ws") is None


def test_the_mlflow_run_of_a_run_in_progress_stays_running_and_a_run_stopped_before_its_assets_has_one(state,
                                                                                                      monkeypatch):
    """Each step's nested run ended its parent FINISHED: while `anonymized_images` was written, and after a `kill -9`
    there, MLflow showed the shard's run FINISHED, its Dagster run STARTED and its images missing. And a run stopped
    or failed while loading its inputs, before any asset opened a run, had none in MLflow."""
    from orchestration.io_manager import FalcoIOManager
    from orchestration.tracking import DAGSTER_RUN_TAG, DEFAULT_EXPERIMENT, PARENT_TAG, MlflowResource

    root, instance = state
    client = MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").client()
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id

    def runs_of(dagster_run_id: str) -> dict[str, str]:  # name -> status, the parent's under "parent"
        return {("parent" if PARENT_TAG not in r.data.tags else r.info.run_name): r.info.status
                for r in client.search_runs([experiment], f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}'")}

    store, load, seen = FalcoIOManager.handle_output, FalcoIOManager.load_input, {}

    def watching(self, context, obj):
        if context.asset_key == dg.AssetKey("anonymized_images"):  # the run's second step, its first one ended
            seen.update(runs_of(context.run_id))
        store(self, context, obj)

    monkeypatch.setattr(FalcoIOManager, "handle_output", watching)
    shutil.rmtree(root / "store" / "anonymized_latents" / "m0.5")
    assert run(root, instance, VARIANTS).failed == []
    assert seen["parent"] == "RUNNING" and seen[f"anonymized_latents m0.5 {SHARDS[0]}"] == "FINISHED"
    monkeypatch.setattr(FalcoIOManager, "handle_output", store)

    def failing_load(self, context):
        raise OSError("Input/output error")

    monkeypatch.setattr(FalcoIOManager, "load_input", failing_load)
    shutil.rmtree(root / "store" / "anonymization_report")
    summary = run(root, instance, VARIANTS)
    assert summary.failed == ["report"]
    assert runs_of(summary.run_ids[-1]) == {"parent": "FAILED"}
    monkeypatch.setattr(FalcoIOManager, "load_input", load)


def test_a_step_that_fails_while_its_value_is_stored_leaves_no_finished_mlflow_run_for_it(state, monkeypatch):
    """`pairs` did its work and its value was written, then its step failed before Dagster recorded it (a stop, a
    full disk): the value is made again, and its MLflow run, which ended FINISHED when the asset returned, ends
    FAILED with the Dagster run (before: FINISHED, beside a value made again)."""
    from orchestration.io_manager import FalcoIOManager
    from orchestration.tracking import ASSET_TAG, DAGSTER_RUN_TAG, DEFAULT_EXPERIMENT, MlflowResource

    root, instance = state
    store = FalcoIOManager.handle_output

    def failing_after_storing_pairs(self, context, obj):
        store(self, context, obj)
        if context.asset_key == dg.AssetKey("pairs"):
            raise OSError("No space left on device")

    monkeypatch.setattr(FalcoIOManager, "handle_output", failing_after_storing_pairs)
    assert run(root, instance, VARIANTS, fresh=True).failed == ["prepare"]
    client = MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").client()
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id

    def latest_pairs_run():
        return client.search_runs([experiment], filter_string=f"tags.{ASSET_TAG} = 'pairs'",
                                  order_by=["attributes.start_time DESC"])[0]

    stopped = latest_pairs_run()
    recorded = instance.fetch_materializations(dg.AssetKey("pairs"), limit=1).records[0]
    assert recorded.run_id != stopped.data.tags[DAGSTER_RUN_TAG]  # Dagster did not record it
    assert stopped.info.status == "FAILED"
    monkeypatch.setattr(FalcoIOManager, "handle_output", store)
    assert run(root, instance, VARIANTS).failed == []
    assert latest_pairs_run().info.status == "FINISHED"


def test_the_executor_of_params_yaml_applies_to_cli_runs_and_settings_are_observed_in_process(state, capfd):
    """Observing the settings ran under the multiprocess executor too: a process per step, 95 s for its 11 steps on
    2 cores before every `falco pipeline`, and each step process printed Dagster's DEBUG `STEP_WORKER_STARTED` line
    at the default INFO level."""
    root, instance = state
    shutil.rmtree(root / "store" / "anonymization_report")  # the report alone is made again
    summary = run(root, instance, VARIANTS, overrides={"pipeline.executor": "multiprocess"}, stages=("evaluate",))
    assert summary.ran == ["report"] and summary.failed == []
    jobs = {r.job_name: r.run_id for r in instance.get_runs() if r.run_id in summary.run_ids}

    def messages(job: str) -> str:
        return " ".join(e.message or "" for e in instance.all_logs(jobs[job]))

    assert "multiprocess executor" in messages("evaluate_report")
    assert "multiprocess executor" not in messages("observe_settings") and "in process" in messages("observe_settings")
    assert "STEP_WORKER_STARTED" not in capfd.readouterr().err
    in_process = run(root, instance, VARIANTS, stages=())  # tiny's own executor
    messages = " ".join(e.message or "" for e in instance.all_logs(in_process.run_ids[-1]))
    assert "multiprocess executor" not in messages and "in process" in messages


def _pipeline_past_its_first_shard(tmp_path, lfw_faces, extra=(), **popen) -> tuple[subprocess.Popen, Path, list[str],
                                                                                      dict]:
    """`falco pipeline` (with `extra` arguments) in a subprocess on 7 faces in shards of 2 (20 steps each), returned
    once its first shard's images are stored: (the process, that shard's table, the command, its environment)."""
    write_faces(tmp_path / "faces", lfw_faces[:7])
    params = fast_params(tmp_path / "params.yaml", tiny={"optimization": {"steps": 20}})
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "orchestration.cli", "pipeline", "--input", str(tmp_path / "faces"), "--storage",
           str(tmp_path / "store"), "--params", str(params), "--shard-size", "2", *extra]
    proc = subprocess.Popen(cmd, env=env, **popen)
    first = tmp_path / "store" / "anonymized_images" / "default" / "shard-00000.parquet"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.exists() and proc.poll() is None, "the first shard never finished"
    return proc, first, cmd, env


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended since it was listed
        return b""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux's /proc")
def test_a_step_process_ends_when_the_falco_process_is_killed_alone(tmp_path, lfw_faces):
    """`kill -9` of the falco process alone (as the out-of-memory killer does) left the multiprocess executor's step
    running beside the re-run, writing into the storage (its shard's codes, after a re-run with other settings had
    started), and then hung for good. It now ends at once, writing nothing more."""
    write_faces(tmp_path / "faces", lfw_faces[:4])
    params = fast_params(tmp_path / "params.yaml", tiny={"optimization": {"steps": 2000}})  # minutes per shard
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "pipeline", "--input", str(tmp_path / "faces"),
                             "--storage", str(tmp_path / "store"), "--params", str(params), "--shard-size", "2",
                             "--executor", "multiprocess"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        pairs, deadline, steps = tmp_path / "store" / "pairs", time.time() + 300, set()
        while not steps and time.time() < deadline:  # a shard's step, in its own process (multiprocessing)
            if pairs.exists():
                steps = {pid for pid in _children(proc.pid) if b"multiprocessing" in _cmdline(pid)}
            time.sleep(0.05)
        assert steps, "no step process was seen"
        time.sleep(15)  # into its optimization
        os.kill(proc.pid, signal.SIGKILL)  # the falco process only
        proc.wait()
        stored = {p for p in (tmp_path / "store").rglob("*") if p.is_file() and not p.name.startswith(".")}
        deadline = time.time() + 30
        while any(_alive(pid) for pid in steps) and time.time() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in steps if _alive(pid)], "a step process outlived the falco process"
        assert {p for p in (tmp_path / "store").rglob("*") if p.is_file() and not p.name.startswith(".")} == stored
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass


def test_runs_a_gone_falco_process_left_are_marked_failed_under_the_status_they_were_left_in(tmp_path):
    """A Ctrl-C between two Dagster runs leaves the new run NOT_STARTED; the next driver said it "was left STARTED".
    Runs of a live process, or of another host, are left alone."""
    import socket

    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

    from orchestration.driver import end_abandoned_runs
    from orchestration.run_ends import LAUNCHED_BY

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = socket.gethostname()
    tags = {"not_started": f"{here}:{gone.pid}", "started": f"{here}:{gone.pid}", "alive": f"{here}:{os.getpid()}",
            "elsewhere": f"other-host:{gone.pid}"}
    with dg.instance_for_test() as instance:
        for name, tag in tags.items():
            status = DagsterRunStatus.NOT_STARTED if name == "not_started" else DagsterRunStatus.STARTED
            instance.add_run(DagsterRun(job_name="anonymize", run_id=f"{name}-run", status=status,
                                        tags={LAUNCHED_BY: tag}))
        ended = end_abandoned_runs(instance, MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
        assert sorted(ended) == [("not_started-run", "NOT_STARTED"), ("started-run", "STARTED")]
        assert {r.run_id: r.status.value for r in instance.get_runs()} == {
            "not_started-run": "FAILURE", "started-run": "FAILURE", "alive-run": "STARTED", "elsewhere-run": "STARTED"}


def test_killed_run_resumes_without_redoing_finished_shards(tmp_path, lfw_faces):
    home = tmp_path / "home"
    proc, first, cmd, env = _pipeline_past_its_first_shard(tmp_path, lfw_faces, stdout=subprocess.DEVNULL,
                                                           stderr=subprocess.DEVNULL, start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)  # in the middle of a later shard
    killed_ms = time.time() * 1000
    proc.wait()
    done_before = {p.stem for p in first.parent.glob("shard-*.parquet")}
    assert 0 < len(done_before) < 4

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "marked failed" in out.stdout  # the killed run, left STARTED, is ended by the next start
    with dg.DagsterInstance.from_config(str(home)) as instance:
        states = {r.status.value for r in instance.get_runs()}
        assert "STARTED" not in states and "FAILURE" in states
        for shard in sorted(done_before):
            records = instance.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("anonymized_images"), asset_partitions=[f"{shard}|default"]), limit=5).records
            assert len(records) == 1, f"{shard} was redone"
        assert instance.get_materialized_partitions(dg.AssetKey("anonymized_images")) == {
            f"shard-{i:05d}|default" for i in range(4)}
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    tracked = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert tracked and not [r.data.tags.get("mlflow.runName") for r in tracked if r.info.status == "RUNNING"]
    assert "KILLED" in {r.info.status for r in tracked}  # the killed run and the step it was in
    # they end when the killed process last did something, not when the next driver found them (their duration)
    assert all(r.info.end_time <= killed_ms for r in tracked if r.info.status == "KILLED")
    store = tmp_path / "store"
    from safetensors.numpy import load_file

    for path in (p for p in store.rglob("*") if p.is_file() and not p.name.startswith(".")):
        # Every visible file is whole: a kill can only leave hidden temporary files behind.
        {".parquet": pd.read_parquet, ".npz": lambda p: dict(np.load(p)), ".npy": np.load, ".json": Path.read_text,
         ".png": lambda p: Image.open(p).load(), ".md": Path.read_text, ".html": Path.read_text,
         ".csv": pd.read_csv, ".safetensors": load_file}[path.suffix](path)
    images = sorted((store / "anonymized_images" / "default" / "images").rglob("*.png"))
    assert len(images) == 7 and all(Image.open(p).size == (64, 64) for p in images)


def test_shard_size_comes_from_params_yaml_unless_the_command_line_sets_it(tmp_path, lfw_faces):
    """The 7 readable faces split by params.yaml's `pipeline.shard_size` of the profile, or by --shard-size."""
    from anon_core.errors import ParamsError

    write_faces(tmp_path / "faces", lfw_faces[:7])
    with instance_at(tmp_path / "home") as instance:
        def shards(size_in_file, size_on_command_line=None):
            params = fast_params(tmp_path / "params.yaml", pipeline={"shard_size": 1024, "executor": "in_process",
                                                                     "max_concurrent": 1,
                                                                     "profiles": {"tiny": {"shard_size": size_in_file}}})
            overrides = {} if size_on_command_line is None else {"pipeline.shard_size": size_on_command_line}
            run(tmp_path, instance, params=params, overrides=overrides, stages=("prepare",))
            return instance.get_dynamic_partitions("image_shards")

        assert shards(4) == ["shard-00000", "shard-00001"]
        assert shards(4, size_on_command_line=7) == ["shard-00000"]
        assert shards(2) == ["shard-00000", "shard-00001", "shard-00002", "shard-00003"]
        with pytest.raises(ParamsError, match=r"params\.yaml: pipeline\.shard_size = 0 must be"):
            shards(0)


def test_image_sets_and_arrays_round_trip_through_the_io_manager(tmp_path):
    from orchestration.io_manager import FalcoIOManager, LazyArrays

    manager = FalcoIOManager(root=str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, size=(2, 40, 40, 3), dtype=np.uint8)
    value = ImageSet(table=pd.DataFrame({"image": ["a/x.png", "", "b y.png"], "v": [1, 2, 3]}), images=images)
    out = dg.build_output_context(asset_key=dg.AssetKey("thing"))
    manager.handle_output(out, value)
    loaded = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("thing"), upstream_output=out))
    assert loaded.table.equals(value.table)
    np.testing.assert_array_equal(loaded.images, images)

    arrays = {"ws": np.arange(6.0).reshape(2, 3), "row": np.array([4, 5])}
    manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("codes")), arrays)
    lazy = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("codes")))
    assert isinstance(lazy, LazyArrays) and sorted(lazy) == ["row", "ws"] and lazy._read == {}
    np.testing.assert_array_equal(lazy["row"], arrays["row"])
    assert list(lazy._read) == ["row"]  # the codes were not read to get the rows
    with pytest.raises(TypeError, match="FalcoIOManager stores"):
        manager.handle_output(out, object())


def test_a_variants_values_go_to_its_own_folder_and_missing_partitions_fail_unless_allowed(tmp_path):
    from orchestration.io_manager import ALLOW_MISSING, FalcoIOManager
    from orchestration.partitions import variant_shards, variants

    manager = FalcoIOManager(root=str(tmp_path))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("variants", ["m0", "m0.9"])
    instance.add_dynamic_partitions("image_shards", ["shard-00000"])
    table = pd.DataFrame({"method": ["m0"], "x": [1.0]})
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("scores"), partition_key="m0",
                                                      asset_partitions_def=variants), table)
        manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("codes"), partition_key="shard-00000|m0.9",
                                                      asset_partitions_def=variant_shards), {"ws": np.zeros(2)})
        every_variant = {"asset_key": dg.AssetKey("scores"), "asset_partitions_def": variants, "instance": instance,
                         "asset_partition_key_range": dg.PartitionKeyRange("m0", "m0.9")}
        with pytest.raises(FileNotFoundError, match="m0.9"):
            manager.load_input(dg.build_input_context(**every_variant))
        loaded = manager.load_input(dg.build_input_context(**every_variant, definition_metadata={ALLOW_MISSING: True}))
    assert (tmp_path / "scores" / "m0" / "all.parquet").is_file()
    assert (tmp_path / "codes" / "m0.9" / "shard-00000.npz").is_file()
    assert list(loaded) == ["m0"] and loaded["m0"].equals(table)


def test_a_bad_device_or_flag_is_one_line_naming_it_before_any_run(tmp_path, lfw_faces, monkeypatch, capsys):
    from orchestration.cli import main

    write_faces(tmp_path / "faces", lfw_faces[:2])
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FALCO_DEVICE", raising=False)
    monkeypatch.delenv("FALCO_BROKER_URL", raising=False)
    cmd = ["pipeline", "--input", str(tmp_path / "faces"), "--storage", str(tmp_path / "store")]
    assert main([*cmd, "--device", "banana"]) == 2
    assert capsys.readouterr().err == "falco: error: --device banana: not a device this machine has; use cpu or " \
                                      "cuda[:N]\n"
    monkeypatch.setenv("FALCO_DEVICE", "mps")
    assert main(cmd) == 2
    assert capsys.readouterr().err == "falco: error: FALCO_DEVICE mps: not a device this machine has; use cpu or " \
                                      "cuda[:N]\n"
    monkeypatch.delenv("FALCO_DEVICE")
    assert main([*cmd, "--shard-size", "0"]) == 2
    assert capsys.readouterr().err == "falco: error: --shard-size 0: must be a whole number of images >= 1\n"
    assert main([*cmd, "--labels", str(tmp_path / "none.csv")]) == 2
    assert capsys.readouterr().err == f"falco: error: --labels {tmp_path / 'none.csv'}: is not a file\n"
    fast_params(tmp_path / "percent.yaml", checks={"privacy_max_match_share": 5})  # meant as 5 %
    assert main([*cmd, "--params", str(tmp_path / "percent.yaml")]) == 2
    assert capsys.readouterr().err == (f"falco: error: {tmp_path / 'percent.yaml'}: checks.privacy_max_match_share = "
                                       "5 must be a share between 0 and 1 (0.05 allows 5% of the faces to be matched "
                                       "to their source); for 5% write 0.05\n")
    # On a Celery head the workers' machines run the networks: only the device's form is checked here.
    assert main([*cmd, "--executor", "celery", "--device", "cuda:1"]) == 2
    assert "FALCO_BROKER_URL" in capsys.readouterr().err
    image = tmp_path / "faces" / "Person A" / "img_0.png"
    assert main(["pipeline", "--input", str(image), "--storage", str(tmp_path / "store")]) == 2
    assert capsys.readouterr().err == f"falco: error: input folder {image} is a file, not a folder; pass --input " \
                                      "DIR, a folder of images (the sample set: `falco sample-data data/sample`)\n"
    # A params file that is not text, or not YAML: one line with where, not a decoder's stack trace
    assert main([*cmd, "--params", str(tmp_path / "faces" / "Person A" / "img_0.png")]) == 2
    assert capsys.readouterr().err == f"falco: error: {tmp_path / 'faces' / 'Person A' / 'img_0.png'} is not a text " \
                                      "file; pass --params PATH to a params.yaml\n"
    (tmp_path / "indented.yaml").write_text("defaults:\n  seed: 0\n   bad: [1\n")
    assert main([*cmd, "--params", str(tmp_path / "indented.yaml")]) == 2
    assert capsys.readouterr().err == (f"falco: error: {tmp_path / 'indented.yaml'} is not valid YAML (line 3, column "
                                       "7): mapping values are not allowed here; compare it with the project's "
                                       "params.yaml\n")
    # A variant written twice: YAML kept the last one silently (`fast` ran with 3 steps)
    text = fast_params(tmp_path / "twice.yaml").read_text().replace(
        "\nvariants: {}\n", "\nvariants:\n  fast: {steps: 2}\n  fast: {steps: 3}\n")
    (tmp_path / "twice.yaml").write_text(text)
    assert main([*cmd, "--params", str(tmp_path / "twice.yaml")]) == 2
    line = text.splitlines().index("  fast: {steps: 3}") + 1
    assert capsys.readouterr().err == (f"falco: error: {tmp_path / 'twice.yaml'} is not valid YAML (line {line}, "
                                       "column 3): the key 'fast' is written twice in one mapping (YAML would keep "
                                       "only the last); compare it with the project's params.yaml\n")
    # A sweep value YAML reads as a bool or a word: refused, not run as margin 1.0 or a traceback
    for value, shown in (("true", "True"), ("abc", "'abc'")):
        fast_params(tmp_path / "sweep.yaml", sweep={"margin": [0.0, yaml.safe_load(value)]})
        assert main([*cmd, "--params", str(tmp_path / "sweep.yaml")]) == 2
        assert capsys.readouterr().err == f"falco: error: {tmp_path / 'sweep.yaml'}: sweep: margin: {shown} is not a " \
                                          "number; give a number or a list of numbers\n"
    # An MLflow server that does not answer: one line at once (MLflow's retries took 4.5 minutes, then a traceback)
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"falco: error: cannot use the MLflow store http://127.0.0.1:{port}: no answer: Failed to "
                          "establish a new connection: [Errno 111] Connection refused; ") and \
        err.endswith("start that server, or set MLFLOW_TRACKING_URI (falco runs: --tracking-uri) to a sqlite:///PATH "
                     "database or the http(s):// address of a running MLflow server\n") and err.count("\n") == 1
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # put back for what follows in the process
    assert not (tmp_path / "store").exists()
    with instance_at(tmp_path / "home") as instance:
        assert instance.get_runs() == []


def test_ctrl_c_stops_the_pipeline_with_one_line_and_dies_of_sigint(tmp_path, lfw_faces):
    proc, first, _, _ = _pipeline_past_its_first_shard(tmp_path, lfw_faces, stdout=subprocess.PIPE,
                                                       stderr=subprocess.PIPE, text=True, start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal's Ctrl-C: to every process of the group, in a later shard
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGINT, stdout + stderr  # ends as killed by it: the shell says 130
    assert "Traceback" not in stderr  # before: two, of Dagster's log mirrors (orchestration.log_tails)
    assert "DagsterExecutionInterruptedError" not in stdout + stderr  # the stopped step's failure, logged above it
    assert stderr.strip().splitlines()[-1] == \
        "falco: stopped (Ctrl-C); run the same command again to resume where it stopped"
    assert not (first.parent / "shard-00003.parquet").exists()  # the driver stopped: no later shard ran


def test_sigterm_stops_a_run_in_flight_and_its_mlflow_run_is_killed_not_failed(tmp_path, lfw_faces):
    """SIGTERM (`kill`, `timeout`, a container's stop) stops as Ctrl-C does, says so, and ends as killed by it, also
    in a script's background job (SIGINT ignored; Dagster hands SIGINT's handler to SIGTERM after each run). The stopped
    Dagster run's MLflow run and the stopped step's own run end KILLED, not FAILED or left RUNNING."""
    from mlflow import MlflowClient

    write_faces(tmp_path / "faces", lfw_faces[:4])
    params = fast_params(tmp_path / "params.yaml", tiny={"inversion": {"steps": 2000}})  # a long prepare step
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "pipeline", "--input", str(tmp_path / "faces"), "--storage",
         str(tmp_path / "store"), "--params", str(params)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": uri},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as `falco pipeline &` in a script starts
    client, found, deadline = MlflowClient(uri), [], time.time() + 300
    while not found and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)  # until `prepare` inverts the real faces: its MLflow run is there, RUNNING, meanwhile
        if (tmp_path / "mlflow.db").exists() and client.get_experiment_by_name("falco"):
            found = client.search_runs([client.get_experiment_by_name("falco").experiment_id],
                                       "tags.asset_key = 'real_inversions'")
    assert found and proc.poll() is None, "prepare never reached the inversion"
    assert found[0].info.status == "RUNNING" and found[0].data.params["inversion.steps"] == "2000"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, stderr  # ends as killed by it: the shell says 143
    assert "Traceback" not in stderr and "DagsterExecutionInterruptedError" not in stderr
    assert stderr.strip().splitlines()[-1] == \
        "falco: stopped (SIGTERM); run the same command again to resume where it stopped"
    runs = client.search_runs([client.get_experiment_by_name("falco").experiment_id])
    status = {r.info.run_name: r.info.status for r in runs}
    assert status["prepare"] == "KILLED", status  # before: FAILED, as if the step had failed
    assert status["real_inversions"] == "KILLED"  # the step that was stopped
    assert set(status.values()) == {"FINISHED", "KILLED"}, status
