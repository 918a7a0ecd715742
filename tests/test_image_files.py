"""Image sets left on disk: ImageFiles reads what an array would hold, and the IO manager moves image sets
between assets without ever decoding a whole set at once."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anon_core.data.image_files import ImageFiles, read_batches, take
from anon_core.data.image_io import save_png
from anon_core.errors import FalcoError
from anon_core.stages import resize_images
from orchestration.io_manager import FalcoIOManager, ImageSet


def _write(folder, images):
    paths = [folder / f"{i:03d}.png" for i in range(len(images))]
    for path, image in zip(paths, images):
        save_png(path, image)
    return paths


@pytest.fixture
def odd_sized(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8) for i in range(7)]
    return images, ImageFiles(_write(tmp_path, images), size=32, workers=3)


def test_indexing_reads_what_the_resized_array_holds(odd_sized):
    images, files = odd_sized
    expected = resize_images(images, 32)
    assert files.shape == expected.shape and len(files) == 7 and files.dtype == np.uint8
    np.testing.assert_array_equal(files[:], expected)
    np.testing.assert_array_equal(files[2], expected[2])
    np.testing.assert_array_equal(files[-1], expected[-1])
    np.testing.assert_array_equal(files[1:6:2], expected[1:6:2])
    np.testing.assert_array_equal(files[np.array([6, 0, 6])], expected[[6, 0, 6]])
    mask = np.arange(7) % 3 == 0
    np.testing.assert_array_equal(files[mask], expected[mask])
    np.testing.assert_array_equal(np.asarray(files), expected)
    np.testing.assert_array_equal(take(files, [4, 1])[:], expected[[4, 1]])
    np.testing.assert_array_equal(take(expected, [4, 1]), expected[[4, 1]])
    assert isinstance(take(files, [4, 1]), ImageFiles)
    with pytest.raises(IndexError):
        files[7]
    with pytest.raises(IndexError):
        files[np.array([0, 9])]
    with pytest.raises(IndexError, match="not a tuple"):
        files[1, 2]


def test_read_batches_cover_the_set_in_order_for_files_and_arrays(odd_sized):
    _, files = odd_sized
    array = files[:]
    for source in (files, array):
        parts = list(read_batches(source, 3))
        assert [p for p, _ in parts] == [slice(0, 3), slice(3, 6), slice(6, 7)]
        np.testing.assert_array_equal(np.concatenate([b for _, b in parts]), array)


def test_a_vanished_file_names_itself_and_the_fix(odd_sized):
    _, files = odd_sized
    files.paths[3].unlink()
    with pytest.raises(FalcoError, match=r"003\.png.*changed or removed since.*materialize the asset"):
        files[2:5]


_MEASURE_WRITE_AND_LOAD = """
import json, sys, tracemalloc
from pathlib import Path
import dagster as dg
import numpy as np
import pandas as pd
from anon_core.data.image_files import ImageFiles
from orchestration.io_manager import FalcoIOManager, ImageSet

source, store, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
files = ImageFiles(sorted(source.glob("*.png")), size=128, workers=4)
names = [f"person_{i // 10}/{i:03d}.png" for i in range(count)]
table = pd.DataFrame({"image": names[:50] + [""] + names[50:], "v": np.arange(count + 1)})
manager = FalcoIOManager(root=store)
out = dg.build_output_context(asset_key=dg.AssetKey("real_images"))
tracemalloc.start()
manager.handle_output(out, ImageSet(table=table, images=files))
_, written_peak = tracemalloc.get_traced_memory()
tracemalloc.reset_peak()
loaded = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("real_images"), upstream_output=out))
_, load_peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
assert isinstance(loaded.images, ImageFiles) and loaded.table.equals(table)
print(json.dumps({"written_peak": written_peak, "load_peak": load_peak}))
"""


def test_io_manager_streams_image_sets_in_and_out(tmp_path):
    """480 images at 128 px (23.6 MB decoded): writing them from ImageFiles and loading them back never holds more
    than a fraction of the set, and the stored PNGs are exactly the images. Measured in a fresh interpreter:
    tracemalloc counts every thread's allocations, and earlier tests' threads are no part of the IO manager's."""
    rng = np.random.default_rng(1)
    source_dir = tmp_path / "source"
    tile = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    count = 480
    _write(source_dir, [np.roll(tile, i, axis=1) for i in range(count)])
    set_bytes = count * 128 * 128 * 3
    store = tmp_path / "store"

    done = subprocess.run([sys.executable, "-c", _MEASURE_WRITE_AND_LOAD, str(source_dir), str(store), str(count)],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])

    written_peak, load_peak = peaks["written_peak"], peaks["load_peak"]
    assert written_peak < set_bytes / 3, f"writing peaked at {written_peak / 1e6:.1f} MB of a {set_bytes / 1e6:.1f} MB set"
    assert load_peak < set_bytes / 5, f"loading peaked at {load_peak / 1e6:.1f} MB"
    stored = ImageFiles([store / "real_images" / "images" / f"person_{i // 10}" / f"{i:03d}.png"
                         for i in (0, 49, 50, count - 1)], size=128)
    for position, i in enumerate((0, 49, 50, count - 1)):
        np.testing.assert_array_equal(stored[position], np.roll(tile, i, axis=1))
    assert sorted(p.name for p in (store / "real_images" / "images" / "person_9").iterdir()) == \
        [f"{i:03d}.png" for i in range(90, 100)]


