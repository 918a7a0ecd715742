"""Asset checks: pairs cover every real image, latents are sane, and a blocking privacy check per variant and shard
(per image in aligned mode, per face in photo mode)."""

from collections.abc import Mapping

import dagster as dg
import numpy as np
import pandas as pd

from anon_core.artifacts import ImageSet
from orchestration.assets.anonymization import anonymized_images, anonymized_latents, pairs
from orchestration.assets.photos import anonymized_photos, photo_folder
from orchestration.partitions import context_shard, context_variant, variant_photo_shards, variant_shards
from orchestration.resources import NetworksResource, StorageResource
from orchestration.tracking import LAUNCHED_BY, MlflowResource

PRIVACY_CHECK = "privacy_source_match_share"
PHOTO_PRIVACY_CHECK = "privacy_face_match_share"


@dg.asset_check(asset=pairs, additional_ins={"real_images": dg.AssetIn("real_images"),
                                             "fake_features": dg.AssetIn("fake_features")})
def pairs_cover_every_real(pairs: pd.DataFrame, real_images: ImageSet, fake_features: np.ndarray) -> dg.AssetCheckResult:
    """Every ok real image has exactly one row, and every paired fake exists in the pool."""
    expected = len(real_images.images)
    covered = sorted(pairs["row"].tolist()) == list(range(expected))
    in_pool = bool(((pairs["fake_index"] >= 0) & (pairs["fake_index"] < len(fake_features))).all())
    return dg.AssetCheckResult(passed=covered and in_pool,
                               metadata={"real_images": expected, "pairs": len(pairs), "fakes_in_pool": in_pool})


@dg.asset_check(asset=anonymized_latents, additional_ins={"real_inversions": dg.AssetIn("real_inversions")},
                partitions_def=variant_shards)
def latents_finite_and_fixed_layers_untouched(
    context: dg.AssetCheckExecutionContext, anonymized_latents: Mapping, real_inversions: np.ndarray,
    networks: NetworksResource,
) -> dg.AssetCheckResult:
    """The codes are finite and every W+ layer outside the variant's trainable range equals the real image's
    inversion."""
    opt = networks.params(context_variant(context)).optimization
    ws, rows = anonymized_latents["ws"], np.asarray(anonymized_latents["row"])
    fixed = np.r_[0 : opt.layer_start, opt.layer_stop : ws.shape[1]]
    finite = bool(np.isfinite(ws).all())
    untouched = bool(np.array_equal(ws[:, fixed], real_inversions[rows][:, fixed]))
    return dg.AssetCheckResult(passed=finite and untouched, metadata={
        "variant": context_variant(context), "finite": finite, "fixed_layers_untouched": untouched,
        "fixed_layers": str(fixed.tolist())})


@dg.asset_check(name=PRIVACY_CHECK, asset=anonymized_images, blocking=True,
                additional_ins={"real_images": dg.AssetIn("real_images")}, partitions_def=variant_shards)
def privacy_source_match_share(
    context: dg.AssetCheckExecutionContext, anonymized_images: ImageSet, real_images: ImageSet,
    networks: NetworksResource, mlflow: MlflowResource,
) -> dg.AssetCheckResult:
    """Blocking: the share of a shard's anonymized images that dlib's face recognizer (a real, trained network)
    still matches to their own source (distance < 0.6) must not exceed `checks.privacy_max_match_share`; if it
    does, the shard's run fails and its variant is not evaluated."""
    from anon_core.data.image_files import take
    from evaluation.recognizers import build_recognizer
    from evaluation.report import fails_release

    bound = networks.privacy_bound()
    rows = anonymized_images.table["row"].to_numpy()
    dlib = build_recognizer("dlib")  # on dlib's own chip crop of the FFHQ-aligned faces
    sources = take(real_images.images, rows)  # lazy for images left on disk: embed reads both sets batch by batch
    distances, matched = dlib.match_pairs(anonymized_images.images, sources)
    share = float(matched.mean()) if len(matched) else 0.0
    failed = fails_release(share, bound)
    _failed_in_mlflow(context, mlflow, failed)
    return dg.AssetCheckResult(
        passed=not failed, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"variant": context_variant(context), "shard": context_shard(context), "matched_share": share,
                  "bound": bound, "threshold": "dlib descriptor distance < 0.6",
                  "min_distance": float(distances.min()) if len(distances) else float("nan"),
                  "mean_distance": float(distances.mean()) if len(distances) else float("nan")},
    )


@dg.asset_check(name=PHOTO_PRIVACY_CHECK, asset=anonymized_photos, blocking=True, partitions_def=variant_photo_shards)
def privacy_face_match_share(
    context: dg.AssetCheckExecutionContext, anonymized_photos: pd.DataFrame, storage: StorageResource,
    networks: NetworksResource, mlflow: MlflowResource,
) -> dg.AssetCheckResult:
    """Blocking, per face: dlib's descriptor of each face of the output photos, cut at the input's landmarks, vs the
    input's (evaluation.photo_privacy); the share matched (distance < 0.6) must not exceed
    `checks.privacy_max_match_share`. Writes `face_privacy.csv` beside the shard's manifest."""
    from evaluation.photo_privacy import (face_privacy, match_share, measured_distances, measured_faces,
                                          write_face_privacy)
    from evaluation.report import fails_release

    bound = networks.privacy_bound()
    folder = photo_folder(storage, context_variant(context), context_shard(context))
    privacy = face_privacy(storage.input_dir, folder)
    write_face_privacy(privacy, folder)
    share, distances = match_share(privacy), measured_distances(privacy)
    failed = fails_release(share, bound)
    _failed_in_mlflow(context, mlflow, failed)
    return dg.AssetCheckResult(
        passed=not failed, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"variant": context_variant(context), "shard": context_shard(context), "matched_share": share,
                  "bound": bound, "faces": len(privacy), "faces_measured": measured_faces(privacy),
                  "matched_faces": int(privacy["matched"].sum()),
                  "threshold": "dlib descriptor distance < 0.6, at the input's landmarks",
                  "min_distance": float(distances.min()) if len(distances) else float("nan")},
    )


def _failed_in_mlflow(context: dg.AssetCheckExecutionContext, mlflow: MlflowResource, failed: bool) -> None:
    """A blocking check that fails the run of a launch from the UI (not from falco's driver, which ends its runs
    itself) ends the run's MLflow run FAILED now: its asset's step had ended it FINISHED, and the run status sensor
    that corrects it runs only while the Dagster daemon does (hH: FINISHED for a failed run, the daemon stopped)."""
    if failed and LAUNCHED_BY not in context.run.tags:
        mlflow.end_dagster_run(context.run.run_id, "FAILED", context.log.warning)


ALL_CHECKS = [pairs_cover_every_real, latents_finite_and_fixed_layers_untouched, privacy_source_match_share,
              privacy_face_match_share]
