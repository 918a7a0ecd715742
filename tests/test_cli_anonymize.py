"""`falco anonymize` end to end on the tiny profile: outputs, rejections, manifest, determinism."""

import csv
import io
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pipeline_helpers import stopped_at_call

from orchestration.cli import main

FAST = ["--profile", "tiny", "--steps", "3", "--pool-size", "50", "--batch-size", "2", "--quiet"]


@pytest.fixture
def face_folder(tmp_path, lfw_faces):
    root = tmp_path / "in"
    (root / "Some Person").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(lfw_faces[i]).save(root / "Some Person" / f"face_{i}.jpg", quality=95)
    Image.fromarray(lfw_faces[3]).save(root / "zoë.png")
    (root / "notes.jpg").write_text("this is not an image")
    noise = np.random.default_rng(0).integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "noise.png")  # an image, but no face in it
    return root


def _manifest(out):
    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_anonymize_writes_images_manifest_latents_and_params(face_folder, tmp_path, capsys):
    out = tmp_path / "out"
    # copies: one of a face (anonymized again, and said to be a copy), one of the text file (rejected, not counted)
    person = face_folder / "Some Person"
    (person / "face_0_copy.jpg").write_bytes((person / "face_0.jpg").read_bytes())
    (face_folder / "notes_copy.jpg").write_text("this is not an image")
    assert main(["anonymize", str(face_folder), str(out), *FAST, "--margin", "0.2", "--seed", "5"]) == 0
    rows = _manifest(out)
    by_input = {r["input"]: r for r in rows}
    assert set(by_input) == {"Some Person/face_0.jpg", "Some Person/face_1.jpg", "Some Person/face_2.jpg",
                             "Some Person/face_0_copy.jpg", "zoë.png", "notes.jpg", "notes_copy.jpg", "noise.png"}
    assert by_input["Some Person/face_0_copy.jpg"]["duplicate_of"] == "Some Person/face_0.jpg"  # the first, sorted
    assert by_input["notes_copy.jpg"]["duplicate_of"] == "notes.jpg"
    assert by_input["notes.jpg"]["status"] == "rejected" and by_input["notes.jpg"]["reason"] == "not_an_image"
    assert by_input["noise.png"]["status"] == "rejected" and by_input["noise.png"]["reason"] == "no_face"
    assert by_input["zoë.png"]["faces_seen"] == "1"
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 5

    latents = np.load(out / "latents.npy")
    assert latents.shape == (5, 10, 128) and latents.dtype == np.float32
    assert [int(r["latent_index"]) for r in ok] == [0, 1, 2, 3, 4]
    written = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png"))
    assert written == sorted(r["output"] for r in ok)
    assert by_input["Some Person/face_1.jpg"]["output"] == "Some Person/face_1.png"
    with Image.open(out / "images" / "zoë.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert all(0 <= int(r["fake_index"]) < 50 for r in ok)

    record = json.loads((out / "params.json").read_text())
    assert record["params"]["seed"] == 5 and record["params"]["optimization"]["margin"] == 0.2
    assert record["params"]["optimization"]["steps"] == 3 and record["params"]["pool_size"] == 50
    printed = capsys.readouterr().out
    assert "5 anonymized (1 the same file as another input: column duplicate_of in the manifest), 3 rejected " \
           "(no_face: 1, not_an_image: 2)" in printed
    # the whole command's time, not only the anonymizing's: its parts add up to it
    finished = re.search(r"finished in ([\d.]+) s: anonymizing ([\d.]+) s, privacy check ([\d.]+) s, the rest "
                         r"([\d.]+) s", printed)
    total, *parts = (float(x) for x in finished.groups())
    assert parts[0] > 0 and parts[1] > 0 and abs(total - sum(parts)) <= 0.15
    assert len((out / "losses.csv").read_text().splitlines()) == 1 + 3


def test_the_command_line_loads_no_heavy_library_before_a_sub_command_runs():
    """`falco --help`, a typo's message, and every sub-command's parsing load neither Dagster, torch, pandas nor numpy
    (parsing took 1.4 s here, a second of it Dagster's import, also for `falco anonymize`, which never uses it)."""
    heavy = ("dagster", "torch", "pandas", "numpy", "mlflow", "PIL", "dlib")
    probe = ("import sys; from orchestration.cli import parse_command; parse_command(sys.argv[1:]); "
             f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    for argv in (["pipeline", "--margin", "0,0.5"], ["evaluate", "r", "a", "--out", "o"], ["runs", "compare"],
                 ["anonymize", "in", "out", "--mode", "photo"], ["stage", "prepare"], ["models", "list"]):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == "[]", (argv, done.stdout, done.stderr)
    help_text = subprocess.run([sys.executable, "-m", "orchestration.cli", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "sample-data" in help_text.stdout


def test_same_arguments_give_bit_identical_latents(face_folder, tmp_path, single_thread):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["anonymize", str(face_folder), str(a), *FAST]) == 0
    assert main(["anonymize", str(face_folder), str(b), *FAST]) == 0
    assert (a / "latents.npy").read_bytes() == (b / "latents.npy").read_bytes()
    assert (a / "images" / "zoë.png").read_bytes() == (b / "images" / "zoë.png").read_bytes()


def test_user_errors_are_one_line_messages(face_folder, tmp_path, capsys):
    assert main(["anonymize", str(tmp_path / "missing"), str(tmp_path / "o"), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, "--pool-size", "0"]) == 2
    assert capsys.readouterr().err == "falco: error: --pool-size 0: must be >= 1\n"  # the flag, one clause
    assert main(["anonymize", str(face_folder), str(face_folder / "out"), *FAST]) == 2
    assert "inside the input folder" in capsys.readouterr().err


def test_output_names_never_collide_with_each_other_or_with_an_output_folder():
    from pathlib import Path

    from anon_core.data.scan import ScannedFile
    from anon_core.ingest import output_names

    def names(*relpaths):
        return output_names([ScannedFile(Path("/in") / p, p, None, None, None) for p in relpaths])

    assert names("img.bmp", "img.tiff") == {"img.bmp": "img.png", "img.tiff": "img.tiff.png"}  # file vs file
    assert names("a.jpg", "a.png") == {"a.jpg": "a.jpg.png", "a.png": "a.png"}  # a PNG keeps its name
    # A file whose `.png` name is a folder other outputs go in keeps its extension, whichever comes first.
    assert names("a.jpg", "a.png/inner.png") == {"a.jpg": "a.jpg.png", "a.png/inner.png": "a.png/inner.png"}
    assert names("a.jpg", "a.jpg.png/x.png", "a.png/inner.png")["a.jpg"] == "a.jpg~2.png"
    for relpaths in (["a.jpg", "a.png", "a.jpg.png", "a.png.png/b.png", "b/c.jpg", "b/c.png/d.jpg"],
                     ["x.jpg", "x.jpg.png", "x.png", "x.tif"]):
        out = list(names(*relpaths).values())
        assert len(set(out)) == len(out)
        assert not {str(p) for name in out for p in Path(name).parents} & set(out)  # no output is a folder of another


def test_output_names_fit_the_file_systems_255_bytes():
    """A 255-byte `x.jpg` beside `x.png` would be written as `x.jpg.png`, longer than any Linux or macOS file system
    allows (the run failed after all its work with "File name too long"): the name is cut and told apart by a
    digest."""
    from pathlib import Path

    from anon_core.data.scan import ScannedFile
    from anon_core.ingest import output_names

    stems = ["N" * 251, "é" * 125, "d/" + "N" * 251]  # 255 bytes with the extension; é is 2 bytes
    relpaths = [stem + ext for stem in stems for ext in (".jpg", ".png", ".tif")]
    out = output_names([ScannedFile(Path("/in") / p, p, None, None, None) for p in relpaths])
    assert all(len(Path(name).name.encode()) <= 255 and name.endswith(".png") for name in out.values())
    assert len(set(out.values())) == len(relpaths)
    assert out["N" * 251 + ".png"] == "N" * 251 + ".png" and out["d/" + "N" * 251 + ".jpg"].startswith("d/NNN")
    assert out == output_names([ScannedFile(Path("/in") / p, p, None, None, None) for p in reversed(relpaths)])


def test_an_output_name_that_is_a_folder_of_outputs_does_not_stop_the_run(tmp_path, lfw_faces, capsys):
    edge = tmp_path / "edge"
    (edge / "a.png").mkdir(parents=True)
    Image.fromarray(lfw_faces[0]).save(edge / "a.jpg", quality=95)
    Image.fromarray(lfw_faces[1]).save(edge / "a.png" / "inner.png")
    out = tmp_path / "out"
    assert main(["anonymize", str(edge), str(out), *FAST, "--steps", "2"]) == 0
    rows = {r["input"]: r for r in _manifest(out)}
    assert {k: (r["status"], r["output"]) for k, r in rows.items()} == {
        "a.jpg": ("ok", "a.jpg.png"), "a.png/inner.png": ("ok", "a.png/inner.png")}
    assert (out / "images" / "a.jpg.png").is_file() and (out / "images" / "a.png" / "inner.png").is_file()
    assert "2 anonymized" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["aligned", "photo"])
def test_a_file_that_is_no_image_does_not_take_the_name_of_the_image_beside_it(tmp_path, lfw_faces, mode):
    """`x.gif` sorts before `x.png` and both would be written as `x.png`: the GIF, rejected, takes no name."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(lfw_faces[0]).save(folder / "x.gif")
    Image.fromarray(lfw_faces[1]).save(folder / "x.png")
    out = tmp_path / "out"
    args = ["--mode", "photo", "--min-anonymize-size", "20"] if mode == "photo" else []
    assert main(["anonymize", str(folder), str(out), *FAST, "--steps", "2", *args]) in (0, 1)  # 1: privacy check
    rows = {r["input"]: r for r in _manifest(out) if r.get("kind", "photo") == "photo"}
    assert rows["x.gif"]["status"] == "rejected" and rows["x.gif"]["output"] == ""
    assert rows["x.png"]["status"] == "ok" and rows["x.png"]["output"] == "x.png"
    assert (out / "images" / "x.png").is_file() and not (out / "images" / "x.png.png").exists()


@pytest.mark.parametrize("device", ["banana", "mps", "meta"])
def test_a_device_falco_cannot_use_is_one_line_before_any_work(face_folder, tmp_path, capsys, device):
    out = tmp_path / "o"
    assert main(["anonymize", str(face_folder), str(out), *FAST, "--device", device]) == 2
    err = capsys.readouterr().err
    assert err == f"falco: error: --device {device}: not a device this machine has; use cpu or cuda[:N]\n"
    assert not out.exists()  # refused before the output folder was touched


def test_cuda_without_a_gpu_keeps_its_own_message(face_folder, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, "--device", "cuda:0"]) == 2
    assert "--device cuda:0 was asked for, but no CUDA device is visible to torch; use --device cpu" in \
        capsys.readouterr().err


@pytest.mark.parametrize("seed", [str(10**20), str(4096)])  # 4096 * 2**20 = 2**32: torch would draw seed 0's pool
def test_a_seed_beyond_the_fake_pools_32_bit_seeds_is_one_line(face_folder, tmp_path, capsys, seed):
    assert main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert err == f"falco: error: --seed {seed}: must be in [0, 4096) (fake i of the pool is drawn from torch seed " \
                  "seed * 2**20 + i, and torch keeps 32 bits of a seed)\n"


@pytest.mark.parametrize("flag, value, shown", [("--margin", "1e400", "'1e400' (inf)"), ("--margin", "nan", "'nan'"),
                                               ("--lambda-consistency", "-inf", "'-inf'")])
def test_a_value_that_is_not_finite_is_refused_as_typed(face_folder, tmp_path, capsys, flag, value, shown):
    """`--margin 1e400` was refused as "--margin inf: must be in [0, 1]", naming a value the user never typed."""
    with pytest.raises(SystemExit) as stop:
        main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, f"{flag}={value}"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"falco anonymize: error: argument {flag}: {shown} is not a finite number"
    assert not (tmp_path / "o").exists()


def test_errors_name_the_flag_that_gave_the_value_and_the_file_otherwise(face_folder, tmp_path, capsys):
    missing = tmp_path / "nonexistent.csv"
    assert main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, "--labels", str(missing)]) == 2
    assert capsys.readouterr().err == f"falco: error: --labels {missing}: is not a file\n"
    assert main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, "--mode", "photo",
                 "--min-face-size", "5"]) == 2
    assert capsys.readouterr().err == \
        "falco: error: --min-face-size 5: must be a whole number >= 12 (MTCNN's smallest window)\n"

    import yaml

    from anon_core.params import DEFAULT_PARAMS_PATH

    data = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    data["photo"]["min_face_size"] = 5
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    assert main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, "--mode", "photo", "--params", str(params),
                 "--min-anonymize-size", "0"]) == 2
    assert capsys.readouterr().err == (
        "falco: error: --min-anonymize-size 0: must be a whole number >= 1; "
        f"{params}: photo.min_face_size = 5 must be a whole number >= 12 (MTCNN's smallest window)\n")

    data["photo"]["min_face_size"] = 16
    data["checks"]["privacy_max_match_share"] = 5  # the release gate: refused in aligned mode too, before any work
    params.write_text(yaml.safe_dump(data))
    assert main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, "--params", str(params)]) == 2
    assert capsys.readouterr().err.startswith(
        f"falco: error: {params}: checks.privacy_max_match_share = 5 must be a share between 0 and 1")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_with_one_line_and_the_shells_exit_code(face_folder, tmp_path, sig):
    """Ctrl-C reaches a sweep script and the command it runs (the terminal's process group): the command stops with
    one line, and so does the script, instead of going on to its next command. SIGTERM (`kill`, `timeout`, a
    container's stop) goes to the command alone, also when it runs as a script's background job (`falco ... &`),
    which starts with SIGINT ignored."""
    import os
    import shlex
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "orchestration.cli", "anonymize", str(face_folder), str(out), "--profile", "tiny",
           "--steps", "100000", "--pool-size", "50", "--batch-size", "2", "--quiet"]
    if sig == "SIGINT":
        sweep = f"for steps in 100000 200000; do {shlex.join(cmd)}; echo next command; done"
        proc = subprocess.Popen(["bash", "-c", sweep], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 120
    while not (out / ".falco.lock").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    time.sleep(2)  # into the networks' start or the optimization
    if sig == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if sig == "SIGINT" else proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"still running 60 s after {sig}:\n{stdout}{stderr}")
    # it ends as killed by the signal (the shell's 130 or 143), so bash stopped the loop
    assert proc.returncode == -getattr(signal, sig), stdout + stderr
    assert "next command" not in stdout
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.strip().splitlines() == [
        f"falco: stopped ({'Ctrl-C' if sig == 'SIGINT' else sig}); run the same command again to resume where it "
        "stopped"]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_in_the_instant_a_command_ends_stops_it_without_a_traceback(sig):
    """Ctrl-C (or SIGTERM) just as a command's work is done, once its own handlers are put back: it ends as killed
    by that signal (a sweep script stops), with no KeyboardInterrupt traceback from the exit handlers."""
    import subprocess
    import sys

    finished_then_stopped = (
        "import os, signal, orchestration.cli as cli\n"
        f"cli.main = lambda argv=None: os.kill(os.getpid(), signal.{sig}) or 0  # the work done, then the signal\n"
        "cli.run()\n")
    proc = subprocess.run([sys.executable, "-c", finished_then_stopped], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -getattr(signal, sig), proc.stderr
    assert proc.stderr == ""


def test_a_cuda_index_beyond_the_machines_gpus_is_one_line(face_folder, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, "--device", "cuda:3"]) == 2
    assert capsys.readouterr().err == "falco: error: --device cuda:3: this machine has 1 CUDA device(s); use cuda:N " \
                                      "with N < 1, or cpu\n"
    assert not (tmp_path / "o").exists()


def test_unaligned_images_that_are_not_square_are_flagged_as_stretched(tmp_path, lfw_faces, capsys):
    folder = tmp_path / "crops"
    folder.mkdir()
    Image.fromarray(lfw_faces[0]).save(folder / "square.png")
    Image.fromarray(lfw_faces[1][:, 8:-8]).save(folder / "tall.png")  # 48 x 64: not square
    out = tmp_path / "out"
    assert main(["anonymize", str(folder), str(out), *FAST, "--steps", "2", "--no-align"]) == 0
    rows = {r["input"]: r for r in _manifest(out)}
    assert rows["square.png"]["status"] == "ok" and rows["square.png"]["reason"] == ""
    tall = rows["tall.png"]
    assert tall["status"] == "ok" and tall["reason"] == "stretched"
    assert "48 x 64, not square" in tall["detail"] and "--no-align" in tall["detail"]
    assert "2 anonymized, 0 rejected, 1 not square and stretched" in capsys.readouterr().out


def test_the_manifest_says_which_frames_and_transparency_an_input_lost(tmp_path, lfw_faces):
    """Each input is read as one RGB image: a multi-page TIFF's later pages and a PNG's transparency are not used, and
    its row says so (reason `flattened`, or in the detail after `stretched`); a plain image's row says nothing."""
    folder = tmp_path / "in"
    folder.mkdir()
    faces = [Image.fromarray(face) for face in lfw_faces[:4]]
    faces[0].save(folder / "plain.png")
    faces[1].save(folder / "pages.tif", save_all=True, append_images=faces[2:4])
    cut_out = faces[2].convert("RGBA")
    cut_out.putalpha(Image.fromarray(np.pad(np.full((56, 56), 255, np.uint8), 4)))
    cut_out.save(folder / "cut_out.png")
    tall = Image.fromarray(lfw_faces[3][:, 8:-8]).convert("LA")
    tall.putpixel((0, 0), (0, 0))
    tall.save(folder / "tall.png")  # grey with a transparent corner: stretched, and flattened
    opaque = faces[3].convert("RGBA")
    opaque.save(folder / "opaque.png")  # an alpha channel that hides nothing: no note
    faces[0].save(folder / "anim.gif", save_all=True, append_images=faces[1:3])  # not an accepted format
    out = tmp_path / "out"
    assert main(["anonymize", str(folder), str(out), *FAST, "--steps", "1", "--no-align"]) == 0
    rows = {r["input"]: r for r in _manifest(out)}
    gif = rows.pop("anim.gif")  # named by its relpath, as the notes of the rows that were read are
    assert (gif["status"], gif["reason"]) == ("rejected", "unsupported_format")
    assert gif["detail"].startswith("anim.gif: ") and str(folder) not in gif["detail"]
    assert all(r["status"] == "ok" for r in rows.values())
    assert (rows["plain.png"]["reason"], rows["plain.png"]["detail"]) == ("", "")
    assert (rows["opaque.png"]["reason"], rows["opaque.png"]["detail"]) == ("", "")
    assert (rows["pages.tif"]["reason"], rows["pages.tif"]["detail"]) == (
        "flattened", "pages.tif: only its first frame of 3 was read")
    assert (rows["cut_out.png"]["reason"], rows["cut_out.png"]["detail"]) == (
        "flattened", "cut_out.png: its transparency was flattened onto white")
    assert rows["tall.png"]["reason"] == "stretched"
    assert rows["tall.png"]["detail"].endswith("or crop it square; its transparency was flattened onto white")


def test_a_pool_larger_than_memory_is_refused_before_the_earlier_run_is_touched(face_folder, tmp_path, capsys):
    """--pool-size 100000000 failed with numpy's allocation traceback after the manifest had been rewritten as
    pending and the journal emptied: the earlier, finished run could no longer be evaluated."""
    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    def files():  # but the lock file, which each run rewrites
        return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".falco.lock"}

    before = files()
    capsys.readouterr()
    assert main(["anonymize", str(face_folder), str(out), *FAST, "--pool-size", str(10**12)]) == 2
    err = capsys.readouterr().err
    assert "a fake pool of 1,000,000,000,000 takes" in err and "lower pool_size" in err and "Traceback" not in err
    assert files() == before


@pytest.mark.parametrize("failure", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()])
def test_a_rerun_that_fails_before_its_first_images_leaves_the_earlier_run_whole(face_folder, tmp_path, capsys,
                                                                               monkeypatch, failure):
    """A re-run with other settings used to reset the manifest to pending and empty the journal before building its
    pool: when it then failed (out of memory in its first batch, Ctrl-C), the earlier run could no longer be evaluated
    or resumed. Now the folder changes hands only when the first new image is written."""
    import anon_core.pipeline as pipeline

    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0

    def files():  # but the lock file, which each run rewrites
        return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".falco.lock"}

    before = files()

    def fail(*args, **kwargs):
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "anonymize_images", fail)
        if isinstance(failure, KeyboardInterrupt):  # falco's own handling: a line and exit status 130
            assert main(["anonymize", str(face_folder), str(out), *FAST, "--steps", "2"]) == 130
        else:
            with pytest.raises(RuntimeError, match="out of memory"):
                main(["anonymize", str(face_folder), str(out), *FAST, "--steps", "2"])
    assert files() == before
    capsys.readouterr()
    # and it is still the earlier run: run again as it was, every batch comes from its journal
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    assert "4 finished by an earlier run and taken from its journal" in capsys.readouterr().out
    after = files()
    assert {k: v for k, v in after.items() if k.name != "manifest.csv"} == \
        {k: v for k, v in before.items() if k.name != "manifest.csv"}
    # the manifest too, but for the alignment's note "(cached result)" on the face that was not found again
    def results(manifest: bytes):
        return [{k: v for k, v in row.items() if k != "detail"} for row in csv.DictReader(io.StringIO(manifest.decode()))]

    assert results(after[Path("manifest.csv")]) == results(before[Path("manifest.csv")])


