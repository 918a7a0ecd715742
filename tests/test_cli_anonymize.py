"""`falco anonymize` end to end on the tiny profile: outputs, rejections, manifest, determinism."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

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
    assert main(["anonymize", str(face_folder), str(out), *FAST, "--margin", "0.2", "--seed", "5"]) == 0
    rows = _manifest(out)
    by_input = {r["input"]: r for r in rows}
    assert set(by_input) == {"Some Person/face_0.jpg", "Some Person/face_1.jpg", "Some Person/face_2.jpg",
                             "zoë.png", "notes.jpg", "noise.png"}
    assert by_input["notes.jpg"]["status"] == "rejected" and by_input["notes.jpg"]["reason"] == "not_an_image"
    assert by_input["noise.png"]["status"] == "rejected" and by_input["noise.png"]["reason"] == "no_face"
    assert by_input["zoë.png"]["faces_seen"] == "1"
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4

    latents = np.load(out / "latents.npy")
    assert latents.shape == (4, 10, 128) and latents.dtype == np.float32
    assert [int(r["latent_index"]) for r in ok] == [0, 1, 2, 3]
    written = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png"))
    assert written == sorted(r["output"] for r in ok)
    assert by_input["Some Person/face_1.jpg"]["output"] == "Some Person/face_1.png"
    with Image.open(out / "images" / "zoë.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert all(0 <= int(r["fake_index"]) < 50 for r in ok)

    record = json.loads((out / "params.json").read_text())
    assert record["params"]["seed"] == 5 and record["params"]["optimization"]["margin"] == 0.2
    assert record["params"]["optimization"]["steps"] == 3 and record["params"]["pool_size"] == 50
    assert "4 anonymized, 2 rejected (no_face: 1, not_an_image: 1)" in capsys.readouterr().out
    assert len((out / "losses.csv").read_text().splitlines()) == 1 + 3


def test_same_arguments_give_bit_identical_latents(face_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["anonymize", str(face_folder), str(a), *FAST]) == 0
    assert main(["anonymize", str(face_folder), str(b), *FAST]) == 0
    assert (a / "latents.npy").read_bytes() == (b / "latents.npy").read_bytes()
    assert (a / "images" / "zoë.png").read_bytes() == (b / "images" / "zoë.png").read_bytes()


def test_user_errors_are_one_line_messages(face_folder, tmp_path, capsys):
    assert main(["anonymize", str(tmp_path / "missing"), str(tmp_path / "o"), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["anonymize", str(face_folder), str(tmp_path / "o"), *FAST, "--pool-size", "0"]) == 2
    assert "pool_size" in capsys.readouterr().err
    assert main(["anonymize", str(face_folder), str(face_folder / "out"), *FAST]) == 2
    assert "inside the input folder" in capsys.readouterr().err
