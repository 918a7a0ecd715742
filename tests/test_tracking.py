"""MLflow tracking against the real tools: a sweep of two variants logs one MLflow run per Dagster run (named after
its job and partition) with nested runs per materialization (found by `mlflow.search_runs`), a real `mlflow server`
over HTTP receives a run, and `falco runs compare` shows the two variants beside the baselines."""

import argparse
import io
import json
import shutil
import socket
import subprocess
import os
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest
from pipeline_helpers import fast_params, run, write_faces

from orchestration.cli_runs import compare_table, failed_variants, register, side_by_side
from orchestration.resources import NetworksResource
from orchestration.tracking import MlflowResource, delta_table, flatten

VARIANTS = ["default", "m0.5"]
SHARDS = [f"shard-{i:05d}" for i in range(3)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, lfw_faces):
    """The tiny pipeline on 7 faces (shards of 3), variants default (m = 0) and m0.5, baselines blur and swap."""
    tmp = tmp_path_factory.mktemp("tracking")
    write_faces(tmp / "faces", lfw_faces[:7], broken=False)
    (tmp / "faces.dvc").write_text("outs:\n- md5: 0123abcd.dir\n  path: faces\n")  # as `dvc add faces` writes it
    fast_params(tmp / "params.yaml", evaluation={"baselines": ["blur", "swap"], "show_real_faces": False})
    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    (tmp / "home").mkdir()
    (tmp / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(tmp / "home")) as instance:
        summary = run(tmp, instance, VARIANTS)
        metadata = {v: instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("evaluation_metrics"), asset_partitions=[v]), limit=1).records[0]
            .asset_materialization.metadata for v in VARIANTS}
    mlflow.set_tracking_uri(tracker.uri())
    try:
        runs = mlflow.search_runs(experiment_names=["falco"], order_by=["attributes.start_time ASC"])
    finally:
        mlflow.set_tracking_uri(None)
    return {"tracker": tracker, "summary": summary, "runs": runs, "metadata": metadata, "tmp": tmp}


@pytest.mark.slow
def test_one_run_per_dagster_run_with_a_nested_run_per_materialization(sweep):
    assert sweep["summary"].failed == [] and "report" in sweep["summary"].ran
    runs = sweep["runs"]
    nested = runs[runs["tags.mlflow.parentRunId"].notna()]
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert parents["tags.dagster_run_id"].is_unique
    assert set(nested["tags.mlflow.parentRunId"]) == set(parents["run_id"])
    for _, nested_run in nested.iterrows():  # a nested run belongs to the parent of its own Dagster run
        parent = parents[parents["run_id"] == nested_run["tags.mlflow.parentRunId"]].iloc[0]
        assert parent["tags.dagster_run_id"] == nested_run["tags.dagster_run_id"]
    shard_runs = [f"{asset} {v} {s}" for asset in ("anonymized_latents", "anonymized_images") for v in VARIANTS
                  for s in SHARDS]
    prepared = ["fake_pool", "fake_features", "real_images", "real_features", "real_inversions", "pairs"]
    assert sorted(nested["tags.mlflow.runName"]) == sorted(  # every materialization has its run
        [*prepared, *shard_runs, "real_gallery", "attribute_pseudo_labels", "attribute_classifier", "evaluation_metrics default",
         "evaluation_metrics m0.5", "baseline_metrics blur", "baseline_metrics swap", "anonymization_report"])
    assert sorted(parents["tags.mlflow.runName"]) == sorted(
        ["prepare", *(f"anonymize {v} {s}" for v in VARIANTS for s in SHARDS), "evaluate default", "evaluate m0.5",
         "evaluate_references", "evaluate_report"])  # named after their jobs, with the variant and shard
    assert (nested["status"] == "FINISHED").all() and (parents["status"] == "FINISHED").all()

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1]).stdout.strip() or "unknown"
    from orchestration.graph import ASSETS

    versions = {key.to_user_string(): version for a in ASSETS if isinstance(a, dg.AssetsDefinition)
                for key, version in a.code_versions_by_key.items()}
    assert (nested["tags.code_version"] == nested["tags.asset_key"].map(versions)).all()  # each asset's own
    from orchestration.assets.settings import input_files
    from orchestration.data_version import files_version
    from orchestration.resources import StorageResource

    # the input actually read, not the project's data.dvc: its folder, the hash of its files, what DVC records for it
    faces = sweep["tmp"] / "faces"
    for column, value in {"tags.profile": "tiny", "tags.device": "cpu", "tags.input_dir": str(faces),
                          "tags.data_version": files_version(input_files(StorageResource(input_dir=str(faces)))),
                          "tags.dvc_md5": "0123abcd.dir", "tags.labels_sha256": "none", "tags.weights_sha256.all": "seeded",
                          "tags.git_commit": commit}.items():
        assert (nested[column] == value).all(), column
    from anon_core.hashing import sha256_file
    from anon_core.networks.dlib_resnet import DLIB_MODEL_FILE, default_dlib_model_path

    # tiny's identity network is dlib's trained descriptor: its file's sha256 is recorded with the seeded ones
    assert (nested[f"tags.weights_sha256.{DLIB_MODEL_FILE}"] == sha256_file(default_dlib_model_path())).all()
    latents = nested[nested["tags.asset_key"] == "anonymized_latents"]
    assert sorted(zip(latents["tags.variant"], latents["tags.shard"])) == sorted((v, s) for v in VARIANTS
                                                                                for s in SHARDS)
    assert dict(zip(latents["tags.variant"], latents["params.optimization.margin"])) == {"default": "0.0",
                                                                                        "m0.5": "0.5"}
    assert (latents["params.optimization.steps"] == "2").all() and (latents["params.profile"] == "tiny").all()