def test_a_rerun_stopped_after_taking_the_folder_over_leaves_no_record_of_the_earlier_run(face_folder, tmp_path,
                                                                                         capsys, monkeypatch):
    """A re-run with other settings stopped after its first batch left the earlier run's params.json, latents.npy
    and losses.csv beside its own half-written manifest: params.json described settings no image there was made
    with. Until the re-run finishes, the folder says `pending` and holds no record of either run."""
    import anon_core.pipeline as pipeline

    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    assert {"params.json", "latents.npy", "losses.csv"} <= {p.name for p in out.iterdir()}
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "anonymize_images", stopped_at_call(pipeline.anonymize_images, 2, KeyboardInterrupt()))
        assert main(["anonymize", str(face_folder), str(out), *FAST, "--steps", "2"]) == 130
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert (manifest["status"] == "pending").any()
    assert not {"params.json", "latents.npy", "losses.csv"} & {p.name for p in out.iterdir()}
    capsys.readouterr()
    assert main(["anonymize", str(face_folder), str(out), *FAST, "--steps", "2"]) == 0  # and it finishes
    assert "2 finished by an earlier run" in capsys.readouterr().out
    assert json.loads((out / "params.json").read_text())["params"]["optimization"]["steps"] == 2


def test_a_rerun_writes_again_the_images_damaged_or_replaced_since(face_folder, tmp_path, capsys):
    """A re-run took every batch from the journal and left a damaged image (which evaluate refuses, telling the user
    to re-run) and an image replaced by a real face (which evaluate accepted) as they were. Now it draws them (and a
    deleted one) again from their codes, and says how many."""
    from anon_core.data.image_io import save_png

    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    written = {p: p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}
    damaged, replaced, deleted, *_ = written
    damaged.write_bytes(b"garbage")
    deleted.unlink()
    with Image.open(replaced) as anonymized:
        side = anonymized.size
    real = np.asarray(Image.open(face_folder / "zoë.png").convert("RGB").resize(side))
    save_png(replaced, real)  # the real face, where the anonymized one was
    capsys.readouterr()
    damaged.with_name("mine.png").write_bytes(b"")
    written[damaged.parent / "mine.png"] = b""  # not an output: left alone, not counted
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    said = capsys.readouterr().out
    assert "4 finished by an earlier run and taken from its journal" in said
    assert "; 3 output image(s) deleted, damaged or replaced since the journal wrote them, drawn again from their " \
           "codes" in said
    assert {p: p.read_bytes() for p in sorted((out / "images").rglob("*.png"))} == written
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    assert "drawn again" not in capsys.readouterr().out


