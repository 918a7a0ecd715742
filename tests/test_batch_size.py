"""`batch_size: auto`: the selection rule as a pure function of measured step memory, and what it means on a CPU."""

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from anon_core.batch_size import PROBE_BATCHES, confirm_batch_size, cuda_step_peak, fit_batch_size, resolve_batch_size
from anon_core.errors import FalcoError
from anon_core.params import load_params
from orchestration.cli import main
from seeding import mini_networks

GIB = 2**30


class LinearStep:
    """A step whose memory is `fixed + per_image * batch` bytes; records which batches were measured."""

    def __init__(self, fixed: float, per_image: float):
        self.fixed, self.per_image, self.measured = fixed, per_image, []

    def __call__(self, batch: int) -> int:
        self.measured.append(batch)
        return int(self.fixed + self.per_image * batch)


def test_largest_batch_whose_extrapolated_step_fits_the_free_memory():
    step = LinearStep(fixed=1 * GIB, per_image=3 * GIB)
    # 0.85 * 80 GiB = 68 GiB; (68 - 1) / 3 = 22.3 -> 22 images
    assert fit_batch_size(step, free_bytes=80 * GIB, fraction=0.85, cap=64) == 22
    assert step.measured == list(PROBE_BATCHES)  # two small measured steps, nothing larger
    assert fit_batch_size(LinearStep(1 * GIB, 3 * GIB), 80 * GIB, fraction=1.0, cap=64) == 26  # (80 - 1) / 3
    assert fit_batch_size(LinearStep(1 * GIB, 3 * GIB), 80 * GIB, fraction=0.85, cap=16) == 16
    assert fit_batch_size(LinearStep(0, 0.1 * GIB), 80 * GIB, fraction=0.85, cap=64) == 64


def test_a_step_that_does_not_fit_once_is_a_clear_error():
    with pytest.raises(FalcoError, match="needs 3.50 GiB.*auto_memory_fraction"):
        fit_batch_size(LinearStep(0.5 * GIB, 3 * GIB), free_bytes=3 * GIB, fraction=0.85, cap=64)


class StepThatFitsUpTo:
    """A step that runs out of GPU memory above `limit` images; records the batches it was tried at."""

    def __init__(self, limit: int):
        self.limit, self.tried = limit, []

    def __call__(self, batch: int) -> int:
        self.tried.append(batch)
        if batch > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at batch {batch}")
        return batch


def test_a_chosen_batch_that_runs_out_of_memory_shrinks_until_its_step_runs():
    step = StepThatFitsUpTo(20)
    assert confirm_batch_size(step, 30) == 17  # 30 -> 25 -> 21 -> 17, each 85% of the last
    assert step.tried == [30, 25, 21, 17]
    assert confirm_batch_size(StepThatFitsUpTo(64), 42) == 42  # a batch that fits is kept
    assert confirm_batch_size(StepThatFitsUpTo(1), 3) == 1  # shrinks by at least one image each time
    with pytest.raises(FalcoError, match="one image's optimization step does not fit"):
        confirm_batch_size(StepThatFitsUpTo(0), 4)


def test_numbers_pass_through_and_auto_on_a_cpu_uses_the_cpu_default(tiny_nets):
    assert resolve_batch_size(tiny_nets, load_params("tiny", batch_size=5)) == 5
    auto = load_params("tiny", batch_size="auto", **{"speed.auto_cpu_batch_size": 3})
    assert resolve_batch_size(tiny_nets, auto) == 3


def test_cli_batch_size_auto_and_amp_are_recorded(tmp_path, lfw_faces):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(lfw_faces[i]).save(src / f"{i}.png")
    out = tmp_path / "out"
    args = ["anonymize", str(src), str(out), "--no-align", "--steps", "1", "--pool-size", "8", "--quiet",
            "--batch-size", "auto", "--amp", "bf16"]
    assert main(args) == 0
    record = json.loads((out / "params.json").read_text())
    assert record["batch_size_requested"] == "auto"
    assert record["params"]["batch_size"] == record["params"]["speed"]["auto_cpu_batch_size"]
    assert record["params"]["speed"]["amp"] == "bf16" and record["params"]["speed"]["compile"] is False


@pytest.mark.gpu
def test_measured_step_memory_grows_with_the_batch_and_auto_fits_it():
    g, identity, farl = (net.cuda() for net in mini_networks())
    nets = SimpleNamespace(generator=g, identity=identity, farl=farl, device=torch.device("cuda"), extra={})
    params = load_params("tiny", batch_size="auto")
    peak = cuda_step_peak(nets, params)
    one, four = peak(1), peak(4)
    assert 0 < one < four
    chosen = resolve_batch_size(nets, params)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    assert 1 <= chosen <= params.speed.auto_max_batch_size
    assert peak(chosen) <= free  # the chosen batch's step does fit