@pytest.mark.slow
def test_loss_histories_metrics_and_artifacts(sweep):
    from mlflow import MlflowClient

    client = MlflowClient(sweep["tracker"].uri())
    nested = sweep["runs"][sweep["runs"]["tags.mlflow.parentRunId"].notna()]
    latent = nested[nested["tags.mlflow.runName"] == "anonymized_latents m0.5 shard-00000"].iloc[0]
    for name in ("identity", "attribute", "total"):
        history = client.get_metric_history(latent["run_id"], f"loss/{name}")
        assert [m.step for m in history] == [0, 1], name
    # The last step's logged mean equals the mean over the shard's images of the stored per-image losses.
    import numpy as np

    stored = np.load(sweep["tmp"] / "store" / "anonymized_latents" / "m0.5" / "shard-00000.npz")["loss_total"]
    last = client.get_metric_history(latent["run_id"], "loss/total")[-1].value
    assert abs(last - float(stored[-1].mean())) < 1e-6 * max(1.0, abs(last))

    # Each shard's run records its throughput, so GPU runs can be compared by speed in the MLflow UI.
    metrics = client.get_run(latent["run_id"]).data.metrics
    assert metrics["speed/images_per_second"] > 0 and metrics["num_images"] == 3
    assert abs(metrics["speed/images_per_second"] * metrics["speed/seconds"] - 3) < 1e-6
    assert abs(metrics["speed/image_steps_per_second"] - 2 * metrics["speed/images_per_second"]) < 1e-6
    params = json.loads(Path(client.download_artifacts(latent["run_id"], "params.json", str(sweep["tmp"]))).read_text())
    assert params["optimization"]["margin"] == 0.5 and params["optimization"]["steps"] == 2

    evaluation = nested[nested["tags.asset_key"] == "evaluation_metrics"].set_index("tags.variant")
    assert evaluation["params.optimization.margin"].to_dict() == {"default": "0.0", "m0.5": "0.5"}
    # a baseline's run names what its fakes and pairs came from, as the variants' do (hE: two swap runs of other
    # pools showed `-` for seed, pool_size, truncation_psi and pairing in runs compare)
    baselines = nested[nested["tags.asset_key"] == "baseline_metrics"]
    for key in ("seed", "pool_size", "truncation_psi", "pairing", "pairing_k"):
        assert baselines[f"params.{key}"].notna().all() and \
            set(baselines[f"params.{key}"]) == set(evaluation[f"params.{key}"]), key
    run_id = evaluation.loc["m0.5", "run_id"]
    table = pd.read_csv(client.download_artifacts(run_id, "metrics.csv", str(sweep["tmp"] / "dl")))
    row = table.set_index("method").loc["m0.5"]
    metrics = client.get_run(run_id).data.metrics
    assert metrics and all(abs(metrics[k] - float(row[k])) < 1e-9 for k in metrics if k in row.index)

    images = nested[nested["tags.asset_key"] == "anonymized_images"].iloc[0]["run_id"]
    assert [f.path for f in client.list_artifacts(images)] == ["fake_anonymized_grid.png"]
    report = nested[nested["tags.asset_key"] == "anonymization_report"].iloc[0]["run_id"]
    assert {f.path for f in client.list_artifacts(report, "report")} >= {"report/report.md", "report/report.html",
                                                                         "report/metrics.json"}


@pytest.mark.slow
def test_evaluation_metadata_links_the_mlflow_run_of_its_variant(sweep):
    for variant, metadata in sweep["metadata"].items():
        run_id = metadata["mlflow_run_id"].value
        runs = sweep["runs"].set_index("run_id")
        assert runs.loc[run_id, "tags.variant"] == variant
        # a fresh experiment: no table of NaN against a previous run that does not exist
        assert metadata["change_vs_previous_run"].value == f"first evaluation of {variant} in this experiment"
        # a SQLite store has no server: the link is the run's page in `make mlflow-ui`
        assert metadata["mlflow_run"].value == \
            f"http://127.0.0.1:5000/#/experiments/{runs.loc[run_id, 'experiment_id']}/runs/{run_id}" \
            "?workflowType=machine_learning"


@pytest.mark.slow
def test_mlflow_runs_last_as_long_as_the_dagster_steps_they_record(sweep):
    """Before, a run was created after its work: an evaluation of 13 s showed 47 ms in MLflow."""
    runs = sweep["runs"]
    nested = runs[runs["tags.mlflow.parentRunId"].notna()].set_index("run_id")
    with dg.DagsterInstance.from_config(str(sweep["tmp"] / "home")) as instance:
        for run_id, mlflow_run in nested[nested["tags.asset_key"].isin(["evaluation_metrics", "real_inversions"])
                                         ].iterrows():
            [step] = [s for s in instance.get_run_step_stats(mlflow_run["tags.dagster_run_id"])
                      if s.step_key in ("variant_evaluation", "real_inversions")]
            started, ended = mlflow_run["start_time"].timestamp(), mlflow_run["end_time"].timestamp()
            assert abs(started - step.start_time) < 0.01, mlflow_run["tags.mlflow.runName"]
            # most of the step (the values' storing after the run's end took 2.3 of a 3.6 s step on a slow disk once)
            assert ended <= step.end_time + 0.5 and ended - started >= 0.25 * (step.end_time - step.start_time)
        dagster_runs = {r.dagster_run.run_id: r for r in instance.get_run_records()}
    for _, parent in runs[runs["tags.mlflow.parentRunId"].isna()].iterrows():  # a run starts with its Dagster run
        assert abs(parent["start_time"].timestamp() - dagster_runs[parent["tags.dagster_run_id"]].start_time) < 0.01


@pytest.mark.slow
def test_the_experiment_opens_in_mlflows_runs_view(sweep):
    from mlflow import MlflowClient

    experiment = MlflowClient(sweep["tracker"].uri()).get_experiment_by_name("falco")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI traces


