"""Image sets left on disk: ImageFiles reads what an array would hold, and the IO manager moves image sets
between assets without ever decoding a whole set at once."""

import tracemalloc

import dagster as dg
import numpy as np
import pandas as pd
import pytest

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


def test_io_manager_streams_image_sets_in_and_out(tmp_path):
    """480 images at 128 px (23.6 MB decoded): writing them from ImageFiles and loading them back never holds more
    than a fraction of the set, and the stored PNGs are exactly the images."""
    rng = np.random.default_rng(1)
    source_dir = tmp_path / "source"
    tile = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    count = 480
    images = [np.roll(tile, i, axis=1) for i in range(count)]
    files = ImageFiles(_write(source_dir, images), size=128, workers=4)
    set_bytes = count * 128 * 128 * 3
    del images
    names = [f"person_{i // 10}/{i:03d}.png" for i in range(count)]
    table = pd.DataFrame({"image": names[:50] + [""] + names[50:], "v": np.arange(count + 1)})
    manager = FalcoIOManager(root=str(tmp_path / "store"))
    out = dg.build_output_context(asset_key=dg.AssetKey("real_images"))

    tracemalloc.start()
    manager.handle_output(out, ImageSet(table=table, images=files))
    _, written_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    loaded = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("real_images"), upstream_output=out))
    _, load_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert written_peak < set_bytes / 3, f"writing peaked at {written_peak / 1e6:.1f} MB of a {set_bytes / 1e6:.1f} MB set"
    assert load_peak < set_bytes / 5, f"loading peaked at {load_peak / 1e6:.1f} MB"
    assert isinstance(loaded.images, ImageFiles) and loaded.table.equals(table)
    for i in (0, 49, 50, count - 1):
        np.testing.assert_array_equal(loaded.images[i], np.roll(tile, i, axis=1))
    assert sorted(p.name for p in (tmp_path / "store" / "real_images" / "images" / "person_9").iterdir()) == \
        [f"{i:03d}.png" for i in range(90, 100)]
