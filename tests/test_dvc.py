"""DVC against the real `dvc` and `git` in temporary folders: push/pull of the data, the project's data.dvc matches
the deterministic sample dataset, and `dvc repro` of the tiny pipeline (dvc.yaml's stages run `falco stage NAME`,
which launches the Dagster job NAME), with DVC's md5 of the data shown by the `input_images` observation."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from orchestration.data_version import files_version, find_dvc_out, read_dvc_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")

pytestmark = pytest.mark.skipif(not (BIN / "dvc").exists() or shutil.which("git") is None, reason="needs dvc and git")


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DAGSTER_HOME": str(tmp_path / "dagster"),
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}


def _sh(args: list[str], cwd: Path, env: dict, timeout: float = 240) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _dvc_project(path: Path, env: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _sh(["git", "init", "-q"], path, env)
    _sh([DVC, "init", "-q"], path, env)
    _sh([DVC, "config", "core.analytics", "false"], path, env)
    return path


def _write_faces(folder: Path, faces: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(faces):
        Image.fromarray(face).save(folder / f"face_{i}.png")


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_delete_pull_restores_the_same_bytes(tmp_path, lfw_faces):
    env = _env(tmp_path)
    repo = _dvc_project(tmp_path / "repo", env)
    _sh([DVC, "remote", "add", "-d", "local", str(tmp_path / "remote")], repo, env)
    _write_faces(repo / "data" / "faces", lfw_faces[:3])
    (repo / "data" / "notes.txt").write_text("three faces\n")
    before = _tree(repo / "data")
    _sh([DVC, "add", "data"], repo, env)
    _sh([DVC, "push"], repo, env)
    assert any((tmp_path / "remote").rglob("*")), "dvc push wrote nothing to the remote"

    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    _sh([DVC, "pull"], repo, env)
    assert _tree(repo / "data") == before

    out = find_dvc_out(repo / "data" / "faces")  # a folder inside the tracked one resolves to data.dvc
    assert out is not None and out.dvc_file == repo / "data.dvc" and out.md5.endswith(".dir")
    assert out.md5 == yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]


def test_project_data_dvc_is_the_deterministic_sample_dataset(tmp_path):
    from anon_core.data.sample import build_sample_dataset

    env = _env(tmp_path)
    repo = _dvc_project(tmp_path / "repo", env)
    build_sample_dataset(repo / "data" / "sample")  # what `make demo` builds
    _sh([DVC, "add", "data"], repo, env)
    [built] = read_dvc_file(repo / "data.dvc")
    [ours] = read_dvc_file(ROOT / "data.dvc")
    assert ours.path == ROOT / "data"
    assert built.md5 == ours.md5, "data.dvc is stale: run `falco sample-data data/sample && dvc add data`"


def test_the_files_version_follows_every_file_and_a_folder_without_dvc_file_has_no_dvc_md5(tmp_path):
    (tmp_path / ".dvc").mkdir()  # a DVC project root with no .dvc file for the folder
    files = [("a.png", "11"), ("b.png", "22")]
    assert find_dvc_out(tmp_path / "images") is None
    assert files_version(files) == files_version(list(reversed(files)))  # the order files are listed in: no matter
    assert files_version(files) != files_version([("a.png", "11"), ("b.png", "23")])
    assert files_version(files) != files_version(files[:1])
    (tmp_path / "broken.dvc").write_text("not: [a dvc file\n")
    (tmp_path / "broken").mkdir()
    with pytest.raises(ValueError, match="broken.dvc"):
        find_dvc_out(tmp_path / "broken")


@pytest.mark.slow
def _tiny_project(tmp_path: Path, lfw_faces, env: dict) -> tuple[Path, dict]:
    """A DVC project of this one's dvc.yaml and code, params.yaml at 2 steps (variants default and m0.5, the blur
    baseline) and 4 faces as its `data`; and those params."""
    repo = _dvc_project(tmp_path / "repo", env)
    for folder in ("anon_core", "orchestration", "evaluation"):  # dvc.yaml's code deps
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profiles"]["tiny"].update(pool_size=40, optimization={"steps": 2},
                                      inversion={"method": "optimization", "steps": 2})
    params["sweep"] = {"variants": ["default"], "margin": [0.5]}  # two variants: default and m0.5
    params["evaluation"]["baselines"] = ["blur"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _write_faces(repo / "data" / "sample" / "images", lfw_faces[:4])
    _sh([DVC, "add", "data"], repo, env)
    return repo, params


def _stage_processes(repo: Path) -> list[int]:
    """The processes running a `falco stage` in `repo` (the shell that runs it included)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if entry.name.isdigit() and b"stage" in argv and os.path.realpath(entry / "cwd") == str(repo.resolve()):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_stopped_dvc_repro_stops_its_stage(tmp_path, lfw_faces):
    """Before: a SIGTERM to `dvc repro` (a CI job cancelled, `kill PID`) ended DVC alone: its `falco stage`, the
    child of a shell that dash does not replace, went on with its Dagster run, its MLflow runs and the storage's
    lock. Now the stage stops as Ctrl-C stops it."""
    import signal
    import time

    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    env = {**_env(tmp_path), "SHELL": "/bin/sh"}  # Debian's dash: it forks where bash would replace itself
    repo, params = _tiny_project(tmp_path, lfw_faces, env)
    params["profiles"]["tiny"]["inversion"]["steps"] = 100_000  # a prepare stage that would run for an hour
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    log = tmp_path / "dvc.log"
    with open(log, "wb") as out:
        dvc = subprocess.Popen([DVC, "repro"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # the prepare run is under way once it stored its first asset (its inversions then take an hour); the
        # instance is not opened meanwhile: opened while the stage was making it, it failed the stage in CI
        deadline = time.time() + 300
        while not (repo / "outputs" / "pipeline" / "real_images").is_dir():
            assert dvc.poll() is None and time.time() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        stage = _stage_processes(repo)
        assert stage
        dvc.send_signal(signal.SIGTERM)
        dvc.wait(timeout=60)
        deadline = time.time() + 120
        while _stage_processes(repo) and time.time() < deadline:
            time.sleep(0.5)
        assert not _stage_processes(repo), "the stage went on without dvc"
        with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
            assert not instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]))
    finally:
        for pid in _stage_processes(repo):
            os.kill(pid, signal.SIGKILL)
        if dvc.poll() is None:
            dvc.kill()