@pytest.mark.slow
def test_runs_compare_shows_the_variants_beside_the_baselines(sweep, capsys, tmp_path):
    parser = argparse.ArgumentParser(prog="falco")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--format", "csv",
                              "--plot", str(tmp_path / "scatter.png")])
    assert args.run(args) == 0
    printed = capsys.readouterr()
    frame = pd.read_csv(io.StringIO(printed.out))
    assert printed.err.startswith(f"plot: {tmp_path / 'scatter.png'} (")  # before: written without a word
    assert "diverged" not in printed.err  # both variants' mean loss fell
    assert frame["variant"].tolist() == ["default", "m0.5", "blur", "swap"]
    assert frame["param:optimization.margin"].tolist()[:2] == [0.0, 0.5]
    # judged by the bound the report logged (params.yaml's 0.05), from each run's own dlib verification rate
    rate = frame["reid/dlib/verification_rate"]
    assert frame["check:privacy_check"].tolist() == ["passed" if r <= 0.05 else "FAILED" for r in rate]
    assert frame["check:privacy_check"].tolist()[:2] == ["passed", "passed"]  # the pipeline's check let them through
    assert not any(c == "param:optimization.steps" for c in frame.columns)  # equal in both: not shown
    from PIL import Image

    assert Image.open(tmp_path / "scatter.png").size[0] > 300
    axes = printed.err.split(" (", 1)[1]
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--metric",
                              "reid/dlib/top1_rate", "--plot", str(tmp_path / "narrowed.png")])
    assert args.run(args) == 0  # before: "the runs logged no re-identification and utility metrics to plot"
    assert capsys.readouterr().err == f"plot: {tmp_path / 'narrowed.png'} ({axes}"  # --metric narrows the table only
    assert (tmp_path / "narrowed.png").read_bytes() == (tmp_path / "scatter.png").read_bytes()
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--format", "markdown",
                              "--experiment", "nope"])
    from anon_core.errors import FalcoError

    with pytest.raises(FalcoError, match="no MLflow experiment 'nope'"):
        args.run(args)
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--metric", "nosuch"])
    with pytest.raises(FalcoError, match=r"no run logged the metric nosuch; the runs logged: .*reid/dlib/top1_rate"):
        args.run(args)  # before: a column of NaN and exit 0

    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri()])
    assert args.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 120, lines  # before: ~1,200 characters wide
    assert lines[0].split() == ["default", "m0.5", "blur", "swap"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["optimization.margin"][:2] == ["0.0", "0.5"] and len(rows["reid/dlib/top1_rate"]) == 4

    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--variant", "nosuch"])
    with pytest.raises(FalcoError, match=r"of variant nosuch in experiment '.+'; it has runs of default, m0.5$"):
        args.run(args)  # before: exit 1 without `falco: error:`
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--variant", "nosuch",
                              "--variant", "m0.5"])
    with pytest.raises(FalcoError, match=r"of variant nosuch in experiment '.+'; it has runs of default, m0.5$"):
        args.run(args)  # before: m0.5 alone, exit 0, nosuch not named
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--variant", "m05"])
    with pytest.raises(FalcoError, match=r"of variant m05 \(read as m5\) in experiment"):
        args.run(args)  # before: "of variant m5", a name the user never typed
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--variant", "m0.50",
                              "--format", "csv"])
    assert args.run(args) == 0  # spelled as `falco pipeline --variant m0.50` takes it: m0.5's runs
    assert pd.read_csv(io.StringIO(capsys.readouterr().out))["variant"].tolist() == ["m0.5", "blur", "swap"]
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--plot",
                              str(tmp_path / "typo" / "compare.png")])
    with pytest.raises(FalcoError, match="typo does not exist; make it first"):
        args.run(args)  # before: the folder `typo` was made
    assert not (tmp_path / "typo").exists()
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--plot", str(tmp_path)])
    with pytest.raises(FalcoError, match="is a folder; give the PNG file to write"):
        args.run(args)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "notes.png").write_text("my notes")
    photo = sweep["tmp"] / "faces" / "Person A" / "img_0.png"  # an input image: before, replaced by the plot
    kept = {path: path.read_bytes() for path in (tmp_path / "params.yaml", tmp_path / "notes.png", photo)}
    for path, message in ((tmp_path / "params.yaml", "give a name ending in .png"),
                          (tmp_path / "notes.png", "exists and is not a plot falco wrote"),
                          (photo, "exists and is not a plot falco wrote")):
        args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--plot", str(path)])
        with pytest.raises(FalcoError, match=message):
            args.run(args)
    assert {path: path.read_bytes() for path in kept} == kept
    figure = tmp_path / "figure.png"  # a report's figure, also falco's: not a --plot, so not replaced
    shutil.copy(sweep["tmp"] / "store" / "anonymization_report" / "figures" / "privacy_vs_utility.png", figure)
    for path, message in ((figure, "exists and is not a plot falco wrote"),
                          (sweep["tmp"] / "faces" / "new.png", "the input folder of these runs: the next pipeline")):
        args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--plot", str(path)])
        with pytest.raises(FalcoError, match=message):
            args.run(args)
    assert not (sweep["tmp"] / "faces" / "new.png").exists()
    earlier = (tmp_path / "scatter.png").stat().st_mtime_ns
    args = parser.parse_args(["runs", "compare", "--tracking-uri", sweep["tracker"].uri(), "--plot",
                              str(tmp_path / "scatter.png")])
    assert args.run(args) == 0 and (tmp_path / "scatter.png").stat().st_mtime_ns != earlier  # its own plot: replaced
    for uri in ("foo://bar", "sqlite://relative.db", str(tmp_path / "a_folder_store")):
        args = parser.parse_args(["runs", "compare", "--tracking-uri", uri])
        with pytest.raises(FalcoError, match=f"cannot use the MLflow store {uri}: .*; start that server, or set MLFLOW_TRACKING_URI "
                                               r"\(falco runs: --tracking-uri\)"):
            args.run(args)  # before: MLflow's or SQLAlchemy's stack trace
    (tmp_path / "text.db").write_text("not a database")
    (tmp_path / "empty.db").write_bytes(b"")
    for name, message in (("text.db", r"text.db is not a readable MLflow store \(.*\); move it away and run again$"),
                          ("empty.db", "no MLflow store at .*empty.db; run `falco pipeline` first")):
        args = parser.parse_args(["runs", "compare", "--tracking-uri", f"sqlite:///{tmp_path / name}"])
        with pytest.raises(FalcoError, match=message):  # before: a second, contradicting fix; a new store made
            args.run(args)
    assert (tmp_path / "empty.db").read_bytes() == b"" and not list(tmp_path.glob("empty.db.*"))
    # a deleted experiment: one line naming the restore, before any work (before: `runs compare` said to run the
    # pipeline, and the pipeline failed every step with MLflow's "must be in the 'active' state")
    deleted = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'deleted.db'}", experiment="gone")
    deleted.client().delete_experiment(deleted.ensure_experiment())
    restore = r"the MLflow experiment 'gone' \(id \d+\) at .* was deleted; restore it \(.*mlflow experiments restore"
    with pytest.raises(FalcoError, match=restore):
        deleted.check_store()
    args = parser.parse_args(["runs", "compare", "--tracking-uri", deleted.uri(), "--experiment", "gone"])
    with pytest.raises(FalcoError, match=restore):
        args.run(args)


@pytest.mark.slow
def test_no_file_or_person_name_reaches_mlflow(sweep, tmp_path):
    """The inputs are `Person A/img_<i>.png`: a person's name and file names must stay in the storage."""
    from mlflow import MlflowClient

    client = MlflowClient(sweep["tracker"].uri())
    texts = []
    for run_id in sweep["runs"]["run_id"]:
        run = client.get_run(run_id)
        texts += [str(run.data.params), str(run.data.tags), str(run.info.run_name)]
        folder = Path(client.download_artifacts(run_id, "", str(tmp_path / run_id)))
        texts += [p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file()]
    assert texts and not any("Person A" in t or "img_" in t for t in texts)


