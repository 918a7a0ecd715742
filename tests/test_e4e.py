"""Tests for anon_core.networks.e4e (the e4e encoder, omertov/encoder4editing layout) and its Inverter.

Parity with the reference Encoder4Editing at full width is in tests/test_checkpoints.py
(`test_e4e_encoder_matches_reference`); these tests pin the structure on the tiny config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anon_core.networks.e4e import COARSE_STOP, MIDDLE_STOP, TINY_E4E, E4EConfig, E4EEncoder, E4EInverter

FIXTURES = Path(__file__).parent / "fixtures" / "parity"


def _images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _fill_deterministic_(module: torch.nn.Module, seed: int) -> None:
    """Every floating-point entry from one seeded generator (non-trivial BatchNorm statistics, latent_avg != 0)."""
    g = torch.Generator().manual_seed(seed)
    values = {}
    for name, tensor in sorted(module.state_dict().items()):
        if not tensor.is_floating_point():
            values[name] = torch.zeros_like(tensor)
            continue
        n = torch.randn(tensor.shape, generator=g)
        if name.endswith("running_var"):
            values[name] = 1 + 0.25 * n.abs()
        elif tensor.ndim >= 2 and not name.endswith("linear.weight") and name != "latent_avg":
            values[name] = n / tensor[0].numel() ** 0.5
        elif name.endswith("weight") and tensor.ndim == 1:
            values[name] = 0.75 + 0.25 * n
        else:
            values[name] = 0.5 * n
    module.load_state_dict(values)


@pytest.fixture
def tiny() -> E4EEncoder:
    torch.manual_seed(0)
    model = E4EEncoder(TINY_E4E)
    _fill_deterministic_(model, 1)
    return model.eval()


def test_shapes_and_finite_at_any_square_size(tiny: E4EEncoder) -> None:
    for size in (32, 64, 256):  # smaller than, equal to and larger than the encoder's input size
        with torch.no_grad():
            ws = tiny(_images(2, size, seed=size))
        assert ws.shape == (2, TINY_E4E.n_styles, TINY_E4E.w_dim)
        assert torch.isfinite(ws).all()
        assert (ws[0] - ws[1]).abs().max() > 1e-3


def test_forward_is_encoder_plus_latent_avg(tiny: E4EEncoder) -> None:
    x = _images(2, 64, seed=1)
    with torch.no_grad():
        assert torch.equal(tiny(x), tiny.encode(x) + tiny.latent_avg)
    assert tiny.latent_avg.abs().sum() > 0


def test_every_layer_is_w0_plus_its_own_delta(tiny: E4EEncoder) -> None:
    """Layer i = styles[0](c3) + styles[i](features_i): zeroing style heads 1.. makes all layers equal w0,
    and changing head k moves layer k only."""
    x = _images(1, 64, seed=2)
    with torch.no_grad():
        base = tiny.encode(x)
        for head in tiny.styles[1:]:
            head.linear.weight.zero_()
            head.linear.bias.zero_()
        flat = tiny.encode(x)
        assert torch.allclose(flat, flat[:, :1].expand_as(flat), atol=0)
        assert torch.equal(flat[:, 0], base[:, 0])
        tiny.styles[5].linear.bias.fill_(1.0)
        moved = tiny.encode(x)
    changed = (moved - flat).abs().amax(dim=(0, 2))  # [n_styles]
    assert changed[5] > 0.5 and changed[torch.arange(TINY_E4E.n_styles) != 5].max() == 0


@pytest.mark.parametrize(("layer", "first_affected"), [("latlayer1", COARSE_STOP), ("latlayer2", MIDDLE_STOP)])
def test_feature_pyramid_routing(tiny: E4EEncoder, layer: str, first_affected: int) -> None:
    """Layers 0-2 read c3, 3-6 read p2 = up(c3) + latlayer1(c2), 7.. read p1 = up(p2) + latlayer2(c1)."""
    x = _images(2, 64, seed=3)
    with torch.no_grad():
        before = tiny.encode(x)
        getattr(tiny, layer).bias.add_(0.5)
        after = tiny.encode(x)
    changed = (after - before).abs().amax(dim=(0, 2))
    assert changed[:first_affected].max() == 0
    assert (changed[first_affected:] > 1e-4).all()


def test_batch_equals_single(tiny: E4EEncoder) -> None:
    x = _images(3, 64, seed=4)
    with torch.no_grad():
        batch = tiny(x)
        singles = torch.cat([tiny(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)


def test_gradients_reach_input_and_every_parameter() -> None:
    torch.manual_seed(0)
    model = E4EEncoder(TINY_E4E).train()  # batch statistics: BatchNorm affine parameters get gradients too
    x = _images(2, 64, seed=5).requires_grad_(True)
    model(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_resize_modes(tiny: E4EEncoder) -> None:
    x = _images(1, 64, seed=6)
    assert tiny.resize(x) is x  # already the input size
    area = E4EEncoder(E4EConfig(**{**TINY_E4E.__dict__, "resize_mode": "area"}))
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")  # each pixel as a 2 x 2 block
    torch.testing.assert_close(area.resize(big), x, rtol=0, atol=1e-6)  # area: the block means
    flat = torch.full((1, 3, 256, 256), 0.3)
    for model in (tiny, area):
        torch.testing.assert_close(model.resize(flat), torch.full((1, 3, 64, 64), 0.3), rtol=0, atol=1e-6)
    noise = _images(1, 256, seed=7)
    aliased = torch.nn.functional.interpolate(noise, size=(64, 64), mode="bilinear", align_corners=False)
    assert tiny.resize(noise).std() < 0.6 * aliased.std()  # antialiased when shrinking (PIL-like bilinear)
    assert (tiny.resize(noise) - area.resize(noise)).abs().max() > 1e-3  # the two modes are different filters
    with pytest.raises(ValueError, match=r"square RGB images \[B, 3, H, H\]"):
        tiny(torch.zeros(1, 3, 64, 32))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="four stages"):
        E4EConfig(stage_channels=(64, 128, 256), stage_blocks=(3, 4, 14))
    with pytest.raises(ValueError, match="input_size=200"):
        E4EConfig(input_size=200)
    with pytest.raises(ValueError, match="resize_mode='bicubic'"):
        E4EConfig(resize_mode="bicubic")
    with pytest.raises(ValueError, match="n_styles=0"):
        E4EConfig(n_styles=0)
    assert [E4EConfig().feature_side(i) for i in (0, 2, 3, 6, 7, 17)] == [16, 16, 32, 32, 64, 64]


def test_full_size_matches_encoder4editing_layout() -> None:
    """Against Encoder4Editing(50, 'ir_se', stylegan_size=1024) recorded key by key (ckpt_reference_keys.json)."""
    with torch.device("meta"):
        model = E4EEncoder(E4EConfig())
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if k != "latent_avg"}
    reference = json.loads((FIXTURES / "ckpt_reference_keys.json").read_text())["e4e_encoder_1024"]
    assert ours == reference
    assert len(model.body) == 24 and model._taps == (6, 20, 23)
    assert [len(model.styles[i].convs) // 2 for i in (0, 3, 7, 17)] == [4, 5, 6, 6]  # log2 of 16, 32, 64
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(p.numel() for p in model.parameters()) == sum(
        torch.Size(s).numel() for k, s in reference.items() if not k.endswith(buffers)
    )


def test_inverter_protocol(tiny: E4EEncoder, tiny_nets) -> None:
    g = tiny_nets.generator
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(8)) * 2 - 1
    inverter = E4EInverter(tiny, num_ws=g.num_ws)
    ws = inverter.invert(images)
    assert ws.shape == (3, g.num_ws, g.config.w_dim) and ws.dtype == torch.float32 and not ws.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(ws, tiny(images), rtol=0, atol=0)
        assert g.synthesis(ws).shape == (3, 3, 64, 64)
    chunked = E4EInverter(tiny, batch_size=2).invert(images)
    torch.testing.assert_close(chunked, ws, rtol=0, atol=1e-5)
    fewer = E4EInverter(tiny, num_ws=6).invert(images)  # an 18-layer encoder before a 16-layer generator, in small
    torch.testing.assert_close(fewer, ws[:, :6], rtol=0, atol=0)
    assert E4EInverter(tiny).invert(images[:0]).shape == (0, TINY_E4E.n_styles, TINY_E4E.w_dim)
    with pytest.raises(ValueError, match="takes 12 W\\+ layers but the e4e encoder makes 10"):
        E4EInverter(tiny, num_ws=12)
