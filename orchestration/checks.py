"""Asset checks: pairs cover every real image, latents are sane, and a blocking privacy check."""


import dagster as dg
import numpy as np
import pandas as pd

from orchestration.assets.anonymization import anonymized_images, anonymized_latents, pairs
from orchestration.io_manager import ImageSet
from orchestration.partitions import image_shards
from orchestration.resources import NetworksResource


def check_settings(networks: NetworksResource) -> dict:
    """params.yaml's `checks:` section, with the entry of the resource's profile applied."""
    return networks.section("checks")


@dg.asset_check(asset=pairs, additional_ins={"real_images": dg.AssetIn("real_images"), "fake_features": dg.AssetIn("fake_features")})
def pairs_cover_every_real(pairs: pd.DataFrame, real_images: ImageSet, fake_features: np.ndarray) -> dg.AssetCheckResult:
    """Every ok real image has exactly one row, and every paired fake exists in the pool."""
    expected = len(real_images.images)
    covered = sorted(pairs["row"].tolist()) == list(range(expected))
    in_pool = bool(((pairs["fake_index"] >= 0) & (pairs["fake_index"] < len(fake_features))).all())
    return dg.AssetCheckResult(
        passed=covered and in_pool,
        metadata={"real_images": expected, "pairs": len(pairs), "fakes_in_pool": in_pool},
    )


@dg.asset_check(
    asset=anonymized_latents,
    additional_ins={"real_inversions": dg.AssetIn("real_inversions")},
    partitions_def=image_shards,
)
def latents_finite_and_fixed_layers_untouched(
    anonymized_latents: dict, real_inversions: np.ndarray, networks: NetworksResource
) -> dg.AssetCheckResult:
    """The codes are finite and every W+ layer outside the trainable range equals the real image's inversion."""
    opt = networks.params().optimization
    ws, rows = anonymized_latents["ws"], anonymized_latents["row"]
    fixed = np.r_[0 : opt.layer_start, opt.layer_stop : ws.shape[1]]
    finite = bool(np.isfinite(ws).all())
    untouched = bool(np.array_equal(ws[:, fixed], real_inversions[rows][:, fixed]))
    return dg.AssetCheckResult(
        passed=finite and untouched,
        metadata={"finite": finite, "fixed_layers_untouched": untouched, "fixed_layers": str(fixed.tolist())},
    )


@dg.asset_check(
    asset=anonymized_images,
    blocking=True,
    additional_ins={"real_images": dg.AssetIn("real_images")},
    partitions_def=image_shards,
)
def privacy_source_match_share(
    anonymized_images: ImageSet, real_images: ImageSet, networks: NetworksResource
) -> dg.AssetCheckResult:
    """Blocking: the share of anonymized images that dlib's face recognizer (a real, trained network) still
    matches to their own source (distance < 0.6) must not exceed `checks.privacy_max_match_share`."""
    from anon_core.data.image_files import take
    from evaluation.recognizers import build_recognizer

    bound = float(check_settings(networks).get("privacy_max_match_share", 0.0))
    rows = anonymized_images.table["row"].to_numpy()
    dlib = build_recognizer("dlib")  # on dlib's own chip crop of the FFHQ-aligned faces
    sources = take(real_images.images, rows)  # lazy for images left on disk: embed reads both sets batch by batch
    similarity = dlib.paired_similarity(dlib.embed(anonymized_images.images), dlib.embed(sources))
    distances = dlib.to_score(similarity)
    matched = dlib.is_match(similarity)
    share = float(matched.mean()) if len(matched) else 0.0
    return dg.AssetCheckResult(
        passed=share <= bound,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "matched_share": share,
            "bound": bound,
            "threshold": "dlib descriptor distance < 0.6",
            "min_distance": float(distances.min()) if len(distances) else float("nan"),
            "mean_distance": float(distances.mean()) if len(distances) else float("nan"),
        },
    )


ALL_CHECKS = [pairs_cover_every_real, latents_finite_and_fixed_layers_untouched, privacy_source_match_share]