@pytest.mark.slow
def test_report_puts_the_variants_and_the_baselines_in_one_scatter(sweep):
    report = sweep["tmp"] / "store" / "anonymization_report"
    points = pd.read_csv(report / "figures" / "privacy_vs_utility.csv")
    assert points["label"].tolist() == ["default", "m0.5", "blur", "swap"]
    assert points["kind"].tolist() == ["run", "run", "baseline", "baseline"]
    evaluations = sweep["runs"][sweep["runs"]["tags.asset_key"] == "evaluation_metrics"].set_index("tags.variant")
    assert points.set_index("label").loc[VARIANTS, "reid/dlib/top1_rate"].tolist() == \
        evaluations.loc[VARIANTS, "metrics.reid/dlib/top1_rate"].tolist()
    assert (report / "figures" / "privacy_vs_utility.png").is_file()


def test_each_run_is_judged_by_the_bound_of_the_latest_report_on_its_input(tmp_path):
    """Before, every run was judged by the experiment's latest report, made from whatever storage, input and params
    file: a lax second pipeline on other faces turned a failing variant into `passed`."""
    from orchestration.cli_runs import REPORT_ASSET, report_bounds
    from orchestration.tracking import ASSET_TAG

    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, experiment = tracker.client(), tracker.ensure_experiment()

    def finished(asset: str, folder: str, bound: float | None = None):
        run = client.create_run(experiment, tags={ASSET_TAG: asset, "input_dir": folder, "data_version": folder})
        if bound is not None:
            client.log_param(run.info.run_id, "checks.privacy_max_match_share", bound)
        client.set_terminated(run.info.run_id, "FINISHED")
        return client.get_run(run.info.run_id)

    mine, theirs, nobodys = (finished("evaluation_metrics", f) for f in ("/faces", "/other", "/third"))
    assert report_bounds(client, experiment, [mine, theirs]) == [None, None]  # no report yet: no verdict
    finished(REPORT_ASSET, "/faces", 0.05)
    finished(REPORT_ASSET, "/other", 0.5)  # the latest report, on other faces
    assert report_bounds(client, experiment, [mine, theirs, nobodys]) == [0.05, 0.5, 0.5]


def test_compare_table_and_helpers_on_plain_values(tmp_path):
    class Run:
        def __init__(self, rid, params, metrics, start, data="sha256:aa"):
            self.info = argparse.Namespace(run_id=rid, run_name=f"r{rid}", start_time=start)
            self.data = argparse.Namespace(params=params, metrics=metrics, tags={
                "dagster_run_id": f"d{rid}", "variant": "default", "input_dir": "/data", "data_version": data})

    runs = [Run("1", {"a": "1", "b": "x"}, {"m": 0.5}, 0), Run("2", {"a": "2", "b": "x"}, {"m": 0.7}, 61_000)]
    frame = compare_table(runs)
    assert [c for c in frame.columns if c.startswith("param:")] == ["param:a"]
    assert not [c for c in frame.columns if c.startswith("input:")]  # one input: nothing to say
    assert frame["m"].tolist() == [0.5, 0.7]
    # two runs of one variant (--all) get their start times in their headings, not the same heading twice
    assert side_by_side(frame, ["m"]).splitlines()[0].split() == ["default", "01-01", "00:00", "default", "01-01",
                                                                   "00:01"]
    # in one minute (hE: two swap columns both headed `swap 12-07 23:06`): to the second, else by run id
    close = [Run("1", {}, {"m": 0.5}, 1_000), Run("2", {}, {"m": 0.7}, 55_000)]
    assert side_by_side(compare_table(close), ["m"]).splitlines()[0].split() == [
        "default", "01-01", "00:00:01", "default", "01-01", "00:00:55"]
    same = [Run("1", {}, {"m": 0.5}, 1_000), Run("2", {}, {"m": 0.7}, 1_000)]
    assert side_by_side(compare_table(same), ["m"]).splitlines()[0].split() == ["default", "1", "default", "2"]
    # runs that read other images: the differing input tag is a row of the table
    frame = compare_table([*runs, Run("3", {"a": "2", "b": "x"}, {"m": 0.1}, 2, data="sha256:bb")])
    assert [c for c in frame.columns if c.startswith("input:")] == ["input:data_version"]
    rows = {line.split()[0]: line.split()[1:] for line in side_by_side(frame, ["m"]).splitlines()[1:]}
    assert rows["data_version"] == ["sha256:aa", "sha256:aa", "sha256:bb"]
    # full digests and long paths, as real runs tag them: shortened, so the table stays within 120 columns (the
    # 64-character digests made it 1,634 wide)
    long = [Run(str(i), {"a": str(i)}, {"m": 0.1 * i}, i, data=f"sha256:{c * 64}") for i, c in enumerate("abcdefg")]
    for i, tagged in enumerate(long):
        tagged.data.tags |= {"variant": f"m0.{i}", "input_dir": f"/mnt/datasets/faces/celebahq/version-{i}/images",
                             "labels_sha256": str(i) * 64}
    lines = side_by_side(compare_table(long), ["m"]).splitlines()
    assert max(map(len, lines)) <= 120, lines
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["data_version"][:2] == ["aaaaaaaa", "bbbbbbbb"] and rows["labels_sha256"][1] == "11111111"
    assert rows["input_dir"][2] == "…on-2/images"
    # folders whose paths differ only before their last characters: told apart, not both `…/d12/images`
    for pair, expected in ((["/mnt/x/run1/d12/images", "/mnt/x/run2/d12/images"], ["…run1/d12/images",
                                                                                    "…run2/d12/images"]),
                           (["/work/d12/images", "/tmp/other/d12/images"], ["/work/d12/images", "/tmp/other/d12/images"])):
        for tagged, folder in zip(long, pair * 4):
            tagged.data.tags["input_dir"] = folder
        lines = side_by_side(compare_table(long), ["m"]).splitlines()[1:]
        assert {line.split()[0]: line.split()[1:] for line in lines}["input_dir"][:2] == expected
    # the privacy verdict by a bound, per run: the share dlib still matches to the source, at most the bound
    rate = "reid/dlib/verification_rate"
    judged = [Run("4", {"a": "1"}, {rate: 0.0}, 3), Run("5", {"a": "2"}, {rate: 0.25}, 4), Run("6", {"a": "2"}, {}, 5)]
    assert compare_table(judged, [rate], bound=0.05)["check:privacy_check"].tolist() == ["passed", "FAILED", "-"]
    assert compare_table(judged, [rate], bound=0.25)["check:privacy_check"].tolist() == ["passed", "passed", "-"]
    assert "check:privacy_check" not in compare_table(judged, [rate])  # no report logged a bound: no verdict
    rows = {line.split()[0]: line.split()[1:] for line in
            side_by_side(compare_table(judged, [rate], bound=0.05), [rate]).splitlines()[1:]}
    assert rows["privacy_check"] == ["passed", "FAILED", "-"]
    # the warning names a variant whose latest evaluation fails (with --all, runs are oldest first), not a baseline
    later = Run("7", {"a": "3"}, {rate: 0.5}, 6)
    later.data.tags["variant"] = "m0.9"
    blur = Run("8", {}, {rate: 1.0}, 7)
    blur.data.tags["method"] = "blur"
    assert failed_variants([*judged, later, blur], 0.05) == {"m0.9": (0.5, 0.05)}  # default's latest measured nothing
    assert failed_variants([judged[1], later], 0.05) == {"default": (0.25, 0.05), "m0.9": (0.5, 0.05)}
    # a bound per run (the latest report on each run's input): judged each by its own
    assert failed_variants([judged[1], later], [0.3, 0.05]) == {"m0.9": (0.5, 0.05)}
    assert compare_table(judged, [rate], bound=[0.05, 0.3, 0.05])["check:privacy_check"].tolist() == \
        ["passed", "passed", "-"]
    assert failed_variants([judged[1], judged[0]], 0.05) == {} and failed_variants([judged[1]], None) == {}
    # the pipeline's blocking check judges each shard: a variant under the bound over all its images but over it in
    # one shard fails everywhere (before: `falco pipeline` named the failed shards, the report and this said passed)
    worst = "reid/dlib/worst_shard_verification_rate"
    sharded = [Run("9", {}, {rate: 0.198, worst: 0.375}, 8), Run("10", {}, {rate: 0.198, worst: 0.19}, 9)]
    assert compare_table(sharded, [rate], bound=0.2)["check:privacy_check"].tolist() == ["FAILED", "passed"]
    assert failed_variants(sharded[:1], 0.2) == {"default": (0.375, 0.2)}
    from evaluation.report import release_banner

    [banner] = release_banner("m0.9", 0.198, 0.375, 0.2)
    assert "37.5% of the images of one of its shards" in banner and "19.8% of all of them" in banner
    assert release_banner("m0.9", 0.198, 0.19, 0.2) == [] and release_banner("m0.9", 0.25, None, 0.2)
    assert flatten({"o": {"steps": 2, "layers": [1, 2]}, "p": "tiny"}) == {"o.steps": "2", "o.layers": "[1, 2]", "p": "tiny"}
    delta = delta_table({"falco/top1_rate": 0.25}, {"falco/top1_rate": 0.5, "new": 1.0}).set_index("metric")
    assert delta.loc["falco/top1_rate", "change"] == 0.25 and pd.isna(delta.loc["new", "previous"])


