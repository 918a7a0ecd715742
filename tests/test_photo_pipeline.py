"""Photo mode in the Dagster graph: `falco pipeline --mode photo` runs the named jobs prepare_photos and
anonymize_photos per (photo shard, variant), each shard's blocking per-face privacy check, and Dagster's versioning
says what a change makes stale."""

import json
import re
import shutil

import dagster as dg
import pandas as pd
import pytest
from dagster._core.storage.event_log.base import PartitionKeyFilter
from mlflow import MlflowClient
from PIL import Image

from anon_core.data.sample import build_sample_photos
from tests.pipeline_helpers import fast_params, instance_at, run

VARIANTS = ["default", "m0.5"]




def _made(instance: dg.DagsterInstance) -> dict[str, int]:
    return {name: len(instance.fetch_materializations(dg.AssetKey(name), limit=1000).records)
            for name in ("fake_pool", "fake_features", "input_photos", "anonymized_photos")}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    build_sample_photos(root / "faces")  # group.png (7 faces), no_face.png, portrait.jpg (1 face)
    fast_params(root / "params.yaml", pipeline={"shard_size": 2, "executor": "in_process", "max_concurrent": 1})
    with instance_at(root / "home") as instance, pytest.MonkeyPatch.context() as env:
        env.setenv("FALCO_PROGRESS_EVERY_S", "0")  # every progress line, in Dagster's log
        summary = run(root, instance, VARIANTS, mode="photo")
    return root, summary


@pytest.fixture
def state(base, tmp_path):
    root = tmp_path / "state"
    shutil.copytree(base[0], root)
    with instance_at(root / "home") as instance:
        yield root, instance


def test_photo_mode_runs_as_named_jobs_per_shard_and_variant(base):
    root, summary = base
    shards = ["shard-00000", "shard-00001"]  # group.png + no_face.png, then portrait.jpg
    assert summary.failed == [] and summary.blocked == []
    assert summary.ran == ["prepare photos", *[f"anonymize photos {v} {s}" for v in VARIANTS for s in shards]]
    with instance_at(root / "home") as instance:
        runs = instance.get_runs()
        assert {r.job_name for r in runs} == {"observe_settings", "prepare_photos", "anonymize_photos"}
        assert {(r.tags["dagster/partition/variant"], r.tags["dagster/partition/shard"]) for r in runs
                if r.job_name == "anonymize_photos"} == {(v, s) for v in VARIANTS for s in shards}
        check = dg.AssetCheckKey(dg.AssetKey("anonymized_photos"), "privacy_face_match_share")
        [record] = instance.event_log_storage.get_asset_check_execution_history(
            check, limit=1, partition_filter=PartitionKeyFilter(key="shard-00000|default"))
        metadata = record.event.dagster_event.event_specific_data.metadata
        assert metadata["faces"].value == 7 and metadata["matched_faces"].value == 0
        # a shard logs how far it got through its photos and faces (each update here; every 30 s by default)
        [first] = [r for r in runs if r.job_name == "anonymize_photos" and r.tags["dagster/partition"] ==
                   "shard-00000|default"]
        logged = [e.user_message for e in instance.all_logs(first.run_id) if e.user_message]
        # reading is counted in pixels (what it costs), the photos read beside them
        read = r"default shard-00000: read: [\d.]+[kM]?/[\d.]+[kM]? pixels \(100%\), 00:.*, 2/2 photos"
        assert any(re.fullmatch(read, m) for m in logged), logged
        assert any(re.match(r"default shard-00000: anonymize: (\d)/\1 faces \(100%\), 00:", m) for m in logged)
        assert any(m.startswith("default shard-00000: optimize: ") for m in logged)
        # the faces of each photo are searched for once, by the first variant to read it (the storage's detection
        # cache), whatever the number of variants
        made = instance.fetch_materializations(dg.AssetKey("anonymized_photos"), limit=10).records
        assert sum(r.asset_materialization.metadata["photos_found_earlier"].value for r in made) == 3
    for variant in VARIANTS:
        first = root / "store" / "anonymized_photos" / variant / "shard-00000"
        second = root / "store" / "anonymized_photos" / variant / "shard-00001"
        assert sorted(p.name for p in (first / "images").iterdir()) == ["group.png", "no_face.png"]
        assert [p.name for p in (second / "images").iterdir()] == ["portrait.png"]
        manifest = pd.read_csv(first / "manifest.csv", dtype=str, keep_default_na=False)
        assert (manifest["kind"] == "face").sum() == 7
        privacy = pd.read_csv(first / "face_privacy.csv")
        assert len(privacy) == 7
        with Image.open(first / "images" / "group.png") as im, Image.open(root / "faces" / "group.png") as real:
            assert im.size == real.size
    stored = pd.read_parquet(root / "store" / "anonymized_photos" / "default" / "shard-00000.parquet")
    assert set(stored["input"]) == {"group.png", "no_face.png"}
    # MLflow keeps each shard's settings as asked and, beside them, what `auto` meant on this device
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    shard_runs = client.search_runs([client.get_experiment_by_name("falco").experiment_id],
                                    "tags.asset_key = 'anonymized_photos'")
    assert len(shard_runs) == 4 and all(r.data.params["speed.resize_form"] == "auto" and
                                        r.data.params["resolved.speed.resize_form"] == "interpolate" for r in shard_runs)


