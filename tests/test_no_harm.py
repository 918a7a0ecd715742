"""Nothing a mistake or a crash does may hurt data: folders inside one another are refused before anything is
written, a second writer of a folder is refused, every parameter is checked with its range before any work, an
MLflow store killed while being made is whole (or made again) on the next start, and a run that fails says why in
one line. Each case first reproduces what went wrong before."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image
from pipeline_helpers import fast_params, instance_at, run, write_faces

from anon_core.atomic import atomic_path
from anon_core.errors import FalcoError, ParamsError
from anon_core.folders import LOCK_FILE, check_separate, exclusive, reading
from orchestration.cli import main

FAST = ["--profile", "tiny", "--steps", "2", "--pool-size", "20", "--batch-size", "2", "--quiet"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_input_inside_the_output_is_refused_and_left_untouched(tmp_path, lfw_faces, capsys):
    out = tmp_path / "out"
    write_faces(out / "images", lfw_faces[:2], broken=False)  # the user's faces, inside the folder given as output
    before = _tree(out)
    assert main(["anonymize", str(out / "images"), str(out), *FAST]) == 2
    assert "is inside the output folder" in capsys.readouterr().err
    assert _tree(out) == before  # before: `falco anonymize OUT/images OUT` overwrote these with anonymized faces


@pytest.mark.parametrize("mode", ["aligned", "photo"])
def test_an_output_inside_a_pipeline_storage_is_refused(tmp_path, lfw_faces, capsys, mode):
    from orchestration.driver import bind_instance_and_storage

    write_faces(tmp_path / "faces", lfw_faces[:2])
    store = tmp_path / "store"
    released = store / "anonymized_images" / "m0" / "images"  # the folder `falco pipeline` names the dataset
    released.mkdir(parents=True)
    (tmp_path / "home").mkdir()
    bind_instance_and_storage(tmp_path / "home", store, fresh=False)  # as a first `falco pipeline` marks them
    before = _tree(store)
    for out in (released, store):
        assert main(["anonymize", str(tmp_path / "faces"), str(out), "--mode", mode, *FAST]) == 2
        assert capsys.readouterr().err == (
            f"falco: error: {out} is inside the storage of a `falco pipeline` ({store}), whose folders hold the "
            "pipeline's own values: the run's files (its journal, aligned real faces) would end up among them, in an "
            "anonymized dataset folder to be released; give an output folder outside it (nothing was written)\n")
    assert _tree(store) == before  # before: its journal, manifest and aligned real faces landed in `released`


@pytest.mark.parametrize("layout", ["same", "output_inside_input", "input_inside_output", "through_a_symlink"])
def test_one_overlap_rule_for_every_pair_of_folders(tmp_path, layout):
    data = tmp_path / "data"
    data.mkdir()
    other = {"same": data, "output_inside_input": data / "out", "input_inside_output": tmp_path}[layout] \
        if layout != "through_a_symlink" else tmp_path / "link" / "out"
    if layout == "through_a_symlink":
        (tmp_path / "link").symlink_to(data)
    with pytest.raises(FalcoError, match="same folder|is inside the"):
        check_separate(input_folder=data, output_folder=other)
    check_separate(input_folder=data, output_folder=tmp_path / "elsewhere", storage=None)


def test_a_second_writer_of_a_folder_is_refused_and_a_crashed_holder_leaves_no_stale_lock(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["/home/me/.venv/bin/falco", "anonymize", "my faces", "out", "--margin", "0.5"])
    with exclusive(folder, "output folder"):
        holder = subprocess.run(
            [sys.executable, "-c", "from anon_core.folders import exclusive\n"
                                   f"with exclusive(__import__('pathlib').Path({str(folder)!r}), 'output folder'):\n"
                                   "    pass"], capture_output=True, text=True, cwd=Path(__file__).parents[1])
        assert holder.returncode != 0 and "is in use by" in holder.stderr and f"PID {os.getpid()}" in holder.stderr
        assert "`falco anonymize 'my faces' out --margin 0.5`" in holder.stderr  # the holder's whole command
    # A holder killed with SIGKILL in the middle of writing a file: the kernel drops its lock, the next writer goes
    # ahead and removes the hidden temporary the kill left (a writer of its own keeps its temporaries).
    proc = subprocess.Popen([sys.executable, "-c", "import time\nfrom pathlib import Path\n"
                             "from anon_core.atomic import atomic_path\nfrom anon_core.folders import exclusive\n"
                             f"with exclusive(Path({str(folder)!r}), 'x'), atomic_path(Path({str(folder)!r}) / 'sub' / "
                             "'codes.npz') as tmp:\n"
                             "    tmp.write_bytes(b'half'); print('held', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [left] = (folder / "sub").glob(".codes.npz.*.tmp")
    with exclusive(folder, "storage", orphans_older_than_s=900):
        assert left.exists()  # where other machines' workers write, only one untouched for 15 minutes is an orphan
    with atomic_path(folder / "mine.npz") as mine, exclusive(folder, "output folder"):
        assert (folder / LOCK_FILE).exists()
        assert not left.exists() and mine.exists()


def test_a_folder_being_evaluated_is_not_rewritten_and_one_being_written_is_not_evaluated(tmp_path):
    """`falco evaluate` reads its run folders under a shared lock: readers go together, a writer waits its turn."""
    folder = tmp_path / "run"
    with exclusive(folder, "output folder"):  # `falco anonymize` writing it
        with pytest.raises(FalcoError, match=f"anonymized folder {folder} is being written by .*PID {os.getpid()}"):
            with reading(folder, "anonymized folder"):
                pass
    with reading(folder, "anonymized folder"), reading(folder, "anonymized folder"):  # two evaluations at once
        holder = subprocess.run(
            [sys.executable, "-c", "from pathlib import Path\nfrom anon_core.folders import exclusive\n"
                                   f"with exclusive(Path({str(folder)!r}), 'output folder'):\n    pass"],
            capture_output=True, text=True, cwd=Path(__file__).parents[1])
        assert holder.returncode != 0 and "is in use by a command reading it (`falco evaluate`)" in holder.stderr
    with exclusive(folder, "output folder"):  # once read, it can be written again
        pass


def test_a_command_that_fails_before_writing_leaves_no_folder_it_made(tmp_path):
    """`falco evaluate --out R` or `falco anonymize IN OUT` failing (bad weights, bad settings) before its first
    file: no empty R or OUT is left behind; a folder that was there, or one the command wrote into, stays."""
    for folder, before, write in ((tmp_path / "new" / "report", False, False), (tmp_path / "there", True, False),
                                  (tmp_path / "written", False, True)):
        if before:
            folder.mkdir()
        with pytest.raises(FalcoError, match="no weights"):
            with exclusive(folder, "report folder"):
                if write:
                    (folder / "metrics.csv").write_text("a\n")
                raise FalcoError("no weights")
        assert folder.exists() == (before or write)
    assert (tmp_path / "new").is_dir()  # only the folder the command was given is removed


def test_two_pipelines_on_one_storage_the_second_is_refused(tmp_path, lfw_faces):
    write_faces(tmp_path / "faces", lfw_faces[:2])
    fast_params(tmp_path / "params.yaml")
    with exclusive(tmp_path / "store", "storage"):  # what a first `falco pipeline` holds while it runs
        with dg.instance_for_test() as instance:
            with pytest.raises(FalcoError, match="storage .* is in use by"):
                run(tmp_path, instance)
    assert not (tmp_path / "store" / "real_images").exists()


def test_a_storage_inside_the_input_is_refused_before_anything_runs(tmp_path, lfw_faces):
    write_faces(tmp_path / "faces", lfw_faces[:2])
    fast_params(tmp_path / "params.yaml")
    from orchestration.driver import run_pipeline
    from orchestration.resources import NetworksResource, StorageResource

    with dg.instance_for_test() as instance:
        with pytest.raises(FalcoError, match="storage .* is inside the input folder"):
            run_pipeline(StorageResource(root=str(tmp_path / "faces" / "store"), input_dir=str(tmp_path / "faces")),
                         NetworksResource(params_path=str(tmp_path / "params.yaml")), instance=instance,
                         log=lambda *_: None)
    assert not (tmp_path / "faces" / "store").exists()


@pytest.mark.parametrize("override, message", [
    ({"optimization.steps": 0}, "optimization.steps = 0 must be in [1, 100000]"),
    ({"optimization.margin": 5.0}, "optimization.margin = 5.0 must be in"),
    ({"optimization.margin": float("nan")}, "optimization.margin = nan"),
    ({"optimization.lr": float("inf")}, "optimization.lr = inf must be a finite number"),
    ({"optimization.lambda_id": -10.0}, "optimization.lambda_id = -10.0 must be a finite number >= 0"),
    ({"optimization.gamma": -0.5}, "optimization.gamma = -0.5 must be in"),
    ({"inversion.steps": -5}, "inversion.steps = -5 must be in [1, 100000]"),
    ({"seed": -1}, "seed = -1 must be in [0, 4096)"),
    # degenerate settings that ran: a zero loss left the codes as the inversions, psi 0 made every fake w_avg
    ({"optimization.lambda_id": 0, "optimization.lambda_attr": 0, "optimization.lambda_consistency": 0},
     "invalid parameters: optimization.lambda_id/attr/consistency = (0.0, 0.0, 0.0) must be not all 0 (the loss"),
    ({"truncation_psi": 0.0}, "truncation_psi = 0.0 must be in (0, 1] (at 0 every fake is the average face"),
    ({"pool_size": float("inf")}, "pool_size = inf is not a valid int"),
    ({"optimization.steps": 10**20}, "optimization.steps = 100000000000000000000 must be in [1, 100000]"),
    # YAML's true/false: float(True) ran `lambda_id: true` as 1.0, `steps: true` as one step
    ({"optimization.lambda_id": True}, "optimization.lambda_id = True is not a number (YAML reads true/false"),
    ({"optimization.steps": True}, "optimization.steps = True is not a number"),
    ({"batch_size": False}, "batch_size = False is not a number"),
    ({"optimization.milestones": [0.5, True]}, "optimization.milestones = [0.5, True] is not a list of numbers"),
    ({"optimization.milestones": 0.5}, "optimization.milestones = 0.5 is not a list of numbers (e.g. [0.5, 0.75])"),
    ({"pool_size": "1e-3"}, "pool_size = '1e-3' is not a valid int"),
    # one error, one clause: pairing_k's range is pool_size's, so an empty pool said more than what was wrong
    ({"pool_size": 0}, "invalid parameters: pool_size = 0 must be >= 1$"),
    ({"pairing_k": 0, "pool_size": 30}, "invalid parameters: pairing_k = 0 must be in [1, pool_size] (pool_size = 30)$"),
    ({"pairing_k": 31, "pool_size": 30}, "pairing_k = 31 must be in [1, pool_size] (pool_size = 30)$"),
])
def test_every_parameter_is_checked_with_its_range(override, message):
    from anon_core.params import load_params

    with pytest.raises(ParamsError, match=re.escape(message).replace(r"\$", "$")):
        load_params("tiny", **override)


def test_a_params_file_without_the_profile_says_which_it_has(tmp_path):
    from anon_core.params import load_params

    (tmp_path / "params.yaml").write_text("defaults:\n  seed: 0\n")
    with pytest.raises(ParamsError, match=re.escape("profile 'tiny' is not in ") + ".*" + re.escape(
            "params.yaml (it has no 'profiles:' section); add it under 'profiles:'")):  # before: "(known: )"
        load_params("tiny", tmp_path / "params.yaml")


def test_a_wrong_value_in_the_file_is_reported_even_when_a_flag_replaces_it(tmp_path):
    import yaml

    from anon_core.params import load_params

    data = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    data["defaults"]["optimization"]["steps"] = "fifty"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=r"params\.yaml: optimization\.steps = 'fifty'"):
        load_params("tiny", path, **{"optimization.steps": 5})


def test_pipeline_flags_are_checked_before_any_run(tmp_path, lfw_faces, capsys, monkeypatch):
    write_faces(tmp_path / "faces", lfw_faces[:2])
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    code = main(["pipeline", "--input", str(tmp_path / "faces"), "--storage", str(tmp_path / "store"),
                 "--steps", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "--steps -1: must be in [1, 100000]" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()  # before: it failed after the whole prepare, in Dagster traces


def test_a_folder_without_a_usable_image_stops_with_one_clear_line(tmp_path, capfd, monkeypatch):
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "notes.txt").write_text("no face here")
    Image.new("RGB", (8, 8)).save(tmp_path / "faces" / "tiny.png")  # too small
    fast_params(tmp_path / "params.yaml")
    with dg.instance_for_test() as instance:
        summary = run(tmp_path, instance)
    assert summary.failed == ["prepare"]
    assert summary.errors["prepare"].startswith("real_images: no usable image in") and \
        "not_an_image: 1" in summary.errors["prepare"] and "too_small: 1" in summary.errors["prepare"]
    logged = capfd.readouterr().err  # Dagster's console log: the failure's message, no stack trace
    assert "FalcoError: no usable image in" in logged and "Stack Trace" not in logged and "File \"" not in logged
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))  # the command: its summary counts the failed run
    assert main(["pipeline", "--input", str(tmp_path / "faces"), "--storage", str(tmp_path / "cli_store"),
                 "--params", str(tmp_path / "params.yaml")]) == 1
    printed = capfd.readouterr()
    assert re.search(r"^pipeline FAILED in [\d.]+ s: 0 run\(s\) done, 1 failed, 0 up to date;", printed.out, re.M)
    assert "falco: error: prepare: real_images: no usable image in" in printed.err
    assert main(["anonymize", str(tmp_path / "faces"), str(tmp_path / "out"), *FAST]) == 1
    said = capfd.readouterr()
    assert "nothing was anonymized" in said.err
    # the summary names every file the run wrote (before: only manifest.csv and params.json)
    written = re.search(r"^results: .*\((.*)\)$", said.out, re.M).group(1)
    for name in sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")):
        assert name in written, (name, written)


def test_a_folder_of_non_images_is_refused_before_any_dagster_run(tmp_path):
    (tmp_path / "faces" / "sub").mkdir(parents=True)
    (tmp_path / "faces" / "a.jpg").write_text("a text file named .jpg")
    (tmp_path / "faces" / "sub" / "b.png").write_bytes(b"")
    fast_params(tmp_path / "params.yaml")
    with dg.instance_for_test() as instance:
        with pytest.raises(FalcoError, match=r"no image in .*faces: none of its 2 file\(s\) is a JPEG, PNG"):
            run(tmp_path, instance)  # before: an internal TypeCheckDidNotPass inside the prepare run
        assert not instance.get_runs()


def _mlflow_creator(db: Path) -> subprocess.Popen:
    code = ("from orchestration.tracking import MlflowResource\n"
            f"MlflowResource(tracking_uri='sqlite:///{db}').ensure_experiment()\nprint('ok')")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[1], start_new_session=True)


@pytest.mark.parametrize("kill_after", [0.5, 1.5, 2.5, 3.5])
def test_an_mlflow_store_killed_while_being_made_works_next_time(tmp_path, kill_after):
    db = tmp_path / "mlflow.db"
    proc = _mlflow_creator(db)
    time.sleep(kill_after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from orchestration.mlflow_store import _state

    assert not db.exists() or _state(db) == "complete"  # never half made
    again = _mlflow_creator(db)
    assert again.communicate(timeout=120)[0].strip() == "ok"


def test_two_processes_making_one_store_both_succeed_and_a_half_made_store_is_moved_aside(tmp_path):
    import sqlite3

    db = tmp_path / "mlflow.db"
    first, second = _mlflow_creator(db), _mlflow_creator(db)
    assert [p.communicate(timeout=180)[0].strip() for p in (first, second)] == ["ok", "ok"]

    half = tmp_path / "half" / "mlflow.db"  # what an older version left when killed mid-migration
    half.parent.mkdir()
    with sqlite3.connect(half) as con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        con.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")
        con.execute("CREATE TABLE runs (run_uuid VARCHAR(32))")
    proc = _mlflow_creator(half)
    out, err = proc.communicate(timeout=120)
    assert out.strip().endswith("ok") and "half-made MLflow store" in out
    assert [p.name for p in half.parent.glob("mlflow.db.half-made-*")]


def test_damaged_jpeg_data_is_rejected_as_corrupt_with_the_decoders_words(tmp_path):
    import io

    from skimage.data import astronaut

    from anon_core.data.image_io import ImageRejected, load_rgb

    buffer = io.BytesIO()
    Image.fromarray(astronaut()).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    middle = len(data) // 2
    (tmp_path / "ok.jpg").write_bytes(data)
    (tmp_path / "zeroed.jpg").write_bytes(data[:middle] + bytes(2000) + data[middle + 2000:])
    (tmp_path / "noise.jpg").write_bytes(data[:middle] + os.urandom(2000) + data[middle + 2000:])
    assert load_rgb(tmp_path / "ok.jpg").shape == (512, 512, 3)
    with pytest.raises(ImageRejected, match="Corrupt JPEG data") as zeroed:  # before: decoded as a garbled face
        load_rgb(tmp_path / "zeroed.jpg")
    assert zeroed.value.reason == "corrupt"
    with pytest.raises(ImageRejected) as noise:
        load_rgb(tmp_path / "noise.jpg")
    assert noise.value.reason == "corrupt"


def test_real_faces_kept_by_a_run_are_readable_by_their_owner_only(tmp_path, lfw_faces):
    from anon_core.data.align import AlignmentCache, FaceAligner
    from anon_core.data.sample import build_sample_dataset
    from anon_core.hashing import sha256_file

    [astronaut, *_] = build_sample_dataset(tmp_path / "sample", num_lfw=0)
    cache = AlignmentCache(tmp_path / "cache" / "align")
    FaceAligner(64).align_cached(astronaut, sha256_file(astronaut), cache)
    assert _private(tmp_path / "cache")

    write_faces(tmp_path / "faces", lfw_faces[:1], broken=False)
    fast_params(tmp_path / "params.yaml")
    with instance_at(tmp_path / "home") as instance:
        run(tmp_path, instance, stages=("prepare",))
    stored = list((tmp_path / "store" / "real_images" / "images").rglob("*.png"))
    assert stored and all((p.stat().st_mode & 0o777) == 0o600 for p in stored)
    assert _private(tmp_path / "store" / ".align_cache")  # the pipeline's cache lives in its storage
    assert _private(tmp_path / "store" / "real_inversions")  # codes that redraw the real faces
    assert _private(tmp_path / "store" / "real_features")  # FaRL embeddings of the real faces (hG: 0644)
    for asset in ("real_images", "real_inversions"):  # the folders themselves too: they were 0755
        assert ((tmp_path / "store" / asset).stat().st_mode & 0o777) == 0o700, asset

    # A storage an earlier version wrote (folders 0755, embeddings 0644) is made private by the next run, though
    # nothing in it is made again.
    for path in [tmp_path / "store" / "real_features", *(tmp_path / "store" / "real_features").iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (tmp_path / "store" / "real_images").chmod(0o755)
    with instance_at(tmp_path / "home") as instance:
        logged = []
        assert run(tmp_path, instance, stages=("prepare",), log=logged.append).failed == []
    assert any("real_features, real_images readable by their owner only" in line for line in logged), logged
    assert _private(tmp_path / "store" / "real_features") and _private(tmp_path / "store" / "real_images")


def _private(folder: Path) -> bool:
    written = list(folder.rglob("*"))
    return bool(written) and all((p.stat().st_mode & 0o777) == (0o700 if p.is_dir() else 0o600) for p in written)


def test_aligned_real_faces_stay_in_the_output_folder_or_are_removed_with_no_cache(tmp_path, lfw_faces, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # before: every run cached its faces in ~/.cache/falco/align
    write_faces(tmp_path / "in", lfw_faces[:3], broken=False)
    args = ["--profile", "tiny", "--steps", "2", "--pool-size", "8", "--quiet"]
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "kept"), *args]) == 0
    cache = tmp_path / "kept" / ".align_cache"
    assert len([p for p in cache.rglob("*") if p.is_file()]) >= 3 and _private(cache)
    # An erasure request: a person's photo is deleted from the input; the next run removes its crop from the cache
    import hashlib

    erased = tmp_path / "in" / "Person A" / "img_1.png"
    digest = hashlib.sha256(erased.read_bytes()).hexdigest()
    kept = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "in").rglob("*.png") if p != erased}
    assert {p.name.split(".")[0] for p in cache.rglob("*.png")} == kept | {digest}
    erased.unlink()
    (cache / digest[:2] / f".{digest}.png.1234.abcd.tmp").write_bytes(b"a killed write")
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "kept"), *args]) == 0
    assert {p.name.split(".")[0] for p in cache.rglob("*") if p.is_file()} == kept  # nothing of it, nor a temporary

    (tmp_path / "none" / ".align_cache-tmp-killed").mkdir(parents=True)  # what a killed --no-cache run leaves
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "none"), "--no-cache", *args]) == 0
    assert not [p.name for p in (tmp_path / "none").iterdir() if p.name.startswith(".align")]
    # the same images as a run with the cache (a first one: "kept" took its two images from its earlier batches of
    # three, equal to these up to float rounding)
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "cached"), *args]) == 0
    assert _tree(tmp_path / "none" / "images") == _tree(tmp_path / "cached" / "images")
    home = [p.relative_to(tmp_path / "home") for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert all(p.parts[:3] == (".cache", "falco", "models") for p in home)  # weights only, no face
    # --no-cache into a folder whose earlier run kept its cache: that cache goes too (it kept the crop of an input
    # deleted since, which only a run using the cache removes)
    (tmp_path / "in" / "Person A" / "img_0.png").unlink()
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "cached"), "--no-cache", *args]) == 0
    assert not [p.name for p in (tmp_path / "cached").iterdir() if p.name.startswith(".align")]

    # A photo-mode run into an aligned run's folder: no output there comes from its crops of real faces any more
    # (kept, or left by a killed --no-cache run), and they went nowhere (a photo-mode --no-cache run left them); an
    # aligned run drops the faces a photo run found
    (tmp_path / "kept" / ".align_cache-tmp-killed" / "ab").mkdir(parents=True)
    (tmp_path / "kept" / ".align_cache-tmp-killed" / "ab" / "face.png").write_bytes(b"a real face")
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "kept"), "--mode", "photo", *args]) == 0
    assert not [p.name for p in (tmp_path / "kept").iterdir() if p.name.startswith(".align")]
    assert (tmp_path / "kept" / ".detection_cache").is_dir()
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "kept"), *args]) == 0
    assert (tmp_path / "kept" / ".align_cache").is_dir() and not (tmp_path / "kept" / ".detection_cache").exists()
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "kept"), "--mode", "photo", "--no-cache",
                 *args]) == 0
    assert not [p.name for p in (tmp_path / "kept").iterdir() if p.name.endswith("_cache")]


def test_a_stopped_anonymize_resumes_from_its_journal_and_its_manifest_is_valid_meanwhile(tmp_path, lfw_faces):
    import numpy as np
    import pandas as pd

    write_faces(tmp_path / "in", lfw_faces[:8])
    args = ["--profile", "tiny", "--steps", "15", "--pool-size", "20", "--batch-size", "2", "--quiet"]
    cmd = [sys.executable, "-m", "orchestration.cli", "anonymize", str(tmp_path / "in"), str(tmp_path / "out"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            cwd=Path(__file__).parents[1])
    journal = tmp_path / "out" / ".journal"
    deadline = time.time() + 300
    while len(list(journal.glob("batch-*.npz"))) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # in the middle of a later batch
    proc.wait()
    finished = len(list(journal.glob("batch-*.npz")))
    assert 0 < finished < 4, "the run was not stopped in the middle"
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(manifest["status"]) <= {"ok", "pending", "rejected"} and (manifest["status"] == "pending").any()
    for name in manifest.loc[manifest["status"] == "ok", "output"]:
        assert (tmp_path / "out" / "images" / name).is_file()  # a row says ok only once its image is written
    assert (manifest.loc[manifest["status"] == "pending", "output"] != "").all()  # names the image it will have
    refused = subprocess.run([*cmd[:3], "evaluate", str(tmp_path / "in"), str(tmp_path / "out"), "--out",
                              str(tmp_path / "report")], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert refused.returncode == 2 and "has not finished" in refused.stderr, refused.stderr

    out = subprocess.run(cmd[:-1], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"{2 * finished} finished by an earlier run" in out.stdout
    uninterrupted = tmp_path / "fresh"  # run as the resumed one was (a fresh process: no state left by other tests)
    fresh = subprocess.run([*cmd[:5], str(uninterrupted), *args], capture_output=True, text=True,
                           cwd=Path(__file__).parents[1], timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "latents.npy"), np.load(uninterrupted / "latents.npy"))
    resumed = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False)
    assert (resumed["status"] != "pending").all()
    assert resumed.equals(pd.read_csv(uninterrupted / "manifest.csv", dtype=str, keep_default_na=False))


@pytest.mark.parametrize("damage", ["zeroed", "noise", "one_byte"])
def test_damaged_png_data_is_rejected_as_corrupt(tmp_path, damage):
    import io

    from skimage.data import astronaut

    from anon_core.data.image_io import ImageRejected, load_rgb

    buffer = io.BytesIO()
    Image.fromarray(astronaut()).save(buffer, "PNG")
    data, middle = buffer.getvalue(), len(buffer.getvalue()) // 2
    broken = {"zeroed": data[:middle] + bytes(500) + data[middle + 500:],
              "noise": data[:middle] + os.urandom(500) + data[middle + 500:],
              "one_byte": data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]}[damage]
    (tmp_path / "face.png").write_bytes(broken)
    with pytest.raises(ImageRejected, match="the decoder says") as rejected:
        load_rgb(tmp_path / "face.png")
    assert rejected.value.reason == "corrupt"


def test_a_rerun_after_the_input_changed_removes_its_own_stale_images_and_nothing_else(tmp_path, lfw_faces):
    """The output's images/ matches its manifest after every run: an input since removed, or now rejected, loses
    its anonymized image (before, it stayed beside a manifest that no longer listed it, or listed it rejected), a
    photo-mode run's images do not outlive it, face verdicts are the new run's, and files falco did not write are
    left alone."""
    import pandas as pd

    faces = write_faces(tmp_path / "in", lfw_faces[:4], broken=False) / "Person A"
    out = tmp_path / "out"
    assert main(["anonymize", str(tmp_path / "in"), str(out), *FAST]) == 0
    (out / "images" / "notes.txt").write_text("mine")  # the user's file in the output folder
    (out / "face_privacy.csv").write_text("verdicts on the previous images\n")
    (faces / "img_0.png").unlink()
    (faces / "img_1.png").write_bytes((faces / "img_1.png").read_bytes()[:200])  # truncated: now rejected
    assert main(["anonymize", str(tmp_path / "in"), str(out), *FAST]) == 0

    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    listed = set(manifest.loc[manifest["status"] == "ok", "output"])
    assert listed == {"Person A/img_2.png", "Person A/img_3.png"}
    pngs = {p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png")}
    assert pngs == listed
    assert (out / "images" / "notes.txt").read_text() == "mine"
    verdicts = pd.read_csv(out / "face_privacy.csv", dtype=str, keep_default_na=False)  # this run's, not the last's
    assert set(verdicts["output"]) == listed

    (faces / "img_1.png").unlink()
    for name in ("img_2.png", "img_3.png"):
        (faces / name).unlink()
    Image.fromarray(lfw_faces[5]).save(tmp_path / "in" / "other.png")
    assert main(["anonymize", str(tmp_path / "in"), str(out), *FAST]) == 0
    assert not (out / "images" / "Person A").exists()  # the folder its images emptied
    assert {p.name for p in (out / "images").iterdir()} == {"other.png", "notes.txt"}


def test_a_photo_mode_rerun_removes_the_images_of_photos_gone_from_the_input(tmp_path):
    """Photo mode replaces its manifest at the end of a run: the images the previous manifest listed and this run
    did not write go then (a run killed before keeps them, with the manifest that lists them)."""
    import shutil

    from anon_core.data.sample import build_sample_photos
    from anon_core.params import load_params
    from anon_core.photo_faces import PhotoSettings
    from anon_core.photos import anonymize_photos

    samples = tmp_path / "samples"
    build_sample_photos(samples)
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = sorted(p.name for p in samples.iterdir() if p.is_file())[:2]
    for name in names:
        shutil.copy(samples / name, inputs / name)
    params = load_params("tiny", pool_size=32, batch_size=2, **{"optimization.steps": 2})
    out = tmp_path / "out"
    anonymize_photos(inputs, out, params, PhotoSettings(), show_progress=False)
    written = {p.name for p in (out / "images").iterdir()}
    assert len(written) == 2
    (inputs / names[0]).unlink()
    anonymize_photos(inputs, out, params, PhotoSettings(), show_progress=False)
    left = {p.name for p in (out / "images").iterdir()}
    assert len(left) == 1 and left < written


def test_an_empty_input_folder_is_refused_before_the_output_folder_is_made(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / ".hidden").write_text("not an input")
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), *FAST]) == 2
    assert "no image in" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # before: created, holding only its lock file


def test_the_pipeline_says_how_many_inputs_it_rejected_and_why(tmp_path, lfw_faces, capsys, monkeypatch):
    """Before, `falco pipeline` finished with half the folder rejected and its output never said so."""
    write_faces(tmp_path / "faces", lfw_faces[:3])  # and an empty broken.jpg
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    params = fast_params(tmp_path / "params.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = main(["stage", "prepare", "--input", str(tmp_path / "faces"), "--storage", str(tmp_path / "store"),
                 "--params", str(params)])
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("input: "))
    assert line.startswith("input: 5 file(s), 2 rejected (") and "not_an_image 1" in line
    assert str(tmp_path / "store" / "real_images" / "all.parquet") in line


@pytest.mark.parametrize("mode", ["aligned", "photo"])
def test_a_link_in_the_output_folder_into_the_input_is_refused_before_any_write(tmp_path, lfw_faces, capsys, mode):
    write_faces(tmp_path / "in", lfw_faces[:2])
    before = _tree(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images").symlink_to(tmp_path / "in", target_is_directory=True)
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--mode", mode, *FAST]) == 2
    err = capsys.readouterr().err
    assert "is a link to" in err and "would overwrite the inputs" in err and "Traceback" not in err
    assert _tree(tmp_path / "in") == before


def test_a_manifest_falco_did_not_write_is_neither_overwritten_nor_obeyed(tmp_path, lfw_faces, capsys):
    write_faces(tmp_path / "in", lfw_faces[:2])
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    Image.fromarray(lfw_faces[5]).save(out / "images" / "mine.png")
    (out / "manifest.csv").write_text("input,output\nx,mine.png\n")
    assert main(["anonymize", str(tmp_path / "in"), str(out), *FAST]) == 2
    assert "was not written by falco" in capsys.readouterr().err
    assert (out / "images" / "mine.png").is_file() and (out / "manifest.csv").read_text() == "input,output\nx,mine.png\n"


def test_a_rerun_writes_again_the_images_deleted_since_the_journal_finished_them(tmp_path, lfw_faces):
    write_faces(tmp_path / "in", lfw_faces[:3])
    out = tmp_path / "out"
    assert main(["anonymize", str(tmp_path / "in"), str(out), *FAST]) == 0
    written = _tree(out / "images")
    victim = out / "images" / sorted(written)[1]
    victim.unlink()
    assert main(["anonymize", str(tmp_path / "in"), str(out), *FAST]) == 0  # every batch from the journal
    assert victim.is_file() and set(_tree(out / "images")) == set(written)


def test_a_file_where_a_folder_goes_and_a_folder_where_a_file_goes_are_one_line(tmp_path, lfw_faces, capsys):
    write_faces(tmp_path / "in", lfw_faces[:2])
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "a_file"), *FAST]) == 2
    assert "is a file (or inside one) where a folder is needed" in capsys.readouterr().err
    (tmp_path / "out" / "manifest.csv").mkdir(parents=True)
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "a folder is there where the file goes" in err and "Traceback" not in err


def test_a_relative_or_empty_dagster_home_is_used_not_a_traceback(tmp_path, monkeypatch):
    import orchestration.driver as driver

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(driver, "DEFAULT_DAGSTER_HOME", tmp_path / "default_home")
    for value, home in (("relative_home", tmp_path / "relative_home"), ("", tmp_path / "default_home")):
        monkeypatch.setenv("DAGSTER_HOME", value)
        instance = driver.dagster_instance()  # before: Dagster's "must be an absolute path" stack trace
        try:
            assert Path(instance.root_directory) == home and os.environ["DAGSTER_HOME"] == str(home)
        finally:
            instance.dispose()


def test_an_empty_path_is_refused_not_taken_as_the_current_folder(tmp_path, monkeypatch, capsys):
    """`falco anonymize "$IN" out` with IN unset anonymized the current folder (the whole checkout); an empty output
    wrote the run's files into it."""
    monkeypatch.chdir(tmp_path)
    for args in (["anonymize", "", "out"], ["anonymize", "in", ""], ["evaluate", "in", "out", "--out", ""],
                 ["pipeline", "--input", ""], ["sample-data", ""]):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2
        assert "an empty path (an unset shell variable?); give the folder or file" in capsys.readouterr().err
    # an empty URI or list of names fell back to the default silently (the project's store, every recognizer)
    for args, message in ((["runs", "compare", "--tracking-uri", ""], "an empty value (an unset shell variable?)"),
                          (["evaluate", "in", "out", "--out", "r", "--recognizers", ""], "an empty value"),
                          (["evaluate", "in", "out", "--out", "r", "--recognizers", ", ,"], "names nothing")):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_flag_is_reported_by_its_sub_command(tmp_path, monkeypatch, capsys):
    """Before: `falco anonymize IN OUT --stesp 2` printed the top-level usage (`falco [-h] {anonymize,...}`), which
    does not show the flag meant."""
    monkeypatch.chdir(tmp_path)
    for args, usage, error in ((["anonymize", "in", "out", "--stesp", "2"], "usage: falco anonymize ",
                                "falco anonymize: error: unrecognized arguments: --stesp 2"),
                               (["runs", "compare", "--nope"], "usage: falco runs compare ",
                                "falco runs compare: error: unrecognized arguments: --nope"),
                               (["pipeline", "--margn", "0.5"], "usage: falco pipeline ",
                                "falco pipeline: error: unrecognized arguments: --margn 0.5")):
        with pytest.raises(SystemExit) as stop:
            main(args)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith(usage) and err.rstrip().endswith(error)
    assert list(tmp_path.iterdir()) == []


