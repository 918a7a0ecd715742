"""Identity-aware pairing end to end: `--pairing nearest|unique|identity` on labelled faces (same fake within a
person, distinct across people, all distinct for unique), the pairs asset's collisions, the consistency term, and
the evaluation's pseudonym figures."""

import csv
import hashlib
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from anon_core.artifacts import ImageSet
from anon_core.errors import FalcoError
from anon_core.fake_pool import broadcast_ws
from anon_core.optimize import anonymize_batch
from anon_core.params import load_params
from evaluation.privacy import pseudonym_consistency, pseudonym_shortfall
from evaluation.recognizers import build_recognizer
from orchestration.assets import anonymization
from orchestration.cli import main
from orchestration.resources import NetworksResource
from orchestration.tracking import MlflowResource

FAST = ["--profile", "tiny", "--steps", "2", "--pool-size", "40", "--batch-size", "4", "--quiet"]
PEOPLE = {"Ann": [0, 1], "Bob": [2, 3, 4], "Cy": [5]}  # person -> lfw face indices (stand-ins for photos)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, lfw_faces):
    """Six faces of three labelled people and two unlabelled images, with a labels CSV."""
    root = tmp_path_factory.mktemp("labelled")
    rows = []
    for person, faces in PEOPLE.items():
        (root / "in" / person).mkdir(parents=True)
        for i in faces:
            Image.fromarray(lfw_faces[i]).save(root / "in" / person / f"{i}.png")
            rows.append({"relpath": f"{person}/{i}.png", "identity": person})
    for i in (6, 7):
        Image.fromarray(lfw_faces[i]).save(root / "in" / f"stranger_{i}.png")
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["relpath", "identity"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _manifest(folder):
    return pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False).set_index("input")


@pytest.mark.parametrize("mode", ["nearest", "unique", "identity"])
def test_pairing_modes_on_labelled_faces(labelled, tmp_path, mode):
    out = tmp_path / mode
    args = ["anonymize", str(labelled / "in"), str(out), "--labels", str(labelled / "labels.csv"), *FAST]
    assert main([*args, "--pairing", mode]) == 0
    manifest = _manifest(out)
    fakes = manifest["fake_index"].astype(int)
    assert len(manifest) == 8
    if mode == "identity":
        by_person = {p: set(fakes[[f"{p}/{i}.png" for i in faces]]) for p, faces in PEOPLE.items()}
        assert all(len(f) == 1 for f in by_person.values())  # one fake per person
        chosen = [next(iter(f)) for f in by_person.values()] + [fakes["stranger_6.png"], fakes["stranger_7.png"]]
        assert len(set(chosen)) == 5  # distinct across people; each unlabelled image is its own person
        assert manifest.loc["Ann/0.png", "person"] == "Ann" and manifest.loc["stranger_6.png", "person"] == ""
    elif mode == "unique":
        assert fakes.nunique() == 8
    else:  # the paper's: each image its nearest fake, as without the flag
        default = tmp_path / "default"
        assert main(["anonymize", str(labelled / "in"), str(default), "--labels", str(labelled / "labels.csv"),
                     *FAST]) == 0
        assert (_manifest(default)["fake_index"] == manifest["fake_index"]).all()
    assert (manifest["fake_similarity"].astype(float) <= 1.0).all()