def test_a_second_run_makes_nothing_and_a_new_cover_remakes_only_the_photos(state):
    root, instance = state
    before = _made(instance)
    again = run(root, instance, VARIANTS, mode="photo")
    assert again.ran == [] and _made(instance) == before
    changed = run(root, instance, VARIANTS, mode="photo", overrides={"photo.cover": "blur"})
    after = _made(instance)
    assert after["anonymized_photos"] == before["anonymized_photos"] + 4  # 2 shards x 2 variants
    assert {k: after[k] for k in ("fake_pool", "fake_features", "input_photos")} == \
        {k: before[k] for k in ("fake_pool", "fake_features", "input_photos")}
    assert len(changed.ran) == 4
    # a cover changes no anonymized face: every shard took its faces' codes from its journal, optimizing none
    latest = instance.fetch_materializations(dg.AssetKey("anonymized_photos"), limit=4).records
    figures = [(r.asset_materialization.metadata["faces_from_journal"].value,
                r.asset_materialization.metadata["faces_anonymized"].value) for r in latest]
    assert sorted(figures) == [(1, 1), (1, 1), (6, 6), (6, 6)]
    # nor does it change what is found in a photo: every shard's photos (2, 1, 2, 1) are not searched again
    assert sorted(r.asset_materialization.metadata["photos_found_earlier"].value for r in latest) == [1, 1, 2, 2]
    said = [e.user_message for run_id in changed.run_ids for e in instance.all_logs(run_id) if e.user_message]
    taken = [int(n) for m in said for n in re.findall(r"; (\d+) face\(s\) (?:taken from an earlier run's journal|the "
                                                      r"same as in an earlier run)", m)]
    assert sum(taken) == 14  # the shard's own summary line says so, as `falco anonymize --mode photo` does


def test_an_anonymized_photo_deleted_by_hand_is_written_again_in_its_shard_alone(state):
    root, instance = state
    photo = root / "store" / "anonymized_photos" / "m0.5" / "shard-00000" / "images" / "group.png"
    written = photo.read_bytes()
    photo.unlink()
    before = _made(instance)
    summary = run(root, instance, VARIANTS, mode="photo")
    assert summary.ran == ["anonymize photos m0.5 shard-00000"] and summary.failed == []
    assert _made(instance)["anonymized_photos"] == before["anonymized_photos"] + 1
    assert photo.read_bytes() == written  # its faces' codes from the shard's journal: the same photo
    assert run(root, instance, VARIANTS, mode="photo").ran == []


def test_photos_added_before_the_others_optimize_only_their_own_faces(state):
    """Two photos that sort first move every photo to the next shard, so each shard holds other photos and runs
    again; a face whose photo moved is taken by its key from the journal of the shard folder it was in, and once
    every shard is made each journal holds its own run's batches only (before, each shard re-optimized every face
    it held)."""
    root, instance = state
    with Image.open(root / "faces" / "portrait.jpg") as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "faces" / "a1_mirrored.png")  # a new face
    shutil.copy(root / "faces" / "no_face.png", root / "faces" / "a2_nothing.png")
    summary = run(root, instance, VARIANTS, mode="photo")
    assert summary.failed == [] and summary.blocked == []
    latest = instance.fetch_materializations(dg.AssetKey("anonymized_photos"), limit=6).records
    figures = {r.partition_key: (r.asset_materialization.metadata["faces_from_journal"].value,
                                 r.asset_materialization.metadata["faces_anonymized"].value) for r in latest}
    # shard-00000: the two new photos; shard-00001: group.png (was in shard-00000); shard-00002: portrait.jpg
    assert figures == {f"{shard}|{v}": counts for v in VARIANTS
                       for shard, counts in (("shard-00000", (0, 1)), ("shard-00001", (6, 6)), ("shard-00002", (1, 1)))}
    for folder in (root / "store" / "anonymized_photos").glob("*/shard-*"):
        if folder.is_dir():
            latest_key = json.loads((folder / ".journal" / "run.json").read_text())["key"]
            assert {p.name[6:22] for p in (folder / ".journal").glob("batch-*.npz")} == {latest_key[:16]}
    again = run(root, instance, VARIANTS[:1], mode="photo", fresh=True)  # --fresh: every face optimized again
    assert again.failed == [] and len(again.ran) == 4  # prepare photos and the variant's 3 shards
    latest = instance.fetch_materializations(dg.AssetKey("anonymized_photos"), limit=3).records
    assert [r.asset_materialization.metadata["faces_from_journal"].value for r in latest] == [0, 0, 0]
    # but no photo is searched again: the same bytes give the same faces (as aligned mode keeps its aligned crops)
    assert sum(r.asset_materialization.metadata["photos_found_earlier"].value for r in latest) == 5