def _latents_by_input(out) -> dict[str, np.ndarray]:
    latents = np.load(out / "latents.npy")
    return {r["input"]: latents[int(r["latent_index"])] for r in _manifest(out) if r["status"] == "ok"}


def test_images_added_to_the_folder_are_the_only_ones_anonymized_on_a_re_run(face_folder, tmp_path, capsys,
                                                                              lfw_faces):
    """A new image that sorts first moves every other image to another batch; each is taken from the earlier run's
    journal by its key (the same file, the same settings) and drawn again from its codes, and only the new one is
    optimized. Other settings take nothing, and the earlier batches go once a run finishes."""
    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    before = _latents_by_input(out)
    images = {p.relative_to(out): p.read_bytes() for p in (out / "images").rglob("*.png")}
    Image.fromarray(lfw_faces[4]).save(face_folder / "Another Person.png")  # sorts before "Some Person/..."
    capsys.readouterr()
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    assert "4 the same images under the same settings as in an earlier run" in capsys.readouterr().out
    after = _latents_by_input(out)
    assert sorted(after) == sorted([*before, "Another Person.png"])
    for name, ws in before.items():
        np.testing.assert_array_equal(after[name], ws)
    assert {p.relative_to(out): p.read_bytes() for p in (out / "images").rglob("*.png") if p.relative_to(out) in
            images} == images  # drawn again from the same codes: the same PNG bytes
    assert len(list((out / ".journal").glob("batch-*.npz"))) == 3  # this run's 5 images in batches of 2
    capsys.readouterr()
    assert main(["anonymize", str(face_folder), str(out), *FAST[:-1], "--margin", "0.3", "--quiet"]) == 0
    assert "same settings as in an earlier run" not in capsys.readouterr().out


