"""Privacy of aligned mode, image by image: does dlib's recognizer still match each anonymized image to the aligned
crop of its own input?

The pipeline's blocking check (`orchestration.checks.privacy_source_match_share`) asks it of each shard;
`falco anonymize` asks it of its output folder, once every image is written, and writes the verdicts to
`face_privacy.csv` (photo mode's file of the same name has one row per face of a photo, `evaluation.photo_privacy`).
Both sides are FFHQ-aligned at the generator's resolution; dlib cuts its own chip out of each
(`evaluation.recognizers`), and a distance below 0.6 is its "same person".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anon_core.data.image_files import ImageFiles, take
from anon_core.prefetch import batch_slices
from anon_core.progress import progress_bar
from evaluation.image_sets import ImageSetLike
from evaluation.recognizers import Recognizer, build_recognizer

CHUNK = 256  # images per progress step (dlib embeds them in its own batches)
REWRITE = "run the same `falco anonymize` command again: it writes the image again from its stored code"


def aligned_face_privacy(real_images: ImageSetLike, output_dir: Path, rows: pd.DataFrame,
                         recognizer: Recognizer | None = None, show_progress: bool = False) -> pd.DataFrame:
    """One row per anonymized image of an aligned run: `input`, `output` (of `rows`, the run's ok rows in the order
    of `real_images`, their aligned crops), `dlib_distance` (the image written in `output_dir/images` vs its
    input's crop) and `matched` (distance < 0.6)."""
    table = rows[["input", "output"]].reset_index(drop=True)
    if len(table) != len(real_images):
        raise ValueError(f"{len(table)} rows for {len(real_images)} real images")
    if not len(table):
        return table.assign(dlib_distance=pd.Series(dtype=float), matched=pd.Series(dtype=bool))
    anonymized = ImageFiles([Path(output_dir) / "images" / name for name in table["output"]], real_images.shape[1],
                            when_changed=REWRITE)
    dlib = recognizer or build_recognizer("dlib")
    distances, matched = np.empty(len(table)), np.empty(len(table), bool)
    with progress_bar(None, desc="privacy check", unit="image", total=len(table), enable=show_progress) as bar:
        for part in batch_slices(len(table), CHUNK):
            distances[part], matched[part] = dlib.match_pairs(take(anonymized, part), take(real_images, part))
            bar.update(part.stop - part.start)
    return table.assign(dlib_distance=distances, matched=matched)
