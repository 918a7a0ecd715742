"""The `attribute_classifier` asset: trained on the train split of a small CelebA-HQ-shaped folder through the Dagster
graph, tested by a variant's evaluation on the real and the anonymized test split; skipped for data without labels."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from anon_core.artifacts import Weights
from anon_core.celeba import CELEBA_ATTRIBUTES
from anon_core.errors import ParamsError
from orchestration.driver import run_pipeline
from orchestration.io_manager import FalcoIOManager
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import MlflowResource

LEARNABLE = "Pale_Skin"  # set on bright images, cleared on dark ones; every other attribute is a coin flip
SPLITS = ["train"] * 20 + ["val"] * 6 + ["test"] * 6  # 32 images: one optimization batch of `tiny`
PARTITION_CODE = {"train": "0", "val": "1", "test": "2"}
FAST = {"pipeline.shard_size": 64, "pool_size": 40, "optimization.steps": 1, "evaluation.baselines": ["blur"],
        "attribute_classifier.epochs": 20}  # 20 epochs: BatchNorm's running statistics settle


def _faces(count: int) -> np.ndarray:
    """`count` real LFW faces from scikit-image, 64 px grey in [0, 1]."""
    from skimage.data import lfw_subset

    return np.stack([np.asarray(Image.fromarray((f * 255).astype(np.uint8)).resize((64, 64), Image.BICUBIC)) / 255
                     for f in lfw_subset()[:count]])


def make_celebahq(root: Path) -> np.ndarray:
    """CelebAMask-HQ layout: CelebA-HQ-img/<i>.jpg, the attribute file, the mapping and CelebA's partition file.
    Returns the bool labels [N, 40]."""
    faces = _faces(len(SPLITS))
    labels = np.random.default_rng(0).random((len(SPLITS), 40)) < 0.5
    labels[:, CELEBA_ATTRIBUTES.index(LEARNABLE)] = np.arange(len(SPLITS)) % 2 == 0
    (root / "CelebA-HQ-img").mkdir(parents=True)
    for i, (face, pale) in enumerate(zip(faces, labels[:, CELEBA_ATTRIBUTES.index(LEARNABLE)])):
        grey = (140 if pale else 10) + 100 * face  # bright or dark: learnable from the mean intensity
        Image.fromarray(np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)).save(
            root / "CelebA-HQ-img" / f"{i}.jpg", quality=95)
    rows = [f"{i}.jpg " + " ".join("1" if v else "-1" for v in row) for i, row in enumerate(labels)]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join([str(len(rows)), " ".join(CELEBA_ATTRIBUTES),
                                                                      *rows]) + "\n")
    mapping = ["idx orig_idx orig_file"] + [f"{i} {i} {i + 1:06d}.jpg" for i in range(len(SPLITS))]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    partition = [f"{i + 1:06d}.jpg {PARTITION_CODE[s]}" for i, s in enumerate(SPLITS)]
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return labels


def _fast_params(path: Path) -> str:
    data = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    data["profiles"]["tiny"]["inversion"] = {"method": "optimization", "steps": 1}
    data["checks"] = {"privacy_max_match_share": 1.0}  # the privacy check is not under test; one step need not pass
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _metadata(instance: dg.DagsterInstance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    assert event is not None, f"{key} was not materialized"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> MlflowResource:
    """One MLflow database for the module (creating one takes seconds)."""
    return MlflowResource(tracking_uri=f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


@pytest.fixture(scope="module")
def celebahq_run(tmp_path_factory, mlflow_store):
    """The whole graph on 32 CelebA-HQ-shaped faces (20 train, 6 val, 6 test), one shard, one baseline (blur)."""
    tmp = tmp_path_factory.mktemp("celebahq_run")
    make_celebahq(tmp / "celebahq")
    storage = StorageResource(root=str(tmp / "store"), input_dir=str(tmp / "celebahq"))
    networks = NetworksResource(params_path=_fast_params(tmp / "params.yaml"), overrides=FAST)
    mlflow = mlflow_store
    (tmp / "dagster_home").mkdir()
    (tmp / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(tmp / "dagster_home")) as instance:
        summary = run_pipeline(storage, networks, instance=instance, log=lambda *_: None, mlflow=mlflow)
        yield summary, instance, tmp / "store", mlflow


def test_classifier_trains_on_the_train_split_and_learns_the_learnable_attribute(celebahq_run):
    summary, instance, store, mlflow = celebahq_run
    assert summary.failed == [] and summary.ran[-1] == "report"
    meta = _metadata(instance, "attribute_classifier")
    assert meta["status"] == "trained" and meta["num_train"] == 20 and meta["num_val"] == 6
    assert meta["num_attributes"] == 40 and meta["steps"] == 20 * 2  # 20 images in batches of 16, 20 epochs
    assert meta["train_loss_last_epoch"] < meta["train_loss_first_epoch"]

    run = mlflow.client().get_run(meta["mlflow_run_id"])
    assert run.data.metrics[f"val_accuracy/{LEARNABLE}"] >= 0.75  # chance is 0.5: half the val images are pale
    assert run.data.params["attribute_classifier.epochs"] == "20"
    losses = mlflow.client().get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(1, 41))

    weights = FalcoIOManager(root=str(store))._load(store / "attribute_classifier", "all")
    assert isinstance(weights, Weights) and weights.metadata["status"] == "trained"
    assert (store / "attribute_classifier" / "all.safetensors").is_file()
    assert weights.arrays["fc.weight"].shape[0] == 40


def test_evaluation_reports_per_attribute_accuracy_on_real_and_anonymized_test_images(celebahq_run):
    summary, instance, store, _ = celebahq_run
    attributes = pd.read_parquet(store / "attribute_agreement" / "default" / "all.parquet")
    ours = attributes[attributes["predictor"] == "attribute_classifier"].set_index("attribute")
    assert list(ours.index) == list(CELEBA_ATTRIBUTES) and (ours["n"] == 6).all()  # the 6 test images only
    for column in ("accuracy_real", "accuracy_anon", "agreement"):
        assert ours[column].between(0, 1).all(), column
    assert ours.loc[LEARNABLE, "accuracy_real"] >= 0.75, ours.loc[LEARNABLE]
    np.testing.assert_allclose(ours["drop"], ours["accuracy_real"] - ours["accuracy_anon"])
    assert set(attributes["predictor"]) > {"attribute_classifier"}  # the pseudo-label rows are still there

    falco = pd.read_parquet(store / "evaluation_metrics" / "default" / "all.parquet").set_index("method").loc["default"]
    assert falco["attributes/attribute_classifier/mean_accuracy_real"] == pytest.approx(ours["accuracy_real"].mean())
    assert falco["attributes/attribute_classifier/mean_agreement"] == pytest.approx(ours["agreement"].mean())
    assert _metadata(instance, "evaluation_metrics")["attribute_classifier"] == "evaluated on 6 test images"
    report = (store / "anonymization_report" / "report.md").read_text()
    assert "attributes/attribute_classifier/mean_accuracy_anon" in report and "accuracy_anon" in report


def test_the_baselines_are_scored_by_the_classifier_and_are_points_of_the_scatter(celebahq_run):
    """The scatter's utility axis is the trained classifier's agreement, which only the variants were scored by: the
    baselines had none, and were left out of the report's scatter and `falco runs compare --plot`'s without a word."""
    _, _, store, mlflow = celebahq_run
    axis = "attributes/attribute_classifier/mean_agreement"
    blur = pd.read_parquet(store / "baseline_metrics" / "all.parquet").set_index("method").loc["blur"]
    assert 0 <= blur[axis] <= 1 and 0 <= blur["attributes/attribute_classifier/mean_accuracy_anon"] <= 1
    rows = pd.read_parquet(store / "baseline_attributes" / "all.parquet")
    ours = rows[(rows["predictor"] == "attribute_classifier") & (rows["run"] == "blur")]
    assert len(ours) == len(CELEBA_ATTRIBUTES) and (ours["n"] == 6).all()  # the 6 test images
    points = pd.read_csv(store / "anonymization_report" / "figures" / "privacy_vs_utility.csv")
    assert points["label"].tolist() == ["default", "blur"] and points.columns[-1] == axis
    assert not points.isna().any().any()
    client = mlflow.client()
    [run] = client.search_runs([client.get_experiment_by_name("falco").experiment_id],
                               "tags.asset_key = 'baseline_metrics' and tags.method = 'blur'")
    assert run.data.metrics[axis] == pytest.approx(blur[axis])  # what `falco runs compare --plot` reads


def _materialize_classifier(tmp_path, input_dir: Path, data: dict, mlflow: MlflowResource,
                            device: str = "cpu") -> dg.DagsterInstance:
    """real_images and its pseudo-labels, then attribute_classifier (the first steps of the `evaluate` job), with one
    epoch at 32 px."""
    from orchestration.graph import build_definitions

    overrides = {"data.align": False, **{f"data.{k}": v for k, v in data.items()}, "attribute_classifier.epochs": 1,
                 "attribute_classifier.image_size": 32}
    defs = build_definitions(StorageResource(root=str(tmp_path / "store"), input_dir=str(input_dir)),
                             NetworksResource(device=device, overrides=overrides), mlflow)
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("observe_settings").execute_in_process(instance=instance).success  # as falco does
    chosen = dg.AssetSelection.assets("real_images", "attribute_pseudo_labels", "attribute_classifier")
    assert dg.materialize(list(defs.assets), selection=chosen, instance=instance, resources=defs.resources).success
    return instance


def test_lfw_trains_on_the_pseudo_labels_of_its_train_split(tmp_path, lfw_faces, mlflow_store):
    """The paper's LFW protocol: no attribute labels, so the classifier learns the predictors' pseudo-labels
    (before: skipped), on a split that keeps each person's images together."""
    for i, face in enumerate(lfw_faces[:24]):
        person = f"Person_{i // 2:02d}"  # 12 people, 2 images each
        path = tmp_path / "lfw" / person / f"{person}_{i % 2 + 1:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(path)
    instance = _materialize_classifier(tmp_path, tmp_path, {"dataset": "lfw"}, mlflow_store)
    meta = _metadata(instance, "attribute_classifier")
    assert meta["status"] == "trained" and meta["labels"] == "pseudo-labels"
    assert meta["num_attributes"] == 45  # Anycost's 40 and Talk-to-Edit's 5, each its own output
    stored = FalcoIOManager(root=str(tmp_path / "store"))._load(tmp_path / "store" / "attribute_classifier", "all")
    assert stored.metadata["labels"] == "pseudo-labels" and 0 < int(stored.metadata["num_train"]) < 24