def test_a_shard_killed_while_its_photos_were_written_is_made_again_on_the_recorded_settings(state):
    """A `--cover blur` run killed once it rewrote a photo of a shard leaves that shard's folder half of its
    settings; back on the recorded ones Dagster alone calls the shard up to date (it kept the killed run's photos)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, instance = state
    photo = root / "store" / "anonymized_photos" / "m0.5" / "shard-00000" / "images" / "group.png"
    recorded, written = photo.read_bytes(), photo.stat().st_mtime_ns
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "pipeline", "--mode", "photo", "--input", str(root / "faces"),
         "--storage", str(root / "store"), "--params", str(root / "params.yaml"), "--variant", "m0.5", "--cover",
         "blur"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "DAGSTER_HOME": str(root / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'm.db'}"})
    deadline = time.time() + 300
    while photo.stat().st_mtime_ns == written and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert photo.stat().st_mtime_ns != written, "the run never rewrote the photo"

    summary = run(root, instance, VARIANTS, mode="photo")
    assert summary.failed == [] and summary.ran == ["anonymize photos m0.5 shard-00000"]
    assert photo.read_bytes() == recorded


def test_a_shard_that_no_longer_exists_leaves_no_photos_behind(state):
    """Without portrait.jpg the 2 photos left make one shard: shard-00001's photos and table go (before, they stayed
    in `anonymized_photos/<variant>/`, photos of an input that is gone)."""
    root, instance = state
    (root / "faces" / "portrait.jpg").unlink()
    summary = run(root, instance, VARIANTS, mode="photo")
    assert summary.failed == []
    for variant in VARIANTS:
        folder = root / "store" / "anonymized_photos" / variant
        assert sorted(p.name for p in folder.iterdir()) == [".shard-00000.files", ".shard-00000.run", "shard-00000",
                                                          "shard-00000.parquet"]
        assert sorted(p.name for p in (folder / "shard-00000" / "images").iterdir()) == ["group.png", "no_face.png"]


def test_the_pipeline_says_what_photo_mode_did_to_each_variants_photos(state, capsys, monkeypatch):
    """`falco pipeline --mode photo` named only the folders: the photo without a face, the covered faces and the
    rejected files were only in each shard's manifest.csv, where `falco anonymize --mode photo` names them."""
    from orchestration.cli import main

    root, instance = state
    (root / "faces" / "notes.txt").write_text("not a photo")
    monkeypatch.setenv("DAGSTER_HOME", str(root / "home"))
    assert main(["pipeline", "--mode", "photo", "--input", str(root / "faces"), "--storage", str(root / "store"),
                 "--params", str(root / "params.yaml"), "--variant", ",".join(VARIANTS), "--log-level", "ERROR"]) == 0
    out = capsys.readouterr().out
    assert "<shard>" not in out
    for variant in VARIANTS:
        folder = root / "store" / "anonymized_photos" / variant
        faces = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in folder.glob("*/manifest.csv")])
        faces = faces[faces["kind"] == "face"]
        anonymized, covered = (faces["status"] == "anonymized").sum(), (faces["status"] == "covered").sum()
        assert anonymized + covered == 8  # group.png's 7 and the portrait's 1
        shards = sorted(p.name for p in folder.glob("shard-*") if p.is_dir())  # before: a literal "<shard>"
        where = folder / shards[0] / "images" if len(shards) == 1 else \
            f"{folder / 'shard-*' / 'images'} ({len(shards)} shards)"
        line = out.split(f"  {variant}: {where}\n", 1)[1].splitlines()[0]
        assert line.startswith(f"    8 face(s) in 3 photo(s): {anonymized} anonymized, {covered} covered")
        assert "; 1 file(s) rejected (not_an_image: 1);" in line
        assert "1 photo(s) in which no face was found, written unchanged (no_face.png)" in line