def test_a_changed_labels_csv_pairs_again_instead_of_resuming(labelled, tmp_path):
    """The same command after a label was corrected: the new people get one fake each, as a fresh run gives them,
    not the journal's pairs of the old labels."""
    table = pd.read_csv(labelled / "labels.csv")
    relabelled = tmp_path / "labels.csv"
    table.assign(identity=table["identity"].replace({"Cy": "Ann"})).to_csv(relabelled, index=False)  # Cy is Ann
    out = tmp_path / "out"
    args = ["anonymize", str(labelled / "in"), str(out), "--pairing", "identity", *FAST]
    assert main([*args, "--labels", str(labelled / "labels.csv")]) == 0
    before = _manifest(out)
    codes_before = np.load(out / "latents.npy")
    assert before.loc["Cy/5.png", "fake_index"] != before.loc["Ann/0.png", "fake_index"]
    assert main([*args, "--labels", str(relabelled)]) == 0
    after = _manifest(out)
    assert after.loc["Cy/5.png", "person"] == "Ann"
    assert after.loc["Cy/5.png", "fake_index"] == after.loc["Ann/0.png", "fake_index"] == after.loc["Ann/1.png",
                                                                                                    "fake_index"]
    assert main(["anonymize", str(labelled / "in"), str(tmp_path / "fresh"), "--pairing", "identity", *FAST,
                 "--labels", str(relabelled)]) == 0
    assert (_manifest(tmp_path / "fresh")["fake_index"] == after["fake_index"]).all()
    # an image keeps its codes from the journal only where its fake is the one it had: Cy is optimized again
    codes = np.load(out / "latents.npy")
    for name in after.index[after["status"] == "ok"]:
        old, new = (codes_before[int(before.loc[name, "latent_index"])], codes[int(after.loc[name, "latent_index"])])
        assert np.array_equal(old, new) == (before.loc[name, "fake_index"] == after.loc[name, "fake_index"]), name


def test_identity_pairing_without_any_label_is_refused_before_any_work(labelled, tmp_path, capsys):
    """Before: 8 images of 3 people in folders of a plain layout with no labels CSV, or with a CSV whose identity
    column was misspelt, got 8 fakes (unique pairing), and one warning came after the whole run, with exit 0."""
    args = ["anonymize", str(labelled / "in"), "--pairing", "identity", *FAST]
    assert main([args[0], args[1], str(tmp_path / "bare"), *args[2:]]) == 2
    assert capsys.readouterr().err == (
        "falco: error: pairing 'identity' needs the images' identity labels, but none has one: no labels CSV was "
        "given (--labels, data.labels_csv), and the folder's layout gave none (an LFW folder's person folders give "
        "them; a CelebA-HQ folder's identity_CelebA.txt, in its root, Anno/ or Eval/); give a labels CSV with "
        "a relpath and an identity column, or use pairing unique (no two images share a fake)\n")
    misspelt = tmp_path / "misspelt.csv"
    misspelt.write_text((labelled / "labels.csv").read_text().replace("identity", "identiy", 1))
    assert main([args[0], args[1], str(tmp_path / "typo"), *args[2:], "--labels", str(misspelt)]) == 2
    assert f"but none has one: the labels CSV {misspelt} has no identity column (its columns: ['relpath', " \
           "'identiy']); give a labels CSV" in capsys.readouterr().err
    for out in (tmp_path / "bare", tmp_path / "typo"):
        assert not (out / "images").exists() and not (out / "manifest.csv").exists()
        assert not (out / ".align_cache").exists() or not any((out / ".align_cache").iterdir())
    assert main([args[0], args[1], str(tmp_path / "labelled"), *args[2:], "--labels",
                 str(labelled / "labels.csv")]) == 0
    assert "error" not in capsys.readouterr().err
    # `falco pipeline` made the fake pool and its features first, then failed in real_images with Dagster's errors
    home = tmp_path / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(home))
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert main(["pipeline", "--input", str(labelled / "in"), "--storage", str(tmp_path / "store"), "--pairing",
                     "identity", "--profile", "tiny"]) == 2
        said = capsys.readouterr()
        assert said.err.startswith("falco: error: pairing 'identity' needs the images' identity labels, but none has "
                                   "one: no labels CSV was given") and said.err.count("\n") == 1
        # a labels CSV whose identity cells are empty, or that names no file of the folder: the same, from names alone
        blank = tmp_path / "blank.csv"
        blank.write_text("relpath,identity\nAnn/0.png,\nnot_here.png,Zed\n")
        assert main(["pipeline", "--input", str(labelled / "in"), "--storage", str(tmp_path / "store"), "--pairing",
                     "identity", "--profile", "tiny", "--labels", str(blank)]) == 2
        said = capsys.readouterr().err
        assert said == (f"falco: error: pairing 'identity' needs the images' identity labels, but none has one: the "
                        f"labels CSV {blank} gives none of these images an identity; give a labels CSV with a relpath "
                        "and an identity column, or use pairing unique (no two images share a fake)\n")
        # a layout the folder is not (any pairing): before, the prepare run failed with Dagster's errors
        assert main(["pipeline", "--input", str(labelled / "in"), "--storage", str(tmp_path / "store"), "--dataset",
                     "lfw", "--profile", "tiny"]) == 2
        said = capsys.readouterr().err
        assert said.startswith(f"falco: error: {labelled / 'in'} is not a LFW") and said.count("\n") == 1
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_name_in_either_unicode_form_is_one_person(labelled, tmp_path):
    """`José` typed composed (NFC) for one image and decomposed (NFD, as macOS saves names) for another were two
    people with two fakes, and looked the same in the manifest; a CSV relpath in the other form than the file's
    name did not name the file."""
    import unicodedata

    folder = tmp_path / "in"
    shutil.copytree(labelled / "in", folder)
    decomposed = unicodedata.normalize("NFD", "Zoë.png")
    (folder / "stranger_6.png").rename(folder / decomposed)
    rows = [("Ann/0.png", unicodedata.normalize("NFC", "José")), ("Ann/1.png", unicodedata.normalize("NFD", "José")),
            (unicodedata.normalize("NFC", "Zoë.png"), "Zoë"), ("Bob/2.png", "Bob"), ("Bob/3.png", "Bob")]
    labels = tmp_path / "labels.csv"
    labels.write_text("relpath,identity\n" + "".join(f"{r},{p}\n" for r, p in rows), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["anonymize", str(folder), str(out), "--labels", str(labels), "--pairing", "identity", *FAST]) == 0
    manifest = _manifest(out)
    assert manifest.loc["Ann/0.png", "person"] == manifest.loc["Ann/1.png", "person"] == \
        unicodedata.normalize("NFC", "José")
    assert manifest.loc["Ann/0.png", "fake_index"] == manifest.loc["Ann/1.png", "fake_index"]
    assert manifest.loc[decomposed, "person"] == "Zoë"
    assert manifest.loc["Ann/0.png", "fake_index"] != manifest.loc[decomposed, "fake_index"]