def test_another_batch_size_takes_every_image_from_the_journal_without_building_the_pool(face_folder, tmp_path,
                                                                                          capsys, monkeypatch):
    """The batch size changes how fast, not what: a re-run with another one (another run, by its key) finds every
    image under its own key, so it neither builds the fake pool nor optimizes anything, and writes the same outputs."""
    import anon_core.pipeline as pipeline

    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    latents = np.load(out / "latents.npy")

    def no_pool(*args, **kwargs):
        raise AssertionError("the fake pool was built")

    monkeypatch.setattr(pipeline, "build_pool", no_pool)
    monkeypatch.setattr(pipeline, "anonymize_images", no_pool)
    capsys.readouterr()
    assert main(["anonymize", str(face_folder), str(out), *FAST[:-3], "--batch-size", "3", "--quiet"]) == 0
    assert "4 the same images under the same settings" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "latents.npy"), latents)


def test_a_damaged_journal_entry_is_done_again_not_a_traceback(face_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    latents = np.load(out / "latents.npy")
    entries = sorted((out / ".journal").glob("batch-*.npz"))
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # cut short: a disk error, a copy interrupted
    capsys.readouterr()
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0  # before: numpy's BadZipFile traceback
    assert "2 finished by an earlier run" in capsys.readouterr().out  # the other batch
    np.testing.assert_array_equal(np.load(out / "latents.npy"), latents)


def test_an_output_that_cannot_be_written_is_one_line_naming_it(face_folder, tmp_path, capsys, monkeypatch):
    """A file the run cannot write (permissions, an immutable file, a full disk) was a 40-line traceback."""
    import errno

    import anon_core.pipeline as pipeline

    out = tmp_path / "out"
    real_save = pipeline.save_png

    def save(path, image):
        if path.name == "zoë.png":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path.with_name(".zoë.png.1.tmp")),
                                  None, str(path))
        return real_save(path, image)

    monkeypatch.setattr(pipeline, "save_png", save)
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err == (f"falco: error: Operation not permitted: {out / 'images' / 'zoë.png'}; check that you may write "
                   "there (permissions, a read-only or immutable file), then run the same command again\n")
    monkeypatch.setattr(pipeline, "save_png", real_save)
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0  # and the same command then finishes
    assert (out / "images" / "zoë.png").is_file()


