"""Group `evaluation`: what every variant is measured against (the real gallery's embeddings and features,
attribute pseudo-labels and the CelebA attribute classifier of the real images, the baselines), then per variant its metrics, per-image privacy and attribute
agreement, and one report that puts the variants and the baselines side by side."""

import contextlib
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from anon_core.artifacts import ImageSet, Weights
from anon_core.variants import DEFAULT_VARIANT, SHARED_SETTINGS
from orchestration.celery_queue import GPU_STEP as GPU
from orchestration.io_manager import REAL_FACES, verified_keys
from orchestration.metadata import table
from orchestration.partitions import BY_VARIANT, context_variant, variants
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import SHARDS_TAG, MlflowResource, delta_table

GROUP = "evaluation"
OUTPUTS_FOLDER = "evaluation_outputs"  # under the storage root: the evaluation networks' per-image outputs, kept by
# image key so an evaluation reads only the images it has not read before (evaluation.output_store); those of the
# real images, and of the baselines made from their pixels, in its `real/`: readable by their owner only, and only
# while the image is in the data


def output_store(context: dg.AssetExecutionContext, storage: StorageResource, real: bool = False):
    """The evaluation networks' outputs kept by image key: of the anonymized images and the fakes, or (`real`) of
    the real images and the baselines made from their pixels, private; `--fresh` reads every image again."""
    from evaluation.output_store import OutputStore

    from orchestration.assets.settings import reuses_rows

    root = Path(storage.root) / OUTPUTS_FOLDER
    return OutputStore(root / "real" if real else root, private=real, reuse=reuses_rows(context))


def _predictors(networks: NetworksResource):
    from evaluation.suite import build_attribute_predictors

    nets = networks.networks()
    return build_attribute_predictors(seeded=nets.weights == "seeded", device=nets.device)


def _readers(networks: NetworksResource) -> dict:
    """The networks that read the real gallery (`real_gallery`): recognizers, the quality extractor, the device."""
    from evaluation.quality import build_extractor
    from evaluation.recognizers import available_recognizers, build_recognizer

    device = networks.networks().device
    return {"recognizers": [build_recognizer(n, device=device) for n in available_recognizers()],
            "extractor": build_extractor("auto", device=device), "device": device}


def _suite(networks: NetworksResource, real_gallery: Mapping) -> dict:
    """The evaluation networks, and the keyword arguments of evaluation.suite.evaluate_runs they make, with the real
    gallery as `real_gallery` stored it (not read again)."""
    from evaluation.suite import SetOutputs

    return {**_readers(networks), "predictors": _predictors(networks),
            "real_outputs": SetOutputs.from_arrays(real_gallery)}


def _real_keys(real_images: ImageSet) -> list[str | None]:
    keys = verified_keys(real_images)
    return [None] * len(real_images.images) if keys is None else keys


def _read_real(context: dg.AssetExecutionContext, storage: StorageResource, real_images: ImageSet, **networks):
    """The real images read through the private store (`OutputStore.read` with `networks`), then every kept output of
    an image no longer in the data removed: (outputs, images read, outputs removed)."""
    keys, store = _real_keys(real_images), output_store(context, storage, real=True)
    outputs, read = store.read(real_images.images, keys, show_progress=context.log.info, desc="read the real images",
                               **networks)
    return outputs, read, store.keep_only_real(keys)


def _baseline_keys(names, real_images: ImageSet, pairs: pd.DataFrame, fake_pool: Mapping,
                   networks: NetworksResource) -> dict[str, list[str | None]]:
    """Each baseline's image keys (`evaluation.baselines.baseline_keys`): made from the real source of each pair, or
    (swap) from its fake, whose key is its code's bytes under the generator's weights."""
    from anon_core.reuse import row_keys
    from evaluation.baselines import BASELINES, baseline_keys
    from orchestration.tracking import weight_hashes

    real_keys = _real_keys(real_images)
    sources = [real_keys[row] for row in pairs["row"]]
    ws = np.asarray(fake_pool["w"])
    fakes = row_keys({"fake": "generated", "profile": networks.profile, "weights": weight_hashes(networks)},
                     [ws[i] for i in pairs["fake_index"]]).tolist()
    width = real_images.images.shape[2]
    return {name: baseline_keys(name, width, fakes if BASELINES[name].needs_fakes else sources) for name in names}


