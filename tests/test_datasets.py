"""Tests for anon_core.data.datasets: CelebA-HQ, LFW and folder adapters on miniature copies of their layouts.

The annotation files are written here in the formats the datasets ship (see the module docstring); the images
are a few tiny random JPEGs/PNGs, since only names, hashes and labels matter to the adapters.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anon_core.data.datasets import (
    CELEBA_ATTRIBUTES,
    DatasetError,
    detect_kind,
    load_dataset,
    read_lfw_pairs,
    read_lfw_people,
)
from anon_core.errors import FalcoError


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


# CelebA-HQ index -> (0-based CelebA index, CelebA file, partition code, identity)
CELEBAHQ = {
    0: (119613, "119614.jpg", "0", "2880"),
    1: (99094, "099095.jpg", "0", "2937"),
    2: (162771, "162772.jpg", "1", "8692"),
    3: (182637, "182638.jpg", "2", "10001"),
}


def _attribute_values(index: int) -> list[int]:
    return [1 if (index + k) % 3 == 0 else -1 for k in range(40)]


def make_celebahq(root: Path, partition: bool = True, mapping: bool = True) -> Path:
    for index in CELEBAHQ:
        _image(root / "CelebA-HQ-img" / f"{index}.jpg", index)
    lines = [str(len(CELEBAHQ)), " ".join(CELEBA_ATTRIBUTES)]
    lines += [f"{i}.jpg  " + " ".join(str(v) for v in _attribute_values(i)) for i in CELEBAHQ]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    if mapping:
        rows = ["idx         orig_idx    orig_file   "]
        rows += [f"{i:<12}{o:<12}{f:<12}" for i, (o, f, _, _) in CELEBAHQ.items()]
        (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(rows) + "\n")
    if partition:  # CelebA's own files, in its Eval/ and Anno/ folders, with rows for other images too
        (root / "Eval").mkdir()
        rows = ["000001.jpg 0"] + [f"{f} {p}" for _, f, p, _ in CELEBAHQ.values()] + ["202599.jpg 2"]
        (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(rows) + "\n")
    (root / "Anno").mkdir(exist_ok=True)
    rows = ["000001.jpg 2880"] + [f"{f} {ident}" for _, f, _, ident in CELEBAHQ.values()]
    (root / "Anno" / "identity_CelebA.txt").write_text("\n".join(rows) + "\n")
    return root


LFW_PEOPLE = {"Aaron_Eckhart": 1, "Abel_Pacheco": 2, "Zico": 3}


def make_lfw(root: Path, folder: str = "lfw") -> Path:
    seed = 0
    for name, count in LFW_PEOPLE.items():
        for n in range(1, count + 1):
            _image(root / folder / name / f"{name}_{n:04d}.jpg", seed)
            seed += 1
    # View 2: 2 folds of 1 same + 1 different pair each (the real file is "10\t300")
    (root / "pairs.txt").write_text("2\t1\nAbel_Pacheco\t1\t2\nAaron_Eckhart\t1\tZico\t2\n"
                                    "Zico\t1\t3\nAbel_Pacheco\t2\tZico\t1\n")
    (root / "people.txt").write_text("2\n2\nAaron_Eckhart\t1\nAbel_Pacheco\t2\n1\nZico\t3\n")
    (root / "peopleDevTrain.txt").write_text("2\nAaron_Eckhart\t1\nZico\t3\n")
    (root / "peopleDevTest.txt").write_text("1\nAbel_Pacheco\t2\n")
    return root


# ------------------------------------------------------------------------------------------- CelebA-HQ
def test_celebahq_layout_gives_attributes_split_identity_and_hashes(tmp_path: Path) -> None:
    root = make_celebahq(tmp_path)
    df = load_dataset("celebahq", root)
    assert list(df["relpath"]) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert list(df.columns) == ["relpath", "path", "identity", "split", *CELEBA_ATTRIBUTES,
                                "sha256", "duplicate_of", "skip_reason"]
    for name in CELEBA_ATTRIBUTES:
        assert df[name].dtype == "Int8"
    for row in df.itertuples(index=False):
        index = int(row.relpath.split(".")[0])
        got = [int(df.loc[df["relpath"] == row.relpath, a].iloc[0]) for a in CELEBA_ATTRIBUTES]
        assert got == [1 if v == 1 else 0 for v in _attribute_values(index)]
        assert Path(row.path).is_absolute() and Path(row.path) == root / "CelebA-HQ-img" / row.relpath
        assert row.sha256 == hashlib.sha256(Path(row.path).read_bytes()).hexdigest()
    assert list(df["split"]) == ["train", "train", "val", "test"]
    assert list(df["identity"]) == ["2880", "2937", "8692", "10001"]
    assert df["duplicate_of"].isna().all() and df["skip_reason"].isna().all()
    assert df.attrs["kind"] == "celebahq" and df.attrs["warnings"] == []
    assert df.attrs["image_root"] == str(root / "CelebA-HQ-img")
    assert df.attrs["annotations"]["partition"] == str(root / "Eval" / "list_eval_partition.txt")


def test_celebahq_without_partition_uses_celeba_ranges_and_without_mapping_leaves_split_empty(tmp_path) -> None:
    df = load_dataset("celebahq", make_celebahq(tmp_path / "a", partition=False))
    assert list(df["split"]) == ["train", "train", "val", "test"]  # 119614, 099095 | 162772 | 182638
    assert any("list_eval_partition.txt not found" in w for w in df.attrs["warnings"])

    df = load_dataset("celebahq", make_celebahq(tmp_path / "b", mapping=False))
    assert df["split"].isna().all() and df["identity"].isna().all()
    assert df["Smiling"].notna().all()
    assert any("mapping" in w for w in df.attrs["warnings"])


def test_celebahq_stray_file_is_a_row_without_labels(tmp_path: Path) -> None:
    root = make_celebahq(tmp_path)
    (root / "CelebA-HQ-img" / "notes.txt").write_text("not an image")
    df = load_dataset("celebahq", root)
    stray = df[df["relpath"] == "notes.txt"]
    assert len(stray) == 1 and stray[list(CELEBA_ATTRIBUTES)].isna().all(axis=None)
    assert any("no row in CelebAMask-HQ-attribute-anno.txt" in w for w in df.attrs["warnings"])


def test_celebahq_bad_attribute_file_names_the_file_and_line(tmp_path: Path) -> None:
    root = make_celebahq(tmp_path)
    anno = root / "CelebAMask-HQ-attribute-anno.txt"
    lines = anno.read_text().splitlines()
    anno.write_text("\n".join([lines[0], lines[1].replace("Smiling", "Smile")] + lines[2:]))
    with pytest.raises(DatasetError, match=r"CelebAMask-HQ-attribute-anno\.txt, line 2: .*Smiling"):
        load_dataset("celebahq", root)
    anno.write_text("\n".join(lines[:2] + [lines[2].replace(" 1", " 2", 1)] + lines[3:]))
    with pytest.raises(DatasetError, match=r"line 3: .*1/-1"):
        load_dataset("celebahq", root)


# ------------------------------------------------------------------------------------------- LFW
@pytest.mark.parametrize("folder", ["lfw", "lfw-deepfunneled"])
def test_lfw_identity_split_and_fold(tmp_path: Path, folder: str) -> None:
    root = make_lfw(tmp_path, folder)
    df = load_dataset("lfw", root)
    assert df.attrs["image_root"] == str(root / folder)
    assert len(df) == 6 and list(df["relpath"]) == sorted(df["relpath"])
    assert list(df.columns[:5]) == ["relpath", "path", "identity", "split", "fold"]
    assert not set(CELEBA_ATTRIBUTES) & set(df.columns)
    by_name = df.set_index("relpath")
    assert by_name.loc["Zico/Zico_0003.jpg", "identity"] == "Zico"
    assert by_name.loc["Abel_Pacheco/Abel_Pacheco_0002.jpg", "split"] == "test"
    assert by_name.loc["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "split"] == "train"
    assert list(by_name["fold"]) == [0, 0, 0, 1, 1, 1]
    assert set(df.attrs["annotations"]) == {"pairs", "people", "people_train", "people_test"}


def test_lfw_pairs_table(tmp_path: Path) -> None:
    root = make_lfw(tmp_path)
    pairs = read_lfw_pairs(root / "pairs.txt")
    assert list(pairs.columns) == ["name1", "n1", "name2", "n2", "same", "fold", "relpath1", "relpath2"]
    assert list(pairs["same"]) == [True, False, True, False]
    assert list(pairs["fold"]) == [0, 0, 1, 1]
    assert pairs.iloc[1][["name1", "n1", "name2", "n2"]].tolist() == ["Aaron_Eckhart", 1, "Zico", 2]
    df = load_dataset("lfw", root)
    assert set(pairs["relpath1"]) | set(pairs["relpath2"]) <= set(df["relpath"])

    dev = tmp_path / "pairsDevTrain.txt"
    dev.write_text("1\nZico\t1\t2\nZico\t3\tAbel_Pacheco\t1\n")
    assert read_lfw_pairs(dev)["fold"].isna().all()
    (tmp_path / "broken.txt").write_text("2\t1\nAbel_Pacheco\t1\n")
    with pytest.raises(DatasetError, match=r"broken\.txt, line 2: cannot read Abel_Pacheco 1"):
        read_lfw_pairs(tmp_path / "broken.txt")
    (tmp_path / "short.txt").write_text("10\t300\nZico\t1\t2\n")
    with pytest.raises(DatasetError, match="promises 6000 pairs but 1 follow"):
        read_lfw_pairs(tmp_path / "short.txt")


def test_lfw_people_files(tmp_path: Path) -> None:
    root = make_lfw(tmp_path)
    people = read_lfw_people(root / "people.txt")
    assert people.to_dict("list") == {"name": ["Aaron_Eckhart", "Abel_Pacheco", "Zico"],
                                      "n_images": [1, 2, 3], "fold": [0, 0, 1]}
    assert read_lfw_people(root / "peopleDevTest.txt")["fold"].isna().all()
    (root / "people.txt").write_text("3\n1\nZico\t3\n")
    with pytest.raises(DatasetError, match="says 3 folds but 1 follow"):
        read_lfw_people(root / "people.txt")


def test_lfw_a_sub_folder_of_a_persons_folder_is_that_person(tmp_path: Path) -> None:
    """`Ann/2019/` and `Bob/2019/` were both the person "2019": two people, one pseudonym under --pairing identity."""
    for person in ("Ann_Smith", "Bob_Jones"):
        _image(tmp_path / "lfw" / person / f"{person}_0001.jpg", 1)
        _image(tmp_path / "lfw" / person / "2019" / f"{person}_0002.jpg", 2)
    df = load_dataset("lfw", tmp_path)
    assert dict(zip(df["relpath"], df["identity"])) == {
        "Ann_Smith/2019/Ann_Smith_0002.jpg": "Ann_Smith", "Ann_Smith/Ann_Smith_0001.jpg": "Ann_Smith",
        "Bob_Jones/2019/Bob_Jones_0002.jpg": "Bob_Jones", "Bob_Jones/Bob_Jones_0001.jpg": "Bob_Jones"}
    assert any("2 file(s) in a sub-folder of a person's folder" in w for w in df.attrs["warnings"])


def test_lfw_root_may_be_the_image_folder(tmp_path: Path) -> None:
    make_lfw(tmp_path)
    df = load_dataset("auto", tmp_path / "lfw")
    assert df.attrs["kind"] == "lfw" and len(df) == 6  # pairs.txt etc. found in the parent
    assert df["split"].notna().all()


# ------------------------------------------------------------------------------------------- folder + CSV
def make_folder(root: Path) -> Path:
    _image(root / "a" / "x.png", 1)
    _image(root / "a" / "y.jpg", 2)
    _image(root / "b c" / "z.png", 3)
    (root / "notes.txt").write_text("hello")
    return root


def test_folder_with_csv_manifest(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "faces")
    csv = tmp_path / "labels.csv"
    csv.write_text("file,identity,split,Smiling,young,age\n"
                   "a/x.png,alice,train,1,-1,31\n"
                   "b c\\z.png,bob,TEST,0,1,40\n"
                   "./a/y.jpg,,val,,true,\n"
                   "missing.png,carol,train,1,1,22\n")
    df = load_dataset("folder", root, labels_csv=csv)
    assert list(df["relpath"]) == ["a/x.png", "a/y.jpg", "b c/z.png", "notes.txt"]
    assert list(df.columns) == ["relpath", "path", "identity", "split", "Smiling", "Young",
                                "sha256", "duplicate_of", "skip_reason"]
    assert df["identity"].tolist()[:3] == ["alice", pd.NA, "bob"] and pd.isna(df["identity"].iloc[3])
    assert df["split"].tolist()[:3] == ["train", "val", "test"]
    assert df["Smiling"].dtype == "Int8" and df["Smiling"].tolist()[:3] == [1, pd.NA, 0]
    assert df["Young"].tolist()[:3] == [0, 1, 1]
    warnings = " | ".join(df.attrs["warnings"])
    assert "missing.png" in warnings and "'age'" in warnings and f"1 file(s) in the image folder {root} have no row" \
        in warnings
    assert f"name files that are not in the image folder {root} (relpaths are relative to it)" in warnings


def test_csv_inside_the_folder_is_not_a_row_and_bad_csvs_fail(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "faces")
    (root / "labels.csv").write_text("relpath,split\na/x.png,train\n")
    df = load_dataset("folder", root, labels_csv=root / "labels.csv")
    assert "labels.csv" not in set(df["relpath"])
    bad = {
        "name,split\na/x.png,train\n": "no 'relpath' or 'file' column",
        "relpath,split\na/x.png,holdout\n": r"split holds \['holdout'\]",
        "relpath,Smiling\na/x.png,maybe\n": r"attribute Smiling holds \['maybe'\]",
        "relpath\na/x.png\n./a/x.png\n": r"more than once: \['a/x.png'\]",
        # before: the last of the two silently won, and one person got three pseudonyms
        "relpath,identity,Identity\na/x.png,eileen,a\n": "has columns 'identity' and 'Identity', which name the same label",
        "relpath,Smiling, smiling\na/x.png,1,0\n": "has columns 'Smiling' and 'smiling', which name the same label",
    }
    for text, message in bad.items():
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(DatasetError, match=message):
            load_dataset("folder", root, labels_csv=tmp_path / "bad.csv")
    (tmp_path / "latin1.csv").write_bytes("relpath,identity\na/x.png,José\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1.csv is not UTF-8 text \(byte b'\\xe9'\); save it as UTF-8"):
        load_dataset("folder", root, labels_csv=tmp_path / "latin1.csv")  # before: the codec's position message
    with pytest.raises(DatasetError, match="nope.csv does not exist"):
        load_dataset("folder", root, labels_csv=tmp_path / "nope.csv")
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError, match="labels is a folder; pass an existing CSV file"):  # was "does not exist"
        load_dataset("folder", root, labels_csv=tmp_path / "labels")


def test_csv_overrides_layout_labels(tmp_path: Path) -> None:
    root = make_celebahq(tmp_path / "hq")
    csv = tmp_path / "fix.csv"
    csv.write_text("relpath,Smiling,identity\n0.jpg,0,\n")  # Smiling of 0.jpg is 1 in the annotation
    df = load_dataset("celebahq", root, labels_csv=csv)
    assert df.loc[0, "Smiling"] == 0 and df.loc[0, "identity"] == "2880"  # empty CSV cell keeps the layout's
    assert df.loc[3, "Smiling"] == load_dataset("celebahq", root).loc[3, "Smiling"]


# ------------------------------------------------------------------------------------------- auto + errors
def test_auto_detection(tmp_path: Path) -> None:
    assert detect_kind(make_celebahq(tmp_path / "hq")) == "celebahq"
    assert detect_kind(make_lfw(tmp_path / "lfw_root")) == "lfw"
    assert detect_kind(tmp_path / "lfw_root" / "lfw") == "lfw"
    assert detect_kind(make_folder(tmp_path / "mine")) == "folder"
    assert load_dataset("auto", tmp_path / "hq").attrs["kind"] == "celebahq"
    assert load_dataset("auto", tmp_path / "mine").attrs["kind"] == "folder"


def test_auto_detection_needs_the_images_not_just_a_name(tmp_path: Path) -> None:
    # the project's own sample data: images/astronaut.png + images/lfw/lfw_000.png is not LFW
    _image(tmp_path / "images" / "astronaut.png", 0)
    _image(tmp_path / "images" / "lfw" / "lfw_000.png", 1)
    (tmp_path / "images" / "pairs.txt").write_text("1\n")
    (tmp_path / "images" / "data").mkdir()
    _image(tmp_path / "images" / "data" / "cat.png", 2)  # "data/" without numbered images is not CelebA-HQ
    assert detect_kind(tmp_path / "images") == "folder"
    df = load_dataset("auto", tmp_path / "images")
    assert df.attrs["kind"] == "folder" and "astronaut.png" in set(df["relpath"])
    with pytest.raises(DatasetError, match="not a LFW"):
        load_dataset("lfw", tmp_path / "images")


def test_bad_layouts_name_what_is_missing(tmp_path: Path) -> None:
    mine = make_folder(tmp_path / "mine")
    with pytest.raises(DatasetError, match=r"not a CelebA-HQ .*CelebA-HQ-img/ \(or data/\).*--dataset folder"):
        load_dataset("celebahq", mine)
    with pytest.raises(DatasetError, match=r"not a LFW .*lfw/.*<Person_Name>_0001\.jpg"):
        load_dataset("lfw", mine)
    hq = make_celebahq(tmp_path / "hq")
    (hq / "CelebAMask-HQ-attribute-anno.txt").unlink()
    with pytest.raises(DatasetError, match=r"CelebAMask-HQ-attribute-anno\.txt not found \(looked in .*hq"):
        load_dataset("celebahq", hq)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("auto", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="unknown dataset kind 'ffhq'"):
        load_dataset("ffhq", mine)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no files"):
        load_dataset("folder", tmp_path / "empty")
    assert issubclass(DatasetError, FalcoError)


def test_link_loops_and_names_that_are_not_utf8_are_rows_not_crashes(tmp_path: Path) -> None:
    """A link loop (Path.resolve raised RuntimeError) and a Latin-1 file name (pandas' strings cannot hold it) each
    stopped the whole folder with a traceback; now each is a rejected row, named, and the others are read."""
    import os

    root = tmp_path / "in"
    _image(root / "a.png", 1)
    (root / "loop1.png").symlink_to("loop2.png")
    (root / "loop2.png").symlink_to("loop1.png")
    raw = os.fsencode(root)
    with open(raw + b"/caf\xe9.png", "wb") as fh:
        fh.write((root / "a.png").read_bytes())
    os.mkdir(raw + b"/d\xe9")
    with open(raw + b"/d\xe9/x.png", "wb") as fh:
        fh.write((root / "a.png").read_bytes())
    df = load_dataset("folder", root)
    assert dict(zip(df["relpath"], df["skip_reason"].fillna("ok"))) == {
        "a.png": "ok", "caf\\xe9.png": "bad_name", "d\\xe9/x.png": "bad_name", "loop1.png": "unreadable",
        "loop2.png": "unreadable"}
    from anon_core.ingest import dataset_files

    bad = {f.relpath: f for f in dataset_files(df)}["caf\\xe9.png"]
    assert "caf\\xe9.png: its name is not UTF-8 text" in bad.skip_detail() and "rename it" in bad.skip_detail()
