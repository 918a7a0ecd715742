"""Per-layer W+ codes: the same images and gradients as one W+ tensor, with less backward work."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from anon_core.networks.stylegan2 import Generator, StyleGAN2Config
from anon_core.optimize import compose_layer_codes, compose_ws

CONFIG = StyleGAN2Config(resolution=64, z_dim=32, w_dim=32, mapping_layers=1, channel_max=32)
START, STOP = 3, 8  # the paper's trainable layers


def _setup(batch=2):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = Generator(CONFIG).eval().requires_grad_(False)
        w_real = torch.randn(batch, g.num_ws, CONFIG.w_dim)
        trainable = torch.randn(batch, STOP - START, CONFIG.w_dim)
    return g, w_real, trainable


def _image_and_grad(g, w_real, trainable, compose):
    leaf = trainable.clone().requires_grad_(True)
    counter = FlopCounterMode(display=False)
    with counter:
        image = g.synthesis(compose(w_real, leaf, START, STOP))
        image.square().mean().backward()
    return image.detach(), leaf.grad, counter.get_total_flops()


@pytest.mark.parametrize("batch", [1, 2])
def test_per_layer_codes_give_the_same_image_and_gradient_with_fewer_flops(batch):
    g, w_real, trainable = _setup(batch)
    image_one, grad_one, flops_one = _image_and_grad(g, w_real, trainable, compose_ws)
    image_per, grad_per, flops_per = _image_and_grad(g, w_real, trainable, compose_layer_codes)
    assert torch.equal(image_per, image_one)
    torch.testing.assert_close(grad_per, grad_one, rtol=1e-6, atol=1e-7)
    if batch == 1:  # grouped (fused) convs: the fixed layers no longer compute a weight-style gradient
        assert flops_per < 0.85 * flops_one, (flops_per, flops_one)
    else:  # batched convs: a code's gradient is element-wise; only the small demodulation matmuls' are saved
        assert 0.95 * flops_one < flops_per < flops_one, (flops_per, flops_one)


def test_synthesis_names_the_expected_shapes_for_bad_per_layer_codes():
    g, w_real, _ = _setup()
    codes = list(w_real.unbind(1))
    for bad in (codes[:-1], [*codes[:-1], codes[-1][:, :5]]):
        with pytest.raises(ValueError, match=rf"{g.num_ws} codes \[B, {CONFIG.w_dim}\]"):
            g.synthesis(bad)
