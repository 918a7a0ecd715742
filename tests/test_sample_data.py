"""The offline sample dataset: file count, determinism, idempotence, image format and a real, centred face."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anon_core.data import build_sample_dataset, load_rgb

NUM_LFW = 3
SIZE = 64


def test_builds_expected_files_as_rgb_faces(tmp_path: Path) -> None:
    paths = build_sample_dataset(tmp_path, size=SIZE, num_lfw=NUM_LFW)
    assert [p.relative_to(tmp_path / "images").as_posix() for p in paths] == [
        "astronaut.png",
        "lfw/lfw_000.png",
        "lfw/lfw_001.png",
        "lfw/lfw_002.png",
    ]
    for path in paths:
        image = load_rgb(path)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert image.std() > 10, f"{path.name} looks blank"
    astronaut = load_rgb(paths[0]).astype(int)
    assert np.abs(astronaut[..., 0] - astronaut[..., 2]).mean() > 5, "the astronaut image is in colour"
    for path in paths[1:]:
        lfw = load_rgb(path)
        np.testing.assert_array_equal(lfw[..., 0], lfw[..., 1])
        np.testing.assert_array_equal(lfw[..., 0], lfw[..., 2])
    readme = (tmp_path / "README.txt").read_text()
    for fact in ("scikit-image", "Labeled Faces in the Wild", "public domain", "UPSCALED"):
        assert fact in readme


def test_lfw_pixels_come_from_lfw_subset(tmp_path: Path) -> None:
    from skimage import data

    face = load_rgb(build_sample_dataset(tmp_path, size=SIZE, num_lfw=1)[1])[..., 0].astype(float)
    source = data.lfw_subset()[0]  # [25, 25] in [0, 1]
    # Block means of the 64 px upscale track the 25 px source (bicubic overshoot allowed for).
    coarse = face.reshape(8, 8, 8, 8).mean(axis=(1, 3)) / 255.0  # [8, 8]
    from PIL import Image

    reference = np.asarray(Image.fromarray((source * 255).round().astype(np.uint8)).resize((8, 8), Image.BOX)) / 255.0
    assert np.abs(coarse - reference).mean() < 0.05


def test_deterministic_and_idempotent(tmp_path: Path) -> None:
    first = build_sample_dataset(tmp_path / "one", size=SIZE, num_lfw=NUM_LFW)
    second = build_sample_dataset(tmp_path / "two", size=SIZE, num_lfw=NUM_LFW)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two builds"
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [*first, tmp_path / "one" / "README.txt"]}
    again = build_sample_dataset(tmp_path / "one", size=SIZE, num_lfw=NUM_LFW)
    assert again == first
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before}
    assert after == before, "files that already hold the right bytes must not be rewritten"
    first[1].write_bytes(b"corrupted")
    build_sample_dataset(tmp_path / "one", size=SIZE, num_lfw=NUM_LFW)
    assert first[1].read_bytes() == second[1].read_bytes(), "a damaged file is repaired"


def test_astronaut_face_is_centred(tmp_path: Path) -> None:
    dlib = pytest.importorskip("dlib")
    image = load_rgb(build_sample_dataset(tmp_path, size=128, num_lfw=0)[0])
    detections = dlib.get_frontal_face_detector()(image, 1)
    assert len(detections) == 1, "exactly one face in the astronaut crop"
    box = detections[0]
    centre_x = (box.left() + box.right()) / 2
    centre_y = (box.top() + box.bottom()) / 2
    assert abs(centre_x - 64) < 0.1 * 128 and abs(centre_y - 64) < 0.1 * 128, (centre_x, centre_y)
    assert 0.3 * 128 < box.width() < 0.7 * 128, "the face fills a FFHQ-like share of the crop"


@pytest.mark.parametrize("kwargs", [{"num_lfw": 101}, {"num_lfw": -1}, {"size": 16}])
def test_invalid_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        build_sample_dataset(tmp_path, **kwargs)


def test_sample_data_checks_both_folders_before_writing_either(tmp_path: Path, capsys) -> None:
    """`falco sample-data d --photos d/images` wrote the 101 faces, then refused the photos folder; a photos folder of
    the user's own files was refused only after the faces were written too."""
    from orchestration.cli import main

    assert main(["sample-data", str(tmp_path / "d"), "--photos", str(tmp_path / "d" / "images")]) == 2
    assert "is inside the sample folder" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["sample-data", str(tmp_path / "d"), "--photos", str(tmp_path / "mine")]) == 2
    assert "mine holds files the sample data does not write (e.g. notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert main(["sample-data", str(tmp_path / "d"), "--photos", str(tmp_path / "photos"), "--size", "32"]) == 0
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["group.png", "no_face.png", "portrait.jpg"]


def test_a_sample_data_run_stopped_among_its_images_is_run_again_not_refused(tmp_path: Path, monkeypatch) -> None:
    """Stopped after some images and before its README (written last), the folder was "a user's files" to the same
    command run again."""
    import anon_core.data.sample as sample

    real, written = sample.write_bytes_atomic, []

    def stopped_after_ten(path, data, *args):
        if len(written) == 10:
            raise KeyboardInterrupt
        written.append(path)
        return real(path, data, *args)

    monkeypatch.setattr(sample, "write_bytes_atomic", stopped_after_ten)
    with pytest.raises(KeyboardInterrupt):
        build_sample_dataset(tmp_path / "d", size=32, num_lfw=20)
    monkeypatch.setattr(sample, "write_bytes_atomic", real)
    paths = build_sample_dataset(tmp_path / "d", size=32, num_lfw=20)
    assert len(paths) == 21 and all(p.is_file() for p in paths)
