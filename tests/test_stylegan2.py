"""Tests for the pure-PyTorch StyleGAN2 generator (anon_core/networks/stylegan2.py, upfirdn.py). CPU, seeded."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from anon_core.networks.stylegan2 import (
    EqualLinear,
    Generator,
    ModulatedConv2d,
    StyleGAN2Config,
    ToRGB,
    fused_leaky_relu,
    set_modulated_conv_form,
)
from anon_core.networks.upfirdn import Blur, Upsample, make_fir_kernel, upfirdn2d

TINY = StyleGAN2Config(resolution=64, z_dim=128, w_dim=128, mapping_layers=4, channel_max=64)  # the `tiny` sizes
SMALL = StyleGAN2Config(resolution=64, z_dim=32, w_dim=32, mapping_layers=2, channel_max=16)  # same depth, cheaper
ATOL = 1e-5  # fp32 tolerance for "same computation, different batching"


# conftest: tiny convs run faster on one thread; every test starts from seed 0
pytestmark = pytest.mark.usefixtures("one_thread", "seeded_rng")


def make_generator(config: StyleGAN2Config = SMALL, seed: int = 0, noisy: bool = False) -> Generator:
    """Seeded generator; ``noisy`` perturbs the zero/one-initialized parameters so that every one matters."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        g = Generator(config).eval()
    if noisy:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in g.named_parameters():
                if name.endswith("bias") or name.endswith("noise.weight"):
                    p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return g


def random_ws(g: Generator, batch: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, g.num_ws, g.config.w_dim, generator=gen)  # a different code per layer


# --- FIR helpers ----------------------------------------------------------------------------------------------------


def naive_upfirdn2d(x: torch.Tensor, k: torch.Tensor, up: int, pad: tuple[int, int]) -> torch.Tensor:
    """Loop implementation of upfirdn2d (zero insertion, zero padding or cropping, true convolution), one [H, W] map."""
    h, w = x.shape
    p0, p1 = max(pad[0], 0), max(pad[1], 0)
    big = torch.zeros(h * up + p0 + p1, w * up + p0 + p1, dtype=torch.float64)
    big[p0 : p0 + h * up : up, p0 : p0 + w * up : up] = x.double()
    c0, c1 = max(-pad[0], 0), max(-pad[1], 0)  # negative padding crops
    big = big[c0 : big.shape[0] - c1, c0 : big.shape[1] - c1]
    kh = k.shape[0]
    out = torch.zeros(big.shape[0] - kh + 1, big.shape[1] - kh + 1, dtype=torch.float64)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            # convolution: out[i, j] = sum_ab big[i + a, j + b] * k[K-1-a, K-1-b]
            out[i, j] = (big[i : i + kh, j : j + kh] * k.double().flip(0).flip(1)).sum()
    return out


@pytest.mark.parametrize("up,pad", [(1, (1, 1)), (2, (2, 1)), (2, (1, 1)), (1, (-1, 0))])
def test_upfirdn2d_matches_naive_loop(up: int, pad: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=gen)
    k = torch.rand(4, 4, generator=gen)  # asymmetric: catches a missing flip
    out = upfirdn2d(x, k, up=up, pad=pad)
    for b in range(2):
        for c in range(3):
            ref = naive_upfirdn2d(x[b, c], k, up, pad)
            torch.testing.assert_close(out[b, c].double(), ref, atol=1e-5, rtol=0)


def test_fir_modules_keep_gain_and_kernels_are_not_persistent() -> None:
    k = make_fir_kernel([1, 3, 3, 1])
    assert k.shape == (4, 4) and math.isclose(k.sum().item(), 1.0, abs_tol=1e-7)
    x = torch.full((1, 2, 8, 8), 3.0)
    up = Upsample([1, 3, 3, 1])
    y = up(x)
    assert y.shape == (1, 2, 16, 16)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 3.0))  # interior: gain 1
    blur = Blur([1, 3, 3, 1], pad=(1, 1), upsample_factor=2)
    assert blur(torch.zeros(1, 1, 9, 9)).shape == (1, 1, 8, 8)  # transposed-conv output -> 2x side
    assert "kernel" not in up.state_dict() and "kernel" not in blur.state_dict()
    assert up.to(torch.bfloat16).kernel.dtype == torch.bfloat16  # still follows .to()


# --- layers ---------------------------------------------------------------------------------------------------------


