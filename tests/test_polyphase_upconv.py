"""The polyphase form of the batched up-sampling modulated conv (anon_core/networks/stylegan2.py, ModulatedConv2d
``up_form``): four stride-1 phase convs + a pixel shuffle against the reference stride-2 transposed conv. CPU,
float64, seeded."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from anon_core.networks.stylegan2 import (
    UP_FORMS,
    ModulatedConv2d,
    _pixel_shuffle_2,
    _polyphase_taps,
    set_modulated_conv_form,
    set_upsample_form,
)

FORWARD_ATOL = 1e-12  # float64: the same sums of the same products, in another order
BACKWARD_ATOL = 1e-10

# conftest: tiny convs run faster on one thread; every test starts from seed 0
pytestmark = pytest.mark.usefixtures("one_thread", "seeded_rng")


@pytest.fixture
def no_transposed_conv(monkeypatch):
    """Makes F.conv_transpose2d raise: proves that the polyphase form does not run the reference one."""

    def refuse(*args, **kwargs):
        raise AssertionError("conv_transpose2d called in the polyphase form")

    def install() -> None:
        monkeypatch.setattr(F, "conv_transpose2d", refuse)

    return install


def run_form(conv: ModulatedConv2d, form: str, x, style, probe, add=None, gain: float = 1.0):
    """Output and gradients (x, style, weight) of `(out * probe).sum()` under up-sampling form `form`."""
    conv.up_form = form
    x = x.detach().clone().requires_grad_(True)
    style = style.detach().clone().requires_grad_(True)
    conv.zero_grad(set_to_none=True)
    out = conv(x, style, gain=gain, add=add)
    (out * probe).sum().backward()
    return out.detach(), x.grad, style.grad, conv.weight.grad, conv.modulation.weight.grad


def assert_forms_match(conv: ModulatedConv2d, x, style, no_transposed_conv, add=None, gain: float = 1.0) -> None:
    conv.fused = False  # the batched path, whatever the batch
    out_side = 2 * x.shape[-1]
    probe = torch.randn(x.shape[0], conv.out_channels, out_side, out_side, dtype=x.dtype)
    reference = run_form(conv, "transposed", x, style, probe, add, gain)
    no_transposed_conv()
    polyphase = run_form(conv, "polyphase", x, style, probe, add, gain)
    assert reference[0].shape == polyphase[0].shape == probe.shape
    torch.testing.assert_close(polyphase[0], reference[0], atol=FORWARD_ATOL, rtol=0)
    for name, got, want in zip(("x", "style", "weight", "modulation.weight"), polyphase[1:], reference[1:]):
        assert want is not None and want.abs().max() > 0, name
        torch.testing.assert_close(got, want, atol=BACKWARD_ATOL, rtol=0, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize(
    ("batch", "in_ch", "out_ch", "side"),
    [(1, 3, 5, 4), (2, 8, 3, 5), (3, 4, 8, 8), (2, 6, 6, 4), (3, 3, 4, 5)],
)
def test_polyphase_equals_transposed_forward_and_backward(batch, in_ch, out_ch, side, no_transposed_conv) -> None:
    conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim=7, upsample=True).double()
    x = torch.randn(batch, in_ch, side, side, dtype=torch.float64)
    style = torch.randn(batch, 7, dtype=torch.float64)
    assert_forms_match(conv, x, style, no_transposed_conv)


@pytest.mark.parametrize("demodulate", [True, False])
def test_polyphase_with_gain_add_and_without_demodulation(demodulate, no_transposed_conv) -> None:
    conv = ModulatedConv2d(5, 4, 3, style_dim=7, demodulate=demodulate, upsample=True).double()
    x = torch.randn(2, 5, 5, 5, dtype=torch.float64)
    style = torch.randn(2, 7, dtype=torch.float64)
    add = torch.randn(1, 4, 10, 10, dtype=torch.float64)
    assert_forms_match(conv, x, style, no_transposed_conv, add=add, gain=1.7)


# (1, 1): a 4 x 4 folded kernel with zero taps in the 3 x 3 window; (1, 5, 10, 10, 5, 1): 8 x 8, a 5 x 5 window
@pytest.mark.parametrize("blur_taps", [(1, 1), (1, 3, 3, 1), (1, 5, 10, 10, 5, 1), (1, 2, 3, 3, 2, 1, 1, 1)])
@pytest.mark.parametrize("kernel_size", [3, 1])
def test_polyphase_with_other_blur_filters(blur_taps, kernel_size, no_transposed_conv) -> None:
    conv = ModulatedConv2d(4, 5, kernel_size, style_dim=6, upsample=True, blur_taps=blur_taps).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    style = torch.randn(2, 6, dtype=torch.float64)
    assert_forms_match(conv, x, style, no_transposed_conv, add=torch.randn(2, 5, 10, 10, dtype=torch.float64))


@pytest.mark.parametrize("blur_taps", [(1, 2, 1), (1, 4, 6, 4, 1)])
def test_odd_blur_filters_are_still_refused(blur_taps) -> None:
    with pytest.raises(ValueError, match="unevenly"):
        ModulatedConv2d(4, 5, 3, style_dim=6, upsample=True, blur_taps=blur_taps)


def test_polyphase_taps_of_config_f_and_their_guard() -> None:
    # 6 x 6 folded kernel, padding 2: phase 0 takes taps 4, 2, 0 and phase 1 taps 5, 3, 1 (of the unflipped kernel)
    starts, n, pad, conv_pad = _polyphase_taps(6, 2)
    assert (n, pad, conv_pad) == (3, 0, 1)
    flipped = torch.arange(6).flip(0)
    assert [flipped[s : s + 2 * n - 1 : 2].tolist() for s in starts] == [[4, 2, 0], [5, 3, 1]]
    with pytest.raises(ValueError, match="2x"):
        _polyphase_taps(5, 2)  # conv_transpose2d would give 2H - 1 outputs


def test_channels_last_layout_and_values_match_the_transposed_form(no_transposed_conv) -> None:
    conv = ModulatedConv2d(6, 4, 3, style_dim=5, upsample=True).double()
    conv.fused = False
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    style = torch.randn(2, 5, dtype=torch.float64)
    noise = torch.randn(1, 4, 10, 10, dtype=torch.float64)
    results = {}
    for form in UP_FORMS:
        if form == "polyphase":
            no_transposed_conv()
        conv.up_form = form
        for add in (None, noise):
            out = conv(x, style, add=add)
            results[form, add is None] = (out, out.is_contiguous(memory_format=torch.channels_last),
                                          out.is_contiguous())
    for no_add in (True, False):
        ref, poly = results["transposed", no_add], results["polyphase", no_add]
        assert poly[1:] == ref[1:]  # same layout (channels-last on the CPU)
        torch.testing.assert_close(poly[0], ref[0], atol=FORWARD_ATOL, rtol=0)


def test_pixel_shuffle_keeps_channels_last() -> None:
    x = torch.randn(2, 12, 3, 5, dtype=torch.float64)
    for layout in (torch.contiguous_format, torch.channels_last):
        out = _pixel_shuffle_2(x.contiguous(memory_format=layout))
        assert out.shape == (2, 3, 6, 10)
        assert out.is_contiguous(memory_format=layout)
        assert torch.equal(out, F.pixel_shuffle(x, 2))


def test_tiny_generator_images_and_code_gradients_match(tiny_nets, no_transposed_conv) -> None:
    g = copy.deepcopy(tiny_nets.generator).double()
    with torch.no_grad():  # seeded noise strengths and biases are zeros: make them matter
        gen = torch.Generator().manual_seed(3)
        for name, p in g.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    set_modulated_conv_form(g, None)  # a batch of 3 takes the batched path
    ws = torch.randn(3, g.num_ws, g.config.w_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    up_convs = [m for m in g.modules() if isinstance(m, ModulatedConv2d) and m.upsample]
    assert up_convs and all(m.up_form == "transposed" for m in g.modules() if isinstance(m, ModulatedConv2d))
    results = {}
    for form in UP_FORMS:
        if form == "polyphase":
            no_transposed_conv()
        set_upsample_form(g, form)
        assert all(m.up_form == form for m in up_convs)
        codes = ws.clone().requires_grad_(True)
        image = g.synthesis(codes)
        (image * torch.linspace(-1, 1, image.shape[-1], dtype=image.dtype)).sum().backward()
        results[form] = (image.detach(), codes.grad)
    image, grad = results["polyphase"]
    assert image.shape == (3, 3, g.config.resolution, g.config.resolution) and image.std() > 0.1
    torch.testing.assert_close(image, results["transposed"][0], atol=1e-10, rtol=0)
    torch.testing.assert_close(grad, results["transposed"][1], atol=1e-10, rtol=0)


def test_float32_generator_matches_to_float_rounding(tiny_nets) -> None:
    g = copy.deepcopy(tiny_nets.generator)
    ws = torch.randn(2, g.num_ws, g.config.w_dim, generator=torch.Generator().manual_seed(2))
    images = {}
    with torch.no_grad():
        for form in UP_FORMS:
            set_upsample_form(g, form)
            images[form] = g.synthesis(ws)
    torch.testing.assert_close(images["polyphase"], images["transposed"], atol=1e-4, rtol=0)


def test_setter_rejects_an_unknown_form_and_changes_nothing(tiny_nets) -> None:
    g = copy.deepcopy(tiny_nets.generator)
    for bad in ("pixel_shuffle", "Polyphase", None):
        with pytest.raises(ValueError, match="up-sampling form"):
            set_upsample_form(g, bad)
    assert all(m.up_form == "transposed" for m in g.modules() if isinstance(m, ModulatedConv2d))
    assert ModulatedConv2d.up_form == "transposed"  # the default until a GPU measures the polyphase form


@pytest.mark.gpu
def test_cuda_polyphase_matches_transposed_in_both_layouts_and_under_bf16(tiny_nets, monkeypatch) -> None:
    """On cuDNN: same images, and each up-sampling conv's output in the layout that the transposed conv gives (what
    the addcmul after it keeps), for a contiguous and a channels-last generator."""
    from anon_core.acceleration import set_memory_format_

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # true float32 (TF32 differed by 4e-3)
    g = copy.deepcopy(tiny_nets.generator).cuda()
    ws = torch.randn(4, g.num_ws, g.config.w_dim, generator=torch.Generator().manual_seed(1)).cuda()
    layouts: list[tuple[bool, bool]] = []

    def record(module, args, out) -> None:
        if module.upsample:
            layouts.append((out.is_contiguous(memory_format=torch.channels_last), out.is_contiguous()))

    for conv in g.modules():
        if isinstance(conv, ModulatedConv2d):
            conv.register_forward_hook(record)
    results = {}
    with torch.no_grad():
        for memory_format in (torch.contiguous_format, torch.channels_last):
            set_memory_format_(g, memory_format)
            for form in UP_FORMS:
                set_upsample_form(g, form)
                layouts.clear()
                image = g.synthesis(ws)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    bf16 = g.synthesis(ws)
                results[memory_format, form] = (image, bf16, list(layouts))
    for memory_format in (torch.contiguous_format, torch.channels_last):
        ref, poly = results[memory_format, "transposed"], results[memory_format, "polyphase"]
        assert poly[2] == ref[2] and ref[2]
        torch.testing.assert_close(poly[0], ref[0], atol=1e-4, rtol=1e-4)
        assert (poly[1].float() - ref[0]).abs().mean() / ref[0].abs().mean() < 0.05