def test_sample_data_refuses_a_folder_of_someone_elses_files(tmp_path, capsys):
    """`falco sample-data DIR` overwrote DIR/README.txt and DIR/images/astronaut.png of a user's folder."""
    user = tmp_path / "mine"
    (user / "images").mkdir(parents=True)
    (user / "README.txt").write_text("my notes")
    (user / "images" / "astronaut.png").write_bytes(b"my picture")
    for folder in (user / "images", user):  # sample-named files without its README, and a README of the user's
        before = _tree(user)
        assert main(["sample-data", str(folder)]) == 2
        assert f"falco: error: {folder} holds files the sample data does not write" in capsys.readouterr().err
        assert _tree(user) == before
    assert main(["sample-data", str(tmp_path / "new"), "--photos", str(user)]) == 2  # photos: the same rule
    assert _tree(user) == before
    assert main(["sample-data", str(tmp_path / "new"), "--photos", str(tmp_path / "photos")]) == 0
    assert main(["sample-data", str(tmp_path / "new"), "--photos", str(tmp_path / "photos")]) == 0  # its own: again
    assert main(["sample-data", str(tmp_path / "small"), "--size", "0"]) == 2
    assert capsys.readouterr().err.endswith("falco: error: size must be between 32 (the smallest image falco reads) and 4096 px, "
                                            "got 0\n")


