"""Privacy metrics and the recognizer table: hand-made rankings, real dlib/MTCNN on real faces, loaders.

Real faces: the sample set (anon_core.data.sample) at 128 px: skimage's astronaut (Eileen Collins) and the first
LFW faces of skimage's lfw_subset (25 px greyscale, upscaled). The LFW faces carry no identity labels, and at 25 px
dlib cannot tell all of them apart (the closest pair of 12 is 0.52 apart), so the "different people do not match"
check is the astronaut against each LFW face (seen: distances 0.66 .. 0.81 at 12 faces).
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from anon_core.errors import FalcoError, MissingWeightsError
from evaluation.baselines import apply_baseline
from evaluation.privacy import (
    DLIB_UPSAMPLE_BELOW,
    combine_tables,
    detect_faces,
    evaluate_reidentification,
    first_match_ranks,
    reidentification_table,
    summarize_reidentification,
)
from evaluation.recognizers import (
    FACE_CROPS,
    RECOGNIZERS,
    Recognizer,
    available_recognizers,
    build_recognizer,
    crop_faces,
    to_unit_range,
)

NUM_LFW = 6


@pytest.fixture(scope="module")
def sample_faces(tmp_path_factory) -> np.ndarray:
    """uint8 [1 + NUM_LFW, 128, 128, 3]: astronaut first, then LFW faces."""
    from anon_core.data.image_io import load_rgb
    from anon_core.data.sample import build_sample_dataset

    out = tmp_path_factory.mktemp("sample")
    build_sample_dataset(out, size=128, num_lfw=NUM_LFW)
    paths = [out / "images" / "astronaut.png"] + sorted((out / "images" / "lfw").glob("*.png"))
    return np.stack([load_rgb(p) for p in paths])


@pytest.fixture(scope="module")
def dlib_rec() -> Recognizer:
    return build_recognizer("dlib", crop="full")  # the sample faces are tight crops, not FFHQ-aligned


# ---------------------------------------------------------------------------------------- ranking logic
IDS = np.array(["A", "A", "B", "C", "C"])  # gallery identities: LFW semantics, several images per person
SIM = np.array(
    [
        [0.20, 0.90, 0.50, 0.95, 0.10],  # source 0 (A): its other image (0.90) is beaten only by C (0.95)
        [0.10, 0.10, 0.80, 0.30, 0.80],  # source 2 (B): ties with C at 0.80 -> the attacker wins, rank 1
        [0.90, 0.80, 0.70, 0.60, 0.30],  # source 4 (C): best C is 0.60, beaten by 3 others -> rank 4
    ]
)
SRC = np.array([0, 2, 4])


def test_ranks_with_identity_labels():
    ranks, best = first_match_ranks(SIM, SRC, IDS)
    assert ranks.tolist() == [2, 1, 4]
    assert best.tolist() == [0.90, 0.80, 0.60]


def test_ranks_without_labels_use_the_source_image_itself():
    ranks, best = first_match_ranks(SIM, SRC)
    assert ranks.tolist() == [4, 1, 5]  # only the source counts: 0.20 is beaten by 0.90, 0.50, 0.95
    assert best.tolist() == [0.20, 0.80, 0.30]


def test_table_topk_verification_and_pass():
    table = reidentification_table(SIM, SRC, threshold=0.30, inclusive=True, gallery_identity=IDS)
    assert table["identity"].tolist() == ["A", "B", "C"]
    assert table["similarity_to_source"].tolist() == [0.20, 0.80, 0.30]
    assert table["top1"].tolist() == [False, True, False]
    assert table["top5"].tolist() == [True, True, True]
    assert table["verified"].tolist() == [False, True, True]  # 0.30 >= 0.30 (inclusive)
    assert table["passed"].tolist() == [True, False, False]
    strict = reidentification_table(SIM, SRC, threshold=0.30, inclusive=False, gallery_identity=IDS)
    assert strict["verified"].tolist() == [False, True, False]
    assert strict["passed"].tolist() == [True, False, True]


def test_a_duplicated_file_ties_with_its_copy_and_the_tie_goes_to_the_attacker():
    """Two byte-identical files, each its own identity: the anonymized copy of the second was 4e-16 less similar to
    its own source than to the first (the matrix product's rounding, as `falco evaluate` measured it), so it ranked 2
    and counted as passed, where a tie is the attacker's."""
    sim = np.array([[-0.7254852003643218, -0.7254852003643222]])  # to the first file, to its own source
    table = reidentification_table(sim, np.array([1]), threshold=-0.6, inclusive=False)
    assert table["rank"].tolist() == [1] and table["top1"].tolist() == [True]
    assert first_match_ranks(np.array([[-0.72, -0.7254]]), np.array([1]))[0].tolist() == [2]  # a real difference


def test_rank_six_is_outside_top5():
    sim = np.array([[0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    table = reidentification_table(sim, np.array([0]), threshold=0.5, inclusive=True)
    assert table["rank"].tolist() == [7] and not table["top5"][0] and table["passed"][0]


def test_summary_rates_and_fixed_histogram():
    table = reidentification_table(SIM, SRC, threshold=0.30, inclusive=True, gallery_identity=IDS)
    summary, counts, edges = summarize_reidentification(table, np.array([0.2, 0.8, 3.0]), "cosine", (0.0, 1.0),
                                                        bins=10)
    assert summary["top1_rate"] == pytest.approx(1 / 3) and summary["top5_rate"] == 1.0
    assert summary["verification_rate"] == pytest.approx(2 / 3) and summary["pass_rate"] == pytest.approx(1 / 3)
    assert summary["cosine_to_source_median"] == pytest.approx(0.8) and "threshold" not in summary
    assert edges[0] == 0.0 and edges[-1] == 1.0 and counts.sum() == 3 and counts[-1] == 1  # 3.0 -> last bin


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="source_index must lie"):
        first_match_ranks(SIM, np.array([0, 2, 5]))
    with pytest.raises(ValueError, match="labels for 5 gallery"):
        first_match_ranks(SIM, SRC, IDS[:4])
    with pytest.raises(ValueError, match="3 rows"):
        first_match_ranks(SIM[:2], SRC)


# ---------------------------------------------------------------------------------------- recognizer table
def test_thresholds_are_stated_and_converted():
    dlib, vgg, casia, arc = (RECOGNIZERS[n] for n in ("dlib", "facenet_vggface2", "facenet_casia", "arcface_irse50"))
    assert (dlib.metric, dlib.threshold, dlib.inclusive, dlib.similarity_threshold) == ("euclidean", 0.6, False, -0.6)
    assert vgg.threshold == casia.threshold == pytest.approx(1 - 1.1 / 2)  # squared L2 1.1 on unit vectors
    assert arc.threshold == pytest.approx(1 - 1.54 / 2)  # TreB1eN face_verify.py: squared L2 1.54
    assert all(spec.threshold_source for spec in RECOGNIZERS.values())
    assert {spec.crop for spec in RECOGNIZERS.values()} <= set(FACE_CROPS)


def test_dlib_match_rule_is_distance_below_0_6(dlib_rec):
    a = np.zeros((1, 128))
    b = np.zeros((3, 128))
    b[:, 0] = [0.59, 0.6, 0.61]
    sim = dlib_rec.similarity(a, b)[0]
    np.testing.assert_allclose(dlib_rec.to_score(sim), [0.59, 0.6, 0.61])
    assert dlib_rec.is_match(sim).tolist() == [True, False, False]
    np.testing.assert_allclose(dlib_rec.paired_similarity(np.repeat(a, 3, 0), b), sim)


def test_crops_and_input_conversion():
    images = np.zeros((2, 256, 256, 3), np.uint8)
    images[:, :, :, 0] = 255
    x = to_unit_range(images)
    assert x.shape == (2, 3, 256, 256) and x[:, 0].eq(1).all() and x[:, 1].eq(-1).all()
    assert crop_faces(x, "dlib_chip").shape == (2, 3, 170, 170)
    assert crop_faces(x, "mtcnn_box").shape == (2, 3, 171, 130)
    assert crop_faces(x, "full") is x
    with pytest.raises(FalcoError, match="crop="):
        crop_faces(x, "nose")
    with pytest.raises(ValueError, match="uint8"):
        to_unit_range(images.astype(np.float32))


def test_only_dlib_is_available_offline_and_others_say_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("FALCO_MODELS", str(tmp_path))
    assert available_recognizers() == ["dlib"]
    with pytest.raises(MissingWeightsError, match="falco models fetch facenet-vggface2"):
        build_recognizer("facenet_vggface2")
    with pytest.raises(MissingWeightsError, match="model_ir_se50.pth"):
        build_recognizer("arcface_irse50")
    with pytest.raises(FalcoError, match="unknown recognizer"):
        build_recognizer("vgg")


def test_facenet_recognizer_from_the_model_store(tmp_path, monkeypatch):
    """A seeded state dict in facenet-pytorch's published layout, placed where the model store looks."""
    from anon_core.networks.facenet import InceptionResnetV1

    monkeypatch.setenv("FALCO_MODELS", str(tmp_path))
    torch.manual_seed(0)
    state = dict(InceptionResnetV1().state_dict())
    state["logits.weight"], state["logits.bias"] = torch.randn(10575, 512) * 0.01, torch.zeros(10575)
    torch.save(state, tmp_path / "20180408-102900-casia-webface.pt")
    assert "facenet_casia" in available_recognizers()
    rec = build_recognizer("facenet_casia")
    emb = rec.embed(np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8))
    assert emb.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_arcface_recognizer_loads_the_treb1en_layout(tmp_path):
    from anon_core.networks.arcface import ArcFaceEncoder, IRSEConfig

    torch.manual_seed(0)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(ArcFaceEncoder(IRSEConfig()).state_dict(), path)
    rec = build_recognizer("arcface_irse50", path=str(path))
    emb = rec.embed(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert emb.shape == (2, 512)
    assert rec.is_match(rec.similarity(emb, emb).diagonal()).all()  # an image matches itself (cosine 1)


# ---------------------------------------------------------------------------------------- real networks
def test_dlib_reidentifies_each_image_against_itself_at_rank_1(sample_faces, dlib_rec, tmp_path):
    names = [f"img{i}" for i in range(len(sample_faces))]
    report = evaluate_reidentification(dlib_rec, sample_faces, sample_faces, np.arange(len(sample_faces)), names=names)
    table = report.table
    assert table["rank"].eq(1).all() and table["verified"].all() and not table["passed"].any()
    assert table["distance_to_source"].abs().max() < 1e-5  # dlib distance of an image to itself
    assert "similarity_to_source" not in table  # one value per comparison, in the recognizer's own units
    assert report.summary["top1_rate"] == 1.0 and report.summary["pass_rate"] == 0.0
    assert report.metrics()["reid/dlib/top1_rate"] == 1.0
    assert report.histogram_counts.sum() == len(sample_faces)
    table.to_parquet(tmp_path / "t.parquet")  # the caller's format
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), table)


def test_dlib_does_not_match_different_people(sample_faces, dlib_rec):
    emb = dlib_rec.embed(sample_faces)
    sim = dlib_rec.similarity(emb[:1], emb[1:])[0]  # astronaut vs each LFW face
    assert dlib_rec.to_score(sim).min() > 0.6
    assert not dlib_rec.is_match(sim).any()


def test_swapping_in_another_real_face_is_never_rank_1(sample_faces, dlib_rec):
    """Known answer through the baseline table: "swap" with the next real image as the fake. The query is then
    identical to a gallery image of another identity (distance 0), so its source can never rank first."""
    fakes = np.roll(sample_faces, -1, axis=0)
    swapped = apply_baseline("swap", sample_faces, fakes=fakes)
    report = evaluate_reidentification(dlib_rec, swapped, sample_faces, np.arange(len(sample_faces)), chunk=3)
    assert report.summary["top1_rate"] == 0.0
    assert (report.table["rank"] >= 2).all()
    assert report.table.loc[0, "distance_to_source"] > 0.6  # astronaut replaced by an LFW face


@pytest.mark.parametrize("detector", ["dlib_hog", "mtcnn"])
def test_heavy_blur_lowers_the_detection_rate(sample_faces, detector):
    clean = detect_faces(sample_faces, detector)
    blurred = detect_faces(apply_baseline("blur", sample_faces, sigma=16.0), detector)
    # Seen on the 7 faces: dlib 6/7 -> 0/7, MTCNN 7/7 -> 0/7.
    assert clean.rate >= 5 / 7
    assert blurred.rate <= 1 / 7
    assert clean.faces.shape == blurred.faces.shape == (len(sample_faces),)


def test_detection_input_checks(sample_faces):
    assert 128 < DLIB_UPSAMPLE_BELOW  # the sample faces are upsampled once by "auto"
    assert detect_faces(sample_faces[:1], "dlib_hog", upsample="auto").faces.tolist() == [1]
    with pytest.raises(ValueError, match="not one of"):
        detect_faces(sample_faces, "s3fd")
    with pytest.raises(ValueError, match="uint8"):
        detect_faces(sample_faces.astype(np.float32), "dlib_hog")


def test_combined_table_passes_only_when_every_recognizer_passes(sample_faces):
    """Two cheap recognizers over mean colour (no weights): chunking gives the same table as one pass."""

    def mean_colour(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + torch.tensor([0.0, 0.0, 2.0])  # (B, 3), offset so cosines stay defined

    cos = Recognizer(RECOGNIZERS["facenet_vggface2"], mean_colour, crop="full")
    euc = Recognizer(RECOGNIZERS["dlib"], mean_colour, crop="full")
    queries = np.roll(sample_faces, 1, axis=0)
    src = np.arange(len(sample_faces))
    a = evaluate_reidentification(cos, queries, sample_faces, src, chunk=2)
    b = evaluate_reidentification(cos, queries, sample_faces, src)
    pd.testing.assert_frame_equal(a.table, b.table)
    c = evaluate_reidentification(euc, queries, sample_faces, src)
    both = combine_tables([a, c])
    assert "facenet_vggface2/rank" in both.columns and "dlib/passed" in both.columns
    assert both["passed_all"].tolist() == (a.table["passed"] & c.table["passed"]).tolist()


def test_an_unlabelled_image_is_its_own_person_even_where_its_name_is_a_label():
    """Unlabelled images were named by their file, in the labels' namespace: `b/x.png`, unlabelled, was one person
    with the image labelled "b/x.png", and ranked first against that stranger's face."""
    from evaluation.privacy import labelled_or_own, rivals

    ids = labelled_or_own(pd.Series(["P", "P", "b/x.png", None, None]), ["p1.png", "p2.png", "y.png", "b/x.png", "a.png"])
    assert ids.tolist() == ["P", "P", "b/x.png", "b/x.png (unlabelled)", "a.png"]
    assert labelled_or_own(pd.Series([None, None]), ["a.png", "b.png"]) is None  # no label at all: no identities
    assert rivals(ids, 5).tolist() == [3, 3, 4, 4, 4]
    # an image ranks at worst one more than its rivals, whatever the similarities
    rng = np.random.default_rng(0)
    for _ in range(20):
        ranks, _ = first_match_ranks(rng.normal(size=(5, 5)), np.arange(5), ids)
        assert (ranks <= rivals(ids, 5) + 1).all()
