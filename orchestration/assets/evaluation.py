"""Group `evaluation`: attribute pseudo-labels of the real images, the metrics of FALCO and the baselines over the
whole anonymized set, and the report."""

import io
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from orchestration.io_manager import ImageSet, Weights
from orchestration.metadata import png_markdown, table
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import MlflowResource, delta_table, flatten

GROUP = "evaluation"


class EvaluationConfig(dg.Config):
    baselines: list[str] = ["blur", "pixelate", "mask", "swap"]  # run through the same evaluation as FALCO
    show_real_faces: bool = False  # the report's example grid shows real faces only when true


def _predictors(networks: NetworksResource):
    from evaluation.suite import build_attribute_predictors

    nets = networks.networks()
    return build_attribute_predictors(seeded=nets.weights == "seeded", device=nets.device)


@dg.asset(group_name=GROUP, code_version="1", op_tags={"falco/device": "gpu"})
def attribute_pseudo_labels(
    context: dg.AssetExecutionContext, real_images: ImageSet, networks: NetworksResource
) -> pd.DataFrame:
    """CelebA attribute labels of the real images from Anycost GAN's and Talk-to-Edit's predictors (the paper's
    protocol for LFW, which has no labels); `<predictor>/<attribute>` bool and `_prob` columns."""
    from evaluation.suite import real_pseudo_labels

    ids = real_images.named["image"].tolist()
    labels = real_pseudo_labels(real_images.images, _predictors(networks), ids, device=networks.networks().device)
    frame = pd.concat({name: df for name, df in labels.items()}, axis=1)
    frame.columns = [f"{p}/{c}" for p, c in frame.columns]
    frame = frame.rename_axis("image").reset_index()
    context.add_output_metadata({"predictors": ", ".join(labels), "num_images": len(frame)})
    return frame