def test_auto_settings_are_recorded_as_what_they_mean_on_the_device(face_folder, tmp_path, capsys):
    """`speed.amp: auto` and `speed.resize_form: auto` compute on a CPU exactly what `off` and `interpolate` do:
    params.json records the resolved values and a re-run spelling them out resumes from the journal (it used to start
    over under another key)."""
    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    speed = json.loads((out / "params.json").read_text())["params"]["speed"]
    assert (speed["amp"], speed["resize_form"]) == ("off", "interpolate")
    capsys.readouterr()
    assert main(["anonymize", str(face_folder), str(out), *FAST, "--amp", "off"]) == 0
    assert "4 finished by an earlier run and taken from its journal" in capsys.readouterr().out


def test_black_and_white_inputs_get_black_and_white_faces_and_earlier_colour_ones_are_written_again(
        tmp_path, lfw_faces, capsys, monkeypatch):
    """The generator draws in colour; a grey input's face is written as the luma of the face its codes give, a
    colour input's as drawn. A run made before that rule (colour faces for grey inputs) is another run: its codes
    are taken from its journal by key and only the grey input's image changes."""
    import anon_core.pipeline as pipeline
    from anon_core.data.colour import is_grey, to_grey
    from anon_core.fake_pool import generate
    from anon_core.profiles import build_networks

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(lfw_faces[0]).save(folder / "grey.jpg", quality=95)  # decodes to three equal channels
    tinted = np.clip(lfw_faces[1] * np.array([1.0, 0.8, 0.6]), 0, 255).astype(np.uint8)
    Image.fromarray(tinted).save(folder / "colour.png")

    def written() -> dict[str, np.ndarray]:
        return {p.name: np.asarray(Image.open(p)) for p in (out / "images").glob("*.png")}

    with monkeypatch.context() as earlier_version:
        earlier_version.setattr(pipeline, "GREY_RULE", "faces written as drawn")
        earlier_version.setattr(pipeline, "keep_grey", lambda images, grey: images)
        assert main(["anonymize", str(folder), str(out), *FAST]) == 0
    before = written()
    assert not is_grey(before["grey.png"]) and not is_grey(before["colour.png"])
    latents = np.load(out / "latents.npy")
    capsys.readouterr()

    assert main(["anonymize", str(folder), str(out), *FAST]) == 0
    assert "2 the same images under the same settings as in an earlier run" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "latents.npy"), latents)
    after = written()
    np.testing.assert_array_equal(after["colour.png"], before["colour.png"])
    assert is_grey(after["grey.png"])
    index = {r["input"]: int(r["latent_index"]) for r in _manifest(out)}
    # drawn alone here, in a batch of two by the run: the generator's grouped (one sample) and batched convolutions
    # sum in other orders, so a pixel may round one level apart (it did on another CPU: 1 of 12,288 values)
    drawn = generate(build_networks("tiny").generator, latents[[index["grey.jpg"]]])[0].astype(int)
    assert np.abs(after["grey.png"].astype(int) - to_grey(drawn.astype(np.uint8))).max() <= 1
    assert np.abs(before["grey.png"].astype(int) - drawn).max() <= 1
    assert not is_grey(drawn.astype(np.uint8)) and np.abs(before["grey.png"].astype(int) - after["grey.png"]).max() > 1