@pytest.mark.parametrize("stopped", [True, False])
def test_a_stop_that_a_step_turned_into_another_error_still_stops_the_pipeline(tmp_path, lfw_faces, monkeypatch,
                                                                               stopped):
    """A Ctrl-C landing inside torch's tensor-from-list conversion comes out of the step as torch's ValueError: the
    run was recorded FAILED and the pipeline went on to the next shards. A failure while a stop signal has come is
    the stop (tiny's in-process executor: the step runs in this process)."""
    import anon_core.stages as stages
    from orchestration import stop_request

    write_faces(tmp_path / "faces", lfw_faces[:2])
    fast_params(tmp_path / "params.yaml")

    def swallowed_interrupt(*args, **kwargs):
        raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'")

    monkeypatch.setattr(stages, "invert_images", swallowed_interrupt)
    with stop_request.watching(lambda: stopped), dg.instance_for_test() as instance:
        if stopped:
            with pytest.raises(KeyboardInterrupt):
                run(tmp_path, instance)
        else:
            summary = run(tmp_path, instance)
            assert summary.failed == ["prepare"] and "could not determine the shape" in summary.errors["prepare"]


@pytest.mark.parametrize("mode", ["aligned", "photo"])
def test_a_users_own_file_where_an_output_goes_is_not_overwritten(tmp_path, lfw_faces, capsys, mode):
    """A user's `images/Person A/img_1.png` in the output folder was replaced by the anonymized face of that name,
    in a new folder and beside an earlier run's outputs alike."""
    write_faces(tmp_path / "in", lfw_faces[:2], broken=False)
    out = tmp_path / "out"
    mine = out / "images" / "Person A" / "img_1.png"
    mine.parent.mkdir(parents=True)
    Image.fromarray(lfw_faces[7]).save(mine)
    before = _tree(out)
    assert main(["anonymize", str(tmp_path / "in"), str(out), "--mode", mode, *FAST]) == 2
    assert capsys.readouterr().err == (
        f"falco: error: {mine}: falco did not write this (no manifest of {out} names it), and this run would "
        "overwrite it with its outputs of the same name; move it away or give an output folder of its own "
        "(nothing was written)\n")
    assert _tree(out) == before
    mine.rename(tmp_path / "mine.png")  # moved away: the run goes; then the user's file comes back with a new input
    assert main(["anonymize", str(tmp_path / "in"), str(out), "--mode", mode, *FAST]) == 0
    Image.fromarray(lfw_faces[3]).save(tmp_path / "in" / "Person A" / "img_2.png")
    (tmp_path / "mine.png").rename(out / "images" / "Person A" / "img_2.png")
    before = _tree(out)
    assert main(["anonymize", str(tmp_path / "in"), str(out), "--mode", mode, *FAST]) == 2
    assert "img_2.png: falco did not write this" in capsys.readouterr().err
    before.pop(LOCK_FILE), (after := _tree(out)).pop(LOCK_FILE)  # the lock names its last holder
    assert after == before  # the earlier run stays whole too


