"""What tests of "read only what is needed" and of the evaluation outputs store (evaluation.output_store) assert
on: an image set that counts the images read from it, and the keys a store's files hold, read without the store."""

from pathlib import Path

import numpy as np


class Counted:
    def __init__(self, images):
        self.images, self.read = images, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        batch = self.images[index]
        self.read += len(batch)
        return batch


def kept_keys(root: Path) -> set[str]:
    """Every image key the parts under a store's `root` hold, in the folders of all its networks."""
    keys = set()
    for part in Path(root).glob("*/*.npz"):
        with np.load(part) as data:
            keys |= set(data["key"].tolist())
    return keys
