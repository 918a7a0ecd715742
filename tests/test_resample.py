"""The identity and attribute networks' input resize as two matrix products (anon_core/networks/resample.py)
against the reference ops (antialiased bicubic for FaRL, pSp's pooling + crop for ArcFace): equal in float64,
forward and backward, at the sizes the method meets (1024 px generator output) and at awkward ones. CPU, seeded."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from anon_core.networks.arcface import ArcFaceEncoder, IRSEConfig, PspCropPool
from anon_core.networks.farl import ClipResize, FaRLEncoder, ViTConfig
from anon_core.networks.resample import RESIZE_FORMS, resample_matrices, set_resize_form
from anon_core.networks.stylegan2 import Generator, StyleGAN2Config
from anon_core.optimize import anonymize_batch
from seeding import mini_step_inputs

pytestmark = pytest.mark.usefixtures("seeded_rng")

FORWARD_ATOL = 1e-12  # float64: the same weighted sums in another order
BACKWARD_ATOL = 1e-12


def farl(input_resolution: int) -> FaRLEncoder:
    """A FaRL encoder whose preprocess resizes to `input_resolution` (the transformer is as small as it goes)."""
    config = ViTConfig(input_resolution=input_resolution, patch_size=input_resolution // 2, width=8, layers=1,
                       heads=2, output_dim=4)
    return FaRLEncoder(config).eval().requires_grad_(False)


def arcface(input_size: int = 112) -> ArcFaceEncoder:
    config = IRSEConfig(stage_channels=(16, 16), stage_blocks=(1, 1), embedding_dim=8, input_size=input_size)
    return ArcFaceEncoder(config).eval().requires_grad_(False)


def resized_and_gradient(prepare, net, form: str, images: torch.Tensor, probe: torch.Tensor | None = None):
    """(prepare(images), d/d images of (prepare(images) * probe).sum()) under resize form `form`."""
    set_resize_form(net, form)
    x = images.detach().clone().requires_grad_(True)
    out = prepare(x)
    probe = torch.randn_like(out) if probe is None else probe
    (out * probe).sum().backward()
    return out.detach(), x.grad, probe


def assert_forms_match(prepare, net, images: torch.Tensor, atol: float = FORWARD_ATOL) -> torch.Tensor:
    reference, grad_reference, probe = resized_and_gradient(prepare, net, "interpolate", images)
    matmul, grad_matmul, _ = resized_and_gradient(prepare, net, "matmul", images, probe)
    assert matmul.shape == reference.shape and matmul.dtype == reference.dtype
    torch.testing.assert_close(matmul, reference, atol=atol, rtol=0)
    torch.testing.assert_close(grad_matmul, grad_reference, atol=atol if atol > FORWARD_ATOL else BACKWARD_ATOL,
                               rtol=0)
    return reference


@pytest.mark.parametrize(("side", "size"), [(1024, 224), (300, 224), (97, 32), (100, 224), (16, 24)])
def test_farl_resize_as_matrices_equals_the_antialiased_bicubic(side: int, size: int):
    # 1024 -> 224 is the method's; 300 and 97 shrink by odd ratios; 100 -> 224 and 16 -> 24 grow (no antialiasing)
    net = farl(size).double()
    images = torch.rand(2, 3, side, side, dtype=torch.float64) * 2 - 1
    reference = assert_forms_match(net.preprocess, net, images)
    assert reference.shape == (2, 3, size, size)


@pytest.mark.parametrize(("side", "input_size"), [(1024, 112), (512, 112), (300, 112), (256, 64), (200, 112)])
def test_arcface_crop_and_pooling_as_matrices_equals_psp(side: int, input_size: int):
    # 1024 and 512 pool evenly to 256, 300 does not; 256 starts at pSp's size; 200 is first up-sampled (bilinear)
    net = arcface(input_size).double()
    images = torch.rand(2, 3, side, side, dtype=torch.float64) * 2 - 1
    reference = assert_forms_match(net.prepare, net, images)
    assert reference.shape == (2, 3, input_size, input_size)


def test_embeddings_and_their_gradients_agree_in_float32():
    images = torch.rand(3, 3, 256, 256) * 2 - 1
    for net, embed in ((farl(64), lambda n, x: n(x)[0]), (arcface(), lambda n, x: n(x))):
        reference, grad_reference, probe = resized_and_gradient(lambda x, n=net: embed(n, x), net, "interpolate",
                                                                images)
        matmul, grad_matmul, _ = resized_and_gradient(lambda x, n=net: embed(n, x), net, "matmul", images, probe)
        torch.testing.assert_close(matmul, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_matmul, grad_reference, atol=1e-6, rtol=1e-4)


def test_matmul_form_runs_no_resampling_kernel_once_its_matrices_exist(monkeypatch):
    net_farl, net_arcface = farl(32), arcface(32)
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    set_resize_form(net_farl, "matmul")
    set_resize_form(net_arcface, "matmul")
    expected = (net_farl.preprocess(images), net_arcface.prepare(images))  # builds (and caches) the matrices

    def refuse(*args, **kwargs):
        raise AssertionError("a resampling kernel ran in the matmul form")

    monkeypatch.setattr(F, "interpolate", refuse)
    original_pool = F.adaptive_avg_pool2d
    monkeypatch.setattr(F, "adaptive_avg_pool2d",
                        lambda x, size: original_pool(x, size) if x.shape[-1] > 256 else refuse())
    again = (net_farl.preprocess(images), net_arcface.prepare(images))
    for a, b in zip(again, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_matrices_are_built_once_per_size_and_device():
    first = resample_matrices(ClipResize(224), 1024, torch.device("cpu"), torch.float32)
    assert resample_matrices(ClipResize(224), 1024, torch.device("cpu"), torch.float32) is first
    rows, cols = first
    assert rows.shape == cols.shape == (224, 1024)
    # a resize keeps a flat image flat: every output pixel's weights sum to one
    torch.testing.assert_close(rows.double().sum(dim=1), torch.ones(224, dtype=torch.float64), atol=1e-6, rtol=0)
    crop_rows, crop_cols = resample_matrices(PspCropPool(112), 256, torch.device("cpu"), torch.float64)
    assert crop_rows.shape == crop_cols.shape == (112, 256)
    # the crop: rows 35:223 and columns 32:220 only (PSP_CROP), each pooled evenly
    assert crop_rows[:, :35].abs().max() == 0 and crop_rows[:, 223:].abs().max() == 0
    assert crop_cols[:, :32].abs().max() == 0 and crop_cols[:, 220:].abs().max() == 0
    assert not torch.equal(crop_rows, crop_cols)


def test_under_bf16_autocast_the_resize_stays_float32():
    net = farl(64)
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    set_resize_form(net, "interpolate")
    reference = net.preprocess(images)
    set_resize_form(net, "matmul")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        resized = net.preprocess(images)
    assert resized.dtype == torch.float32
    torch.testing.assert_close(resized, reference, atol=1e-5, rtol=0)


def test_set_resize_form_reaches_nested_networks_and_refuses_unknown_forms():
    nets = torch.nn.ModuleDict({"farl": farl(32), "identity": arcface(32)})
    set_resize_form(nets, "matmul")
    assert nets["farl"].resize_form == nets["identity"].resize_form == "matmul"
    assert FaRLEncoder.resize_form == ArcFaceEncoder.resize_form == RESIZE_FORMS[0]  # the class default is kept
    with pytest.raises(ValueError, match="unknown resize form 'bicubic'"):
        set_resize_form(nets, "bicubic")


def test_optimization_gives_the_same_codes_with_either_resize_form():
    torch.manual_seed(0)
    g = Generator(StyleGAN2Config(resolution=64, z_dim=16, w_dim=16, mapping_layers=1, channel_max=16))
    g = g.eval().requires_grad_(False)
    identity, attributes = arcface(32), farl(48)  # 64 px images: pooled to 32 (ArcFace), shrunk to 48 (FaRL)
    params, w_real, w_fake, images = mini_step_inputs(g)
    results = {}
    for form in RESIZE_FORMS:
        nets = [copy.deepcopy(identity), copy.deepcopy(attributes)]
        for net in nets:
            set_resize_form(net, form)
        results[form] = anonymize_batch(g, *nets, images, w_real, w_fake, params, return_images=False)
    reference, matmul = results["interpolate"], results["matmul"]
    moved = (reference.ws[:, params.layer_start:params.layer_stop] - w_fake[:, None]).abs().amax()
    assert moved > 1e-4  # the steps moved the codes, so the comparison means something
    torch.testing.assert_close(matmul.ws, reference.ws, atol=1e-5, rtol=0)


@pytest.mark.gpu
def test_cuda_matrices_equal_the_cuda_kernels(monkeypatch):
    """The matrices come from the CPU kernels; the reference form on CUDA runs PyTorch's CUDA kernels: the same maps,
    forward and backward, on a channels-last float32 batch as the generator hands it over."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # true float32 products
    images = (torch.rand(4, 3, 1024, 1024, device="cuda") * 2 - 1).contiguous(memory_format=torch.channels_last)
    for net, prepare in ((farl(224).cuda(), "preprocess"), (arcface().cuda(), "prepare")):
        reference, grad_reference, probe = resized_and_gradient(getattr(net, prepare), net, "interpolate", images)
        matmul, grad_matmul, _ = resized_and_gradient(getattr(net, prepare), net, "matmul", images, probe)
        # float32 in both forms: PyTorch's own kernels compute their bicubic weights in float32, which puts them
        # about 2e-5 of the largest value away from the exact maps (measured the same on the CPU and on an H200)
        for got, want in ((matmul, reference), (grad_matmul, grad_reference)):
            torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)
