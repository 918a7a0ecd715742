"""`falco evaluate` end to end on the tiny profile: two `falco anonymize` runs (m = 0.0 and 1.0) of three LFW faces
and a run whose images are its real sources, evaluated into one report; the errors for folders that are not runs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from anon_core.data.align import FaceAligner
from anon_core.data.image_io import load_rgb, save_png
from anon_core.params import DEFAULT_PARAMS_PATH
from orchestration.cli import main
from store_checks import kept_keys

FACES = 3
# Every step here is tiny convolutions: on a shared 2-core machine, one thread took the module from 92 s to 8 s.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, lfw_faces):
    """REAL_DIR with three faces, two anonymize runs of it that differ only in the margin, and a copy of the first
    run whose images are its real sources, aligned as the run aligned them."""
    tmp = tmp_path_factory.mktemp("evaluate")
    real = tmp / "real"
    real.mkdir()
    for i in range(FACES):
        Image.fromarray(lfw_faces[i]).save(real / f"face_{i}.png")
    params = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    params["profiles"]["tiny"]["inversion"]["steps"] = 2  # the inverter's 40 steps would dominate the test
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    out = {}
    for margin in ("0.0", "1.0"):
        out[margin] = tmp / f"anon_m{margin}"
        assert main(["anonymize", str(real), str(out[margin]), "--profile", "tiny", "--params",
                     str(tmp / "params.yaml"), "--steps", "2", "--pool-size", "20", "--margin", margin, "--quiet"]) == 0
    same = tmp / "same"
    shutil.copytree(out["0.0"], same)
    aligner = FaceAligner(64, "mtcnn")  # the tiny generator's resolution, `falco anonymize`'s default detector
    for row in pd.read_csv(same / "manifest.csv").itertuples():
        save_png(same / "images" / row.output, aligner.align(load_rgb(real / row.input)).image)
    return {"tmp": tmp, "real": real, "same": same, **out}


def test_runs_get_a_row_and_a_scatter_point_each_and_their_images_a_per_image_row(runs, capsys, monkeypatch):
    import anon_core.data.scan as scan

    hashed, sha256_file = [], scan.sha256_file
    monkeypatch.setattr(scan, "sha256_file", lambda path: hashed.append(Path(path)) or sha256_file(path))
    report = runs["tmp"] / "report"
    assert main(["evaluate", str(runs["real"]), str(runs["0.0"]), str(runs["1.0"]), str(runs["same"]),
                 "--out", str(report), "--recognizers", "dlib", "--quiet"]) == 0
    assert f"report: {report / 'report.md'}" in capsys.readouterr().out
    for name in ("report.md", "report.html", "metrics.csv", "per_image.parquet", "figures/examples.png",
                 "figures/privacy_vs_utility.png", "figures/attributes_anycost_seeded.png"):
        assert (report / name).is_file(), name
    # REAL_DIR is read once: the files its sources check hashed are the ones the gallery reads
    assert sorted(p.name for p in hashed if runs["real"] in p.parents) == [f"face_{i}.png" for i in range(FACES)]

    # Labels say what differs; `same` has the first run's params.json, so both get their folder name too.
    labels = {"0.0": "m=0.0 [anon_m0.0]", "1.0": "m=1.0", "same": "m=0.0 [same]"}
    summary = pd.read_csv(report / "metrics.csv", index_col="method")
    assert summary.index.tolist() == [*labels.values(), "blur", "pixelate", "mask", "swap"]
    assert summary["reid/dlib/images"].tolist() == [FACES] * 7
    assert summary["detection/mtcnn/rate"].between(0, 1).all()
    assert "quality/fd_dlib" in summary.columns  # no Inception weights here: the named fallback, never "fid"
    points = pd.read_csv(report / "figures" / "privacy_vs_utility.csv")
    assert points.loc[points["kind"] == "run", "label"].tolist() == list(labels.values())
    assert points.loc[points["kind"] == "baseline", "label"].tolist() == ["blur", "pixelate", "mask", "swap"]
    with Image.open(report / "figures" / "privacy_vs_utility.png") as png:
        assert png.format == "PNG" and png.size[0] > 300

    per_image = pd.read_parquet(report / "per_image.parquet")
    for key, label in labels.items():
        manifest = pd.read_csv(runs[key] / "manifest.csv")
        ok = manifest[manifest["status"] == "ok"]
        rows = per_image[per_image["run"] == label]
        assert len(ok) == FACES and rows["name"].tolist() == ok["output"].tolist()
        assert rows["input"].tolist() == ok["input"].tolist()
        assert (rows["dlib/rank"] >= 1).all() and rows["dlib/passed"].dtype == bool
        assert (rows["dlib/passed"] == (~rows["dlib/verified"] & (rows["dlib/rank"] > 1))).all()

    # An image evaluated against itself ranks first and is verified: every one of them fails.
    same = per_image[per_image["run"] == labels["same"]]
    assert (same["dlib/rank"] == 1).all() and same["dlib/verified"].all() and not same["passed_all"].any()
    assert np.allclose(same["dlib/distance_to_source"], 0.0, atol=1e-4)  # dlib distance of an image to itself
    assert summary.loc[labels["same"], "reid/dlib/top1_rate"] == 1.0

    md = (report / "report.md").read_text()
    assert "| m=1.0 " in md and "## Attribute agreement per run" in md
    # three faces, each ranked against the two others: a top-5 hit is certain, which the report says above the numbers
    assert "all real faces are ranked against fewer than 5 images of other people (2 at fewest): their top-5 hit is " \
           "certain whatever their anonymized image looks like" in md
    # as the pipeline's report: a run over its release bound (the real faces, here) says so at the top
    rate = summary["reid/dlib/verification_rate"]
    failed = [label for label in labels.values() if rate[label] > 0.05]
    assert labels["same"] in failed
    assert [line.split(" failed the privacy check")[0].split("**Note:** ")[1] for line in md.splitlines()
            if " failed the privacy check: do not release its images" in line] == failed
    assert f"run m=1.0**: {runs['1.0']}" in md


def test_folders_that_are_not_runs_give_one_clear_error(runs, capsys):
    tmp = runs["tmp"]

    def error(*anon_dirs) -> str:
        assert main(["evaluate", str(runs["real"]), *map(str, anon_dirs), "--out", str(tmp / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err  # one line
        return err

    message = error(runs["real"])
    assert "no manifest.csv" in message and f"falco anonymize REAL_DIR {runs['real']}" in message
    # a variant's folder in a pipeline's storage: not the `falco anonymize` that would be refused there, the report
    from orchestration.driver import bind_instance_and_storage

    variant = tmp / "pipeline_store" / "anonymized_images" / "m0.9"
    variant.mkdir(parents=True)
    (tmp / "pipeline_home").mkdir()
    bind_instance_and_storage(tmp / "pipeline_home", tmp / "pipeline_store", fresh=False)  # as `falco pipeline` does
    message = error(variant)
    assert f"it is in the storage of a `falco pipeline` ({tmp / 'pipeline_store'})" in message
    assert "anonymization_report" in message and "falco anonymize REAL_DIR" not in message
    assert "does not exist" in error(tmp / "missing")

    small = tmp / "small"
    shutil.copytree(runs["0.0"], small)
    first = pd.read_csv(small / "manifest.csv")["output"].iloc[0]
    Image.new("RGB", (32, 32)).save(small / "images" / first)
    message = error(runs["0.0"], small)
    assert f"{small}: images/{first} is 32x32 px" in message and "64 px" in message

    missing = tmp / "missing_image"
    shutil.copytree(runs["0.0"], missing)
    (missing / "images" / first).unlink()
    assert f"images/{first}" in error(missing) and "re-run `falco anonymize`" in error(missing)

    cut = tmp / "cut_image"  # a PNG cut short: its header reads, its pixels do not
    shutil.copytree(runs["0.0"], cut)
    (cut / "images" / first).write_bytes((runs["0.0"] / "images" / first).read_bytes()[:100])
    message = error(cut)  # before: the path twice, and "materialize the asset" among three fixes
    assert message.count(f"images/{first}") == 1 and "materialize" not in message
    assert message.endswith(f"re-run `falco anonymize` into {cut} (it writes damaged images again), then evaluate\n")

    other = tmp / "other_profile"
    shutil.copytree(runs["0.0"], other)
    record = json.loads((other / "params.json").read_text())
    record["resolution"] = 1024
    (other / "params.json").write_text(json.dumps(record))
    assert "resolution" in error(runs["0.0"], other)
    unaligned = tmp / "unaligned"
    shutil.copytree(runs["0.0"], unaligned)
    aligned = json.loads((unaligned / "params.json").read_text())["alignment"]
    (unaligned / "params.json").write_text(json.dumps({**json.loads((unaligned / "params.json").read_text()),
                                                       "alignment": None}))  # as --no-align records it
    assert f"{unaligned} was made with no alignment (--no-align) but {runs['0.0']} with alignment {aligned!r}" in \
        error(runs["0.0"], unaligned)  # before: "alignment None"
    record["resolution"] = 64  # the other layout of the same files: before, every run was read as the first one was
    record["dataset"] = "lfw"  # (an identity-paired LFW run measured without its identities behind a folder run)
    (other / "params.json").write_text(json.dumps(record))
    assert f"{other} was made with dataset 'lfw' but {runs['0.0']} with 'folder'" in error(runs["0.0"], other)
    assert main(["evaluate", str(runs["real"]), str(runs["0.0"]), "--out", str(tmp / "r"), "--dataset", "lfw",
                 "--quiet"]) == 2  # before: "pass as REAL_DIR the folder this run anonymized", the one passed
    assert capsys.readouterr().err == (f"falco: error: --dataset lfw, but {runs['0.0']} was anonymized as dataset "
                                       "'folder' (its params.json), whose file names its manifest holds; leave "
                                       "--dataset out\n")
    record["resolution"] = "abc"  # a hand-edited params.json: before, int()'s traceback
    (other / "params.json").write_text(json.dumps(record))
    assert "params.json records no profile and resolution (in pixels)" in error(other)

    stranger = tmp / "stranger"
    shutil.copytree(runs["0.0"], stranger)
    manifest = pd.read_csv(stranger / "manifest.csv")
    manifest.loc[0, "input"] = "someone_else.png"
    manifest.to_csv(stranger / "manifest.csv", index=False)
    message = error(stranger)
    assert "'someone_else.png'" in message and "pass as REAL_DIR the folder this run anonymized" in message


def _hashed_copy(run, real, folder):
    """A copy of `run` whose manifest records each input's sha256, as `falco anonymize` writes it."""
    from anon_core.hashing import sha256_file

    shutil.copytree(run, folder)
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["sha256"] = [sha256_file(real / p) for p in manifest["input"]]
    manifest.to_csv(folder / "manifest.csv", index=False)
    return folder