def test_the_pseudo_label_split_keeps_people_together_and_the_datasets_own_split():
    from evaluation.attribute_classifier import PSEUDO_LABELS, labelled_attributes, training_frame

    people = [f"p{i // 3}" for i in range(300)]
    frame = pd.DataFrame({"image": [f"{p}/{i}.png" for i, p in enumerate(people)], "identity": people,
                          "split": ["train"] * 3 + [None] * 297})
    pseudo = pd.DataFrame({"image": frame["image"], "anycost/Smiling": [True, False] * 150,
                           "anycost/Smiling_prob": 0.5, "tte/Young": True})
    table, labels = training_frame(frame, pseudo)
    assert labels == PSEUDO_LABELS and labelled_attributes(table) == ["anycost/Smiling", "tte/Young"]
    assert table.groupby("identity")["split"].nunique().max() == 1  # a person's images share one split
    shares = table["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.1 and shares["val"] > 0.03 and shares["test"] > 0.03
    assert table.loc[:2, "split"].tolist() == ["train"] * 3  # the dataset's own split is kept
    assert training_frame(frame, pseudo)[0]["split"].tolist() == table["split"].tolist()  # the same every time


def test_data_with_neither_labels_nor_pseudo_labels_is_an_explicit_skip(lfw_faces):
    from evaluation.attribute_classifier import classifier_scores, skip_reason, skipped, training_frame

    frame = pd.DataFrame({"image": ["a.png"], "identity": ["A"]})
    table, _ = training_frame(frame, None)
    reason = skip_reason(table)
    assert reason.startswith("skipped: no CelebA attribute labels and no pseudo-labels")
    scores, note = classifier_scores(skipped(reason), frame, lfw_faces[:1], lfw_faces[:1], np.array([0]))
    assert scores is None and note == reason


def _labelled_folder(tmp_path: Path, lfw_faces: np.ndarray) -> dict:
    """8 faces with Smiling / Young labels in a CSV, 6 train and 2 val; the `real_images` config that reads them."""
    rows = []
    for i, face in enumerate(lfw_faces):
        (tmp_path / "faces").mkdir(exist_ok=True)
        Image.fromarray(face).save(tmp_path / "faces" / f"face_{i}.png")
        rows.append({"relpath": f"face_{i}.png", "split": "train" if i < 6 else "val", "Smiling": i % 2,
                     "Young": 1 - i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return {"dataset": "folder", "labels_csv": str(tmp_path / "labels.csv")}


def test_a_folder_with_a_labels_csv_trains_on_its_attributes(tmp_path, lfw_faces, mlflow_store):
    instance = _materialize_classifier(tmp_path, tmp_path / "faces", _labelled_folder(tmp_path, lfw_faces),
                                       mlflow_store)
    meta = _metadata(instance, "attribute_classifier")
    assert meta["status"] == "trained" and meta["num_attributes"] == 2
    assert (meta["num_train"], meta["num_val"]) == (6, 2)


@pytest.mark.gpu
def test_the_gpu_job_trains_on_cuda(tmp_path, lfw_faces, mlflow_store):
    instance = _materialize_classifier(tmp_path, tmp_path / "faces", _labelled_folder(tmp_path, lfw_faces),
                                       mlflow_store, device="cuda")
    meta = _metadata(instance, "attribute_classifier")
    assert meta["status"] == "trained" and meta["device"] == "cuda"


def test_classifier_is_a_gpu_step_of_the_evaluation_references_shared_by_every_variant():
    from orchestration.definitions import defs

    (spec,) = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and dg.AssetKey("attribute_classifier")
               in a.keys]
    assert spec.op.tags["falco/device"] == "gpu" and spec.group_names_by_key[spec.key] == "evaluation"
    assert spec.partitions_def is None  # trained once on the real images, whatever the variants
    assert dg.AssetKey("attribute_classifier") in \
        defs.resolve_job_def("evaluate_references").asset_layer.selected_asset_keys
    assert dg.AssetKey("evaluation_metrics") in defs.resolve_job_def("evaluate").asset_layer.selected_asset_keys
    for job in ("prepare", "anonymize", "evaluate_references", "evaluate", "evaluate_report"):  # one GPU pod each
        assert "nvidia.com/gpu" in defs.resolve_job_def(job).tags["dagster-k8s/config"], job


def test_classifier_settings_come_from_params_yaml_and_bad_ones_name_the_file(tmp_path):
    from evaluation.attribute_classifier import classifier_config

    def config(networks: NetworksResource):
        return classifier_config(networks.section("attribute_classifier"), str(networks.params_file))

    tiny = config(NetworksResource())
    assert (tiny.layers, tiny.width, tiny.epochs) == ((1, 1, 1, 1), 8, 5)
    full = config(NetworksResource(profile="ffhq1024", overrides={"attribute_classifier.epochs": 2}))
    assert (full.layers, full.image_size, full.epochs, full.lr) == ((3, 4, 6, 3), 128, 2, 1e-4)

    data = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    good = dict(data["attribute_classifier"])
    # YAML 1.1 reads `lr: 3e-3` as text: read as its number, as the method's settings are (it was a TypeError
    # traceback from `<=`); a misspelt `hflip: nope` was taken as true
    data["attribute_classifier"] = {**good, "lr": "3e-3", "epochs": "2"}
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(data))
    text = config(NetworksResource(profile="ffhq1024", params_path=str(tmp_path / "text.yaml")))
    assert (text.lr, text.epochs) == (0.003, 2)
    for bad, match in (({**good, "epoch": 3}, "unknown key.*epoch"), ({**good, "batch_size": 0}, "batch_size = 0"),
                       ({k: v for k, v in good.items() if k != "seed"}, "missing key.*seed"),
                       ({**good, "hflip": "nope"}, r"attribute_classifier.hflip = 'nope' is not a valid bool"),
                       ({**good, "lr": "fast"}, r"attribute_classifier.lr = 'fast' is not a valid float"),
                       ({**good, "layers": 3}, r"attribute_classifier.layers = 3 must be a list")):
        data["attribute_classifier"] = bad
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ParamsError, match=match) as error:
            config(NetworksResource(profile="ffhq1024", params_path=str(path)))  # no profile entry on top
        assert str(path) in str(error.value)


def test_weights_round_trip_through_the_io_manager_as_safetensors(tmp_path):
    manager = FalcoIOManager(root=str(tmp_path))
    value = Weights(arrays={"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(4, np.int64)},
                    metadata={"status": "trained", "attributes": '["Smiling"]'})
    out = dg.build_output_context(asset_key=dg.AssetKey("net"))
    manager.handle_output(out, value)
    assert [p.name for p in (tmp_path / "net").iterdir()] == ["all.safetensors"]
    loaded = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("net"), upstream_output=out))
    assert loaded.metadata == value.metadata and loaded.arrays.keys() == value.arrays.keys()
    for key in value.arrays:
        np.testing.assert_array_equal(loaded.arrays[key], value.arrays[key])