def test_activation_equalized_linear_and_pixelnorm_facts() -> None:
    x = torch.tensor([[-1.0, 0.0, 2.0]])
    out = fused_leaky_relu(x.reshape(1, 3, 1, 1), torch.tensor([0.5, 0.5, -3.0])).flatten()
    torch.testing.assert_close(out, torch.tensor([-0.1, 0.5, -0.2]) * math.sqrt(2))  # leaky_relu(x + b, 0.2) * sqrt 2
    torch.manual_seed(0)
    lin = EqualLinear(4, 3, bias_init=0.5, lr_mul=0.01)
    assert lin.weight.std() > 10  # stored weights are N(0, 1) / lr_mul
    v = torch.randn(2, 4)
    torch.testing.assert_close(lin(v), v @ (lin.weight * 0.01 / 2).T + 0.005)  # scale = lr_mul / sqrt(fan_in)
    g = make_generator()
    z = torch.randn(2, g.config.z_dim)
    with torch.no_grad():
        torch.testing.assert_close(g.mapping(3.0 * z), g.mapping(z))  # PixelNorm first: scale-invariant in z


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("demodulate", [False, True])
def test_modulated_conv_matches_per_sample_reference(upsample: bool, demodulate: bool, fused: bool) -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, style_dim=7, demodulate=demodulate, upsample=upsample)
    conv.fused = fused  # grouped per-sample weights, or one shared conv between input and output scaling
    with torch.no_grad():
        conv.modulation.bias.add_(torch.randn(6))
    x, style = torch.randn(3, 6, 8, 8), torch.randn(3, 7)
    out = conv(x, style)
    assert out.shape == (3, 5, 16 if upsample else 8, 16 if upsample else 8)
    for b in range(3):
        s = F.linear(style[b], conv.modulation.weight / math.sqrt(7), conv.modulation.bias)  # [in]
        w = conv.weight[0] / math.sqrt(6 * 9) * s.reshape(1, 6, 1, 1)  # [out, in, 3, 3]
        if demodulate:
            w = w / torch.sqrt((w**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if upsample:
            ref = F.conv_transpose2d(x[b : b + 1], w.transpose(0, 1), stride=2)
            ref = upfirdn2d(ref, make_fir_kernel([1, 3, 3, 1]) * 4, pad=(1, 1))
        else:
            ref = F.conv2d(x[b : b + 1], w, padding=1)
        torch.testing.assert_close(out[b : b + 1], ref, atol=1e-5, rtol=1e-5)


def test_to_rgb_is_undemodulated_1x1_conv_plus_bias_plus_fir_upsampled_skip() -> None:
    torch.manual_seed(0)
    to_rgb = ToRGB(6, style_dim=7)
    with torch.no_grad():
        to_rgb.bias.normal_()
    x, style, skip = torch.randn(2, 6, 8, 8), torch.randn(2, 7), torch.randn(2, 3, 4, 4)
    out = to_rgb(x, style, skip)
    for b in range(2):
        s = F.linear(style[b], to_rgb.conv.modulation.weight / math.sqrt(7), to_rgb.conv.modulation.bias)  # [6]
        w = to_rgb.conv.weight[0] / math.sqrt(6) * s.reshape(1, 6, 1, 1)  # [3, 6, 1, 1], no demodulation
        up = upfirdn2d(skip[b : b + 1], make_fir_kernel([1, 3, 3, 1]) * 4, up=2, pad=(2, 1))  # [1, 3, 8, 8]
        torch.testing.assert_close(out[b : b + 1], F.conv2d(x[b : b + 1], w) + to_rgb.bias + up, atol=1e-5, rtol=1e-5)


# --- generator ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution,num_ws", [(64, 10), (512, 16), (1024, 18)])
def test_num_ws(resolution: int, num_ws: int) -> None:
    assert StyleGAN2Config(resolution=resolution).num_ws == num_ws
    g = make_generator(StyleGAN2Config(resolution=resolution, z_dim=8, w_dim=8, mapping_layers=1, channel_max=4))
    assert g.num_ws == num_ws
    assert len(g.convs) == num_ws - 2 and len(g.to_rgbs) == num_ws // 2 - 1


def test_bad_config_and_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="resolution=100"):
        StyleGAN2Config(resolution=100)
    g = make_generator(TINY)
    with pytest.raises(ValueError, match=r"\[B, 10, 128\]"):
        g.synthesis(torch.zeros(1, 9, 128))
    with pytest.raises(ValueError, match=r"\[B, 128\]"):
        g.mapping(torch.zeros(1, 64))
    with pytest.raises(ValueError, match="const.*random.*none"):
        g.synthesis(random_ws(g, 1), noise_mode="fixed")


def test_tiny_output_shape_and_finite() -> None:
    g = make_generator(TINY)
    z = torch.randn(2, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        img = g(z)
    assert img.shape == (2, 3, 64, 64) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert img.std() > 0.1  # not a constant image
    assert not torch.allclose(img[0], img[1])  # different z, different image


def test_truncation_psi0_gives_w_avg_exactly() -> None:
    g = make_generator()
    zd, wd = g.config.z_dim, g.config.w_dim
    assert torch.equal(g.w_avg, torch.zeros(wd))
    g.compute_w_avg_(num_samples=300, seed=5, batch_size=128)
    z = torch.randn(300, zd, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(g.w_avg, g.mapping(z).mean(0), atol=1e-5, rtol=1e-5)  # batching-independent mean
        w = g.mapping(torch.randn(3, zd))
    assert torch.equal(g.truncate(w, 0.0), g.w_avg.expand(3, -1))
    ws = w.unsqueeze(1).expand(-1, g.num_ws, -1)  # [3, num_ws, w_dim]
    assert torch.equal(g.truncate(ws, 0.0), g.w_avg.expand(3, g.num_ws, -1))
    assert torch.equal(g.truncate(w, 1.0), w)
    torch.testing.assert_close(g.truncate(w, 0.7), g.w_avg + 0.7 * (w - g.w_avg))
    assert "w_avg" in g.state_dict()
    with torch.no_grad():
        img = g(torch.randn(2, zd), psi=0.0)
        ref = g.synthesis(g.w_avg.expand(1, g.num_ws, -1))
    assert torch.equal(img[0], img[1])  # same code for both samples
    torch.testing.assert_close(img[:1], ref, atol=ATOL, rtol=0)  # batch of 2 vs 1: not bitwise, see ATOL


def test_batch_of_four_equals_four_batches_of_one() -> None:
    g = make_generator(noisy=True)
    ws = random_ws(g, 4)
    with torch.no_grad():
        batched = g.synthesis(ws)
        single = torch.cat([g.synthesis(ws[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=ATOL, rtol=0)


def test_gradients_reach_every_ws_layer_and_every_parameter() -> None:
    g = make_generator(noisy=True)
    ws = random_ws(g, 2).requires_grad_(True)
    img = g.synthesis(ws)
    img.square().mean().backward()
    per_layer = ws.grad.abs().sum(dim=(0, 2))  # [num_ws]
    assert torch.isfinite(ws.grad).all() and (per_layer > 0).all(), per_layer
    for name, p in g.named_parameters():
        if not name.startswith("style."):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    g.zero_grad()
    g(torch.randn(2, g.config.z_dim)).square().mean().backward()
    for name, p in g.style.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_changing_any_one_ws_layer_changes_the_output() -> None:
    g = make_generator()
    ws = random_ws(g, 1)
    with torch.no_grad():
        base = g.synthesis(ws)
        for k in range(g.num_ws):
            moved = ws.clone()
            moved[:, k] += 1.0
            assert (g.synthesis(moved) - base).abs().max() > 1e-3, f"ws[:, {k}] has no effect"


def ws_consumers(num_ws: int) -> dict[int, list[str]]:
    """rosinality's W+ order, written out: which modules read ws[:, k]."""
    n_blocks = num_ws // 2 - 1
    table = {0: ["conv1"], 1: ["to_rgb1", "convs.0"]}
    for j in range(n_blocks):
        i = 2 * j + 1
        table[i + 1] = [f"convs.{2 * j + 1}"]
        table[i + 2] = [f"to_rgbs.{j}"] + ([f"convs.{2 * j + 2}"] if j + 1 < n_blocks else [])
    return table


def test_ws_layer_order_is_rosinalitys() -> None:
    g = make_generator(StyleGAN2Config(resolution=32, z_dim=16, w_dim=16, mapping_layers=1, channel_max=8), noisy=True)
    table = ws_consumers(g.num_ws)
    assert sorted(table) == list(range(g.num_ws)) == list(range(8))
    assert table[7] == ["to_rgbs.2"] and table[3] == ["to_rgbs.0", "convs.2"] and table[4] == ["convs.3"]
    ws = random_ws(g, 1)
    moved = ws.clone()
    with torch.no_grad():
        base = g.synthesis(ws)
        for k, names in table.items():
            moved.copy_(ws)
            moved[:, k] += 1.0
            cut = copy.deepcopy(g)
            for name in names:  # a zero modulation weight makes the layer ignore its code
                cut.get_submodule(name).conv.modulation.weight.zero_()
            assert torch.equal(cut.synthesis(moved), cut.synthesis(ws)), f"ws[:, {k}] reaches more than {names}"
            for name in names:  # ...and each listed consumer alone does read ws[:, k]
                one = copy.deepcopy(cut)
                one.get_submodule(name).conv.modulation.weight.copy_(g.get_submodule(name).conv.modulation.weight)
                assert not torch.equal(one.synthesis(moved), one.synthesis(ws)), f"{name} ignores ws[:, {k}]"
        assert torch.equal(g.synthesis(ws), base)


def test_noise_modes() -> None:
    plain = make_generator()  # noise strength 0 at init, as in the reference: noise has no effect
    ws = random_ws(plain, 2)
    with torch.no_grad():
        assert torch.equal(plain.synthesis(ws, "const"), plain.synthesis(ws, "random"))
        g = make_generator(noisy=True)
        const_a, const_b = g.synthesis(ws, "const"), g.synthesis(ws, "const")
        rand_a, rand_b = g.synthesis(ws, "random"), g.synthesis(ws, "random")
        none = g.synthesis(ws, "none")
    assert torch.equal(const_a, const_b)
    assert (rand_a - rand_b).abs().max() > 1e-3
    assert (none - const_a).abs().max() > 1e-3 and (rand_a - const_a).abs().max() > 1e-3
    state = g.state_dict()
    assert state["noises.noise_0"].shape == (1, 1, 4, 4) and state["noises.noise_8"].shape == (1, 1, 64, 64)
    assert "noises.noise_9" not in state  # 2 * log2(64) - 3 = 9 noise maps


def test_same_seed_same_state_dict() -> None:
    a, b, c = make_generator(TINY, seed=11), make_generator(TINY, seed=11), make_generator(TINY, seed=12)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["convs.0.conv.weight"], sc["convs.0.conv.weight"])
    assert not torch.equal(sa["noises.noise_3"], sc["noises.noise_3"])


def rosinality_g_ema_shapes(size: int = 1024, style_dim: int = 512, n_mlp: int = 8, cm: int = 2) -> dict:
    """Key -> shape of rosinality's ``Generator(size, style_dim, n_mlp, cm).state_dict()`` minus its ``*.kernel``
    blur buffers, written out from rosinality/stylegan2-pytorch model.py (checked against it at commit bef283a)."""
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(1, n_mlp + 1):  # style.0 is PixelNorm
        shapes[f"style.{i}.weight"] = (style_dim, style_dim)
        shapes[f"style.{i}.bias"] = (style_dim,)

    def styled(prefix: str, cin: int, cout: int) -> None:
        shapes.update({
            f"{prefix}.conv.weight": (1, cout, cin, 3, 3), f"{prefix}.conv.modulation.weight": (cin, style_dim),
            f"{prefix}.conv.modulation.bias": (cin,), f"{prefix}.noise.weight": (1,),
            f"{prefix}.activate.bias": (cout,),
        })  # fmt: skip

    def to_rgb(prefix: str, cin: int) -> None:
        shapes.update({
            f"{prefix}.conv.weight": (1, 3, cin, 1, 1), f"{prefix}.conv.modulation.weight": (cin, style_dim),
            f"{prefix}.conv.modulation.bias": (cin,), f"{prefix}.bias": (1, 3, 1, 1),
        })  # fmt: skip

    shapes["input.input"] = (1, ch[4], 4, 4)
    styled("conv1", ch[4], ch[4])
    to_rgb("to_rgb1", ch[4])
    log_size = int(math.log2(size))
    for n in range(2 * (log_size - 2) + 1):
        side = 2 ** ((n + 5) // 2)
        shapes[f"noises.noise_{n}"] = (1, 1, side, side)
    cin = ch[4]
    for j, level in enumerate(range(3, log_size + 1)):
        cout = ch[2**level]
        styled(f"convs.{2 * j}", cin, cout)
        styled(f"convs.{2 * j + 1}", cout, cout)
        to_rgb(f"to_rgbs.{j}", cout)
        cin = cout
    return shapes


def test_config_f_1024_matches_rosinality_g_ema_keys_shapes_and_parameter_count() -> None:
    g = make_generator(StyleGAN2Config())
    assert sum(p.numel() for p in g.parameters()) == 30_370_060  # rosinality Generator(1024, 512, 8)
    state = g.state_dict()
    expected = rosinality_g_ema_shapes()
    assert len(expected) == 155
    assert set(state) - {"w_avg"} == set(expected)
    assert {k: tuple(v.shape) for k, v in state.items() if k != "w_avg"} == expected
    assert state["w_avg"].shape == (512,)
    assert not any(k.endswith("kernel") for k in state)  # FIR kernels are non-persistent buffers
    assert g.convs[0].conv.blur.kernel.shape == (4, 4) and g.to_rgbs[0].upsample.kernel.shape == (4, 4)
    assert torch.equal(g.convs[0].conv.modulation.bias, torch.ones(512))  # modulation bias 1 at init
    assert torch.equal(g.convs[0].noise.weight, torch.zeros(1)) and torch.equal(g.style[1].bias, torch.zeros(512))


def test_bfloat16_and_autocast() -> None:
    g = make_generator(noisy=True)
    ws = random_ws(g, 2)
    with torch.no_grad():
        ref = g.synthesis(ws)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = g.synthesis(ws)
        half = g.to(dtype=torch.bfloat16).synthesis(ws)  # fp32 codes into a bf16 model
    assert half.dtype == torch.bfloat16 and g.noises.noise_0.dtype == torch.bfloat16
    for out in (auto, half):
        assert torch.isfinite(out.float()).all()
        rel = (out.float() - ref).abs().mean() / ref.abs().mean()
        assert rel < 0.05, rel  # bf16 keeps ~3 significant digits through 10 modulated convs


def test_full_size_1024_forward() -> None:
    g = make_generator(StyleGAN2Config())
    with torch.no_grad():
        img = g(torch.randn(1, 512, generator=torch.Generator().manual_seed(0)))
    assert img.shape == (1, 3, 1024, 1024)
    assert torch.isfinite(img).all() and img.std() > 0.1


def test_batched_and_grouped_modulated_convs_give_the_same_images_and_code_gradients() -> None:
    g = make_generator(noisy=True)
    results = []
    for fused in (True, None):  # None: a batch of 3 takes the batched path
        set_modulated_conv_form(g, fused)
        ws = random_ws(g, 3).requires_grad_(True)
        image = g.synthesis(ws)
        (image * torch.linspace(-1, 1, image.shape[-1])).sum().backward()
        results.append((image.detach(), ws.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-4, rtol=1e-4)


def test_feature_maps_stay_bf16_under_autocast() -> None:
    # float32 biases and noise strengths used to promote every bf16 conv output back to float32: twice the memory
    g = make_generator(noisy=True)
    dtypes = []
    for conv in g.convs:
        conv.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        image = g.synthesis(random_ws(g, 2))
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert image.dtype == torch.float32  # the RGB skip sums stay float32 (ToRGB's float32 bias)


@pytest.mark.gpu
def test_cuda_batched_and_channels_last_paths_match_the_grouped_one(monkeypatch) -> None:
    from anon_core.acceleration import channels_last_, set_memory_format_

    g = make_generator(noisy=True).cuda()
    ws = random_ws(g, 4).cuda()
    # true float32: with TF32 (PyTorch's default for cuDNN) the kernels of the three layouts differed by 4e-3
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    with torch.no_grad():
        set_modulated_conv_form(g, True)
        grouped = g.synthesis(ws)
        set_modulated_conv_form(g, None)
        batched = g.synthesis(ws)
        channels_last_(g)
        channels_last = g.synthesis(ws)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = g.synthesis(ws)
        set_memory_format_(g, torch.contiguous_format)
    torch.testing.assert_close(batched, grouped, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(channels_last, grouped, atol=1e-4, rtol=1e-4)
    assert (bf16.float() - grouped).abs().mean() / grouped.abs().mean() < 0.05