def test_a_real_folder_whose_files_changed_since_the_run_is_refused(runs, lfw_faces, capsys):
    tmp = runs["tmp"]
    hashed = _hashed_copy(runs["0.0"], runs["real"], tmp / "hashed")
    changed = tmp / "changed"
    shutil.copytree(runs["real"], changed)
    Image.fromarray(lfw_faces[FACES + 1]).save(changed / "face_1.png")  # another face under the same name
    report = tmp / "r_changed"
    assert main(["evaluate", str(changed), str(hashed), "--out", str(report), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{changed}: face_1.png has other bytes than when {hashed} anonymized it" in err
    assert "the folder no longer holds what the run anonymized" in err
    assert f"its params.json says {runs['real'].resolve()}" in err
    assert not report.exists()  # refused before any work


def test_the_source_check_passes_the_folder_as_it_was_and_notes_an_older_manifest(runs):
    from evaluation.sources import check_real_folder, scan_real_folder

    hashed = _hashed_copy(runs["0.0"], runs["real"], runs["tmp"] / "hashed_ok")
    manifest = pd.read_csv(hashed / "manifest.csv", dtype=str, keep_default_na=False)
    record = json.loads((hashed / "params.json").read_text())
    current = scan_real_folder(runs["real"], "folder")
    notes = []
    check_real_folder(runs["real"], hashed, record, manifest, manifest["input"], current, log=notes.append)
    assert notes == []
    check_real_folder(runs["real"], hashed, record, manifest.drop(columns=["sha256"]), manifest["input"], current,
                      log=notes.append)
    assert len(notes) == 1 and "records no sha256 of its inputs" in notes[0] and "not checked" in notes[0]


def test_a_recognizer_named_twice_is_measured_once(runs, capsys):
    """`--recognizers dlib,dlib` stopped with numpy's "6 anonymized images but 3 source indices" traceback."""
    report = runs["tmp"] / "report_twice"
    assert main(["evaluate", str(runs["real"]), str(runs["0.0"]), "--out", str(report), "--recognizers", "dlib,dlib",
                 "--no-baselines", "--quiet"]) == 0
    summary = pd.read_csv(report / "metrics.csv", index_col="method")
    assert summary["reid/dlib/images"].tolist()[0] == FACES


def test_an_option_the_run_kind_does_not_read_is_refused(runs, capsys):
    """`--params missing.yaml` on an aligned run was ignored silently (it is read for photo-mode runs only)."""
    report = runs["tmp"] / "report_params"
    assert main(["evaluate", str(runs["real"]), str(runs["0.0"]), "--out", str(report), "--params",
                 str(runs["tmp"] / "missing.yaml"), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        "falco: error: --params is read for photo-mode runs only (the privacy bound their faces are held to); an "
        "aligned run is evaluated with the settings its params.json records: drop --params\n")
    assert not report.exists()


def test_a_report_folder_of_other_files_or_in_a_pipeline_storage_is_refused(runs, capsys):
    """`--out mydocs` replaced the user's report.md, metrics.csv and figures/examples.png; `--out
    STORE/anonymization_report` replaced the pipeline's report, which the pipeline then called up to date; `--out`
    another run's folder put the report among that run's outputs; `--out` a folder of faces (another dataset) put
    the report and the real faces' embeddings among them, and the next `falco anonymize` of it read the report's
    files as images."""
    from orchestration.driver import bind_instance_and_storage

    mine = runs["tmp"] / "mydocs"
    (mine / "figures").mkdir(parents=True)
    (mine / "report.md").write_text("# my own notes\n")
    (mine / "metrics.csv").write_text("a,b\n")
    shutil.copy(runs["real"] / "face_0.png", mine / "figures" / "examples.png")
    store = runs["tmp"] / "store"
    (store / "anonymization_report").mkdir(parents=True)
    (runs["tmp"] / "home").mkdir()
    bind_instance_and_storage(runs["tmp"] / "home", store, fresh=False)  # as a first `falco pipeline` marks them
    faces = runs["tmp"] / "other_faces"
    (faces / "person").mkdir(parents=True)
    for i in range(4):
        shutil.copy(runs["real"] / "face_0.png", faces / ("person" if i else "") / f"face_{i}.png")
    before = {p: p.read_bytes() for folder in (mine, store, faces) for p in folder.rglob("*") if p.is_file()}
    for out, message in (
            (faces, f"{faces} holds face_0.png, person, and no report falco wrote: the report's files (and the "
                    "private outputs of the real faces) would be mixed among them, and a dataset folder would read "
                    "them as its images; give --out a new or empty folder, or an earlier report's (nothing was "
                    "written)"),
            (mine, f"{mine} holds report.md, metrics.csv, figures, and not a report falco wrote (its report.md would "
                   "begin '# FALCO-Ops evaluation report'): the report would replace them; give --out a new or "
                   "empty folder, or an earlier report's (nothing was written)"),
            (store / "anonymization_report",
             f"{store / 'anonymization_report'} is inside the storage of a `falco pipeline` ({store}), whose folders "
             "hold the pipeline's own values: the pipeline would take this report for its own; give a report folder "
             "outside it (nothing was written)"),
            (runs["1.0"], f"{runs['1.0']} is the output folder of a `falco anonymize` run (its manifest.csv): the "
                          "report would sit among its outputs, and the next run into it would take the report for "
                          "its own files; give --out a folder of its own (nothing was written)")):
        assert main(["evaluate", str(runs["real"]), str(runs["0.0"]), "--out", str(out), "--no-baselines",
                     "--recognizers", "dlib", "--quiet"]) == 2
        assert capsys.readouterr().err == f"falco: error: {message}\n"
    assert {p: p.read_bytes() for folder in (mine, store, faces) for p in folder.rglob("*") if p.is_file()} == before
    report = runs["tmp"] / "report_again"  # an earlier report is replaced; a folder of hidden files alone is empty
    report.mkdir()
    (report / ".DS_Store").write_bytes(b"\0")
    for _ in range(2):
        assert main(["evaluate", str(runs["real"]), str(runs["0.0"]), "--out", str(report), "--no-baselines",
                     "--recognizers", "dlib", "--quiet"]) == 0


def test_a_run_of_one_image_is_evaluated_without_the_distances_it_cannot_have(runs, capsys):
    """A single image stopped evaluate (and the pipeline's evaluate stage) with numpy's "feature_statistics needs
    features [N >= 2, D]" traceback: FD and KD compare two distributions, each needs two images at least."""
    one = runs["tmp"] / "one"
    one.mkdir()
    shutil.copy(runs["real"] / "face_0.png", one / "face_0.png")
    assert main(["anonymize", str(one), str(runs["tmp"] / "one_run"), "--profile", "tiny", "--steps", "2",
                 "--pool-size", "20", "--quiet"]) == 0
    report = runs["tmp"] / "report_one"
    assert main(["evaluate", str(one), str(runs["tmp"] / "one_run"), "--out", str(report), "--recognizers", "dlib",
                 "--quiet"]) == 0
    summary = pd.read_csv(report / "metrics.csv", index_col="method")
    assert summary["reid/dlib/images"].tolist() == [1] * 5  # the run and its four baselines, re-identified
    assert summary[["quality/fd_dlib", "quality/kd_dlib"]].isna().all().all()
    # one face: ranked first whatever the image looks like, so every image "fails"; the report says so
    assert (summary["reid/dlib/top1_rate"] == 1.0).all() and (summary["reid/dlib/pass_rate"] == 0.0).all()
    md = (report / "report.md").read_text()
    assert "the real gallery holds one person: every image ranks first whatever it looks like" in md
    assert f"{runs['tmp'] / 'one_run'} (1 image)" in md


def test_an_evaluation_into_the_same_report_folder_reads_only_the_images_it_has_not_read(runs, capsys):
    """Adding a run to a comparison reads that run's images alone: the real gallery's, the first run's and the
    baselines' outputs were kept (by each image's key) in the report folder by the first evaluation, and the first
    run's numbers come out the same."""
    import re

    report = runs["tmp"] / "report_growing"

    def evaluate(*folders) -> dict[str, int]:
        assert main(["evaluate", str(runs["real"]), *map(str, folders), "--out", str(report),
                     "--recognizers", "dlib"]) == 0
        [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("images read:")]
        return {name: int(read) for name, read in re.findall(r"([^:;]+): (\d+) of \d+", line.removeprefix(
            "images read: ").replace("; ", ";"))}

    first = evaluate(runs["0.0"])
    # a new report folder: every image read; the swap baseline's images of one shared fake are one image, read once
    fakes = pd.read_csv(runs["0.0"] / "manifest.csv")["fake_index"].nunique()
    assert fakes < FACES and first == {"real": FACES, "anon_m0.0": FACES, "blur": FACES, "pixelate": FACES, "mask": FACES,
                                       "swap": fakes}
    before = pd.read_csv(report / "metrics.csv", index_col="method")
    second = evaluate(runs["0.0"], runs["1.0"])
    assert second == {"real": 0, "m=0.0": 0, "m=1.0": FACES, "blur": 0, "pixelate": 0, "mask": 0, "swap": 0}
    after = pd.read_csv(report / "metrics.csv", index_col="method")
    pd.testing.assert_series_equal(before.iloc[0], after.loc["m=0.0"], check_names=False)
    assert oct((report / ".evaluation_outputs" / "real").stat().st_mode & 0o777) == "0o700"


def test_a_face_removed_from_the_data_leaves_no_embedding_in_the_report_folder(runs, capsys):
    """The report folder keeps the identity embeddings of the real faces, and of their blurred, pixelated and
    masked images, only while they are in the data: once a face is removed from REAL_DIR (and the runs made again
    without it), the next evaluation into that folder removes what it kept of it, and reads none of the others."""
    from evaluation.baselines import made_from_real, real_source

    report, fewer = runs["tmp"] / "report_erasure", runs["tmp"] / "real_fewer"
    real_store = report / ".evaluation_outputs" / "real"
    assert main(["evaluate", str(runs["real"]), str(runs["0.0"]), "--out", str(report), "--recognizers", "dlib",
                 "--quiet"]) == 0
    kept = kept_keys(real_store)
    assert len({real_source(k) for k in kept}) == FACES and sum(map(made_from_real, kept)) == 3 * FACES
    assert not any(map(made_from_real, kept_keys(report / ".evaluation_outputs")))  # private ones only in real/

    shutil.copytree(runs["real"], fewer)
    (fewer / "face_1.png").unlink()
    again = runs["tmp"] / "anon_fewer"
    assert main(["anonymize", str(fewer), str(again), "--profile", "tiny", "--params", str(runs["tmp"] / "params.yaml"),
                 "--steps", "2", "--pool-size", "20", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(fewer), str(again), "--out", str(report), "--recognizers", "dlib"]) == 0
    out = capsys.readouterr().out
    assert f"images read: real: 0 of {FACES - 1}; " in out
    assert f"removed from {real_store}: 4 kept output(s) of faces no longer in {fewer}" in out  # 1 face, 3 baselines
    left = kept_keys(real_store)
    assert {real_source(k) for k in left} < {real_source(k) for k in kept} and len(left) == 4 * (FACES - 1)
