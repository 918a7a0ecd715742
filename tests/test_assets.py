"""Each asset called as a plain function with `dg.build_asset_context` on small synthetic inputs (the tiny networks,
a few real faces): what it returns, what it records, and that a variant's partition gets that variant's settings."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anon_core.artifacts import ImageSet
from orchestration.assets import anonymization, fake_pool, real_data, settings
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import MlflowResource


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions("variants", ["default", "m0.9"])
        inst.add_dynamic_partitions("image_shards", ["shard-00000"])
        yield inst


def _metadata(context) -> dict:
    return {k: getattr(v, "value", v) for k, v in context.get_output_metadata("result").items()}


@pytest.fixture
def tracker(tmp_path) -> MlflowResource:
    return MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_fake_pool_samples_the_configured_number_of_seeded_codes(tracker):
    networks = NetworksResource(overrides={"pool_size": 5, "seed": 7})
    context = dg.build_asset_context()
    value = fake_pool.fake_pool(context, networks, tracker)
    assert value["seeds"].tolist() == [7 * 2**20 + i for i in range(5)] and value["w"].shape == (5, 128)
    assert _metadata(context)["num_fakes"] == 5
    again = fake_pool.fake_pool(dg.build_asset_context(), NetworksResource(overrides={"pool_size": 3, "seed": 7}),
                                tracker)
    np.testing.assert_allclose(again["w"], value["w"][:3], atol=1e-5)  # a smaller pool: a prefix of a larger one


def test_real_images_lists_every_file_and_registers_its_shards(tmp_path, lfw_faces, instance, tracker):
    faces = tmp_path / "faces"  # beside the MLflow store, which the asset's run writes as it starts
    faces.mkdir()
    for i in range(3):
        Image.fromarray(lfw_faces[i]).save(faces / f"face_{i}.png")
    (faces / "notes.jpg").write_text("not an image")
    storage = StorageResource(root=str(tmp_path / "store"), input_dir=str(faces))
    networks = NetworksResource(overrides={"pipeline.shard_size": 2, "data.align": False})
    context = dg.build_asset_context(instance=instance)
    [output] = real_data.real_images(context, storage, networks, tracker)
    value = output.value
    table = value.table.set_index("input")
    assert table.loc["notes.jpg", "status"] == "rejected" and table.loc["notes.jpg", "reason"] == "not_an_image"
    assert table.loc[[f"face_{i}.png" for i in range(3)], "shard"].tolist() == ["shard-00000", "shard-00000",
                                                                                 "shard-00001"]
    assert value.images.shape == (3, 64, 64, 3)
    assert instance.get_dynamic_partitions("image_shards") == ["shard-00000", "shard-00001"]
    assert output.metadata["num_rejected"].value == 1


def test_pairs_takes_each_real_images_nearest_fake(lfw_faces, tracker):
    real = ImageSet(pd.DataFrame({"input": ["a.png", "b.png"], "image": ["a.png", "b.png"],
                                  "shard": ["shard-00000"] * 2}), lfw_faces[:2])
    fakes = np.eye(4, dtype=np.float32)
    reals = np.array([[0.1, 0.0, 0.9, 0.0], [0.0, 1.0, 0.0, 0.2]], np.float32)
    reals /= np.linalg.norm(reals, axis=1, keepdims=True)
    context = dg.build_asset_context()
    frame = anonymization.pairs(context, real, reals, fakes, NetworksResource(), tracker)
    assert frame["fake_index"].tolist() == [2, 1] and frame["row"].tolist() == [0, 1]
    np.testing.assert_allclose(frame["similarity"], [reals[0, 2], reals[1, 1]], rtol=1e-6)
    assert _metadata(context)["distinct_fakes"] == 2


@pytest.fixture
def shard_inputs(lfw_faces, tiny_nets):
    """Two real faces of shard-00000, their (seeded) inversions, the pairs and a pool of 3 fakes."""
    from anon_core.fake_pool import broadcast_ws, sample_fake_pool
    import torch

    g = tiny_nets.generator
    pool = sample_fake_pool(g, 3, seed=0, psi=0.7)
    inversions = broadcast_ws(torch.from_numpy(sample_fake_pool(g, 2, seed=100, psi=0.7).w), g.num_ws).numpy()
    table = pd.DataFrame({"input": ["a.png", "b.png"], "image": ["a.png", "b.png"], "shard": ["shard-00000"] * 2,
                          "sha256": ["a" * 64, "b" * 64]})
    pairs = table.assign(row=[0, 1], fake_index=[2, 0], similarity=[0.5, 0.4])
    return ImageSet(table, lfw_faces[:2]), inversions, pairs, {"seeds": pool.seeds, "w": pool.w}


def test_anonymized_latents_optimize_a_shard_with_its_variants_settings(tmp_path, instance, shard_inputs):
    real, inversions, pairs, pool = shard_inputs
    networks = NetworksResource(overrides={"optimization.steps": 2})
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    results = {}
    for variant in ("default", "m0.9"):
        context = dg.build_asset_context(partition_key=f"shard-00000|{variant}", instance=instance)
        output = anonymization.anonymized_latents(context, real, inversions, pairs, pool,
                                                  StorageResource(root=str(tmp_path / "store")), networks, mlflow)
        results[variant] = (output.value, output.data_version.value, _metadata(context))
    codes, version, metadata = results["m0.9"]
    assert codes["ws"].shape == (2, 10, 128) and codes["row"].tolist() == [0, 1]
    fixed = np.r_[0:3, 8:10]
    np.testing.assert_array_equal(codes["ws"][:, fixed], inversions[:, fixed])  # only layers 3-7 move
    assert codes["loss_total"].shape == (2, 2) and metadata["margin"] == 0.9 and metadata["variant"] == "m0.9"
    assert results["default"][2]["margin"] == 0.0
    assert version != results["default"][1]  # the version follows the codes
    assert mlflow.client().get_run(metadata["mlflow_run_id"]).data.tags["variant"] == "m0.9"


def test_anonymized_images_generate_the_codes_images_in_input_order(tmp_path, instance, shard_inputs, tiny_nets):
    """(b.png is black and white, a.png in colour: b's face is written as the luma of the face its codes give. A
    table without `grey`, stored before it was a column, is read from the images' pixels.)"""
    from anon_core.data.colour import to_grey
    from anon_core.fake_pool import generate

    real, _, pairs, pool = shard_inputs
    tinted = np.clip(real.images[0] * np.array([1.0, 0.8, 0.6]), 0, 255).astype(np.uint8)
    real = ImageSet(real.table, np.stack([tinted, real.images[1]]))
    rng = np.random.default_rng(0)
    codes = {"ws": rng.normal(size=(2, 10, 128)).astype(np.float32), "row": np.array([1, 0]),
             "identity_similarity": np.array([0.1, 0.2], np.float32)}
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    context = dg.build_asset_context(partition_key="shard-00000|m0.9", instance=instance)
    outputs = anonymization.anonymized_images(context, codes, real, pairs, pool, NetworksResource(), mlflow)
    output = next(outputs)
    value, run_id = output.value, output.metadata["mlflow_run_id"].value
    assert value.table["image"].tolist() == ["b.png", "a.png"] and value.table["fake_index"].tolist() == [0, 2]
    drawn = generate(tiny_nets.generator, codes["ws"])
    np.testing.assert_array_equal(value.images[:], np.stack([to_grey(drawn[0]), drawn[1]]))
    assert value.table["grey"].tolist() == [True, False] and output.metadata["num_grey"].value == 1
    assert output.metadata["variant"].value == "m0.9"
    # The images are generated as the IO manager writes them: the MLflow run ends after that, with how it went
    assert mlflow.client().get_run(run_id).info.status == "RUNNING"
    assert list(outputs) == [] and mlflow.client().get_run(run_id).info.status == "FINISHED"
    context = dg.build_asset_context(partition_key="shard-00000|m0.9", instance=instance)
    outputs = anonymization.anonymized_images(context, codes, real, pairs, pool, NetworksResource(), mlflow)
    run_id = next(outputs).metadata["mlflow_run_id"].value
    outputs.close()  # what Dagster does where the IO manager fails (a full disk)
    assert mlflow.client().get_run(run_id).info.status == "FAILED"
    recorded = ImageSet(real.table.assign(grey=[False, False]), real.images)  # what ingest found decides
    context = dg.build_asset_context(partition_key="shard-00000|m0.9", instance=instance)
    outputs = anonymization.anonymized_images(context, codes, recorded, pairs, pool, NetworksResource(), mlflow)
    np.testing.assert_array_equal(next(outputs).value.images[:], drawn)
    outputs.close()


def test_settings_readers_change_exactly_with_what_they_read():
    base, storage = NetworksResource(), StorageResource()
    bigger = NetworksResource(overrides={"pool_size": 5000})
    assert settings.fake_pool_settings(bigger, storage)["pool_size"] == 5000
    assert settings.settings_version(settings.fake_pool_settings(base, storage)) != \
        settings.settings_version(settings.fake_pool_settings(bigger, storage))
    assert settings.inversion_settings(base, storage) == settings.inversion_settings(bigger, storage)
    assert settings.pairing_settings(base, storage) == settings.pairing_settings(bigger, storage)
    assert settings.variant_settings(base, "m0.9")["margin"] == 0.9
    assert settings.variant_settings(base, "m0.9")["lr"] == settings.variant_settings(base, "default")["lr"]
    assert settings.settings_version({"a": 1, "b": [2]}) == settings.settings_version({"b": [2], "a": 1})


def test_a_changed_variant_definition_makes_the_report_stale_but_not_a_speed_setting(tmp_path):
    """The report labels each variant with its definition: redefining one must re-make it; how fast it runs must
    not."""
    from orchestration.resources import PROJECT_ROOT

    text = (PROJECT_ROOT / "params.yaml").read_text()
    assert text.count("\nvariants: {}") == 1 and text.count("batch_size: 32") == 1
    versions = []
    for name, margin, batch_size in (("a", 0.9, 32), ("b", 0.8, 32), ("c", 0.9, 4)):
        changed = text.replace("\nvariants: {}", f"\nvariants: {{keep: {{margin: {margin}}}}}")
        (tmp_path / f"{name}.yaml").write_text(changed.replace("batch_size: 32", f"batch_size: {batch_size}"))
        networks = NetworksResource(params_path=str(tmp_path / f"{name}.yaml"), sweep_variants=["default", "keep"])
        versions.append(settings.settings_version(settings.report_settings(networks, StorageResource())))
    assert versions[0] != versions[1] and versions[0] == versions[2]