def test_every_image_is_checked_by_dlib_against_its_own_inputs_crop(face_folder, tmp_path, capsys):
    """Aligned mode's own privacy check: face_privacy.csv holds, for each anonymized image in manifest order, dlib's
    distance between the image written and the aligned crop of its own input; it is made before a temporary
    alignment cache is removed, and it is not blind: the crops themselves as outputs are all matched."""
    from anon_core.data.image_files import ImageFiles
    from evaluation.aligned_privacy import aligned_face_privacy
    from evaluation.recognizers import build_recognizer

    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    ok = [r for r in _manifest(out) if r["status"] == "ok"]
    privacy = pd.read_csv(out / "face_privacy.csv", keep_default_na=False)
    assert privacy[["input", "output"]].values.tolist() == [[r["input"], r["output"]] for r in ok]
    crops = [next((out / ".align_cache" / r["sha256"][:2]).glob(f"{r['sha256']}.*.png")) for r in ok]
    dlib = build_recognizer("dlib")
    distances, matched = dlib.match_pairs(ImageFiles([out / "images" / r["output"] for r in ok], 64),
                                          ImageFiles(crops, 64))
    np.testing.assert_allclose(privacy["dlib_distance"], distances, atol=1e-4)
    assert privacy["matched"].tolist() == matched.tolist()
    assert f"privacy: dlib matches {int(matched.sum())} of 4 images to their source" in printed

    same = tmp_path / "same"  # an "anonymized" folder whose images are the real faces
    for r, crop in zip(ok, crops):
        (same / "images" / r["output"]).parent.mkdir(parents=True, exist_ok=True)
        (same / "images" / r["output"]).write_bytes(crop.read_bytes())
    left = aligned_face_privacy(ImageFiles(crops, 64), same, pd.DataFrame(ok), dlib)
    assert left["matched"].all() and (left["dlib_distance"] < 1e-3).all()

    uncached = tmp_path / "uncached"
    assert main(["anonymize", str(face_folder), str(uncached), *FAST, "--no-cache"]) == 0
    assert pd.read_csv(uncached / "face_privacy.csv", keep_default_na=False)["input"].tolist() == \
        privacy["input"].tolist()
    assert not list(uncached.glob(".align_cache*"))


