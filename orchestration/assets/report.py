"""The report asset (group `evaluation`): the variants of the sweep and the baselines side by side."""

from collections.abc import Mapping

import dagster as dg
import pandas as pd

from anon_core.artifacts import ImageSet
from anon_core.variants import SHARED_SETTINGS
from orchestration.celery_queue import GPU_STEP as GPU
from orchestration.io_manager import ALLOW_MISSING, STORED, claim, recorded_keys, stored_files
from orchestration.metadata import png_markdown
from orchestration.partitions import split_key, variant_shards
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import MlflowResource

EVERY_STORED = dg.AssetIn(metadata={ALLOW_MISSING: True})  # every variant evaluated so far; the sweep picks


def _by_variant(values: dict) -> dict[str, list]:
    """{"shard|variant" partition key: value} -> {variant: [values in shard order]}."""
    grouped: dict[str, list] = {}
    for key in sorted(values):
        variant, _ = split_key(key, variant_shards)
        grouped.setdefault(variant, []).append(values[key])
    return grouped


def _sweep_results(networks: NetworksResource, metrics: dict, per_image: dict, attributes: dict, images: dict,
                   latents: dict) -> dict:
    """{variant of the sweep: evaluation.report.VariantResults} from the stored per-variant values."""
    from anon_core.errors import FalcoError
    from anon_core.loss_curves import mean_losses
    from anon_core.optimize import LOSS_NAMES
    from evaluation.image_sets import concatenate
    from evaluation.report import VariantResults
    from evaluation.suite import AnonymizedSet

    sweep, images, latents = networks.sweep(), _by_variant(images), _by_variant(latents)
    missing = [v for v in sweep if v not in metrics or v not in images]
    if missing:
        raise FalcoError(f"variant(s) {', '.join(missing)} of the sweep have no evaluation yet: materialize "
                         "evaluation_metrics for them first (`falco pipeline --variant NAME`)")
    results = {}
    for v in sweep:
        table = pd.concat([s.table for s in images[v]], ignore_index=True)
        anonymized = AnonymizedSet(v, concatenate([s.images for s in images[v]]), table["row"].to_numpy(),
                                   table["image"].tolist())
        losses = mean_losses([{n: shard[f"loss_{n}"] for n in LOSS_NAMES} for shard in latents[v]],
                             networks.params(v).optimization.steps)
        results[v] = VariantResults(metrics[v], per_image[v], attributes[v], anonymized, losses,
                                    _codes_digest(latents[v]))
    return results


def _codes_digest(shards: list) -> str:
    """A digest of a variant's codes by real row, however its shards hold them (their `ws` and `row`): each row's
    codes hashed as its shard is read, then the rows' digests in row order."""
    import hashlib

    import numpy as np

    digests: dict[int, bytes] = {}
    for shard in shards:
        ws = np.asarray(shard["ws"])
        for row, codes in zip(np.asarray(shard["row"]).tolist(), ws):
            digests[int(row)] = hashlib.sha256(np.ascontiguousarray(codes).tobytes()).digest()
    whole = hashlib.sha256()
    for row in sorted(digests):
        whole.update(row.to_bytes(8, "little", signed=True) + digests[row])
    return whole.hexdigest()


def _source_identities(identity, variants: Mapping) -> list | None:
    """The identity of the source of each image of the first variant (None without identity labels)."""
    if identity is None or not variants:
        return None
    return list(identity[next(iter(variants.values())).images.source_index])


def _settings_lines(networks: NetworksResource, variants: list[str], bound: float) -> dict[str, str]:
    """The report's lines on what made it: the params file, the shared settings, the release bound, the labels CSV
    (with its sha256), and each variant's full optimization settings (what it sets beside the section's, then every value it ran with)."""
    shared = networks.params(variants[0]).to_dict() if variants else {}
    lines = {"params file": str(networks.params_file),
             "shared settings": ", ".join(f"{k} {shared[k]}" for k in SHARED_SETTINGS if k in shared),
             "privacy bound": f"checks.privacy_max_match_share = {bound:g}"}
    from evaluation.report import labels_note

    labels = networks.data().get("labels_csv")
    if labels:  # the identities the pairing and the pseudonym figures used (MLflow's runs tag its sha256 too)
        lines["labels"] = labels_note(labels)
    for v in variants:
        overrides = networks.variant_overrides(v)
        optimization = networks.params(v).to_dict()["optimization"]
        values = ", ".join(f"{k} {value}" for k, value in optimization.items())
        lines[f"variant {v}"] = f"{overrides or 'the optimization section as it is'}: {values}"
    return lines


