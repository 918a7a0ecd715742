"""Group `settings`: observable source assets, one per set of inputs an asset reads from outside the graph.

Each observation reads its values (from params.yaml, its profile entry and the command line's overrides, or the
input folder's files) and reports a data version that hashes them. The assets that read them depend on them, so
Dagster's own versioning says what a change makes stale: a new margin makes one variant's anonymization stale, a new
pool size the fake pool (its features and pairs follow once it is re-made), new data `real_images` and what follows,
and nothing else. `falco pipeline` observes them first on every run; in the UI, "Observe sources" does the same.

| source | read by | values |
| --- | --- | --- |
| `input_images` | real_images | the input folder's files (relative path and sha256 of each) |
| `ingest_settings` | real_images, input_photos | profile (resolution), params.yaml `data:`, `pipeline.shard_size` |
| `fake_pool_settings` | fake_pool | profile, weights, seed, pool_size, truncation_psi |
| `inversion_settings` | real_inversions | profile, weights, inversion method (and its steps and lr) |
| `pairing_settings` | pairs | pairing_k, pairing (nearest, unique, identity) |
| `variant_settings` | anonymized_latents | per variant: the optimization settings it resolves to |
| `classifier_settings` | attribute_classifier | params.yaml `attribute_classifier:` |
| `evaluation_settings` | the real gallery, a variant's evaluation | the recognizers whose weights are present, the quality extractor (Inception where its weights are present, else dlib) |
| `baseline_settings` | baseline_metrics | the baselines (`evaluation.baselines`), the recognizers present |
| `report_settings` | anonymization_report | the sweep it compares, each variant's settings, `evaluation.show_real_faces` |
| `photo_settings` | anonymized_photos | profile, weights, params.yaml `photo:` |

Not versioned on purpose: the device and the `speed:` settings (batch size, bf16, compile), which change how fast
the same method runs, not what it computes (bf16 changes rounding: docs/speed.md).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.partitions import variants
from orchestration.resources import NetworksResource, StorageResource

GROUP = "settings"
# Observable source assets are a Dagster beta (pinned version); say so once here, not ten times on every command.
warnings.filterwarnings("ignore", message="Function `observable_source_asset` is currently in beta",
                        category=dg.BetaWarning)


def settings_version(values: Any) -> dg.DataVersion:
    """A stable hash of JSON-able values (keys sorted)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return dg.DataVersion(hashlib.sha256(text.encode()).hexdigest()[:24])


def _weights(networks: NetworksResource) -> dict[str, str]:
    from orchestration.tracking import weight_hashes

    return weight_hashes(networks)


def fake_pool_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    p = networks.params()
    return {"profile": networks.profile, "weights": _weights(networks), "seed": p.seed, "pool_size": p.pool_size,
            "truncation_psi": p.truncation_psi}


def ingest_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    from anon_core.hashing import sha256_file

    labels = networks.data()["labels_csv"]
    return {**image_settings(networks, storage), "labels_csv": str(labels) if labels else None,
            "labels_sha256": sha256_file(labels) if labels else None, "shard_size": networks.shard_size()}


def image_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    """What decides an ok input's image as the networks see it, besides the input file's bytes: the ingest settings
    without the labels and the shard size (the keys of `anon_core.reuse` for its inversion and its codes)."""
    from anon_core.profiles import get_profile

    data = {k: v for k, v in networks.data().items() if k != "labels_csv"}
    return {"profile": networks.profile, "resolution": get_profile(networks.profile).generator.resolution, **data}


FRESH_TAG = "falco/fresh"  # run tag: "true" where `falco pipeline --fresh` launched it; rows are computed anew


def reuses_rows(context: dg.AssetExecutionContext) -> bool:
    """Whether this run may take rows stored by earlier runs (`anon_core.reuse`): not under `--fresh` (or a run
    launched from the UI with the tag `falco/fresh: true`), which re-makes everything."""
    from dagster._core.errors import DagsterInvalidPropertyError

    try:
        tags = context.run.tags
    except DagsterInvalidPropertyError:  # an asset invoked directly (tests) has no run
        return True
    return tags.get(FRESH_TAG) != "true"