def test_evaluate_takes_the_labels_the_run_was_anonymized_with(labelled, tmp_path, capsys):
    """Before: `falco evaluate` without --labels measured a run paired by identity as if it had no identities (no
    pseudonym figures, another top-1 rate), without a word."""
    labels = tmp_path / "labels.csv"
    shutil.copy(labelled / "labels.csv", labels)
    run = tmp_path / "run"
    assert main(["anonymize", str(labelled / "in"), str(run), "--pairing", "identity", "--labels", str(labels),
                 *FAST]) == 0
    reports = {}
    for name, extra in (("given", ["--labels", str(labels)]), ("recorded", [])):
        assert main(["evaluate", str(labelled / "in"), str(run), "--out", str(tmp_path / name), "--no-baselines",
                     *extra]) == 0
        reports[name] = pd.read_csv(tmp_path / name / "metrics.csv", index_col=0)
    assert any(c.startswith("pseudonym/") for c in reports["recorded"].columns)
    pd.testing.assert_frame_equal(reports["recorded"], reports["given"])
    assert f"labels: {labels.resolve()} (the one the run was anonymized with" in capsys.readouterr().out
    labels.unlink()
    assert main(["evaluate", str(labelled / "in"), str(run), "--out", str(tmp_path / "gone"), "--no-baselines"]) == 2
    assert f"anonymized with the labels {labels.resolve()}, which is gone; pass --labels" in capsys.readouterr().err


