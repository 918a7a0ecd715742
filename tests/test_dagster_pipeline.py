"""The Dagster asset graph on the tiny profile: whole graph, partition subsets, the blocking privacy check, and a
run killed in the middle of a shard."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from orchestration.io_manager import ImageSet
from orchestration.resources import NetworksResource, StorageResource
from orchestration.runner import FINGERPRINT_TAG, run_pipeline

FAST_OPS = {
    "real_images": {"config": {"shard_size": 3}},
    "fake_pool": {"config": {"pool_size": 40}},
    "anonymized_latents": {"config": {"steps": 2, "batch_size": "auto"}},
}
UPSTREAM = ["fake_pool", "fake_features", "real_images", "real_features", "real_inversions", "pairs"]


@pytest.fixture
def faces(tmp_path, lfw_faces):
    root = tmp_path / "faces"
    (root / "Person A").mkdir(parents=True)
    for i in range(7):
        Image.fromarray(lfw_faces[i]).save(root / "Person A" / f"img_{i}.png")
    (root / "broken.jpg").write_bytes(b"")
    return root


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as inst:
        yield inst


def _params_with_checks(tmp_path, **checks):
    import yaml

    data = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    data["checks"] = {**checks, "profiles": {}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _run(tmp_path, faces, instance, **kw):
    storage = StorageResource(root=str(tmp_path / "store"), input_dir=str(faces))
    networks = NetworksResource(params_path=kw.pop("params_path", None))
    return run_pipeline(storage, networks, instance=instance, run_config={"ops": FAST_OPS}, log=lambda *_: None, **kw)


def _partitions(instance, key):
    return instance.get_materialized_partitions(dg.AssetKey(key))


def test_whole_graph_materializes_with_checks_passing(tmp_path, faces, instance):
    summary = _run(tmp_path, faces, instance)
    assert summary.failed == []
    assert summary.ran[:4] == ["prepare", "shard-00000", "shard-00001", "shard-00002"]
    for key in UPSTREAM:
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    shards = {"shard-00000", "shard-00001", "shard-00002"}  # 7 ok images in shards of 3
    assert _partitions(instance, "anonymized_latents") == shards
    assert _partitions(instance, "anonymized_images") == shards

    store = tmp_path / "store"
    written = sorted(p.relative_to(store / "anonymized_images" / "images").as_posix()
                     for p in (store / "anonymized_images" / "images").rglob("*.png"))
    assert written == [f"Person A/img_{i}.png" for i in range(7)]
    import pandas as pd

    real = pd.read_parquet(store / "real_images" / "all.parquet")
    assert real.set_index("input").loc["broken.jpg", "reason"] == "empty_file"
    latents = np.load(store / "anonymized_latents" / "shard-00002.npz")
    assert latents["ws"].shape == (1, 10, 128) and latents["loss_total"].shape == (2, 1)

    for check in ("pairs_cover_every_real", "latents_finite_and_fixed_layers_untouched", "privacy_source_match_share"):
        records = [
            r
            for key in ("pairs", "anonymized_latents", "anonymized_images")
            for r in instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey(key), check), limit=10
            )
        ]
        assert records and all(r.status.value == "SUCCEEDED" for r in records), check


def test_rerun_skips_up_to_date_steps_and_a_missing_shard_is_all_that_runs(tmp_path, faces, instance):
    _run(tmp_path, faces, instance)
    again = _run(tmp_path, faces, instance)
    assert again.ran == [] or again.ran == ["evaluate"]
    assert set(again.skipped) >= {"prepare", "shard-00000", "shard-00001", "shard-00002"}

    # Wipe one shard's record by materializing it under another fingerprint: only that shard is redone.
    from orchestration.definitions import build_definitions

    defs = build_definitions(StorageResource(root=str(tmp_path / "store"), input_dir=str(faces)), NetworksResource())
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks], selection=dg.AssetSelection.assets("anonymized_latents", "anonymized_images"),
        partition_key="shard-00001", instance=instance, resources=defs.resources,
        run_config={"ops": {"anonymized_latents": FAST_OPS["anonymized_latents"]}}, tags={FINGERPRINT_TAG: "other"},
    )
    assert result.success
    third = _run(tmp_path, faces, instance)
    assert [r for r in third.ran if r.startswith("shard")] == ["shard-00001"]


def test_failing_privacy_check_blocks_the_downstream_evaluation(tmp_path, faces, instance):
    # A bound below zero cannot be met: the blocking check must fail the shard runs.
    params_path = _params_with_checks(tmp_path, privacy_max_match_share=-1.0)
    summary = _run(tmp_path, faces, instance, params_path=params_path)
    assert summary.failed and all(name.startswith("shard") for name in summary.failed)
    assert "evaluate" not in summary.ran
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("anonymized_images"), "privacy_source_match_share"), limit=10
    )
    assert records and all(r.status.value == "FAILED" for r in records)


def test_killed_run_resumes_without_redoing_finished_shards(tmp_path, faces):
    home = tmp_path / "home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "FALCO_STORAGE": str(tmp_path / "store")}
    cmd = [sys.executable, "-m", "orchestration.cli", "pipeline", "--input", str(faces), "--shard-size", "2",
           "--pool-size", "40", "--steps", "20"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = tmp_path / "store" / "anonymized_images" / "shard-00000.parquet"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.exists(), "the first shard never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # in the middle of a later shard
    proc.wait()
    done_before = {p.stem for p in (tmp_path / "store" / "anonymized_images").glob("shard-*.parquet")}
    assert 0 < len(done_before) < 4

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    with dg.DagsterInstance.from_config(str(home)) as inst:
        for shard in sorted(done_before):
            records = inst.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("anonymized_images"), asset_partitions=[shard]), limit=5
            ).records
            assert len(records) == 1, f"{shard} was redone"
        assert inst.get_materialized_partitions(dg.AssetKey("anonymized_images")) == {
            f"shard-{i:05d}" for i in range(4)
        }
    store = tmp_path / "store"
    import pandas as pd
    from safetensors.numpy import load_file

    for path in (p for p in store.rglob("*") if p.is_file() and not p.name.startswith(".")):
        # Every visible file is whole: a kill can only leave hidden temporary files behind.
        {".parquet": pd.read_parquet, ".npz": lambda p: dict(np.load(p)), ".npy": np.load,
         ".png": lambda p: Image.open(p).load(), ".md": Path.read_text, ".html": Path.read_text,
         ".csv": pd.read_csv, ".safetensors": load_file}[path.suffix](path)
    for shard in range(4):
        data = np.load(store / "anonymized_latents" / f"shard-{shard:05d}.npz")
        assert np.isfinite(data["ws"]).all()
    images = sorted((store / "anonymized_images" / "images").rglob("*.png"))
    assert len(images) == 7 and all(Image.open(p).size == (64, 64) for p in images)


def test_image_set_round_trips_through_the_io_manager(tmp_path):
    import pandas as pd

    from orchestration.io_manager import FalcoIOManager

    manager = FalcoIOManager(root=str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, size=(2, 40, 40, 3), dtype=np.uint8)
    value = ImageSet(table=pd.DataFrame({"image": ["a/x.png", "", "b y.png"], "v": [1, 2, 3]}), images=images)
    out = dg.build_output_context(asset_key=dg.AssetKey("thing"))
    manager.handle_output(out, value)
    loaded = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("thing"), upstream_output=out))
    assert loaded.table.equals(value.table)
    np.testing.assert_array_equal(loaded.images, images)
    with pytest.raises(TypeError, match="FalcoIOManager stores"):
        manager.handle_output(out, object())


def test_launchpad_batch_size_takes_a_number_or_auto():
    from anon_core.errors import ParamsError
    from orchestration.config import OptimizationConfig

    networks = NetworksResource()
    assert networks.params(**OptimizationConfig(batch_size="12").overrides()).batch_size == 12
    assert networks.params(**OptimizationConfig(batch_size="auto").overrides()).batch_size == "auto"
    assert networks.params(**OptimizationConfig().overrides()).batch_size == networks.params().batch_size
    with pytest.raises(ParamsError, match="batch_size"):
        networks.params(**OptimizationConfig(batch_size="big").overrides())


def test_shard_size_comes_from_params_yaml_unless_the_run_config_sets_it(tmp_path, faces, instance):
    """The 7 readable faces split by params.yaml's `pipeline.shard_size` of the profile, by the run config's when
    given, and a bad value in params.yaml is one error naming the file and the key."""
    import yaml

    from anon_core.errors import ParamsError
    from orchestration.definitions import build_definitions

    data = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params_path = tmp_path / "params.yaml"

    def shards(pipeline_shard_size, run_config_shard_size=None):
        data["pipeline"]["profiles"]["tiny"]["shard_size"] = pipeline_shard_size
        params_path.write_text(yaml.safe_dump(data))
        defs = build_definitions(StorageResource(root=str(tmp_path / "store"), input_dir=str(faces)),
                                 NetworksResource(params_path=str(params_path)))
        config = {} if run_config_shard_size is None else {"shard_size": run_config_shard_size}
        dg.materialize(list(defs.assets), selection=dg.AssetSelection.assets("real_images"), instance=instance,
                       resources=defs.resources, run_config={"ops": {"real_images": {"config": config}}})
        return instance.get_dynamic_partitions("image_shards")

    assert shards(4) == ["shard-00000", "shard-00001"]
    assert shards(4, run_config_shard_size=7) == ["shard-00000"]
    assert shards(2) == ["shard-00000", "shard-00001", "shard-00002", "shard-00003"]
    with pytest.raises(ParamsError, match=r"params\.yaml: pipeline\.shard_size = 0 must be"):
        shards(0)