def test_dvc_repro_of_the_tiny_pipeline(tmp_path, lfw_faces):
    """About a minute on 2 CPU cores: 3 stages, each a `falco stage` process launching its Dagster job."""
    import dagster as dg

    env = _env(tmp_path)
    help_proc = subprocess.run([str(BIN / "falco"), "stage", "--help"], capture_output=True, text=True, env=env)
    assert help_proc.returncode == 0, "`falco stage` is not wired into orchestration/cli.py"
    repo, params = _tiny_project(tmp_path, lfw_faces, env)

    _sh([DVC, "repro"], repo, env, timeout=600)
    store = repo / "outputs" / "pipeline"
    for variant in ("default", "m0.5"):
        assert len(list((store / "anonymized_images" / variant / "images").rglob("*.png"))) == 4
    metrics_file = store / "anonymization_report" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics) == {"default", "m0.5", "blur"}
    assert metrics["default"]["num_images"] == 4 and 0.0 <= metrics["m0.5"]["reid/dlib/top1_rate"] <= 1.0
    shown = _sh([DVC, "metrics", "show"], repo, env)
    assert "anonymization_report/metrics.json" in shown and "reid/dlib/top1_rate" in shown
    losses = (store / "anonymization_report" / "losses" / "m0.5.csv").read_text().splitlines()
    assert losses[0] == "step,identity,attribute,total" and len(losses) == 3  # header + 2 steps
    plots = json.loads(_sh([DVC, "plots", "show", "--json"], repo, env))
    assert any("losses/m0.5.csv" in key for key in plots["data"]), plots["data"].keys()
    assert "up to date" in _sh([DVC, "status"], repo, env)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "anonymize", "evaluate"}
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first sweep"], repo, env)
    # the real faces (and what redraws or identifies them) stay where they were written, owner-only, and DVC keeps no
    # copy of them: before, its cache held them readable by everyone, and kept them after a person was erased
    cached = {p.name for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file()}
    for stage, folder in (("prepare", "real_images"), ("prepare", "real_inversions"), ("evaluate", "real_gallery")):
        (out,) = [o for o in lock["stages"][stage]["outs"] if o["path"].endswith(f"/{folder}")]
        assert out["md5"].removesuffix(".dir")[2:] not in {name.removesuffix(".dir") for name in cached}, folder
        written = [p for p in (store / folder).rglob("*") if p.is_file()]
        assert written and all((p.stat().st_mode & 0o777) == 0o600 for p in written), folder
    assert any(name.endswith(".dir") for name in cached)  # the other outs are cached as before

    md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        assert {r.job_name for r in instance.get_runs()} == {"observe_settings", "prepare", "anonymize",
                                                              "evaluate_references", "evaluate", "evaluate_report"}
        observed = instance.fetch_observations(dg.AssetKey("input_images"), limit=1).records[0]
        assert observed.asset_observation.metadata["dvc_md5"].value == md5

    # A new margin in params.yaml: DVC re-runs the anonymize and evaluate stages, Dagster only the new variant.
    params["sweep"]["margin"] = [0.5, 0.9]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _sh([DVC, "repro"], repo, env, timeout=600)
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        latents = instance.fetch_materializations(dg.AssetKey("anonymized_latents"), limit=100).records
        assert sorted(r.partition_key.split("|")[1] for r in latents) == ["default", "m0.5", "m0.9"]  # one shard each
    assert set(json.loads(metrics_file.read_text())) == {"default", "m0.5", "m0.9", "blur"}
    # the committed sweep's numbers beside the workspace's (before, DVC kept no copy of metrics.json: every committed
    # revision and experiment showed "!" in `dvc exp show`, and `metrics diff` failed to load them)
    diff = json.loads(_sh([DVC, "metrics", "diff", "HEAD", "--all", "--json"], repo, env))
    (changes,) = diff.values()
    assert changes["m0.9.num_images"]["old"] is None and changes["m0.9.num_images"]["new"] == 4
    assert changes["m0.5.reid/dlib/top1_rate"]["old"] == changes["m0.5.reid/dlib/top1_rate"]["new"]

    # A change DVC sees in the evaluate stage's code while Dagster's report is up to date: DVC runs the stage without
    # deleting the report first (before, it deleted report.md, Dagster kept the report it called fresh, and every
    # `dvc repro` failed on the missing out).
    with open(repo / "evaluation" / "__init__.py", "a") as code:
        code.write("# edited\n")
    _sh([DVC, "repro"], repo, env, timeout=600)
    assert (store / "anonymization_report" / "report.md").is_file()
    # the release bound is the report's (it marks the variants above it): before, DVC called the stage unchanged
    params["checks"]["privacy_max_match_share"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert "evaluate:" in _sh([DVC, "status"], repo, env)

    # Another experiment re-makes every variant (3 steps), then the committed sweep is put back, as `dvc exp apply`
    # does: params.yaml, dvc.lock and the cached outputs, whose files name the runs that wrote them. Dagster's latest
    # records were the other experiment's: DVC found anonymize up to date, and the evaluate stage was refused
    # ("anonymized_images unrecorded, anonymized_latents stale"). The values put back are recorded again instead.
    params["profiles"]["tiny"]["optimization"]["steps"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _sh([DVC, "repro"], repo, env, timeout=600)
    assert len((store / "anonymization_report" / "losses" / "m0.5.csv").read_text().splitlines()) == 4
    _sh(["git", "checkout", "--", "params.yaml", "dvc.lock"], repo, env)
    _sh([DVC, "checkout", "--force", "--quiet"], repo, env)
    _sh([DVC, "repro"], repo, env, timeout=600)
    assert len((store / "anonymization_report" / "losses" / "m0.5.csv").read_text().splitlines()) == 3  # 2 steps
    assert set(json.loads(metrics_file.read_text())) == {"default", "m0.5", "blur"}
    assert "up to date" in _sh([DVC, "status"], repo, env)


def test_the_prepare_stage_follows_every_defaults_key_its_assets_read():
    """`pairing` was missing from the stage's params: `dvc repro` after changing it skipped every stage and kept the
    old pairs."""
    from orchestration.assets import settings
    from orchestration.resources import NetworksResource, StorageResource

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["prepare"]
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())["defaults"]
    read = {key for reader in (settings.fake_pool_settings, settings.pairing_settings, settings.inversion_settings)
            for key in reader(NetworksResource(), StorageResource())}
    assert {"pairing", "pool_size", "seed"} <= read & set(defaults)
    assert {f"defaults.{key}" for key in read & set(defaults)} <= set(stage["params"])


def test_each_stage_declares_the_folder_of_every_asset_its_job_stores():
    """`real_gallery` joined the evaluate job without an entry in the stage's outs: DVC would not have tracked it."""
    from orchestration.definitions import defs
    from orchestration.jobs import ANONYMIZE, EVALUATE, PREPARE

    graph = defs.resolve_asset_graph()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, selection in (("prepare", PREPARE), ("anonymize", ANONYMIZE), ("evaluate", EVALUATE)):
        outs = {next(iter(out)) if isinstance(out, dict) else out for out in stages[name]["outs"]}
        folders = {out.removeprefix("${store}/").split("/")[0] for out in outs}
        stored = {key.path[-1] for key in selection.resolve(graph)}
        assert stored == folders, f"stage {name}: {sorted(stored ^ folders)}"
        # Dagster decides what is stale: an out DVC deleted before a stage would stay missing where Dagster keeps it
        outs = [*stages[name]["outs"], *stages[name].get("metrics", []), *stages[name].get("plots", [])]
        assert all(next(iter(out.values()))["persist"] for out in outs), name