def reuse_context(context: dg.AssetExecutionContext, networks: NetworksResource, storage: StorageResource,
                  **settings: Any) -> dict[str, Any]:
    """The settings shared by every row of an asset that reuses rows across runs (`anon_core.reuse`): the asset, its
    code version and the method's (`METHOD_VERSION`, which `falco anonymize`'s keys hash too), how the images were
    read, and `settings` (what else decides its rows)."""
    from anon_core.reuse import METHOD_VERSION

    return {"asset": context.asset_key.to_user_string(), "method": METHOD_VERSION,
            "code_version": context.assets_def.code_versions_by_key.get(context.asset_key),
            "image": image_settings(networks, storage), **settings}


def inversion_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    inversion = networks.params().inversion
    values = {"profile": networks.profile, "weights": _weights(networks), "method": inversion.method}
    if inversion.method == "optimization":  # e4e reads neither
        values |= {"steps": inversion.steps, "lr": inversion.lr}
    return values


def pairing_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    p = networks.params()
    return {"pairing_k": p.pairing_k, "pairing": p.pairing}


def classifier_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    from evaluation.attribute_classifier import classifier_config
    from evaluation.attributes import config_dict

    return config_dict(classifier_config(networks.section("attribute_classifier"), str(networks.params_file)))


def evaluation_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    from evaluation.quality import resolve_extractor
    from evaluation.recognizers import available_recognizers

    return {"recognizers": available_recognizers(), "extractor": resolve_extractor("auto")[0]}


def baseline_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    from orchestration.section_checks import evaluation_section

    names = evaluation_section(networks.section("evaluation"), str(networks.params_file))["baselines"]
    return {"baselines": names, **evaluation_settings(networks, storage)}


def report_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    # Each variant's definition too: the report labels the variants with it.
    sweep = networks.sweep()
    return {"sweep": sweep, "definitions": {v: variant_settings(networks, v) for v in sweep},
            "show_real_faces": networks.flag("evaluation", "show_real_faces"),
            "privacy_max_match_share": networks.privacy_bound()}  # which variants it marks as failing the check


def photo_settings(networks: NetworksResource, storage: StorageResource) -> dict[str, Any]:
    return {"profile": networks.profile, "weights": _weights(networks), **networks.photo().to_dict()}


def variant_settings(networks: NetworksResource, variant: str) -> dict[str, Any]:
    """The optimization settings `variant` resolves to (params.yaml's section, its profile entry, the variant)."""
    from dataclasses import asdict

    return asdict(networks.params(variant).optimization)


def input_files(storage: StorageResource) -> list[tuple[str, str]]:
    """(relative path, sha256) of every file under the input folder, sorted."""
    from anon_core.data.scan import scan_folder

    return [(f.relpath, f.sha256 or "") for f in scan_folder(Path(storage.input_dir))]


def _shown(value: Any) -> str:
    """A setting's value as its observation's metadata shows it (and `check_observed` compares it)."""
    return json.dumps(value, default=str)


def _observable(name: str, read: Callable[[NetworksResource, StorageResource], dict[str, Any]]) -> dg.SourceAsset:
    @dg.observable_source_asset(name=name, group_name=GROUP, description=f"What its readers take from outside the "
                                f"graph ({read.__name__}); the data version hashes these values.")
    def observe(networks: NetworksResource, storage: StorageResource) -> dg.ObserveResult:
        values = read(networks, storage)
        return dg.ObserveResult(data_version=settings_version(values),
                                metadata={k: dg.MetadataValue.text(_shown(v)) for k, v in values.items()})

    return observe


SETTINGS_READERS = (ingest_settings, fake_pool_settings, inversion_settings, pairing_settings, classifier_settings,
                    evaluation_settings, baseline_settings, report_settings, photo_settings)
READERS = {read.__name__: read for read in SETTINGS_READERS}
SETTINGS = {name: _observable(name, read) for name, read in READERS.items()}


@dg.observable_source_asset(group_name=GROUP)
def input_images(storage: StorageResource) -> dg.ObserveResult:
    """The real images to anonymize: the data version hashes every file's relative path and sha256; the metadata
    also names the md5 that DVC recorded for the folder, when a `.dvc` file tracks it (`dvc add data`)."""
    from orchestration.data_version import files_version, find_dvc_out

    files = input_files(storage)
    dvc = find_dvc_out(Path(storage.input_dir))
    return dg.ObserveResult(
        data_version=dg.DataVersion(files_version(files)),
        metadata={"input_dir": dg.MetadataValue.path(storage.input_dir), "num_files": len(files),
                  "dvc_md5": dvc.md5 if dvc else "not tracked by DVC",
                  "dvc_file": str(dvc.dvc_file) if dvc else ""},
    )