@dg.asset(group_name="evaluation", code_version="4", deps=["report_settings"], op_tags=GPU,  # generates the fakes
          ins={name: EVERY_STORED for name in ("evaluation_metrics", "per_image_privacy", "attribute_agreement",
                                               "anonymized_images", "anonymized_latents")})
def anonymization_report(
    context: dg.AssetExecutionContext, evaluation_metrics: dict, per_image_privacy: dict, attribute_agreement: dict,
    anonymized_images: dict, anonymized_latents: dict, baseline_metrics: pd.DataFrame,
    baseline_attributes: pd.DataFrame, real_images: ImageSet,
    pairs: pd.DataFrame, fake_pool: Mapping, storage: StorageResource, networks: NetworksResource, mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Markdown and HTML report of the sweep's variants (params.yaml `sweep:`, or the command line's) and the
    baselines: one summary row each, a privacy-vs-utility scatter, per-attribute bars, an example grid (fake
    neighbour, then each variant's image of the same faces), plus `metrics.json` and `losses/<variant>.csv` for DVC,
    in `anonymization_report/`."""
    from anon_core.fake_pool import generate
    from evaluation.baselines import baseline_of
    from evaluation.privacy import rivals
    from evaluation.report import (divergence_banners, gallery_banners, privacy_banners, pseudonym_banners,
                                   same_codes_banners, seeded_banners, write_variant_report)
    from orchestration.assets.evaluation import identities_of, output_store
    from orchestration.tracking import flatten

    variants = _sweep_results(networks, evaluation_metrics, per_image_privacy, attribute_agreement, anonymized_images,
                              anonymized_latents)
    bound = networks.privacy_bound()  # logged: `falco runs compare` judges the evaluations by the report's bound
    with mlflow.asset_run(context, networks, {"sweep": list(variants),
                                              "checks": {"privacy_max_match_share": bound}}) as run:
        claim(context, storage.root)  # its files are rewritten from here on
        nets, show_real = networks.networks(), networks.flag("evaluation", "show_real_faces")
        fake_index = pairs.set_index("row")["fake_index"]
        settings = pd.DataFrame({v: flatten(networks.params(v).to_dict()) for v in variants}).T
        settings = settings.loc[:, settings.nunique() > 1]  # what tells the variants apart
        settings.index.name = "variant"
        metrics = [c for v in variants.values() for c in v.summary.columns]
        paths = write_variant_report(
            storage.asset_dir("anonymization_report"), variants, baseline_metrics,
            lambda rows: generate(nets.generator, fake_pool["w"][fake_index.loc[rows].to_numpy()], device=nets.device),
            {"profile": f"{networks.profile} ({nets.generator.config.resolution} px, {nets.weights} weights)",
             "variants": ", ".join(variants), "baselines": ", ".join(baseline_metrics["method"]) or "none",
             "real images": f"{len(real_images.named)} ({networks.data()['dataset']} layout)",
             **_settings_lines(networks, list(variants), bound),
             "dagster run": context.run.run_id},
            real_of=(lambda rows: real_images.images[rows]) if show_real else None,
            baseline_attributes=baseline_attributes, settings=settings,
            banners=[*privacy_banners(variants, bound),
                     *divergence_banners(variants, {v: networks.params(v).optimization.lr for v in variants}),
                     *same_codes_banners(variants),
                     *gallery_banners(rivals(identities_of(real_images), len(real_images.named))),
                     *pseudonym_banners(_source_identities(identities_of(real_images), variants)),
                     *seeded_banners(nets.weights == "seeded", metrics, nets.generator.config.resolution)])
        for name in ("markdown", "html", "metrics_json", "privacy_vs_utility.png"):
            if name in paths:  # the report embeds the example grid, with real faces if shown
                run.log_image(paths[name].read_bytes(), f"report/{paths[name].name}", real_faces=show_real)
        stored_files(context, storage.root, paths.values())
    # what the evaluation networks made of anonymized images no variant on disk holds any more (inputs removed, codes
    # made again) is not kept: the store holds the images of the variants' folders and the current fakes
    held = recorded_keys(storage.asset_dir("anonymized_images"))
    removed = output_store(context, storage).forget(lambda key: baseline_of(key) is None and key not in held)
    scatter = paths.get("privacy_vs_utility.png")
    return dg.MaterializeResult(metadata={
        **run.metadata, "variants": ", ".join(variants), "report": dg.MetadataValue.path(str(paths["markdown"])),
        STORED: dg.MetadataValue.path(str(storage.asset_dir("anonymization_report"))),
        "num_outputs_removed": removed,
        "html": dg.MetadataValue.path(str(paths["html"])),
        **({"privacy_vs_utility": png_markdown(scatter.read_bytes(), "privacy vs utility")} if scatter else {}),
    })