def test_evaluating_runs_anonymized_with_different_labels_asks_which_identities(labelled, tmp_path, capsys):
    """One gallery measures every run given: runs anonymized with different labels CSVs (or one with and one without)
    used to be measured by whichever CSV the first run recorded, without a word."""
    runs = {"with": tmp_path / "with", "without": tmp_path / "without"}
    assert main(["anonymize", str(labelled / "in"), str(runs["with"]), "--labels", str(labelled / "labels.csv"),
                 *FAST]) == 0
    assert main(["anonymize", str(labelled / "in"), str(runs["without"]), *FAST]) == 0
    both = ["evaluate", str(labelled / "in"), str(runs["with"]), str(runs["without"]), "--no-baselines"]
    assert main([*both, "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err
    assert "anonymized with different labels" in err and "no labels CSV" in err and "pass --labels CSV" in err
    assert not (tmp_path / "mixed").exists()
    assert main([*both, "--out", str(tmp_path / "chosen"), "--labels", str(labelled / "labels.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "chosen" / "metrics.csv", index_col=0)) == 2


@pytest.mark.parametrize("mode, needed", [("unique", "8 images"), ("identity", "5 people")])
def test_distinct_fakes_need_a_pool_as_large_as_the_images_or_people(labelled, tmp_path, capsys, mode, needed):
    args = ["anonymize", str(labelled / "in"), str(tmp_path / "o"), "--labels", str(labelled / "labels.csv"),
            "--pairing", mode, "--profile", "tiny", "--steps", "2", "--pool-size", "4", "--quiet"]
    assert main(args) == 2
    assert f"each of the {needed} its own fake, but the pool holds 4; raise pool_size" in capsys.readouterr().err
    assert not {"manifest.csv", "images", ".journal"} & {p.name for p in (tmp_path / "o").iterdir()}  # nothing made


@pytest.mark.parametrize("mode, needed", [("unique", "8 images"), ("identity", "5 people")])
def test_the_pipeline_refuses_a_pool_too_small_for_its_pairing_once_the_images_are_read(labelled, tmp_path, mode,
                                                                                       needed):
    """`falco pipeline` learnt it only in `pairs`, after the real images were embedded and inverted (hours on
    CelebA-HQ); `real_images` knows how many images and people there are, and stops there."""
    from pipeline_helpers import fast_params, instance_at, materializations, run

    shutil.copytree(labelled / "in", tmp_path / "faces")
    fast_params(tmp_path / "params.yaml")
    with instance_at(tmp_path / "home") as instance:
        summary = run(tmp_path, instance, overrides={"pairing": mode, "pool_size": 4,
                                                     "data.labels_csv": str(labelled / "labels.csv")})
        assert summary.failed == ["prepare"]
        assert summary.errors["prepare"].startswith(f"real_images: pairing '{mode}' gives each of the {needed} its "
                                                    "own fake, but the pool holds 4; raise pool_size to at least")
        made = {name for name, _ in materializations(instance)}
        # the fake pool too: it would have replaced a stored one (it waits for real_images, and sees it failed)
        assert not made & {"real_images", "real_features", "real_inversions", "pairs", "fake_pool"}, made


@pytest.mark.parametrize("mode, needed", [("unique", "8 images"), ("identity", "5 people")])
def test_a_pool_too_small_for_the_stored_images_keeps_the_stored_pool(labelled, tmp_path, mode, needed):
    """The real images up to date, only the pool and the pairs were made again: `pairs` refused, but only after the
    new, smaller pool had replaced the stored one, which the next normal run then had to make again (hE)."""
    from pipeline_helpers import fast_params, instance_at, made_since, materializations, run

    shutil.copytree(labelled / "in", tmp_path / "faces")
    fast_params(tmp_path / "params.yaml")
    settings = {"pairing": mode, "data.labels_csv": str(labelled / "labels.csv")}
    with instance_at(tmp_path / "home") as instance:
        assert run(tmp_path, instance, stages=("prepare",), overrides={**settings, "pool_size": 8}).failed == []
        pool = (tmp_path / "store" / "fake_pool" / "all.npz").read_bytes()
        before = materializations(instance)
        summary = run(tmp_path, instance, stages=("prepare",), overrides={**settings, "pool_size": 4})
        assert summary.failed == ["prepare"]
        assert summary.errors["prepare"].startswith(f"fake_pool: pairing '{mode}' gives each of the {needed} of "
                                                    "real_images (run "), summary.errors["prepare"]
        assert summary.errors["prepare"].endswith("raise pool_size to at least "
                                                  f"{needed.split()[0]}; the stored pool is kept")
        assert made_since(before, materializations(instance)) == {}
        assert (tmp_path / "store" / "fake_pool" / "all.npz").read_bytes() == pool
        # photo mode pairs by nearest: its pool is not measured against the aligned images (hJ: it was)
        if mode == "unique":
            assert run(tmp_path, instance, stages=("prepare",), mode="photo",
                       overrides={**settings, "pool_size": 4}).failed == []
        # the pool of the same size as the images is made, and paired
        assert run(tmp_path, instance, stages=("prepare",),
                   overrides={**settings, "pool_size": int(needed.split()[0])}).failed == []


def test_the_pipeline_evaluates_faces_some_of_which_have_no_label(labelled, tmp_path):
    """The two strangers outside the labels CSV (as a loose file beside LFW's person folders) stopped the pipeline's
    evaluation with `TypeError: boolean value of NA is ambiguous`, after the whole anonymization; `falco evaluate`
    counted each as its own identity. The pipeline does too."""
    from pipeline_helpers import fast_params, instance_at, run

    shutil.copytree(labelled / "in", tmp_path / "faces")
    fast_params(tmp_path / "params.yaml")
    with instance_at(tmp_path / "home") as instance:
        summary = run(tmp_path, instance, overrides={"data.labels_csv": str(labelled / "labels.csv")})
    assert not summary.failed, summary.errors
    table = pd.read_parquet(tmp_path / "store" / "anonymization_report" / "per_image.parquet")
    table = table[table["run"] == "default"].set_index("name")
    assert len(table) == 8
    strangers = table.loc[["stranger_6.png", "stranger_7.png"]]
    assert strangers["identity"].tolist() == strangers.index.tolist()  # its own identity, named by its file
    assert (strangers["dlib/distance_to_same_identity"] == strangers["dlib/distance_to_source"]).all()
    labelled_rows = table.drop(strangers.index)
    assert labelled_rows["identity"].tolist() == ["Ann", "Ann", "Bob", "Bob", "Bob", "Cy"]
    # a person's other images count as theirs: the closest of them, never farther than the source itself
    assert (labelled_rows["dlib/distance_to_same_identity"] <= labelled_rows["dlib/distance_to_source"]).all()
    assert (labelled_rows["dlib/distance_to_same_identity"] < labelled_rows["dlib/distance_to_source"]).any()
    # 8 faces of 5 people: each is ranked against at least 5 images of others (Bob's 3 against 5), so a top-5 hit is
    # never certain and the report has no note saying it is (it counted people, and said so with top5_rate 0.75)
    report = (tmp_path / "store" / "anonymization_report" / "report.md").read_text()
    assert "images of other people" not in report and "holds one person" not in report
    # which identities: the labels CSV and its sha256 (only MLflow's tags said so)
    digest = hashlib.sha256((labelled / "labels.csv").read_bytes()).hexdigest()[:12]
    assert f"**labels**: {labelled / 'labels.csv'} (sha256 {digest})" in report


def test_the_pairs_asset_reports_shared_fakes(lfw_faces, tmp_path):
    real = ImageSet(pd.DataFrame({"input": list("abcd"), "image": list("abcd"), "shard": ["shard-00000"] * 4,
                                  "identity": ["p", "p", "q", None]}), lfw_faces[:4])
    fakes = np.eye(3, dtype=np.float32)
    reals = np.array([[1, 0.1, 0], [1, 0, 0.1], [0.9, 0.2, 0], [0.8, 0, 0.3]], np.float32)
    tracker = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for mode, expected in (("nearest", [0, 0, 0, 0]), ("identity", None)):
        context = dg.build_asset_context()
        frame = anonymization.pairs(context, real, reals, fakes, NetworksResource(overrides={"pairing": mode}),
                                    tracker)
        meta = {k: getattr(v, "value", v) for k, v in context.get_output_metadata("result").items()}
        if expected:
            assert frame["fake_index"].tolist() == expected
            assert meta["shared_fakes"] == 1 and meta["reals_on_shared_fakes"] == 4
            assert meta["fakes_shared_across_people"] == 1 and meta["pseudonyms"] == 4  # nearest: no people
        else:
            f = frame["fake_index"].tolist()
            assert f[0] == f[1] and len({f[0], f[2], f[3]}) == 3 and meta["shared_fakes"] == 1
            assert frame["person"].tolist() == ["p", "p", "q", ""] and meta["people"] == 2
            assert meta["fakes_shared_across_people"] == 0 and meta["pseudonyms"] == 3  # p, q, the unlabelled d
    unlabelled = ImageSet(real.table.assign(identity=None), lfw_faces[:4])
    with pytest.raises(FalcoError, match=r"^pairing 'identity' needs the images' identity labels, but none has one"):
        anonymization.pairs(dg.build_asset_context(), unlabelled, reals, fakes,
                            NetworksResource(overrides={"pairing": "identity"}), tracker)


def test_consistency_term_draws_two_faces_with_one_fake_to_one_identity(tiny_nets, lfw_faces):
    """Two different people paired with the same fake: with the consistency term their anonymized identities end
    closer to each other (and to the fake's) than with the paper's loss alone."""
    from anon_core.data.image_io import to_tensor
    from anon_core.stages import invert_images

    # 40 steps: at 15 the two paper-loss pseudonyms of this pair were already 0.90 alike on an AMD EPYC, and the term
    # added 0.015; at 40 it adds 0.075 here (0.23 and 0.14 on the pairs 1-6 and 2-7)
    params = load_params("tiny", **{"optimization.steps": 40, "inversion.steps": 5})
    real = lfw_faces[[0, 5]]
    w_real = torch.from_numpy(invert_images(tiny_nets, params, real))
    w_fake = torch.from_numpy(np.repeat(np.asarray(tiny_nets.generator.w_avg)[None], 2, axis=0))
    outcomes = {}
    for weight in (0.0, 5.0):
        opt = params.replace(**{"optimization.lambda_consistency": weight}).optimization
        result = anonymize_batch(tiny_nets.generator, tiny_nets.identity, tiny_nets.farl,
                                 to_tensor(real, 64), w_real, w_fake, opt)
        with torch.no_grad():
            ids = tiny_nets.identity(tiny_nets.generator.synthesis(result.ws))
            fake = tiny_nets.identity(tiny_nets.generator.synthesis(broadcast_ws(w_fake[:1], tiny_nets.generator.num_ws)))
        outcomes[weight] = (float(ids[0] @ ids[1]), float((ids @ fake[0]).mean()), result.identity_similarity)
    assert outcomes[5.0][0] > outcomes[0.0][0] + 0.05  # the two pseudonyms agree more
    assert outcomes[5.0][1] > outcomes[0.0][1]  # both closer to the fake's identity
    assert np.all(outcomes[5.0][2] < 0.5)  # and still far from their real people


def test_pseudonym_figures_count_same_person_pairs():
    dlib = build_recognizer("dlib")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 128)).astype(np.float32)
    anon = np.concatenate([base[[0, 0, 1, 1]], base[[2]]]) * 0.05  # dlib: distance < 0.6 is one person
    real = rng.normal(size=(5, 128)).astype(np.float32)  # far apart: no real pair matches
    figures = pseudonym_consistency(dlib, anon, real, np.array(["a", "a", "b", "b", None], dtype=object))
    assert figures["pseudonym/dlib/pairs"] == 2 and figures["pseudonym/dlib/other_pairs"] == 2
    assert figures["pseudonym/dlib/anon_same_person_match_rate"] == 1.0
    assert figures["pseudonym/dlib/real_same_person_match_rate"] == 0.0
    assert figures["pseudonym/dlib/anon_separation_auc"] == 1.0  # every same pair closer than every other pair
    assert pseudonym_consistency(dlib, anon, real, np.array(["a", "b", "c", "d", "e"])) == {}
    assert "no person has two anonymized images" in pseudonym_shortfall(["a", "b", "c", "d", "e"])
    assert "every anonymized image is of one person ('a')" in pseudonym_shortfall(["a", "a", None, "a", ""])
    assert pseudonym_consistency(dlib, anon, real, np.array(["a", "a", None, "a", ""], dtype=object)) == {}
    assert pseudonym_shortfall(["a", "a", "b", None, None]) is None


def test_evaluate_says_why_a_one_person_labels_csv_gives_no_pseudonym_figures(labelled, tmp_path):
    """Before: labels naming one person for every image gave a report without the pseudonym figures, and without a
    word on why; nor did `falco evaluate`'s report name the labels CSV it measured by."""
    run, one = tmp_path / "run", tmp_path / "one_person.csv"
    assert main(["anonymize", str(labelled / "in"), str(run), *FAST]) == 0
    files = sorted(p.relative_to(labelled / "in").as_posix() for p in (labelled / "in").rglob("*.png"))
    one.write_text("relpath,identity\n" + "".join(f"{f},Ann\n" for f in files))
    out = tmp_path / "report"
    assert main(["evaluate", str(labelled / "in"), str(run), "--out", str(out), "--no-baselines", "--labels",
                 str(one)]) == 0
    report = (out / "report.md").read_text()
    assert "no pseudonym figures (does one person keep one pseudonym?): every anonymized image is of one person " \
           "('Ann')" in report
    assert not any(c.startswith("pseudonym/") for c in pd.read_csv(out / "metrics.csv", index_col=0).columns)
    digest = hashlib.sha256(one.read_bytes()).hexdigest()[:12]
    assert f"**labels**: {one.resolve()} (sha256 {digest})" in report
    labelled_report = tmp_path / "labelled_report"
    assert main(["evaluate", str(labelled / "in"), str(run), "--out", str(labelled_report), "--no-baselines",
                 "--labels", str(labelled / "labels.csv")]) == 0
    assert "no pseudonym figures" not in (labelled_report / "report.md").read_text()


def test_as_many_different_person_pairs_as_same_person_pairs_are_compared():
    """Pairs of images drawn at random, those of one person dropped, left 12 different-person pairs against 17
    same-person pairs on 11 images of 4 people (1, 2, 6 and 2 images), while the glossary promised as many."""
    from evaluation.privacy import other_person_pairs

    person = np.array(["solo", "duo", "duo", *["six"] * 6, "pair", "pair"])
    rng = np.random.default_rng(0)
    for count, expected in ((17, 17), (100, 11 * 10 // 2 - 17)):  # there are 38 such pairs in all
        pairs = other_person_pairs(person, count, rng)
        assert len(pairs) == expected == len({tuple(sorted(p)) for p in pairs.tolist()})
        assert np.all(person[pairs[:, 0]] != person[pairs[:, 1]])


def test_evaluate_compares_labels_by_their_content(labelled, tmp_path, capsys):
    """The runs recorded their labels CSV's path only: a CSV edited after a run measured that run by identities it
    was not paired by, and two identical CSVs at two paths were refused as different."""
    labels, copy = tmp_path / "labels.csv", tmp_path / "same_labels.csv"
    shutil.copy(labelled / "labels.csv", labels)
    shutil.copy(labels, copy)
    runs = [tmp_path / "a", tmp_path / "b"]
    for run, csv in zip(runs, (labels, copy)):
        assert main(["anonymize", str(labelled / "in"), str(run), "--labels", str(csv), "--pairing", "identity",
                     *FAST]) == 0
    both = ["evaluate", str(labelled / "in"), *map(str, runs), "--no-baselines"]
    assert main([*both, "--out", str(tmp_path / "same")]) == 0  # one content at two paths: one set of identities
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")  # other people for the same files
    assert main(["evaluate", str(labelled / "in"), str(runs[0]), "--no-baselines", "--out", str(tmp_path / "x")]) == 2
    assert "which has changed since; pass --labels" in capsys.readouterr().err
    assert main([*both, "--out", str(tmp_path / "edited")]) == 2  # both runs were paired by the CSV as it was
    assert "which has changed since" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("x", "edited"))