@dg.observable_source_asset(name="variant_settings", group_name=GROUP, partitions_def=variants)
def observe_variant_settings(context, networks: NetworksResource) -> dg.DataVersionsByPartition:
    """Per variant (partition), the optimization settings it resolves to. A variant whose name cannot be resolved
    (added by hand in the UI, say) is left out and logged; materializing it then fails with the reason."""
    from anon_core.errors import ParamsError

    versions = {}
    for name in context.instance.get_dynamic_partitions(variants.name):
        try:
            versions[name] = settings_version(variant_settings(networks, name))
        except ParamsError as err:  # typically a variant of another params file, which stays in the instance
            context.log.warning(f"variant {name} is left out (it cannot run with these settings): {err}. An earlier "
                                "run or the UI added it: run it with the params file that defines it (--params FILE), "
                                f"or drop it by deleting the partition {name} of `variants` (Dagster UI: an asset's "
                                "Partitions tab, Delete partitions)")
    with warnings.catch_warnings():  # Dagster 1.13's (beta) way for a partitioned source to report versions
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.DataVersionsByPartition(versions)


ALL_SETTINGS = [input_images, *SETTINGS.values(), observe_variant_settings]
OBSERVED_TAG = "dagster/data_version"  # an observation's data version


def check_observed(context: dg.AssetExecutionContext, networks: NetworksResource,
                   shown_variants: Sequence[str] = ()) -> None:
    """FalcoError, before any work, when a settings source this step reads (not `input_images`, whose files are
    hashed by its observation alone) was not observed, or observed with other values than this run reads. Dagster
    records the latest observation as the materialization's input; a variant materialized from the UI before its
    settings were observed recorded none and was never stale again, and a run config overriding params.yaml (the
    Launchpad's `networks.config.overrides`) recorded its results as made from the observed settings. `shown_variants`:
    those whose settings the step logs or shows though it does not read `variant_settings` (an evaluation, the
    report): an unobserved edit of params.yaml leaves their images FRESH, and the step would log the edited values
    beside images made from the observed ones. `falco pipeline` and `falco stage` observe before every run; an asset
    invoked directly (tests) is not checked."""
    from dagster._core.errors import DagsterInvalidPropertyError

    from anon_core.errors import FalcoError
    from orchestration.partitions import split_key

    try:
        context.run
    except DagsterInvalidPropertyError:
        return
    sources = []  # (key, partition, the values this run reads, what to call it)
    for key in sorted(set().union(*context.assets_def.asset_deps.values()), key=lambda k: k.to_user_string()):
        name = key.to_user_string()
        if name == "variant_settings":
            variant, _ = split_key(context.partition_key, context.assets_def.partitions_def)
            shown_variants = [variant, *shown_variants]
        elif name in READERS:
            sources.append((key, None, READERS[name](networks, None), name))
    for variant in dict.fromkeys(shown_variants):
        sources.append((dg.AssetKey("variant_settings"), variant, variant_settings(networks, variant),
                        f"variant_settings [{variant}]"))
    for key, partition, values, what in sources:
        record = context.instance.get_latest_data_version_record(key, is_source=True, partition_key=partition)
        observation = record.asset_observation if record is not None else None
        observed = observation.tags.get(OBSERVED_TAG) if observation is not None else None
        if observed == settings_version(values).value:
            continue
        if observed is None:
            why = f"{what} has not been observed{' since the variant was added' if partition else ''}"
        else:
            recorded = {k: getattr(v, "value", None) for k, v in observation.metadata.items()}
            changed = [k for k, v in values.items() if k in recorded and recorded[k] != _shown(v)]
            if not changed and networks.overrides:  # a variant's observation keeps no values: name what is set
                changed = [f"this run's config sets {', '.join(sorted(networks.overrides))}"]
            why = (f"{what} was observed with other values than this run reads"
                   f"{' (' + ', '.join(changed) + ')' if changed else ''}: a run config that overrides params.yaml, or "
                   "params.yaml changed since")
        raise FalcoError(f"{why}; Dagster would record this run's result as made from the observed settings, and a "
                         "later change would not make it stale. Observe the sources first, with this run's config "
                         "(the observe_settings job, or Observe sources in the UI), then launch it again (falco "
                         "pipeline and falco stage observe them themselves)")