def test_a_run_that_keeps_identity_fails_its_privacy_check_and_keeps_its_outputs(face_folder, tmp_path, capsys):
    """At m = 0.9 the optimization keeps the identity (tiny's identity loss is dlib's descriptor), dlib matches the
    images to their inputs, and the command says so and exits 1; the images stay, for the user to look at. (The
    photo-mode exit takes the same path, `orchestration.cli._privacy_verdict`.)"""
    out = tmp_path / "out"
    assert main(["anonymize", str(face_folder), str(out), "--profile", "tiny", "--pool-size", "50", "--quiet",
                 "--margin", "0.9", "--steps", "100"]) == 1  # 4 of 4 matched, distances 0.46-0.52 (40: 2 of 4)
    printed = capsys.readouterr()
    privacy = pd.read_csv(out / "face_privacy.csv", keep_default_na=False)
    share = privacy["matched"].mean()
    assert share > 0.05 and (privacy["dlib_distance"] < 0.6).tolist() == privacy["matched"].tolist()
    assert printed.err == (f"falco: error: privacy check failed: dlib still matches {privacy['matched'].sum()} of 4 "
                           f"images to their source ({share:.1%}), more than checks.privacy_max_match_share = 0.05 "
                           f"allows; see {out.resolve() / 'face_privacy.csv'}\n")
    assert len(list((out / "images").rglob("*.png"))) == len(privacy) == 4