def _split_labels(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    indexed = frame.set_index("image")
    names = sorted({c.split("/")[0] for c in indexed.columns})
    return {n: indexed[[c for c in indexed.columns if c.startswith(n + "/")]].rename(columns=lambda c: c.split("/", 1)[1])
            for n in names}


@dg.asset(group_name=GROUP, code_version="2", op_tags={"falco/device": "gpu"})
def evaluation_metrics(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    anonymized_images: dict,
    real_images: ImageSet,
    fake_pool: dict,
    attribute_pseudo_labels: pd.DataFrame,
    attribute_classifier: Weights,
    storage: StorageResource,
    networks: NetworksResource,
    mlflow: MlflowResource,
) -> pd.DataFrame:
    """Privacy (detection, re-identification per recognizer), attribute agreement and quality of FALCO and of
    the baselines, one row per method. The per-image privacy table goes to `evaluation_metrics/per_image.parquet`
    and FALCO's per-attribute agreement (with the attribute classifier's accuracy on the real and the anonymized
    test split, when it was trained) to `evaluation_metrics/attributes.parquet`."""
    from anon_core.data.image_io import write_bytes_atomic
    from evaluation.image_sets import concatenate, generated_images
    from evaluation.quality import build_extractor
    from evaluation.recognizers import available_recognizers, build_recognizer
    from evaluation.suite import evaluate_with_baselines, summary_table
    from orchestration.assets.attribute_classifier import add_classifier_metrics_

    shards = [anonymized_images[k] for k in sorted(anonymized_images)]
    anon_table = pd.concat([s.table for s in shards], ignore_index=True)
    anon = concatenate([s.images for s in shards])  # images stay on disk, read batch by batch
    rows = anon_table["row"].to_numpy()
    nets = networks.networks()
    # the paired fakes (for "swap"), generated batch by batch as they are read
    fakes = generated_images(nets.generator, fake_pool["w"], anon_table["fake_index"].to_numpy(), nets.device)
    real = real_images.images
    identity = real_images.named["identity"].to_numpy() if "identity" in real_images.table else None
    recognizers = [build_recognizer(n, device=nets.device) for n in available_recognizers()]
    context.log.info(f"evaluating {len(anon)} images with {[r.name for r in recognizers]} and {config.baselines}")
    results = evaluate_with_baselines(
        anon, real, fakes, rows, recognizers, build_extractor("auto", device=nets.device),
        baselines=tuple(config.baselines), gallery_identity=identity, predictors=_predictors(networks),
        real_labels=_split_labels(attribute_pseudo_labels), names=anon_table["image"].tolist(), device=nets.device,
    )
    classifier = add_classifier_metrics_(results[0], attribute_classifier, real_images, anon, rows, nets.device)
    summary = summary_table(results)
    falco = results[0]
    base = storage.path("evaluation_metrics")
    for name, frame in (("per_image", falco.per_image), ("attributes", falco.attributes)):
        if frame is not None:
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            write_bytes_atomic(base / f"{name}.parquet", buf.getvalue())
    final = {k: float(v) for k, v in falco.metrics.items() if isinstance(v, (int, float, np.number))}
    # The optimization settings are those of the shards' runs (their run config may override params.yaml).
    params = {**flatten(networks.params().to_dict()),
              **mlflow.upstream_params(context, "anonymized_latents", sorted(anonymized_images))}
    with mlflow.asset_run(context, networks, params) as run:
        run.log_metrics(final)
        run.log_table(summary.reset_index(), "metrics.csv")
        change = delta_table(mlflow.previous_metrics(run, "evaluation_metrics"), final)
    context.add_output_metadata(
        {**run.metadata, "change_vs_previous_run": table(change),
         "methods": table(summary.reset_index()[["method", *[c for c in summary.columns if c.endswith(("top1_rate", "/rate", "mean_agreement"))]]]),
         "failed_images": int((~falco.per_image["passed_all"]).sum()),
         "recognizers": ", ".join(r.name for r in recognizers), "attribute_classifier": classifier,
         "feature_extractor": str(falco.quality.get("feature_extractor")),
         **{k: float(v) for k, v in falco.metrics.items()}}
    )
    return summary.reset_index()


@dg.asset(group_name=GROUP, code_version="2")
def anonymization_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    evaluation_metrics: pd.DataFrame,
    anonymized_images: dict,
    real_images: ImageSet,
    fake_pool: dict,
    storage: StorageResource,
    networks: NetworksResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Markdown and HTML report with the metric tables, a privacy-vs-utility scatter of FALCO and the baselines,
    one over this and the earlier evaluation runs tracked in MLflow (labelled by the parameters that differ),
    per-attribute bars and an example grid, in `anonymization_report/`."""
    from anon_core.fake_pool import generate
    from evaluation.report import write_report
    from evaluation.runs import run_labels
    from orchestration.cli_runs import find_evaluation_runs

    base = storage.path("evaluation_metrics")
    per_image = pd.read_parquet(base / "per_image.parquet")
    attributes = pd.read_parquet(base / "attributes.parquet") if (base / "attributes.parquet").exists() else None
    first = anonymized_images[sorted(anonymized_images)[0]]
    shown = slice(0, min(8, len(first.images)))
    nets = networks.networks()
    fakes = generate(nets.generator, fake_pool["w"][first.table["fake_index"].to_numpy()[shown]], device=nets.device)
    examples, titles = [fakes, first.images[shown]], ["fake neighbour", "anonymized"]
    if config.show_real_faces:
        examples.insert(0, real_images.images[first.table["row"].to_numpy()[shown]])
        titles.insert(0, "real")
    params = networks.params()
    tracked = find_evaluation_runs(mlflow.uri(), mlflow.experiment)[-12:]  # the latest 12, this run's included
    labels = run_labels([r.data.params for r in tracked],
                        [f"run {r.data.tags.get('dagster_run_id', r.info.run_id)[:8]}" for r in tracked])
    runs = pd.DataFrame([r.data.metrics for r in tracked], index=[
        f"{label} (this run)" if r.data.tags.get("dagster_run_id") == context.run.run_id else label
        for label, r in zip(labels, tracked)]) if tracked else None
    paths = write_report(
        storage.path("anonymization_report"), evaluation_metrics.set_index("method"), per_image, attributes,
        examples, titles,
        {"profile": params.profile, "images": str(len(per_image)), "dagster run": context.run.run_id,
         "optimization settings": "see the anonymized_latents metadata of this run's shards",
         "runs compared": f"{len(tracked)} latest evaluation_metrics runs of MLflow experiment {mlflow.experiment!r}"},
        runs=runs,
    )
    scatter, over_runs = paths.get("privacy_vs_utility.png"), paths.get("privacy_vs_utility_runs.png")
    with mlflow.asset_run(context, networks) as run:
        for path in (Path(p) for p in paths.values()):  # the report embeds the example grid: real faces if shown
            run.log_image(path.read_bytes(), f"report/{path.name}", real_faces=config.show_real_faces)
    return dg.MaterializeResult(
        metadata={**run.metadata,
            "report": dg.MetadataValue.path(str(paths["markdown"])),
            "html": dg.MetadataValue.path(str(paths["html"])),
            **({"privacy_vs_utility": png_markdown(Path(scatter).read_bytes(), "privacy vs utility")} if scatter else {}),
            **({"privacy_vs_utility_runs": png_markdown(Path(over_runs).read_bytes(), "privacy vs utility over runs")}
               if over_runs else {}),
        }
    )
