"""Argument types shared by the `falco` sub-commands."""

import argparse
from pathlib import Path


def given_path(text: str) -> Path:
    """A path argument; an empty one is refused: an unset shell variable (`falco anonymize "$IN" out`) would otherwise
    name the current folder, and a run would read or write there."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?); give the folder or file")
    return Path(text)