def test_a_run_stopped_during_its_privacy_check_does_not_look_checked(face_folder, tmp_path, capsys, monkeypatch):
    """A run stopped while dlib checked its images left every row `ok`, no face_privacy.csv, and nothing else that
    said the check had not run. params.json now says `pending` until the verdict is written, `falco evaluate` warns,
    and the same command run again takes every image from the journal and finishes the check."""
    import evaluation.aligned_privacy as aligned_privacy

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(aligned_privacy, "aligned_face_privacy",
                      stopped_at_call(aligned_privacy.aligned_face_privacy, 1, KeyboardInterrupt()))
        assert main(["anonymize", str(face_folder), str(out), *FAST]) == 130
    assert {r["status"] for r in _manifest(out)} == {"ok", "rejected"}  # every image written
    assert json.loads((out / "params.json").read_text())["privacy_check"] == "pending"
    assert not (out / "face_privacy.csv").exists()
    capsys.readouterr()
    assert main(["evaluate", str(face_folder), str(out), "--out", str(tmp_path / "report"), "--recognizers", "dlib",
                 "--no-baselines", "--quiet"]) == 0
    assert capsys.readouterr().err.startswith(f"falco: warning: {out}: its run's privacy check did not finish")

    assert main(["anonymize", str(face_folder), str(out), *FAST]) == 0
    assert "4 finished by an earlier run" in capsys.readouterr().out
    privacy = pd.read_csv(out / "face_privacy.csv", keep_default_na=False)
    check = json.loads((out / "params.json").read_text())["privacy_check"]
    assert check == {"measured": 4, "matched": int(privacy["matched"].sum()), "match_share": privacy["matched"].mean(),
                     "bound": 0.05, "passed": bool(privacy["matched"].mean() <= 0.05), "table": "face_privacy.csv"}
    assert main(["evaluate", str(face_folder), str(out), "--out", str(tmp_path / "report2"), "--recognizers", "dlib",
                 "--no-baselines", "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_list_of_margins_points_at_the_sweep(tmp_path, capsys):
    """`falco anonymize --margin 0,0.5` said only "'0,0.5' is not a number"."""
    with pytest.raises(SystemExit) as stopped:
        main(["anonymize", str(tmp_path), str(tmp_path / "out"), "--margin", "0,0.5"])
    assert stopped.value.code == 2
    assert "'0,0.5' is not a number; one value here (`falco pipeline --margin 0,0.5` runs one variant per value)" \
        in capsys.readouterr().err