def test_a_keyed_image_set_makes_and_writes_only_the_images_whose_file_is_not_what_it_would_write(tmp_path):
    """Shards of one variant (as anonymized_images stores them): an image whose file a table recorded writing under
    the same key, and that nobody changed since, is neither made nor written; one that moved to another shard keeps
    its file too; a new key, a file edited by hand or one deleted is made and written again. Another variant's
    images of the same keys (a variant defined like the first) are copied, not made."""
    from anon_core.data.mapped_images import MappedImages
    from orchestration.io_manager import prune_shards

    partitions = dg.MultiPartitionsDefinition({"variant": dg.StaticPartitionsDefinition(["v", "w"]),
                                               "shard": dg.StaticPartitionsDefinition(["shard-00000", "shard-00001"])})
    manager = FalcoIOManager(root=str(tmp_path / "store"))
    made: list[int] = []

    def make(rows):  # image i is filled with its value, and made only when read
        made.extend(int(v) for v in rows)
        return np.stack([np.full((8, 8, 3), v, np.uint8) for v in rows])

    def store(shard: str, names: list[str], keys: list[str], values: list[int], variant: str = "v") -> tuple:
        """(images written, unchanged, copied from another variant)."""
        out = dg.build_output_context(asset_key=dg.AssetKey("anonymized_images"), asset_partitions_def=partitions,
                                      partition_key=dg.MultiPartitionKey({"variant": variant, "shard": shard}))
        table = pd.DataFrame({"image": names, "key": keys})
        manager.handle_output(out, ImageSet(table=table, images=MappedImages(make, [np.array(values)], (8, 8, 3))))
        counts = {name: value.value for name, value in out.get_logged_metadata().items()}
        return counts["num_images_written"], counts["num_images_unchanged"], counts["num_images_copied"]

    folder = tmp_path / "store" / "anonymized_images" / "v"
    assert store("shard-00000", ["a.png", "b.png"], ["ka", "kb"], [1, 2]) == (2, 0, 0)
    assert store("shard-00001", ["c.png"], ["kc"], [3]) == (1, 0, 0)
    made.clear()
    # an image added before the others: "b" moves to the next shard, whose step runs after the first one's
    assert store("shard-00000", ["0.png", "a.png"], ["k0", "ka"], [10, 1]) == (1, 1, 0)
    assert store("shard-00001", ["b.png", "c.png"], ["kb", "kc"], [2, 3]) == (0, 2, 0)
    assert made == [10]  # the one new image, nothing else generated
    assert (folder / ".shard-00000.moved.parquet").is_file()
    assert prune_shards(folder, ["shard-00000", "shard-00001"]) == []  # the kept records go, quietly
    assert not list(folder.glob(".*.parquet"))
    # a new key (other codes), a file edited by hand and one deleted are written again; the untouched one is not
    save_png(folder / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (folder / "images" / "c.png").unlink()
    made.clear()
    assert store("shard-00001", ["b.png", "c.png"], ["kb2", "kc"], [20, 3]) == (2, 0, 0)
    assert store("shard-00000", ["0.png", "a.png"], ["k0", "ka"], [10, 1]) == (1, 1, 0)
    assert sorted(made) == [1, 3, 20]
    loaded = {name: int(np.asarray(Image.open(folder / "images" / name))[0, 0, 0])
              for name in ("0.png", "a.png", "b.png", "c.png")}
    assert loaded == {"0.png": 10, "a.png": 1, "b.png": 20, "c.png": 3}
    # variant "w": two images of "v"'s keys are copied (not linked), one of a key of its own is made
    made.clear()
    assert store("shard-00000", ["0.png", "a.png", "b.png"], ["k0", "ka", "kw"], [10, 1, 7], variant="w") == (1, 0, 2)
    assert made == [7]
    copies = tmp_path / "store" / "anonymized_images" / "w" / "images"
    assert (copies / "a.png").read_bytes() == (folder / "images" / "a.png").read_bytes()
    assert (copies / "a.png").stat().st_ino != (folder / "images" / "a.png").stat().st_ino

    # what the evaluation keeps of an image holds while its file is the one the table recorded (verified_keys)
    from orchestration.io_manager import verified_keys

    in_context = dg.build_input_context(asset_key=dg.AssetKey("anonymized_images"), asset_partitions_def=partitions,
                                        partition_key=dg.MultiPartitionKey({"variant": "w", "shard": "shard-00000"}))
    stored = manager.load_input(in_context)
    assert verified_keys(stored) == ["k0", "ka", "kw"]
    save_png(copies / "b.png", np.zeros((8, 8, 3), np.uint8))  # edited by hand since
    (copies / "0.png").unlink()
    assert verified_keys(stored) == [None, "ka", None]