def test_mlflow_experiment_name_from_the_environment(tmp_path, monkeypatch):
    """MLflow's own MLFLOW_EXPERIMENT_NAME picks the experiment (one per input keeps `runs compare` apart); an
    explicit name wins, and `falco` is the default."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert MlflowResource(tracking_uri=uri).experiment_name() == "falco"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lfw")
    assert MlflowResource(tracking_uri=uri, experiment="mine").experiment_name() == "mine"
    resource = MlflowResource(tracking_uri=uri)
    experiment_id = resource.ensure_experiment()
    assert resource.client().get_experiment(experiment_id).name == "lfw"


def test_a_server_that_never_answers_is_named_in_a_few_words(monkeypatch):
    """A port that accepts a connection and never answers: one line saying the read timed out, not urllib3's retry
    wrapper cut at 200 characters in the middle of MLflow's URL ("... with url: /api/2.0/mlflow/experi")."""
    from anon_core.errors import FalcoError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")  # the user's own value wins over the check's 15 s
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the connection; nothing reads or writes it
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(FalcoError) as raised:
            MlflowResource(tracking_uri=uri).check_store()
    assert str(raised.value).startswith(f"cannot use the MLflow store {uri}: no answer: Read timed out. (read "
                                        "timeout=2); start that server, or set MLFLOW_TRACKING_URI")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--default-artifact-root",
         str(tmp_path / "server_artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.time() < deadline, "mlflow server did not answer /health in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_logging_to_a_real_mlflow_server_withholds_real_faces(mlflow_server, tmp_path):
    tracker = MlflowResource(tracking_uri=mlflow_server)
    png = b"\x89PNG fake bytes"

    @dg.asset(code_version="7", partitions_def=dg.StaticPartitionsDefinition(["p0"]))
    def probe(context: dg.AssetExecutionContext, mlflow: MlflowResource, networks: NetworksResource) -> None:
        with mlflow.asset_run(context, networks, {"optimization": {"margin": 0.25}}) as run:
            run.log_histories({"loss/total": [3.0, 2.0, 1.0]})
            run.log_image(png, "grid.png")
            run.log_image(png, "real_faces.png", real_faces=True)
        context.add_output_metadata(run.metadata)

    with dg.instance_for_test() as instance:
        result = dg.materialize([probe], partition_key="p0", instance=instance,
                                resources={"mlflow": tracker, "networks": NetworksResource()})
        meta = result.asset_materializations_for_node("probe")[0].metadata
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    run = client.get_run(meta["mlflow_run_id"].value)
    assert meta["mlflow_run"].value.startswith(f"{mlflow_server}/#/experiments/")
    assert run.info.run_name == "probe p0" and run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.tags["code_version"] == "7" and run.data.params["optimization.margin"] == "0.25"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss/total")] == [3.0, 2.0, 1.0]
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id)) == ["grid.png", "params.json"]
    assert Path(client.download_artifacts(run.info.run_id, "grid.png", str(tmp_path))).read_bytes() == png
    # The experiment was created once; a second resource finds it.
    assert MlflowResource(tracking_uri=mlflow_server).ensure_experiment() == run.info.experiment_id


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_mlflow_ui_compares_the_two_variants_evaluations_in_chromium(sweep, tmp_path):
    """The MLflow UI's run comparison, rendered by headless Chromium, shows both variants' evaluations and the
    margin."""
    evaluations = sweep["runs"][sweep["runs"]["tags.asset_key"] == "evaluation_metrics"]
    assert len(evaluations) == 2
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", sweep["tracker"].uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        ids = json.dumps(evaluations["run_id"].tolist())
        experiments = json.dumps(sorted(set(evaluations["experiment_id"])))
        page = f"{url}/#/compare-runs?runs={urllib.parse.quote(ids)}&experiments={urllib.parse.quote(experiments)}"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=25000", "--window-size=1400,1000"]
        dom = subprocess.run(["chromium", *flags, "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
        assert "Comparing 2 Runs" in dom and "evaluation_metrics m0.5" in dom, dom[-2000:]
        assert "optimization.margin" in dom
        shot = Path(__file__).parent / "artifacts" / "mlflow_compare.png"
        shot.parent.mkdir(exist_ok=True)
        subprocess.run(["chromium", *flags, f"--screenshot={shot}", page], capture_output=True, timeout=180)
        assert shot.exists()
        # The experiment's own page (what `falco pipeline` prints) lists the runs by job, variant and partition.
        listing = MlflowResource(tracking_uri=url).experiment_url()
        assert listing == f"{url}/#/experiments/{evaluations['experiment_id'].iloc[0]}?workflowType=machine_learning"
        dom = subprocess.run(["chromium", *flags, "--dump-dom", listing], capture_output=True, text=True,
                             timeout=180).stdout
        assert "Detect Issues" not in dom and "Training runs" not in dom, dom[-3000:]  # not MLflow's GenAI view
        assert all(name in dom for name in ("evaluate m0.5", "anonymize default shard-00000", "prepare")), dom[-3000:]
        subprocess.run(["chromium", *flags, f"--screenshot={shot.with_name('mlflow_runs.png')}", listing],
                       capture_output=True, timeout=180)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("opted_in", [False, True])
def test_per_image_rows_reach_mlflow_only_when_opted_in_and_then_with_hashed_names(tmp_path, opted_in):
    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", log_per_image=opted_in)
    rows = pd.DataFrame({"name": ["George_Bush/George_Bush_0001.png", "Ann_Lee/Ann_Lee_0001.png"],
                         "identity": ["George_Bush", "Ann_Lee"], "dlib/distance": [0.7, 0.8]})

    @dg.asset
    def probe(context: dg.AssetExecutionContext, mlflow: MlflowResource, networks: NetworksResource) -> None:
        with mlflow.asset_run(context, networks, {}) as run:
            run.log_per_image_table(rows, "per_image.csv")
        context.add_output_metadata(run.metadata)

    with dg.instance_for_test() as instance:
        result = dg.materialize([probe], instance=instance, resources={"mlflow": tracker, "networks": NetworksResource()})
        run_id = result.asset_materializations_for_node("probe")[0].metadata["mlflow_run_id"].value
    from mlflow import MlflowClient

    client = MlflowClient(tracker.uri())
    logged = [f.path for f in client.list_artifacts(run_id)]
    assert ("per_image.csv" in logged) == opted_in
    if opted_in:
        text = Path(client.download_artifacts(run_id, "per_image.csv", str(tmp_path))).read_text()
        table = pd.read_csv(io.StringIO(text))
        assert "Bush" not in text and "Ann_Lee" not in text
        assert table["dlib/distance"].tolist() == [0.7, 0.8] and table["name"].str.len().tolist() == [16, 16]
        assert table["identity"].nunique() == 2


_MEASURE = """<script>
window.addEventListener("load", () => {
  const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.measured = JSON.stringify({
    images: document.images.length, shown, width: document.documentElement.scrollWidth,
    tables: document.querySelectorAll("table").length, headers: [...document.querySelectorAll("table.grid th")]
      .map(th => th.textContent), h2: [...document.querySelectorAll("h2")].map(h => h.textContent),
    text: document.body.innerText});
});
</script>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_report_page_renders_in_chromium_at_1280_px(sweep, tmp_path):
    """report.html as a browser shows it: every figure decodes, the page fits 1,280 px, tables, the grid's headers,
    and no markdown left in the text (before: markdown pasted into <pre>, 2,129 px wide)."""
    page = (sweep["tmp"] / "store" / "anonymization_report" / "report.html").read_text()
    probe = tmp_path / "report.html"
    probe.write_text(page.replace("</body>", _MEASURE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
             "--window-size=1280,900", "--virtual-time-budget=5000", "--dump-dom"]
    dom = subprocess.run(["chromium", *flags, probe.as_uri()], capture_output=True, text=True, timeout=180).stdout
    import html as html_lib
    import re

    measured = json.loads(html_lib.unescape(re.search(r'data-measured="([^"]*)"', dom).group(1)))
    assert measured["images"] >= 10 and measured["shown"] == measured["images"]  # scatter, bars, grid tiles
    assert measured["width"] <= 1280, measured["width"]
    assert measured["tables"] >= 5 and measured["headers"] == ["Fake NN", "FALCO default", "FALCO m0.5"]
    assert {"Summary", "Privacy vs. utility", "Examples", "Recognizers and their thresholds", "Settings"} <= \
        set(measured["h2"])
    text = measured["text"]
    assert "**" not in text and "|---" not in text and "distance >= 0.6 counts as not matched" in text
    assert "are seeded" in text  # tiny's banner


def test_a_baseline_run_that_measured_nothing_is_not_compared(tmp_path):
    """`evaluation.baselines: []` still opens a `baseline_metrics` run (it records the empty list); it has no
    metrics, and `falco runs compare` showed it as an empty column."""
    from mlflow import MlflowClient

    from orchestration.cli_runs import find_evaluation_runs

    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, experiment = MlflowClient(tracker.uri()), tracker.ensure_experiment()
    runs = {}
    for name, tags, metric in (("variant", {"asset_key": "evaluation_metrics", "variant": "default"}, 0.3),
                               ("blur", {"asset_key": "baseline_metrics", "method": "blur"}, 0.9),
                               ("none", {"asset_key": "baseline_metrics"}, None)):
        runs[name] = client.create_run(experiment, tags=tags).info.run_id
        if metric is not None:
            client.log_metric(runs[name], "reid/dlib/top1_rate", metric)
        client.set_terminated(runs[name], "FINISHED")
    assert sorted(r.info.run_id for r in find_evaluation_runs(tracker.uri(), None)) == sorted(
        [runs["variant"], runs["blur"]])


def test_a_stopped_or_running_evaluation_is_not_the_latest_to_compare(tmp_path):
    """Evaluation runs are open while they work: a run stopped (KILLED) or still RUNNING after a finished one has
    no metrics, so `falco runs compare` and the "change vs previous run" read the finished one."""
    from mlflow import MlflowClient

    from orchestration.cli_runs import find_evaluation_runs

    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, experiment = MlflowClient(tracker.uri()), tracker.ensure_experiment()
    tags = {"asset_key": "evaluation_metrics", "variant": "m0.5"}
    finished = client.create_run(experiment, start_time=1_000, tags=tags).info.run_id
    client.log_metric(finished, "reid/dlib/top1_rate", 0.25)
    client.set_terminated(finished, "FINISHED")
    stopped = client.create_run(experiment, start_time=2_000, tags=tags).info.run_id
    client.set_terminated(stopped, "KILLED")
    running = client.create_run(experiment, start_time=3_000, tags=tags).info.run_id

    [latest] = find_evaluation_runs(tracker.uri(), None)
    assert latest.info.run_id == finished and latest.data.metrics == {"reid/dlib/top1_rate": 0.25}
    assert [r.info.run_id for r in find_evaluation_runs(tracker.uri(), None, latest=False)] == [finished]
    this_run = argparse.Namespace(client=client, experiment_id=experiment, run_id=running)
    assert tracker.previous_metrics(this_run, "evaluation_metrics", "m0.5") == {"reid/dlib/top1_rate": 0.25}


def test_a_stop_inside_an_mlflow_query_ends_the_step_killed_at_once_not_failed_on_a_locked_store(tmp_path):
    """Ctrl-C landing while MLflow reads SQLite rows (1 in 8 Ctrl-Cs of a sweep): the step's run is still recorded
    KILLED and the step reports the stop, not "database is locked" after the store's 20 s busy wait."""
    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    stopped = []

    def ctrl_c_among_the_rows(frame, event, arg):  # where a signal's handler would raise, as the sweep saw
        if event == "call" and frame.f_code.co_filename.endswith(os.path.join("sqlalchemy", "orm", "loading.py")):
            sys.settrace(None)
            stopped.append(frame.f_code.co_name)
            raise KeyboardInterrupt
        return None

    @dg.asset
    def probe(context: dg.AssetExecutionContext, mlflow: MlflowResource, networks: NetworksResource) -> None:
        with mlflow.asset_run(context, networks, {}) as run:
            sys.settrace(ctrl_c_among_the_rows)
            try:
                run.client.get_run(run.run_id)
            finally:
                sys.settrace(None)

    with dg.instance_for_test() as instance:
        result = dg.materialize([probe], instance=instance, raise_on_error=False,
                                resources={"mlflow": tracker, "networks": NetworksResource()})
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert stopped, "the stop was not injected: sqlalchemy reads rows elsewhere now"
    assert "KeyboardInterrupt" in str(failure.event_specific_data.error) and "locked" not in str(
        failure.event_specific_data.error)
    from mlflow import MlflowClient

    client = MlflowClient(tracker.uri())
    runs = client.search_runs([client.get_experiment_by_name(tracker.experiment_name()).experiment_id])
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"]  # the step's run and its Dagster run's
    import sqlite3

    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # a read left open blocks no write


def test_runs_compare_warns_of_a_variant_whose_optimization_diverged(tmp_path):
    """The report and `falco pipeline` warn of a variant whose mean loss ended above step 0's (its privacy figures
    flatter it); `falco runs compare` showed its numbers as any other's. It reads the loss curves the variant's
    shards logged before its latest evaluation, on the same input."""
    from mlflow import MlflowClient

    from orchestration.cli_runs import divergence_notes, evaluation_runs

    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, experiment = MlflowClient(tracker.uri()), tracker.ensure_experiment()

    def logged(asset, variant, start, curve=None, images=3, data="sha256:a", shard="shard-00000", lr="0.01",
               shards=None):
        tags = {"asset_key": asset, "variant": variant, "shard": shard, "data_version": data,
                **({"num_shards": str(shards)} if shards else {})}
        run_id = client.create_run(experiment, start_time=start, tags=tags).info.run_id
        client.log_param(run_id, "optimization.lr", lr)
        for step, value in enumerate(curve or []):
            client.log_metric(run_id, "loss/total", value, step=step)
        client.log_metric(run_id, "num_images" if curve else "reid/dlib/top1_rate", images if curve else 0.0)
        client.set_terminated(run_id, "FINISHED")

    logged("anonymized_latents", "lr0.01", 1_000, [7.0, 6.0, 5.0])
    logged("anonymized_latents", "lr100", 1_000, [7.0, 6.0, 5.5], lr="100")  # an earlier definition that converged
    logged("anonymized_latents", "lr100", 2_000, [7.0, 9.0, 8.0], images=3, shard="shard-00001", lr="100")
    logged("anonymized_latents", "lr100", 2_000, [7.0, 6.0, 6.0], images=1, lr="100")
    logged("anonymized_latents", "lr0.01", 2_000, [7.0, 9.0, 9.5], data="sha256:b")  # another input's shard
    logged("evaluation_metrics", "lr0.01", 3_000)
    logged("evaluation_metrics", "lr100", 3_000, lr="100")
    logged("anonymized_latents", "lr0.01", 4_000, [7.0, 9.0, 9.5])  # after its evaluation: not what it measured

    notes = divergence_notes(client, experiment, evaluation_runs(client, experiment))
    assert list(notes) == ["lr100"]  # its two shards weighted by their images: 7 -> (3 * 8 + 6) / 4 = 7.5
    assert notes["lr100"].startswith("the mean loss rose from 7 at step 0 to 7.5 at step 2: the optimization "
                                     "diverged (optimization.lr = 100 is likely too large")

    # lr100 redefined to converge, on the same images cut into one shard: its shard-00001 of the old cut diverged,
    # and is no shard of the evaluation that followed (hJ: still averaged in, a warning for a sane variant)
    logged("anonymized_latents", "lr100", 5_000, [7.0, 6.95, 6.9], images=1, lr="0.01")
    logged("evaluation_metrics", "lr100", 6_000, lr="0.01", shards=1)
    assert divergence_notes(client, experiment, evaluation_runs(client, experiment)) == {}


def test_runs_compare_all_plots_every_evaluation_of_a_variant_not_only_its_latest():
    from orchestration.cli_runs import plot_points

    frame = pd.DataFrame({"variant": ["m0.5", "blur", "m0.5", "blur"], "reid": [0.4, 0.9, 0.2, 0.8],
                          "started": ["2026-12-01 10:00:00", "2026-12-01 10:00:00", "2026-12-02 09:00:00",
                                      "2026-12-02 09:00:00"]})
    assert plot_points(frame, ["blur"], every_run=False)["reid"].to_dict() == {"m0.5": 0.2, "blur": 0.8}
    assert plot_points(frame, ["blur"], every_run=True)["reid"].to_dict() == {
        "m0.5 2026-12-01 10:00:00": 0.4, "m0.5 2026-12-02 09:00:00": 0.2, "blur": 0.8}


def test_provenance_names_the_labels_csv_that_set_the_identities(tmp_path):
    """Two runs over the same images with other labels CSVs pair and measure other identities: the run's tags say
    which labels (their sha256, from the last `ingest_settings` observation), so `falco runs compare` shows it."""
    import hashlib

    from orchestration.tracking import input_provenance

    instance = dg.DagsterInstance.ephemeral()
    assert set(input_provenance(instance).values()) == {"unobserved"}

    def observe_labels(value):
        instance.report_runless_asset_event(dg.AssetObservation(
            "ingest_settings", metadata={"labels_sha256": dg.MetadataValue.text(json.dumps(value))},
            tags={"dagster/data_version": hashlib.sha256(json.dumps(value).encode()).hexdigest()[:24]}))

    observe_labels(None)
    assert input_provenance(instance)["labels_sha256"] == "none"
    observe_labels("ab" * 32)
    assert input_provenance(instance)["labels_sha256"] == "ab" * 32


def test_a_run_launched_outside_falco_ends_in_mlflow_as_it_ended_in_dagster(tmp_path):
    """A run from the UI whose blocking check failed (or with a failed step beside a finished one) ended FINISHED in
    MLflow: its parent run ended with its last step. The daemon's run status sensor gives it the Dagster run's end;
    a run that falco's driver launched (tagged falco/launched_by) is left to the driver, its steps included."""
    from mlflow import MlflowClient

    from orchestration.run_ends import LAUNCHED_BY, RUN_END_SENSORS

    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    @dg.asset(check_specs=[dg.AssetCheckSpec("bound", asset="probe", blocking=True)])
    def probe(context: dg.AssetExecutionContext, mlflow: MlflowResource, networks: NetworksResource):
        with mlflow.asset_run(context, networks, {}):
            pass
        yield dg.Output(1)
        yield dg.AssetCheckResult(passed=False, check_name="bound")

    [on_failure] = [s for s in RUN_END_SENSORS if s.name == "mlflow_run_end_failure"]
    client = MlflowClient(tracker.uri())
    statuses = {}
    with dg.instance_for_test() as instance:
        for tags in ({}, {LAUNCHED_BY: "host:1"}):
            result = dg.materialize([probe], instance=instance, raise_on_error=False, tags=tags,
                                    resources={"mlflow": tracker, "networks": NetworksResource()})
            assert not result.success
            run = instance.get_run_by_id(result.run_id)
            [record] = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
            failure = record.event_log_entry.dagster_event
            [parent] = client.search_runs([tracker.ensure_experiment()],
                                          filter_string=f"tags.dagster_run_id = '{result.run_id}' and "
                                                        "attributes.run_name LIKE '__ephemeral%'")
            # what the run's last step left; a run the driver launched is the driver's to end
            assert parent.info.status == ("RUNNING" if tags else "FINISHED")
            context = dg.build_run_status_sensor_context(sensor_name=on_failure.name, dagster_instance=instance,
                                                         dagster_run=run, dagster_event=failure,
                                                         resources={"mlflow": tracker})
            on_failure(context)
            statuses[bool(tags)] = client.get_run(parent.info.run_id).info.status
    assert statuses == {False: "FAILED", True: "RUNNING"}  # the sensor left the driver's run alone


def test_a_ui_run_that_fails_its_privacy_check_is_failed_in_mlflow_without_the_daemon(tmp_path, lfw_faces):
    """A run launched from the UI while no Dagster daemon runs (`dagster-webserver` alone, or `dagster dev` stopped
    while its run went on): its images' step ended its MLflow run FINISHED, the blocking privacy check then failed
    the Dagster run, and only the daemon's sensor would have made MLflow say so (hH). The check ends it FAILED."""
    from mlflow import MlflowClient

    from orchestration.driver import Launch, _config, execute
    from orchestration.jobs import ANONYMIZE
    from orchestration.partitions import variant_shard_key
    from orchestration.resources import StorageResource

    write_faces(tmp_path / "faces", lfw_faces[:3], broken=False)
    # inverted and optimized as the tiny profile does (40 steps each): m = 0.9 pulls the codes toward the real faces'
    # identity, which dlib then matches
    fast_params(tmp_path / "params.yaml", checks={"privacy_max_match_share": 0.0}, tiny={"inversion": {"steps": 40}})
    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "home").mkdir()
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert run(tmp_path, instance, ["m0.9_steps40"], stages=("prepare",)).failed == []
        storage = StorageResource(root=str(tmp_path / "store"), input_dir=str(tmp_path / "faces"))
        networks = NetworksResource(params_path=str(tmp_path / "params.yaml"))
        from orchestration.graph import build_definitions

        graph = build_definitions(storage, networks, tracker).resolve_asset_graph()
        partition = str(variant_shard_key("m0.9_steps40", "shard-00000"))
        key = dg.AssetKey("anonymized_images")
        tags = dict(graph.get(key).partitions_def.get_tags_for_partition_key(partition))  # as the UI tags it
        launch = Launch("anonymize", "anonymize m0.9_steps40 shard-00000", tuple(ANONYMIZE.resolve(graph)), partition)
        run_id, success = execute(launch, _config(storage, networks, tracker), {}, tags, instance)
    assert not success
    client = MlflowClient(tracker.uri())
    [parent] = client.search_runs([tracker.ensure_experiment()],
                                  filter_string=f"tags.dagster_run_id = '{run_id}' and attributes.run_name LIKE "
                                                "'anonymize %'")
    assert parent.info.status == "FAILED"  # before: FINISHED, from its last step, until a daemon ran
