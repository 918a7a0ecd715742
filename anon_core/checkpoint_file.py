"""Reading a PyTorch checkpoint file: tensors only (`weights_only=True`, nothing is unpickled), and every way a
file can be damaged (a web page saved under its name, a partial download, random bytes, Python objects besides the
tensors) is one CheckpointError naming the file and the fix, never torch's stack trace."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from anon_core.errors import FalcoError, MissingWeightsError

_MAGIC = (b"PK\x03\x04", b"\x80")  # torch's zip format; the legacy format starts with a pickle protocol byte
FETCH_AGAIN = "fetch it again (`falco models fetch NAME` verifies its sha256)"


class CheckpointError(FalcoError):
    """A checkpoint file that cannot be read or does not fit the network it is loaded into."""


GENERATOR_RESAVE = "e.g. torch.save({'g_ema': ckpt['g_ema'], 'latent_avg': ckpt['latent_avg']}, ...)"


def read_checkpoint(path: str | Path, resave: str = GENERATOR_RESAVE) -> Any:
    """The tensors (and containers of them) the file holds. `resave`: how to keep only the weights of a file that
    also holds Python objects, shown in that error."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"checkpoint {path} does not exist; fetch it (`falco models fetch NAME`, see `falco models list`) or "
            "pass the path of the file you have"
        )
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head.startswith(_MAGIC):
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (it starts with {head!r}: a web page, or "
                              f"a partial download?); {FETCH_AGAIN}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        if not detail:  # no refused Python object: bytes no pickle holds (damaged)
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (its pickle data cannot be read); it "
                                  f"may be truncated or damaged: {FETCH_AGAIN}") from err
        raise CheckpointError(
            f"{path} holds Python objects besides tensors, so it is not loaded (weights_only=True refuses to "
            f"unpickle them: {detail.split('. Please use')[0]}); re-save just its weights ({resave}) in a trusted "
            "environment, or use the official file") from err
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, AttributeError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({first[:120]}); it may be truncated: "
                              f"{FETCH_AGAIN}") from err