def identities_of(real_images: ImageSet) -> np.ndarray | None:
    """The identity of each real image the evaluation compares with (`labelled_or_own`), None without labels."""
    from evaluation.privacy import labelled_or_own

    named = real_images.named
    return labelled_or_own(named["identity"] if "identity" in named.columns else None, named["input"].tolist())


def _split_labels(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """attribute_pseudo_labels' columns `<predictor>/<attribute>` -> one table per predictor."""
    indexed = frame.set_index("image")
    names = sorted({c.split("/")[0] for c in indexed.columns})
    return {n: indexed[[c for c in indexed.columns if c.startswith(n + "/")]].rename(columns=lambda c: c.split("/", 1)[1])
            for n in names}


@dg.asset(group_name=GROUP, code_version="1", deps=["evaluation_settings"], op_tags=GPU,
          metadata={REAL_FACES: True})  # identity embeddings of real faces: stored readable by their owner only
def real_gallery(context: dg.AssetExecutionContext, real_images: ImageSet, storage: StorageResource,
                 networks: NetworksResource, mlflow: MlflowResource) -> dict:
    """The ok real images as the evaluation reads them, once for every variant's evaluation and the baselines (each
    of which reads only its own images then): every recognizer's embeddings, `embedding_<name>` [N_ok, D], and the
    quality extractor's features, `features` [N_ok, dim] with its name in `extractor`. New data reads only the
    images it adds (the others' outputs are kept by their key)."""
    with mlflow.asset_run(context, networks) as run:
        outputs, read, removed = _read_real(context, storage, real_images, **_readers(networks))
        run.log_metrics({"num_images": len(outputs.features)})
    context.add_output_metadata({**run.metadata, "num_images": len(outputs.features), "num_images_read": read,
                                 "num_outputs_removed": removed, "extractor": outputs.extractor,
                                 "recognizers": ", ".join(outputs.embeddings)})
    return outputs.to_arrays()


@dg.asset(group_name=GROUP, code_version="2", op_tags=GPU)
def attribute_pseudo_labels(context: dg.AssetExecutionContext, real_images: ImageSet, storage: StorageResource,
                            networks: NetworksResource, mlflow: MlflowResource) -> pd.DataFrame:
    """CelebA attribute labels of the real images from Anycost GAN's and Talk-to-Edit's predictors (the paper's
    protocol for LFW, which has no labels); `<predictor>/<attribute>` bool and `_prob` columns. New data labels only
    the images it adds."""
    with mlflow.asset_run(context, networks) as run:
        outputs, read, removed = _read_real(context, storage, real_images, predictors=_predictors(networks),
                                            ids=real_images.named["image"].tolist(), device=networks.networks().device)
        labels = outputs.labels
        frame = pd.concat(labels, axis=1)
        frame.columns = [f"{p}/{c}" for p, c in frame.columns]
        run.log_params({"predictors": list(labels)})
        run.log_metrics({"num_images": len(frame)})
    context.add_output_metadata({**run.metadata, "predictors": ", ".join(labels), "num_images": len(frame),
                                 "num_images_read": read, "num_outputs_removed": removed})
    return frame.rename_axis("image").reset_index()


@dg.asset(group_name=GROUP, code_version="3", deps=["classifier_settings"], op_tags=GPU)
def attribute_classifier(context: dg.AssetExecutionContext, real_images: ImageSet,
                         attribute_pseudo_labels: pd.DataFrame, networks: NetworksResource,
                         mlflow: MlflowResource) -> Weights:
    """A ResNet classifier of the CelebA attributes, trained from scratch on the real train split (params.yaml's
    `attribute_classifier:`), stored as safetensors with its config; per-attribute accuracy on the real val split in
    the metadata. Data without CelebA labels (LFW) trains it on the predictors' pseudo-labels instead (the paper's
    LFW protocol, `evaluation.attribute_classifier.training_frame`); data with neither gives a `skipped` value that
    says why."""
    from evaluation.attribute_classifier import (
        classifier_config,
        skip_reason,
        skipped,
        train_on_real,
        training_frame,
    )
    from evaluation.attributes import config_dict

    frame, labels = training_frame(real_images.named, attribute_pseudo_labels)
    reason = skip_reason(frame)
    if reason is not None:
        with mlflow.asset_run(context, networks, {"status": "skipped"}) as run:
            run.set_tag("skipped", reason)
        context.add_output_metadata({**run.metadata, "status": "skipped", "reason": reason})
        return skipped(reason)
    config = classifier_config(networks.section("attribute_classifier"), str(networks.params_file))
    with mlflow.asset_run(context, networks, {"attribute_classifier": config_dict(config), "labels": labels}) as run:
        losses: list[dict] = []

        def log(entry: dict | None) -> None:  # every step's loss, sent to MLflow 50 at a time (None: the rest)
            losses.extend([entry] if entry else [])
            if losses and (entry is None or len(losses) >= 50):
                run.log_histories({"train/loss": [e["loss"] for e in losses]}, first_step=losses[0]["step"])
                losses.clear()

        trained = train_on_real(frame, real_images.images, config, networks.networks().device, log, labels)
        log(None)
        run.log_metrics({**trained.summary, **{f"val_accuracy/{r.attribute}": r.accuracy
                                               for r in trained.val_accuracy.itertuples()}})
        run.log_table(trained.val_accuracy, "val_accuracy.csv")
    context.add_output_metadata({**run.metadata, "status": "trained", "labels": labels,
                                 "num_train": trained.num_train,
                                 "num_val": trained.num_val, "num_attributes": len(trained.val_accuracy),
                                 "steps": trained.steps, "device": str(networks.networks().device),
                                 **trained.summary, "val_accuracy": table(trained.val_accuracy)})
    return trained.weights


@dg.multi_asset(group_name=GROUP, deps=["baseline_settings"], op_tags=GPU,
                outs={"baseline_metrics": dg.AssetOut(code_version="2"),
                      "baseline_attributes": dg.AssetOut(code_version="2")})
def baselines(context: dg.AssetExecutionContext, real_images: ImageSet, pairs: pd.DataFrame, fake_pool: Mapping,
              attribute_pseudo_labels: pd.DataFrame, attribute_classifier: Weights, real_gallery: Mapping,
              storage: StorageResource, networks: NetworksResource, mlflow: MlflowResource
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The classic baselines (params.yaml `evaluation.baselines`: blur, pixelate, mask, swap with the paired fake)
    applied to every real image and run through the evaluation the variants get, once for all variants, the
    trained attribute classifier's agreement included: `baseline_metrics`, one row per baseline, and
    `baseline_attributes`, their per-attribute agreement (a `run` column names the baseline). Each baseline is its
    own MLflow run, `baseline_metrics <name>`. A baseline image made before (its key: the baseline, its parameters,
    its source's key) is not read again."""
    from anon_core.data.image_files import take
    from anon_core.fake_pool import generated_images
    from evaluation.attribute_classifier import add_classifier_scores, training_frame
    from evaluation.baselines import BASELINES, baseline_images, baseline_of
    from evaluation.suite import evaluate_runs, summary_table

    names = tuple(networks.setting("evaluation", "baselines"))
    keys = _baseline_keys(names, real_images, pairs, fake_pool, networks)
    # Beside the anonymized images, only the current fakes' outputs stay: those of fakes no longer paired go, and
    # those of blurred, pixelated or masked real faces (kept there by an earlier version) belong in the private store
    current = {key for name in names if BASELINES[name].needs_fakes for key in keys[name]}
    removed = output_store(context, storage).forget(lambda key: baseline_of(key) is not None and key not in current)
    if not names:
        with mlflow.asset_run(context, networks, {"baselines": []}, asset=dg.AssetKey("baseline_metrics")) as run:
            run.set_tag("skipped", "params.yaml evaluation.baselines is empty")
        context.add_output_metadata({**run.metadata, "baselines": "none (params.yaml evaluation.baselines is empty)"},
                                    output_name="baseline_metrics")
        return pd.DataFrame({"method": pd.Series([], dtype=str)}), pd.DataFrame({"run": pd.Series([], dtype=str)})
    with contextlib.ExitStack() as opened:  # one run per baseline, open while they are evaluated together
        # what decides the fakes (swap) and the pairs, as the variants' runs log it: runs of other pools or pairings
        # were told apart only by their start (hE)
        shared = {k: v for k, v in networks.params(DEFAULT_VARIANT).to_dict().items() if k in SHARED_SETTINGS}
        runs = {name: opened.enter_context(mlflow.asset_run(context, networks, {"baseline": name, **shared}, method=name,
                                                            asset=dg.AssetKey("baseline_metrics"))) for name in names}
        suite, nets = _suite(networks, real_gallery), networks.networks()
        fakes = generated_images(nets.generator, fake_pool["w"], pairs["fake_index"].to_numpy(), nets.device)
        results = evaluate_runs([], real_images.images, baselines=names, fakes=fakes, real_labels=_split_labels(
            attribute_pseudo_labels), gallery_identity=identities_of(real_images),
            baseline_index=pairs["row"].to_numpy(), baseline_names=pairs["image"].tolist(),
            store=output_store(context, storage), real_store=output_store(context, storage, real=True),
            baseline_keys=keys, show_progress=context.log.info, **suite)
        frame, _ = training_frame(real_images.named, attribute_pseudo_labels)  # the labels it was trained on
        rows = pairs["row"].to_numpy()
        for result in results:  # the classifier's axis of the scatter, as the variants get it
            made = baseline_images(result.method, take(real_images.images, rows),
                                   fakes=fakes if BASELINES[result.method].needs_fakes else None)
            add_classifier_scores(result, attribute_classifier, frame, real_images.images, made, rows, nets.device)
            runs[result.method].log_metrics(result.metrics)
    summary = summary_table(results).reset_index()
    attributes = [r.attributes.assign(run=r.method) for r in results if r.attributes is not None]
    attributes = pd.concat(attributes, ignore_index=True) if attributes else pd.DataFrame({"run": pd.Series([], dtype=str)})
    context.add_output_metadata({"baselines": ", ".join(names), "metrics": table(summary),
                                 "num_images_read": {r.method: r.images_read for r in results},
                                 "num_outputs_removed": removed}, output_name="baseline_metrics")
    context.add_output_metadata({"rows": len(attributes)}, output_name="baseline_attributes")
    return summary, attributes


def _worst_shard(per_image: pd.DataFrame, sizes: list[int]) -> float | None:
    """The largest share of a shard's images dlib verifies as their own source (the privacy check's share, per
    shard), from the variant's per-image table in shard order; None without dlib among the recognizers."""
    verified = per_image.get("dlib/verified")
    if verified is None or not len(verified):
        return None
    shard = np.repeat(np.arange(len(sizes)), sizes)
    return float(pd.Series(verified.to_numpy(dtype=float)).groupby(shard).mean().max())


def _check_anonymization_current(context: dg.AssetExecutionContext, storage: StorageResource,
                                 networks: NetworksResource, mlflow: MlflowResource, partitions: list[str],
                                 variant: str) -> None:
    """FalcoError, before any work, when a shard of the variant's anonymization is stale or unrecorded (its settings,
    or an upstream value such as the fake pool, changed since it was made): the evaluation would report images made
    otherwise than its settings say. A run from the UI meets it; `falco pipeline` and `falco stage` block such a
    variant before launching (driver). A run whose own steps re-made the anonymization finds it fresh."""
    from dagster._core.errors import DagsterInvalidPropertyError

    from anon_core.errors import FalcoError
    from orchestration.graph import build_definitions
    from orchestration.staleness import partition_statuses

    try:
        context.run
    except DagsterInvalidPropertyError:  # invoked directly (tests)
        return
    graph = build_definitions(storage, networks, mlflow).resolve_asset_graph()  # the whole graph, as the driver's
    keys = [dg.AssetKey("anonymized_latents"), dg.AssetKey("anonymized_images")]
    for partition, status in partition_statuses(context.instance, graph, keys, partitions, storage.root).items():
        behind = sorted(f"{key.to_user_string()} [{partition}] {value.lower()}" for key, value in status.items()
                        if value != "FRESH")
        if behind:
            raise FalcoError(f"{', '.join(behind)}: its settings or an upstream value changed since it was made (or "
                             f"files of it were deleted), so {variant}'s images are not what its settings make; "
                             f"materialize the anonymize job for "
                             f"{variant}'s shards first (or run `falco pipeline --variant {variant}`)")


@dg.multi_asset(
    group_name=GROUP, partitions_def=variants, op_tags=GPU, deps=["evaluation_settings"],
    ins={"anonymized_images": dg.AssetIn(partition_mapping=BY_VARIANT)},
    outs={"evaluation_metrics": dg.AssetOut(code_version="3"), "per_image_privacy": dg.AssetOut(code_version="1"),
          "attribute_agreement": dg.AssetOut(code_version="1")},
)
def variant_evaluation(
    context: dg.AssetExecutionContext, anonymized_images: dict, real_images: ImageSet,
    attribute_pseudo_labels: pd.DataFrame, attribute_classifier: Weights, real_gallery: Mapping,
    storage: StorageResource, networks: NetworksResource, mlflow: MlflowResource,
):
    """One variant's whole anonymized set against the real gallery: `evaluation_metrics` (one row: privacy per
    recognizer, detection, attribute agreement, quality), `per_image_privacy` (every image's similarity to its
    source, rank and pass/fail) and `attribute_agreement` (per predictor and attribute, with the CelebA attribute
    classifier's accuracy on the real and the anonymized test split when it was trained)."""
    from evaluation.attribute_classifier import add_classifier_scores, training_frame
    from evaluation.image_sets import concatenate
    from evaluation.suite import AnonymizedSet, evaluate_runs, summary_table
    from evaluation.report import WORST_SHARD_CHECK

    variant = context_variant(context)
    _check_anonymization_current(context, storage, networks, mlflow, sorted(anonymized_images), variant)
    with mlflow.asset_run(context, networks, networks.params(variant), asset=dg.AssetKey("evaluation_metrics"),
                          shown_variants=[variant]) as run:
        shards = [anonymized_images[k] for k in sorted(anonymized_images)]
        anon = pd.concat([s.table for s in shards], ignore_index=True)
        images = concatenate([s.images for s in shards])  # left on disk, read batch by batch
        rows = anon["row"].to_numpy()
        keys = [verified_keys(s) for s in shards]
        run_set = AnonymizedSet(variant, images, rows, anon["image"].tolist(),
                                None if None in keys else [key for part in keys for key in part])
        [result] = evaluate_runs([run_set], real_images.images, real_labels=_split_labels(attribute_pseudo_labels),
                                 gallery_identity=identities_of(real_images), store=output_store(context, storage),
                                 show_progress=context.log.info, **_suite(networks, real_gallery))
        frame, _ = training_frame(real_images.named, attribute_pseudo_labels)  # the labels it was trained on
        classifier = add_classifier_scores(result, attribute_classifier, frame, real_images.images, images, rows,
                                           networks.networks().device)
        result.metrics["num_images"] = len(anon)
        worst = _worst_shard(result.per_image, [len(s.table) for s in shards])
        if worst is not None:  # the release rule judges each shard, as the blocking check does (report.WORST_SHARD_CHECK)
            result.metrics[WORST_SHARD_CHECK] = worst
        summary = summary_table([result]).reset_index()
        run.set_tag(SHARDS_TAG, str(len(shards)))  # which shards' losses `falco runs compare` reads (shard-0..N-1)
        run.log_metrics(result.metrics)
        run.log_table(summary, "metrics.csv")
        run.log_per_image_table(result.per_image, "per_image.csv")
        previous = mlflow.previous_metrics(run, "evaluation_metrics", variant)
    context.add_output_metadata({**run.metadata, "variant": variant, "num_images": len(anon),
                                 "num_images_read": result.images_read,
                                 "failed_images": int((~result.per_image["passed_all"]).sum()),
                                 "attribute_classifier": classifier, "change_vs_previous_run":
                                     table(delta_table(previous, result.metrics)) if previous is not None else
                                     dg.MetadataValue.text(f"first evaluation of {variant} in this experiment"),
                                 **{k: float(v) for k, v in result.metrics.items()}}, output_name="evaluation_metrics")
    return summary, result.per_image, result.attributes if result.attributes is not None else pd.DataFrame()
