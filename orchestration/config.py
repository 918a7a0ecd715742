"""Run config of the assets. A field left at None takes its value from params.yaml (for the resource's profile),
so params.yaml stays the one source of defaults; a value set in the Dagster launchpad overrides it."""


import dagster as dg


class FakePoolConfig(dg.Config):
    pool_size: int | None = None  # fakes to sample (paper: 60,000)
    seed: int | None = None  # sample i uses seed + i
    truncation_psi: float | None = None  # paper: 0.7

    def overrides(self) -> dict:
        return {"pool_size": self.pool_size, "seed": self.seed, "truncation_psi": self.truncation_psi}


class RealImagesConfig(dg.Config):
    input_dir: str | None = None  # None: the storage resource's input_dir
    dataset: str = "auto"  # celebahq | lfw | folder | auto: the layout, and so the labels carried along
    labels_csv: str | None = None  # optional CSV of per-file identity / split / attributes
    align: bool | None = None  # FFHQ-align the largest face; None: on, except for CelebA-HQ (aligned already)
    align_detector: str = "mtcnn"  # landmarks for alignment: mtcnn or dlib
    shard_size: int | None = None  # images per partition of the anonymization assets; None: params.yaml `pipeline:`


class PairsConfig(dg.Config):
    pairing_k: int | None = None  # neighbours kept per real image; the nearest is used


class OptimizationConfig(dg.Config):
    steps: int | None = None
    lr: float | None = None
    margin: float | None = None  # m: 0 removes identity, -> 1 keeps it
    lambda_id: float | None = None
    lambda_attr: float | None = None
    # images optimized together: a number ("16") or "auto" (the largest batch that fits the GPU); Dagster's config
    # types have no int-or-string union, so it is text here and checked by anon_core.params like the CLI flag
    batch_size: str | None = None

    def overrides(self) -> dict:
        return {
            "batch_size": self.batch_size,
            **{f"optimization.{k}": getattr(self, k) for k in ("steps", "lr", "margin", "lambda_id", "lambda_attr")},
        }