@pytest.mark.parametrize("command", ["anonymize", "pipeline"])
def test_an_option_of_the_other_mode_is_refused_not_ignored(tmp_path, lfw_faces, capsys, command, monkeypatch):
    """`--min-face-size 80` without `--mode photo` ran the aligned dataset graph, the option silently unused."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    write_faces(tmp_path / "in", lfw_faces[:2])
    where = ([str(tmp_path / "in"), str(tmp_path / "out")] if command == "anonymize"
             else ["--input", str(tmp_path / "in"), "--storage", str(tmp_path / "out")])
    for mode, flags, message in (
            ("aligned", ["--min-face-size", "80", "--cover", "blur"],
             "--min-face-size, --cover are for photo mode only; aligned mode anonymizes one face per image (drop "
             "them, or add --mode photo)"),
            ("photo", ["--no-align"], "--no-align is for aligned mode only; photo mode reads every image of the folder "
             "as a photo and aligns each face itself (drop it, or use --mode aligned)"),
            ("photo", ["--align-detector", "dlib"] if command == "anonymize" else ["--align"],
             ("--align-detector" if command == "anonymize" else "--align") + " is for aligned mode only; photo mode reads every image of the folder as a photo and "
             "aligns each face itself (drop it, or use --mode aligned)")):
        assert main([command, *where, "--mode", mode, *flags, "--profile", "tiny"]) == 2
        assert capsys.readouterr().err == f"falco: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, storage or Dagster home made


def test_a_cache_pruned_while_another_process_writes_into_it_leaves_that_write_alone(tmp_path):
    """The aligned-crop and detection caches are pruned by one asset while shards of another run may be filling them
    (the storage is shared): the prune removed every temporary, so the writer's rename failed and its run with it.
    Only a killed writer's temporary goes; an entry of a digest not kept goes either way."""
    from anon_core.hashing import prune_by_digest

    cache, sha = tmp_path / "cache", "ab" * 32
    (cache / "cd").mkdir(parents=True)
    (cache / "cd" / f"{'cd' * 32}.k.json").write_text("{}")  # a photo removed from the input
    proc = subprocess.Popen([sys.executable, "-c", "import time\nfrom pathlib import Path\n"
                             "from anon_core.atomic import atomic_path\n"
                             f"with atomic_path(Path({str(cache)!r}) / 'ab' / '{sha}.k.json') as tmp:\n"
                             "    tmp.write_bytes(b'{}'); print('held', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert proc.stdout.readline().strip() == "held"
        assert prune_by_digest(cache, set()) == 1
        [writing] = (cache / "ab").glob(".*.tmp")
        assert not (cache / "cd").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    prune_by_digest(cache, set())  # now a killed writer's
    assert not writing.exists() and list(cache.iterdir()) == []


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path):
    """A full disk said only "No space left on device": a write() names no file. /dev/full fails every write so."""
    from orchestration.cli import file_error

    target = tmp_path / "images" / "a.png"
    with pytest.raises(OSError) as info:
        with atomic_path(target), open("/dev/full", "wb", buffering=0) as full:
            full.write(b"\x89PNG")
    assert file_error(info.value) == (f"No space left on device: {target}; free some space there, or write "
                                      "elsewhere, then run the same command again")
    assert list(target.parent.iterdir()) == []  # no temporary left


def test_a_refused_pipeline_leaves_no_dagster_home(tmp_path, lfw_faces, monkeypatch, capsys):
    """A pipeline its checks refused (here: its storage inside its input) still made $DAGSTER_HOME's instance."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    write_faces(tmp_path / "faces", lfw_faces[:2])
    before = _tree(tmp_path / "faces")
    assert main(["pipeline", "--input", str(tmp_path / "faces"), "--storage", str(tmp_path / "faces" / "store"),
                 "--profile", "tiny"]) == 2
    assert "is inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"] and _tree(tmp_path / "faces") == before


def test_a_folder_without_falcos_manifest_keeps_the_files_a_run_would_write_beside_it(tmp_path, lfw_faces, capsys):
    """Without a manifest, a user's own params.json, latents.npy and losses.csv were overwritten and their
    face_privacy.csv deleted; after the user removed a run's manifest, its re-run said "falco did not write this"."""
    write_faces(tmp_path / "in", lfw_faces[:2], broken=False)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("params.json", "face_privacy.csv"):
        (out / name).write_text("mine\n")
    before = _tree(out)
    assert main(["anonymize", str(tmp_path / "in"), str(out), *FAST]) == 2
    assert capsys.readouterr().err == (
        f"falco: error: {out} holds params.json, face_privacy.csv but no manifest.csv of falco's: a run would "
        "overwrite or remove them; give an output folder of its own (new, empty, or an earlier falco anonymize "
        "output), or move them away (nothing was written)\n")
    assert _tree(out) == before

    run = tmp_path / "run"
    assert main(["anonymize", str(tmp_path / "in"), str(run), *FAST]) == 0
    manifest = (run / "manifest.csv").read_bytes()
    (run / "manifest.csv").unlink()
    assert main(["anonymize", str(tmp_path / "in"), str(run), *FAST]) == 2
    assert "(a falco journal is there: was its manifest.csv removed? put it back to resume)" in capsys.readouterr().err
    (run / "manifest.csv").write_bytes(manifest)
    assert main(["anonymize", str(tmp_path / "in"), str(run), *FAST]) == 0  # put back: every batch from the journal


def test_a_fifo_where_falco_reads_a_file_of_its_own_is_refused_not_waited_on(tmp_path, lfw_faces, capsys):
    """A FIFO named manifest.csv in the output folder (or report.md in a report folder) blocked the command forever."""
    write_faces(tmp_path / "in", lfw_faces[:2], broken=False)
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "manifest.csv")
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), *FAST]) == 2  # returns: nothing opened it
    assert "manifest.csv was not written by falco" in capsys.readouterr().err
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "run"), *FAST]) == 0
    (tmp_path / "report").mkdir()
    os.mkfifo(tmp_path / "report" / "report.md")
    assert main(["evaluate", str(tmp_path / "in"), str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 2
    assert "holds report.md, and not a report falco wrote" in capsys.readouterr().err


def test_the_demo_targets_leave_an_exported_dagster_home_alone(tmp_path):
    """README's hints export DAGSTER_HOME (a cluster's instance, a home of a storage's own); `make clean-demo` deleted
    whatever it named (`rm -rf $(DAGSTER_HOME)`), and `make demo` recorded into it. Both now use the project's own
    `.dagster_home`; `make ui` still shows the exported one."""
    project = Path(__file__).resolve().parents[1]
    theirs = tmp_path / "their-instance"
    env = {**os.environ, "DAGSTER_HOME": str(theirs)}
    planned = subprocess.run(["make", "-n", "clean-demo", "demo"], cwd=project, env=env, capture_output=True,
                             text=True, check=True).stdout
    assert str(theirs) not in planned
    assert f"rm -rf outputs/pipeline outputs/photos {project / '.dagster_home'} " in planned
    assert f"DAGSTER_HOME={project / '.dagster_home'} .venv/bin/falco pipeline" in planned
    ui = subprocess.run(["make", "-n", "ui"], cwd=project, env=env, capture_output=True, text=True, check=True).stdout
    assert f"DAGSTER_HOME={theirs} .venv/bin/python -c " in ui and ".venv/bin/dagster dev -m orchestration" in ui
